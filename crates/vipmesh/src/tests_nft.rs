//! Logic tests of the nftables backend on the fake node (its nft tables follow the kernel's
//! semantics: one atomic transaction, ownership by table name and comment), golden nft plans,
//! and switching backends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use vipmesh_ipvs::{self as ipvs, IpvsBackend};
use vipmesh_nft as nft;

use crate::controller::{Controller, ControllerConfig, ObserveMode};
use crate::fake::FakeKernel;
use crate::model::*;
use crate::plan::{DrainBook, plan};
use crate::tests::{
    Ctl, apply, ctl, dests, empty_seen, golden, ingress_state, ingress_world, ip, mark_of, node,
    plan_at, sample, world,
};

fn with_firewall(st: NodeState, firewall: Firewall) -> NodeState {
    let nets: Vec<NetworkState> = st.networks().cloned().collect();
    let opts = NodeOptions {
        firewall,
        ..st.options().clone()
    };
    NodeState::with_ingress(nets, st.ingress().cloned(), opts).unwrap()
}

fn nft_node(services: Vec<Service>) -> NodeState {
    with_firewall(node(services), Firewall::Nftables)
}

fn table(k: &FakeKernel, ns: &str, name: &str) -> Option<nft::Table> {
    k.with(ns, |n| n.nft.get(name).map(|o| o.table.clone()))
}

fn our_chains(k: &FakeKernel, ns: &str) -> usize {
    k.with(ns, |n| {
        n.rules
            .values()
            .flat_map(|o| o.tables.values())
            .map(|t| t.chains.len())
            .sum()
    })
}

fn ipvs_services(k: &FakeKernel, ns: &str) -> Vec<(ipvs::Family, u32)> {
    k.with(ns, |n| n.ipvs.clone().services().unwrap())
        .iter()
        .filter_map(|e| match e.service.key {
            ipvs::ServiceKey::Fwmark { af, mark } => Some((af, mark.get())),
            _ => None,
        })
        .collect()
}

