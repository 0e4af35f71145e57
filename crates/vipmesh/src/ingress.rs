//! The ingress routing mesh: a published port works on every node and is served by the
//! service's tasks on any node (Docker Swarm's routing mesh, in our own `VIPMESH-` chains).
//!
//! What one node programs (the reference is `shared/notes/ingress-mesh.md`):
//! - **host namespace**: nat `VIPMESH-<id>-DNAT`, jumped from `PREROUTING` and `OUTPUT` for
//!   local destinations (`-m addrtype --dst-type LOCAL`), DNATs each ingress-published port to
//!   the ingress sandbox's gateway-bridge address; filter `VIPMESH-<id>-FWD` (from `FORWARD`)
//!   accepts them (needed when `FORWARD`'s policy is `DROP`, harmless otherwise); nat
//!   `VIPMESH-<id>-MASQ` masquerades locally originated traffic to the gateway bridge, with
//!   `route_localnet` on it, so `curl 127.0.0.1:PORT` works; `ip_forward=1`. Host-mode ports
//!   DNAT straight to the local task (its `host_addr`), no mesh.
//! - **ingress sandbox**: a network of [`Layout::Ingress`] derived from this spec
//!   ([`Ingress::sandbox_network`]): mangle `PREROUTING` marks each published port, an IPVS
//!   fwmark service holds every task of the service on any node as a Masq real server, the
//!   `-m ipvs` SNAT to the sandbox's ingress address brings replies back; `ip_forward=1`,
//!   `vs/conntrack=1`; its default route via the gateway bridge.
//! - **each local task**: nat `VIPMESH-<id>-RDR` REDIRECTs published → target, filter
//!   `VIPMESH-<id>-TASK` (from `INPUT`) accepts the target ports on the task's ingress address
//!   and drops every other port there.
//! - **the overlay** (`vipmesh-overlay`): the overlay namespace, bridge, VXLAN device, the veths
//!   of the sandbox and the local tasks, static FDB + neighbour entries for every remote
//!   endpoint; and the gateway bridge with the sandbox's second leg.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use vipmesh_netfilter as nf;

use crate::error::Error;
use crate::model::{
    Backend, EndpointMode, Family, FwmarkRange, Layout, NetSubnet, Network, NetworkId,
    NetworkState, Port, Protocol, Scheduler, Service, ServiceName, ServicePort, Subnet, Weight,
};
use crate::rules::{add_rule as add, chain_name, jump, nf_err};

/// How a port is published.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// On every node, served by every task through the mesh (the default).
    #[default]
    Ingress,
    /// On the nodes that run a task, served by the local task only (no mesh).
    Host,
}

/// A published port of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedPort {
    /// The protocol.
    pub protocol: Protocol,
    /// The port on the nodes.
    pub published: Port,
    /// The port the task listens on.
    pub target: Port,
    /// Ingress (mesh) or host.
    #[serde(default)]
    pub mode: PublishMode,
}

/// The XDP attach mode asked for on the uplink (`ingress.xdp.attach`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum AttachRequest {
    /// Native (driver) mode, else generic mode; the fallback is reported.
    #[default]
    NativeOrGeneric,
    /// Native mode only: an interface without driver XDP is refused
    /// (`Error::XdpModeUnsupported`).
    Native,
    /// Generic (skb) mode only.
    Generic,
}

impl std::fmt::Display for AttachRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachRequest::NativeOrGeneric => "native-or-generic",
            AttachRequest::Native => "native",
            AttachRequest::Generic => "generic",
        })
    }
}

/// Which dataplane serves a published port on this node.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PortDataplane {
    /// The XDP mesh: NAT to the tasks on this node, IPIP encapsulation to the tasks on other
    /// nodes, the client's address kept.
    #[default]
    Xdp,
    /// The IPVS mesh (the sandbox, the overlay); the XDP mesh does not program it.
    Ipvs,
}

/// One published port's dataplane on this node (`ingress.xdp.ports[]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpPort {
    /// The protocol.
    pub protocol: Protocol,
    /// The published port.
    pub published: Port,
    /// Its dataplane.
    pub dataplane: PortDataplane,
}

fn default_underlay_mtu() -> u16 {
    1500
}
fn default_table_size() -> u32 {
    251
}

/// This node's XDP ingress dataplane (`ingress.xdp`): its published ports are served by XDP
/// on `uplink` and **every task sees the client's address** (moby#25526), across nodes by
/// IPIP; ports listed with `"dataplane": "ipvs"` (and host-mode ports) stay on the IPVS mesh.
/// A node whose ports are all served by XDP needs no IPVS, no sandbox and no overlay. What is
/// programmed, and how: [`crate::xdp_mesh`] (feature `xdp`).
///
/// # Examples
///
/// ```
/// let x: vipmesh::ingress::IngressXdp = serde_json::from_str(
///     r#"{"uplink": "eth0", "host_veths": {"task1": "veth-task1"},
///         "ports": [{"protocol": "udp", "published": 53, "dataplane": "ipvs"}]}"#,
/// ).unwrap();
/// assert_eq!(x.underlay_mtu, 1500);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressXdp {
    /// The node's uplink in its host namespace: `xdp_lb` is attached there, and encapsulated
    /// packets leave through it.
    pub uplink: String,
    /// The attach mode asked for.
    #[serde(default)]
    pub attach: AttachRequest,
    /// Per published port: its dataplane (absent: XDP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<XdpPort>,
    /// MTU of the underlay links between nodes (the MSS of SYNs is clamped to leave room for
    /// the 20 bytes of IPIP); below 1300 is refused.
    #[serde(default = "default_underlay_mtu")]
    pub underlay_mtu: u16,
    /// The bpffs directory of this node's pins (default `/sys/fs/bpf/vipmesh/<node>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_root: Option<std::path::PathBuf>,
    /// Where the sysctl values our writes replace are recorded (default
    /// `/run/vipmesh/xdp/<node>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<std::path::PathBuf>,
    /// For each local task (by namespace): the name of its veth's peer in the host
    /// namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub host_veths: BTreeMap<String, String>,
    /// The nodes' IPv6 underlay addresses, by node name (IPv6 published ports on those).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub underlay_v6: BTreeMap<String, std::net::Ipv6Addr>,
    /// Maglev table size (a prime).
    #[serde(default = "default_table_size")]
    pub table_size: u32,
    /// Capacity of the LRU flow table (default: the fast path's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_entries: Option<u32>,
}

