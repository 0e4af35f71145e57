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
    /// Runs a tool inside the namespace the way vipmesh-nft runs `nft` (spawned from a thread
    /// that entered it), so both sides pay the same process start.
    fn spawn(&self, tool: &str, args: &[String], stdin: Option<&str>) {
        let netns = Netns::named(&self.0).unwrap();
        let ok = netns
            .run(|| {
                let mut c = Command::new(tool)
                    .args(args)
                    .stdin(if stdin.is_some() {
                        Stdio::piped()
                    } else {
                        Stdio::null()
                    })
                    .spawn()
                    .unwrap();
                if let Some(text) = stdin {
                    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
                }
                c.wait().unwrap().success()
            })
            .unwrap();
        assert!(ok, "{tool} {args:?}");
    }
    fn restore(&self, text: &str) {
        self.spawn("iptables-restore", &["--noflush".to_owned()], Some(text));
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

/// The ingress sandbox's published-port mark chain as vipmesh's iptables backend renders it
/// (`crates/vipmesh/src/rules.rs`, `Layout::Ingress`): one rule per port, the hit last.
fn ipt_ports_text(k: u32) -> String {
    let mut s = String::from("*mangle\n:VIPMESH-VIP - [0:0]\n-A PREROUTING -j VIPMESH-VIP\n");
    for i in 0..k {
        let _ = writeln!(
            s,
            "-A VIPMESH-VIP -p udp -m udp --dport {} -m comment --comment \"vipmesh net=ingress svc=s{i}\" -j MARK --set-xmark {:#x}/0xffffffff",
            9999 - (k - 1 - i),
            0x100 + i
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

/// What the receiving namespace classifies with during one measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Config {
    None,
    NftVips(u32),
    IptVips(u32),
    NftPorts(u32),
    /// The iptables ingress chain: one `--dport` mark rule per published port.
    IptPorts(u32),
    /// The VIP map lookup repeated in 64 rules: makes the lookup's own cost measurable.
    NftLookupX64(u32),
}

const AMPLIFY: usize = 64;

fn port_table(k: u32) -> Table {
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
}

/// The typed API directly: one map, one base chain, the same lookup in 64 rules.
fn amplified_table(n: u32) -> Table {
    let mut t = Table::new(NetworkId::new("bench").unwrap());
    let m = Name::new("vip4").unwrap();
    let mut map = Map::new(KeyType::new(&[KeyPart::Ipv4Addr]).unwrap(), ValueType::Mark);
    for v in vips(n, true, None) {
        map.insert(
            Key::new(&[KeyValue::from(v.vip)]).unwrap(),
            Value::Mark(v.mark),
        )
        .unwrap();
    }
    t.add_map(m.clone(), map).unwrap();
    let c = Name::new("x64").unwrap();
    t.add_chain(
        c.clone(),
        Some(
            BaseChain::new(
                ChainType::Filter,
                Hook::Prerouting,
                Priority::MANGLE,
                Policy::Accept,
            )
            .unwrap(),
        ),
    )
    .unwrap();
    for _ in 0..AMPLIFY {
        t.add_rule(
            &c,
            Rule::new(
                vec![],
                Statement::SetMark {
                    key: KeyExpr::new(&[Selector::Ip4Daddr]).unwrap(),
                    map: m.clone(),
                },
            ),
        )
        .unwrap();
    }
    t
}

fn configure(lb: &Ns, nft: &Nft, c: Config) {
    let id = NetworkId::new("bench").unwrap();
    nft.teardown(&id).unwrap();
    ipt_clear(lb);
    match c {
        Config::None => {}
        Config::NftVips(n) => {
            nft.sync(&nft_table(n, true, None)).unwrap();
        }
        Config::IptVips(n) => lb.restore(&ipt_text(n, true)),
        Config::NftPorts(n) => {
            nft.sync(&port_table(n)).unwrap();
        }
        Config::IptPorts(n) => lb.restore(&ipt_ports_text(n)),
        Config::NftLookupX64(n) => {
            nft.sync(&amplified_table(n)).unwrap();
        }
    }
}

fn per_packet(n: u32, ports_n: u32) {
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
    let configs = [
        Config::None,
        Config::NftVips(1),
        Config::NftVips(n),
        Config::IptVips(1),
        Config::IptVips(n),
        Config::NftPorts(1),
        Config::NftPorts(ports_n),
        Config::NftLookupX64(1),
        Config::NftLookupX64(n),
        Config::IptPorts(1),
        Config::IptPorts(ports_n),
    ];
    let rounds = 7;
    let mut best = vec![f64::INFINITY; configs.len()];
    // Interleaved rounds, best of each: load from other processes only adds time, and a
    // load shift hits every configuration alike.
    for round in 0..rounds {
        for (k, c) in configs.iter().enumerate() {
            configure(&lb, &nft, *c);
            let count = match c {
                Config::IptVips(m) | Config::IptPorts(m) if *m >= 1000 => 2_000,
                _ => 100_000,
            };
            let before = marked(&lb);
            let per = blast(&cli.0, 9999, count);
            if round == 0 && *c != Config::None {
                assert!(marked(&lb) > before, "{c:?} marked the packets");
            }
            best[k] = best[k].min(per);
        }
    }
    configure(&lb, &nft, Config::None);
    let base = best[0];
    println!("  no classification: {base:.0} ns/packet (best of {rounds} interleaved rounds)");
    println!(
        "  {:<34} {:>10} {:>10} {:>8} {:>13} {:>13} {:>9}",
        "classifier (at 1 vs at N)",
        "ns/pkt @1",
        "ns/pkt @N",
        "ratio",
        "class. ns @1",
        "class. ns @N",
        "ratio"
    );
    let rows = [
        (format!("nft VIP maps (1 vs {n} VIPs)"), best[1], best[2]),
        (format!("iptables chain (1 vs {n} rules)"), best[3], best[4]),
        (
            format!("nft port map (1 vs {ports_n} ports)"),
            best[5],
            best[6],
        ),
        (
            format!("nft lookup x{AMPLIFY} (1 vs {n} VIPs)"),
            best[7],
            best[8],
        ),
        (
            format!("iptables port chain (1 vs {ports_n} ports)"),
            best[9],
            best[10],
        ),
    ];
    for (what, at1, atn) in rows {
        println!(
            "  {:<34} {:>10.0} {:>10.0} {:>7.2}x {:>13.0} {:>13.0} {:>8.2}x",
            what,
            at1,
            atn,
            atn / at1,
            at1 - base,
            atn - base,
            (atn - base) / (at1 - base).max(1.0)
        );
    }
    println!(
        "  one nft VIP map lookup: {:.1} ns at 1 VIP, {:.1} ns at {n} VIPs (x{AMPLIFY} rows / {AMPLIFY})",
        (best[7] - base) / AMPLIFY as f64,
        (best[8] - base) / AMPLIFY as f64
    );
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
    let full = nft_table(n, false, None);
    let one = nft_table(n, false, Some(n / 2));
    let mut full_proc = Duration::MAX;
    let mut full_lib = Duration::MAX;
    let mut ipt_full = Duration::MAX;
    let mut one_every = Duration::MAX;
    let mut one_cached = [Duration::MAX; 2];
    for _ in 0..3 {
        // Apply from empty (plan + one transaction), with each runner.
        for (runner, slot) in [
            (Runner::Process, &mut full_proc),
            (Runner::Library, &mut full_lib),
        ] {
            let ns = Ns::new("up");
            let nft = ns.nft().with_runner(runner);
            let (d, r) = time(|| nft.sync(&full).unwrap());
            assert!(r.changed);
            *slot = (*slot).min(d);
            if runner == Runner::Process {
                // One changed element, planned against a fresh listing (EveryApply).
                let (d, r) = time(|| nft.sync(&one).unwrap());
                assert!(
                    matches!(&r.plan, Plan::Elements(ep) if ep.len() == 2),
                    "{}",
                    r.plan
                );
                one_every = one_every.min(d);
            }
            // The change back and forth against the cached state, with each runner.
            for (k, runner) in [Runner::Process, Runner::Library].into_iter().enumerate() {
                let cached = ns
                    .nft()
                    .with_observe(ObserveMode::Cached)
                    .with_runner(runner);
                let _ = cached.sync(&full).unwrap(); // primes the cache
                for t in [&one, &full, &one, &full] {
                    let (d, r) = time(|| cached.sync(t).unwrap());
                    assert!(r.changed && r.from_cache);
                    assert!(matches!(&r.plan, Plan::Elements(ep) if ep.len() == 2));
                    one_cached[k] = one_cached[k].min(d);
                }
            }
            let listed = ns.sh("nft list map inet vipmesh-bench vip4 | grep -c 0x || true");
            assert!(listed.trim().parse::<u32>().unwrap() >= 1);
        }
        let ns = Ns::new("ip");
        let text = ipt_text(n, false);
        let (d, ()) = time(|| ns.restore(&text));
        ipt_full = ipt_full.min(d);
        let rules = ns.sh("iptables-save -t mangle | grep -c \"^-A VIPMESH-VIP\"");
        assert_eq!(rules.trim(), n.to_string());
    }

    // Docker's way for one change at N rules: iptables -D + iptables -A (2 processes, spawned
    // the same way as nft).
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
                let args: Vec<String> = [
                    "-t",
                    "mangle",
                    op,
                    "VIPMESH-VIP",
                    "-d",
                    &vip(i).to_string(),
                    "-j",
                    "MARK",
                    "--set-xmark",
                    &format!("{mark:#x}/0xffffffff"),
                ]
                .iter()
                .map(|a| (*a).to_owned())
                .collect();
                ns.spawn("iptables", &args, None);
            }
        });
        dk_one = dk_one.min(d);
    }
    println!("  apply from empty, {n} services (best of 3):");
    println!(
        "    vipmesh-nft sync, Runner::Process         : {:>9.1} ms",
        ms(full_proc)
    );
    println!(
        "    vipmesh-nft sync, Runner::Library         : {:>9.1} ms",
        ms(full_lib)
    );
    println!(
        "    iptables-restore of {n} mark rules       : {:>9.1} ms",
        ms(ipt_full)
    );
    println!(
        "    ratio nft (Process) / iptables-restore    : {:>9.2}x",
        ms(full_proc) / ms(ipt_full)
    );
    println!(
        "    ratio nft (Library) / iptables-restore    : {:>9.2}x",
        ms(full_lib) / ms(ipt_full)
    );
    println!("  one changed VIP at {n} services (best of 12 / 3):");
    println!(
        "    vipmesh-nft Cached, Runner::Process       : {:>9.2} ms",
        ms(one_cached[0])
    );
    println!(
        "    vipmesh-nft Cached, Runner::Library       : {:>9.2} ms",
        ms(one_cached[1])
    );
    println!(
        "    vipmesh-nft EveryApply (list + nft -f)    : {:>9.2} ms",
        ms(one_every)
    );
    println!(
        "    Docker: iptables -D + iptables -A         : {:>9.2} ms",
        ms(dk_one)
    );
    println!(
        "    ratio Docker / nft Cached Process         : {:>9.1}x",
        ms(dk_one) / ms(one_cached[0])
    );
    println!(
        "    ratio Docker / nft Cached Library         : {:>9.1}x",
        ms(dk_one) / ms(one_cached[1])
    );
    println!(
        "    ratio Docker / nft EveryApply             : {:>9.1}x",
        ms(dk_one) / ms(one_every)
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
    if std::env::var_os("NFT_COMPARE_ONLY_PER_PACKET").is_some() {
        return;
    }
    println!("== updates ==");
    updates(n);
}
