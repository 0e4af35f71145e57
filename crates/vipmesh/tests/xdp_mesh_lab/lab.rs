//! The XDP mesh lab shared by `tests/host_xdp_mesh.rs` and `examples/ingress_xdp_demo.rs`: a
//! LAN bridge, an external client, two node namespaces and their tasks (python servers that
//! say who they are and who called), all deleted on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use vipmesh::ingress::Ingress;
use vipmesh::xdp_mesh::{XdpDesired, XdpMesh, XdpMeshConfig};
use vipmesh_testkit::{Requirement, Topology, require};

pub const CLIENT: &str = "192.0.2.100";
pub const CLIENT6: &str = "fd00:2::100";

pub fn lab_file(name: &str) -> String {
    format!("{}/tests/xdp_mesh_lab/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub struct LabTask {
    pub ns: String,
    pub node: usize,
    pub addr: String,
    pub addr6: String,
    pub host_veth: String,
}

pub struct Lab {
    pub topo: Topology,
    pub cli: String,
    pub nodes: [String; 2],
    pub tasks: Vec<LabTask>,
    pub pin_root: PathBuf,
    /// The nodes' sysctl records (`XdpMeshConfig::state_dir`).
    pub state_dir: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Pins outlive namespaces: remove what a failed test left, and the meshes' records
        // (XdpMesh::apply writes them under the nodes' names).
        let _ = std::process::Command::new("rm")
            .arg("-rf")
            .arg(&self.pin_root)
            .arg(&self.state_dir)
            .status();
        for n in ["n1", "n2"] {
            let dir = std::path::Path::new("/run/vipmesh/xdp").join(n);
            let _ = std::fs::remove_file(dir.join("mesh.json"));
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The lab: task `t<i+1>` runs on node `layout[i]` (0 or 1) at `10.255.<node+1>.<10+i>`.
pub fn lab(layout: &[usize]) -> Lab {
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
    topo.addr(&cli, "eth0", &format!("{CLIENT6}/64"));
    // XDP cannot complete partial checksums of a sender on this host; offloads off so that
    // the MSS clamp is what makes big transfers pass.
    topo.sh(&cli, "ethtool -K eth0 tx off tso off gso off >/dev/null");
    let mut nodes = Vec::new();
    for i in 1..=2 {
        let n = topo.ns(&format!("n{i}"));
        let port = topo.attach(&lan, &n, "up0", &format!("192.0.2.{i}/24"));
        topo.addr(&n, "up0", &format!("fd00:2::{i}/64"));
        // NAPI on the LAN side of the uplink veth: frames XDP-redirected out of up0 land there.
        topo.sh(&lan, &format!("ethtool -K {port} gro on >/dev/null"));
        nodes.push(n);
    }
    let mut tasks = Vec::new();
    for (i, &node) in layout.iter().enumerate() {
        let name = format!("t{}", i + 1);
        let n = &nodes[node];
        let t = topo.ns(&name);
        let host_veth = format!("h-{name}");
        let addr = format!("10.255.{}.{}", node + 1, 10 + i);
        let gw = format!("10.255.{}.1", node + 1);
        topo.veth((n, &host_veth), (&t, "eth0"));
        topo.addr(n, &host_veth, &format!("{gw}/32"));
        topo.sh(n, &format!("ip route add {addr}/32 dev {host_veth}"));
        topo.addr(&t, "eth0", &format!("{addr}/32"));
        topo.sh(
            &t,
            &format!("ip route add {gw} dev eth0 && ip route add default via {gw}"),
        );
        let addr6 = format!("fd00:255:{}::{}", node + 1, 10 + i);
        let gw6 = format!("fd00:255:{}::1", node + 1);
        topo.addr(n, &host_veth, &format!("{gw6}/128"));
        topo.sh(n, &format!("ip -6 route add {addr6}/128 dev {host_veth}"));
        topo.addr(&t, "eth0", &format!("{addr6}/128"));
        topo.sh(
            &t,
            &format!("ip -6 route add {gw6} dev eth0 && ip -6 route add default via {gw6}"),
        );
        topo.sh(&t, "ethtool -K eth0 tso off gso off >/dev/null");
        topo.spawn(&t, &format!("python3 {} {name} 80 53", lab_file("task.py")));
        tasks.push(LabTask {
            ns: t,
            node,
            addr,
            addr6,
            host_veth,
        });
    }
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/vipmesh-test-{}", std::process::id()));
    let state_dir = std::env::temp_dir().join(format!("vipmesh-xdp-test-{}", std::process::id()));
    // The servers listen before the first request.
    for t in &tasks {
        vipmesh_testkit::eventually(
            std::time::Duration::from_secs(10),
            "task server listening",
            || {
                if topo
                    .try_sh(&t.ns, "ss -ltn | grep -q ':80 '")
                    .status
                    .success()
                {
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
        nodes: [nodes[0].clone(), nodes[1].clone()],
        tasks,
        pin_root,
        state_dir,
    }
}

/// Node `node`'s ingress view with the tasks `active` (indexes into `lab.tasks`).
pub fn ingress(lab: &Lab, node: usize, active: &[usize]) -> Ingress {
    let tasks: Vec<String> = active
        .iter()
        .map(|&i| {
            let t = &lab.tasks[i];
            format!(
                r#"{{"addr": "{}", "addr_v6": "{}", "node": "n{}", "netns": "{}"}}"#,
                t.addr,
                t.addr6,
                t.node + 1,
                t.ns
            )
        })
        .collect();
    let json = format!(
        r#"{{
        "node": "n{}",
        "nodes": [
            {{"name": "n1", "underlay": "192.0.2.1", "sandbox_addr": "10.255.0.2",
              "sandbox_addr_v6": "fd00:255::2"}},
            {{"name": "n2", "underlay": "192.0.2.2", "sandbox_addr": "10.255.0.3",
              "sandbox_addr_v6": "fd00:255::3"}}
        ],
        "subnet": "10.255.0.0/16",
        "gateway": "10.255.0.1",
        "subnet_v6": "fd00:255::/32",
        "gateway_v6": "fd00:255::1",
        "vni": 4096,
        "host_netns": "{}",
        "services": [{{
            "name": "vote",
            "ports": [
                {{"protocol": "tcp", "published": 8080, "target": 80}},
                {{"protocol": "udp", "published": 5353, "target": 53}}
            ],
            "tasks": [{}]
        }}]
    }}"#,
        node + 1,
        lab.nodes[node],
        tasks.join(", ")
    );
    serde_json::from_str(&json).unwrap()
}

/// Node `node`'s ingress with its `xdp` options (the state file's `ingress.xdp`): every
/// published port served by XDP on `up0`.
pub fn ingress_xdp(lab: &Lab, node: usize, active: &[usize]) -> Ingress {
    let host_veths: serde_json::Map<String, serde_json::Value> = lab
        .tasks
        .iter()
        .filter(|t| t.node == node)
        .map(|t| (t.ns.clone(), t.host_veth.clone().into()))
        .collect();
    let x = serde_json::json!({
        "uplink": "up0",
        "host_veths": host_veths,
        "pin_root": lab.pin_root.join(format!("n{}", node + 1)),
        "state_dir": lab.state_dir.join(format!("n{}", node + 1)),
        "underlay_v6": {"n1": "fd00:2::1", "n2": "fd00:2::2"},
    });
    let mut ing = ingress(lab, node, active);
    ing.xdp = Some(serde_json::from_value(x).unwrap());
    ing
}

pub fn desired_with(lab: &Lab, node: usize, active: &[usize]) -> XdpDesired {
    let ing = ingress_xdp(lab, node, active);
    let cfg = XdpMeshConfig::from(ing.xdp.as_ref().unwrap());
    XdpMesh::derive(&ing, &cfg).unwrap()
}

pub fn desired(lab: &Lab, node: usize) -> XdpDesired {
    let all: Vec<usize> = (0..lab.tasks.len()).collect();
    desired_with(lab, node, &all)
}

/// Converges a node and checks that a second pass plans nothing.
pub fn up(lab: &Lab, node: usize) -> (XdpMesh, XdpDesired) {
    let d = desired(lab, node);
    let mut m = XdpMesh::new(&d).unwrap();
    let o = m.observe(&d).unwrap();
    let p = XdpMesh::plan(&d, &o).unwrap();
    m.apply(&d, &p).unwrap();
    let again = XdpMesh::plan(&d, &m.observe(&d).unwrap()).unwrap();
    assert!(again.is_empty(), "second plan of n{}:\n{again}", node + 1);
    (m, d)
}

pub fn client(lab: &Lab, args: &str) -> String {
    lab.topo
        .sh(
            &lab.cli,
            &format!("python3 {} {args}", lab_file("client.py")),
        )
        .trim()
        .to_owned()
}

/// "t2 192.0.2.100:40001" -> ("t2", "192.0.2.100").
pub fn who(reply: &str) -> (String, String) {
    let mut it = reply.split_whitespace();
    let task = it.next().unwrap_or_default().to_owned();
    let peer = it.next().unwrap_or_default();
    let client = match peer.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => peer.split(':').next().unwrap_or_default(),
    }
    .to_owned();
    (task, client)
}

/// Starts `n` long-lived connections (a line every 50 ms for `secs`), alternating between
/// the nodes; returns the files their summaries go to.
pub fn hold(lab: &mut Lab, name: &str, n: usize, secs: u32) -> Vec<PathBuf> {
    let dir = lab.topo.temp_dir(name);
    let cli = lab.cli.clone();
    (0..n)
        .map(|i| {
            let addr = ["192.0.2.1", "192.0.2.2"][i % 2];
            let out = dir.join(format!("hold{i}"));
            lab.topo.spawn(
                &cli,
                &format!(
                    "sh -c 'python3 {} hold {addr} 8080 {secs} > {}'",
                    lab_file("client.py"),
                    out.display()
                ),
            );
            out
        })
        .collect()
}

/// Waits until every long-lived connection has its first reply.
pub fn connected(outs: &[PathBuf]) {
    for out in outs {
        vipmesh_testkit::eventually(
            std::time::Duration::from_secs(60),
            "long-lived client connected",
            || {
                let t = std::fs::read_to_string(out).unwrap_or_default();
                if t.starts_with("connected") {
                    Ok(())
                } else {
                    Err(t)
                }
            },
        );
    }
}

/// The summary line of a long-lived connection, once it finished.
pub fn held(out: &PathBuf) -> String {
    vipmesh_testkit::eventually(
        std::time::Duration::from_secs(60),
        "long-lived client finished",
        || {
            let t = std::fs::read_to_string(out).unwrap_or_default();
            match t.lines().find(|l| l.contains("err=")) {
                Some(l) => Ok(l.to_owned()),
                None => Err(t),
            }
        },
    )
}