impl IngressXdp {
    /// The options for `uplink` with every other field at its default (the defaults of the
    /// state file, and of `XdpMeshConfig::new`).
    pub fn new(uplink: impl Into<String>) -> IngressXdp {
        IngressXdp {
            uplink: uplink.into(),
            attach: AttachRequest::default(),
            ports: Vec::new(),
            underlay_mtu: default_underlay_mtu(),
            pin_root: None,
            state_dir: None,
            host_veths: BTreeMap::new(),
            underlay_v6: BTreeMap::new(),
            table_size: default_table_size(),
            flow_entries: None,
        }
    }

    /// The dataplane of one published port (listed, else XDP).
    pub fn dataplane(&self, protocol: Protocol, published: Port) -> PortDataplane {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.published == published)
            .map_or(PortDataplane::Xdp, |p| p.dataplane)
    }

    /// Whether XDP serves `p` on this node (an ingress-mode port whose dataplane is XDP).
    pub fn serves(&self, p: &PublishedPort) -> bool {
        p.mode == PublishMode::Ingress
            && self.dataplane(p.protocol, p.published) == PortDataplane::Xdp
    }
}

/// A node of the cluster, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNode {
    /// Its name.
    pub name: String,
    /// Its underlay address (the VXLAN endpoint).
    pub underlay: IpAddr,
    /// Its ingress sandbox's address on the ingress network (the SNAT source there).
    pub sandbox_addr: IpAddr,
    /// Its sandbox's IPv6 address, required when the ingress is dual-stack
    /// ([`Ingress::subnet_v6`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_addr_v6: Option<IpAddr>,
}

/// A task of a published service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressTask {
    /// Its address on the ingress network.
    pub addr: IpAddr,
    /// The node it runs on.
    pub node: String,
    /// Its namespace, for a task on this node.
    #[serde(default)]
    pub netns: Option<String>,
    /// Its interface on the ingress network (default `eth0`).
    #[serde(default)]
    pub interface: Option<String>,
    /// An address of the task the node namespace reaches directly (host-mode DNAT target).
    #[serde(default)]
    pub host_addr: Option<IpAddr>,
    /// Its weight (default 1).
    #[serde(default)]
    pub weight: Weight,
    /// Its IPv6 address on a dual-stack ingress (a task without one serves IPv4 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr_v6: Option<IpAddr>,
    /// The IPv6 host-mode DNAT target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_addr_v6: Option<IpAddr>,
    /// For a task on this node served by the XDP mesh: the peer of its interface in the
    /// node's host namespace (what the runtime named it). `ingress.xdp.host_veths` may give it
    /// instead, by namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_veth: Option<String>,
}

/// A service with published ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressService {
    /// Its name.
    pub name: ServiceName,
    /// Its published ports.
    pub ports: Vec<PublishedPort>,
    /// The IPVS scheduler (default rr).
    #[serde(default)]
    pub scheduler: Scheduler,
    /// Its tasks, on any node.
    #[serde(default)]
    pub tasks: Vec<IngressTask>,
}

/// IPVS connection timeouts of the ingress sandbox, in seconds.
///
/// The kernel's default for established TCP is 900 s: Swarm's mesh cuts every idle
/// connection after 15 minutes (moby#31208). vipmesh's default is 7200 s, the kernel's default
/// TCP keepalive time, so a client that keeps its connection alive is never cut; a connection
/// that goes away without FIN/RST holds its entry (a few hundred bytes) for 2 hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpvsTimeouts {
    /// Established TCP (default 7200).
    #[serde(default = "default_tcp")]
    pub tcp: u32,
    /// TCP after FIN (default 120, the kernel's).
    #[serde(default = "default_tcp_fin")]
    pub tcp_fin: u32,
    /// UDP (default 300, the kernel's).
    #[serde(default = "default_udp")]
    pub udp: u32,
}

fn default_tcp() -> u32 {
    7200
}
fn default_tcp_fin() -> u32 {
    120
}
fn default_udp() -> u32 {
    300
}

impl Default for IpvsTimeouts {
    fn default() -> Self {
        IpvsTimeouts {
            tcp: default_tcp(),
            tcp_fin: default_tcp_fin(),
            udp: default_udp(),
        }
    }
}

/// The gateway bridge joining the host namespace and the ingress sandbox (Docker's
/// `docker_gwbridge`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GwBridge {
    /// The bridge's name in the host namespace.
    #[serde(default = "default_gw_name")]
    pub name: String,
    /// Its subnet.
    #[serde(default = "default_gw_subnet")]
    pub subnet: Subnet,
    /// The host's address on it (the sandbox's default gateway).
    #[serde(default = "default_gw_host")]
    pub host_addr: IpAddr,
    /// The sandbox's address on it (the DNAT target).
    #[serde(default = "default_gw_sandbox")]
    pub sandbox_addr: IpAddr,
    /// Its IPv6 subnet (used by a dual-stack ingress only; default `fd00:172:18::/64`).
    #[serde(default = "default_gw_subnet_v6")]
    pub subnet_v6: Subnet,
    /// The host's IPv6 address on it (default `fd00:172:18::1`).
    #[serde(default = "default_gw_host_v6")]
    pub host_addr_v6: IpAddr,
    /// The sandbox's IPv6 address on it (default `fd00:172:18::2`).
    #[serde(default = "default_gw_sandbox_v6")]
    pub sandbox_addr_v6: IpAddr,
}

