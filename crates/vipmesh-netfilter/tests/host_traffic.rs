//! Real traffic through rules set by vipmesh, between namespaces this test creates:
//!
//! ```text
//!  cli  eth0 10.99.0.1/24 ──veth── eth0 10.99.0.2/24  lb  eth1 10.99.2.1/24 ──veth── eth0 10.99.2.2/24  be
//!                                  httpd :80 ("lb")                                   httpd :8080 ("backend")
//! ```
//! Traffic goes only to addresses inside these namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use vipmesh_netfilter::trace::{Packet, Tracer, Verdict};
use vipmesh_netfilter::*;

struct Lab {
    cli: Ns,
    lb: Ns,
    be: Ns,
    dir: std::path::PathBuf,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let cli = Ns::new(&format!("{tag}c"));
        let mut lb = Ns::new(&format!("{tag}l"));
        let mut be = Ns::new(&format!("{tag}b"));
        veth(&cli, "eth0", "10.99.0.1/24", &lb, "eth0", "10.99.0.2/24");
        veth(&lb, "eth1", "10.99.2.1/24", &be, "eth0", "10.99.2.2/24");
        be.sh("ip route add default via 10.99.2.1");
        lb.sh("sysctl -qw net.ipv4.ip_forward=1");
        let dir = std::env::temp_dir().join(format!("vmnf-{}-{tag}", std::process::id()));
        for (sub, body) in [("lb", "lb"), ("be", "backend")] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            std::fs::write(dir.join(sub).join("index.html"), format!("{body}\n")).unwrap();
        }
        lb.spawn(&format!(
            "busybox httpd -f -p 80 -h {}",
            dir.join("lb").display()
        ));
        be.spawn(&format!(
            "busybox httpd -f -p 8080 -h {}",
            dir.join("be").display()
        ));
        wait_http(&lb, "http://127.0.0.1:80/");
        wait_http(&be, "http://127.0.0.1:8080/");
        Lab { cli, lb, be, dir }
    }

    /// `curl` from the client: (exit code, body).
    fn curl(&self, url: &str) -> (i32, String) {
        let out = self.cli.try_sh(&format!("curl -s -m 5 {url}"));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    }

    fn tracer(&self) -> Tracer {
        Tracer::new(parse_save(&self.lb.sh("iptables-save")).unwrap()).local_addrs([
            ip("10.99.0.2"),
            ip("10.99.2.1"),
            ip("127.0.0.1"),
        ])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Poll until the server answers (readiness, not a timing assertion).
fn wait_http(ns: &Ns, url: &str) {
    vipmesh_testkit::eventually(
        std::time::Duration::from_secs(10),
        &format!("[{}] {url} to come up", ns.name),
        || {
            let out = ns.try_sh(&format!("curl -s -m 1 -o /dev/null {url}"));
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("curl: {}", out.status))
            }
        },
    );
}

/// Hooks chain `to` on builtin chain `from` of `table`.
fn hook(table: Table, from: BuiltinChain, to: &ChainName, rs: &mut OwnedRuleset) {
    rs.add_jump(table, jump(from, to, Matches::new())).unwrap();
}

/// Mark, DNAT and REDIRECT rules in the lb namespace.
fn lb_rules() -> OwnedRuleset {
    let mut rs = OwnedRuleset::new(Family::V4);
    let vip = cn("VIPMESH-VIP");
    rs.add_rule(
        Table::Mangle,
        &vip,
        Rule::new(
            Matches::new()
                .destination("10.99.0.2".parse().unwrap())
                .protocol(Protocol::Tcp)
                .dport(port(80).into()),
            Target::SetMark(Mark::new(0x103)),
        )
        .with_comment(Comment::new("svc web").unwrap()),
    )
    .unwrap();
    hook(Table::Mangle, BuiltinChain::Prerouting, &vip, &mut rs);
    let nat = cn("VIPMESH-PUBLISH");
    rs.add_rule(
        Table::Nat,
        &nat,
        Rule::new(
            Matches::new()
                .destination("10.99.0.2".parse().unwrap())
                .protocol(Protocol::Tcp)
                .dport(port(8080).into()),
            Target::Dnat(NatTo {
                addr: ip("10.99.2.2"),
                port: Some(port(8080)),
            }),
        ),
    )
    .unwrap();
    rs.add_rule(
        Table::Nat,
        &nat,
        Rule::new(
            Matches::new()
                .destination("10.99.0.2".parse().unwrap())
                .protocol(Protocol::Tcp)
                .dport(port(30000).into()),
            Target::Redirect(port(80)),
        ),
    )
    .unwrap();
    hook(Table::Nat, BuiltinChain::Prerouting, &nat, &mut rs);
    rs
}

