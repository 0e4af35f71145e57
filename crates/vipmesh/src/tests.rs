//! Logic tests on the in-memory backends (kernel semantics from `vipmesh-ipvs`'s Fake), golden
//! plan and rule texts, and property tests.

use std::net::IpAddr;
use std::path::PathBuf;

use proptest::prelude::*;
use vipmesh_ipvs::fake::Fake;
use vipmesh_ipvs::{self as ipvs, IpvsBackend};

use crate::dataplane::fake::{FakeHost, FakeRules};
use crate::model::*;
use crate::plan::{DeleteReason, DrainBook, Observed, Step, plan};
use crate::{Error, Mesh};

type FakeMesh = Mesh<Fake, FakeRules, FakeHost>;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn network() -> Network {
    Network {
        name: "demo".into(),
        subnet: "10.0.0.0/24".parse().unwrap(),
        lb_netns: "lb-demo".into(),
        lb_interface: "eth0".into(),
        lb_addr: ip("10.0.0.2"),
    }
}

fn sample() -> Vec<Service> {
    let vote = Service::vip("vote", ip("10.0.0.9"), &[ip("10.0.0.10"), ip("10.0.0.11")]).unwrap();
    let mut api = Service::vip("api", ip("10.0.0.20"), &[ip("10.0.0.21")]).unwrap();
    api.ports = vec![
        ServicePort {
            protocol: Protocol::Tcp,
            port: 8080,
        },
        ServicePort {
            protocol: Protocol::Udp,
            port: 53,
        },
    ];
    api.scheduler = Scheduler::new("wrr").unwrap();
    api.persistence = Some(Persistence {
        timeout_secs: 300,
        netmask_prefix: 24,
    });
    let web = Service::dnsrr("web", &[ip("10.0.0.30"), ip("10.0.0.31")]).unwrap();
    let empty = Service::vip("empty", ip("10.0.0.40"), &[]).unwrap();
    vec![vote, api, web, empty]
}

fn state(services: Vec<Service>) -> DesiredState {
    DesiredState::new(network(), services, Options::default()).unwrap()
}

fn fake_mesh() -> FakeMesh {
    Mesh::from_parts(
        Fake::new(),
        FakeRules::default(),
        FakeHost::default(),
        "fake",
    )
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with BLESS=1 to create)", path.display()));
    assert_eq!(
        actual, expected,
        "golden {name} differs (BLESS=1 to update)"
    );
}

#[test]
fn golden_initial_plan() {
    let p = plan(
        &state(sample()),
        &Observed::default(),
        &DrainBook::default(),
        0,
    )
    .unwrap();
    golden("plan_initial.txt", &p.to_string());
}

#[test]
fn golden_vip_rules() {
    let desired = state(sample());
    let p = plan(&desired, &Observed::default(), &DrainBook::default(), 0).unwrap();
    let rs = crate::rules::ruleset(&desired, &p.marks).unwrap();
    let text = vipmesh_netfilter::plan(
        &rs,
        &vipmesh_netfilter::Observed::empty(vipmesh_netfilter::Family::V4),
    )
    .unwrap()
    .to_string();
    golden("rules_vip.txt", &text);
}

