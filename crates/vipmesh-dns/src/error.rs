//! The one error type of this crate.

use std::io;
use std::net::{IpAddr, SocketAddr};

use crate::Transport;

/// Errors of `vipmesh-dns`: bad table input (names, zone, addresses) and server start-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The zone is not a valid DNS name for a service-discovery zone.
    #[error("invalid DNS zone {value:?}: {reason}")]
    InvalidZone {
        /// The rejected zone, as given.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A service name is not a valid DNS label.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidName {
        /// Which input carried the name (e.g. `"service name"`).
        field: &'static str,
        /// The rejected name, as given.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Two services have the same name (names compare case-insensitively, as DNS does).
    #[error("duplicate service name {name:?}")]
    DuplicateService {
        /// The name given twice.
        name: String,
    },
    /// [`DnsTableBuilder::tasks`](crate::DnsTableBuilder::tasks) named a service that was not
    /// declared before.
    #[error("{field}: unknown service {service:?} (declare it with vip() or dnsrr() first)")]
    UnknownService {
        /// Which input carried the name.
        field: &'static str,
        /// The unknown service name.
        service: String,
    },
    /// An address list contains the same address twice.
    #[error("service {service:?}: duplicate address {addr} in {field}")]
    DuplicateAddress {
        /// The service.
        service: String,
        /// Which list (`"vips"` or `"tasks"`).
        field: &'static str,
        /// The repeated address.
        addr: IpAddr,
    },
    /// A VIP-mode service was given no VIP.
    #[error("service {service:?}: {field} must not be empty")]
    EmptyAddresses {
        /// The service.
        service: String,
        /// Which list (`"vips"`).
        field: &'static str,
    },
    /// The server could not run its setup inside the network namespace.
    #[error("DNS server cannot enter network namespace {netns}")]
    Netns {
        /// The namespace (its path, or a description of the fd).
        netns: String,
        /// The netns error (`setns(2)` errno kept).
        #[source]
        source: vipmesh_netns::Error,
    },
    /// Binding a listening socket failed (address in use, address not available, ...).
    #[error("cannot bind DNS {transport} socket on {addr}")]
    Bind {
        /// UDP or TCP.
        transport: Transport,
        /// The address that was bound.
        addr: SocketAddr,
        /// The OS error (errno kept).
        #[source]
        source: io::Error,
    },
    /// Another I/O step of the server start-up failed.
    #[error("DNS server: {op} failed")]
    Io {
        /// What was being done (`"build tokio runtime"`, `"spawn server thread"`, ...).
        op: &'static str,
        /// The OS error (errno kept).
        #[source]
        source: io::Error,
    },
    /// A server limit is out of range (zero, or beyond what the runtime can count).
    #[error("invalid DNS server limit {field} = {value}: {reason}")]
    InvalidLimit {
        /// Which [`Limits`](crate::Limits) field.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The server thread panicked; it no longer answers.
    #[error("DNS server thread panicked")]
    ServerPanicked,
}

impl Error {
    /// True when binding failed because the address is already in use (`EADDRINUSE`).
    pub fn is_addr_in_use(&self) -> bool {
        matches!(self, Error::Bind { source, .. } if source.kind() == io::ErrorKind::AddrInUse)
    }

    /// True when binding failed because the address is not local in that namespace
    /// (`EADDRNOTAVAIL`).
    pub fn is_addr_not_available(&self) -> bool {
        matches!(self, Error::Bind { source, .. }
            if source.kind() == io::ErrorKind::AddrNotAvailable)
    }

    /// True when the network namespace does not exist (any more).
    pub fn is_netns_not_found(&self) -> bool {
        matches!(self, Error::Netns { source, .. } if source.is_not_found())
    }
}
