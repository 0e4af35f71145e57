//! The XDP ingress mesh on the host kernel, in fresh namespaces: a LAN bridge, an external
//! client, two nodes, their tasks (lab: `xdp_mesh_lab/lab.rs`). Published port 8080 (TCP) and
//! 5353 (UDP) of service `vote` (targets 80 and 53) are served by `vipmesh::xdp_mesh` on both
//! nodes, on their IPv4 and IPv6 addresses.
//!
//! Run: `sudo -E cargo test -p vipmesh --test host_xdp_mesh -- --ignored --test-threads 1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "xdp_mesh_lab/lab.rs"]
mod lab;

use std::collections::BTreeSet;

use lab::*;
use vipmesh::model::{NodeOptions, NodeState};
use vipmesh::xdp_mesh::{XdpMesh, XdpStep};
use vipmesh::{Controller, ControllerConfig};

#[test]
#[ignore = "privileged: root, netns, XDP and tcx on the host kernel"]
fn mesh_keeps_the_client_address_across_nodes_tcp_udp_and_big_transfers() {
    let lab = lab(&[0, 1]);
    let (m1, d1) = up(&lab, 0);
    let (m2, d2) = up(&lab, 1);

    for (node, addr, me) in [
        (1, "192.0.2.1", CLIENT),
        (2, "192.0.2.2", CLIENT),
        (1, "fd00:2::1", CLIENT6),
        (2, "fd00:2::2", CLIENT6),
    ] {
        // TCP: both tasks answer through each node, and both see the client's address.
        let mut seen = BTreeSet::new();
        for _ in 0..16 {
            let (task, c) = who(&client(&lab, &format!("who {addr} 8080")));
            assert_eq!(c, me, "TCP via n{node} {addr}: task {task} saw {c}");
            seen.insert(task);
        }
        assert_eq!(
            seen,
            BTreeSet::from(["t1".into(), "t2".into()]),
            "TCP via {addr}"
        );
        // UDP likewise.
        let mut seen = BTreeSet::new();
        for _ in 0..16 {
            let (task, c) = who(&client(&lab, &format!("uwho {addr} 5353")));
            assert_eq!(c, me, "UDP via n{node} {addr}: task {task} saw {c}");
            seen.insert(task);
        }
        assert_eq!(
            seen,
            BTreeSet::from(["t1".into(), "t2".into()]),
            "UDP via {addr}"
        );
    }

    // The same flow (fixed source port) lands on the same task via either node.
    for sport in 41001..41005 {
        let a = who(&client(&lab, &format!("who fd00:2::1 8080 {sport}"))).0;
        let b = who(&client(&lab, &format!("who fd00:2::2 8080 {sport}"))).0;
        assert_eq!(a, b, "v6 source port {sport}: n1 chose {a}, n2 chose {b}");
    }
    for sport in 41001..41009 {
        let a = who(&client(&lab, &format!("who 192.0.2.1 8080 {sport}"))).0;
        let b = who(&client(&lab, &format!("who 192.0.2.2 8080 {sport}"))).0;
        assert_eq!(a, b, "source port {sport}: n1 chose {a}, n2 chose {b}");
        let a = who(&client(&lab, &format!("uwho 192.0.2.1 5353 {sport}"))).0;
        let b = who(&client(&lab, &format!("uwho 192.0.2.2 5353 {sport}"))).0;
        assert_eq!(a, b, "UDP source port {sport}: n1 chose {a}, n2 chose {b}");
    }

    // 4 MiB both ways through the remote path (n1 -> t2, IPIP), offloads off.
    for (cmd, node1) in [
        ("get", "192.0.2.1"),
        ("put", "192.0.2.1"),
        ("get", "fd00:2::1"),
        ("put", "fd00:2::1"),
    ] {
        let r = client(&lab, &format!("{cmd} {node1} 8080 t2"));
        let f: Vec<&str> = r.split_whitespace().collect();
        assert_eq!(f.len(), 3, "{cmd} via {node1} never reached t2: {r:?}");
        assert_eq!(f[1], f[2], "{cmd} via {node1} to t2: md5 differs");
    }
    drop((m1, m2));
    let _ = (d1, d2);
}