#[test]
fn firewall_option_parses_and_unknown_values_name_the_field() {
    let o: NodeOptions = serde_json::from_str(r#"{"firewall": "nftables"}"#).unwrap();
    assert_eq!(o.firewall, Firewall::Nftables);
    let o: NodeOptions = serde_json::from_str("{}").unwrap();
    assert_eq!(o.firewall, Firewall::Iptables);
    let e = serde_json::from_str::<NodeOptions>(r#"{"firewall": "pf"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("options.firewall") && e.contains("pf"), "{e}");
    assert!("ebtables".parse::<Firewall>().is_err());
    assert_eq!(
        serde_json::to_string(&Firewall::Nftables).unwrap(),
        "\"nftables\""
    );
}

#[test]
fn golden_nft_plans_initial_and_change() {
    let st = nft_node(sample());
    let p = plan(&st, &empty_seen(&["lb-demo"]), &DrainBook::default(), 0).unwrap();
    golden("plan_initial_nft.txt", &p.to_string());
    let k = world();
    let mut c = ctl(&k);
    apply(&mut c, st, 0);
    assert!(
        plan_at(&mut c, 1).is_empty(),
        "applying twice changes nothing"
    );
    // One VIP moves and one service goes: only map elements change, in one transaction.
    let mut s = sample();
    s.retain(|s| s.name.as_str() != "empty");
    s[0] = Service::vip("vote", ip("10.0.0.19"), &[ip("10.0.0.10"), ip("10.0.0.11")]).unwrap();
    c.set_desired(nft_node(s));
    let p = plan_at(&mut c, 2);
    let text = p.to_string();
    assert!(!text.contains("iptables-restore"), "{text}");
    assert!(!text.contains("delete table"), "{text}");
    golden("plan_change_nft.txt", &text);
}

#[test]
fn golden_nft_ingress_plan_programs_host_sandbox_and_task() {
    let st = with_firewall(
        ingress_state(&[
            ("10.255.0.5", "node1", Some("vote1")),
            ("10.255.0.6", "node2", None),
        ]),
        Firewall::Nftables,
    );
    let p = plan(
        &st,
        &empty_seen(&["node1", "sbox1", "vote1"]),
        &DrainBook::default(),
        0,
    )
    .unwrap();
    golden("plan_ingress_nft.txt", &p.to_string());
    let k = ingress_world();
    let mut c = ctl(&k);
    apply(&mut c, st, 0);
    assert!(plan_at(&mut c, 1).is_empty());
    // The host keeps one iptables chain: the FORWARD accept (rules::add_host_forward).
    assert_eq!(our_chains(&k, "node1"), 1);
    for ns in ["node1", "sbox1", "vote1"] {
        if ns != "node1" {
            assert_eq!(our_chains(&k, ns), 0, "no iptables chain in {ns}");
        }
        assert!(table(&k, ns, "vipmesh-ingress").is_some(), "{ns}");
    }
    assert_eq!(
        dests(&k, "sbox1", ipvs::Family::Inet, 0x20000),
        vec![(ip("10.255.0.5"), 1), (ip("10.255.0.6"), 1)]
    );
}

#[test]
fn switching_backends_keeps_marks_and_ipvs_and_removes_the_other_backends_objects() {
    let k = world();
    let mut c = ctl(&k);
    apply(&mut c, node(sample()), 0);
    let marks = c.marks().clone();
    let services = ipvs_services(&k, "lb-demo");
    assert!(our_chains(&k, "lb-demo") > 0);
    let log = k.with("lb-demo", |n| n.ipvs.log.len());

    // iptables -> nftables: the table is created before the chains go, in one sync.
    c.set_desired(nft_node(sample()));
    let p = plan_at(&mut c, 1);
    let text = p.to_string();
    let (t, i) = (
        text.find("nftables vipmesh-demo").unwrap(),
        text.find("iptables-restore").unwrap(),
    );
    assert!(t < i, "the new backend first:\n{text}");
    let _ = c.sync_full(1).unwrap();
    assert_eq!(our_chains(&k, "lb-demo"), 0);
    let t = table(&k, "lb-demo", "vipmesh-demo").unwrap();
    // vote, api:8080/tcp, api:53/udp, empty; and empty's reject
    assert_eq!(t.element_count(), 5, "{t}");
    assert_eq!(c.marks(), &marks);
    assert_eq!(ipvs_services(&k, "lb-demo"), services);
    assert_eq!(
        k.with("lb-demo", |n| n.ipvs.log.len()),
        log,
        "no IPVS operation"
    );
    assert!(plan_at(&mut c, 2).is_empty());

    // And back: the chains first, then the table goes.
    apply(&mut c, node(sample()), 3);
    assert!(table(&k, "lb-demo", "vipmesh-demo").is_none());
    assert!(our_chains(&k, "lb-demo") > 0);
    assert_eq!(c.marks(), &marks);
    assert_eq!(k.with("lb-demo", |n| n.ipvs.log.len()), log);
    assert!(plan_at(&mut c, 4).is_empty());
}

#[test]
fn a_foreign_table_with_our_name_is_refused_and_never_deleted() {
    let k = world();
    let mut foreign = nft::Table::new(nft::NetworkId::new("demo").unwrap());
    nft::vip_marks(&mut foreign, &[nft::Hook::Input], &[]).unwrap();
    let obs = nft::Observed {
        table: foreign,
        owner: nft::Ownership::Foreign("someone else".into()),
        unparsed: Vec::new(),
    };
    k.with("lb-demo", |n| {
        n.nft.insert("vipmesh-demo".into(), obs.clone())
    });
    let mut c = ctl(&k);
    c.set_desired(nft_node(sample()));
    let e = c.sync_full(0).unwrap_err();
    let msg = crate::apply::chain(Some(&e));
    assert!(
        msg.contains("vipmesh-demo") && msg.contains("not ours"),
        "{msg}"
    );
    assert_eq!(k.with("lb-demo", |n| n.nft["vipmesh-demo"].clone()), obs);
    // On iptables it is left alone too.
    apply(&mut c, node(sample()), 1);
    assert_eq!(k.with("lb-demo", |n| n.nft["vipmesh-demo"].clone()), obs);
}

#[test]
fn marks_survive_the_loss_of_either_record_on_nftables() {
    let k = world();
    let mut c = ctl(&k);
    apply(&mut c, nft_node(sample()), 0);
    let marks = c.marks().clone();
    // The map elements lost (the table deleted): the IPVS services recover the marks.
    k.with("lb-demo", |n| n.nft.clear());
    let mut c2 = ctl(&k);
    apply(&mut c2, nft_node(sample()), 1);
    assert_eq!(c2.marks(), &marks);
    // The IPVS services lost: the map elements recover the marks.
    k.with("lb-demo", |n| n.ipvs = vipmesh_ipvs::fake::Fake::new());
    let mut c3 = ctl(&k);
    apply(&mut c3, nft_node(sample()), 2);
    assert_eq!(c3.marks(), &marks);
    assert_eq!(
        mark_of(&c3, "vote"),
        marks[&NetworkId::new("demo").unwrap()]["vote"]
    );
}

#[test]
fn cached_mode_sends_only_changed_elements_and_a_failed_transaction_makes_the_next_sync_full() {
    let k = world();
    let cfg = ControllerConfig {
        observe: ObserveMode::Cached,
        ..ControllerConfig::default()
    };
    let mut c: Ctl = Controller::new(k.clone(), cfg);
    apply(&mut c, nft_node(sample()), 0);
    let reads = k.with("lb-demo", |n| n.nft_reads);
    let mut s = sample();
    s[0] = Service::vip("vote", ip("10.0.0.19"), &[ip("10.0.0.10"), ip("10.0.0.11")]).unwrap();
    c.set_desired(nft_node(s.clone()));
    let r = c.sync(1).unwrap().1;
    let text = r.to_string();
    assert!(
        text.contains("nftables vipmesh-demo transaction (6 lines)"),
        "{text}"
    );
    assert_eq!(
        k.with("lb-demo", |n| n.nft_reads),
        reads,
        "planned from the cache"
    );
    let t = table(&k, "lb-demo", "vipmesh-demo").unwrap();
    assert!(t.to_string().contains("10.0.0.19 : 0x"), "{t}");

    // A failed transaction changes nothing, and the next sync reads the kernel again.
    s[0] = Service::vip("vote", ip("10.0.0.29"), &[ip("10.0.0.10"), ip("10.0.0.11")]).unwrap();
    c.set_desired(nft_node(s));
    k.fail_rules_next(1);
    assert!(c.sync(2).is_err());
    assert_eq!(table(&k, "lb-demo", "vipmesh-demo").unwrap(), t);
    let _ = c.sync(100).unwrap();
    assert_eq!(k.with("lb-demo", |n| n.nft_reads), reads + 1);
    let t = table(&k, "lb-demo", "vipmesh-demo").unwrap();
    assert!(t.to_string().contains("10.0.0.29 : 0x"), "{t}");
    assert!(plan_at(&mut c, 101).is_empty());
}

#[test]
fn random_faults_converge_on_nftables() {
    let k = world();
    let mut c = ctl(&k);
    c.set_desired(nft_node(sample()));
    k.random_faults(7, 300);
    for now in 0..40 {
        let _ = c.sync_full(now);
    }
    k.random_faults(0, 0);
    let _ = c.sync_full(50).unwrap();
    assert!(plan_at(&mut c, 51).is_empty());
    assert_eq!(our_chains(&k, "lb-demo"), 0);
    assert!(table(&k, "lb-demo", "vipmesh-demo").is_some());
}

#[test]
fn a_published_service_whose_only_task_is_replaced_keeps_its_mark_on_nftables() {
    crate::tests::replaced_tasks_keep_their_marks(Firewall::Nftables);
}
