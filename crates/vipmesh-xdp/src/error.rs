//! The crate's error type.

use std::{io, path::PathBuf};

/// Everything that can go wrong in the XDP fast path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The eBPF object was not compiled into this build (clang was missing at build time).
    #[error("the eBPF object is not available: {reason}")]
    ObjectUnavailable {
        /// Why.
        reason: &'static str,
    },
    /// The process lacks a capability the kernel requires.
    #[error("missing capability {capability} (needed to {op})")]
    MissingCapability {
        /// `CAP_BPF`, `CAP_NET_ADMIN`, ...
        capability: &'static str,
        /// What needed it.
        op: &'static str,
    },
    /// bpffs is not mounted at the pin directory and could not be mounted.
    #[error("bpffs is not mountable at {path}")]
    BpffsUnavailable {
        /// The mount point tried.
        path: PathBuf,
        /// The mount(2) error.
        #[source]
        source: io::Error,
    },
    /// A pin operation failed.
    #[error("{op} pin {path}")]
    Pin {
        /// `pin`, `unpin`, `open`.
        op: &'static str,
        /// The pin path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Pinning or re-opening a bpf_link failed.
    #[error("{op} link pin {path}")]
    LinkPin {
        /// `open`, `convert`, `pin`.
        op: &'static str,
        /// The pin path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The interface does not exist in the caller's network namespace.
    #[error("no interface named {name:?}")]
    InterfaceNotFound {
        /// The interface name.
        name: String,
    },
    /// The interface does not support XDP in the requested mode.
    #[error("XDP mode {mode:?} is not supported on {interface}")]
    XdpModeUnsupported {
        /// The interface.
        interface: String,
        /// The mode requested.
        mode: crate::AttachMode,
        /// The kernel's answer.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Loading the object into the kernel failed (verifier, map creation, ...).
    #[error("loading the eBPF object failed")]
    Load(#[source] Box<aya::EbpfError>),
    /// An operation on a program failed.
    #[error("{op} program {program}")]
    Program {
        /// The program name.
        program: &'static str,
        /// The operation.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// An operation on a map failed.
    #[error("{op} map {map}")]
    Map {
        /// The map name.
        map: &'static str,
        /// The operation.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// The DEVMAP refused an egress interface.
    #[error("tx_ports slot {slot} -> ifindex {ifindex}")]
    TxPort {
        /// The DEVMAP slot.
        slot: u32,
        /// The interface.
        ifindex: u32,
        /// The underlying error.
        #[source]
        source: Box<aya::maps::xdp::XdpMapError>,
    },
    /// A map has no room left (services, backends, devmap slots).
    #[error("map {map} is full ({capacity} entries)")]
    MapFull {
        /// The map name.
        map: &'static str,
        /// Its capacity.
        capacity: u32,
    },
    /// A field of the configuration or of a service has an invalid value.
    #[error("invalid {field} = {value}: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// The value given.
        value: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// The Maglev table could not be built (size not prime, too small for the backends, ...).
    #[error("Maglev table for service {service}")]
    Table {
        /// The service.
        service: String,
        /// The reason from the Maglev crate.
        #[source]
        source: vipmesh_maglev::Error,
    },
    /// The service is not known to the dataplane.
    #[error("unknown service {service}")]
    UnknownService {
        /// The service.
        service: String,
    },
    /// A Rust mirror of a shared struct does not match the object's BTF.
    #[error("layout drift in struct {structure}, {field}: Rust {rust}, C {c:?}")]
    LayoutMismatch {
        /// The C struct name.
        structure: &'static str,
        /// The field (or `<size>`).
        field: &'static str,
        /// What Rust says.
        rust: usize,
        /// What the object's BTF says (`None`: struct missing).
        c: Option<usize>,
    },
    /// The object's BTF could not be parsed.
    #[error("BTF parse error at byte {offset}: {reason}")]
    BtfParse {
        /// Byte offset.
        offset: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// A system call or file operation failed.
    #[error("{op}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The error, with its errno.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The errno behind this error, when the kernel gave one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::BpffsUnavailable { source, .. }
            | Error::Pin { source, .. }
            | Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub(crate) fn map(map: &'static str, op: &'static str, source: aya::maps::MapError) -> Self {
        Error::Map {
            map,
            op,
            source: Box::new(source),
        }
    }

    pub(crate) fn program(
        program: &'static str,
        op: &'static str,
        source: aya::programs::ProgramError,
    ) -> Self {
        Error::Program {
            program,
            op,
            source: Box::new(source),
        }
    }
}
