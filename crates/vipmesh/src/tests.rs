//! Logic tests on the fake node (kernel semantics from `vipmesh-ipvs`'s Fake and the
//! netfilter planner), golden plan and rule texts, and property tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use proptest::prelude::*;
use vipmesh_ipvs::{self as ipvs, IpvsBackend};

use crate::controller::{Controller, ControllerConfig, ObserveMode, SyncKind};
use crate::fake::FakeKernel;
use crate::model::*;
use crate::plan::{
    DeleteReason, DrainBook, IpvsChange, KernelVersion, NodeObserved, NsObserved, Plan, plan,
};
use crate::{Error, ObjectStatus};

pub(crate) type Ctl = Controller<FakeKernel>;

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(crate) fn network() -> Network {
    Network::new(
        "demo",
        "10.0.0.0/24".parse().unwrap(),
        "lb-demo",
        "eth0",
        ip("10.0.0.2"),
    )
    .unwrap()
}

pub(crate) fn sample() -> Vec<Service> {
    let vote = Service::vip("vote", ip("10.0.0.9"), &[ip("10.0.0.10"), ip("10.0.0.11")]).unwrap();
    let mut api = Service::vip("api", ip("10.0.0.20"), &[ip("10.0.0.21")]).unwrap();
    api.ports = vec![
        ServicePort::new(Protocol::Tcp, 8080).unwrap(),
        ServicePort::new(Protocol::Udp, 53).unwrap(),
    ];
    api.scheduler = Scheduler::new("wrr").unwrap();
    api.persistence = Some(Persistence::new(300, 24, 128).unwrap());
    let web = Service::dnsrr("web", &[ip("10.0.0.30"), ip("10.0.0.31")]).unwrap();
    let empty = Service::vip("empty", ip("10.0.0.40"), &[]).unwrap();
    vec![vote, api, web, empty]
}

pub(crate) fn node(services: Vec<Service>) -> NodeState {
    NodeState::single(NetworkState::new(network(), services).unwrap()).unwrap()
}

pub(crate) fn world() -> FakeKernel {
    let k = FakeKernel::new();
    k.add_namespace("lb-demo", &["lo", "eth0"]);
    k
}

pub(crate) fn ctl(k: &FakeKernel) -> Ctl {
    Controller::new(k.clone(), ControllerConfig::default())
}

pub(crate) fn apply(c: &mut Ctl, state: NodeState, now: u64) {
    c.set_desired(state);
    if let Err(e) = c.sync_full(now) {
        panic!("apply failed: {e}");
    }
}

pub(crate) fn plan_at(c: &mut Ctl, now: u64) -> Plan {
    let (obs, failed) = c.observe(now);
    assert!(failed.is_empty(), "{failed:?}");
    c.plan(&obs, now).unwrap()
}

pub(crate) fn empty_seen(ns: &[&str]) -> NodeObserved {
    let mut o = NodeObserved::default();
    for n in ns {
        o.namespaces.insert(
            n.to_string(),
            NsObserved::empty(KernelVersion { major: 6, minor: 1 }),
        );
    }
    o
}

pub(crate) fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with BLESS=1 to create)", path.display()));
    assert_eq!(
        actual, expected,
        "golden {name} differs (BLESS=1 to update)"
    );
}

pub(crate) fn mark_of(c: &Ctl, svc: &str) -> u32 {
    c.marks()[&NetworkId::new("demo").unwrap()][svc]
}

pub(crate) fn dests(k: &FakeKernel, ns: &str, fam: ipvs::Family, mark: u32) -> Vec<(IpAddr, u32)> {
    let key = ipvs::ServiceKey::fwmark(fam, mark).unwrap();
    k.with(ns, |n| n.ipvs.dests(&key).unwrap())
        .iter()
        .map(|d| (d.dest.key.addr, d.dest.weight.get()))
        .collect()
}

fn ipvs_log(k: &FakeKernel, ns: &str) -> usize {
    k.with(ns, |n| n.ipvs.log.len())
}

#[test]
fn golden_initial_plan_shows_every_step_and_the_rule_diff() {
    let p = plan(
        &node(sample()),
        &empty_seen(&["lb-demo"]),
        &DrainBook::default(),
        0,
    )
    .unwrap();
    golden("plan_initial.txt", &p.to_string());
}

#[test]
fn golden_vip_rules() {
    let st = node(sample());
    let p = plan(&st, &empty_seen(&["lb-demo"]), &DrainBook::default(), 0).unwrap();
    let net = st.network("demo").unwrap();
    let rs = crate::rules::ruleset(net, Family::V4, &p.marks[net.id()]).unwrap();
    let text = vipmesh_netfilter::plan(
        &rs,
        &vipmesh_netfilter::Observed::empty(vipmesh_netfilter::Family::V4),
    )
    .unwrap()
    .to_string();
    golden("rules_vip.txt", &text);
}

#[test]
fn golden_plan_of_a_change_shows_added_and_removed_rules() {
    let k = world();
    let mut c = ctl(&k);
    apply(&mut c, node(sample()), 0);
    let mut changed = sample();
    changed.retain(|s| s.name.as_str() != "api");
    changed[0].ports = vec![ServicePort::new(Protocol::Tcp, 80).unwrap()];
    changed[0].backends.push(Backend::new(ip("10.0.0.12")));
    c.set_desired(node(changed));
    golden("plan_change.txt", &plan_at(&mut c, 1).to_string());
}

#[test]
fn apply_then_plan_is_empty_and_apply_twice_changes_nothing() {
    let k = world();
    let mut c = ctl(&k);
    apply(&mut c, node(sample()), 0);
    assert!(plan_at(&mut c, 1).is_empty());
    let ops = ipvs_log(&k, "lb-demo");
    let batches = k.with("lb-demo", |n| n.batches);
    let r = c.sync_full(2).unwrap();
    assert!(r.steps.is_empty(), "{r}");
    assert_eq!(
        ipvs_log(&k, "lb-demo"),
        ops,
        "no IPVS operation on re-apply"
    );
    assert_eq!(
        k.with("lb-demo", |n| n.batches),
        batches,
        "no netfilter batch"
    );
    // The seed's shape: FWM 0x102 rr with both tasks as Masq weight 1.
    let mark = mark_of(&c, "vote");
    assert_eq!(
        mark, 0x102,
        "marks are allocated in name order: api, empty, vote"
    );
    assert_eq!(
        dests(&k, "lb-demo", ipvs::Family::Inet, mark),
        vec![(ip("10.0.0.10"), 1), (ip("10.0.0.11"), 1)]
    );
    // VIPs are addresses of the LB interface, tagged as ours.
    k.with("lb-demo", |n| {
        let a = &n.addrs[&ip("10.0.0.9")];
        assert_eq!(
            (a.interface.as_str(), a.prefix, a.owned),
            ("eth0", 32, true)
        );
    });
}

#[test]
fn dnsrr_services_program_nothing_in_ipvs() {
    let k = world();
    let mut c = ctl(&k);
    apply(
        &mut c,
        node(vec![Service::dnsrr("web", &[ip("10.0.0.30")]).unwrap()]),
        0,
    );
    k.with("lb-demo", |n| {
        assert!(n.ipvs.services().unwrap().is_empty());
        assert!(n.addrs.is_empty());
    });
}

#[test]
fn a_restarted_controller_keeps_the_marks_and_changes_nothing() {
    let k = world();
    let mut c = ctl(&k);
    apply(&mut c, node(sample()), 0);
    let marks = c.marks().clone();
    let ops = ipvs_log(&k, "lb-demo");
    let mut services = sample();
    services.reverse();
    let mut c2 = ctl(&k);
    c2.set_desired(node(services));
    assert!(plan_at(&mut c2, 10).is_empty());
    let r = c2.sync_full(11).unwrap();
    assert!(r.steps.is_empty(), "{r}");
    assert_eq!(c2.marks(), &marks);
    assert_eq!(ipvs_log(&k, "lb-demo"), ops, "no service recreated");
}

#[test]
fn a_flushed_mark_chain_recovers_its_marks_from_ipvs_without_recreating_services() {
    let k = world();
    let mut c = ctl(&k);
    apply(&mut c, node(sample()), 0);
    let marks = c.marks().clone();
    let ops = ipvs_log(&k, "lb-demo");
    // Someone flushes our rules (every chain, every record of the marks in rules).
    k.with("lb-demo", |n| {
        for o in n.rules.values_mut() {
            o.tables.clear();
        }
    });
    let mut c2 = ctl(&k);
    c2.set_desired(node(sample()));
    let r = c2.sync_full(5).unwrap();
    assert!(r.ok(), "{r}");
    assert_eq!(c2.marks(), &marks, "marks recovered from the IPVS services");
    let log = k.with("lb-demo", |n| n.ipvs.log[ops..].to_vec());
    assert!(
        log.iter()
            .all(|op| !matches!(op, ipvs::Op::AddService(_) | ipvs::Op::DelService(_))),
        "no IPVS service recreated: {log:?}"
    );
    assert!(plan_at(&mut c2, 6).is_empty());
}

#[test]
fn new_services_do_not_reuse_a_mark_while_its_old_service_exists() {
    let k = world();
    let mut c = ctl(&k);
    let a = Service::vip("a", ip("10.0.0.9"), &[ip("10.0.0.10")]).unwrap();
    let b = Service::vip("b", ip("10.0.0.19"), &[ip("10.0.0.11")]).unwrap();
    apply(&mut c, node(vec![a, b.clone()]), 0);
    assert_eq!((mark_of(&c, "a"), mark_of(&c, "b")), (0x100, 0x101));
    let cc = Service::vip("c", ip("10.0.0.29"), &[ip("10.0.0.12")]).unwrap();
    c.set_desired(node(vec![b, cc]));
    let p = plan_at(&mut c, 1);
    let id = NetworkId::new("demo").unwrap();
    assert_eq!(p.marks[&id]["c"], 0x102, "{p}");
    let del = p.namespaces["lb-demo"]
        .ipvs_removals
        .iter()
        .any(|s| s.mark == 0x100 && s.change == IpvsChange::DelService);
    assert!(del, "{p}");
    let _ = c.sync_full(1).unwrap();
    assert!(plan_at(&mut c, 2).is_empty());
    assert!(k.with("lb-demo", |n| !n.addrs.contains_key(&ip("10.0.0.9"))));
}