#[test]
fn apply_then_plan_is_empty_and_apply_twice_changes_nothing() {
    let desired = state(sample());
    let mut m = fake_mesh();
    let r = m.apply_at(&desired, 0).unwrap();
    assert!(r.ok(), "{r}");
    let (p, _) = m.plan_at(&desired, 1).unwrap();
    assert!(p.is_empty(), "{p}");
    let ops_before = m.ipvs().log.len();
    let batches = m.rules().batches;
    let r = m.apply_at(&desired, 2).unwrap();
    assert!(r.steps.is_empty(), "{r}");
    assert_eq!(
        m.ipvs().log.len(),
        ops_before,
        "no IPVS operation on re-apply"
    );
    assert_eq!(m.rules().batches, batches, "no netfilter batch on re-apply");
    // The seed's shape: FWM 256 rr with both tasks as Masq weight 1.
    let mark = m.marks(&desired).unwrap()["vote"];
    assert_eq!(
        mark, 0x102,
        "marks are allocated in name order: api, empty, vote"
    );
    let key = ipvs::ServiceKey::fwmark(ipvs::Family::Inet, mark).unwrap();
    let dests = m.ipvs().dests(&key).unwrap();
    let addrs: Vec<_> = dests
        .iter()
        .map(|d| (d.dest.key.addr, d.dest.weight.get()))
        .collect();
    assert_eq!(addrs, vec![(ip("10.0.0.10"), 1), (ip("10.0.0.11"), 1)]);
    assert!(dests.iter().all(|d| d.dest.fwd == ipvs::FwdMethod::Masq));
}

#[test]
fn dnsrr_services_program_nothing_in_ipvs() {
    let desired = state(vec![Service::dnsrr("web", &[ip("10.0.0.30")]).unwrap()]);
    let mut m = fake_mesh();
    m.apply_at(&desired, 0).unwrap();
    assert!(m.ipvs().services().unwrap().is_empty());
    assert!(m.host().addrs.is_empty());
}

#[test]
fn a_restarted_controller_keeps_the_marks_and_changes_nothing() {
    let desired = state(sample());
    let mut m = fake_mesh();
    assert!(m.apply_at(&desired, 0).unwrap().ok());
    let marks = m.marks(&desired).unwrap();
    // "Restart": a new controller over the same kernel state, with the services listed in
    // another order (the allocation must not depend on it).

    let (ipvs, rules, host) = into_parts(m);
    let mut services = sample();
    services.reverse();
    let desired2 = state(services);
    let mut m2 = Mesh::from_parts(ipvs, rules, host, "fake");
    let ops = m2.ipvs().log.len();
    let (p, _) = m2.plan_at(&desired2, 10).unwrap();
    assert!(p.is_empty(), "{p}");
    assert_eq!(m2.marks(&desired2).unwrap(), marks);
    assert!(m2.apply_at(&desired2, 11).unwrap().steps.is_empty());
    assert_eq!(m2.ipvs().log.len(), ops, "no service recreated");
}

fn into_parts(mut m: FakeMesh) -> (Fake, FakeRules, FakeHost) {
    (
        std::mem::take(m.ipvs()),
        std::mem::take(m.rules()),
        std::mem::take(m.host()),
    )
}

#[test]
fn new_services_do_not_reuse_a_mark_while_its_old_service_exists() {
    let mut m = fake_mesh();
    let a = Service::vip("a", ip("10.0.0.9"), &[ip("10.0.0.10")]).unwrap();
    let b = Service::vip("b", ip("10.0.0.19"), &[ip("10.0.0.11")]).unwrap();
    m.apply_at(&state(vec![a.clone(), b.clone()]), 0).unwrap();
    let marks = m.marks(&state(vec![a.clone(), b.clone()])).unwrap();
    assert_eq!(marks["a"], 0x100);
    assert_eq!(marks["b"], 0x101);
    // Replace a by c in one step: c must not take 0x100, which IPVS still holds until the
    // same batch deletes it.
    let c = Service::vip("c", ip("10.0.0.29"), &[ip("10.0.0.12")]).unwrap();
    let desired = state(vec![b.clone(), c]);
    let (p, _) = m.plan_at(&desired, 1).unwrap();
    assert_eq!(p.marks[&ServiceName::new("c").unwrap()], 0x102, "{p}");
    assert!(p.steps.contains(&Step::DelService { mark: 0x100 }), "{p}");
    assert!(m.apply_at(&desired, 1).unwrap().ok());
    assert!(m.plan_at(&desired, 2).unwrap().0.is_empty());
    assert!(
        !m.host().addrs.contains(&ip("10.0.0.9")),
        "the old VIP is removed"
    );
}

