//! End-to-end tests in fresh namespaces: real TCP through the XDP fast path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use common::require_xdp;
use vipmesh_testkit::xdp_lab::{self as lab, CLIENT_ADDR, DSR_VIP, Lab, NODE_ADDR, PUBLISHED};
use vipmesh_xdp::{AttachMode, ForwardMode};

fn spread_and_client_ip(lab: &Lab, vip: std::net::Ipv4Addr) -> BTreeMap<String, usize> {
    let mut per_task = BTreeMap::new();
    for _ in 0..40 {
        let (task, peer) = lab.who(vip, PUBLISHED).expect("request through the VIP");
        assert!(
            peer.starts_with(&format!("{CLIENT_ADDR}:")),
            "task {task} must see the real client address, saw {peer}"
        );
        *per_task.entry(task).or_insert(0) += 1;
    }
    per_task
}

fn e2e(mode: ForwardMode, vip: std::net::Ipv4Addr) {
    let mut lab = Lab::new("xe", 2);
    let att = lab.start_xdp(mode);
    assert!(matches!(
        att.mode,
        Some(AttachMode::Native | AttachMode::Generic)
    ));
    // Requests spread over both tasks, each seeing the client's address.
    let per_task = spread_and_client_ip(&lab, vip);
    assert_eq!(per_task.len(), 2, "spread over both tasks: {per_task:?}");
    assert!(per_task.values().all(|&n| n >= 5), "{per_task:?}");
    // 4 MiB download intact.
    let got = lab.big(vip, PUBLISHED).expect("download");
    assert_eq!(got.len(), lab::BIG_LEN);
    assert_eq!(
        lab::md5(&got),
        lab::md5(&lab::big_payload()),
        "md5 of the 4 MiB transfer"
    );
    // 4 MiB upload intact: full-size client segments (in encap mode, MSS clamping makes them
    // fit the task links' 1500-byte MTU once wrapped).
    assert!(
        lab.upload(vip, PUBLISHED).expect("upload"),
        "the task got the upload intact"
    );
    // Traffic not for the VIP is untouched: ping the node, reach a task directly.
    lab.sh(&lab.client, &format!("ping -c1 -W2 {NODE_ADDR} >/dev/null"));
    let direct = lab
        .who(lab.tasks[0].addr, lab::TARGET)
        .expect("direct to task");
    assert_eq!(direct.0, "t1");
    assert!(direct.1.starts_with(&format!("{CLIENT_ADDR}:")));
    let fp = lab.fp.as_mut().unwrap();
    let key = lab_spec_key(mode);
    let stats = fp.dataplane().service_stats(&key).unwrap();
    assert!(stats.packets > 40 && stats.new_flows >= 40, "{stats:?}");
    let per_backend = fp.dataplane().backend_stats(&key).unwrap();
    assert!(
        per_backend.values().all(|s| s.packets > 0),
        "{per_backend:?}"
    );
    let c = fp.dataplane().counters().unwrap();
    assert!(c["pass_not_ours"] > 0 || c["pass_proto"] > 0, "{c:?}");
    if mode == ForwardMode::Encap {
        assert!(c["mss_clamped"] > 0, "SYNs and SYN-ACKs clamped: {c:?}");
    }
}

fn lab_spec_key(mode: ForwardMode) -> vipmesh_xdp::ServiceKey {
    let addr = match mode {
        ForwardMode::Nat => NODE_ADDR,
        ForwardMode::Encap => DSR_VIP,
    };
    vipmesh_xdp::ServiceKey {
        addr: addr.into(),
        port: PUBLISHED,
        proto: vipmesh_xdp::Proto::Tcp,
    }
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn nat_mode_end_to_end() {
    require_xdp();
    e2e(ForwardMode::Nat, NODE_ADDR);
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn encap_mode_end_to_end() {
    require_xdp();
    e2e(ForwardMode::Encap, DSR_VIP);
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn replacing_a_backend_keeps_existing_flows() {
    require_xdp();
    let mut lab = Lab::new("xr", 3);
    lab.start_xdp(ForwardMode::Nat);
    let spec = lab.spec(ForwardMode::Nat, &[0, 1]);
    lab.upsert(&spec).unwrap();
    // Long-lived connections, on t1 and t2.
    let mut conns = Vec::new();
    for _ in 0..16 {
        let mut s = lab.connect(NODE_ADDR, PUBLISHED).unwrap();
        let (task, _) = Lab::who_on(&mut s).unwrap();
        conns.push((s, task));
    }
    assert!(conns.iter().any(|c| c.1 == "t1") && conns.iter().any(|c| c.1 == "t2"));
    // Replace t2 by t3.
    let spec = lab.spec(ForwardMode::Nat, &[0, 2]);
    let report = lab.upsert(&spec).unwrap();
    assert_eq!(report.removed.len(), 1);
    for (s, task) in &mut conns {
        if task == "t1" {
            let (now, _) = Lab::who_on(s).expect("a flow on a remaining backend keeps working");
            assert_eq!(&now, task, "and stays on its backend");
        }
    }
    // New connections go to t1 and t3 only.
    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        *seen
            .entry(lab.who(NODE_ADDR, PUBLISHED).unwrap().0)
            .or_insert(0) += 1;
    }
    assert!(!seen.contains_key("t2"), "{seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
}