#[test]
fn foreign_ipvs_services_are_never_touched() {
    let k = world();
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
    k.with("lb-demo", |n| {
        for r in n
            .ipvs
            .execute(&[ipvs::Op::AddService(foreign), ipvs::Op::AddService(tcp)])
        {
            r.unwrap();
        }
    });
    let mut c = ctl(&k);
    apply(&mut c, node(sample()), 0);
    apply(&mut c, node(vec![]), 1);
    let left = k.with("lb-demo", |n| n.ipvs.services().unwrap().len());
    assert_eq!(left, 2, "only the foreign services remain");
}

fn drain_setup(udp: bool) -> (FakeKernel, Ctl, NodeState, ipvs::ServiceKey) {
    let mut svc =
        Service::vip("vote", ip("10.0.0.9"), &[ip("10.0.0.10"), ip("10.0.0.11")]).unwrap();
    if udp {
        svc.ports = vec![ServicePort::new(Protocol::Udp, 53).unwrap()];
    }
    let before = node(vec![svc.clone()]);
    svc.backends.retain(|b| b.addr != ip("10.0.0.11"));
    let after = node(vec![svc]);
    let k = world();
    let mut c = ctl(&k);
    apply(&mut c, before, 0);
    let key = ipvs::ServiceKey::fwmark(ipvs::Family::Inet, 0x100).unwrap();
    (k, c, after, key)
}

fn drained_key() -> ipvs::DestKey {
    ipvs::DestKey {
        addr: ip("10.0.0.11"),
        port: 0,
    }
}

fn deletes(p: &Plan, reason: DeleteReason) -> bool {
    p.namespaces.values().any(|n| {
        n.ipvs_removals
            .iter()
            .any(|s| matches!(s.change, IpvsChange::DelDest { reason: r, .. } if r == reason))
    })
}

#[test]
fn a_removed_backend_drains_then_goes_when_idle() {
    let (k, mut c, after, key) = drain_setup(false);
    k.with("lb-demo", |n| {
        n.ipvs.set_conns(&key, &drained_key(), 1, 0).unwrap()
    });
    apply(&mut c, after, 1);
    assert_eq!(
        dests(&k, "lb-demo", ipvs::Family::Inet, 0x100),
        vec![(ip("10.0.0.10"), 1), (ip("10.0.0.11"), 0)],
        "weight 0 first"
    );
    assert_eq!(c.drains().started(0x100, ip("10.0.0.11")), Some(1));
    assert!(c.next_deadline().is_some_and(|d| d <= 31));
    assert!(!deletes(&plan_at(&mut c, 2), DeleteReason::Drained));
    k.with("lb-demo", |n| {
        n.ipvs.set_conns(&key, &drained_key(), 0, 0).unwrap()
    });
    // The incremental sync polls the draining service.
    let (kind, _) = c.sync(3).unwrap();
    assert_eq!(kind, SyncKind::Incremental);
    assert_eq!(
        dests(&k, "lb-demo", ipvs::Family::Inet, 0x100),
        vec![(ip("10.0.0.10"), 1)]
    );
    assert!(c.drains().is_empty());
}

#[test]
fn the_drain_timeout_deletes_a_busy_backend() {
    let (k, mut c, after, key) = drain_setup(false);
    k.with("lb-demo", |n| {
        n.ipvs.set_conns(&key, &drained_key(), 3, 1).unwrap()
    });
    apply(&mut c, after, 10);
    assert!(!deletes(&plan_at(&mut c, 39), DeleteReason::DrainTimeout));
    assert!(deletes(&plan_at(&mut c, 40), DeleteReason::DrainTimeout));
}