fn mark_counter(lb: &Ns) -> u64 {
    let s = lb.sh("iptables-save -c -t mangle");
    let line = s
        .lines()
        .find(|l| l.ends_with("-A INPUT -m mark --mark 0x103"))
        .unwrap_or_else(|| panic!("counter rule missing: {s}"));
    line.trim_start_matches('[')
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn mark_dnat_redirect_carry_real_traffic() {
    require_privileged();
    let lab = Lab::new("t1");
    // A foreign counting rule: packets that arrive with our mark.
    lab.lb
        .sh("iptables -t mangle -A INPUT -m mark --mark 0x103");

    // Before: no mark, no DNAT, no REDIRECT.
    assert_eq!(lab.curl("http://10.99.0.2/"), (0, "lb".into()));
    assert_eq!(mark_counter(&lab.lb), 0);
    assert_eq!(
        lab.curl("http://10.99.0.2:8080/").0,
        7,
        "nothing listens on lb:8080 yet"
    );
    assert_eq!(
        lab.curl("http://10.99.0.2:30000/").0,
        7,
        "nothing listens on lb:30000 yet"
    );

    let a = lab.lb.applier();
    assert!(a.apply(&lb_rules()).unwrap().changed);

    // MARK: every packet of the connection arrives marked.
    for _ in 0..3 {
        assert_eq!(lab.curl("http://10.99.0.2/"), (0, "lb".into()));
    }
    let marked = mark_counter(&lab.lb);
    assert!(
        marked >= 9,
        "expected >= 3 packets per connection to carry mark 0x103, counter {marked}"
    );
    // DNAT: lb:8080 reaches the backend's httpd.
    assert_eq!(lab.curl("http://10.99.0.2:8080/"), (0, "backend".into()));
    // REDIRECT: lb:30000 reaches lb's own :80.
    assert_eq!(lab.curl("http://10.99.0.2:30000/"), (0, "lb".into()));

    // The tracer over the kernel's own dump agrees with the traffic.
    let t = lab.tracer();
    let c = ip("10.99.0.1");
    let tr = t
        .trace(
            Table::Mangle,
            BuiltinChain::Prerouting,
            Packet::tcp(c, ip("10.99.0.2"), 80),
        )
        .unwrap();
    assert_eq!(tr.packet.mark, 0x103);
    let tr = t
        .trace(
            Table::Nat,
            BuiltinChain::Prerouting,
            Packet::tcp(c, ip("10.99.0.2"), 8080),
        )
        .unwrap();
    assert_eq!(
        tr.verdict,
        Verdict::Dnat(NatTo {
            addr: ip("10.99.2.2"),
            port: Some(port(8080))
        })
    );
    let tr = t
        .trace(
            Table::Nat,
            BuiltinChain::Prerouting,
            Packet::tcp(c, ip("10.99.0.2"), 30000),
        )
        .unwrap();
    assert_eq!(tr.verdict, Verdict::Redirect(port(80)));

    // Teardown: behaviour is back to before, the foreign counter rule is still there.
    a.teardown(Family::V4).unwrap();
    let before = mark_counter(&lab.lb);
    assert_eq!(lab.curl("http://10.99.0.2/"), (0, "lb".into()));
    assert_eq!(mark_counter(&lab.lb), before, "no mark after teardown");
    assert_eq!(lab.curl("http://10.99.0.2:8080/").0, 7);
    let _ = &lab.be;
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn reject_makes_a_vip_without_backends_fail_fast() {
    require_privileged();
    let lab = Lab::new("t2");
    assert_eq!(lab.curl("http://10.99.0.2/"), (0, "lb".into()));
    let mut rs = OwnedRuleset::new(Family::V4);
    let c = cn("VIPMESH-NOBACKEND");
    rs.add_rule(
        Table::Filter,
        &c,
        Rule::new(
            Matches::new()
                .destination("10.99.0.2".parse().unwrap())
                .protocol(Protocol::Tcp)
                .dport(port(80).into()),
            Target::Reject(RejectWith::TcpReset),
        ),
    )
    .unwrap();
    hook(Table::Filter, BuiltinChain::Input, &c, &mut rs);
    let a = lab.lb.applier();
    a.apply(&rs).unwrap();
    // curl exit 7 = "Failed to connect": the RST arrives, not a timeout (28).
    assert_eq!(lab.curl("http://10.99.0.2/").0, 7);
    let tr = lab
        .tracer()
        .trace(
            Table::Filter,
            BuiltinChain::Input,
            Packet::tcp(ip("10.99.0.1"), ip("10.99.0.2"), 80),
        )
        .unwrap();
    assert_eq!(tr.verdict, Verdict::Reject(RejectWith::TcpReset));
    a.teardown(Family::V4).unwrap();
    assert_eq!(lab.curl("http://10.99.0.2/"), (0, "lb".into()));
}
