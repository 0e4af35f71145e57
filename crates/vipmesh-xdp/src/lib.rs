//! The XDP fast path: loads, attaches and drives the vipmesh eBPF programs with aya.
//!
//! Consistent hashing (Maglev) in XDP that keeps the client's source address, in two modes:
//!
//! - **NAT** ([`ForwardMode::Nat`], backends on this node): `xdp_lb` on the node's uplink
//!   rewrites the destination to the backend and redirects the frame through a DEVMAP into the
//!   task's veth; `tc_rev` on that veth's node side rewrites replies back to VIP:port and
//!   redirects them to the uplink.
//! - **Encap-DSR** ([`ForwardMode::Encap`]): `xdp_lb` prepends an IPIP (or IP6IP6) header
//!   towards the backend; `tc_decap` in the task strips it and translates the published port
//!   to the target port, `tc_egress` translates replies back, and replies go straight to the
//!   client. The VIP must be on the task's `lo`.
//!
//! One service may mix both ([`Dataplane::upsert_service_modes`]): the ingress mesh of
//! `vipmesh::xdp_mesh` NATs to the tasks on this node and encapsulates to the tasks on other
//! nodes. The Maglev slot of a flow hashes its source address, ports, protocol and family but
//! not its destination address, so a flow to a published port picks the same task whichever
//! node's address it was sent to (every node builds the same table from the same backend keys).
//!
//! The C sources are in `ebpf/` (layouts in `ebpf/vipmesh_abi.h`, checked against [`abi`] by
//! a test that reads the object's BTF), compiled by `build.rs` with clang.
//!
//! # Verdicts (the contract of `xdp_lb`)
//!
//! | packet | verdict |
//! | --- | --- |
//! | not IPv4/IPv6, truncated headers, IPv4 IHL < 5, TCP data offset < 5 | `XDP_PASS` (the kernel validates and drops it; counted `pass_malformed`/`pass_not_ip`) |
//! | IPv4 options, IPv6 extension headers (hop-by-hop, routing, destination options, AH, mobility) | `XDP_PASS` (`pass_options`) |
//! | fragments (IPv4 MF/offset, IPv6 fragment header) | `XDP_PASS` (`pass_fragment`) |
//! | ICMP and other protocols | `XDP_PASS` (`pass_proto`) |
//! | TCP/UDP not for a service | `XDP_PASS` (`pass_not_ours`) |
//! | for a service with **no backend** (empty table) | `XDP_DROP` (`drop_no_backend`), as IPVS drops for a service without destinations |
//! | for a service: NAT | `XDP_REDIRECT` via `tx_ports` (`redirect_nat`) |
//! | for a service: encap | `XDP_REDIRECT` via `tx_ports` (`redirect_encap`) |
//!
//! # Flow state
//!
//! The LRU `flows` table pins a client 5-tuple to its backend (it survives table changes while
//! the backend remains; a flow remembers its backend's generation, so it never follows a
//! reused backend id). It is the only per-flow state, for both directions: in NAT mode `tc_rev`
//! finds a reply's flow through `rev_vips` (backend address:port → the VIPs it serves, at most
//! [`abi::REV_VIPS`]) and restores the VIP from the flow's key, so a new flow costs one LRU
//! insert. A flow is forgotten after [`Config::tcp_idle`]/[`Config::udp_idle`] without packets
//! in either direction, on RST from either side, and after [`Config::close_timeout`] once
//! either side sent FIN; a new SYN on a closing tuple is a new flow. A SYN-ACK for a flow that
//! already saw a reply drops the flow (a non-balanced connection reusing the tuple). LRU
//! pressure evicts the oldest flows; a mid-stream TCP packet without state is counted
//! (`flow_miss_midstream`) and re-hashed through Maglev, so it still reaches the same backend
//! while the table is unchanged.
//!
//! # Requirements
//!
//! Linux 6.6+ (tcx links for tc programs; XDP and DEVMAP from 5.x), `CAP_BPF` (or
//! `CAP_SYS_ADMIN`) and `CAP_NET_ADMIN`. A veth that receives redirected frames needs NAPI on
//! its peer: attach [`Program::XdpPass`] there (or enable GRO). Senders on the same host must
//! disable TX checksum offload (XDP cannot complete partial checksums). In encap mode attach
//! [`Program::TcEgress`] in each task as well as [`Program::TcDecap`]: besides the port
//! translation it clamps the MSS of the task's SYN-ACKs to [`Config::encap_mtu`], which is what
//! keeps the client's segments small enough to wrap.
#![deny(missing_docs)]

pub mod abi;
pub mod btf;
mod dataplane;
mod error;
mod loader;
pub mod maps;
mod model;
pub mod sys;
#[cfg(feature = "test-util")]
pub mod testing;

pub use dataplane::{Dataplane, ServiceReport};
pub use error::Error;
pub(crate) use loader::OBJECT;
pub use loader::{
    AttachMode, Attachment, FastPath, LoadOptions, Pinning, Program, TestRunOutput, verdict,
};
pub use maps::{Counters, KernelMaps, MapLayer, StatsMap, TaskPortMap};
pub use model::{
    Backend, Config, Egress, ForwardMode, MacAddr, Proto, ServiceKey, ServiceSpec, Stats,
    addr_to_abi,
};
pub use vipmesh_maglev::TableSize;

/// Whether this build carries the compiled eBPF object (false when clang was missing).
pub fn object_available() -> bool {
    !OBJECT.is_empty()
}
