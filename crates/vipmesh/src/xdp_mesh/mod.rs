//! The XDP ingress mesh: a published port on every node, served by tasks on any node, and
//! **every task sees the real client address** (Swarm's mesh SNATs it away, moby#25526).
//!
//! Driven from the same ingress model as the IPVS mesh ([`crate::ingress::Ingress`]):
//!
//! - **derive** ([`derive()`], pure): each ingress-published port served by XDP
//!   ([`XdpMeshConfig::ports`]) becomes a fast-path service on this node's underlay address
//!   with **every task of the service on any node** as a backend, in canonical order
//!   (address, port), so every node builds the same Maglev table (same keys, whatever ids each
//!   node allocates; `vipmesh_maglev::MaglevTable::digest` agrees). The flow hash leaves the
//!   destination address out, so a flow picks the same task whichever node it enters.
//!   - a **local task** is a NAT backend: `xdp_lb` rewrites the destination to the task and
//!     redirects into the node-side peer of its veth; `tc_rev` on that peer restores the
//!     node's address on replies. (DSR is not possible here: a reply whose source is the
//!     node's own address is a martian when the node forwards it.)
//!   - a **remote task** is an encap backend: `xdp_lb` prepends an **IPIP** header (outer
//!     source: this node, outer destination: the task itself) and sends it to the task's
//!     node's MAC through the uplink. That node routes it like any packet to a local address
//!     of a task (no tunnel device, no module, no port to agree on); the task's `tc_decap`
//!     strips it and translates the published port to the target port, and the task replies
//!     straight to the client (DSR) from the entry node's address, which it holds on `lo`.
//!     IPIP rather than GUE/FOU: 20 bytes instead of 28, no FOU port or receive socket on
//!     the nodes, and the receiver needs nothing but routing; GUE's one advantage, RSS
//!     spreading by outer UDP port, does not matter on veths and one-queue links.
//!   - MSS clamping: `xdp_lb` clamps the MSS of client SYNs and `tc_egress` that of the
//!     task's SYN-ACKs to `underlay_mtu - 60`, so encapsulated segments fit.
//! - **observe** ([`XdpMesh::observe`]): interfaces (ifindex, MAC) of the uplink, the host
//!   veths and the tasks; the other nodes' MACs from the neighbour table; the services, task
//!   ports and attachments of the fast path (restored from the pinned maps after a restart);
//!   our addresses on the tasks' `lo`; the sysctls.
//! - **plan** ([`plan()`], pure): typed [`XdpStep`]s with a `Display`; applying a plan and
//!   observing again plans nothing.
//! - **apply** ([`XdpMesh::apply`]): each step once, each namespace through its
//!   [`vipmesh_netns::Netns`] handle.
//!
//! # What is set in the kernel (and owned by us)
//!
//! - host namespace: `xdp_lb` on the uplink; `tc_rev` (tcx ingress) on each local task's
//!   host veth; `net.ipv4.ip_forward=1` (encapsulated packets to local tasks are forwarded);
//!   `net.ipv4.conf.<host veth>.rp_filter=2` (a task's DSR replies carry another node's
//!   address as source).
//! - each local task: `xdp_pass` on its interface (a veth needs NAPI on the peer of a
//!   redirect target), `tc_decap` (tcx ingress) and `tc_egress` (tcx egress); the other
//!   nodes' underlay addresses on `lo` (/32, `IFA_PROTO` vipmesh); `arp_ignore=1`,
//!   `arp_announce=2` (`net.ipv4.conf.all`).
//! - maps and links pinned under the pin root (`/sys/fs/bpf/vipmesh/<node>/vipmesh/`): a
//!   restarted controller reopens the maps (ids and flows kept) and takes over the pinned
//!   links atomically, so traffic never loses the fast path.
//!
//! - the value each sysctl write replaced, in a record file (`/run/vipmesh/xdp/<node>/`,
//!   [`XdpMeshConfig::state_dir`]), written before the sysctl: a task that leaves the mesh
//!   gets its values back (if ours are still there), also after a restart or a kill -9.
//!
//! Teardown ([`XdpMesh::teardown`]) detaches and unpins our links, removes our maps and our
//! addresses and puts back the recorded sysctl values, except the host's forwarding
//! ([`KEPT_SYSCTLS`]: other dataplanes of the node need it); it touches no other program
//! (links are ours by their pin, never by name). [`XdpMesh::apply`] records where the mesh
//! lives (host namespace, pin root, sysctl record, task namespaces) under
//! `/run/vipmesh/xdp/<node>/mesh.json`, so a controller restarted with a state whose ingress
//! no longer has `xdp` tears the old mesh down too ([`XdpMesh::teardown_left`]).
//!
//! # Requirements and limits
//!
//! Linux 6.6+ (tcx); an IPv4 underlay, plus IPv6 where [`XdpMeshConfig::underlay_v6`] gives
//! the nodes' IPv6 addresses (IPv6-in-IPv6 then, `net.ipv6.conf.all.forwarding=1`); nothing
//! here needs IPVS. Each node's task addresses must
//! be routed to the task's veth in the node's host namespace (the runtime's job, as with any
//! bridge-less veth CNI). Senders on the same host as the node must turn TX checksum offload
//! off (XDP cannot complete partial checksums); real NIC traffic is complete. A redirect into
//! a veth needs NAPI on its peer, which is why `xdp_pass` goes on each task's interface; on a
//! veth uplink the LAN side's peer needs it too (GRO on, or an XDP program).
#![allow(clippy::module_name_repetitions)]

mod apply;
mod config;
mod derive;
mod plan;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

pub use apply::{XdpApplyReport, XdpMesh};
pub use config::{AttachRequest, PortDataplane, XdpMeshConfig};
pub use derive::{
    DesiredBackend, DesiredService, DesiredTask, IP6IP6_OVERHEAD, IPIP_OVERHEAD, Via, XdpDesired,
    derive,
};
pub use plan::{
    AttachKey, BackendModes, KEPT_SYSCTLS, LinkFacts, ModedSpec, SavedSysctl, XdpObserved, XdpPlan,
    XdpStep, plan, resolve,
};
