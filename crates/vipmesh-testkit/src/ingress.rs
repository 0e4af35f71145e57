//! The ingress-mesh lab: a LAN (a bridge in its own switch namespace, 192.168.50.0/24), an
//! external client (.100), N "node" namespaces on it (.11, .12, …: each node's host
//! namespace), and task namespaces on those nodes, empty until the mesh gives them their
//! ingress leg. Tasks serve HTTP on port 80 (busybox `httpd`, answering with their name, plus
//! `big.bin`, 4 MiB), the greeter on TCP 9000 (name, then echo) and a UDP responder on port 53
//! (answers every datagram with the name).
//!
//! The lab knows nothing of `vipmesh`; it hands out plain values (namespace names and
//! addresses) from which the caller builds its `vipmesh::ingress::Ingress`. The namespaces the
//! mesh creates itself (sandbox, overlay) are pre-named here and registered with the topology,
//! so they are deleted with it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use vipmesh_netns::Netns;

use crate::Topology;
use crate::vip::{load_modules, spawn_greeter};

/// One node of the lab.
#[derive(Debug, Clone)]
pub struct LabNode {
    /// Its logical name (`node1`, …).
    pub name: String,
    /// Its host namespace.
    pub netns: String,
    /// Its LAN (underlay) address.
    pub underlay: IpAddr,
    /// The name its ingress sandbox namespace must get.
    pub sandbox_netns: String,
    /// The name its overlay namespace must get.
    pub overlay_netns: String,
    /// Its sandbox's ingress address.
    pub sandbox_addr: IpAddr,
    /// Its LAN IPv6 address (`fd00:50::11`, …; the LAN is dual-stack).
    pub lan_v6: IpAddr,
    /// Its sandbox's ingress IPv6 address, for a dual-stack ingress (`fd00:255::2`, …).
    pub sandbox_addr_v6: IpAddr,
}

/// One task of the lab.
#[derive(Debug, Clone)]
pub struct LabTask {
    /// Its name (what it answers with), `vote.1`, ….
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// The index of its node in [`IngressLab::nodes`].
    pub node: usize,
    /// Its ingress address.
    pub addr: IpAddr,
    /// Its ingress IPv6 address, for a dual-stack ingress (`fd00:255::1:<k>`).
    pub addr_v6: IpAddr,
}

/// The lab.
#[derive(Debug)]
pub struct IngressLab {
    /// Namespaces, processes and temp dirs (deleted on drop).
    pub topo: Topology,
    /// The external client's namespace.
    pub client: String,
    /// The client's address.
    pub client_addr: IpAddr,
    /// The client's IPv6 address.
    pub client_addr_v6: IpAddr,
    /// The nodes.
    pub nodes: Vec<LabNode>,
    /// The tasks.
    pub tasks: Vec<LabTask>,
    switch: String,
    www: Vec<PathBuf>,
    next_task: u32,
}

/// The ingress subnet of the lab.
pub const INGRESS_SUBNET: &str = "10.255.0.0/16";
/// The overlay gateway.
pub const INGRESS_GATEWAY: &str = "10.255.0.1";
/// The ingress IPv6 subnet of the lab (for a dual-stack ingress).
pub const INGRESS_SUBNET_V6: &str = "fd00:255::/64";
/// The overlay's IPv6 gateway.
pub const INGRESS_GATEWAY_V6: &str = "fd00:255::1";
/// Bytes of `big.bin`.
pub const BIG: usize = 4 * 1024 * 1024;

