//! Golden tests: the VIP and ingress rule sets render (from an empty kernel) to checked-in
//! `iptables-restore` text. Update with `BLESS=1 cargo test -p vipmesh-netfilter --test golden`.
//! Each golden is also parsed back and traced, so the text is checked for behaviour too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;

use common::*;
use vipmesh_netfilter::trace::{Packet, Tracer, Verdict};
use vipmesh_netfilter::*;

fn golden(name: &str, rs: &OwnedRuleset) -> String {
    let text = plan(rs, &Observed::empty(rs.family())).unwrap().to_string();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with BLESS=1)", path.display()));
    assert_eq!(
        text,
        want,
        "{name} differs from {} (BLESS=1 to update)",
        path.display()
    );
    text
}

/// Turn restore text for an empty kernel into the equivalent iptables-save dump (jumps first,
/// as the kernel lists built-in chains), to trace through it.
fn as_dump(restore: &str) -> SaveDump {
    let mut out = String::new();
    for section in restore.split_inclusive("COMMIT\n") {
        let mut head = Vec::new();
        let mut jumps = Vec::new();
        let mut rules = Vec::new();
        for l in section.lines() {
            if l.starts_with('*') || l.starts_with(':') {
                head.push(l.to_owned());
            } else if let Some(r) = l.strip_prefix("-I ") {
                jumps.push(format!("-A {r}"));
            } else if l.starts_with("-A ") {
                rules.push(l.to_owned());
            }
        }
        for l in head.iter().chain(&jumps).chain(&rules) {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    parse_save(&out).unwrap()
}

#[test]
fn vip_lb_golden() {
    let text = golden("vip_lb", &vip_lb(3, true));
    let t = Tracer::new(as_dump(&text));
    let tr = t
        .trace(
            Table::Mangle,
            BuiltinChain::Input,
            Packet::tcp(ip("10.0.0.7"), ip("10.0.1.6"), 80),
        )
        .unwrap();
    assert_eq!(tr.packet.mark, 0x102);
    let tr = t
        .trace(
            Table::Nat,
            BuiltinChain::Postrouting,
            Packet::tcp(ip("10.0.0.7"), ip("10.0.0.9"), 80).ipvs(),
        )
        .unwrap();
    assert_eq!(tr.verdict, Verdict::Snat(ip("10.0.0.2")));
    let tr = t
        .trace(
            Table::Nat,
            BuiltinChain::Postrouting,
            Packet::tcp(ip("10.0.0.7"), ip("10.0.0.9"), 80),
        )
        .unwrap();
    assert_eq!(
        tr.verdict,
        Verdict::Policy("ACCEPT".into()),
        "no SNAT without IPVS"
    );
    let tr = t
        .trace(
            Table::Filter,
            BuiltinChain::Input,
            Packet::tcp(ip("10.0.0.7"), ip("10.0.1.250"), 80),
        )
        .unwrap();
    assert_eq!(tr.verdict, Verdict::Reject(RejectWith::TcpReset));
}

#[test]
fn ingress_host_golden() {
    let text = golden("ingress_host", &ingress_host());
    let t = Tracer::new(as_dump(&text)).local_addrs([ip("192.168.50.11"), ip("127.0.0.1")]);
    let tr = t
        .trace(
            Table::Nat,
            BuiltinChain::Prerouting,
            Packet::tcp(ip("192.168.50.100"), ip("192.168.50.11"), 30000),
        )
        .unwrap();
    assert_eq!(
        tr.verdict,
        Verdict::Dnat(NatTo {
            addr: ip("172.18.0.2"),
            port: Some(port(30000))
        })
    );
    let tr = t
        .trace(
            Table::Nat,
            BuiltinChain::Prerouting,
            Packet::tcp(ip("192.168.50.100"), ip("192.168.50.99"), 30000),
        )
        .unwrap();
    assert_eq!(
        tr.verdict,
        Verdict::Policy("ACCEPT".into()),
        "not a local address: no DNAT"
    );
    let tr = t
        .trace(
            Table::Filter,
            BuiltinChain::Forward,
            Packet::tcp(ip("192.168.50.100"), ip("172.18.0.2"), 30000),
        )
        .unwrap();
    assert_eq!(tr.verdict, Verdict::Accept);
}

#[test]
fn ingress_sbox_golden() {
    let text = golden("ingress_sbox", &ingress_sbox(true));
    let t = Tracer::new(as_dump(&text));
    let tr = t
        .trace(
            Table::Mangle,
            BuiltinChain::Prerouting,
            Packet::tcp(ip("192.168.50.100"), ip("172.18.0.2"), 30000),
        )
        .unwrap();
    assert_eq!(tr.packet.mark, 0x100);
}

#[test]
fn ingress_task_golden() {
    let text = golden("ingress_task", &ingress_task());
    let t = Tracer::new(as_dump(&text));
    let tr = t
        .trace(
            Table::Nat,
            BuiltinChain::Prerouting,
            Packet::tcp(ip("10.255.0.2"), ip("10.255.0.5"), 30000),
        )
        .unwrap();
    assert_eq!(tr.verdict, Verdict::Redirect(port(80)));
    assert_eq!(tr.packet.dport, 80);
    let tr = t
        .trace(
            Table::Filter,
            BuiltinChain::Input,
            Packet::tcp(ip("10.255.0.2"), ip("10.255.0.5"), 22),
        )
        .unwrap();
    assert_eq!(tr.verdict, Verdict::Drop);
    let tr = t
        .trace(
            Table::Filter,
            BuiltinChain::Input,
            Packet::tcp(ip("10.255.0.2"), ip("10.255.0.5"), 80),
        )
        .unwrap();
    assert_eq!(tr.verdict, Verdict::Accept);
}

#[test]
fn goldens_are_deterministic() {
    let a = plan(&ingress_host(), &Observed::empty(Family::V4))
        .unwrap()
        .to_string();
    let b = plan(&ingress_host(), &Observed::empty(Family::V4))
        .unwrap()
        .to_string();
    assert_eq!(a, b);
}
