//! The one error type of this crate.

use std::fmt::Display;

/// Errors of the mesh API. Validation errors name the field and the value; kernel errors
/// keep the backend's error (and its errno) as their source.
#[derive(Debug, thiserror::Error)]
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
    #[error("state file, line {line} column {column}: {message}")]
    StateFile {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde's message.
        message: String,
    },
    /// No free fwmark is left in the configured range.
    #[error("fwmark range {first:#x}..={last:#x} is exhausted ({needed} services need a mark)")]
    FwmarkExhausted {
        /// First mark of the range.
        first: u32,
        /// Last mark of the range.
        last: u32,
        /// How many services need one.
        needed: usize,
    },
    /// The load-balancer namespace does not exist.
    #[error("load-balancer namespace {netns:?} does not exist")]
    MissingNamespace {
        /// The namespace name or path.
        netns: String,
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