impl IngressLab {
    /// `n` nodes and one task on each node index listed in `tasks_on`.
    pub fn new(n: usize, tasks_on: &[usize]) -> IngressLab {
        load_modules();
        let _ = std::process::Command::new("modprobe")
            .args([
                "-qa",
                "vxlan",
                "bridge",
                "veth",
                "xt_addrtype",
                "xt_conntrack",
                "nf_nat",
            ])
            .status();
        let mut topo = Topology::new("im");
        let switch = topo.bridge_ns("lan");
        let client = topo.ns("client");
        topo.attach(&switch, &client, "eth0", "192.168.50.100/24");
        let add6 = |topo: &Topology, ns: &str, a: &str| {
            topo.sh(ns, &format!("ip -6 addr add {a}/64 dev eth0 nodad"));
        };
        add6(&topo, &client, "fd00:50::100");
        let mut nodes = Vec::new();
        for i in 0..n {
            let netns = topo.ns(&format!("node{}", i + 1));
            let underlay = IpAddr::V4(Ipv4Addr::new(192, 168, 50, 11 + i as u8));
            topo.attach(&switch, &netns, "eth0", &format!("{underlay}/24"));
            let lan_v6: IpAddr = format!("fd00:50::{}", 11 + i).parse().expect("v6");
            add6(&topo, &netns, &lan_v6.to_string());
            nodes.push(LabNode {
                name: format!("node{}", i + 1),
                sandbox_netns: topo.ns(&format!("sb{}", i + 1)),
                overlay_netns: topo.ns(&format!("ov{}", i + 1)),
                netns,
                underlay,
                sandbox_addr: IpAddr::V4(Ipv4Addr::new(10, 255, 0, 2 + i as u8)),
                lan_v6,
                sandbox_addr_v6: format!("fd00:255::{:x}", 2 + i).parse().expect("v6"),
            });
        }
        let mut lab = IngressLab {
            topo,
            client,
            client_addr: "192.168.50.100".parse().expect("address"),
            client_addr_v6: "fd00:50::100".parse().expect("address"),
            nodes,
            tasks: Vec::new(),
            switch,
            www: Vec::new(),
            next_task: 0,
        };
        for node in tasks_on {
            lab.add_task(*node);
        }
        lab
    }

    /// Adds a task on node index `node` (its namespace; servers start with
    /// [`IngressLab::start_servers`] or at once when they already run).
    pub fn add_task(&mut self, node: usize) -> LabTask {
        self.next_task += 1;
        let k = self.next_task;
        let name = format!("vote.{k}");
        let netns = self.topo.ns(&format!("t{k}"));
        let dir = self.topo.temp_dir(&format!("www{k}"));
        std::fs::write(dir.join("index.html"), format!("{name}\n")).expect("index.html");
        let big: Vec<u8> = (0..BIG).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.join("big.bin"), big).expect("big.bin");
        let t = LabTask {
            name,
            netns,
            node,
            addr: IpAddr::V4(Ipv4Addr::new(10, 255, 1, k as u8)),
            addr_v6: format!("fd00:255::1:{k:x}").parse().expect("v6"),
        };
        self.www.push(dir);
        self.tasks.push(t.clone());
        t
    }

    /// Starts the servers of every task that has none yet: httpd on 80, the greeter on 9000,
    /// the UDP responder on 53. They bind the wildcard address (IPv4 and IPv6), so they may
    /// start before the task has its ingress leg.
    pub fn start_servers(&mut self) {
        for (t, dir) in self.tasks.clone().iter().zip(self.www.clone()) {
            let marker = dir.join(".started");
            if marker.exists() {
                continue;
            }
            std::fs::write(&marker, "").expect("marker");
            self.topo.spawn(
                &t.netns,
                &format!("busybox httpd -f -p 80 -h {}", dir.display()),
            );
            spawn_greeter(
                &t.netns,
                &t.name,
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 9000),
            );
            spawn_udp_responder(&t.netns, &t.name, 53);
        }
    }

    /// The namespace of the task named `name`.
    pub fn task(&self, name: &str) -> &LabTask {
        self.tasks
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no task {name}"))
    }

    /// Runs `sh -c cmd` in `ns`; returns stdout (panics on failure).
    pub fn sh(&self, ns: &str, cmd: &str) -> String {
        self.topo.sh(ns, cmd)
    }

    /// The switch namespace of the LAN.
    pub fn switch(&self) -> &str {
        &self.switch
    }
}

/// A UDP server in `ns` on `port` (the IPv6 wildcard address, dual-stack: it answers IPv4
/// too): answers every datagram with `name`.
pub fn spawn_udp_responder(ns: &str, name: &str, port: u16) {
    let netns = Netns::named(ns).expect("udp netns");
    let sock = netns
        .run(move || UdpSocket::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)))
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("bind udp {port} in {ns}: {e}"));
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((_, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(name.as_bytes(), from);
        }
    });
}

/// One UDP request from `ns` to `addr:port`; the answer as text.
///
/// # Errors
/// I/O errors, a 3 s timeout.
pub fn udp_ask(ns: &str, addr: IpAddr, port: u16) -> std::io::Result<String> {
    let netns = Netns::named(ns).map_err(std::io::Error::other)?;
    netns
        .run(move || -> std::io::Result<String> {
            let any = match addr {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
            let s = UdpSocket::bind(SocketAddr::new(any, 0))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.send_to(b"who?", SocketAddr::new(addr, port))?;
            let mut buf = [0u8; 1500];
            let (n, _) = s.recv_from(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .map_err(std::io::Error::other)?
}