#[test]
fn the_drain_clock_survives_a_restart_through_its_file() {
    let (k, mut c, after, key) = drain_setup(false);
    k.with("lb-demo", |n| {
        n.ipvs.set_conns(&key, &drained_key(), 3, 1).unwrap()
    });
    apply(&mut c, after.clone(), 10);
    let saved = c.drains().to_json();
    let mut c2 = ctl(&k);
    c2.set_drains(DrainBook::from_json("drains.json", &saved).unwrap());
    c2.set_desired(after);
    assert!(deletes(&plan_at(&mut c2, 40), DeleteReason::DrainTimeout));
    // A corrupt or future book is an error naming the file, never an empty book.
    for bad in [
        "{",
        r#"{"version":2,"started":[]}"#,
        "[]",
        r#"{"version":1,"started":[],"x":1}"#,
    ] {
        match DrainBook::from_json("/run/vipmesh/x.json", bad) {
            Err(Error::DrainBook { path, .. }) => assert_eq!(path, "/run/vipmesh/x.json"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn a_backend_that_comes_back_stops_draining() {
    let (k, mut c, after, key) = drain_setup(false);
    k.with("lb-demo", |n| {
        n.ipvs.set_conns(&key, &drained_key(), 1, 0).unwrap()
    });
    apply(&mut c, after, 1);
    let back = node(vec![
        Service::vip("vote", ip("10.0.0.9"), &[ip("10.0.0.10"), ip("10.0.0.11")]).unwrap(),
    ]);
    apply(&mut c, back, 2);
    assert_eq!(
        dests(&k, "lb-demo", ipvs::Family::Inet, 0x100),
        vec![(ip("10.0.0.10"), 1), (ip("10.0.0.11"), 1)]
    );
    assert!(c.drains().is_empty());
}

#[test]
fn udp_backends_are_deleted_at_once() {
    let (_k, mut c, after, _) = drain_setup(true);
    c.set_desired(after);
    assert!(deletes(&plan_at(&mut c, 1), DeleteReason::Udp));
}

#[test]
fn sysctls_follow_the_kernel_version() {
    let old = crate::plan::sysctls(KernelVersion { major: 5, minor: 4 }, Family::V4);
    assert_eq!(
        old.get("net.ipv4.vs.conn_reuse_mode").map(String::as_str),
        Some("0")
    );
    let new = crate::plan::sysctls(KernelVersion { major: 6, minor: 1 }, Family::V6);
    assert!(!new.contains_key("net.ipv4.vs.conn_reuse_mode"));
    assert_eq!(
        new.get("net.ipv6.conf.all.forwarding").map(String::as_str),
        Some("1")
    );
    assert!(KernelVersion::parse("garbage").is_err());
    assert_eq!(
        KernelVersion::parse("6.12.3+deb12-amd64\n").unwrap(),
        KernelVersion {
            major: 6,
            minor: 12
        }
    );
}

#[test]
fn an_exhausted_fwmark_range_is_an_error() {
    let net = network().with_fwmarks(FwmarkRange::new(0x100, 0x101).unwrap());
    let services = vec![
        Service::vip("a", ip("10.0.0.9"), &[]).unwrap(),
        Service::vip("b", ip("10.0.0.19"), &[]).unwrap(),
        Service::vip("c", ip("10.0.0.29"), &[]).unwrap(),
    ];
    // Refused by the model, before any plan (the plan's FwmarkExhausted stays for marks
    // still held by draining services).
    assert_eq!(
        invalid(NetworkState::new(net, services)),
        ("network.fwmarks", "demo: 0x100..=0x101".to_string())
    );
}

#[test]
fn the_top_of_the_mark_range_does_not_overflow() {
    let net = network().with_fwmarks(FwmarkRange::new(u32::MAX - 1, u32::MAX).unwrap());
    let services = vec![
        Service::vip("a", ip("10.0.0.9"), &[]).unwrap(),
        Service::vip("b", ip("10.0.0.19"), &[]).unwrap(),
    ];
    let st = NodeState::single(NetworkState::new(net, services).unwrap()).unwrap();
    let p = plan(&st, &empty_seen(&["lb-demo"]), &DrainBook::default(), 0).unwrap();
    let m = &p.marks[&NetworkId::new("demo").unwrap()];
    assert_eq!((m["a"], m["b"]), (u32::MAX - 1, u32::MAX));
}

fn invalid(r: Result<impl std::fmt::Debug, Error>) -> (&'static str, String) {
    match r {
        Err(Error::Invalid { field, value, .. }) => (field, value),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn bad_input_names_the_field_and_value() {
    let vip = |n: &str, v: &str, b: &[&str]| {
        Service::vip(n, ip(v), &b.iter().map(|s| ip(s)).collect::<Vec<_>>()).unwrap()
    };
    let ns = |s: Vec<Service>| NetworkState::new(network(), s);
    let (f, v) = invalid(ns(vec![
        vip("a", "10.0.0.9", &[]),
        vip("a", "10.0.0.19", &[]),
    ]));
    assert_eq!((f, v.as_str()), ("service.name", "a"));
    let (f, v) = invalid(ns(vec![
        vip("a", "10.0.0.9", &[]),
        vip("b", "10.0.0.9", &[]),
    ]));
    assert_eq!(f, "service.vip");
    assert!(v.contains("10.0.0.9"));
    let (f, v) = invalid(ns(vec![vip("a", "10.1.0.9", &[])]));
    assert_eq!((f, v.as_str()), ("service.vip", "a: 10.1.0.9"));
    let (f, _) = invalid(ns(vec![
        vip("a", "10.0.0.9", &["10.0.0.10"]),
        vip("b", "10.0.0.10", &[]),
    ]));
    assert_eq!(f, "service.vip");
    // A VIP or backend of a family the network has no subnet for.
    let (f, v) = invalid(ns(vec![vip("a", "fd00::9", &[])]));
    assert_eq!(f, "service.vip");
    assert!(v.contains("fd00::9"), "{v}");
    let (f, _) = invalid(ns(vec![vip("a", "10.0.0.9", &["fd00::1"])]));
    assert_eq!(f, "service.backends.addr");
    // Values checked by their constructors.
    assert_eq!(invalid(ServicePort::new(Protocol::Tcp, 0)).0, "port");
    assert_eq!(invalid(Scheduler::new("fastest")).0, "service.scheduler");
    assert_eq!(invalid(ServiceName::new("Bad Name;rm")).0, "service.name");
    assert_eq!(invalid(Weight::new(65536)).0, "backend.weight");
    assert_eq!(invalid("10.0.0.1/24".parse::<Subnet>()).0, "subnet");
    assert_eq!(
        invalid(Persistence::new(300, 24, 0)).0,
        "service.persistence.netmask_prefix_v6"
    );
    assert_eq!(
        invalid(Persistence::new(300, 33, 128)).0,
        "service.persistence.netmask_prefix"
    );
    assert_eq!(
        invalid(Persistence::new(0, 32, 128)).0,
        "service.persistence.timeout_secs"
    );
    // Network ids name chains: short, and only what iptables takes in our names.
    assert_eq!(invalid(NetworkId::new("abcdefghijk")).0, "network.id");
    assert_eq!(invalid(NetworkId::new("Net")).0, "network.id");
    assert_eq!(invalid(NetworkId::new("a b")).0, "network.id");
    assert_eq!(invalid(NetworkId::new("")).0, "network.id");
    assert_eq!(invalid(FwmarkRange::new(0, 10)).0, "network.fwmarks");
    assert_eq!(invalid(FwmarkRange::new(20, 10)).0, "network.fwmarks");
    // Networks of one node: distinct ids, non-overlapping marks.
    let two = |a: Network, b: Network| {
        NodeState::new(
            vec![
                NetworkState::new(a, vec![]).unwrap(),
                NetworkState::new(b, vec![]).unwrap(),
            ],
            NodeOptions::default(),
        )
    };
    let other = Network::new(
        "other",
        "10.9.0.0/24".parse().unwrap(),
        "lb2",
        "eth0",
        ip("10.9.0.2"),
    )
    .unwrap();
    let (f, v) = invalid(two(network(), other.clone()));
    assert_eq!(f, "network.fwmarks");
    assert!(v.contains("demo") && v.contains("other"), "{v}");
    let (f, v) = invalid(two(
        network(),
        Network {
            id: NetworkId::new("demo").unwrap(),
            ..other.with_fwmarks(FwmarkRange::new(0x20000, 0x2ffff).unwrap())
        },
    ));
    assert_eq!((f, v.as_str()), ("network.id", "demo"));
    // Empty backends are allowed (and rejected at the VIP, see the rules golden).
    assert!(ns(vec![vip("a", "10.0.0.9", &[])]).is_ok());
}

const FULL_STATE: &str = r#"{
  "networks": [{
    "id": "demo", "lb_netns": "lb-demo", "lb_interface": "eth0",
    "subnets": [{"subnet": "10.0.0.0/24", "lb_addr": "10.0.0.2"},
                {"subnet": "fd00::/64", "lb_addr": "fd00::2"}],
    "fwmarks": {"first": 256, "last": 511}, "layout": "lb_namespace",
    "services": [
      {"name": "vote", "mode": {"vip": ["10.0.0.9", "fd00::9"]}, "scheduler": "wrr",
       "ports": [{"protocol": "tcp", "port": 80}],
       "persistence": {"timeout_secs": 300, "netmask_prefix": 24, "netmask_prefix_v6": 64},
       "backends": [{"addr": "10.0.0.10"}, {"addr": "fd00::10", "weight": 2}]},
      {"name": "web", "mode": "dnsrr", "backends": [{"addr": "10.0.0.12"}]}
    ]
  }],
  "options": {"drain_timeout": 30}
}"#;

/// Walks every object of a complete state file and plants an unknown field in it: each must
/// be refused, so no struct can forget `deny_unknown_fields`.
#[test]
fn every_object_of_the_state_file_refuses_unknown_fields() {
    NodeState::from_json(FULL_STATE).unwrap();
    let root: serde_json::Value = serde_json::from_str(FULL_STATE).unwrap();
    fn paths(v: &serde_json::Value, at: Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            serde_json::Value::Object(m) => {
                out.push(at.clone());
                for (k, x) in m {
                    let mut p = at.clone();
                    p.push(k.clone());
                    paths(x, p, out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    let mut p = at.clone();
                    p.push(i.to_string());
                    paths(x, p, out);
                }
            }
            _ => {}
        }
    }
    let mut all = Vec::new();
    paths(&root, Vec::new(), &mut all);
    assert!(all.len() >= 9, "{all:?}");
    for p in all {
        let mut v = root.clone();
        let mut cur = &mut v;
        for k in &p {
            cur = match cur {
                serde_json::Value::Object(m) => m.get_mut(k).unwrap(),
                serde_json::Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
                _ => unreachable!(),
            };
        }
        // "mode": {"vip": …} is an enum: an extra key there is an error too.
        cur.as_object_mut()
            .unwrap()
            .insert("colour".into(), "red".into());
        let text = serde_json::to_string(&v).unwrap();
        assert!(
            NodeState::from_json(&text).is_err(),
            "unknown field accepted at {p:?}"
        );
    }
}

#[test]
fn values_in_range_for_json_but_not_for_the_kernel_are_refused_at_load() {
    let cases = [
        (r#""weight": 2"#, r#""weight": 70000"#, "backend.weight"),
        (r#""port": 80"#, r#""port": 0"#, "port"),
        (r#""port": 80"#, r#""port": 65536"#, "port"),
        (
            r#""netmask_prefix_v6": 64"#,
            r#""netmask_prefix_v6": 0"#,
            "netmask_prefix_v6",
        ),
        (
            r#""netmask_prefix": 24"#,
            r#""netmask_prefix": 33"#,
            "netmask_prefix",
        ),
        (
            r#""timeout_secs": 300"#,
            r#""timeout_secs": 2678401"#,
            "timeout_secs",
        ),
        (r#""first": 256"#, r#""first": 0"#, "network.fwmarks"),
        (
            r#""scheduler": "wrr""#,
            r#""scheduler": "fastest""#,
            "service.scheduler",
        ),
        (r#""id": "demo""#, r#""id": "DEMO""#, "network.id"),
        (
            r#""vip": ["10.0.0.9", "fd00::9"]"#,
            r#""vip": ["10.0.0.9", "10.0.0.8"]"#,
            "service.vip",
        ),
        // Type errors name the path and the value serde's message leaves out.
        (
            r#"{"addr": "10.0.0.10"}"#,
            r#"{"addr": "10.0.0.300"}"#,
            r#"at networks[0].services[0].backends[0].addr = "10.0.0.300": invalid IP address"#,
        ),
        (
            r#""drain_timeout": 30"#,
            r#""drain_timeout": 18446744073709551615"#,
            "at options.drain_timeout = 18446744073709551615: invalid options.drain_timeout",
        ),
    ];
    for (from, to, field) in cases {
        assert!(FULL_STATE.contains(from), "{from}");
        let text = FULL_STATE.replace(from, to);
        let e = NodeState::from_json(&text).unwrap_err();
        assert!(e.to_string().contains(field), "{to}: {e}");
    }
}

#[test]
fn the_state_file_reports_line_and_column() {
    let text = "{\n  \"networks\": [{\"id\": \"n\", \"colour\": 1}]\n}";
    match NodeState::from_json(text) {
        Err(Error::StateFile { line, column, .. }) => {
            assert_eq!(line, 2);
            assert!(column > 10);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_state_file_round_trips() {
    let st = NodeState::from_json(FULL_STATE).unwrap();
    let text = serde_json::to_string(&st.to_file()).unwrap();
    assert_eq!(NodeState::from_json(&text).unwrap(), st);
}

#[test]
fn a_missing_namespace_is_a_typed_error_and_other_namespaces_converge() {
    let k = world();
    let b = Network::new(
        "b",
        "10.9.0.0/24".parse().unwrap(),
        "lb-b",
        "eth0",
        ip("10.9.0.2"),
    )
    .unwrap()
    .with_fwmarks(FwmarkRange::new(0x20000, 0x2ffff).unwrap());
    let st = NodeState::new(
        vec![
            NetworkState::new(network(), sample()).unwrap(),
            NetworkState::new(
                b,
                vec![Service::vip("x", ip("10.9.0.9"), &[ip("10.9.0.10")]).unwrap()],
            )
            .unwrap(),
        ],
        NodeOptions::default(),
    )
    .unwrap();
    let mut c = ctl(&k);
    c.set_desired(st);
    match c.sync_full(0) {
        Err(Error::StepsFailed { report, .. }) => {
            let failed: Vec<_> = report.failures().map(|s| s.netns.clone()).collect();
            assert_eq!(failed, vec!["lb-b".to_string()]);
            let e = report.first_error().unwrap();
            assert!(
                matches!(e, Error::MissingNamespace { netns } if netns == "lb-b"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        plan_at_ns_ok(&mut c, "lb-demo"),
        "the other namespace converged"
    );
    let st = c
        .status()
        .get(&crate::apply::ObjectKey::Namespace("lb-b".into()));
    assert!(
        matches!(
            st,
            Some(ObjectStatus {
                last_error: Some(_),
                ..
            })
        ),
        "{st:?}"
    );
    // It appears: the next sync programs it.
    k.add_namespace("lb-b", &["eth0"]);
    let _ = c.sync_full(100).unwrap();
    assert!(plan_at(&mut c, 101).is_empty());
}

fn plan_at_ns_ok(c: &mut Ctl, ns: &str) -> bool {
    let (obs, _) = c.observe(1);
    let p = c.plan(&obs, 1).unwrap();
    p.namespaces.get(ns).is_none_or(|n| n.is_empty())
}

#[test]
fn ipv6_networks_plan_v6_services() {
    let net = Network::new(
        "six",
        "fd00::/64".parse().unwrap(),
        "lb-demo",
        "eth0",
        ip("fd00::2"),
    )
    .unwrap();
    let mut s = Service::vip("vote", ip("fd00::9"), &[ip("fd00::10")]).unwrap();
    s.persistence = Some(Persistence::new(60, 32, 64).unwrap());
    let st = NodeState::single(NetworkState::new(net, vec![s]).unwrap()).unwrap();
    let k = world();
    let mut c = ctl(&k);
    apply(&mut c, st, 0);
    assert_eq!(
        dests(&k, "lb-demo", ipvs::Family::Inet6, 0x100),
        vec![(ip("fd00::10"), 1)]
    );
    let text = k.with("lb-demo", |n| format!("{:?}", n.rules[&Family::V6]));
    assert!(text.contains("VIPMESH-six-MARK"), "{text}");
    assert!(
        plan_at(&mut c, 1).is_empty(),
        "persistence /64 is kept as is"
    );
}

fn dual_network() -> Network {
    network().with_subnet("fd00::/64".parse().unwrap(), ip("fd00::2"))
}

#[test]
fn dual_stack_services_get_a_vip_and_an_ipvs_service_per_family() {
    let s = Service::vips(
        "vote",
        &[ip("10.0.0.9"), ip("fd00::9")],
        &[ip("10.0.0.10"), ip("fd00::10"), ip("10.0.0.11")],
    )
    .unwrap();
    let st = NodeState::single(NetworkState::new(dual_network(), vec![s]).unwrap()).unwrap();
    let k = world();
    let mut c = ctl(&k);
    apply(&mut c, st, 0);
    assert_eq!(
        dests(&k, "lb-demo", ipvs::Family::Inet, 0x100),
        vec![(ip("10.0.0.10"), 1), (ip("10.0.0.11"), 1)]
    );
    assert_eq!(
        dests(&k, "lb-demo", ipvs::Family::Inet6, 0x100),
        vec![(ip("fd00::10"), 1)]
    );
    k.with("lb-demo", |n| {
        assert!(n.addrs.contains_key(&ip("10.0.0.9")) && n.addrs.contains_key(&ip("fd00::9")));
    });
    assert!(plan_at(&mut c, 1).is_empty());
}

fn net_in(id: &str, sub: &str, lb: &str, first: u32) -> Network {
    Network::new(id, sub.parse().unwrap(), "client", "eth0", ip(lb))
        .unwrap()
        .with_layout(Layout::PerClient)
        .with_fwmarks(FwmarkRange::new(first, first + 0xff).unwrap())
}

#[test]
fn two_networks_share_a_namespace_without_touching_each_other() {
    let k = FakeKernel::new();
    k.add_namespace("client", &["eth0"]);
    let a = || {
        NetworkState::new(
            net_in("a", "10.1.0.0/24", "10.1.0.2", 0x100),
            vec![Service::vip("web", ip("10.1.0.9"), &[ip("10.1.0.10")]).unwrap()],
        )
        .unwrap()
    };
    let b = |backends: &[IpAddr]| {
        NetworkState::new(
            net_in("b", "10.2.0.0/24", "10.2.0.2", 0x200),
            vec![Service::vip("web", ip("10.2.0.9"), backends).unwrap()],
        )
        .unwrap()
    };
    let mut c = Controller::new(k.clone(), ControllerConfig::default());
    apply(
        &mut c,
        NodeState::new(vec![a()], NodeOptions::default()).unwrap(),
        0,
    );
    let a_rules = |k: &FakeKernel| {
        k.with("client", |n| {
            n.rules[&Family::V4]
                .tables
                .values()
                .flat_map(|t| t.chains.iter().filter(|(c, _)| c.contains("-a-")))
                .map(|(c, r)| format!("{c}: {r:?}"))
                .collect::<Vec<_>>()
        })
    };
    let before = (a_rules(&k), dests(&k, "client", ipvs::Family::Inet, 0x100));
    apply(
        &mut c,
        NodeState::new(vec![a(), b(&[ip("10.2.0.10")])], NodeOptions::default()).unwrap(),
        1,
    );
    apply(
        &mut c,
        NodeState::new(
            vec![a(), b(&[ip("10.2.0.10"), ip("10.2.0.11")])],
            NodeOptions::default(),
        )
        .unwrap(),
        2,
    );
    assert_eq!(dests(&k, "client", ipvs::Family::Inet, 0x200).len(), 2);
    assert_eq!(
        (a_rules(&k), dests(&k, "client", ipvs::Family::Inet, 0x100)),
        before
    );
    // B loses every service: A is byte-identical.
    let b_empty = NetworkState::new(net_in("b", "10.2.0.0/24", "10.2.0.2", 0x200), vec![]).unwrap();
    apply(
        &mut c,
        NodeState::new(vec![a(), b_empty], NodeOptions::default()).unwrap(),
        3,
    );
    assert_eq!(
        (a_rules(&k), dests(&k, "client", ipvs::Family::Inet, 0x100)),
        before
    );
    assert!(dests(&k, "client", ipvs::Family::Inet, 0x200).is_empty());
    assert!(plan_at(&mut c, 4).is_empty());
}

#[test]
fn a_full_sync_reads_each_ruleset_once_and_an_incremental_one_none() {
    let k = world();
    let cfg = ControllerConfig {
        observe: ObserveMode::Cached,
        ..ControllerConfig::default()
    };
    let mut c = Controller::new(k.clone(), cfg);
    c.set_desired(node(sample()));
    let _ = c.sync(0).unwrap();
    let reads = |k: &FakeKernel| k.with("lb-demo", |n| n.rule_reads.clone());
    assert_eq!(
        reads(&k),
        BTreeMap::from([(Family::V4, 1), (Family::V6, 1)]),
        "one read per family in the first (full) sync"
    );
    c.set_backends(
        "demo",
        "vote",
        vec![Backend::new(ip("10.0.0.10")), Backend::new(ip("10.0.0.12"))],
    )
    .unwrap();
    let ops = ipvs_log(&k, "lb-demo");
    let (kind, r) = c.sync(1).unwrap();
    assert_eq!(kind, SyncKind::Incremental);
    assert_eq!(
        reads(&k).values().sum::<usize>(),
        2,
        "no read in the incremental sync"
    );
    let touched: Vec<_> = r.steps.iter().map(|s| s.object.to_string()).collect();
    assert!(
        touched.iter().all(|o| o == "service demo/vote"),
        "{touched:?}"
    );
    assert_eq!(ipvs_log(&k, "lb-demo") - ops, 2, "add .12, drain .11");
    // A full resync in cached mode reads nothing either, until the verify interval.
    c.request_full_sync();
    let _ = c.sync(2).unwrap();
    assert_eq!(
        reads(&k).values().sum::<usize>(),
        4,
        "request_full_sync re-reads"
    );
    let mut c2 = Controller::new(
        k.clone(),
        ControllerConfig {
            observe: ObserveMode::Cached,
            ..ControllerConfig::default()
        },
    );
    c2.set_desired(c.desired().clone());
    let _ = c2.sync(3).unwrap();
    c2.set_desired(node(sample()));
    let _ = c2.sync_full(4).unwrap();
    assert_eq!(
        reads(&k).values().sum::<usize>(),
        6,
        "cached full sync: no new read"
    );
}

#[test]
fn a_failed_partial_sync_makes_the_next_one_full() {
    let k = world();
    let cfg = ControllerConfig {
        observe: ObserveMode::Cached,
        ..ControllerConfig::default()
    };
    let mut c = Controller::new(k.clone(), cfg);
    assert!(!c.in_sync(), "nothing applied yet");
    c.set_desired(node(sample()));
    let _ = c.sync(0).unwrap();
    assert!(c.in_sync());
    // Someone else rewrites our rules: the cached view is now stale.
    k.with("lb-demo", |n| {
        for o in n.rules.values_mut() {
            o.tables.clear();
        }
    });
    let mut changed = sample();
    changed[0].ports = vec![ServicePort::new(Protocol::Tcp, 80).unwrap()];
    c.set_desired(node(changed));
    assert!(!c.in_sync(), "a changed service is not applied yet");
    let e = c.sync(1).unwrap_err();
    assert!(matches!(e, Error::StepsFailed { .. }), "{e}");
    assert!(!c.in_sync(), "a failed sync leaves it out of sync");
    assert_eq!(
        c.sync(1).unwrap().0,
        SyncKind::Idle,
        "waiting for the retry"
    );
    assert!(
        !c.in_sync(),
        "an idle sync while a retry waits is not in sync"
    );
    let reads = k.with("lb-demo", |n| n.reads());
    let next = c.next_deadline().unwrap();
    assert!(next > 1, "retry with backoff");
    let (kind, _) = c.sync(next).unwrap();
    assert_eq!(kind, SyncKind::Full);
    assert!(c.in_sync(), "the retry applied it");
    assert_eq!(
        k.with("lb-demo", |n| n.reads()),
        reads + 2,
        "the retry re-read the rules"
    );
    assert!(plan_at(&mut c, next + 1).is_empty());
}

#[test]
fn a_recreated_namespace_is_reprogrammed_fully() {
    let k = world();
    let mut c = ctl(&k);
    apply(&mut c, node(sample()), 0);
    k.add_namespace("lb-demo", &["lo", "eth0"]); // deleted and re-created under the name
    let opens = k.world().opens;
    let _ = c.sync_full(1).unwrap();
    assert_eq!(k.world().opens, opens + 1, "the new namespace was opened");
    assert_eq!(
        dests(&k, "lb-demo", ipvs::Family::Inet, 0x102),
        vec![(ip("10.0.0.10"), 1), (ip("10.0.0.11"), 1)]
    );
    assert!(k.with("lb-demo", |n| n.addrs.contains_key(&ip("10.0.0.9"))));
    assert!(plan_at(&mut c, 2).is_empty());
}

#[test]
fn orphans_of_a_crash_are_found_from_the_kernel_alone() {
    let k = world();
    let mut c = ctl(&k);
    apply(&mut c, node(sample()), 0);
    // A kill between adding an address and writing its rule: an address of ours nothing
    // records. And a foreign address.
    k.with("lb-demo", |n| {
        n.addrs.insert(
            ip("10.0.0.99"),
            crate::plan::ObservedAddr {
                interface: "eth0".into(),
                prefix: 32,
                owned: true,
            },
        );
        n.addrs.insert(
            ip("10.0.0.98"),
            crate::plan::ObservedAddr {
                interface: "eth0".into(),
                prefix: 32,
                owned: false,
            },
        );
    });
    let mut c2 = ctl(&k);
    c2.set_desired(node(sample()));
    let p = plan_at(&mut c2, 1);
    assert_eq!(
        p.to_string(),
        "namespace lb-demo\n  address del 10.0.0.99/32 dev eth0\n"
    );
    let _ = c2.sync_full(1).unwrap();
    k.with("lb-demo", |n| {
        assert!(!n.addrs.contains_key(&ip("10.0.0.99")));
        assert!(
            n.addrs.contains_key(&ip("10.0.0.98")),
            "foreign address kept"
        );
    });
}

#[test]
fn removing_a_network_tears_down_its_namespace() {
    let k = world();
    let mut c = ctl(&k);
    apply(&mut c, node(sample()), 0);
    apply(
        &mut c,
        NodeState::new(vec![], NodeOptions::default()).unwrap(),
        1,
    );
    k.with("lb-demo", |n| {
        assert!(n.ipvs.services().unwrap().is_empty());
        assert!(n.addrs.is_empty());
        assert!(n.rules.values().all(|o| {
            o.tables
                .values()
                .all(|t| t.chains.is_empty() && t.jumps.is_empty())
        }));
    });
}

#[test]
fn incremental_updates_name_only_valid_objects() {
    let k = world();
    let mut c = ctl(&k);
    apply(&mut c, node(sample()), 0);
    assert!(matches!(
        c.set_backends("nope", "vote", vec![]),
        Err(Error::UnknownObject {
            kind: "service",
            ..
        })
    ));
    assert!(matches!(
        c.remove_service("demo", "nope"),
        Err(Error::UnknownObject {
            kind: "service",
            ..
        })
    ));
    // A VIP colliding with another service's: refused, nothing changes.
    let bad = Service::vip("new", ip("10.0.0.9"), &[]).unwrap();
    assert!(matches!(
        c.upsert_service("demo", bad),
        Err(Error::Invalid {
            field: "service.vip",
            ..
        })
    ));
    assert_eq!(c.desired(), &node(sample()));
    // A backend that is another service's VIP: refused too.
    let bad = Service::vip("new", ip("10.0.0.50"), &[ip("10.0.0.9")]).unwrap();
    assert!(matches!(
        c.upsert_service("demo", bad),
        Err(Error::Invalid {
            field: "service.vip",
            ..
        })
    ));
    // Replacing a service by itself with one backend moved is fine (its own addresses).
    let mut vote = sample()[0].clone();
    vote.backends.reverse();
    c.upsert_service("demo", vote).unwrap();
    c.upsert_service("demo", sample()[0].clone()).unwrap();
    assert_eq!(
        c.desired(),
        &node(sample()),
        "the index follows the services"
    );
    // A new service goes through a full sync (its rules and address change).
    c.upsert_service(
        "demo",
        Service::vip("new", ip("10.0.0.50"), &[ip("10.0.0.51")]).unwrap(),
    )
    .unwrap();
    let (kind, _) = c.sync(1).unwrap();
    assert_eq!(kind, SyncKind::Full);
    c.remove_service("demo", "new").unwrap();
    let _ = c.sync(2).unwrap();
    assert!(plan_at(&mut c, 3).is_empty());
}

#[test]
fn faulty_backends_fail_loudly_and_the_reconciler_converges() {
    let k = world();
    let mut c = ctl(&k);
    c.set_desired(node(sample()));
    k.fail_rules_next(1);
    k.fail_host_next(2);
    let e = c.sync(0).unwrap_err();
    match e {
        Error::StepsFailed { failed, report, .. } => {
            assert!(failed >= 3, "{report}");
        }
        other => panic!("{other}"),
    }
    let mut now = 0;
    for _ in 0..10 {
        now = c.next_deadline().unwrap().max(now + 1);
        if c.sync(now).is_ok() {
            break;
        }
    }
    assert!(plan_at(&mut c, now).is_empty());
}

#[test]
fn a_module_the_kernel_cannot_load_is_found_before_the_first_write() {
    let k = world();
    let before = k.with("lb-demo", |n| (n.sysctls.clone(), n.addrs.clone()));
    k.remove_extension("-m ipvs");
    let mut c = ctl(&k);
    c.set_desired(node(sample()));
    match c.sync_full(0).unwrap_err() {
        Error::StepsFailed { failed, report, .. } => {
            assert_eq!(failed, 1, "one error: {report}");
            let text = report.to_string();
            assert!(text.contains("xt_ipvs"), "names the module: {text}");
        }
        other => panic!("{other}"),
    }
    k.with("lb-demo", |n| {
        assert_eq!(n.batches, 0, "no netfilter batch ran");
        assert!(n.ipvs.log.is_empty(), "no IPVS write: {:?}", n.ipvs.log);
        assert_eq!(
            (n.sysctls.clone(), n.addrs.clone()),
            before,
            "nothing written"
        );
    });
    assert!(
        c.marks().is_empty(),
        "no marks recorded for services never created"
    );
}

fn arb_services(dual: bool) -> impl Strategy<Value = Vec<Service>> {
    let svc = (
        0u8..3,
        proptest::collection::btree_set(10u8..250, 0..6),
        prop_oneof![Just("rr"), Just("wrr"), Just("lc"), Just("sh"), Just("mh")],
        proptest::option::of((1u32..100_000, 0u8..=32, 1u8..=128)),
        proptest::collection::vec((any::<bool>(), 1u16..=65535), 0..3),
        proptest::collection::vec(0u32..=65535, 6),
        any::<bool>(),
    );
    proptest::collection::vec(svc, 0..6).prop_map(move |v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (mode, backs, sched, pers, ports, weights, six))| {
                let addrs: Vec<IpAddr> = backs
                    .iter()
                    .map(|b| {
                        if dual && *b % 2 == 0 {
                            format!("fd00::{b:x}").parse().unwrap()
                        } else {
                            IpAddr::from([10, 0, 0, *b])
                        }
                    })
                    .filter(|a| *a != ip("10.0.0.2"))
                    .collect();
                let name = format!("s{i}");
                let v4 = IpAddr::from([10, 0, 1, i as u8 + 1]);
                let v6: IpAddr = format!("fd00::1:{:x}", i + 1).parse().unwrap();
                let mut s = match (mode, dual) {
                    (0, _) => Service::dnsrr(&name, &addrs).unwrap(),
                    (1, true) => Service::vips(&name, &[v4, v6], &addrs).unwrap(),
                    (_, true) if six => Service::vip(&name, v6, &addrs).unwrap(),
                    _ => Service::vip(&name, v4, &addrs).unwrap(),
                };
                for (b, w) in s.backends.iter_mut().zip(weights) {
                    b.weight = Weight::new(w).unwrap();
                }
                s.scheduler = Scheduler::new(sched).unwrap();
                s.persistence = pers.map(|(t, m, m6)| Persistence::new(t, m, m6).unwrap());
                s.ports = ports
                    .into_iter()
                    .map(|(tcp, port)| {
                        ServicePort::new(if tcp { Protocol::Tcp } else { Protocol::Udp }, port)
                            .unwrap()
                    })
                    .collect();
                s.ports.sort();
                s.ports.dedup();
                s
            })
            .collect()
    })
}

fn wide(dual: bool, services: Vec<Service>) -> NodeState {
    let mut net = Network::new(
        "demo",
        "10.0.0.0/16".parse().unwrap(),
        "lb-demo",
        "eth0",
        ip("10.0.0.2"),
    )
    .unwrap();
    if dual {
        net = net.with_subnet("fd00::/64".parse().unwrap(), ip("fd00::2"));
    }
    NodeState::single(NetworkState::new(net, services).unwrap()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn plan_of_an_applied_state_is_empty(dual in any::<bool>(), a in arb_services(true), b in arb_services(true)) {
        let filter = |v: Vec<Service>| -> Vec<Service> {
            if dual { v } else {
                v.into_iter().filter(|s| s.vips_of().is_none_or(|v| v.get(Family::V6).is_none()) && s.backends.iter().all(|b| b.addr.is_ipv4())).collect()
            }
        };
        let k = world();
        let mut c = ctl(&k);
        let sa = wide(dual, filter(a));
        c.set_desired(sa);
        let r = c.sync_full(0);
        prop_assert!(r.is_ok(), "{:?}", r.err());
        prop_assert!(plan_at(&mut c, 0).is_empty());
        let sb = wide(dual, filter(b));
        c.set_desired(sb.clone());
        prop_assert!(c.sync_full(1).is_ok());
        let later = 1 + sb.options().drain_timeout.as_secs();
        prop_assert!(c.sync_full(later).is_ok());
        let p = plan_at(&mut c, later);
        prop_assert!(p.is_empty(), "{}", p);
    }

    #[test]
    fn the_reconciler_converges_under_random_failures(seed in any::<u64>(), a in arb_services(true)) {
        let k = world();
        k.random_faults(seed, 150);
        let mut c = ctl(&k);
        c.set_desired(wide(true, a));
        let mut now = 0;
        let mut ok = false;
        for _ in 0..200 {
            if c.sync(now).is_ok() && c.next_deadline().is_none_or(|d| d > now) {
                ok = true;
                break;
            }
            now = c.next_deadline().unwrap_or(now + 1).max(now + 1);
        }
        prop_assert!(ok, "no successful sync in 200 tries");
        k.random_faults(0, 0);
        let p = plan_at(&mut c, now);
        prop_assert!(p.is_empty(), "{}", p);
    }

    #[test]
    fn state_file_parsing_never_panics(text in ".{0,300}") {
        let _ = NodeState::from_json(&text);
    }
}

#[test]
fn ipv6_persistence_netmask_at_its_edges_is_stable() {
    for m6 in [1u8, 64, 127, 128] {
        let net = Network::new(
            "six",
            "fd00::/64".parse().unwrap(),
            "lb-demo",
            "eth0",
            ip("fd00::2"),
        )
        .unwrap();
        let mut s = Service::vip("v", ip("fd00::9"), &[ip("fd00::10")]).unwrap();
        s.persistence = Some(Persistence::new(60, 0, m6).unwrap());
        let k = world();
        let mut c = ctl(&k);
        apply(
            &mut c,
            NodeState::single(NetworkState::new(net, vec![s]).unwrap()).unwrap(),
            0,
        );
        assert!(plan_at(&mut c, 1).is_empty(), "netmask /{m6}");
    }
}

#[cfg(feature = "dns")]
#[test]
fn dns_tables_follow_the_modes() {
    let st = NetworkState::new(network(), sample()).unwrap();
    let t = crate::dns::table(&st, "mesh.local.").unwrap();
    assert_eq!(t.len(), 4);
    assert!(matches!(
        crate::dns::table(&st, "bad zone"),
        Err(Error::Dns {
            field: "dns.zone",
            ..
        })
    ));
}

pub(crate) fn ingress_state(tasks: &[(&str, &str, Option<&str>)]) -> NodeState {
    NodeState::with_ingress(vec![], Some(ingress_spec(tasks)), NodeOptions::default()).unwrap()
}

fn ingress_spec(tasks: &[(&str, &str, Option<&str>)]) -> crate::ingress::Ingress {
    use crate::ingress::*;
    Ingress {
        id: NetworkId::new("ingress").unwrap(),
        node: "node1".into(),
        nodes: vec![
            ClusterNode {
                name: "node1".into(),
                underlay: ip("192.168.50.11"),
                sandbox_addr: ip("10.255.0.2"),
                sandbox_addr_v6: None,
            },
            ClusterNode {
                name: "node2".into(),
                underlay: ip("192.168.50.12"),
                sandbox_addr: ip("10.255.0.3"),
                sandbox_addr_v6: None,
            },
        ],
        subnet: "10.255.0.0/16".parse().unwrap(),
        gateway: ip("10.255.0.1"),
        subnet_v6: None,
        gateway_v6: None,
        vni: 4096,
        mtu: 1450,
        fwmarks: FwmarkRange::new(0x20000, 0x2ffff).unwrap(),
        host_netns: "node1".into(),
        sandbox_netns: "sbox1".into(),
        overlay_netns: "ov1".into(),
        gw_bridge: GwBridge::default(),
        timeouts: IpvsTimeouts::default(),
        services: vec![IngressService {
            name: ServiceName::new("vote").unwrap(),
            ports: vec![
                PublishedPort {
                    protocol: Protocol::Tcp,
                    published: Port::new(8080).unwrap(),
                    target: Port::new(80).unwrap(),
                    mode: PublishMode::Ingress,
                },
                PublishedPort {
                    protocol: Protocol::Udp,
                    published: Port::new(5353).unwrap(),
                    target: Port::new(5353).unwrap(),
                    mode: PublishMode::Ingress,
                },
            ],
            scheduler: Scheduler::rr(),
            tasks: tasks
                .iter()
                .map(|(a, n, ns)| IngressTask {
                    addr: ip(a),
                    node: n.to_string(),
                    netns: ns.map(str::to_string),
                    interface: None,
                    host_addr: None,
                    weight: Weight::default(),
                    addr_v6: None,
                    host_addr_v6: None,
                    host_veth: None,
                })
                .collect(),
        }],
        xdp: None,
    }
}

/// [`ingress_spec`] made dual-stack: fd00:255::/64, each task's IPv6 address
/// `fd00:255::<last v4 octet>`.
fn ingress_spec_v6(tasks: &[(&str, &str, Option<&str>)]) -> crate::ingress::Ingress {
    let mut i = ingress_spec(tasks);
    i.subnet_v6 = Some("fd00:255::/64".parse().unwrap());
    i.gateway_v6 = Some(ip("fd00:255::1"));
    i.nodes[0].sandbox_addr_v6 = Some(ip("fd00:255::2"));
    i.nodes[1].sandbox_addr_v6 = Some(ip("fd00:255::3"));
    for t in &mut i.services[0].tasks {
        let IpAddr::V4(a) = t.addr else { panic!() };
        t.addr_v6 = Some(format!("fd00:255::{:x}", a.octets()[3]).parse().unwrap());
    }
    i
}

pub(crate) fn ingress_world() -> FakeKernel {
    let k = FakeKernel::new();
    k.add_namespace("node1", &["lo", "eth0"]);
    k.add_namespace("vote1", &["lo", "eth0"]);
    k
}

#[test]
fn golden_ingress_plan_programs_host_sandbox_and_task() {
    let k = ingress_world();
    let mut c = ctl(&k);
    c.set_desired(ingress_state(&[
        ("10.255.0.5", "node1", Some("vote1")),
        ("10.255.0.6", "node2", None),
    ]));
    let _ = c.sync_full(0).unwrap();
    let mut c2 = ctl(&k);
    c2.set_desired(ingress_state(&[
        ("10.255.0.5", "node1", Some("vote1")),
        ("10.255.0.6", "node2", None),
    ]));
    assert!(plan_at(&mut c2, 1).is_empty());
    // The plan from empty namespaces, as golden text.
    let st = ingress_state(&[
        ("10.255.0.5", "node1", Some("vote1")),
        ("10.255.0.6", "node2", None),
    ]);
    let p = plan(
        &st,
        &empty_seen(&["node1", "sbox1", "vote1"]),
        &DrainBook::default(),
        0,
    )
    .unwrap();
    golden("plan_ingress.txt", &p.to_string());
    // Both tasks, on either node, are real servers of the sandbox's fwmark service.
    assert_eq!(
        dests(&k, "sbox1", ipvs::Family::Inet, 0x20000),
        vec![(ip("10.255.0.5"), 1), (ip("10.255.0.6"), 1)]
    );
}

#[test]
fn golden_dual_stack_ingress_programs_both_families_with_one_mark() {
    let k = ingress_world();
    let tasks = [
        ("10.255.0.5", "node1", Some("vote1")),
        ("10.255.0.6", "node2", None),
    ];
    let st = NodeState::with_ingress(
        vec![],
        Some(ingress_spec_v6(&tasks)),
        NodeOptions::default(),
    )
    .unwrap();
    let p = plan(
        &st,
        &empty_seen(&["node1", "sbox1", "vote1"]),
        &DrainBook::default(),
        0,
    )
    .unwrap();
    golden("plan_ingress_v6.txt", &p.to_string());
    let mut c = ctl(&k);
    apply(&mut c, st.clone(), 0);
    // One mark, a fwmark service per family, each with that family's tasks.
    assert_eq!(
        dests(&k, "sbox1", ipvs::Family::Inet, 0x20000),
        vec![(ip("10.255.0.5"), 1), (ip("10.255.0.6"), 1)]
    );
    assert_eq!(
        dests(&k, "sbox1", ipvs::Family::Inet6, 0x20000),
        vec![(ip("fd00:255::5"), 1), (ip("fd00:255::6"), 1)]
    );
    let host6 = k.with("node1", |n| format!("{:?}", n.rules[&Family::V6]));
    assert!(host6.contains("fd00:172:18::2"), "{host6}");
    let task6 = k.with("vote1", |n| format!("{:?}", n.rules[&Family::V6]));
    assert!(task6.contains("fd00:255::5"), "{task6}");
    let mut c2 = ctl(&k);
    c2.set_desired(st);
    assert!(plan_at(&mut c2, 1).is_empty());
}

#[test]
fn a_remote_task_change_is_incremental_and_touches_only_its_overlay_entries() {
    let k = ingress_world();
    let mut c = ctl(&k);
    let before = [
        ("10.255.0.5", "node1", Some("vote1")),
        ("10.255.0.6", "node2", None),
    ];
    let st = |t: &[(&str, &str, Option<&str>)]| {
        NodeState::with_ingress(vec![], Some(ingress_spec_v6(t)), NodeOptions::default()).unwrap()
    };
    apply(&mut c, st(&before), 0);
    let wirings = k.world().wirings;
    // node2's task is replaced by another one on node2.
    c.set_desired(st(&[
        ("10.255.0.5", "node1", Some("vote1")),
        ("10.255.0.7", "node2", None),
    ]));
    let (kind, r) = c.sync(1).unwrap();
    assert_eq!(kind, SyncKind::Incremental, "{r}");
    assert_eq!(k.world().wirings, wirings, "no full wiring");
    assert_eq!(
        k.world().peer_steps,
        // Only what comes: the endpoint that goes stays while its real server drains (the
        // next full sync removes it once the drain is over).
        [
            "[ov1] bridge fdb replace 02:42:0a:ff:00:07 dev vxlan0 dst 192.168.50.12 self permanent",
            "[ov1] ip neigh replace 10.255.0.7 lladdr 02:42:0a:ff:00:07 dev vxlan0 nud permanent",
            "[ov1] ip neigh replace fd00:255::7 lladdr 02:42:0a:ff:00:07 dev vxlan0 nud permanent",
        ]
    );
    // The old task drains, the new one serves, in both families.
    assert_eq!(
        dests(&k, "sbox1", ipvs::Family::Inet, 0x20000),
        vec![
            (ip("10.255.0.5"), 1),
            (ip("10.255.0.6"), 0),
            (ip("10.255.0.7"), 1)
        ]
    );
    assert_eq!(
        dests(&k, "sbox1", ipvs::Family::Inet6, 0x20000),
        vec![
            (ip("fd00:255::5"), 1),
            (ip("fd00:255::6"), 0),
            (ip("fd00:255::7"), 1)
        ]
    );
    // The next sync deletes the drained real servers (no connections in the fake); then
    // what the incremental path did is what a full sync wants.
    let (kind, _) = c.sync(2).unwrap();
    assert_eq!(kind, SyncKind::Incremental);
    let mut c2 = ctl(&k);
    c2.set_desired(st(&[
        ("10.255.0.5", "node1", Some("vote1")),
        ("10.255.0.7", "node2", None),
    ]));
    c2.set_drains(c.drains().clone());
    let p = plan_at(&mut c2, 2);
    assert!(p.is_empty(), "{p}");
    // A local task change is a full sync (its veth and rules).
    c.set_desired(st(&[("10.255.0.7", "node2", None)]));
    let (kind, _) = c.sync(3).unwrap();
    assert_eq!(kind, SyncKind::Full);
}

#[test]
fn a_missing_task_namespace_is_named_and_the_rest_of_the_node_converges() {
    let k = ingress_world();
    let mut c = ctl(&k);
    c.set_desired(ingress_state(&[
        ("10.255.0.5", "node1", Some("vote1")),
        ("10.255.0.8", "node1", Some("vote9")),
        ("10.255.0.6", "node2", None),
    ]));
    let err = c.sync_full(0).unwrap_err();
    let Error::StepsFailed { report, .. } = &err else {
        panic!("{err}");
    };
    assert!(
        report.failures().any(
            |s| matches!(&s.result, Err(Error::MissingNamespace { netns }) if netns == "vote9")
        ),
        "{report}"
    );
    // The sandbox, the host and the task that exists are programmed all the same.
    assert_eq!(
        dests(&k, "sbox1", ipvs::Family::Inet, 0x20000),
        vec![
            (ip("10.255.0.5"), 1),
            (ip("10.255.0.6"), 1),
            (ip("10.255.0.8"), 1)
        ]
    );
    let host = k.with("node1", |n| format!("{:?}", n.rules[&Family::V4]));
    assert!(host.contains("VIPMESH-ingress-DNAT"), "{host}");
    let task = k.with("vote1", |n| format!("{:?}", n.rules[&Family::V4]));
    assert!(task.contains("VIPMESH-ingress-TASK"), "{task}");
}

#[test]
fn a_removed_task_keeps_its_overlay_endpoint_while_it_drains() {
    let k = ingress_world();
    let mut c = ctl(&k);
    apply(
        &mut c,
        ingress_state(&[
            ("10.255.0.5", "node1", Some("vote1")),
            ("10.255.0.6", "node2", None),
        ]),
        0,
    );
    assert!(k.world().wired.contains(&ip("10.255.0.6")));
    let key = ipvs::ServiceKey::fwmark(ipvs::Family::Inet, 0x20000).unwrap();
    let d6 = ipvs::DestKey {
        addr: ip("10.255.0.6"),
        port: 0,
    };
    k.with("sbox1", |n| n.ipvs.set_conns(&key, &d6, 1, 0).unwrap());
    // node2's task goes while a connection is open: IPVS drains it, and the overlay keeps
    // its FDB entry and neighbour so that connection is not cut.
    apply(
        &mut c,
        ingress_state(&[("10.255.0.5", "node1", Some("vote1"))]),
        1,
    );
    assert_eq!(
        dests(&k, "sbox1", ipvs::Family::Inet, 0x20000),
        vec![(ip("10.255.0.5"), 1), (ip("10.255.0.6"), 0)]
    );
    let _ = c.sync_full(2).unwrap();
    assert!(
        k.world().wired.contains(&ip("10.255.0.6")),
        "still draining"
    );
    // The connection ends: the real server is deleted, then the endpoint goes.
    k.with("sbox1", |n| n.ipvs.set_conns(&key, &d6, 0, 0).unwrap());
    let _ = c.sync_full(3).unwrap();
    assert_eq!(
        dests(&k, "sbox1", ipvs::Family::Inet, 0x20000),
        vec![(ip("10.255.0.5"), 1)]
    );
    let _ = c.sync_full(4).unwrap();
    assert!(!k.world().wired.contains(&ip("10.255.0.6")));
    assert!(k.world().wired.contains(&ip("10.255.0.5")));
}

#[test]
fn dual_stack_ingress_bad_input_names_the_field() {
    let tasks = [
        ("10.255.0.5", "node1", Some("vote1")),
        ("10.255.0.6", "node2", None),
    ];
    let field = |i: crate::ingress::Ingress| match NodeState::with_ingress(
        vec![],
        Some(i),
        NodeOptions::default(),
    ) {
        Err(Error::Invalid { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    let mut i = ingress_spec_v6(&tasks);
    i.mtu = 1279;
    assert_eq!(field(i), "ingress.mtu");
    let mut i = ingress_spec_v6(&tasks);
    i.nodes[1].sandbox_addr_v6 = None;
    assert_eq!(field(i), "ingress.nodes.sandbox_addr_v6");
    let mut i = ingress_spec_v6(&tasks);
    i.gateway_v6 = Some(ip("fd00:999::1"));
    assert_eq!(field(i), "ingress.gateway_v6");
    let mut i = ingress_spec_v6(&tasks);
    i.subnet_v6 = Some("10.9.0.0/16".parse().unwrap());
    assert_eq!(field(i), "ingress.subnet_v6");
    let mut i = ingress_spec_v6(&tasks);
    i.services[0].tasks[1].addr_v6 = Some(ip("fd00:255::5"));
    assert_eq!(field(i), "ingress.services.tasks.addr_v6");
    let mut i = ingress_spec(&tasks);
    i.services[0].tasks[0].addr_v6 = Some(ip("fd00:255::5"));
    assert_eq!(field(i), "ingress.services.tasks.addr_v6");
    let mut i = ingress_spec(&tasks);
    i.subnet = "fd00:255::/64".parse().unwrap();
    assert_eq!(field(i), "ingress.subnet");
}

#[test]
fn ingress_tasks_come_and_go_and_the_last_local_task_leaving_keeps_the_port() {
    let k = ingress_world();
    let mut c = ctl(&k);
    apply(
        &mut c,
        ingress_state(&[
            ("10.255.0.5", "node1", Some("vote1")),
            ("10.255.0.6", "node2", None),
        ]),
        0,
    );
    // node1's last task goes: the host DNAT and the sandbox's service stay (for-linux#237).
    apply(&mut c, ingress_state(&[("10.255.0.6", "node2", None)]), 1);
    let host = k.with("node1", |n| format!("{:?}", n.rules[&Family::V4]));
    assert!(
        host.contains("VIPMESH-ingress-DNAT") && host.contains("8080"),
        "{host}"
    );
    assert_eq!(
        dests(&k, "sbox1", ipvs::Family::Inet, 0x20000),
        vec![(ip("10.255.0.5"), 0), (ip("10.255.0.6"), 1)],
        "the removed task drains"
    );
    let task = k.with("vote1", |n| format!("{:?}", n.rules[&Family::V4]));
    assert!(
        !task.contains("VIPMESH-ingress-RDR"),
        "the task's rules are gone: {task}"
    );
    // service rm, then re-create on the same port (moby#26563).
    let mut none = ingress_state(&[]);
    let mut ing = none.ingress().unwrap().clone();
    ing.services.clear();
    none.set_ingress(Some(ing)).unwrap();
    apply(&mut c, none, 2);
    assert!(k.with("sbox1", |n| n.ipvs.services().unwrap().is_empty()));
    apply(&mut c, ingress_state(&[("10.255.0.7", "node2", None)]), 3);
    assert_eq!(
        dests(&k, "sbox1", ipvs::Family::Inet, 0x20000),
        vec![(ip("10.255.0.7"), 1)]
    );
    assert!(plan_at(&mut c, 4).is_empty());
}

#[test]
fn ingress_bad_input_is_refused_whole() {
    let good = ingress_state(&[("10.255.0.5", "node1", Some("vote1"))]);
    let ing = good.ingress().unwrap().clone();
    let try_with = |f: &dyn Fn(&mut crate::ingress::Ingress)| {
        let mut i = ing.clone();
        f(&mut i);
        NodeState::with_ingress(vec![], Some(i), NodeOptions::default())
    };
    let field = |r: Result<NodeState, Error>| invalid(r).0;
    assert_eq!(field(try_with(&|i| i.vni = 0)), "ingress.vni");
    assert_eq!(field(try_with(&|i| i.vni = 1 << 24)), "ingress.vni");
    assert_eq!(
        field(try_with(&|i| i.nodes[1].underlay = i.nodes[0].underlay)),
        "ingress.nodes.underlay"
    );
    for name in ["../../etc", "a/b", "..", ".", "n\0"] {
        let r = try_with(&|i| {
            i.nodes[1].name = name.into();
        });
        assert_eq!(invalid(r).0, "ingress.nodes.name", "{name:?}");
    }
    assert_eq!(
        field(try_with(&|i| i.services[0].tasks[0].node = "node9".into())),
        "ingress.services.tasks.node"
    );
    assert_eq!(
        field(try_with(&|i| i.services[0].tasks[0].netns = None)),
        "ingress.services.tasks.netns"
    );
    assert_eq!(
        field(try_with(&|i| {
            let mut s = i.services[0].clone();
            s.name = ServiceName::new("other").unwrap();
            s.tasks.clear();
            i.services.push(s);
        })),
        "ingress.services.ports.published"
    );
    assert_eq!(
        field(try_with(&|i| {
            i.subnet_v6 = Some("fd00::/64".parse().unwrap());
            i.gateway_v6 = Some(ip("fd00::1"));
            i.mtu = 1200;
        })),
        "ingress.mtu"
    );
    // An ingress subnet overlapping a service network's.
    let net = Network::new(
        "n",
        "10.255.1.0/24".parse().unwrap(),
        "lb",
        "eth0",
        ip("10.255.1.2"),
    )
    .unwrap();
    let r = NodeState::with_ingress(
        vec![NetworkState::new(net, vec![]).unwrap()],
        Some(ing.clone()),
        NodeOptions::default(),
    );
    assert_eq!(field(r), "ingress.subnet");
    // A missing task namespace: an error naming it, the other namespaces converge.
    let k = FakeKernel::new();
    k.add_namespace("node1", &["lo", "eth0"]);
    let mut c = ctl(&k);
    c.set_desired(good);
    match c.sync_full(0) {
        Err(Error::StepsFailed { report, .. }) => {
            let e = report.first_error().unwrap();
            assert!(e.to_string().contains("vote1"), "{report}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        k.with("node1", |n| n.batches) > 0,
        "the host namespace was still programmed"
    );
}

/// Not a timing assertion: prints how the incremental path scales on the fake (run with
/// `--ignored --nocapture`); used to tell userspace costs from the kernel's.
#[test]
#[ignore = "measurement: cargo test -p vipmesh --lib incremental_scaling -- --ignored --nocapture"]
fn incremental_scaling() {
    for n in [100usize, 10_000] {
        let k = world();
        let mut c = ctl(&k);
        let services: Vec<Service> = (0..n)
            .map(|i| {
                let vip = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
                let b: Vec<IpAddr> = (0..10)
                    .map(|j| IpAddr::from([10, 2 + j as u8, (i >> 8) as u8, i as u8]))
                    .collect();
                Service::vip(&format!("svc{i}"), vip, &b).unwrap()
            })
            .collect();
        let net = Network::new(
            "demo",
            "10.0.0.0/8".parse().unwrap(),
            "lb-demo",
            "eth0",
            ip("10.0.0.2"),
        )
        .unwrap();
        c.set_desired(NodeState::single(NetworkState::new(net, services).unwrap()).unwrap());
        let _ = c.sync_full(0).unwrap();
        let name = format!("svc{}", n / 2);
        let mut b = c
            .desired()
            .network("demo")
            .unwrap()
            .service(&name)
            .unwrap()
            .backends
            .clone();
        let t = std::time::Instant::now();
        for r in 0..50u32 {
            b[3].weight = Weight::new(2 + r).unwrap();
            c.set_backends("demo", &name, b.clone()).unwrap();
            let (kind, _) = c.sync(1).unwrap();
            assert_eq!(kind, crate::SyncKind::Incremental);
        }
        println!("n={n}: {:?} per change", t.elapsed() / 50);
    }
}

#[test]
fn a_fwmark_range_holds_the_balanced_services_in_every_path() {
    // One mark: the state file with two balanced services is refused whole.
    let one = FULL_STATE.replace(r#""last": 511"#, r#""last": 256"#);
    let two_vips = one.replace(r#""mode": "dnsrr""#, r#""mode": {"vip": ["10.0.0.21"]}"#);
    let e = NodeState::from_json(&two_vips).unwrap_err();
    assert!(
        e.to_string()
            .contains(r#"invalid network.fwmarks "demo: 0x100..=0x100": 1 marks for 2 services"#),
        "{e}"
    );
    // With one balanced service and a dnsrr one it fits; a second balanced one added later
    // does not, and the network is unchanged.
    let st = NodeState::from_json(&one).unwrap();
    let mut net = st.networks().next().unwrap().clone();
    let before = net.clone();
    let extra = Service::vip("extra", "10.0.0.20".parse().unwrap(), &[]).unwrap();
    match net.upsert_service(extra) {
        Err(Error::Invalid { field, value, .. }) => {
            assert_eq!(
                (field, value.as_str()),
                ("network.fwmarks", "demo: 0x100..=0x100")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(net, before);
    // Replacing the balanced service by itself keeps the count.
    let vote = net.service("vote").unwrap().clone();
    net.upsert_service(vote).unwrap();
}

#[test]
fn a_drain_timeout_over_seven_days_is_refused_from_rust_too() {
    let opts = NodeOptions {
        drain_timeout: MAX_DRAIN_TIMEOUT + std::time::Duration::from_secs(1),
        ..NodeOptions::default()
    };
    let e = NodeState::new(vec![], opts).unwrap_err();
    assert!(
        e.to_string().contains("options.drain_timeout \"604801\""),
        "{e}"
    );
    let ok = NodeOptions {
        drain_timeout: MAX_DRAIN_TIMEOUT,
        ..NodeOptions::default()
    };
    NodeState::new(vec![], ok).unwrap();
}

/// Where the host sends published ports, shared by both firewall backends: an ingress port to
/// the sandbox's gateway-bridge address and the published port; a host port to this node's
/// task's host address of the family and the target port; no local task, nothing.
#[test]
fn publish_targets_send_ingress_ports_to_the_sandbox_and_host_ports_to_the_local_task() {
    use crate::ingress::*;
    let mut i = ingress_spec_v6(&[
        ("10.255.0.6", "node2", None),
        ("10.255.0.5", "node1", Some("vote1")),
    ]);
    i.services[0].ports[1].mode = PublishMode::Host;
    i.services[0].ports[1].target = Port::new(53).unwrap();
    i.services[0].tasks[1].host_addr = Some(ip("172.30.0.2"));
    i.services[0].tasks[1].host_addr_v6 = Some(ip("fd00:30::2"));
    let targets = |i: &Ingress, fam| {
        i.publish_targets(fam)
            .map(|(s, p, a, port)| (s.name.to_string(), p.published.get(), a, port.get()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        targets(&i, Family::V4),
        [
            ("vote".into(), 8080, i.gw_bridge.sandbox_addr, 8080),
            ("vote".into(), 5353, ip("172.30.0.2"), 53),
        ]
    );
    assert_eq!(
        targets(&i, Family::V6),
        [
            ("vote".into(), 8080, i.gw_bridge.sandbox_addr_v6, 8080),
            ("vote".into(), 5353, ip("fd00:30::2"), 53),
        ]
    );
    // The local task leaves: its host-mode port publishes nothing on this node.
    i.services[0].tasks.retain(|t| t.node != "node1");
    assert_eq!(
        targets(&i, Family::V4),
        [("vote".into(), 8080, i.gw_bridge.sandbox_addr, 8080)]
    );
}

#[test]
fn the_state_file_fuzz_seeds_load() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/state_file");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = NodeState::from_json(&text) {
            panic!("{}: {e}", path.display());
        }
        n += 1;
    }
    assert!(n >= 2, "seeds in {}", dir.display());
}

#[test]
fn a_published_service_whose_only_task_is_replaced_keeps_its_mark_through_a_full_sync() {
    replaced_tasks_keep_their_marks(Firewall::Iptables);
}

/// Two published services, each with one task on another node; both tasks replaced and the
/// next sync a full one: the marks are read back from what records them (rule comments, nft
/// map elements), not re-derived from real servers that no longer match.
pub(crate) fn replaced_tasks_keep_their_marks(firewall: Firewall) {
    let k = ingress_world();
    let mut c = ctl(&k);
    let opts = NodeOptions {
        firewall,
        ..NodeOptions::default()
    };
    let state = |vote: &str, web: &str| {
        let mut ing = ingress_spec(&[(vote, "node2", None)]);
        let mut s = ing.services[0].clone();
        s.name = ServiceName::new("web").unwrap();
        s.ports = vec![crate::ingress::PublishedPort {
            protocol: Protocol::Tcp,
            published: Port::new(8081).unwrap(),
            target: Port::new(80).unwrap(),
            mode: crate::ingress::PublishMode::Ingress,
        }];
        s.tasks[0].addr = ip(web);
        ing.services.push(s);
        NodeState::with_ingress(vec![], Some(ing), opts.clone()).unwrap()
    };
    apply(&mut c, state("10.255.0.6", "10.255.0.7"), 0);
    let before = c.marks().clone();
    // Both services' only task replaced, and the next sync is a full one (the periodic
    // resync, or another change in the same batch).
    c.set_desired(state("10.255.0.16", "10.255.0.17"));
    c.request_full_sync();
    let _ = c.sync(1).unwrap();
    assert_eq!(c.marks(), &before, "marks moved");
    // The old tasks drained (no connection): the next sync deletes them, then nothing is left.
    let _ = c.sync_full(2).unwrap();
    assert_eq!(c.marks(), &before);
    assert_eq!(
        dests(&k, "sbox1", ipvs::Family::Inet, before["ingress"]["web"]),
        vec![(ip("10.255.0.17"), 1)]
    );
    let p = plan_at(&mut c, 3);
    assert!(p.is_empty(), "{p}");
}

#[test]
fn a_cloned_network_shares_its_services_until_one_copy_changes() {
    use std::sync::Arc;
    let st = NodeState::from_json(FULL_STATE).unwrap();
    let net = st.networks().next().unwrap().clone();
    let mut copy = net.clone();
    let shared = |a: &NetworkState, b: &NetworkState, name: &str| {
        Arc::ptr_eq(
            a.service_shared(name).unwrap(),
            b.service_shared(name).unwrap(),
        )
    };
    assert!(shared(&net, &copy, "vote"));
    // A change to the copy is the copy's alone: the service and the index.
    let vip: std::net::IpAddr = "10.0.0.30".parse().unwrap();
    let moved = Service::vip("vote", vip, &["10.0.0.31".parse().unwrap()]).unwrap();
    copy.upsert_service(moved).unwrap();
    assert!(!shared(&net, &copy, "vote"));
    assert_eq!(copy.vip_holder(vip).map(|n| n.as_str()), Some("vote"));
    assert_eq!(net.vip_holder(vip), None);
    assert_eq!(net, st.networks().next().unwrap().clone());
    assert_ne!(net, copy);
    // Removing from the copy leaves the original whole.
    assert!(copy.remove_service("vote").is_some());
    assert!(net.service("vote").is_some());
    assert_eq!(copy.vip_holder(vip), None);
}

#[test]
fn the_status_forgets_what_a_full_sync_removed() {
    use crate::apply::ObjectKey;
    let k = world();
    let mut c = ctl(&k);
    let a = Service::vip("a", ip("10.0.0.9"), &[ip("10.0.0.10")]).unwrap();
    let b = Service::vip("b", ip("10.0.0.19"), &[ip("10.0.0.11")]).unwrap();
    apply(&mut c, node(vec![a.clone(), b]), 0);
    let id = NetworkId::new("demo").unwrap();
    let key_b = ObjectKey::Service(id.clone(), ServiceName::new("b").unwrap());
    let addr_b = ObjectKey::Address("lb-demo".into(), ip("10.0.0.19"));
    assert!(c.status().contains_key(&key_b));
    assert!(c.status().contains_key(&addr_b));
    // b goes: its service, its VIP and the mark its IPVS service had leave the status.
    apply(&mut c, node(vec![a]), 1);
    let st = c.status();
    assert!(!st.contains_key(&key_b), "{st:?}");
    assert!(!st.contains_key(&addr_b), "{st:?}");
    assert!(
        !st.keys().any(|k| matches!(k, ObjectKey::Mark(_, 0x101))),
        "{st:?}"
    );
    // What is still there keeps its status.
    assert!(st.contains_key(&ObjectKey::Service(id, ServiceName::new("a").unwrap())));
    assert!(st.contains_key(&ObjectKey::Address("lb-demo".into(), ip("10.0.0.9"))));
    assert!(
        st.contains_key(&ObjectKey::Namespace("lb-demo".into()))
            || st
                .keys()
                .any(|k| matches!(k, ObjectKey::Rules(ns, _) if ns == "lb-demo")),
        "{st:?}"
    );
}