#[test]
fn foreign_ipvs_services_are_never_touched() {
    let mut m = fake_mesh();
    let foreign = ipvs::IpvsService::new(
        ipvs::ServiceKey::fwmark(ipvs::Family::Inet, 7).unwrap(),
        ipvs::Scheduler::RR,
    )
    .unwrap();
    let tcp = ipvs::IpvsService::new(
        ipvs::ServiceKey::addr(ipvs::Protocol::Tcp, ip("192.0.2.1"), 80),
        ipvs::Scheduler::RR,
    )
    .unwrap();
    for r in m
        .ipvs()
        .execute(&[ipvs::Op::AddService(foreign), ipvs::Op::AddService(tcp)])
    {
        r.unwrap();
    }
    m.apply_at(&state(sample()), 0).unwrap();
    m.apply_at(&state(vec![]), 1).unwrap();
    let left: Vec<_> = m
        .ipvs()
        .services()
        .unwrap()
        .into_iter()
        .map(|e| e.service.key)
        .collect();
    assert_eq!(left.len(), 2, "only the foreign services remain: {left:?}");
}

fn drain_setup(udp: bool) -> (FakeMesh, DesiredState, DesiredState, ipvs::ServiceKey) {
    let mut svc =
        Service::vip("vote", ip("10.0.0.9"), &[ip("10.0.0.10"), ip("10.0.0.11")]).unwrap();
    if udp {
        svc.ports = vec![ServicePort {
            protocol: Protocol::Udp,
            port: 53,
        }];
    }
    let before = state(vec![svc.clone()]);
    svc.backends.retain(|b| b.addr != ip("10.0.0.11"));
    let after = state(vec![svc]);
    let mut m = fake_mesh();
    assert!(m.apply_at(&before, 0).unwrap().ok());
    let key = ipvs::ServiceKey::fwmark(ipvs::Family::Inet, 0x100).unwrap();
    (m, before, after, key)
}

/// The real server `drain_setup` removes.
fn drained_key() -> ipvs::DestKey {
    ipvs::DestKey {
        addr: ip("10.0.0.11"),
        port: 0,
    }
}

/// Whether the plan deletes a real server for `reason`.
fn deletes(p: &crate::plan::Plan, reason: DeleteReason) -> bool {
    p.steps
        .iter()
        .any(|s| matches!(s, Step::DelDest { reason: r, .. } if *r == reason))
}

fn dest_weights(m: &mut FakeMesh, key: &ipvs::ServiceKey) -> Vec<(IpAddr, u32)> {
    m.ipvs()
        .dests(key)
        .unwrap()
        .iter()
        .map(|d| (d.dest.key.addr, d.dest.weight.get()))
        .collect()
}

#[test]
fn a_removed_backend_drains_then_goes_when_idle() {
    let (mut m, _, after, key) = drain_setup(false);
    let dk = drained_key();
    m.ipvs().set_conns(&key, &dk, 3, 1).unwrap();
    let r = m.apply_at(&after, 100).unwrap();
    assert!(r.ok(), "{r}");
    assert_eq!(
        dest_weights(&mut m, &key),
        vec![(ip("10.0.0.10"), 1), (ip("10.0.0.11"), 0)]
    );
    assert_eq!(m.drains().started(0x100, ip("10.0.0.11")), Some(100));
    // Still busy before the timeout: nothing changes.
    let (p, _) = m.plan_at(&after, 110).unwrap();
    assert!(p.is_empty(), "{p}");
    // Idle: deleted as drained.
    m.ipvs().set_conns(&key, &dk, 0, 0).unwrap();
    let (p, _) = m.plan_at(&after, 111).unwrap();
    assert!(deletes(&p, DeleteReason::Drained), "{p}");
    let r = m.apply_at(&after, 111).unwrap();
    assert!(r.ok(), "{r}");
    assert_eq!(dest_weights(&mut m, &key), vec![(ip("10.0.0.10"), 1)]);
    assert!(m.drains().is_empty(), "{:?} {r}", m.drains());
}