fn default_gw_name() -> String {
    "vm_gwbridge".into()
}
fn default_gw_subnet() -> Subnet {
    Subnet::new(IpAddr::from([172, 18, 0, 0]), 16).unwrap_or_else(|_| unreachable_subnet())
}
#[allow(clippy::panic)]
fn unreachable_subnet() -> Subnet {
    panic!("the default gateway-bridge subnets are valid")
}
fn default_gw_subnet_v6() -> Subnet {
    Subnet::new(IpAddr::from([0xfd00, 0x172, 0x18, 0, 0, 0, 0, 0]), 64)
        .unwrap_or_else(|_| unreachable_subnet())
}
fn default_gw_host_v6() -> IpAddr {
    IpAddr::from([0xfd00, 0x172, 0x18, 0, 0, 0, 0, 1])
}
fn default_gw_sandbox_v6() -> IpAddr {
    IpAddr::from([0xfd00, 0x172, 0x18, 0, 0, 0, 0, 2])
}
fn default_gw_host() -> IpAddr {
    IpAddr::from([172, 18, 0, 1])
}
fn default_gw_sandbox() -> IpAddr {
    IpAddr::from([172, 18, 0, 2])
}

impl Default for GwBridge {
    fn default() -> Self {
        GwBridge {
            name: default_gw_name(),
            subnet: default_gw_subnet(),
            host_addr: default_gw_host(),
            sandbox_addr: default_gw_sandbox(),
            subnet_v6: default_gw_subnet_v6(),
            host_addr_v6: default_gw_host_v6(),
            sandbox_addr_v6: default_gw_sandbox_v6(),
        }
    }
}

fn default_id() -> NetworkId {
    NetworkId::new("ingress").unwrap_or_else(|_| unreachable_id())
}
#[allow(clippy::panic)]
fn unreachable_id() -> NetworkId {
    panic!("\"ingress\" is a valid network id")
}
fn default_mtu() -> u32 {
    1450
}
fn default_marks() -> FwmarkRange {
    FwmarkRange::new(0x20000, 0x2ffff).unwrap_or_default()
}
fn default_sandbox() -> String {
    "ingress_sbox".into()
}
fn default_overlay() -> String {
    "1-ingress".into()
}

/// The ingress network of a node: the cluster view, the overlay and the published services.
/// Validated by [`crate::model::NodeState::new`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingress {
    /// Its network id (names its chains; default `ingress`).
    #[serde(default = "default_id")]
    pub id: NetworkId,
    /// This node's name.
    pub node: String,
    /// Every node of the cluster (this one included).
    pub nodes: Vec<ClusterNode>,
    /// The ingress subnet (Docker: 10.0.0.0/24 by default; the demos use 10.255.0.0/16).
    pub subnet: Subnet,
    /// The overlay bridge's address in it (the same on every node, reached only locally).
    pub gateway: IpAddr,
    /// The ingress's IPv6 subnet, for a dual-stack ingress (Swarm has none: moby#24379):
    /// published ports then also answer on the nodes' IPv6 addresses. Every node needs
    /// [`ClusterNode::sandbox_addr_v6`]; tasks with [`IngressTask::addr_v6`] serve IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_v6: Option<Subnet>,
    /// The overlay bridge's IPv6 address (required with `subnet_v6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_v6: Option<IpAddr>,
    /// The VXLAN network identifier, 1..=2^24-1.
    pub vni: u32,
    /// The overlay MTU (default 1450: 1500 minus the 50 bytes of VXLAN over IPv4).
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// The fwmarks of the published services (default `0x20000..=0x2ffff`).
    #[serde(default = "default_marks")]
    pub fwmarks: FwmarkRange,
    /// This node's host namespace (a name under `/run/netns` or a path such as
    /// `/proc/1/ns/net`).
    pub host_netns: String,
    /// The ingress sandbox namespace (created if missing; default `ingress_sbox`).
    #[serde(default = "default_sandbox")]
    pub sandbox_netns: String,
    /// The overlay namespace (created if missing; default `1-ingress`).
    #[serde(default = "default_overlay")]
    pub overlay_netns: String,
    /// The gateway bridge.
    #[serde(default)]
    pub gw_bridge: GwBridge,
    /// The sandbox's IPVS connection timeouts.
    #[serde(default)]
    pub timeouts: IpvsTimeouts,
    /// The published services.
    #[serde(default)]
    pub services: Vec<IngressService>,
    /// This node's XDP ingress dataplane (absent: every published port goes through IPVS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp: Option<IngressXdp>,
}

fn bad(field: &'static str, value: impl std::fmt::Display, reason: &str) -> Error {
    Error::Invalid {
        field,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn check_ifname(field: &'static str, v: &str) -> Result<(), Error> {
    if v.is_empty()
        || v.len() > 15
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad(field, v, "1-15 of a-z, 0-9, '_' and '-'"));
    }
    Ok(())
}

