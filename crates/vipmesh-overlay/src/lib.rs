//! The ingress (overlay) network of one node, as Docker's libnetwork builds it, programmed
//! over rtnetlink ([`vipmesh_netns::rtnl`]), never with `ip` or `bridge` processes.
//!
//! On each node the overlay is:
//! - an overlay namespace (Docker's `1-<network id>`) holding a bridge `br0` with the
//!   gateway address of each overlay subnet;
//! - a VXLAN device `vxlan0` on that bridge: `id VNI dstport 4789 nolearning proxy l2miss
//!   l3miss`, no `local`, no `dev`. It is **created in the node namespace** under a unique
//!   temporary name `vx-<vni hex>-<id>`, then moved into the overlay namespace and renamed:
//!   its UDP socket and underlay route lookup stay in the namespace that created it, the one
//!   with the underlay (`ip -d link` shows `link-netns`). The port is always explicit: the
//!   kernel's default without `IFLA_VXLAN_PORT` is 8472, not 4789;
//! - per local endpoint, a veth: the bridge side `vm-<ip hex>` on `br0`, the other side
//!   created directly in the endpoint's namespace with its interface name, MAC
//!   ([`mac_for`]), MTU and address;
//! - per remote endpoint, what libnetwork's peerDB programs: a static FDB entry
//!   (`bridge fdb add MAC dev vxlan0 dst VTEP self permanent`) and a permanent neighbour
//!   (`ip neigh add IP lladdr MAC dev vxlan0 nud permanent`); with `proxy`, `vxlan0`
//!   answers ARP for remote endpoints from those entries, so nothing floods over the tunnel.
//!
//! **MTU.** VXLAN adds 50 bytes on an IPv4 underlay (outer IPv4 20 + UDP 8 + VXLAN 8 + inner
//! Ethernet 14) and 70 on IPv6; every overlay leg (bridge, vxlan, both veth ends) gets the
//! overlay MTU, 1450 on a 1500 underlay ([`overlay_mtu_for`], [`VXLAN_OVERHEAD_V4`]). A wrong
//! MTU hides behind veth TSO/GSO (super-packets skip the MTU checks); the host test turns
//! offloads off and moves 4 MiB to prove it.
//!
//! The flow is the house one: [`Overlay::new`] validates an [`OverlaySpec`] (typed errors
//! naming field and value, before any kernel write); [`observe`] dumps what is there;
//! [`plan()`] diffs the two into typed [`Step`]s (golden-testable `Display`, empty when
//! equal); [`apply`] executes exactly the plan. [`plan_teardown`] / [`teardown`] remove only
//! what the overlay created.
//!
//! Kernel references: [`ip-link(8)`](https://man7.org/linux/man-pages/man8/ip-link.8.html)
//! (VXLAN, veth, bridge options), [`bridge(8)`](https://man7.org/linux/man-pages/man8/bridge.8.html)
//! (`fdb` on a VXLAN device), [`ip-neighbour(8)`](https://man7.org/linux/man-pages/man8/ip-neighbour.8.html),
//! and the driver, [`drivers/net/vxlan/`](https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/drivers/net/vxlan)
//! (`vxlan_core.c`: `vxlan_fdb_add`, `arp_reduce` for `proxy`, `VXLAN_HEADROOM`).
//!
//! # Examples
//!
//! ```no_run
//! use vipmesh_netns::Netns;
//! use vipmesh_overlay::{LocalEndpoint, Overlay, OverlaySpec, RemoteEndpoint, SubnetSpec};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut spec = OverlaySpec::new("ingr", 4096, "1-ingress");
//! spec.subnets.push(SubnetSpec {
//!     subnet: "10.255.0.0/16".parse()?,
//!     gateway: "10.255.0.1".parse()?,
//! });
//! spec.nodes.insert("node2".into(), "192.168.50.12".parse()?);
//! spec.local.push(LocalEndpoint {
//!     netns: "vote.1".into(),
//!     ifname: "eth0".into(),
//!     addr: "10.255.0.5".parse()?,
//!     mac: None, // 02:42:0a:ff:00:05
//!     extra_addrs: Vec::new(),
//! });
//! spec.remote.push(RemoteEndpoint {
//!     addr: "10.255.0.6".parse()?,
//!     mac: None,
//!     extra_addrs: Vec::new(),
//!     node: "node2".into(),
//! });
//! let overlay = Overlay::new(&spec)?;
//! let node = Netns::current()?;
//! let observed = vipmesh_overlay::observe(&node, &overlay)?;
//! let plan = vipmesh_overlay::plan(&overlay, &observed);
//! print!("{plan}");
//! vipmesh_overlay::apply(&node, &plan)?;
//! // A second sync finds nothing to do.
//! assert!(vipmesh_overlay::sync(&node, &overlay)?.is_empty());
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod apply;
mod error;
mod model;
mod plan;

pub use apply::{ApplyReport, apply, observe, sync, teardown};
pub use error::Error;
pub use model::{
    LocalEndpoint, LocalEp, MAX_MTU, MIN_MTU_V4, MIN_MTU_V6, Overlay, OverlaySpec, RemoteEndpoint,
    RemoteEp, Subnet, SubnetSpec, VETH_PREFIX, VXLAN_OVERHEAD_V4, VXLAN_OVERHEAD_V6, mac_for,
    overlay_mtu_for, veth_name_for,
};
pub use plan::{
    LinkSettings, Ns, Observed, ObservedEndpoint, ObservedLink, Plan, Step, plan, plan_teardown,
};
pub use vipmesh_netns::rtnl::Mac;

#[cfg(test)]
mod tests;
