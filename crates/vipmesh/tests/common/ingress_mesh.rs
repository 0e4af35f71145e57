//! The ingress mesh on the lab of `vipmesh_testkit::ingress`: one controller per node, the
//! cluster view built from the lab. Shared by the guest tests and `cargo xtask demo ingress`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;

use vipmesh::dataplane::RealKernel;
use vipmesh::ingress::*;
use vipmesh::model::*;
use vipmesh::plan::now_secs;
use vipmesh::{Controller, ControllerConfig, Report};
use vipmesh_testkit::ingress::{
    INGRESS_GATEWAY, INGRESS_GATEWAY_V6, INGRESS_SUBNET, INGRESS_SUBNET_V6, IngressLab,
};

/// A published port.
pub fn port(protocol: Protocol, published: u16, target: u16) -> PublishedPort {
    PublishedPort {
        protocol,
        published: Port::new(u32::from(published)).unwrap(),
        target: Port::new(u32::from(target)).unwrap(),
        mode: PublishMode::Ingress,
    }
}

/// The mesh: the lab, one controller per node, the published services.
pub struct Mesh {
    /// The lab.
    pub lab: IngressLab,
    /// One controller per node.
    pub ctls: Vec<Controller<RealKernel>>,
    /// The services: name, ports, task names.
    pub services: Vec<(String, Vec<PublishedPort>, Vec<String>)>,
    /// A dual-stack ingress (the lab's IPv6 addresses) when set.
    pub dual_stack: bool,
    /// Host-mode DNAT targets: task name -> an address of the task its node reaches.
    pub host_addrs: std::collections::BTreeMap<String, IpAddr>,
}

impl Mesh {
    /// A lab of `n` nodes with tasks on `tasks_on`, servers started, nothing applied yet.
    pub fn new(n: usize, tasks_on: &[usize]) -> Mesh {
        let mut lab = IngressLab::new(n, tasks_on);
        lab.start_servers();
        let ctls = (0..n)
            .map(|_| Controller::real(ControllerConfig::default()))
            .collect();
        Mesh {
            lab,
            ctls,
            services: Vec::new(),
            dual_stack: false,
            host_addrs: Default::default(),
        }
    }

    /// Node `i`'s ingress.
    pub fn spec(&self, i: usize) -> Ingress {
        let lab = &self.lab;
        let me = &lab.nodes[i];
        Ingress {
            id: NetworkId::new("ingress").unwrap(),
            node: me.name.clone(),
            nodes: lab
                .nodes
                .iter()
                .map(|n| ClusterNode {
                    name: n.name.clone(),
                    underlay: n.underlay,
                    sandbox_addr: n.sandbox_addr,
                    sandbox_addr_v6: self.dual_stack.then_some(n.sandbox_addr_v6),
                })
                .collect(),
            subnet: INGRESS_SUBNET.parse().unwrap(),
            gateway: INGRESS_GATEWAY.parse().unwrap(),
            subnet_v6: self.dual_stack.then(|| INGRESS_SUBNET_V6.parse().unwrap()),
            gateway_v6: self.dual_stack.then(|| INGRESS_GATEWAY_V6.parse().unwrap()),
            vni: 4096,
            mtu: 1450,
            fwmarks: FwmarkRange::new(0x20000, 0x2ffff).unwrap(),
            host_netns: me.netns.clone(),
            sandbox_netns: me.sandbox_netns.clone(),
            overlay_netns: me.overlay_netns.clone(),
            gw_bridge: GwBridge::default(),
            timeouts: IpvsTimeouts::default(),
            services: self
                .services
                .iter()
                .map(|(name, ports, tasks)| IngressService {
                    name: ServiceName::new(name).unwrap(),
                    ports: ports.clone(),
                    scheduler: Scheduler::rr(),
                    tasks: tasks
                        .iter()
                        .map(|t| {
                            let t = lab.task(t);
                            IngressTask {
                                addr: t.addr,
                                node: lab.nodes[t.node].name.clone(),
                                netns: (t.node == i).then(|| t.netns.clone()),
                                interface: None,
                                host_addr: self.host_addrs.get(&t.name).copied(),
                                weight: Weight::default(),
                                addr_v6: self.dual_stack.then_some(t.addr_v6),
                                host_addr_v6: None,
                                host_veth: None,
                            }
                        })
                        .collect(),
                })
                .collect(),
            xdp: None,
        }
    }

    /// Node `i`'s whole state.
    pub fn state(&self, i: usize) -> NodeState {
        let opts = NodeOptions {
            // The lab's backend: `VIPMESH_FIREWALL=nftables` (tests and demos).
            firewall: std::env::var("VIPMESH_FIREWALL")
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| v.parse().unwrap())
                .unwrap_or_default(),
            ..NodeOptions::default()
        };
        NodeState::with_ingress(vec![], Some(self.spec(i)), opts).unwrap()
    }

    /// Applies every node's state (full syncs); panics on a failed step.
    pub fn apply(&mut self) -> Vec<Report> {
        let states: Vec<NodeState> = (0..self.ctls.len()).map(|i| self.state(i)).collect();
        self.ctls
            .iter_mut()
            .zip(states)
            .map(|(c, s)| {
                c.set_desired(s);
                c.sync_full(now_secs())
                    .unwrap_or_else(|e| panic!("apply failed: {e}"))
            })
            .collect()
    }

    /// Node `i`'s host namespace.
    pub fn node(&self, i: usize) -> &str {
        &self.lab.nodes[i].netns
    }

    /// Node `i`'s underlay address.
    pub fn node_addr(&self, i: usize) -> IpAddr {
        self.lab.nodes[i].underlay
    }

    /// What every node holds, for failure messages.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for n in &self.lab.nodes {
            for (ns, cmd) in [
                (
                    &n.netns,
                    "iptables-save; nft list ruleset; ip -br addr; ip route; sysctl net.ipv4.ip_forward",
                ),
                (
                    &n.sandbox_netns,
                    "iptables-save; nft list ruleset; ipvsadm -Ln; ip -br addr; ip route; sysctl net.ipv4.ip_forward net.ipv4.vs.conntrack",
                ),
                (
                    &n.overlay_netns,
                    "ip -br link; bridge fdb show dev vxlan0; ip neigh show dev vxlan0",
                ),
            ] {
                let o = self.lab.topo.try_sh(ns, cmd);
                out.push_str(&format!(
                    "--- [{ns}] {cmd}\n{}{}\n",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
        }
        out
    }

    /// Every node's plan is empty.
    pub fn assert_converged(&mut self) {
        for c in &mut self.ctls {
            let p = c.plan_now().unwrap();
            assert!(p.is_empty(), "{p}");
        }
    }
}

/// `curl -s` from `ns` (bounded), the body trimmed, or an error text.
pub fn curl(lab: &IngressLab, ns: &str, url: &str) -> Result<String, String> {
    let out = lab.topo.try_sh(ns, &format!("curl -gs --max-time 5 {url}"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "curl {url} from {ns}: exit {:?} {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
