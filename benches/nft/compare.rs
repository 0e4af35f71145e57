//! nftables vs iptables on the host kernel, in one run (needs root; every namespace it uses
//! is created here and deleted at the end; traffic stays inside them).
//!
//! 1. Per-packet classification at 1 vs N VIPs (default 10 000): UDP datagrams from a client
//!    namespace through a veth into a namespace whose prerouting classifies them, then a
//!    filter INPUT rule drops them. The matching entry is the last one added (for iptables
//!    the last rule of a linear mangle chain, so every rule is evaluated; for nft the last
//!    element of the map, which does not matter for a hash). veth delivers in the sender's
//!    softirq, so the sender's wall time per datagram includes the receiver's netfilter
//!    traversal; the classification cost is the difference to no classification at all.
//! 2. One changed VIP at N services: vipmesh-nft's transaction of the changed elements vs
//!    Docker's `iptables -D` + `iptables -A` of one rule at N rules.
//! 3. Apply from empty at N services: vipmesh-nft (one `nft -f`) vs one `iptables-restore` of
//!    the equivalent N mark rules.
//! 4. Published-port classification at 1 vs 1000 ports (nft map `proto . port → mark`).
//!
//! Run: `benches/nft/compare.sh [N]` (or `cargo run --release -p vipmesh-nft --example
//! nft_compare -- [N]`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    missing_docs
)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vipmesh_netns::Netns;
use vipmesh_nft::*;

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("vmnftcmp{}-{tag}", std::process::id());
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        Ns(name)
    }
    fn sh(&self, cmd: &str) -> String {
        sh(&format!("ip netns exec {} sh -c '{cmd}'", self.0))
    }
    fn nft(&self) -> Nft {
        Nft::new(Arc::new(Netns::named(&self.0).unwrap()))
    }
    fn restore(&self, text: &str) {
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.0, "iptables-restore", "--noflush"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        assert!(c.wait().unwrap().success());
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a40_0000 + i) // 10.64.0.0/10 …
}

const HIT: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);

/// N address-only VIPs (mark 0x100 + i); with `hit`, the last one is the receiver's address.
fn vips(n: u32, hit: bool, changed: Option<u32>) -> Vec<VipMark> {
    (0..n)
        .map(|i| VipMark {
            vip: if hit && i + 1 == n {
                HIT.into()
            } else {
                vip(i).into()
            },
            port: None,
            mark: if Some(i) == changed {
                0x0fff_0000 + i
            } else {
                0x100 + i
            },
        })
        .collect()
}

fn nft_table(n: u32, hit: bool, changed: Option<u32>) -> Table {
    let mut t = Table::new(NetworkId::new("bench").unwrap());
    vip_marks(&mut t, &[Hook::Prerouting], &vips(n, hit, changed)).unwrap();
    t
}

/// The same marks as iptables-restore input: a linear mangle chain jumped from PREROUTING.
fn ipt_text(n: u32, hit: bool) -> String {
    let mut s = String::from("*mangle\n:VIPMESH-VIP - [0:0]\n-A PREROUTING -j VIPMESH-VIP\n");
    for v in vips(n, hit, None) {
        let _ = writeln!(
            s,
            "-A VIPMESH-VIP -d {}/32 -j MARK --set-xmark {:#x}/0xffffffff",
            v.vip, v.mark
        );
    }
    s.push_str("COMMIT\n");
    s
}

fn ipt_clear(ns: &Ns) {
    ns.sh("iptables -t mangle -D PREROUTING -j VIPMESH-VIP 2>/dev/null; iptables -t mangle -F VIPMESH-VIP 2>/dev/null; iptables -t mangle -X VIPMESH-VIP 2>/dev/null; true");
}

/// Send `count` datagrams to `port` from inside `ns`; returns ns per datagram.
fn blast(ns: &str, port: u16, count: u32) -> f64 {
    let netns = Netns::named(ns).unwrap();
    let d = netns
        .run(move || {
            let s = UdpSocket::bind("10.98.0.1:0").unwrap();
            s.connect((HIT, port)).unwrap();
            let buf = [0u8; 32];
            let t = Instant::now();
            for _ in 0..count {
                let _ = s.send(&buf);
            }
            t.elapsed()
        })
        .unwrap();
    d.as_secs_f64() * 1e9 / f64::from(count)
}

/// Best of `rounds` (the machine is shared).
fn best(ns: &str, port: u16, count: u32, rounds: u32) -> f64 {
    (0..rounds)
        .map(|_| blast(ns, port, count))
        .fold(f64::INFINITY, f64::min)
}