#[test]
#[ignore = "privileged: root, netns, XDP and tcx on the host kernel"]
fn restart_under_traffic_keeps_flows_and_teardown_leaves_foreign_programs() {
    let mut lab = lab(&[0, 1]);
    let (m1, d1) = up(&lab, 0);
    let (_m2, _d2) = up(&lab, 1);
    // Long-lived connections through both nodes, a line every 50 ms for 8 s.
    let outs = hold(&mut lab, "restart", 6, 8);
    connected(&outs);
    // The controller of n1 goes away without teardown (pins stay), and a new one comes.
    drop(m1);
    let mut m1 = XdpMesh::new(&d1).unwrap();
    let o = m1.observe(&d1).unwrap();
    let p = XdpMesh::plan(&d1, &o).unwrap();
    assert!(matches!(p.steps.first(), Some(XdpStep::Load { .. })), "{p}");
    let adopted = p
        .steps
        .iter()
        .filter(|s| matches!(s, XdpStep::Attach { adopt: true, .. }))
        .count();
    let attaches = p
        .steps
        .iter()
        .filter(|s| matches!(s, XdpStep::Attach { .. }))
        .count();
    assert_eq!(
        (adopted, attaches),
        (5, 5),
        "every pinned link taken over:\n{p}"
    );
    m1.apply(&d1, &p).unwrap();
    let again = XdpMesh::plan(&d1, &m1.observe(&d1).unwrap()).unwrap();
    assert!(again.is_empty(), "after the restart:\n{again}");
    // Nothing duplicated: two services, two backends each, the ids of before.
    let fp = m1.fast_path().unwrap();
    let specs: Vec<_> = fp.dataplane().services().cloned().collect();
    assert_eq!(specs.len(), 4, "tcp and udp, v4 and v6: {specs:?}");
    assert!(specs.iter().all(|s| s.backends.len() == 2), "{specs:?}");
    // Every long-lived connection kept its task and got every reply.
    for out in &outs {
        let text = held(out);
        assert!(text.contains("err=none"), "{text}");
        let tasks = text.split_whitespace().next().unwrap_or_default();
        assert!(tasks == "tasks=t1" || tasks == "tasks=t2", "{text}");
    }

    // A foreign XDP and tc program on other interfaces of n1, loaded by someone else.
    lab.topo
        .veth((&lab.nodes[0], "fx0"), (&lab.nodes[0], "fx1"));
    let node1 = vipmesh_netns::Netns::named(&lab.nodes[0]).unwrap();
    let mut foreign = vipmesh_xdp::FastPath::load(&vipmesh_xdp::LoadOptions::default()).unwrap();
    node1
        .run(|| {
            foreign
                .attach(
                    "fx0",
                    vipmesh_xdp::Program::XdpPass,
                    vipmesh_xdp::AttachMode::Generic,
                )
                .unwrap();
            foreign
                .attach(
                    "fx1",
                    vipmesh_xdp::Program::TcDecap,
                    vipmesh_xdp::AttachMode::Auto,
                )
                .unwrap();
        })
        .unwrap();
    let ours = m1.fast_path().unwrap().program_ids().unwrap();
    let foreign_tc = foreign.program_ids().unwrap()[&vipmesh_xdp::Program::TcDecap];
    m1.teardown(&d1).unwrap();
    let n1 = &lab.nodes[0];
    let links = lab.topo.sh(n1, "ip -d link show");
    assert!(
        !lab.topo.sh(n1, "ip link show up0").contains("xdp"),
        "{links}"
    );
    assert!(
        lab.topo.sh(n1, "ip link show fx0").contains("xdp"),
        "{links}"
    );
    // The foreign tcx link still holds its program (bpftool 7.1's `net` does not list tcx).
    let all = lab.topo.sh(n1, "bpftool link show");
    assert!(
        all.contains(&format!("prog {foreign_tc}")),
        "foreign tc link gone:\n{all}"
    );
    // None of our programs is held by anything any more: every link of ours is gone.
    for (p, id) in &ours {
        vipmesh_testkit::eventually(
            std::time::Duration::from_secs(10),
            &format!("{} (id {id}) freed", p.name()),
            || {
                let o = lab.topo.try_sh(n1, &format!("bpftool prog show id {id}"));
                if o.status.success() {
                    Err(String::from_utf8_lossy(&o.stdout).into_owned())
                } else {
                    Ok(())
                }
            },
        );
    }
    let t1 = lab.topo.sh(&lab.tasks[0].ns, "ip addr show lo");
    assert!(!t1.contains("192.0.2.2"), "{t1}");
    // The task's ARP settings are what they were before the mesh (a new namespace's 0).
    assert_eq!(
        arp_settings(&lab, 0),
        "0 0",
        "task sysctls not restored at teardown"
    );
    assert!(!d1.sysctl_record.exists(), "record left");
    assert!(
        !d1.pin_root.exists(),
        "pins left in {}",
        d1.pin_root.display()
    );
    drop(foreign);
}

/// `arp_ignore arp_announce` (net.ipv4.conf.all) in task `i`'s namespace.
fn arp_settings(lab: &Lab, i: usize) -> String {
    lab.topo
        .sh(
            &lab.tasks[i].ns,
            "echo $(cat /proc/sys/net/ipv4/conf/all/arp_ignore /proc/sys/net/ipv4/conf/all/arp_announce)",
        )
        .trim()
        .to_owned()
}

