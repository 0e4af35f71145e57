//! The node's XDP mesh options ([`XdpMeshConfig`]): which interface, which attach mode, which
//! published ports, the underlay MTU, where the maps are pinned.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::model::Protocol;

pub use crate::ingress::{AttachRequest, PortDataplane};

impl AttachRequest {
    pub(crate) fn to_xdp(self) -> vipmesh_xdp::AttachMode {
        match self {
            AttachRequest::NativeOrGeneric => vipmesh_xdp::AttachMode::Auto,
            AttachRequest::Native => vipmesh_xdp::AttachMode::Native,
            AttachRequest::Generic => vipmesh_xdp::AttachMode::Generic,
        }
    }
}

/// The XDP mesh options of one node.
///
/// # Examples
///
/// ```
/// use vipmesh::xdp_mesh::XdpMeshConfig;
///
/// let cfg = XdpMeshConfig::new("eth0");
/// assert_eq!(cfg.underlay_mtu, 1500);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpMeshConfig {
    /// The node's uplink in its host namespace ([`crate::ingress::Ingress::host_netns`]):
    /// `xdp_lb` is attached there, and encapsulated packets leave through it.
    pub uplink: String,
    /// The attach mode asked for.
    pub attach: AttachRequest,
    /// Per published port (protocol, published port): which dataplane serves it. Absent ports
    /// default to [`PortDataplane::Xdp`].
    pub ports: BTreeMap<(Protocol, u16), PortDataplane>,
    /// MTU of the underlay links between nodes. An encapsulated packet is 20 bytes (IPIP)
    /// longer, so the MSS of TCP SYNs is clamped to `underlay_mtu - 60`; an MTU that leaves
    /// less than 1280 bytes after the outer header is refused.
    pub underlay_mtu: u16,
    /// The bpffs directory of this node's pins; default `/sys/fs/bpf/vipmesh/<node>` (maps
    /// and links then live in its `vipmesh/` subdirectory).
    pub pin_root: Option<PathBuf>,
    /// Where the values our sysctl writes replaced are recorded (a regular directory: bpffs
    /// holds no files); default `/run/vipmesh/xdp/<node>`. A task's values are put back when
    /// it leaves the mesh and at teardown, also after a restart or a kill -9.
    pub state_dir: Option<PathBuf>,
    /// For each local task (by namespace): the name of its veth's peer in the node's host
    /// namespace (the runtime created the pair). NAT frames are redirected into it, and
    /// `tc_rev` runs on its ingress.
    pub host_veths: BTreeMap<String, String>,
    /// The nodes' IPv6 underlay addresses, by node name: a node listed here serves its
    /// published ports on that address too (tasks' `addr_v6` as backends, IPv6-in-IPv6 to
    /// the remote ones). Empty: IPv4 only.
    pub underlay_v6: BTreeMap<String, std::net::Ipv6Addr>,
    /// Maglev table size (a prime; default 251 — at most 1/M imbalance).
    pub table_size: u32,
    /// Capacity of the LRU flow table.
    pub flow_entries: u32,
}

impl XdpMeshConfig {
    /// Defaults for the uplink `uplink` (those of the state file's `ingress.xdp`).
    pub fn new(uplink: impl Into<String>) -> XdpMeshConfig {
        XdpMeshConfig::from(&crate::ingress::IngressXdp::new(uplink))
    }

    /// The dataplane of one published port.
    pub fn port(&self, protocol: Protocol, published: u16) -> PortDataplane {
        self.ports
            .get(&(protocol, published))
            .copied()
            .unwrap_or_default()
    }
}

impl From<&crate::ingress::IngressXdp> for XdpMeshConfig {
    /// The options of the state file's `ingress.xdp`.
    fn from(x: &crate::ingress::IngressXdp) -> XdpMeshConfig {
        XdpMeshConfig {
            uplink: x.uplink.clone(),
            attach: x.attach,
            ports: x
                .ports
                .iter()
                .map(|p| ((p.protocol, p.published.get()), p.dataplane))
                .collect(),
            underlay_mtu: x.underlay_mtu,
            pin_root: x.pin_root.clone(),
            state_dir: x.state_dir.clone(),
            host_veths: x.host_veths.clone(),
            underlay_v6: x.underlay_v6.clone(),
            table_size: x.table_size,
            flow_entries: x.flow_entries.unwrap_or(vipmesh_xdp::abi::FLOW_ENTRIES),
        }
    }
}
