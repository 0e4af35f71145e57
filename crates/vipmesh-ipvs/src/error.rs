//! The crate's one error type.

use std::io;

use crate::codec::{DecodeError, EncodeError};
use crate::model::{DestKey, ServiceKey};

/// Which kind of operation failed (for errors that are not about one object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Resolving the "IPVS" generic netlink family.
    ResolveFamily,
    /// `IPVS_CMD_GET_SERVICE` dump.
    DumpServices,
    /// `IPVS_CMD_FLUSH`.
    Flush,
    /// `IPVS_CMD_GET_CONFIG`.
    GetTimeouts,
    /// `IPVS_CMD_SET_CONFIG`.
    SetTimeouts,
    /// `IPVS_CMD_GET_INFO`.
    GetInfo,
    /// `IPVS_CMD_ZERO`.
    Zero,
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value failed validation (bad input; nothing was sent to the kernel).
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// The value, rendered.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// `IPVS_CMD_NEW_SERVICE` failed.
    #[error("add service {service}: {source}")]
    AddService {
        /// The service.
        service: ServiceKey,
        /// The kernel's error (errno kept).
        #[source]
        source: io::Error,
    },
    /// `IPVS_CMD_SET_SERVICE` failed.
    #[error("update service {service}: {source}")]
    UpdateService {
        /// The service.
        service: ServiceKey,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// `IPVS_CMD_DEL_SERVICE` failed.
    #[error("delete service {service}: {source}")]
    DelService {
        /// The service.
        service: ServiceKey,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// `IPVS_CMD_GET_SERVICE` failed.
    #[error("get service {service}: {source}")]
    GetService {
        /// The service.
        service: ServiceKey,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// `IPVS_CMD_NEW_DEST` failed.
    #[error("add dest {dest} to {service}: {source}")]
    AddDest {
        /// The service.
        service: ServiceKey,
        /// The destination.
        dest: DestKey,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// `IPVS_CMD_SET_DEST` failed.
    #[error("update dest {dest} of {service}: {source}")]
    UpdateDest {
        /// The service.
        service: ServiceKey,
        /// The destination.
        dest: DestKey,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// `IPVS_CMD_DEL_DEST` failed.
    #[error("delete dest {dest} of {service}: {source}")]
    DelDest {
        /// The service.
        service: ServiceKey,
        /// The destination.
        dest: DestKey,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// `IPVS_CMD_GET_DEST` dump failed.
    #[error("list dests of {service}: {source}")]
    DumpDests {
        /// The service.
        service: ServiceKey,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// Another operation failed in the kernel.
    #[error("{op:?}: {source}")]
    Kernel {
        /// Which.
        op: OpKind,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The generic netlink family "IPVS" does not exist: the `ip_vs` module is not loaded
    /// and `modprobe ip_vs` did not help (or IPVS is not built into this kernel).
    #[error(
        "IPVS is not available in this kernel (generic netlink family \"IPVS\" not found; tried `modprobe ip_vs`)"
    )]
    IpvsMissing {
        /// The controller's error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused with `EPERM`: IPVS needs `CAP_NET_ADMIN` in the user namespace
    /// that owns the network namespace.
    #[error("permission denied for {op}: IPVS needs CAP_NET_ADMIN over the network namespace")]
    PermissionDenied {
        /// The operation, rendered with its object.
        op: String,
        /// The kernel's error (`EPERM`).
        #[source]
        source: io::Error,
    },
    /// A socket call failed.
    #[error("netlink {call}: {source}")]
    Socket {
        /// Which call (`socket`, `bind`, `send`, `recv`, `setsockopt`).
        call: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Entering the network namespace failed.
    #[error("network namespace: {source}")]
    Netns {
        /// The netns error.
        #[source]
        source: vipmesh_netns::Error,
    },
    /// A reply from the kernel did not parse.
    #[error("malformed netlink reply: {source}")]
    Decode {
        /// Where and what.
        #[source]
        source: DecodeError,
    },
    /// A request could not be framed.
    #[error("cannot encode request: {source}")]
    Encode {
        /// Why.
        #[source]
        source: EncodeError,
    },
    /// The reply sequence did not match the requests (a kernel or socket-sharing bug).
    #[error("unexpected netlink reply: {what}")]
    Protocol {
        /// What was wrong.
        what: String,
    },
    /// A line of `ipvsadm -S` text did not parse.
    #[error("line {line}: {message}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        message: String,
    },
}

impl Error {
    /// The errno from the kernel, if this is a kernel error.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::AddService { source, .. }
            | Error::UpdateService { source, .. }
            | Error::DelService { source, .. }
            | Error::GetService { source, .. }
            | Error::AddDest { source, .. }
            | Error::UpdateDest { source, .. }
            | Error::DelDest { source, .. }
            | Error::DumpDests { source, .. }
            | Error::Kernel { source, .. }
            | Error::IpvsMissing { source }
            | Error::PermissionDenied { source, .. }
            | Error::Socket { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The service or destination does not exist (`ESRCH` for services, `ENOENT` for
    /// destinations, as `net/netfilter/ipvs/ip_vs_ctl.c` returns them).
    ///
    /// Note: `NEW_SERVICE` with an unknown scheduler also returns `ENOENT`.
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(libc::ESRCH) | Some(libc::ENOENT))
            && !matches!(self, Error::IpvsMissing { .. })
    }

    /// The service or destination already exists (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The kernel said `EPERM`.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Error::PermissionDenied { .. })
    }
}
