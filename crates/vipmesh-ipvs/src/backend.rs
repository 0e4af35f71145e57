//! The interface the mesh programs IPVS through: [`IpvsBackend`], implemented by the real
//! [`crate::Client`] and by the test-only `Fake`, and the operations it applies ([`Op`]).

use std::io;

use crate::Error;
use crate::codec::ipvs::{Cmd, CmdAttr, IpvsMessage, NestFlag};
use crate::model::{
    DestEntry, DestKey, IpvsDest, IpvsService, ServiceEntry, ServiceKey, Timeouts, service_nest,
};

/// One change to the IPVS table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `ipvsadm -A`: add a service (`EEXIST` if present).
    AddService(IpvsService),
    /// `ipvsadm -E`: change a service's scheduler, flags or persistence (`ESRCH` if absent).
    UpdateService(IpvsService),
    /// `ipvsadm -D`: delete a service and its destinations (`ESRCH` if absent).
    DelService(ServiceKey),
    /// `ipvsadm -a`: add a destination (`ESRCH` without its service, `EEXIST` if present).
    AddDest(ServiceKey, IpvsDest),
    /// `ipvsadm -e`: change a destination (`ENOENT` if absent).
    UpdateDest(ServiceKey, IpvsDest),
    /// `ipvsadm -d`: delete a destination (`ENOENT` if absent).
    DelDest(ServiceKey, DestKey),
    /// `ipvsadm -C`: delete every service in the namespace. Use with care: it also removes
    /// services vipmesh does not own.
    Flush,
    /// `ipvsadm --set`: connection timeouts (0 leaves a value unchanged).
    SetTimeouts(Timeouts),
}

impl Op {
    /// Checks the operation before it is sent (what the kernel would reject with
    /// `EINVAL`/`ERANGE`, reported as a typed error naming the field instead).
    ///
    /// # Errors
    /// [`Error::Invalid`].
    pub fn validate(&self) -> Result<(), Error> {
        match self {
            Op::AddService(s) | Op::UpdateService(s) => s.validate(),
            Op::AddDest(svc, d) | Op::UpdateDest(svc, d) => d.validate_for(svc),
            Op::DelService(_) | Op::DelDest(..) | Op::Flush | Op::SetTimeouts(_) => Ok(()),
        }
    }

    /// The generic netlink request for this operation, attribute for attribute as
    /// ipvsadm 1.31 sends it.
    pub fn to_message(&self) -> IpvsMessage {
        match self {
            Op::AddService(s) => IpvsMessage::new(
                Cmd::NEW_SERVICE,
                vec![CmdAttr::Service(NestFlag::Set, s.attrs())],
            ),
            Op::UpdateService(s) => IpvsMessage::new(
                Cmd::SET_SERVICE,
                vec![CmdAttr::Service(NestFlag::Set, s.attrs())],
            ),
            Op::DelService(k) => IpvsMessage::new(Cmd::DEL_SERVICE, vec![service_nest(k)]),
            Op::AddDest(k, d) => IpvsMessage::new(
                Cmd::NEW_DEST,
                vec![service_nest(k), CmdAttr::Dest(NestFlag::Set, d.attrs())],
            ),
            Op::UpdateDest(k, d) => IpvsMessage::new(
                Cmd::SET_DEST,
                vec![service_nest(k), CmdAttr::Dest(NestFlag::Set, d.attrs())],
            ),
            Op::DelDest(k, d) => IpvsMessage::new(
                Cmd::DEL_DEST,
                vec![service_nest(k), CmdAttr::Dest(NestFlag::Set, d.attrs())],
            ),
            Op::Flush => IpvsMessage::new(Cmd::FLUSH, vec![]),
            Op::SetTimeouts(t) => IpvsMessage::new(Cmd::SET_CONFIG, t.attrs()),
        }
    }

