//! vipmesh: the kernel as the load balancer of a container runtime.
//!
//! A runtime describes a network and its services as a [`model::DesiredState`]; a [`Mesh`]
//! observes the kernel of the network's load-balancer namespace, [plans](plan::plan) the
//! difference as data, and applies it in one batch per backend (one `iptables-restore`, one
//! IPVS netlink batch). Applying the same state twice changes nothing; fwmarks are recorded in
//! the kernel and restored after a restart; removed backends drain before they are deleted.
//!
//! The layout is libnetwork's: in the LB namespace, each VIP is an address of its interface,
//! a mangle `MARK` rule steers it into an IPVS fwmark service whose real servers are the
//! tasks (Masq), and a `-m ipvs --ipvs` SNAT brings replies back. See [`rules`] for the
//! exact rules and the README for the sysctls.
//!
//! # Examples
//! ```
//! use vipmesh::model::*;
//! use vipmesh::plan::{plan, DrainBook, Observed};
//!
//! let net = Network {
//!     name: "demo".into(),
//!     subnet: "10.0.0.0/24".parse()?,
//!     lb_netns: "lb-demo".into(),
//!     lb_interface: "eth0".into(),
//!     lb_addr: "10.0.0.2".parse().unwrap(),
//! };
//! let vote = Service::vip("vote", "10.0.0.9".parse().unwrap(),
//!     &["10.0.0.10".parse().unwrap(), "10.0.0.11".parse().unwrap()])?;
//! let desired = DesiredState::new(net, vec![vote], Options::default())?;
//! // Against an empty kernel the plan creates FWM 256 with both tasks.
//! let p = plan(&desired, &Observed::default(), &DrainBook::default(), 0)?;
//! assert!(p.to_string().contains("ipvs add-service FWM 256 rr (vote)"));
//! assert!(p.to_string().contains("ipvs add-dest FWM 256 -> 10.0.0.10:0 Masq weight 1 (vote)"));
//! # Ok::<(), vipmesh::Error>(())
//! ```
#![deny(missing_docs)]

pub mod dataplane;
#[cfg(feature = "dns")]
pub mod dns;
mod error;
pub mod mesh;
pub mod model;
pub mod plan;
pub mod rules;

pub use error::Error;
pub use mesh::{KernelMesh, Mesh, Report, StepReport};

#[cfg(test)]
mod tests;
