//! The one error type of this crate.

use std::net::IpAddr;

use vipmesh_netns::rtnl::Mac;

/// Errors of the overlay crate: validation (before any kernel write) and kernel failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The VNI is 0 or above 2^24-1.
    #[error("vni: {value} is outside 1..=16777215")]
    InvalidVni {
        /// The rejected value.
        value: u32,
    },
    /// The MTU is out of range.
    #[error("mtu: {value} is outside {min}..={max} ({reason})")]
    InvalidMtu {
        /// The rejected value.
        value: u32,
        /// The smallest accepted value.
        min: u32,
        /// The largest accepted value.
        max: u32,
        /// Why this range.
        reason: &'static str,
    },
    /// A field holds a malformed value (a subnet, a name, a prefix).
    #[error("{field}: invalid value {value:?}: {reason}")]
    InvalidField {
        /// The field, e.g. `"subnets[0].subnet"`.
        field: String,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An address lies in none of the overlay subnets.
    #[error("{field}: {addr} is in no overlay subnet")]
    OutsideSubnets {
        /// The field.
        field: String,
        /// The address.
        addr: IpAddr,
    },
    /// Two endpoints (or an endpoint and a gateway) share an IP address.
    #[error("{second}: address {addr} is already used by {first}")]
    DuplicateIp {
        /// The address.
        addr: IpAddr,
        /// The first holder.
        first: String,
        /// The second holder.
        second: String,
    },
    /// Two endpoints share a MAC address.
    #[error("{second}: MAC {mac} is already used by {first}")]
    DuplicateMac {
        /// The MAC.
        mac: Mac,
        /// The first holder.
        first: String,
        /// The second holder.
        second: String,
    },
    /// Two local endpoints would get one overlay-side veth name.
    #[error("{second}: veth name {name} is already used by {first}")]
    DuplicateVeth {
        /// The name.
        name: String,
        /// The first holder.
        first: String,
        /// The second holder.
        second: String,
    },
    /// A remote endpoint names a node that has no underlay address.
    #[error("{endpoint}: node {node:?} has no underlay address")]
    NodeWithoutUnderlay {
        /// The endpoint.
        endpoint: String,
        /// The node it names.
        node: String,
    },
    /// Two nodes have one underlay address.
    #[error("nodes {first:?} and {second:?} have the same underlay address {addr}")]
    DuplicateUnderlay {
        /// The address.
        addr: IpAddr,
        /// The first node.
        first: String,
        /// The second node.
        second: String,
    },
    /// A local endpoint's namespace does not exist.
    #[error("{endpoint}: network namespace {netns:?} does not exist")]
    EndpointNetnsMissing {
        /// The endpoint.
        endpoint: String,
        /// The namespace name.
        netns: String,
    },
    /// A kernel operation failed (the errno is in the source).
    #[error("{op}")]
    Kernel {
        /// What was being done (for apply: the plan step, as displayed).
        op: String,
        /// The namespace-crate error, with errno, namespace and object.
        #[source]
        source: vipmesh_netns::Error,
    },
}

impl Error {
    /// True for the validation errors, which are reported before any kernel write.
    pub fn is_validation(&self) -> bool {
        !matches!(self, Error::Kernel { .. })
    }

    pub(crate) fn kernel(op: impl Into<String>) -> impl FnOnce(vipmesh_netns::Error) -> Error {
        let op = op.into();
        move |source| Error::Kernel { op, source }
    }
}
