//! The XDP ingress mesh on the host kernel, in fresh namespaces: a LAN bridge, an external
//! client, two nodes, one task on each. Published port 8080 (TCP) and 5353 (UDP) of service
//! `vote` (targets 80 and 53) are served by `vipmesh::xdp_mesh` on both nodes.
//!
//! Run: `sudo -E cargo test -p vipmesh --test host_xdp_mesh -- --ignored --test-threads 1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use vipmesh::ingress::Ingress;
use vipmesh::xdp_mesh::{XdpDesired, XdpMesh, XdpMeshConfig, XdpStep};
use vipmesh_testkit::{Requirement, Topology, require};

const CLIENT: &str = "192.0.2.100";

fn lab_file(name: &str) -> String {
    format!("{}/tests/xdp_mesh_lab/{name}", env!("CARGO_MANIFEST_DIR"))
}

struct Lab {
    topo: Topology,
    cli: String,
    lan: String,
    nodes: [String; 2],
    tasks: [String; 2],
    pin_root: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Pins outlive namespaces: remove what a failed test left.
        let _ = std::process::Command::new("rm")
            .arg("-rf")
            .arg(&self.pin_root)
            .status();
    }
}

fn lab() -> Lab {
    require(&[
        Requirement::Netns,
        Requirement::Tool("python3"),
        Requirement::Tool("ethtool"),
        Requirement::Tool("bpftool"),
    ]);
    let mut topo = Topology::new("vmx");
    let lan = topo.bridge_ns("lan");
    let cli = topo.ns("cli");
    topo.attach(&lan, &cli, "eth0", &format!("{CLIENT}/24"));
    // XDP cannot complete partial checksums of a sender on this host; offloads off so that
    // the MSS clamp is what makes big transfers pass.
    topo.sh(&cli, "ethtool -K eth0 tx off tso off gso off >/dev/null");
    let mut nodes = Vec::new();
    let mut tasks = Vec::new();
    for i in 1..=2 {
        let n = topo.ns(&format!("n{i}"));
        let port = topo.attach(&lan, &n, "up0", &format!("192.0.2.{i}/24"));
        // NAPI on the LAN side of the uplink veth: frames XDP-redirected out of up0 land there.
        topo.sh(&lan, &format!("ethtool -K {port} gro on >/dev/null"));
        let t = topo.ns(&format!("t{i}"));
        topo.veth((&n, "h-t"), (&t, "eth0"));
        topo.addr(&n, "h-t", &format!("10.255.{i}.1/24"));
        topo.addr(&t, "eth0", &format!("10.255.{i}.2/24"));
        topo.sh(&t, &format!("ip route add default via 10.255.{i}.1"));
        topo.sh(&t, "ethtool -K eth0 tso off gso off >/dev/null");
        topo.spawn(&t, &format!("python3 {} t{i} 80 53", lab_file("task.py")));
        nodes.push(n);
        tasks.push(t);
    }
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/vipmesh-test-{}", std::process::id()));
    // The servers listen before the first request.
    for t in &tasks {
        vipmesh_testkit::eventually(
            std::time::Duration::from_secs(10),
            "task server listening",
            || {
                if topo.try_sh(t, "ss -ltn | grep -q ':80 '").status.success() {
                    Ok(())
                } else {
                    Err("not yet".to_owned())
                }
            },
        );
    }
    Lab {
        topo,
        cli,
        lan,
        nodes: [nodes[0].clone(), nodes[1].clone()],
        tasks: [tasks[0].clone(), tasks[1].clone()],
        pin_root,
    }
}

fn ingress(lab: &Lab, node: usize) -> Ingress {
    let json = format!(
        r#"{{
        "node": "n{}",
        "nodes": [
            {{"name": "n1", "underlay": "192.0.2.1", "sandbox_addr": "10.255.0.2"}},
            {{"name": "n2", "underlay": "192.0.2.2", "sandbox_addr": "10.255.0.3"}}
        ],
        "subnet": "10.255.0.0/16",
        "gateway": "10.255.0.1",
        "vni": 4096,
        "host_netns": "{}",
        "services": [{{
            "name": "vote",
            "ports": [
                {{"protocol": "tcp", "published": 8080, "target": 80}},
                {{"protocol": "udp", "published": 5353, "target": 53}}
            ],
            "tasks": [
                {{"addr": "10.255.1.2", "node": "n1", "netns": "{}"}},
                {{"addr": "10.255.2.2", "node": "n2", "netns": "{}"}}
            ]
        }}]
    }}"#,
        node + 1,
        lab.nodes[node],
        lab.tasks[0],
        lab.tasks[1]
    );
    serde_json::from_str(&json).unwrap()
}

fn desired(lab: &Lab, node: usize) -> XdpDesired {
    let mut cfg = XdpMeshConfig::new("up0");
    cfg.host_veths.insert(lab.tasks[node].clone(), "h-t".into());
    cfg.pin_root = Some(lab.pin_root.join(format!("n{}", node + 1)));
    XdpMesh::derive(&ingress(lab, node), &cfg).unwrap()
}