/// One family of the gateway bridge: its subnet of that family, not overlapping the ingress
/// subnet; the host's and the sandbox's addresses inside it and distinct. `fields`: the
/// subnet's, the addresses', the sandbox address's field names.
fn check_gw_family(
    fam: Family,
    ingress_subnet: Subnet,
    (subnet, host, sandbox): (Subnet, IpAddr, IpAddr),
    fields: [&'static str; 3],
) -> Result<(), Error> {
    if subnet.family() != fam {
        return Err(bad(fields[0], subnet, &format!("must be an {fam} subnet")));
    }
    if ingress_subnet.overlaps(&subnet) {
        return Err(bad(fields[0], subnet, "overlaps the ingress subnet"));
    }
    for a in [host, sandbox] {
        if !subnet.contains(a) {
            return Err(bad(fields[1], a, "not inside the gateway bridge's subnet"));
        }
    }
    if host == sandbox {
        return Err(bad(fields[2], sandbox, "is the host's address"));
    }
    Ok(())
}

fn check_netns(field: &'static str, v: &str) -> Result<(), Error> {
    if v.starts_with('/') {
        return Ok(());
    }
    vipmesh_netns::validate_name(v).map_err(|e| bad(field, v, &e.to_string()))
}

impl Ingress {
    /// Where this node's host sends each published port of family `fam`, in service and port
    /// order: an ingress-mode port to the sandbox's gateway-bridge address and the published
    /// port, a host-mode port to this node's first task's host address (of that family) and
    /// the target port; a host-mode port without such a task here publishes nothing. Every
    /// firewall backend renders its DNAT and FORWARD accepts from this.
    pub fn publish_targets(
        &self,
        fam: Family,
    ) -> impl Iterator<Item = (&IngressService, &PublishedPort, IpAddr, Port)> {
        let gw_sandbox = match fam {
            Family::V4 => self.gw_bridge.sandbox_addr,
            Family::V6 => self.gw_bridge.sandbox_addr_v6,
        };
        self.services.iter().flat_map(move |s| {
            s.ports.iter().filter_map(move |p| match p.mode {
                PublishMode::Ingress => Some((s, p, gw_sandbox, p.published)),
                PublishMode::Host => s
                    .tasks
                    .iter()
                    .find(|t| t.node == self.node)
                    .and_then(|t| match fam {
                        Family::V4 => t.host_addr,
                        Family::V6 => t.host_addr_v6,
                    })
                    .map(|a| (s, p, a, p.target)),
            })
        })
    }

    /// The ingress as the IPVS mesh programs it: without the ports XDP serves
    /// ([`IngressXdp::serves`]) and the services left without a port; `None` when XDP serves
    /// every port (the node then needs no sandbox, overlay or IPVS). Without `xdp`, a clone.
    pub fn ipvs_part(&self) -> Option<Ingress> {
        let Some(x) = &self.xdp else {
            return Some(self.clone());
        };
        let mut part = self.clone();
        part.xdp = None;
        for s in &mut part.services {
            s.ports.retain(|p| !x.serves(p));
        }
        part.services.retain(|s| !s.ports.is_empty());
        (!part.services.is_empty()).then_some(part)
    }

    fn validate_xdp(&self, x: &IngressXdp) -> Result<(), Error> {
        check_ifname("ingress.xdp.uplink", &x.uplink)?;
        let published: BTreeSet<(Protocol, Port)> = self
            .services
            .iter()
            .flat_map(|s| s.ports.iter().map(|p| (p.protocol, p.published)))
            .collect();
        let mut seen = BTreeSet::new();
        for p in &x.ports {
            let at = format!("{}/{}", p.protocol, p.published);
            if !seen.insert((p.protocol, p.published)) {
                return Err(bad("ingress.xdp.ports", at, "listed twice"));
            }
            if !published.contains(&(p.protocol, p.published)) {
                return Err(bad(
                    "ingress.xdp.ports",
                    at,
                    "no service publishes this port",
                ));
            }
        }
        for (ns, veth) in &x.host_veths {
            check_netns("ingress.xdp.host_veths", ns)?;
            check_ifname("ingress.xdp.host_veths", veth)?;
        }
        for t in self.services.iter().flat_map(|s| s.tasks.iter()) {
            if let Some(v) = &t.host_veth {
                check_ifname("ingress.services.tasks.host_veth", v)?;
            }
        }
        Ok(())
    }

    /// Validates the ingress on its own (the node-wide checks are in `NodeState::new`).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field and the value.
    pub fn validate(&self) -> Result<(), Error> {
        if self.vni == 0 || self.vni > 0x00ff_ffff {
            return Err(bad(
                "ingress.vni",
                self.vni,
                "must be 1..=16777215 (24 bits)",
            ));
        }
        if self.subnet.family() != Family::V4 {
            return Err(bad(
                "ingress.subnet",
                self.subnet,
                "must be IPv4; a dual-stack ingress gives its IPv6 subnet in subnet_v6",
            ));
        }
        let v6 = self.subnet_v6.is_some();
        let (min, what) = if v6 {
            (1280, "a dual-stack (IPv6)")
        } else {
            (576, "an IPv4")
        };
        if self.mtu < min || self.mtu > 9000 {
            return Err(bad(
                "ingress.mtu",
                self.mtu,
                &format!("must be {min}..=9000 for {what} ingress"),
            ));
        }
        for (field, v) in [
            ("ingress.timeouts.tcp", self.timeouts.tcp),
            ("ingress.timeouts.tcp_fin", self.timeouts.tcp_fin),
            ("ingress.timeouts.udp", self.timeouts.udp),
        ] {
            // 0 means "unchanged" to the kernel; the upper bound is ipvsadm's (31 days).
            if v == 0 || v > 2_678_400 {
                return Err(bad(field, v, "must be 1..=2678400 seconds"));
            }
        }
        if !self.subnet.contains(self.gateway) {
            return Err(bad(
                "ingress.gateway",
                self.gateway,
                "not inside the ingress subnet",
            ));
        }
        self.validate_v6()?;
        check_netns("ingress.host_netns", &self.host_netns)?;
        check_netns("ingress.sandbox_netns", &self.sandbox_netns)?;
        check_netns("ingress.overlay_netns", &self.overlay_netns)?;
        if let Some(x) = &self.xdp {
            self.validate_xdp(x)?;
        }
        let gw = &self.gw_bridge;
        check_ifname("ingress.gw_bridge.name", &gw.name)?;
        check_gw_family(
            Family::V4,
            self.subnet,
            (gw.subnet, gw.host_addr, gw.sandbox_addr),
            [
                "ingress.gw_bridge.subnet",
                "ingress.gw_bridge",
                "ingress.gw_bridge.sandbox_addr",
            ],
        )?;
        let mut names = BTreeSet::new();
        let mut underlays = BTreeSet::new();
        let mut addrs: BTreeSet<IpAddr> = [self.gateway].into();
        addrs.extend(self.gateway_v6);
        let in_v6 = |a: Option<IpAddr>| match (self.subnet_v6, a) {
            (_, None) => true,
            (Some(sn), Some(a)) => sn.contains(a),
            (None, Some(_)) => false,
        };
        for n in &self.nodes {
            if n.name.is_empty() || !names.insert(n.name.as_str()) {
                return Err(bad("ingress.nodes.name", &n.name, "empty or listed twice"));
            }
            // It names this node's pin and state directories (the XDP mesh's defaults).
            if n.name.contains(['/', '\0']) || n.name == "." || n.name == ".." {
                return Err(bad(
                    "ingress.nodes.name",
                    &n.name,
                    "not one path segment (it names the node's pin and state directories)",
                ));
            }
            if !underlays.insert(n.underlay) {
                return Err(bad(
                    "ingress.nodes.underlay",
                    n.underlay,
                    "two nodes with one underlay address",
                ));
            }
            if !self.subnet.contains(n.sandbox_addr) || !addrs.insert(n.sandbox_addr) {
                return Err(bad(
                    "ingress.nodes.sandbox_addr",
                    format!("{}: {}", n.name, n.sandbox_addr),
                    "outside the ingress subnet, or used twice",
                ));
            }
            if v6 != n.sandbox_addr_v6.is_some()
                || !in_v6(n.sandbox_addr_v6)
                || n.sandbox_addr_v6.is_some_and(|a| !addrs.insert(a))
            {
                return Err(bad(
                    "ingress.nodes.sandbox_addr_v6",
                    format!(
                        "{}: {}",
                        n.name,
                        n.sandbox_addr_v6.map_or("none".into(), |a| a.to_string())
                    ),
                    "required with (and only with) ingress.subnet_v6, inside it, once",
                ));
            }
        }
        if !names.contains(self.node.as_str()) {
            return Err(bad("ingress.node", &self.node, "not in ingress.nodes"));
        }
        let mut svc_names = BTreeSet::new();
        let mut ports: BTreeMap<(Protocol, Port), &ServiceName> = BTreeMap::new();
        let mut host_local: BTreeSet<(Protocol, Port)> = BTreeSet::new();
        for s in &self.services {
            if !svc_names.insert(&s.name) {
                return Err(bad(
                    "ingress.services.name",
                    &s.name,
                    "used by two services",
                ));
            }
            if s.ports.is_empty() {
                return Err(bad("ingress.services.ports", &s.name, "no published port"));
            }
            for p in &s.ports {
                if let Some(other) = ports.insert((p.protocol, p.published), &s.name) {
                    return Err(bad(
                        "ingress.services.ports.published",
                        format!("{}/{} of {} and {other}", p.protocol, p.published, s.name),
                        "published twice (ingress and host mode share the node's ports)",
                    ));
                }
            }
            for t in &s.tasks {
                if !names.contains(t.node.as_str()) {
                    return Err(bad(
                        "ingress.services.tasks.node",
                        format!("{}: {} on {}", s.name, t.addr, t.node),
                        "not a node of the cluster view",
                    ));
                }
                if !self.subnet.contains(t.addr) || !addrs.insert(t.addr) {
                    return Err(bad(
                        "ingress.services.tasks.addr",
                        format!("{}: {}", s.name, t.addr),
                        "outside the ingress subnet, or used twice",
                    ));
                }
                if !in_v6(t.addr_v6) || t.addr_v6.is_some_and(|a| !addrs.insert(a)) {
                    return Err(bad(
                        "ingress.services.tasks.addr_v6",
                        format!(
                            "{}: {}",
                            s.name,
                            t.addr_v6.map_or(String::new(), |a| a.to_string())
                        ),
                        "outside ingress.subnet_v6 (or no subnet_v6), or used twice",
                    ));
                }
                if t.host_addr_v6.is_some_and(|a| Family::of(a) != Family::V6)
                    || t.host_addr.is_some_and(|a| Family::of(a) != Family::V4)
                {
                    return Err(bad(
                        "ingress.services.tasks.host_addr",
                        format!("{}: {:?} / {:?}", s.name, t.host_addr, t.host_addr_v6),
                        "host_addr is IPv4, host_addr_v6 IPv6",
                    ));
                }
                if let Some(i) = &t.interface {
                    check_ifname("ingress.services.tasks.interface", i)?;
                }
                if t.node == self.node {
                    let Some(ns) = &t.netns else {
                        return Err(bad(
                            "ingress.services.tasks.netns",
                            format!("{}: {}", s.name, t.addr),
                            "a task on this node needs its namespace",
                        ));
                    };
                    check_netns("ingress.services.tasks.netns", ns)?;
                    for p in s.ports.iter().filter(|p| p.mode == PublishMode::Host) {
                        if t.host_addr.is_none() {
                            return Err(bad(
                                "ingress.services.tasks.host_addr",
                                format!("{}: {}", s.name, t.addr),
                                "a host-mode port needs the task's host address",
                            ));
                        }
                        if !host_local.insert((p.protocol, p.published)) {
                            return Err(bad(
                                "ingress.services.ports.published",
                                format!("{}/{} of {}", p.protocol, p.published, s.name),
                                "a host-mode port serves one task per node",
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The dual-stack fields: `subnet_v6` with its gateway and the gateway bridge's IPv6 side.
    fn validate_v6(&self) -> Result<(), Error> {
        let Some(sn) = self.subnet_v6 else {
            if let Some(g) = self.gateway_v6 {
                return Err(bad(
                    "ingress.gateway_v6",
                    g,
                    "given without ingress.subnet_v6",
                ));
            }
            return Ok(());
        };
        if sn.family() != Family::V6 {
            return Err(bad("ingress.subnet_v6", sn, "must be an IPv6 subnet"));
        }
        match self.gateway_v6 {
            Some(g) if sn.contains(g) => {}
            g => {
                return Err(bad(
                    "ingress.gateway_v6",
                    g.map_or("none".into(), |g| g.to_string()),
                    "required with ingress.subnet_v6, inside it",
                ));
            }
        }
        let gw = &self.gw_bridge;
        check_gw_family(
            Family::V6,
            sn,
            (gw.subnet_v6, gw.host_addr_v6, gw.sandbox_addr_v6),
            [
                "ingress.gw_bridge.subnet_v6",
                "ingress.gw_bridge",
                "ingress.gw_bridge.sandbox_addr_v6",
            ],
        )
    }

    /// The families the ingress serves: IPv4, and IPv6 when dual-stack.
    pub fn families(&self) -> Vec<Family> {
        let mut f = vec![Family::V4];
        if self.subnet_v6.is_some() {
            f.push(Family::V6);
        }
        f
    }

    /// This node's entry in the cluster view.
    pub fn this_node(&self) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.name == self.node)
    }

    /// The ingress sandbox as a network of [`Layout::Ingress`]: its services are the
    /// ingress-published ones, with every task on any node as a backend.
    ///
    /// # Errors
    /// As [`NetworkState::new`], and [`Error::Invalid`] when this node is not in the view.
    pub fn sandbox_network(&self) -> Result<NetworkState, Error> {
        let me = self
            .this_node()
            .ok_or_else(|| bad("ingress.node", &self.node, "not in ingress.nodes"))?;
        let net = Network {
            id: self.id.clone(),
            lb_netns: self.sandbox_netns.clone(),
            lb_interface: "eth0".into(),
            subnets: std::iter::once(NetSubnet {
                subnet: self.subnet,
                lb_addr: me.sandbox_addr,
            })
            .chain(
                self.subnet_v6
                    .zip(me.sandbox_addr_v6)
                    .map(|(subnet, lb_addr)| NetSubnet { subnet, lb_addr }),
            )
            .collect(),
            fwmarks: self.fwmarks,
            layout: Layout::Ingress,
        };
        let services = self
            .services
            .iter()
            .filter_map(|s| {
                let ports: Vec<ServicePort> = s
                    .ports
                    .iter()
                    .filter(|p| p.mode == PublishMode::Ingress)
                    .map(|p| ServicePort {
                        protocol: p.protocol,
                        port: p.published,
                    })
                    .collect();
                (!ports.is_empty()).then(|| Service {
                    name: s.name.clone(),
                    mode: EndpointMode::Published,
                    ports,
                    scheduler: s.scheduler.clone(),
                    persistence: None,
                    backends: s
                        .tasks
                        .iter()
                        .flat_map(|t| {
                            std::iter::once(t.addr)
                                .chain(t.addr_v6)
                                .map(|addr| Backend {
                                    addr,
                                    weight: t.weight,
                                })
                        })
                        .collect(),
                })
            })
            .collect();
        NetworkState::new(net, services)
    }

    /// The namespaces of the tasks on this node.
    pub fn local_task_namespaces(&self) -> BTreeSet<&str> {
        self.services
            .iter()
            .flat_map(|s| s.tasks.iter())
            .filter(|t| t.node == self.node)
            .filter_map(|t| t.netns.as_deref())
            .collect()
    }

    /// The sysctls of the host namespace: forwarding, and `route_localnet` on the gateway
    /// bridge (so `127.0.0.1:PORT`, DNATed to the sandbox, may leave through it).
    ///
    /// A dual-stack ingress also sets `net.ipv6.conf.all.forwarding=1` (as Docker does for
    /// its IPv6 networks): note that a forwarding host ignores router advertisements unless
    /// an interface has `accept_ra=2`. IPv6 has no `route_localnet`: `[::1]:PORT` is not
    /// published, the node's own IPv6 addresses are.
    pub fn host_sysctls(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::from([
            ("net.ipv4.ip_forward".to_string(), "1".to_string()),
            (
                format!("net.ipv4.conf.{}.route_localnet", self.gw_bridge.name),
                "1".to_string(),
            ),
        ]);
        if self.subnet_v6.is_some() {
            m.insert("net.ipv6.conf.all.forwarding".into(), "1".into());
        }
        m
    }
}

fn port(p: Port) -> Result<nf::Port, Error> {
    nf::Port::new(p.get()).map_err(|e| nf_err("port", e))
}

/// The host namespace's rules of the ruleset's family (IPv6 only for a dual-stack ingress).
///
/// # Errors
/// [`Error::Netfilter`] if the rule model rejects a value.
pub fn add_host_rules(rs: &mut nf::OwnedRuleset, ing: &Ingress) -> Result<(), Error> {
    let fam: Family = rs.family().into();
    if !ing.families().contains(&fam) {
        return Ok(());
    }
    let id = ing.id.as_str();
    let dnat = chain_name(id, "DNAT")?;
    let masq = chain_name(id, "MASQ")?;
    rs.declare_chain(nf::Table::Nat, &dnat);
    rs.declare_chain(nf::Table::Nat, &masq);
    let comment = |s: &ServiceName| {
        nf::Comment::new(format!("vipmesh net={id} svc={s}")).map_err(|e| nf_err("comment", e))
    };
    for (s, p, to, to_port) in ing.publish_targets(fam) {
        let m = nf::Matches::new()
            .protocol(nf::Protocol::from(p.protocol))
            .dport(nf::PortRange::single(port(p.published)?));
        let r = nf::Rule::new(
            m.clone(),
            nf::Target::Dnat(nf::NatTo {
                addr: to,
                port: Some(port(to_port)?),
            }),
        )
        .with_comment(comment(&s.name)?);
        add(rs, nf::Table::Nat, &dnat, r)?;
    }
    let mut local = nf::Matches::new();
    local.dst_type = Some(nf::AddrType::Local);
    for hook in [nf::BuiltinChain::Prerouting, nf::BuiltinChain::Output] {
        rs.add_jump(nf::Table::Nat, jump(hook, local.clone(), &dnat))
            .map_err(|e| nf_err("add jump", e))?;
    }
    // The FORWARD accepts of the published ports (the same chain on both backends).
    crate::rules::add_host_forward(rs, ing)?;
    let mut m = nf::Matches::new()
        .out_iface(nf::Iface::new(&ing.gw_bridge.name).map_err(|e| nf_err("interface", e))?);
    m.src_type = Some(nf::AddrType::Local);
    add(
        rs,
        nf::Table::Nat,
        &masq,
        nf::Rule::new(m, nf::Target::Masquerade),
    )?;
    rs.add_jump(
        nf::Table::Nat,
        jump(nf::BuiltinChain::Postrouting, nf::Matches::new(), &masq),
    )
    .map_err(|e| nf_err("add jump", e))?;
    Ok(())
}

/// A local task's rules: REDIRECT published → target, ACCEPT the target ports on its ingress
/// address, DROP every other port there.
///
/// # Errors
/// [`Error::Netfilter`] if the rule model rejects a value.
pub fn add_task_rules(rs: &mut nf::OwnedRuleset, ing: &Ingress, netns: &str) -> Result<(), Error> {
    let id = ing.id.as_str();
    let rdr = chain_name(id, "RDR")?;
    let filt = chain_name(id, "TASK")?;
    let fam: Family = rs.family().into();
    let mut any = false;
    for s in &ing.services {
        let here = s
            .tasks
            .iter()
            .filter(|t| t.node == ing.node && t.netns.as_deref() == Some(netns));
        for addr in here.filter_map(|t| match fam {
            Family::V4 => Some(t.addr),
            Family::V6 => t.addr_v6,
        }) {
            if !any {
                rs.declare_chain(nf::Table::Nat, &rdr);
                rs.declare_chain(nf::Table::Filter, &filt);
                any = true;
            }
            let me = nf::Cidr::host(addr);
            for p in s.ports.iter().filter(|p| p.mode == PublishMode::Ingress) {
                if p.published != p.target {
                    let m = nf::Matches::new()
                        .destination(me)
                        .protocol(nf::Protocol::from(p.protocol))
                        .dport(nf::PortRange::single(port(p.published)?));
                    add(
                        rs,
                        nf::Table::Nat,
                        &rdr,
                        nf::Rule::new(m, nf::Target::Redirect(port(p.target)?)),
                    )?;
                }
                let m = nf::Matches::new()
                    .destination(me)
                    .protocol(nf::Protocol::from(p.protocol))
                    .dport(nf::PortRange::single(port(p.target)?));
                add(
                    rs,
                    nf::Table::Filter,
                    &filt,
                    nf::Rule::new(m, nf::Target::Accept),
                )?;
            }
            for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                let m = nf::Matches::new()
                    .destination(me)
                    .protocol(nf::Protocol::from(p));
                add(
                    rs,
                    nf::Table::Filter,
                    &filt,
                    nf::Rule::new(m, nf::Target::Drop),
                )?;
            }
        }
    }
    if any {
        rs.add_jump(
            nf::Table::Nat,
            jump(nf::BuiltinChain::Prerouting, nf::Matches::new(), &rdr),
        )
        .map_err(|e| nf_err("add jump", e))?;
        rs.add_jump(
            nf::Table::Filter,
            jump(nf::BuiltinChain::Input, nf::Matches::new(), &filt),
        )
        .map_err(|e| nf_err("add jump", e))?;
    }
    Ok(())
}

/// The overlay this node needs (for `vipmesh-overlay`): the sandbox and the local tasks as
/// local endpoints, the other nodes' sandboxes and tasks as remote ones.
pub fn overlay_spec(ing: &Ingress) -> vipmesh_overlay::OverlaySpec {
    let short: String = ing.id.as_str().chars().take(4).collect();
    let mut spec = vipmesh_overlay::OverlaySpec::new(&short, ing.vni, &ing.overlay_netns);
    spec.mtu = ing.mtu;
    let subnets =
        std::iter::once((ing.subnet, ing.gateway)).chain(ing.subnet_v6.zip(ing.gateway_v6));
    for (sn, gateway) in subnets {
        spec.subnets.push(vipmesh_overlay::SubnetSpec {
            subnet: vipmesh_overlay::Subnet::new(sn.addr(), sn.prefix())
                .unwrap_or_else(unreachable_overlay_subnet),
            gateway,
        });
    }
    for n in &ing.nodes {
        if n.name == ing.node {
            spec.local.push(vipmesh_overlay::LocalEndpoint {
                netns: ing.sandbox_netns.clone(),
                ifname: "eth0".into(),
                addr: n.sandbox_addr,
                mac: None,
                extra_addrs: n.sandbox_addr_v6.into_iter().collect(),
            });
        } else {
            spec.nodes.insert(n.name.clone(), n.underlay);
            spec.remote.push(vipmesh_overlay::RemoteEndpoint {
                addr: n.sandbox_addr,
                mac: None,
                node: n.name.clone(),
                extra_addrs: n.sandbox_addr_v6.into_iter().collect(),
            });
        }
    }
    for s in &ing.services {
        for t in &s.tasks {
            if t.node == ing.node {
                if let Some(ns) = &t.netns {
                    spec.local.push(vipmesh_overlay::LocalEndpoint {
                        netns: ns.clone(),
                        ifname: t.interface.clone().unwrap_or_else(|| "eth0".into()),
                        addr: t.addr,
                        mac: None,
                        extra_addrs: t.addr_v6.into_iter().collect(),
                    });
                }
            } else {
                spec.remote.push(vipmesh_overlay::RemoteEndpoint {
                    addr: t.addr,
                    mac: None,
                    node: t.node.clone(),
                    extra_addrs: t.addr_v6.into_iter().collect(),
                });
            }
        }
    }
    spec
}

#[allow(clippy::panic)]
fn unreachable_overlay_subnet() -> vipmesh_overlay::Subnet {
    panic!("a validated subnet is a valid overlay subnet")
}

/// A remote endpoint of the overlay (a task or sandbox on another node) that appears or goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerChange {
    /// Its overlay address (IPv4, or the IPv6 address of a dual-stack endpoint).
    pub addr: IpAddr,
    /// Its MAC (derived from its IPv4 address).
    pub mac: vipmesh_overlay::Mac,
    /// Its node's underlay address.
    pub vtep: IpAddr,
    /// True when it appears, false when it goes.
    pub add: bool,
}

/// A change of an ingress confined to the tasks on other nodes: the published services whose
/// real servers change, and the overlay's remote endpoints that come and go. Such a change is
/// applied incrementally (the IPVS real servers of those services, one FDB entry and
/// neighbour per endpoint); anything else is a full sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteDelta {
    /// The services whose tasks changed.
    pub services: Vec<ServiceName>,
    /// The overlay's remote endpoints that change (removals first).
    pub peers: Vec<PeerChange>,
}

/// The remote endpoints of one service's tasks: address -> (MAC, VTEP).
fn remote_peers(
    ing: &Ingress,
    vteps: &BTreeMap<&str, IpAddr>,
    s: &IngressService,
) -> BTreeMap<IpAddr, (vipmesh_overlay::Mac, IpAddr)> {
    let mut m = BTreeMap::new();
    for t in s.tasks.iter().filter(|t| t.node != ing.node) {
        let Some(vtep) = vteps.get(t.node.as_str()) else {
            continue;
        };
        let mac = vipmesh_overlay::mac_for(t.addr);
        for a in std::iter::once(t.addr).chain(t.addr_v6) {
            m.insert(a, (mac, *vtep));
        }
    }
    m
}

/// What changed from `old` to `new` when only tasks on other nodes did (None otherwise: a
/// change of the cluster view, the network, the ports, the services listed or a local task).
/// O(services) comparisons, O(changed services) work.
pub fn remote_delta(old: &Ingress, new: &Ingress) -> Option<RemoteDelta> {
    // Every field but the services must be equal (destructured, so a new field is not
    // forgotten here).
    let Ingress {
        id,
        node,
        nodes,
        subnet,
        gateway,
        subnet_v6,
        gateway_v6,
        vni,
        mtu,
        fwmarks,
        host_netns,
        sandbox_netns,
        overlay_netns,
        gw_bridge,
        timeouts,
        services,
        xdp,
    } = old;
    let same = *id == new.id
        && *node == new.node
        && *nodes == new.nodes
        && *subnet == new.subnet
        && *gateway == new.gateway
        && *subnet_v6 == new.subnet_v6
        && *gateway_v6 == new.gateway_v6
        && *vni == new.vni
        && *mtu == new.mtu
        && *fwmarks == new.fwmarks
        && *host_netns == new.host_netns
        && *sandbox_netns == new.sandbox_netns
        && *overlay_netns == new.overlay_netns
        && *gw_bridge == new.gw_bridge
        && *timeouts == new.timeouts
        && *xdp == new.xdp
        && services.len() == new.services.len();
    if !same {
        return None;
    }
    let vteps: BTreeMap<&str, IpAddr> = nodes
        .iter()
        .map(|n| (n.name.as_str(), n.underlay))
        .collect();
    let mut delta = RemoteDelta::default();
    let mut adds = Vec::new();
    for (a, b) in services.iter().zip(&new.services) {
        if a == b {
            continue;
        }
        let local = |s: &IngressService| -> Vec<IngressTask> {
            s.tasks
                .iter()
                .filter(|t| t.node == *node)
                .cloned()
                .collect()
        };
        if a.name != b.name
            || a.ports != b.ports
            || a.scheduler != b.scheduler
            || local(a) != local(b)
        {
            return None;
        }
        delta.services.push(a.name.clone());
        let (pa, pb) = (remote_peers(old, &vteps, a), remote_peers(new, &vteps, b));
        for (addr, &(mac, vtep)) in &pa {
            if pb.get(addr) != Some(&(mac, vtep)) {
                delta.peers.push(PeerChange {
                    addr: *addr,
                    mac,
                    vtep,
                    add: false,
                });
            }
        }
        for (addr, &(mac, vtep)) in &pb {
            if pa.get(addr) != Some(&(mac, vtep)) {
                adds.push(PeerChange {
                    addr: *addr,
                    mac,
                    vtep,
                    add: true,
                });
            }
        }
    }
    delta.peers.extend(adds);
    Some(delta)
}

/// The overlay steps of `peers` (no observation: deleting what is gone counts as done, and
/// replacing is idempotent): for a removal its neighbour, and its FDB entry unless another
/// endpoint added here keeps the MAC; for an addition its FDB entry and its neighbour.
pub fn peer_steps(ing: &Ingress, peers: &[PeerChange]) -> vipmesh_overlay::Plan {
    let ns = vipmesh_overlay::Ns::Overlay(ing.overlay_netns.clone());
    // The VXLAN device's name, without building the whole spec (O(endpoints)).
    let dev = vipmesh_overlay::OverlaySpec::new("", ing.vni, &ing.overlay_netns).vxlan;
    let kept: BTreeSet<vipmesh_overlay::Mac> =
        peers.iter().filter(|p| p.add).map(|p| p.mac).collect();
    let mut steps = Vec::new();
    let mut fdb_done = BTreeSet::new();
    for p in peers {
        if p.add {
            if fdb_done.insert((p.mac, p.vtep, true)) {
                steps.push(vipmesh_overlay::Step::ReplaceFdb {
                    ns: ns.clone(),
                    dev: dev.clone(),
                    mac: p.mac,
                    vtep: p.vtep,
                });
            }
            steps.push(vipmesh_overlay::Step::ReplaceNeigh {
                ns: ns.clone(),
                dev: dev.clone(),
                ip: p.addr,
                mac: p.mac,
            });
        } else {
            steps.push(vipmesh_overlay::Step::DeleteNeigh {
                ns: ns.clone(),
                dev: dev.clone(),
                ip: p.addr,
            });
            if !kept.contains(&p.mac) && fdb_done.insert((p.mac, p.vtep, false)) {
                steps.push(vipmesh_overlay::Step::DeleteFdb {
                    ns: ns.clone(),
                    dev: dev.clone(),
                    mac: p.mac,
                    vtep: p.vtep,
                });
            }
        }
    }
    vipmesh_overlay::Plan { steps }
}