fn marked(lb: &Ns) -> u64 {
    // Packets the sink rule dropped with a non-zero mark.
    let out = lb.sh("nft list table ip sink");
    out.lines()
        .find(|l| l.contains("meta mark != 0x00000000"))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

struct Row {
    what: String,
    at1: f64,
    atn: f64,
}

fn per_packet(n: u32, ports_n: u32) -> Vec<Row> {
    let cli = Ns::new("pc");
    let lb = Ns::new("pl");
    sh(&format!(
        "ip link add eth0 netns {} type veth peer name eth0 netns {}",
        cli.0, lb.0
    ));
    cli.sh("ip addr add 10.98.0.1/24 dev eth0 && ip link set eth0 up");
    lb.sh("ip addr add 10.98.0.2/24 dev eth0 && ip link set eth0 up");
    // The sink: a foreign table drops the datagrams in input and counts the marked ones.
    lb.sh("nft add table ip sink && nft add chain ip sink in \"{ type filter hook input priority 0; }\" && nft add rule ip sink in udp dport 9000-9999 meta mark != 0 counter drop && nft add rule ip sink in udp dport 9000-9999 drop");
    cli.sh("ping -c1 -W2 10.98.0.2 >/dev/null");
    let nft = lb.nft();
    let big = 20_000u32;
    let small = 200_000u32;
    let rounds = 5;
    let mut rows = Vec::new();

    // Baseline: no classification.
    let base = best(&cli.0, 9999, small, rounds);
    println!("  no classification: {base:.0} ns/packet");

    // nft VIP map at 1 and N.
    nft.sync(&nft_table(1, true, None)).unwrap();
    let before = marked(&lb);
    let n1 = best(&cli.0, 9999, small, rounds);
    assert!(marked(&lb) > before, "nft marked the packets");
    nft.sync(&nft_table(n, true, None)).unwrap();
    let before = marked(&lb);
    let nn = best(&cli.0, 9999, small, rounds);
    assert!(marked(&lb) > before, "nft marked the packets");
    nft.teardown(&NetworkId::new("bench").unwrap()).unwrap();
    rows.push(Row {
        what: format!("nft VIP map (1 vs {n})"),
        at1: n1,
        atn: nn,
    });

    // iptables linear chain at 1 and N.
    lb.restore(&ipt_text(1, true));
    let before = marked(&lb);
    let i1 = best(&cli.0, 9999, small, rounds);
    assert!(marked(&lb) > before, "iptables marked the packets");
    ipt_clear(&lb);
    lb.restore(&ipt_text(n, true));
    let before = marked(&lb);
    let count = if n >= 5000 { big / 10 } else { big };
    let i_n = best(&cli.0, 9999, count, 3);
    assert!(marked(&lb) > before, "iptables marked the packets");
    ipt_clear(&lb);
    rows.push(Row {
        what: format!("iptables chain (1 vs {n})"),
        at1: i1,
        atn: i_n,
    });

    // Published ports: nft map proto . port → mark, the hit port last.
    let ports = |k: u32| -> Table {
        let mut t = Table::new(NetworkId::new("bench").unwrap());
        let pm: Vec<PortMark> = (0..k)
            .map(|i| PortMark {
                proto: Proto::UDP,
                port: (9999 - (k - 1 - i)) as u16,
                mark: 0x100 + i,
            })
            .collect();
        ingress_port_marks(&mut t, &pm).unwrap();
        t
    };
    nft.sync(&ports(1)).unwrap();
    let before = marked(&lb);
    let p1 = best(&cli.0, 9999, small, rounds);
    assert!(marked(&lb) > before);
    nft.sync(&ports(ports_n)).unwrap();
    let before = marked(&lb);
    let pn = best(&cli.0, 9999, small, rounds);
    assert!(marked(&lb) > before);
    nft.teardown(&NetworkId::new("bench").unwrap()).unwrap();
    rows.push(Row {
        what: format!("nft port map (1 vs {ports_n})"),
        at1: p1,
        atn: pn,
    });

    println!(
        "  {:<28} {:>12} {:>12} {:>10} {:>14} {:>14} {:>10}",
        "classifier", "ns/pkt @1", "ns/pkt @N", "ratio", "class. ns @1", "class. ns @N", "ratio"
    );
    for r in &rows {
        println!(
            "  {:<28} {:>12.0} {:>12.0} {:>9.2}x {:>14.0} {:>14.0} {:>9.1}x",
            r.what,
            r.at1,
            r.atn,
            r.atn / r.at1,
            r.at1 - base,
            r.atn - base,
            (r.atn - base) / (r.at1 - base).max(1.0)
        );
    }
    rows
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn updates(n: u32) {
    // Apply from empty: nft (plan + one nft -f) vs one iptables-restore of N mark rules.
    let mut nft_full = Duration::MAX;
    let mut ipt_full = Duration::MAX;
    let mut nft_one_cached = Duration::MAX;
    let mut nft_one_observe = Duration::MAX;
    let full = nft_table(n, false, None);
    let one = nft_table(n, false, Some(n / 2));
    for _ in 0..3 {
        let ns = Ns::new("up");
        let nft = ns.nft();
        let (d, r) = time(|| nft.sync(&full).unwrap());
        assert!(r.changed);
        nft_full = nft_full.min(d);
        // One changed element, planned against a fresh listing (EveryApply).
        let (d, r) = time(|| nft.sync(&one).unwrap());
        assert!(
            matches!(&r.plan, Plan::Elements(ep) if ep.len() == 2),
            "{}",
            r.plan
        );
        nft_one_observe = nft_one_observe.min(d);
        // The same change back and forth against the cached state (one nft process).
        let cached = ns.nft().with_observe(ObserveMode::Cached);
        assert!(!cached.sync(&one).unwrap().changed); // primes the cache
        for t in [&full, &one, &full] {
            let (d, r) = time(|| cached.sync(t).unwrap());
            assert!(r.changed && r.from_cache);
            nft_one_cached = nft_one_cached.min(d);
        }
        let listed = ns.sh("nft list map inet vipmesh-bench vip4 | grep -c : || true");
        assert!(listed.trim().parse::<u32>().unwrap() >= 1);

        let ns = Ns::new("ip");
        let text = ipt_text(n, false);
        let (d, ()) = time(|| ns.restore(&text));
        ipt_full = ipt_full.min(d);
    }

    // Docker's way for one change at N rules: iptables -D + iptables -A (2 processes).
    let ns = Ns::new("dk");
    ns.restore(&ipt_text(n, false));
    let i = n / 2;
    let mut dk_one = Duration::MAX;
    for round in 0..3 {
        let (from, to) = if round % 2 == 0 {
            (0x100 + i, 0x0fff_0000 + i)
        } else {
            (0x0fff_0000 + i, 0x100 + i)
        };
        let (d, ()) = time(|| {
            for (op, mark) in [("-D", from), ("-A", to)] {
                let st = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &ns.0,
                        "iptables",
                        "-t",
                        "mangle",
                        op,
                        "VIPMESH-VIP",
                        "-d",
                    ])
                    .arg(vip(i).to_string())
                    .args(["-j", "MARK", "--set-xmark"])
                    .arg(format!("{mark:#x}/0xffffffff"))
                    .status()
                    .unwrap();
                assert!(st.success());
            }
        });
        dk_one = dk_one.min(d);
    }
    println!("  apply from empty, {n} services:");
    println!(
        "    vipmesh-nft sync (plan + nft -f)        : {:>9.1} ms",
        ms(nft_full)
    );
    println!(
        "    iptables-restore of {n} mark rules     : {:>9.1} ms",
        ms(ipt_full)
    );
    println!(
        "    ratio nft / iptables-restore            : {:>9.2}x",
        ms(nft_full) / ms(ipt_full)
    );
    println!("  one changed VIP at {n} services:");
    println!(
        "    vipmesh-nft, Cached (one nft -f)        : {:>9.2} ms",
        ms(nft_one_cached)
    );
    println!(
        "    vipmesh-nft, EveryApply (list + nft -f) : {:>9.2} ms",
        ms(nft_one_observe)
    );
    println!(
        "    Docker: iptables -D + iptables -A       : {:>9.2} ms",
        ms(dk_one)
    );
    println!(
        "    ratio Docker / nft Cached               : {:>9.1}x",
        ms(dk_one) / ms(nft_one_cached)
    );
    println!(
        "    ratio Docker / nft EveryApply           : {:>9.1}x",
        ms(dk_one) / ms(nft_one_observe)
    );
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(10_000);
    let out = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        eprintln!("!!! nft_compare needs root (network namespaces, nft, iptables) !!!");
        std::process::exit(2);
    }
    println!(
        "{} / {}",
        sh("nft --version").trim(),
        sh("iptables -V").trim()
    );
    println!("kernel {}", sh("uname -r").trim());
    println!("== per-packet classification (UDP through a veth, matching entry last) ==");
    per_packet(n, 1000);
    println!("== updates ==");
    updates(n);
}
