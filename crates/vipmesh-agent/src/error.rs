//! The crate's one error type.

/// What can go wrong in the agent, the store or the key layout.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An etcd request failed (unreachable, timed out, rejected).
    #[error("etcd {op}: {source}")]
    Etcd {
        /// The request (`range /vipmesh/v1/`, `txn cluster apply`, `watch`, …).
        op: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// An etcd request did not answer in time.
    #[error("etcd {op}: no answer within {timeout_ms} ms")]
    Timeout {
        /// The request.
        op: String,
        /// The deadline.
        timeout_ms: u64,
    },
    /// `cluster apply` lost the compare-and-swap: someone changed the desired state after
    /// the revision the apply was based on. Nothing was written.
    #[error(
        "cluster apply: the desired state changed after revision {expected} (now modified at revision {current}); nothing was written"
    )]
    CasLost {
        /// The revision the apply was based on.
        expected: i64,
        /// The newest modification revision of the desired state now.
        current: i64,
    },
    /// A value to be written or read is invalid (named by its key).
    #[error("{key}: {reason}")]
    Invalid {
        /// The etcd key (or the field of a cluster file).
        key: String,
        /// Why.
        reason: String,
    },
    /// Another node is registered under this node's name (a different record under a live
    /// lease): the agent refuses to start rather than take over its key.
    #[error(
        "node {node:?} is registered by another node ({holder}); give this node another --node name, or stop the other agent and wait for its lease to expire"
    )]
    NodeNameTaken {
        /// The name.
        node: String,
        /// The other node's record, as stored.
        holder: String,
    },
    /// The watch was cancelled because its start revision was compacted.
    #[error("watch from revision {from}: compacted up to {compact_revision}")]
    Compacted {
        /// The revision the watch started from.
        from: i64,
        /// The compaction revision.
        compact_revision: i64,
    },
    /// The node controller failed.
    #[error("controller {op}: {source}")]
    Controller {
        /// What the agent asked of it.
        op: &'static str,
        /// Its error.
        #[source]
        source: Box<vipmesh::Error>,
    },
    /// An input file could not be read (a cluster file).
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The error, with its errno.
        #[source]
        source: std::io::Error,
    },
    /// An I/O error (the metrics listener).
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The error, with its errno.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The command line's exit status for this error: 2 bad input (an invalid or
    /// unreadable file or value), 3 a lost compare-and-swap (someone else changed the
    /// cluster's state first: read it again), 4 this node's name is registered by another
    /// node, 1 anything else (etcd unreachable, I/O).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Invalid { .. } | Error::File { .. } => 2,
            Error::CasLost { .. } => 3,
            Error::NodeNameTaken { .. } => 4,
            _ => 1,
        }
    }

    /// Names the etcd endpoints in an etcd request's error (`range /vipmesh/ at
    /// https://10.0.0.1:2379`), for a one-shot command whose reader did not see them.
    #[must_use]
    pub fn at_endpoints(self, endpoints: &[String]) -> Error {
        let at = |op: String| format!("{op} at {}", endpoints.join(","));
        match self {
            Error::Etcd { op, source } => Error::Etcd { op: at(op), source },
            Error::Timeout { op, timeout_ms } => Error::Timeout {
                op: at(op),
                timeout_ms,
            },
            e => e,
        }
    }

    pub(crate) fn etcd(op: impl Into<String>, source: etcd_client::Error) -> Error {
        Error::Etcd {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