#[test]
#[ignore = "privileged: root, netns, XDP and tcx on the host kernel"]
fn replacing_one_of_three_backends_keeps_the_flows_of_the_others() {
    // t1 on n1; t2, t3 on n2; t4 on n2 replaces t3.
    let mut lab = lab(&[0, 1, 1, 1]);
    let mut meshes = Vec::new();
    for node in 0..2 {
        let d = desired_with(&lab, node, &[0, 1, 2]);
        let mut m = XdpMesh::new(&d).unwrap();
        m.converge(&d).unwrap();
        meshes.push(m);
    }
    let outs = hold(&mut lab, "replace", 12, 12);
    connected(&outs);
    for (node, m) in meshes.iter_mut().enumerate() {
        let d = desired_with(&lab, node, &[0, 1, 3]);
        let p = XdpMesh::plan(&d, &m.observe(&d).unwrap()).unwrap();
        m.apply(&d, &p).unwrap();
        assert!(
            XdpMesh::plan(&d, &m.observe(&d).unwrap())
                .unwrap()
                .is_empty()
        );
    }
    let mut kept = 0;
    for out in &outs {
        let text = held(out);
        let tasks = text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        if tasks == "tasks=t3" {
            continue; // its backend went: its flow is re-hashed (and reset by the new task)
        }
        assert!(
            text.contains("err=none"),
            "a flow of a kept backend broke: {text}"
        );
        assert!(tasks == "tasks=t1" || tasks == "tasks=t2", "moved: {text}");
        kept += 1;
    }
    assert!(
        kept >= 3,
        "too few long-lived flows on the kept backends ({kept})"
    );
    // The replaced task left the mesh: its ARP settings are back; the others keep ours.
    assert_eq!(arp_settings(&lab, 2), "0 0", "t3's sysctls not restored");
    assert_eq!(arp_settings(&lab, 1), "1 2", "t2 is still in the mesh");
    // New connections reach the new task, never the old one.
    let mut seen = BTreeSet::new();
    for i in 0..30 {
        let addr = ["192.0.2.1", "192.0.2.2"][i % 2];
        let (task, c) = who(&client(&lab, &format!("who {addr} 8080")));
        assert_eq!(c, CLIENT);
        seen.insert(task);
    }
    assert!(seen.contains("t4") && !seen.contains("t3"), "{seen:?}");
}

#[test]
#[ignore = "privileged: root, netns, XDP and tcx on the host kernel"]
fn native_mode_refused_is_typed_and_the_fallback_is_reported() {
    use vipmesh::xdp_mesh::{AttachRequest, XdpMeshConfig};
    // A node whose uplink is a bridge device: no driver XDP.
    let lab = lab(&[]);
    let n1 = lab.nodes[0].clone();
    lab.topo
        .sh(&n1, "ip link add dm0 type bridge && ip link set dm0 up");
    let ing = ingress(&lab, 0, &[]);
    for (attach, expect_ok) in [
        (AttachRequest::Native, false),
        (AttachRequest::NativeOrGeneric, true),
    ] {
        let mut cfg = XdpMeshConfig::new("dm0");
        cfg.pin_root = Some(lab.pin_root.join(format!("dm-{attach}")));
        cfg.attach = attach;
        let d = XdpMesh::derive(&ing, &cfg).unwrap();
        let mut m = XdpMesh::new(&d).unwrap();
        let p = XdpMesh::plan(&d, &m.observe(&d).unwrap()).unwrap();
        match m.apply(&d, &p) {
            Err(vipmesh::Error::XdpModeUnsupported {
                interface, mode, ..
            }) if !expect_ok => {
                assert_eq!((interface.as_str(), mode.as_str()), ("dm0", "native"));
            }
            Ok(r) if expect_ok => {
                assert_eq!(r.fallbacks.len(), 1, "{r:?}");
                assert_eq!(r.fallbacks[0].0, "dm0");
                let link = lab.topo.sh(&n1, "ip link show dm0");
                assert!(link.contains("xdpgeneric"), "{link}");
            }
            other => panic!("{attach}: {other:?}"),
        }
        m.teardown(&d).unwrap();
        assert!(!lab.topo.sh(&n1, "ip link show dm0").contains("xdp"));
    }
}