#[test]
fn the_drain_timeout_deletes_a_busy_backend() {
    let (mut m, _, after, key) = drain_setup(false);
    let dk = drained_key();
    m.ipvs().set_conns(&key, &dk, 5, 0).unwrap();
    m.apply_at(&after, 1000).unwrap();
    let timeout = after.options().drain_timeout.as_secs();
    assert!(m.plan_at(&after, 1000 + timeout - 1).unwrap().0.is_empty());
    let (p, _) = m.plan_at(&after, 1000 + timeout).unwrap();
    assert!(deletes(&p, DeleteReason::DrainTimeout), "{p}");
}

#[test]
fn a_backend_that_comes_back_stops_draining() {
    let (mut m, before, after, key) = drain_setup(false);
    let dk = drained_key();
    m.ipvs().set_conns(&key, &dk, 1, 0).unwrap();
    m.apply_at(&after, 0).unwrap();
    assert_eq!(m.drains().len(), 1);
    m.apply_at(&before, 1).unwrap();
    assert_eq!(
        dest_weights(&mut m, &key),
        vec![(ip("10.0.0.10"), 1), (ip("10.0.0.11"), 1)]
    );
    m.plan_at(&before, 2).unwrap();
    assert!(m.drains().is_empty());
}

#[test]
fn udp_backends_are_deleted_at_once() {
    let (mut m, _, after, key) = drain_setup(true);
    let dk = drained_key();
    m.ipvs().set_conns(&key, &dk, 0, 7).unwrap();
    let (p, _) = m.plan_at(&after, 5).unwrap();
    assert!(deletes(&p, DeleteReason::Udp), "{p}");
    m.apply_at(&after, 5).unwrap();
    assert_eq!(dest_weights(&mut m, &key), vec![(ip("10.0.0.10"), 1)]);
}

#[test]
fn sysctls_follow_the_kernel_version() {
    let old = crate::plan::sysctls((5, 4), Family::V4);
    assert_eq!(
        old.get("net.ipv4.vs.conn_reuse_mode").map(String::as_str),
        Some("0")
    );
    let new = crate::plan::sysctls((6, 1), Family::V4);
    assert!(!new.contains_key("net.ipv4.vs.conn_reuse_mode"));
    assert_eq!(new["net.ipv4.vs.conntrack"], "1");
    assert_eq!(new["net.ipv4.ip_forward"], "1");
    let v6 = crate::plan::sysctls((6, 1), Family::V6);
    assert_eq!(v6["net.ipv6.conf.all.forwarding"], "1");
}

#[test]
fn an_exhausted_fwmark_range_is_an_error() {
    let opts = Options {
        fwmark_first: 0x100,
        fwmark_last: 0x100,
        ..Options::default()
    };
    let desired = DesiredState::new(network(), sample(), opts).unwrap();
    let err = plan(&desired, &Observed::default(), &DrainBook::default(), 0).unwrap_err();
    assert!(
        matches!(
            err,
            Error::FwmarkExhausted {
                first: 0x100,
                last: 0x100,
                needed: 3
            }
        ),
        "{err}"
    );
    let mut m = fake_mesh();
    assert!(m.apply_at(&desired, 0).is_err());
    assert!(m.ipvs().log.is_empty(), "nothing applied");
    assert!(m.host().addrs.is_empty());
}

