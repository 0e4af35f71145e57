//! Test support for vipmesh (`publish = false`): what privileged tests, demos and benchmarks
//! share, kept out of the library crates.
//!
//! - [`require`] / [`Requirement`]: the one skip policy. A privileged test that cannot run
//!   here FAILS with the reason; it never returns early and passes.
//! - [`eventually`]: the one readiness poller (bounded; panics with what it waited for and
//!   the last error); [`within`] returns that failure instead, for demos.
//! - [`TestNetns`], [`Topology`]: a fresh namespace per test, and namespaces, bridges, veths,
//!   addresses, processes and temp dirs, all deleted on drop (also on panic).
//! - [`vip`]: the VIP lab of the mesh's guest tests and demos (busybox httpd, greeters).
//! - [`ingress`]: the ingress-mesh lab (a LAN, nodes, a client, tasks on the nodes).
//! - [`cluster`]: that mesh driven by processes: an etcd cluster and one `vipmesh-agent`
//!   per node in a control namespace, processes killed on drop, steady background traffic.
//! - [`golden`]: golden-file comparison (`BLESS=1` writes the new text).
//! - With the `xdp` feature: `xdp_lab` (the XDP end-to-end lab) and `packet` (frame
//!   builders and a checker for `BPF_PROG_TEST_RUN` fixtures).
//!
//! This crate must not depend on `vipmesh` (the mesh crate's tests use it: a dependency back
//! would give two copies of its types); the VIP lab hands out plain values instead.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use vipmesh_testkit::{Requirement, Topology, eventually, require};
//!
//! require(&[Requirement::Netns, Requirement::Tool("busybox")]);
//! let mut topo = Topology::new("doc");
//! let sw = topo.bridge_ns("sw");
//! let a = topo.ns("a");
//! topo.attach(&sw, &a, "eth0", "10.0.0.1/24");
//! eventually(Duration::from_secs(5), "eth0 up in a", || {
//!     let out = topo.sh(&a, "ip -o link show eth0");
//!     if out.contains("UP") { Ok(()) } else { Err(out) }
//! });
//! ```
#![deny(missing_docs)]
// Test support fails loudly: a setup step that cannot be done panics with its reason.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

pub mod cluster;
mod golden;
pub mod ingress;
mod netns;
#[cfg(feature = "xdp")]
pub mod packet;
mod poll;
mod require;
pub mod vip;
#[cfg(feature = "xdp")]
pub mod xdp_lab;

pub use golden::golden;
pub use netns::{TestNetns, Topology, sh_in};
pub use poll::{POLL_INTERVAL, eventually, within};
pub use require::{Requirement, require, unmet};
