//! Scripted comparison on the host kernel, in one run (needs root; every namespace it uses is
//! created here and deleted at the end; traffic stays inside them).
//!
//! 1. Apply cost: vipmesh (one `iptables-restore --noflush` batch, with observe and verify)
//!    vs Docker's way (one `iptables -A` process per rule), from empty and for one changed
//!    rule, at N VIP mark rules (default 10 000).
//! 2. Per-packet cost of a linear mangle chain at 10 / 1k / 10k VIPs: UDP datagrams from a
//!    client namespace through a veth into a namespace whose mangle PREROUTING jumps into
//!    `VIPMESH-VIP` (the matching rule is last, so every rule is evaluated), then dropped in
//!    filter INPUT. veth delivers in the sender's softirq, so the sender's wall time per
//!    datagram includes the receiver's netfilter traversal; the chain's cost is the
//!    difference to an empty chain.
//!
//! Run: `benches/netfilter/compare.sh` (or `cargo run --release -p vipmesh-netfilter --example nf_compare -- [N]`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    missing_docs
)]

use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use vipmesh_netfilter::*;

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("vmnfcmp{}-{tag}", std::process::id());
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        Ns(name)
    }
    fn sh(&self, cmd: &str) -> String {
        sh(&format!("ip netns exec {} sh -c '{cmd}'", self.0))
    }
    fn applier(&self) -> Applier {
        Applier::new(NetnsTarget::named(&self.0))
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

/// N mark rules (the rule for `hit`, if any, last), plus one SNAT per /24 and the jumps.
fn ruleset(n: u32, changed: Option<u32>, hit: Option<Ipv4Addr>) -> OwnedRuleset {
    let mut rs = OwnedRuleset::new(Family::V4);
    let c = ChainName::new("VIPMESH-VIP").unwrap();
    rs.declare_chain(Table::Mangle, &c);
    for i in 0..n {
        let mark = if Some(i) == changed {
            0x0fff_0000 + i
        } else {
            0x100 + i
        };
        let dst = match hit {
            Some(h) if i + 1 == n => h,
            _ => vip(i),
        };
        rs.add_rule(
            Table::Mangle,
            &c,
            Rule::new(
                Matches::new().destination(Cidr::host(dst.into())),
                Target::SetMark(Mark::new(mark)),
            ),
        )
        .unwrap();
    }
    rs.add_jump(
        Table::Mangle,
        Jump {
            from: BuiltinChain::Prerouting,
            matches: Matches::new(),
            to: c,
            position: JumpPosition::Prepend,
        },
    )
    .unwrap();
    rs
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn apply_cost(n: u32) {
    println!("== apply cost at N = {n} mark rules (mangle VIPMESH-VIP) ==");
    // vipmesh: best of three for each measurement (the machine is shared).
    let mut vm_full = Duration::MAX;
    let mut vm_noop = Duration::MAX;
    let mut vm_one = Duration::MAX;
    let mut vm_one_noverify = Duration::MAX;
    let mut vm_one_cached = Duration::MAX;
    let full = ruleset(n, None, None);
    let one = ruleset(n, Some(n / 2), None);
    for _ in 0..3 {
        let ns = Ns::new("vm");
        let a = ns.applier();
        let t = Instant::now();
        let r = a.apply(&full).unwrap();
        vm_full = vm_full.min(t.elapsed());
        assert!(r.changed);
        let t = Instant::now();
        let r = a.apply(&full).unwrap();
        vm_noop = vm_noop.min(t.elapsed());
        assert!(!r.changed);
        let t = Instant::now();
        let r = a.apply(&one).unwrap();
        vm_one = vm_one.min(t.elapsed());
        assert!(r.changed);
        assert_eq!(
            r.plan.tables[&Table::Mangle].rules_replaced.len(),
            1,
            "one -R line"
        );
        // The same change back, without the read-back verification.
        let fast = ns.applier().with_verify(Verify::Skip);
        let t = Instant::now();
        let r = fast.apply(&full).unwrap();
        vm_one_noverify = vm_one_noverify.min(t.elapsed());
        assert!(r.changed);
        assert!(!a.apply(&full).unwrap().changed);
        // Partial sync: plan against the cached last-applied state, restore only.
        let cached = ns
            .applier()
            .with_observe(ObserveMode::Cached)
            .with_verify(Verify::Skip);
        assert!(!cached.apply(&full).unwrap().changed); // primes the cache (observes once)
        let t = Instant::now();
        assert!(cached.apply(&one).unwrap().changed);
        vm_one_cached = vm_one_cached.min(t.elapsed());
        assert!(cached.apply(&full).unwrap().changed);
        assert!(!a.apply(&full).unwrap().changed);
        let lines = ns
            .sh("iptables-save -t mangle")
            .lines()
            .filter(|l| l.starts_with("-A VIPMESH-VIP"))
            .count();
        assert_eq!(lines, n as usize);
    }
    if std::env::var_os("VIPMESH_ONLY").is_some() {
        println!(
            "  vipmesh apply from empty        : {:>9.3} s",
            secs(vm_full)
        );
        println!(
            "  vipmesh apply, nothing changed  : {:>9.3} s",
            secs(vm_noop)
        );
        println!(
            "  vipmesh apply, 1 rule changed   : {:>9.3} s",
            secs(vm_one)
        );
        println!(
            "  same, Verify::Skip              : {:>9.3} s",
            secs(vm_one_noverify)
        );
        println!(
            "  same, Cached + Skip             : {:>9.3} s",
            secs(vm_one_cached)
        );
        return;
    }

    // Docker's way: one iptables process per rule.
    let ns = Ns::new("dk");
    ns.sh("iptables -t mangle -N DOCKER-VIP && iptables -t mangle -A PREROUTING -j DOCKER-VIP");
    let budget = Duration::from_secs(600);
    let t = Instant::now();
    let mut done = 0u32;
    for i in 0..n {
        let st = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "iptables",
                "-t",
                "mangle",
                "-A",
                "DOCKER-VIP",
                "-d",
            ])
            .arg(vip(i).to_string())
            .args(["-j", "MARK", "--set-mark"])
            .arg(format!("{:#x}", 0x100 + i))
            .status()
            .unwrap();
        assert!(st.success());
        done += 1;
        if t.elapsed() > budget {
            break;
        }
    }
    let dk_elapsed = t.elapsed();
    let dk_full = if done == n {
        dk_elapsed
    } else {
        println!(
            "  (docker way stopped after {done} rules at the {budget:?} budget; extrapolated linearly)"
        );
        dk_elapsed.mul_f64(f64::from(n) / f64::from(done))
    };
    // Docker's way for one change: delete the old rule, append the new one (2 processes).
    let i = n / 2;
    let t = Instant::now();
    for (op, mark) in [("-D", 0x100 + i), ("-A", 0x0fff_0000 + i)] {
        let st = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "iptables",
                "-t",
                "mangle",
                op,
                "DOCKER-VIP",
                "-d",
            ])
            .arg(vip(i).to_string())
            .args(["-j", "MARK", "--set-mark"])
            .arg(format!("{mark:#x}"))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let dk_one = t.elapsed();
    drop(ns);

    println!(
        "  vipmesh apply from empty        : {:>9.3} s",
        secs(vm_full)
    );
    println!(
        "  vipmesh apply, nothing changed  : {:>9.3} s (observe only, no restore)",
        secs(vm_noop)
    );
    println!(
        "  vipmesh apply, 1 rule changed   : {:>9.3} s (observe + restore + read-back)",
        secs(vm_one)
    );
    println!(
        "  same, Verify::Skip              : {:>9.3} s (observe + restore)",
        secs(vm_one_noverify)
    );
    println!(
        "  same, ObserveMode::Cached + Skip: {:>9.3} s (restore only)",
        secs(vm_one_cached)
    );
    println!(
        "  iptables -A x {n:<6} (Docker)   : {:>9.3} s",
        secs(dk_full)
    );
    println!(
        "  iptables -D + -A (Docker, 1 chg): {:>9.3} s",
        secs(dk_one)
    );
    println!(
        "  ratio from empty  (docker / vipmesh): {:>8.1}x",
        secs(dk_full) / secs(vm_full)
    );
    println!(
        "  ratio 1 change    (docker / vipmesh): {:>8.2}x (Verify::Skip: {:.2}x)",
        secs(dk_one) / secs(vm_one),
        secs(dk_one) / secs(vm_one_noverify)
    );
    println!(
        "  ratio 1 change, Cached + Skip (docker / vipmesh): {:>8.2}x",
        secs(dk_one) / secs(vm_one_cached)
    );
}

