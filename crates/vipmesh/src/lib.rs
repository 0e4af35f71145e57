//! vipmesh: the kernel as the load balancer of a container runtime.
//!
//! A runtime describes what one node must hold as a [`model::NodeState`]: its networks, each
//! with its load-balancer namespace, subnets (v4, v6 or both), fwmark range and services. A
//! [`Controller`] observes every namespace once per sync, [plans](plan::plan) the difference as
//! typed data grouped by namespace, and applies exactly that plan (one `iptables-restore` per
//! namespace and family, ordered IPVS netlink operations, addresses over rtnetlink). Applying
//! the same state twice changes nothing; fwmarks are recorded in the kernel twice (rule
//! comments and the IPVS services themselves) and restored after a restart; removed backends
//! drain before they are deleted; several networks share one namespace without touching each
//! other.
//!
//! The layout is libnetwork's: in the LB namespace, each VIP is an address of its interface,
//! a mangle `MARK` rule steers it into an IPVS fwmark service whose real servers are the
//! tasks (Masq), and a `-m ipvs --ipvs` SNAT brings replies back. See [`rules`] for the
//! exact rules and the README for the sysctls.
//!
//! # Examples
//! ```
//! use vipmesh::model::*;
//! use vipmesh::plan::{plan, DrainBook, KernelVersion, NodeObserved, NsObserved};
//!
//! let net = Network::new("demo", "10.0.0.0/24".parse()?, "lb-demo", "eth0",
//!     "10.0.0.2".parse().unwrap())?;
//! let vote = Service::vip("vote", "10.0.0.9".parse().unwrap(),
//!     &["10.0.0.10".parse().unwrap(), "10.0.0.11".parse().unwrap()])?;
//! let node = NodeState::single(NetworkState::new(net, vec![vote])?)?;
//! // Against an empty namespace the plan creates FWM 256 with both tasks, and the rules.
//! let mut seen = NodeObserved::default();
//! seen.namespaces.insert("lb-demo".into(), NsObserved::empty(KernelVersion { major: 6, minor: 1 }));
//! let p = plan(&node, &seen, &DrainBook::default(), 0)?;
//! let text = p.to_string();
//! assert!(text.contains("ipvs add-service FWM 256 rr (demo/vote)"));
//! assert!(text.contains("ipvs add-dest FWM 256 -> 10.0.0.10:0 Masq weight 1 (demo/vote)"));
//! assert!(text.contains("-A VIPMESH-demo-MARK -d 10.0.0.9/32"));
//! # Ok::<(), vipmesh::Error>(())
//! ```
#![deny(missing_docs)]

pub mod apply;
pub mod controller;
pub mod dataplane;
#[cfg(feature = "dns")]
pub mod dns;
mod error;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod ingress;
pub mod model;
pub mod nft_rules;
pub mod plan;
pub mod rules;
mod wire;
#[cfg(feature = "xdp")]
pub mod xdp_mesh;

pub use apply::{Report, StepReport};
pub use controller::{Controller, ControllerConfig, ObjectStatus, ObserveMode, SyncKind};
pub use error::Error;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_nft;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
