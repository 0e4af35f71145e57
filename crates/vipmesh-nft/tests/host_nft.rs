//! Host-kernel tests (root; each in a fresh network namespace it creates and deletes): the
//! whole typed subset round-trips through the kernel, element changes are partial, foreign
//! tables and iptables rules stay byte-identical, errors name what failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use vipmesh_netns::Netns;
use vipmesh_nft::*;
use vipmesh_testkit::{Requirement, TestNetns, require};

fn setup() -> (TestNetns, Nft) {
    require(&[Requirement::Netns, Requirement::Tool("nft")]);
    let t = TestNetns::new();
    let nft = Nft::new(Arc::new(Netns::named(t.name()).unwrap()));
    (t, nft)
}

fn ruleset(t: &TestNetns) -> String {
    t.sh("nft list ruleset")
}

/// `nft list ruleset` without our table `vipmesh-<id>` (blocks are separated by top-level
/// `table` lines).
fn foreign_part(rs: &str, ours: &str) -> String {
    let mut out = String::new();
    let mut skip = false;
    for l in rs.lines() {
        if l.starts_with("table ") {
            skip = l.starts_with(&format!("table inet {ours} "));
        }
        if !skip {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

fn foreign_setup(t: &TestNetns) {
    t.sh("nft add table ip foreign && nft add chain ip foreign c '{ type filter hook input priority 0; }' && nft add rule ip foreign c ip daddr 1.2.3.4 counter drop");
    t.sh("iptables -t mangle -A PREROUTING -d 10.9.9.9 -j MARK --set-mark 7 && iptables -t nat -N DOCKER && iptables -t nat -A DOCKER -p tcp --dport 80 -j DNAT --to-destination 10.1.1.1:80");
}

#[test]
#[ignore = "privileged: needs root, netns and nft"]
fn every_builder_round_trips_through_the_kernel() {
    for runner in [Runner::Process, Runner::Library] {
        round_trip(runner);
    }
}

fn round_trip(runner: Runner) {
    let (t, nft) = setup();
    let nft = nft.with_runner(runner);
    let desired = full_table("ing");
    let r = nft.sync(&desired).unwrap();
    assert!(r.changed && matches!(r.plan, Plan::Rebuild { replace: false, .. }));
    let obs = nft.observe(desired.id()).unwrap().expect("table exists");
    assert_eq!(obs.owner, Ownership::Ours);
    assert!(obs.unparsed.is_empty(), "{:?}", obs.unparsed);
    assert_eq!(obs.table, desired);
    let r = nft.sync(&desired).unwrap();
    assert!(!r.changed, "second sync: {}", r.plan);
    assert!(ruleset(&t).contains("table inet vipmesh-ing"));
    // Only the test's namespace got the table (the library's socket was opened there).
    let init = std::process::Command::new("nsenter")
        .args([
            "--net=/proc/1/ns/net",
            "nft",
            "list",
            "table",
            "inet",
            "vipmesh-ing",
        ])
        .output()
        .unwrap();
    assert!(
        !init.status.success(),
        "{runner:?} wrote to the initial namespace"
    );
}

#[test]
#[ignore = "privileged: needs root, netns and nft"]
fn element_changes_are_partial_and_structure_changes_replace_atomically() {
    let (t, nft) = setup();
    let before = lb_table("lb", &vips(50));
    nft.sync(&before).unwrap();
    let handle_line = |t: &TestNetns| {
        t.sh("nft -a list table inet vipmesh-lb")
            .lines()
            .find(|l| l.contains("table inet"))
            .unwrap()
            .to_owned()
    };
    let h0 = handle_line(&t);
    let mut v = vips(50);
    v[7].mark = 0xabc;
    v.remove(3);
    let after = lb_table("lb", &v);
    let r = nft.sync(&after).unwrap();
    let Plan::Elements(ep) = &r.plan else {
        panic!("{}", r.plan)
    };
    assert_eq!(ep.len(), 3, "{}", r.plan);
    // Same table object (not recreated), new content.
    assert_eq!(handle_line(&t), h0);
    assert_eq!(nft.observe(after.id()).unwrap().unwrap().table, after);
    assert!(
        t.sh("nft list map inet vipmesh-lb vip4")
            .contains("10.64.0.7 : 0x00000abc")
    );
    // A structure change (another hook) replaces the table in one transaction.
    let mut other = Table::new(NetworkId::new("lb").unwrap());
    vip_marks(&mut other, &[Hook::Prerouting], &v).unwrap();
    let r = nft.sync(&other).unwrap();
    assert!(matches!(r.plan, Plan::Rebuild { replace: true, .. }));
    assert_eq!(nft.observe(other.id()).unwrap().unwrap().table, other);
    // Drift (a rule someone added to our table) is repaired by the next sync.
    t.sh("nft add rule inet vipmesh-lb vip_prerouting counter accept");
    let r = nft.sync(&other).unwrap();
    assert!(matches!(r.plan, Plan::Rebuild { replace: true, .. }));
    assert_eq!(nft.observe(other.id()).unwrap().unwrap().table, other);
}

#[test]
#[ignore = "privileged: needs root, netns and nft"]
fn foreign_tables_and_iptables_rules_stay_byte_identical() {
    let (t, nft) = setup();
    foreign_setup(&t);
    let rs0 = ruleset(&t);
    let ipt0 = t.sh("iptables-save | grep -v '^#'");
    nft.sync(&full_table("ing")).unwrap();
    nft.sync(&lb_table("ing", &vips(10))).unwrap();
    nft.sync(&lb_table("ing", &vips(12))).unwrap();
    let rs1 = ruleset(&t);
    assert!(rs1.contains("table inet vipmesh-ing"));
    assert_eq!(foreign_part(&rs1, "vipmesh-ing"), rs0);
    assert!(nft.teardown(&NetworkId::new("ing").unwrap()).unwrap());
    assert!(
        !nft.teardown(&NetworkId::new("ing").unwrap()).unwrap(),
        "absent is success"
    );
    assert_eq!(ruleset(&t), rs0);
    assert_eq!(t.sh("iptables-save | grep -v '^#'"), ipt0);
}

#[test]
#[ignore = "privileged: needs root, netns and nft"]
fn a_foreign_table_with_our_name_is_refused_and_never_deleted() {
    let (t, nft) = setup();
    let id = NetworkId::new("web").unwrap();
    for setup in [
        "nft add table inet vipmesh-web",
        "nft add table inet vipmesh-web '{ comment \"someone else\"; }'",
    ] {
        t.sh(setup);
        t.sh("nft add chain inet vipmesh-web mine");
        let rs0 = ruleset(&t);
        let e = nft.sync(&lb_table("web", &vips(3))).unwrap_err();
        assert!(matches!(e, Error::ForeignTable { .. }), "{e}");
        assert!(
            e.to_string().contains("vipmesh-web") && e.to_string().contains(t.name()),
            "{e}"
        );
        let e = nft.teardown(&id).unwrap_err();
        assert!(matches!(e, Error::ForeignTable { .. }), "{e}");
        assert_eq!(ruleset(&t), rs0);
        t.sh("nft delete table inet vipmesh-web");
    }
}

#[test]
#[ignore = "privileged: needs root, netns and nft"]
fn a_rejected_element_is_named_nothing_is_applied_and_the_cache_is_dropped() {
    for runner in [Runner::Process, Runner::Library] {
        rejected_element(runner);
    }
}

fn rejected_element(runner: Runner) {
    let (t, nft0) = setup();
    let nft = Nft::new(Arc::new(Netns::named(t.name()).unwrap()))
        .with_observe(ObserveMode::Cached)
        .with_runner(runner);
    let v = vips(20);
    nft.sync(&lb_table("lb", &v)).unwrap();
    // Someone deletes an element behind our back; the cache does not know.
    t.sh("nft delete element inet vipmesh-lb vip4 '{ 10.64.0.4 }'");
    let before = ruleset(&t);
    let mut v2 = v.clone();
    v2[4].mark = 0x4444; // delete 10.64.0.4 (gone: ENOENT) + add
    v2[5].mark = 0x5555;
    let e = nft.sync(&lb_table("lb", &v2)).unwrap_err();
    let Error::TransactionFailed {
        text,
        kernel_error,
        line,
        ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(text, "10.64.0.4", "{e}");
    assert!(line.is_some());
    assert!(kernel_error.contains("No such file or directory"), "{e}");
    assert!(e.to_string().contains("10.64.0.4"), "{e}");
    assert_eq!(ruleset(&t), before, "a failed transaction changes nothing");
    // The cache was dropped: the next sync lists the table and converges.
    let r = nft.sync(&lb_table("lb", &v2)).unwrap();
    assert!(r.changed && !r.from_cache);
    let r = nft.sync(&lb_table("lb", &v2)).unwrap();
    assert!(!r.changed && r.from_cache);
    assert_eq!(
        nft0.observe(&NetworkId::new("lb").unwrap())
            .unwrap()
            .unwrap()
            .table,
        lb_table("lb", &v2)
    );
    // An element the kernel refuses on add (same key, other value, added behind our back).
    t.sh("nft add element inet vipmesh-lb vip4_port '{ 10.9.0.1 . tcp . 80 : 0x1 }'");
    let mut v3 = v2.clone();
    v3.push(VipMark {
        vip: "10.9.0.1".parse().unwrap(),
        port: Some((Proto::TCP, 80)),
        mark: 0x2,
    });
    let before = ruleset(&t);
    let e = nft.sync(&lb_table("lb", &v3)).unwrap_err();
    let Error::TransactionFailed {
        text, kernel_error, ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(text, "10.9.0.1 . tcp . 80 : 0x2", "{e}");
    assert!(kernel_error.contains("File exists"), "{e}");
    assert_eq!(ruleset(&t), before);
    nft.sync(&lb_table("lb", &v3)).unwrap();
    assert_eq!(
        nft.observe(&NetworkId::new("lb").unwrap())
            .unwrap()
            .unwrap()
            .table,
        lb_table("lb", &v3)
    );
}

fn fake_nft(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("nft");
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
#[ignore = "privileged: needs root, netns and nft"]
fn missing_old_or_refusing_nft_gives_typed_errors() {
    let (t, _) = setup();
    let netns = || Arc::new(Netns::named(t.name()).unwrap());
    let id = NetworkId::new("x").unwrap();
    let e = Nft::new(netns())
        .with_tool("/nonexistent/nft")
        .observe(&id)
        .unwrap_err();
    assert!(
        matches!(e, Error::NftMissing { .. }) && e.is_not_found(),
        "{e}"
    );
    let dir = std::env::temp_dir().join(format!("vipmesh-nft-fake-{}", std::process::id()));
    let old = fake_nft(&dir.join("old"), "echo 'nftables v0.9.8 (E.D.S.)'");
    let e = Nft::new(netns())
        .with_tool(&old)
        .sync(&lb_table("x", &[]))
        .unwrap_err();
    let Error::NftTooOld { found, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(found, "0.9.8");
    // A kernel without an expression: nft reports EOPNOTSUPP at a line; we name the module.
    let refusing = fake_nft(
        &dir.join("eopnotsupp"),
        "case \"$1\" in --version) echo 'nftables v1.0.6 (Lester Gooch #5)';;\n\
         -j) echo 'Error: No such file or directory' >&2; exit 1;;\n\
         -f) cat >/dev/null; echo '/dev/stdin:30:1-40: Error: Could not process rule: Operation not supported' >&2; exit 1;;\n\
         esac",
    );
    let table = full_table("x");
    let script = plan(&table, None).unwrap().to_string();
    let line30 = script.lines().nth(29).unwrap();
    let e = Nft::new(netns())
        .with_tool(&refusing)
        .sync(&table)
        .unwrap_err();
    let Error::KernelUnsupported {
        line,
        modules,
        text,
        ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(*line, 30);
    assert_eq!(text, line30.trim());
    assert!(
        !modules.is_empty() && modules.iter().all(|m| m.starts_with("nf")),
        "{e}"
    );
    let nonf = fake_nft(
        &dir.join("nonf"),
        "case \"$1\" in --version) echo 'nftables v1.0.6';;\n\
         *) echo 'Error: Could not process rule: Protocol not supported' >&2; exit 1;;\n\
         esac",
    );
    let e = Nft::new(netns()).with_tool(&nonf).observe(&id).unwrap_err();
    assert!(
        matches!(
            e,
            Error::KernelNoNfTables {
                module: "nf_tables",
                ..
            }
        ),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "privileged: needs root, netns and nft"]
fn marks_are_set_on_real_traffic_by_one_lookup() {
    let (t, nft) = setup();
    // The test thread is inside the namespace (TestNetns enters it).
    t.sh("ip addr add 10.64.0.1/16 dev lo");
    nft.sync(&lb_table("lb", &vips(1000))).unwrap();
    // A foreign observer table counts the marks our table set (VIP i gets 0x100 + i).
    t.sh("nft add table ip obs && nft add chain ip obs c '{ type filter hook input priority 0; }' \
          && nft add rule ip obs c meta mark 0x100 counter && nft add rule ip obs c meta mark 0x4e5 counter \
          && nft add rule ip obs c meta mark 0x4e6 counter");
    let s = std::net::UdpSocket::bind("10.64.0.1:0").unwrap();
    // VIP 0: address only, any port. VIP 997 (10.64.3.229): address only. VIP 998
    // (10.64.3.230): tcp/82 only, so UDP to it stays unmarked.
    for dst in ["10.64.0.0:9", "10.64.3.229:9", "10.64.3.230:9"] {
        let _ = s.send_to(b"x", dst);
    }
    let obs = t.sh("nft list table ip obs");
    assert!(
        obs.contains("meta mark 0x00000100 counter packets 1 "),
        "{obs}"
    );
    assert!(
        obs.contains("meta mark 0x000004e5 counter packets 1 "),
        "{obs}"
    );
    assert!(
        obs.contains("meta mark 0x000004e6 counter packets 0 "),
        "{obs}"
    );
}

/// A TCP server in `ns` on `addr` that answers each connection with `name`.
fn serve(ns: &str, addr: &str, name: &'static str) {
    use std::io::Write as _;
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let l = Netns::named(ns)
        .unwrap()
        .run(move || std::net::TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.write_all(format!("{name}\n").as_bytes());
        }
    });
}

fn ask(ns: &str, addr: &str) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut s = vipmesh_testkit::vip::connect(ns, addr.parse().unwrap())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_owned())
}

#[test]
#[ignore = "privileged: needs root, netns and nft"]
fn published_port_dnat_and_task_redirect_carry_real_traffic() {
    require(&[Requirement::Netns, Requirement::Tool("nft")]);
    let mut topo = vipmesh_testkit::Topology::new("nftpub");
    let host = topo.ns("host");
    let sbox = topo.ns("sbox");
    let ext = topo.ns("ext");
    topo.veth((&host, "gw0"), (&sbox, "eth1"));
    topo.veth((&host, "up0"), (&ext, "eth0"));
    topo.addr(&host, "gw0", "172.18.0.1/24");
    topo.addr(&sbox, "eth1", "172.18.0.2/24");
    topo.addr(&host, "up0", "192.168.50.1/24");
    topo.addr(&ext, "eth0", "192.168.50.2/24");
    topo.sh(&sbox, "ip route add default via 172.18.0.1");
    topo.sh(&ext, "ip route add default via 192.168.50.1");
    topo.sh(&host, "sysctl -qw net.ipv4.ip_forward=1");
    // The "task" in sbox listens on 80 (published as 8080) and on 9999 (not published).
    serve(&sbox, "172.18.0.2:80", "task");
    serve(&sbox, "172.18.0.2:9999", "secret");
    assert_eq!(
        ask(&host, "172.18.0.2:9999").unwrap(),
        "secret",
        "before the rules"
    );

    let mut ht = Table::new(NetworkId::new("host").unwrap());
    publish_dnat(
        &mut ht,
        &[PublishedDnat {
            proto: Proto::TCP,
            port: 8080,
            to: "172.18.0.2:8080".parse().unwrap(),
        }],
    )
    .unwrap();
    Nft::new(Arc::new(Netns::named(&host).unwrap()))
        .sync(&ht)
        .unwrap();
    let mut st = Table::new(NetworkId::new("task").unwrap());
    task_ingress(
        &mut st,
        &IfName::new("eth1").unwrap(),
        &[TaskPort {
            proto: Proto::TCP,
            published: 8080,
            target: 80,
        }],
    )
    .unwrap();
    Nft::new(Arc::new(Netns::named(&sbox).unwrap()))
        .sync(&st)
        .unwrap();

    // From outside (prerouting DNAT, forwarded) and from the host itself (output DNAT) to a
    // local address: DNAT to the sandbox, REDIRECT 8080 -> 80 there.
    assert_eq!(ask(&ext, "192.168.50.1:8080").unwrap(), "task");
    assert_eq!(ask(&host, "172.18.0.1:8080").unwrap(), "task");
    // Other ports of the task on its ingress interface are dropped.
    assert!(
        ask(&host, "172.18.0.2:9999").is_err(),
        "unpublished port must be dropped"
    );
    // A port that is not published is not DNATed: nothing listens on the host.
    assert!(ask(&ext, "192.168.50.1:8081").is_err());
}

#[test]
#[ignore = "privileged: needs root, netns and nft"]
fn sets_and_verdict_maps_round_trip_through_the_kernel() {
    let (_t, nft) = setup();
    let mut t = Table::new(NetworkId::new("vm").unwrap());
    let name = |s: &str| Name::new(s).unwrap();
    t.add_chain(name("svc_a"), None).unwrap();
    t.add_chain(
        name("dispatch"),
        Some(
            BaseChain::new(
                ChainType::Filter,
                Hook::Input,
                Priority::FILTER,
                Policy::Accept,
            )
            .unwrap(),
        ),
    )
    .unwrap();
    let mut set = Set::new(KeyType::new(&[KeyPart::Mark]).unwrap());
    set.insert(Key::new(&[KeyValue::Mark(0x100)]).unwrap())
        .unwrap();
    t.add_set(name("marks"), set).unwrap();
    let kt = KeyType::new(&[KeyPart::Ipv4Addr, KeyPart::InetService]).unwrap();
    let mut vmap = Map::new(kt, ValueType::Verdict);
    let k =
        |a: &str, p| Key::new(&[KeyValue::Ipv4(a.parse().unwrap()), KeyValue::Port(p)]).unwrap();
    vmap.insert(
        k("10.0.0.9", 80),
        Value::Verdict(Verdict::Jump(name("svc_a"))),
    )
    .unwrap();
    vmap.insert(k("10.0.0.9", 81), Value::Verdict(Verdict::Drop))
        .unwrap();
    t.add_map(name("dispatch_map"), vmap).unwrap();
    t.add_rule(
        &name("dispatch"),
        Rule::new(
            vec![Match::CtState(vec![CtState::Established, CtState::Related])],
            Statement::Verdict(Verdict::Accept),
        ),
    )
    .unwrap();
    t.add_rule(
        &name("dispatch"),
        Rule::new(
            vec![],
            Statement::Vmap {
                key: KeyExpr::new(&[Selector::Ip4Daddr, Selector::ThDport]).unwrap(),
                map: name("dispatch_map"),
            },
        ),
    )
    .unwrap();
    t.add_rule(
        &name("svc_a"),
        Rule::new(
            vec![Match::mark_range(0x100, 0x100).unwrap()],
            Statement::Verdict(Verdict::Return),
        ),
    )
    .unwrap();
    nft.sync(&t).unwrap();
    let obs = nft.observe(t.id()).unwrap().unwrap();
    assert!(obs.unparsed.is_empty(), "{:?}", obs.unparsed);
    assert_eq!(obs.table, t);
    // A verdict-map element change is a partial sync too.
    t.insert_element(
        &name("dispatch_map"),
        k("10.0.0.9", 81),
        Some(Value::Verdict(Verdict::Accept)),
    )
    .unwrap();
    t.remove_element(&name("marks"), &Key::new(&[KeyValue::Mark(0x100)]).unwrap());
    let r = nft.sync(&t).unwrap();
    assert!(
        matches!(&r.plan, Plan::Elements(ep) if ep.len() == 3),
        "{}",
        r.plan
    );
    assert_eq!(nft.observe(t.id()).unwrap().unwrap().table, t);
}