/// Converges a node and checks that a second pass plans nothing.
fn up(lab: &Lab, node: usize) -> (XdpMesh, XdpDesired) {
    let d = desired(lab, node);
    let mut m = XdpMesh::new(&d).unwrap();
    let o = m.observe(&d).unwrap();
    let p = XdpMesh::plan(&d, &o).unwrap();
    m.apply(&d, &p).unwrap();
    let again = XdpMesh::plan(&d, &m.observe(&d).unwrap()).unwrap();
    assert!(again.is_empty(), "second plan of n{}:\n{again}", node + 1);
    (m, d)
}

fn client(lab: &Lab, args: &str) -> String {
    lab.topo
        .sh(
            &lab.cli,
            &format!("python3 {} {args}", lab_file("client.py")),
        )
        .trim()
        .to_owned()
}

/// "t2 192.0.2.100:40001" -> ("t2", "192.0.2.100").
fn who(reply: &str) -> (String, String) {
    let mut it = reply.split_whitespace();
    let task = it.next().unwrap_or_default().to_owned();
    let client = it
        .next()
        .and_then(|c| c.split(':').next())
        .unwrap_or_default()
        .to_owned();
    (task, client)
}

#[test]
#[ignore = "privileged: root, netns, XDP and tcx on the host kernel"]
fn mesh_keeps_the_client_address_across_nodes_tcp_udp_and_big_transfers() {
    let lab = lab();
    let (m1, d1) = up(&lab, 0);
    let (m2, d2) = up(&lab, 1);

    for (node, addr) in [(1, "192.0.2.1"), (2, "192.0.2.2")] {
        // TCP: both tasks answer through each node, and both see the client's address.
        let mut seen = BTreeSet::new();
        for _ in 0..24 {
            let (task, c) = who(&client(&lab, &format!("who {addr} 8080")));
            assert_eq!(c, CLIENT, "TCP via n{node}: task {task} saw {c}");
            seen.insert(task);
        }
        assert_eq!(
            seen,
            BTreeSet::from(["t1".into(), "t2".into()]),
            "TCP via n{node}"
        );
        // UDP likewise.
        let mut seen = BTreeSet::new();
        for _ in 0..24 {
            let (task, c) = who(&client(&lab, &format!("uwho {addr} 5353")));
            assert_eq!(c, CLIENT, "UDP via n{node}: task {task} saw {c}");
            seen.insert(task);
        }
        assert_eq!(
            seen,
            BTreeSet::from(["t1".into(), "t2".into()]),
            "UDP via n{node}"
        );
    }

    // The same flow (fixed source port) lands on the same task via either node.
    for sport in 41001..41009 {
        let a = who(&client(&lab, &format!("who 192.0.2.1 8080 {sport}"))).0;
        let b = who(&client(&lab, &format!("who 192.0.2.2 8080 {sport}"))).0;
        assert_eq!(a, b, "source port {sport}: n1 chose {a}, n2 chose {b}");
        let a = who(&client(&lab, &format!("uwho 192.0.2.1 5353 {sport}"))).0;
        let b = who(&client(&lab, &format!("uwho 192.0.2.2 5353 {sport}"))).0;
        assert_eq!(a, b, "UDP source port {sport}: n1 chose {a}, n2 chose {b}");
    }

    // 4 MiB both ways through the remote path (n1 -> t2, IPIP), offloads off.
    for cmd in ["get", "put"] {
        let r = client(&lab, &format!("{cmd} 192.0.2.1 8080 t2"));
        let f: Vec<&str> = r.split_whitespace().collect();
        assert_eq!(f.len(), 3, "{cmd} via n1 never reached t2: {r:?}");
        assert_eq!(f[1], f[2], "{cmd} via n1 to t2: md5 differs");
    }
    let _ = lab.lan.len();
    drop((m1, m2));
    let _ = (d1, d2);
}

#[test]
#[ignore = "privileged: root, netns, XDP and tcx on the host kernel"]
fn restart_under_traffic_keeps_flows_and_teardown_leaves_foreign_programs() {
    let mut lab = lab();
    let (m1, d1) = up(&lab, 0);
    let (_m2, _d2) = up(&lab, 1);
    // Long-lived connections through n1 (and n2), a line every 50 ms for 8 s.
    let dir = lab.topo.temp_dir("hold");
    let cli = lab.cli.clone();
    let mut outs = Vec::new();
    for (i, addr) in ["192.0.2.1", "192.0.2.1", "192.0.2.2", "192.0.2.1"]
        .iter()
        .enumerate()
    {
        let out = dir.join(format!("hold{i}"));
        lab.topo.spawn(
            &cli,
            &format!(
                "sh -c 'python3 {} hold {addr} 8080 8 > {}'",
                lab_file("client.py"),
                out.display()
            ),
        );
        outs.push(out);
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
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
    assert_eq!(specs.len(), 2, "{specs:?}");
    assert!(specs.iter().all(|s| s.backends.len() == 2), "{specs:?}");
    // Every long-lived connection kept its task and got every reply.
    for out in &outs {
        let text = vipmesh_testkit::eventually(
            std::time::Duration::from_secs(30),
            "long-lived client finished",
            || {
                let t = std::fs::read_to_string(out).unwrap_or_default();
                if t.contains("err=") { Ok(t) } else { Err(t) }
            },
        );
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
    let t1 = lab.topo.sh(&lab.tasks[0], "ip addr show lo");
    assert!(!t1.contains("192.0.2.2"), "{t1}");
    assert!(
        !d1.pin_root.exists(),
        "pins left in {}",
        d1.pin_root.display()
    );
    drop(foreign);
}
