//! The one error type of this crate.

use std::fmt::Display;

/// Errors of the mesh API. Validation errors name the field and the value; kernel errors
/// keep the backend's error (and its errno) as their source and name the namespace.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value of the desired state is invalid.
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        /// The field, e.g. `service.vip`.
        field: &'static str,
        /// The rejected value, as text.
        value: String,
        /// Why.
        reason: String,
    },
    /// The state file does not parse.
    #[error("state file, line {line} column {column}{}: {message}", at_path(path))]
    StateFile {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// Where in the document, e.g. `networks[1].services[0].backends[0].addr = "10.0.0.300"`
        /// (with the rejected value when it is a scalar); empty at the top level or when the
        /// text is not JSON at all.
        path: String,
        /// serde's message.
        message: String,
    },
    /// No free fwmark is left in a network's range.
    #[error(
        "network {network}: fwmark range {first:#x}..={last:#x} is exhausted ({needed} services need a mark)"
    )]
    FwmarkExhausted {
        /// The network.
        network: String,
        /// First mark of the range.
        first: u32,
        /// Last mark of the range.
        last: u32,
        /// How many services need one.
        needed: usize,
    },
    /// A namespace of the state does not exist.
    #[error("namespace {netns:?} does not exist")]
    MissingNamespace {
        /// The namespace name or path.
        netns: String,
    },
    /// A published port cannot be reserved: a local process holds it (`EADDRINUSE`), or the
    /// socket could not be made (e.g. `EMFILE`: raise `RLIMIT_NOFILE`; one descriptor per
    /// published port and family).
    #[error("cannot reserve {protocol}/{port} ({family}) in {netns:?}")]
    PortInUse {
        /// The namespace.
        netns: String,
        /// The address family of the socket that could not be bound.
        family: crate::model::Family,
        /// The protocol.
        protocol: crate::model::Protocol,
        /// The port.
        port: u16,
        /// The cause (errno kept, `EADDRINUSE`).
        #[source]
        source: std::io::Error,
    },
    /// The ingress overlay could not be built.
    #[error("ingress overlay")]
    Overlay {
        /// The cause (errno kept).
        #[source]
        source: Box<vipmesh_overlay::Error>,
    },
    /// A step was not run because a step it depends on failed.
    #[error("held in {netns:?}: {reason}")]
    Held {
        /// The namespace.
        netns: String,
        /// Which step failed.
        reason: String,
    },
    /// An interface of the state does not exist in its namespace.
    #[error("interface {interface:?} does not exist in namespace {netns:?}")]
    MissingInterface {
        /// The namespace.
        netns: String,
        /// The interface.
        interface: String,
    },
    /// A saved drain book cannot be read.
    #[error("drain book {path}: {message}")]
    DrainBook {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// A service or network named by an incremental update does not exist.
    #[error("{kind} {name:?} does not exist")]
    UnknownObject {
        /// `network` or `service`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// Some steps of an apply failed; the report has a result per step. The kernel holds
    /// every step that succeeded; the next sync is a full one.
    #[error("{failed} of {total} steps failed; first: {first}")]
    StepsFailed {
        /// How many failed.
        failed: usize,
        /// How many ran.
        total: usize,
        /// The first failure, rendered with its causes.
        first: String,
        /// The whole report.
        report: Box<crate::apply::Report>,
    },
    /// A network namespace operation failed.
    #[error("network namespace {netns:?}")]
    Netns {
        /// The namespace name or path.
        netns: String,
        /// The cause.
        #[source]
        source: vipmesh_netns::Error,
    },
    /// An IPVS operation failed.
    #[error("IPVS {op} in {netns:?}")]
    Ipvs {
        /// What was being done.
        op: String,
        /// The namespace.
        netns: String,
        /// The cause (errno kept).
        #[source]
        source: Box<vipmesh_ipvs::Error>,
    },
    /// A netfilter operation failed.
    #[error("netfilter {op} in {netns:?}")]
    Netfilter {
        /// What was being done.
        op: String,
        /// The namespace.
        netns: String,
        /// The cause.
        #[source]
        source: Box<vipmesh_netfilter::Error>,
    },
    /// An nftables operation failed (see [`vipmesh_nft::Error`]: a foreign table with our
    /// name, `nft` missing or too old, a transaction the kernel refused).
    #[error("nftables {op} in {netns:?}")]
    Nft {
        /// What was being done.
        op: String,
        /// The namespace.
        netns: String,
        /// The cause.
        #[source]
        source: Box<vipmesh_nft::Error>,
    },
    /// The DNS layer rejected a name or zone of the state.
    #[cfg(feature = "dns")]
    #[error("DNS {field} {value:?}")]
    Dns {
        /// The field (`dns.zone`, `service.name`).
        field: &'static str,
        /// The rejected value.
        value: String,
        /// The cause.
        #[source]
        source: Box<vipmesh_dns::Error>,
    },
    /// Another system call or command failed.
    #[error("{op} in {netns:?}")]
    System {
        /// What was being done.
        op: String,
        /// The namespace.
        netns: String,
        /// The cause (errno kept).
        #[source]
        source: std::io::Error,
    },
    /// The XDP ingress mesh: a kernel operation of the fast path failed.
    #[cfg(feature = "xdp")]
    #[error("xdp mesh: {op} in {netns:?}")]
    Xdp {
        /// What was being done (`load`, `attach xdp_lb to eth0`, `upsert tcp/10.0.0.1:8080`).
        op: String,
        /// The namespace.
        netns: String,
        /// The cause (errno kept inside).
        #[source]
        source: Box<vipmesh_xdp::Error>,
    },
    /// The XDP ingress mesh: the interface refuses XDP in the mode the user asked for.
    #[error("xdp mesh: {interface:?} in {netns:?} refuses {mode} XDP: {reason}")]
    XdpModeUnsupported {
        /// The namespace.
        netns: String,
        /// The interface.
        interface: String,
        /// The requested mode (`native`, `generic`).
        mode: String,
        /// The kernel's answer.
        reason: String,
    },
    /// The XDP ingress mesh: a local task's namespace lacks the interface (or its node-side
    /// peer) the mesh redirects into.
    #[error("xdp mesh: task namespace {netns:?} has no interface {interface:?}")]
    MissingTaskInterface {
        /// The task's namespace (or the node's, for the node-side peer).
        netns: String,
        /// The interface.
        interface: String,
    },
}

/// `, at <path>` for [`Error::StateFile`], or nothing.
fn at_path(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(", at {path}")
    }
}

impl Error {
    pub(crate) fn invalid(field: &'static str, value: impl Display, reason: &str) -> Error {
        Error::Invalid {
            field,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}