    /// Wraps a kernel error with this operation and its object.
    pub fn error(&self, source: io::Error) -> Error {
        if source.raw_os_error() == Some(libc::EPERM) {
            return Error::PermissionDenied {
                op: self.to_string(),
                source,
            };
        }
        match self {
            Op::AddService(s) => Error::AddService {
                service: s.key,
                source,
            },
            Op::UpdateService(s) => Error::UpdateService {
                service: s.key,
                source,
            },
            Op::DelService(k) => Error::DelService {
                service: *k,
                source,
            },
            Op::AddDest(k, d) => Error::AddDest {
                service: *k,
                dest: d.key,
                source,
            },
            Op::UpdateDest(k, d) => Error::UpdateDest {
                service: *k,
                dest: d.key,
                source,
            },
            Op::DelDest(k, d) => Error::DelDest {
                service: *k,
                dest: *d,
                source,
            },
            Op::Flush => Error::Kernel {
                op: crate::OpKind::Flush,
                source,
            },
            Op::SetTimeouts(_) => Error::Kernel {
                op: crate::OpKind::SetTimeouts,
                source,
            },
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::AddService(s) => write!(f, "add service {}", s.key),
            Op::UpdateService(s) => write!(f, "update service {}", s.key),
            Op::DelService(k) => write!(f, "delete service {k}"),
            Op::AddDest(k, d) => write!(f, "add dest {} to {k}", d.key),
            Op::UpdateDest(k, d) => write!(f, "update dest {} of {k}", d.key),
            Op::DelDest(k, d) => write!(f, "delete dest {d} of {k}"),
            Op::Flush => f.write_str("flush"),
            Op::SetTimeouts(t) => write!(f, "set timeouts {} {} {}", t.tcp, t.tcp_fin, t.udp),
        }
    }
}

/// What the mesh needs from IPVS: observe the table, then apply ordered operations.
///
/// Implemented by [`crate::Client`] (the kernel, over generic netlink) and, with the
/// `test-util` feature, by `vipmesh_ipvs::fake::Fake` (in memory, with the kernel's
/// errnos), so reconcilers can be unit-tested without root.
///
/// # Examples
/// Converge a fwmark service on two backends, idempotently:
/// ```
/// use vipmesh_ipvs::{Family, FwdMethod, IpvsBackend, IpvsDest, IpvsService, Op, Scheduler, ServiceKey};
///
/// fn converge(b: &mut impl IpvsBackend) -> Result<(), vipmesh_ipvs::Error> {
///     let key = ServiceKey::fwmark(Family::Inet, 259)?;
///     let svc = IpvsService::new(key, Scheduler::RR)?;
///     let mut ops = Vec::new();
///     if !b.services()?.iter().any(|e| e.service.key == key) {
///         ops.push(Op::AddService(svc));
///     }
///     let have = if ops.is_empty() { b.dests(&key)? } else { vec![] };
///     for ip in ["10.0.0.10", "10.0.0.11"] {
///         let d = IpvsDest::new(ip.parse().unwrap(), 0, FwdMethod::Masq);
///         if !have.iter().any(|e| e.dest.key == d.key) {
///             ops.push(Op::AddDest(key, d));
///         }
///     }
///     for r in b.execute(&ops) {
///         r?;
///     }
///     Ok(())
/// }
/// # #[cfg(feature = "test-util")]
/// # {
/// let mut fake = vipmesh_ipvs::fake::Fake::new();
/// converge(&mut fake)?;
/// converge(&mut fake)?; // second run: nothing to do
/// assert_eq!(fake.dests(&ServiceKey::fwmark(Family::Inet, 259)?)?.len(), 2);
/// # }
/// # Ok::<(), vipmesh_ipvs::Error>(())
/// ```
pub trait IpvsBackend {
    /// Every service in the namespace, with stats.
    ///
    /// # Errors
    /// Kernel or socket errors.
    fn services(&mut self) -> Result<Vec<ServiceEntry>, Error>;

    /// The destinations of one service, with connection counts and stats. A service that
    /// does not exist has no destinations (the kernel ends the dump silently).
    ///
    /// # Errors
    /// [`Error::DumpDests`] for kernel or socket errors.
    fn dests(&mut self, service: &ServiceKey) -> Result<Vec<DestEntry>, Error>;

    /// Applies `ops` in order and returns one result per operation (same length and
    /// order). A failed operation does not stop the following ones; the caller decides
    /// (e.g. treat `is_not_found()` on a delete as success).
    fn execute(&mut self, ops: &[Op]) -> Vec<Result<(), Error>>;

    /// The connection timeouts (`ipvsadm -L --timeout`).
    ///
    /// # Errors
    /// Kernel or socket errors.
    fn timeouts(&mut self) -> Result<Timeouts, Error>;
}
