//! An IPVS client over generic netlink: a pure codec, a typed model, a socket client and a
//! Fake.
//!
//! - [`codec`]: the wire format (pure; fuzzed; byte fixtures from `ipvsadm` round-trip).
//! - [`model`]: [`IpvsService`], [`IpvsDest`], [`ServiceKey`], [`Scheduler`], ... in the
//!   kernel's words, valid by construction.
//! - [`Client`]: a socket in a given network namespace; dump, get, add/update/delete,
//!   flush, timeouts, info, and pipelined batches with one result per operation.
//! - [`IpvsBackend`]: the trait the mesh programs IPVS through, implemented by [`Client`]
//!   and by `fake::Fake` (feature `test-util`).
//! - [`save`]: the `ipvsadm -S`/`-R` text format and the `ipvsadm -L` renderer.
//!
//! Kernel: tested against Linux 6.1 (Debian 6.1.0-56). Destination address families
//! (mixed v4/v6 with tunnels) need Linux 4.9; tunnel types need 5.7; `STATS64` 4.1.
#![deny(missing_docs)]

mod backend;
mod client;
pub mod codec;
mod error;
#[cfg(feature = "test-util")]
pub mod fake;
pub mod model;
pub mod save;
mod sys;

pub use backend::{IpvsBackend, Op};
pub use client::Client;
pub use error::{Error, OpKind};
pub use model::{
    DestEntry, DestKey, Family, FwdMethod, Fwmark, Info, IpvsDest, IpvsService, Netmask, Protocol,
    Scheduler, ServiceEntry, ServiceFlags, ServiceKey, Stats, Timeouts, TunnelFlags, TunnelType,
    Weight,
};