/// Send `count` datagrams from inside `ns`; returns the wall time.
fn blast(ns: &str, count: u32) -> Duration {
    let netns = vipmesh_netns::Netns::named(ns).unwrap();
    netns
        .run(move || {
            let s = UdpSocket::bind("10.98.0.1:0").unwrap();
            s.connect("10.98.0.2:9999").unwrap();
            let buf = [0u8; 32];
            let t = Instant::now();
            for _ in 0..count {
                // ENOBUFS/ECONNREFUSED are irrelevant here; every datagram still traverses.
                let _ = s.send(&buf);
            }
            t.elapsed()
        })
        .unwrap()
}

fn per_packet_cost() {
    println!("== per-packet cost of a linear mangle chain (UDP, matching rule last) ==");
    let cli = Ns::new("pc");
    let lb = Ns::new("pl");
    sh(&format!(
        "ip link add eth0 netns {} type veth peer name eth0 netns {}",
        cli.0, lb.0
    ));
    cli.sh("ip addr add 10.98.0.1/24 dev eth0 && ip link set eth0 up");
    lb.sh("ip addr add 10.98.0.2/24 dev eth0 && ip link set eth0 up");
    lb.sh("iptables -A INPUT -p udp --dport 9999 -j DROP");
    // Resolve the neighbour once.
    cli.sh("ping -c1 -W2 10.98.0.2 >/dev/null");
    let a = lb.applier();
    let hit = Some(Ipv4Addr::new(10, 98, 0, 2));
    let mut base = f64::NAN;
    println!(
        "  {:>6}  {:>12}  {:>14}  {:>16}",
        "VIPs", "packets", "ns/packet", "chain ns/packet"
    );
    for n in [0u32, 10, 1_000, 10_000] {
        a.apply(&ruleset(n, None, hit)).unwrap();
        let count = if n >= 10_000 { 20_000 } else { 100_000 };
        // Best of three: the machine is shared.
        let best = (0..3).map(|_| blast(&cli.0, count)).min().unwrap();
        let per = secs(best) * 1e9 / f64::from(count);
        if n == 0 {
            base = per;
        }
        let marked = lb.sh("iptables-save -c -t mangle");
        assert!(n == 0 || marked.contains("--set-xmark 0x"), "rules present");
        println!("  {n:>6}  {count:>12}  {per:>14.0}  {:>16.0}", per - base);
    }
    a.teardown(Family::V4).unwrap();
}

/// `VIPMESH_ONLY=1` skips Docker's way (minutes at 10k) and the per-packet part.
fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(10_000);
    let out = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        eprintln!("!!! nf_compare needs root (network namespaces, iptables) !!!");
        std::process::exit(2);
    }
    println!("iptables: {}", sh("iptables -V").trim());
    apply_cost(n);
    if std::env::var_os("VIPMESH_ONLY").is_none() {
        per_packet_cost();
    }
}
