//! The per-node vipmesh agent: the cluster's desired state lives in etcd
//! ([`layout`]: `/vipmesh/v1/…`); each node's agent reads it ([`store`]), assembles its
//! node's [`vipmesh::model::NodeState`] and keeps the node equal to it through the node
//! controller ([`agent`]).
#![deny(missing_docs)]

pub mod agent;
pub mod cli;
mod error;
pub mod layout;
pub mod metrics;
pub mod store;
pub mod vips;

pub use error::Error;