#[test]
fn the_top_of_the_mark_range_does_not_overflow() {
    let opts = Options {
        fwmark_first: u32::MAX - 1,
        fwmark_last: u32::MAX,
        ..Options::default()
    };
    let d = DesiredState::new(network(), sample(), opts).unwrap();
    // Three VIP services, two marks: a typed error, no overflow.
    let err = plan(&d, &Observed::default(), &DrainBook::default(), 0).unwrap_err();
    assert!(
        matches!(err, Error::FwmarkExhausted { needed: 3, .. }),
        "{err}"
    );
    let two = DesiredState::new(
        network(),
        sample()
            .into_iter()
            .filter(|s| s.name.as_str() != "empty")
            .collect(),
        Options {
            fwmark_first: u32::MAX - 1,
            fwmark_last: u32::MAX,
            ..Options::default()
        },
    )
    .unwrap();
    let p = plan(&two, &Observed::default(), &DrainBook::default(), 0).unwrap();
    let mut marks: Vec<u32> = p.marks.values().copied().collect();
    marks.sort();
    assert_eq!(marks, vec![u32::MAX - 1, u32::MAX]);
}

fn invalid_field(r: Result<DesiredState, Error>) -> (&'static str, String) {
    match r {
        Err(Error::Invalid { field, value, .. }) => (field, value),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn bad_input_names_the_field_and_value() {
    let net = network;
    let vip = |n: &str, v: &str, b: &[&str]| {
        Service::vip(n, ip(v), &b.iter().map(|s| ip(s)).collect::<Vec<_>>()).unwrap()
    };
    let o = Options::default;
    // Duplicate names.
    let (f, v) = invalid_field(DesiredState::new(
        net(),
        vec![vip("a", "10.0.0.9", &[]), vip("a", "10.0.0.19", &[])],
        o(),
    ));
    assert_eq!((f, v.as_str()), ("service.name", "a"));
    // Duplicate VIPs.
    let (f, v) = invalid_field(DesiredState::new(
        net(),
        vec![vip("a", "10.0.0.9", &[]), vip("b", "10.0.0.9", &[])],
        o(),
    ));
    assert_eq!(f, "service.vip");
    assert!(v.contains("10.0.0.9"));
    // VIP outside the subnet.
    let (f, v) = invalid_field(DesiredState::new(
        net(),
        vec![vip("a", "10.1.0.9", &[])],
        o(),
    ));
    assert_eq!((f, v.as_str()), ("service.vip", "a: 10.1.0.9"));
    // VIP colliding with a backend.
    let (f, _) = invalid_field(DesiredState::new(
        net(),
        vec![
            vip("a", "10.0.0.9", &["10.0.0.10"]),
            vip("b", "10.0.0.10", &[]),
        ],
        o(),
    ));
    assert_eq!(f, "service.vip");
    // Port 0.
    let mut s = vip("a", "10.0.0.9", &[]);
    s.ports = vec![ServicePort {
        protocol: Protocol::Tcp,
        port: 0,
    }];
    let (f, _) = invalid_field(DesiredState::new(net(), vec![s], o()));
    assert_eq!(f, "service.ports.port");
    // Backend of the wrong family.
    let (f, _) = invalid_field(DesiredState::new(
        net(),
        vec![vip("a", "10.0.0.9", &["fd00::1"])],
        o(),
    ));
    assert_eq!(f, "service.backends.addr");
    // Unknown scheduler, bad names, weights, subnets.
    assert!(matches!(
        Scheduler::new("fastest"),
        Err(Error::Invalid {
            field: "service.scheduler",
            ..
        })
    ));
    assert!(matches!(
        ServiceName::new("Bad Name;rm"),
        Err(Error::Invalid {
            field: "service.name",
            ..
        })
    ));
    assert!(matches!(
        Weight::new(65536),
        Err(Error::Invalid {
            field: "backend.weight",
            ..
        })
    ));
    assert!(matches!(
        "10.0.0.1/24".parse::<Subnet>(),
        Err(Error::Invalid {
            field: "subnet",
            ..
        })
    ));
    // Empty backends are allowed (and rejected at the VIP, see the rules golden).
    assert!(DesiredState::new(net(), vec![vip("a", "10.0.0.9", &[])], o()).is_ok());
}

#[test]
fn the_state_file_reports_line_and_column() {
    let text = r#"{
  "network": {"name": "n", "subnet": "10.0.0.0/24", "lb_netns": "lb", "lb_interface": "eth0", "lb_addr": "10.0.0.2"},
  "services": [{"name": "vote", "mode": {"vip": "10.0.0.9"}, "colour": "red"}]
}"#;
    match DesiredState::from_json(text) {
        Err(Error::StateFile {
            line,
            column,
            message,
        }) => {
            assert_eq!(line, 3, "{message}");
            assert!(column > 40, "{column}");
            assert!(message.contains("colour"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let wrong_type = text.replace(r#", "colour": "red""#, r#", "backends": "10.0.0.10""#);
    assert!(matches!(
        DesiredState::from_json(&wrong_type),
        Err(Error::StateFile { line: 3, .. })
    ));
    let ok = text.replace(
        r#", "colour": "red""#,
        r#", "backends": [{"addr": "10.0.0.10"}]"#,
    );
    let s = DesiredState::from_json(&ok).unwrap();
    assert_eq!(s.service("vote").unwrap().backends.len(), 1);
}

#[test]
fn a_missing_lb_namespace_is_a_typed_error() {
    let mut n = network();
    n.lb_netns = "vipmesh-no-such-namespace".into();
    match crate::KernelMesh::kernel(&n) {
        Err(Error::MissingNamespace { netns }) => assert_eq!(netns, "vipmesh-no-such-namespace"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ipv6_networks_plan_v6_services() {
    let net = Network {
        name: "v6".into(),
        subnet: "fd00:1::/64".parse().unwrap(),
        lb_netns: "lb".into(),
        lb_interface: "eth0".into(),
        lb_addr: ip("fd00:1::2"),
    };
    let s = Service::vip(
        "vote",
        ip("fd00:1::9"),
        &[ip("fd00:1::10"), ip("fd00:1::11")],
    )
    .unwrap();
    let desired = DesiredState::new(net, vec![s], Options::default()).unwrap();
    let mut m = fake_mesh();
    assert!(m.apply_at(&desired, 0).unwrap().ok());
    assert!(m.plan_at(&desired, 1).unwrap().0.is_empty());
    let key = ipvs::ServiceKey::fwmark(ipvs::Family::Inet6, 0x100).unwrap();
    assert_eq!(m.ipvs().dests(&key).unwrap().len(), 2);
    assert_eq!(
        m.host()
            .sysctls
            .get("net.ipv6.conf.all.forwarding")
            .map(String::as_str),
        Some("1")
    );
}

fn arb_state() -> impl Strategy<Value = Vec<Service>> {
    let svc = (
        any::<bool>(),
        proptest::collection::btree_set(10u8..250, 0..6),
        prop_oneof![Just("rr"), Just("wrr"), Just("lc"), Just("sh"), Just("mh")],
        proptest::option::of((1u32..100_000, 0u8..=32)),
        proptest::collection::vec((any::<bool>(), 1u16..=65535), 0..3),
        proptest::collection::vec(0u32..=65535, 6),
    );
    proptest::collection::vec(svc, 0..6).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (vip, backs, sched, pers, ports, weights))| {
                let addrs: Vec<IpAddr> = backs
                    .iter()
                    .map(|b| IpAddr::from([10, 0, 0, *b]))
                    .filter(|a| *a != ip("10.0.0.2"))
                    .collect();
                let name = format!("s{i}");
                let mut s = if vip {
                    // VIPs live in 10.0.1.0/24 so they never collide with backends.
                    Service::vip(&name, IpAddr::from([10, 0, 1, i as u8 + 1]), &addrs).unwrap()
                } else {
                    Service::dnsrr(&name, &addrs).unwrap()
                };
                for (b, w) in s.backends.iter_mut().zip(weights) {
                    b.weight = Weight::new(w).unwrap();
                }
                s.scheduler = Scheduler::new(sched).unwrap();
                s.persistence = pers.map(|(t, m)| Persistence {
                    timeout_secs: t,
                    netmask_prefix: m,
                });
                s.ports = ports
                    .into_iter()
                    .map(|(tcp, port)| ServicePort {
                        protocol: if tcp { Protocol::Tcp } else { Protocol::Udp },
                        port,
                    })
                    .collect();
                s.ports.sort();
                s.ports.dedup();
                s
            })
            .collect()
    })
}

fn wide_network() -> Network {
    Network {
        subnet: "10.0.0.0/16".parse().unwrap(),
        ..network()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn plan_of_an_applied_state_is_empty(a in arb_state(), b in arb_state()) {
        let mut m = fake_mesh();
        let sa = DesiredState::new(wide_network(), a, Options::default()).unwrap();
        let r = m.apply_at(&sa, 0).unwrap();
        prop_assert!(r.ok(), "{}", r);
        let (p, _) = m.plan_at(&sa, 0).unwrap();
        prop_assert!(p.is_empty(), "{}", p);
        // And from any previous state, converging to b takes one apply plus the drains.
        let sb = DesiredState::new(wide_network(), b, Options::default()).unwrap();
        let r = m.apply_at(&sb, 1).unwrap();
        prop_assert!(r.ok(), "{}", r);
        // Drains end after the timeout.
        let later = 1 + sb.options().drain_timeout.as_secs();
        let r = m.apply_at(&sb, later).unwrap();
        prop_assert!(r.ok(), "{}", r);
        let (p, _) = m.plan_at(&sb, later).unwrap();
        prop_assert!(p.is_empty(), "{}", p);
    }

    #[test]
    fn validation_never_panics(
        names in proptest::collection::vec("[a-zA-Z0-9 _;'\"-]{0,70}", 0..4),
        addrs in proptest::collection::vec(any::<[u8; 4]>(), 0..6),
        prefix in 0u8..40,
        port in any::<u16>(),
        weight in any::<u32>(),
    ) {
        let _ = Subnet::new(IpAddr::from([10, 0, 0, 0]), prefix);
        let _ = Weight::new(weight);
        let services: Vec<Service> = names
            .iter()
            .zip(addrs.iter().cycle())
            .filter_map(|(n, a)| {
                let mut s = Service::vip(n, IpAddr::from(*a), &addrs.iter().map(|x| IpAddr::from(*x)).collect::<Vec<_>>()).ok()?;
                s.ports = vec![ServicePort { protocol: Protocol::Tcp, port }];
                Some(s)
            })
            .collect();
        let _ = DesiredState::new(network(), services, Options::default());
    }

    #[test]
    fn state_file_parsing_never_panics(text in ".{0,300}") {
        let _ = DesiredState::from_json(&text);
    }
}

#[test]
fn apply_services_touches_only_the_named_service() {
    let mut m = fake_mesh();
    let mut services = sample();
    let d = state(services.clone());
    assert!(m.apply_at(&d, 0).unwrap().ok());
    let ops = m.ipvs().log.len();
    let batches = m.rules().batches;
    // vote gains a task and loses one.
    let vote = services
        .iter_mut()
        .find(|s| s.name.as_str() == "vote")
        .unwrap();
    vote.backends = vec![Backend::new(ip("10.0.0.10")), Backend::new(ip("10.0.0.12"))];
    let d2 = state(services.clone());
    let r = m.apply_services(&d2, &["vote"], 1).unwrap();
    assert!(r.ok(), "{r}");
    let steps: Vec<String> = r.steps.iter().map(|s| s.step.to_string()).collect();
    assert_eq!(
        steps,
        vec![
            "ipvs add-dest FWM 258 -> 10.0.0.12:0 Masq weight 1 (vote)".to_string(),
            "ipvs set-dest FWM 258 -> 10.0.0.11:0 weight 0 drain (vote)".to_string(),
        ]
    );
    assert_eq!(m.ipvs().log.len(), ops + 2);
    assert_eq!(m.rules().batches, batches, "no netfilter batch");
    // The result equals what a full apply would have produced: what is left is finishing the
    // drain of the idle task, which the next incremental apply does.
    let (p, _) = m.plan_at(&d2, 2).unwrap();
    assert_eq!(
        p.to_string(),
        "ipvs del-dest FWM 258 -> 10.0.0.11:0 (vote: drained)\n"
    );
    let r = m.apply_services(&d2, &["vote"], 2).unwrap();
    assert_eq!(r.steps.len(), 1, "{r}");
    assert!(m.plan_at(&d2, 2).unwrap().0.is_empty());
    // A change outside the confined set falls back to a full apply (new VIP → new rules).
    let vote = services
        .iter_mut()
        .find(|s| s.name.as_str() == "vote")
        .unwrap();
    vote.mode = EndpointMode::Vip(ip("10.0.0.99"));
    let d3 = state(services);
    assert!(m.apply_services(&d3, &["vote"], 3).unwrap().ok());
    assert_eq!(m.rules().batches, batches + 1);
    assert!(m.plan_at(&d3, 4).unwrap().0.is_empty());
}

#[test]
fn dns_tables_follow_the_modes_and_keep_dns_errors() {
    let t = crate::dns::table(&state(sample()), "mesh.local.").unwrap();
    assert_eq!(t.len(), 4);
    match crate::dns::table(&state(sample()), "not a zone!") {
        Err(Error::Dns {
            field: "dns.zone",
            value,
            source,
        }) => {
            assert_eq!(value, "not a zone!");
            assert!(!source.to_string().is_empty());
        }
        other => panic!("{other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// A faulty IPVS (random operations fail with kernel errnos) never leaves the mesh stuck:
    /// re-applying converges, and the report names every failure.
    #[test]
    fn retries_converge_after_random_kernel_failures(
        a in arb_state(),
        faults in proptest::collection::vec(prop_oneof![Just(libc_errno::EBUSY), Just(libc_errno::ENOMEM), Just(libc_errno::EEXIST)], 0..12),
    ) {
        let mut m = fake_mesh();
        let sa = DesiredState::new(wide_network(), a, Options::default()).unwrap();
        m.ipvs().fail_next(&faults);
        let mut tries = 0;
        loop {
            let r = m.apply_at(&sa, 0).unwrap();
            tries += 1;
            if r.ok() {
                break;
            }
            prop_assert!(r.first_error().is_some());
            prop_assert!(tries <= faults.len() + 1, "no convergence after {} tries: {}", tries, r);
        }
        let (p, _) = m.plan_at(&sa, 0).unwrap();
        prop_assert!(p.is_empty(), "{}", p);
    }
}

/// The errnos the faulty backend injects (values from `<errno.h>` on Linux).
mod libc_errno {
    pub const EEXIST: i32 = 17;
    pub const EBUSY: i32 = 16;
    pub const ENOMEM: i32 = 12;
}

#[test]
fn golden_per_client_layout() {
    let opts = Options {
        layout: Layout::PerClient,
        ..Options::default()
    };
    let desired = DesiredState::new(network(), sample(), opts).unwrap();
    let p = plan(&desired, &Observed::default(), &DrainBook::default(), 0).unwrap();
    assert!(
        !p.steps.iter().any(|s| matches!(s, Step::AddAddress { .. })),
        "no VIP address per client: {p}"
    );
    assert!(!p.to_string().contains("ip_forward"), "{p}");
    let rs = crate::rules::ruleset(&desired, &p.marks).unwrap();
    let text = vipmesh_netfilter::plan(
        &rs,
        &vipmesh_netfilter::Observed::empty(vipmesh_netfilter::Family::V4),
    )
    .unwrap()
    .to_string();
    golden("rules_per_client.txt", &text);
    let mut m = fake_mesh();
    assert!(m.apply_at(&desired, 0).unwrap().ok());
    assert!(m.plan_at(&desired, 1).unwrap().0.is_empty());
    assert!(m.host().addrs.is_empty());
}