/// The node controller drives the XDP mesh from the state file's `ingress.xdp`: `vipmesh
/// plan` shows its typed steps, one sync serves the published ports on both nodes (the
/// client's address kept), nothing here needs IPVS (the host kernel has none), applying
/// twice changes nothing, a restarted controller takes the pinned links over, and a state
/// without the ingress tears the mesh down.
#[test]
#[ignore = "privileged: root, netns, XDP and tcx on the host kernel"]
fn the_controller_drives_the_mesh_from_the_state_file() {
    let lab = lab(&[0, 1]);
    let all = [0, 1];
    // Through the state file's JSON, as `vipmesh apply` reads it.
    let state_of = |node: usize, active: &[usize]| {
        let st = NodeState::with_ingress(
            vec![],
            Some(ingress_xdp(&lab, node, active)),
            NodeOptions::default(),
        )
        .unwrap();
        let text = serde_json::to_string(&st.to_file()).unwrap();
        assert!(text.contains("\"uplink\":\"up0\""), "{text}");
        NodeState::from_json(&text).unwrap()
    };
    let state = |node: usize| state_of(node, &all);
    let mut ctls = Vec::new();
    for node in 0..2 {
        let mut c = Controller::real(ControllerConfig::default());
        c.set_desired(state(node));
        let p = c.plan_now().unwrap();
        let text = p.to_string();
        assert!(text.starts_with("xdp: load xdp programs"), "{text}");
        assert!(text.contains("xdp: attach xdp_lb on up0"), "{text}");
        assert!(!text.contains("namespace "), "nothing but XDP: {text}");
        let _ = c.sync_full(vipmesh::plan::now_secs()).unwrap();
        let again = c.plan_now().unwrap();
        assert!(again.is_empty(), "n{}: {again}", node + 1);
        ctls.push(c);
    }
    for addr in ["192.0.2.1", "192.0.2.2"] {
        let mut seen = BTreeSet::new();
        for _ in 0..12 {
            let (task, c) = who(&client(&lab, &format!("who {addr} 8080")));
            assert_eq!(c, CLIENT, "via {addr}: task {task} saw {c}");
            seen.insert(task);
        }
        assert_eq!(seen, BTreeSet::from(["t1".into(), "t2".into()]), "{addr}");
    }
    // A restarted controller (the old one gone without teardown) takes the pins over.
    drop(ctls.remove(0));
    let mut c = Controller::real(ControllerConfig::default());
    c.set_desired(state(0));
    let text = c.plan_now().unwrap().to_string();
    assert!(text.contains("(take over pinned link)"), "{text}");
    let _ = c.sync_full(vipmesh::plan::now_secs()).unwrap();
    assert!(c.plan_now().unwrap().is_empty());
    let (_, seen) = who(&client(&lab, "who 192.0.2.1 8080"));
    assert_eq!(seen, CLIENT);
    // t1 leaves while no controller runs: the next process cleans up after it (its address
    // and its sysctls) from what the one before recorded.
    let t1 = lab.topo.sh(&lab.tasks[0].ns, "ip addr show lo");
    assert!(t1.contains("192.0.2.2"), "{t1}");
    assert_ne!(arp_settings(&lab, 0), "0 0");
    drop(c);
    let mut c = Controller::real(ControllerConfig::default());
    c.set_desired(state_of(0, &[1]));
    let r = c.sync_full(vipmesh::plan::now_secs()).unwrap();
    let again = c.plan_now().unwrap();
    assert!(again.is_empty(), "{again}\nafter:\n{r}");
    let t1 = lab.topo.sh(&lab.tasks[0].ns, "ip addr show lo");
    assert!(!t1.contains("192.0.2.2"), "t1's address left: {t1}");
    assert_eq!(arp_settings(&lab, 0), "0 0", "t1's sysctls restored");
    // No ingress any more: the mesh is torn down, pins and task addresses gone.
    c.set_desired(NodeState::new(vec![], NodeOptions::default()).unwrap());
    let _ = c.sync_full(vipmesh::plan::now_secs()).unwrap();
    let n1 = &lab.nodes[0];
    let links = lab.topo.sh(n1, "ip link show up0");
    assert!(!links.contains("xdp"), "{links}");
    assert!(!lab.pin_root.join("n1").exists(), "pins left");
    assert_eq!(arp_settings(&lab, 0), "0 0", "t1's sysctls restored");
    assert!(!std::path::Path::new("/run/vipmesh/xdp/n1/mesh.json").exists());

    // n2's controller gone without teardown, and the next process's state has no xdp: what
    // the first one recorded under n2's name says what to remove.
    drop(ctls);
    assert!(std::path::Path::new("/run/vipmesh/xdp/n2/mesh.json").exists());
    assert_ne!(arp_settings(&lab, 1), "0 0");
    assert!(vipmesh::xdp_mesh::XdpMesh::teardown_left("n2").unwrap());
    let links = lab.topo.sh(&lab.nodes[1], "ip link show up0");
    assert!(!links.contains("xdp"), "{links}");
    assert!(!lab.pin_root.join("n2").exists(), "pins left");
    assert_eq!(arp_settings(&lab, 1), "0 0", "t2's sysctls restored");
    assert!(!std::path::Path::new("/run/vipmesh/xdp/n2/mesh.json").exists());
    assert!(
        !vipmesh::xdp_mesh::XdpMesh::teardown_left("n2").unwrap(),
        "nothing left the second time"
    );
}
