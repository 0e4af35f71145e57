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
//!
//! # The kernel's behaviour, as observed in the guest tests
//! - Errnos: a missing service is `ESRCH`, a missing destination `ENOENT`, a duplicate
//!   `EEXIST`, an unknown scheduler `ENOENT` (so `is_not_found()` is also true for it on
//!   `AddService`), a negative weight or lower > upper threshold `ERANGE`.
//! - Adding a destination in a namespace whose `lo` is down fails with `EINVAL` (the
//!   kernel's `inet_addr_type` check); bring `lo` up first.
//! - Dumping the destinations of a missing service returns an empty list, not an error.
//! - `ipvsadm` sorts what it prints; the kernel dumps in hash order. [`save`] sorts like
//!   ipvsadm 1.31 so its output is byte-identical.
//!
//! # Examples
//! ```no_run
//! use vipmesh_ipvs::{Client, save};
//! let mut ipvs = Client::open()?; // this thread's netns; Client::open_in(&netns) for another
//! let ops = save::parse_rules("-A -f 259 -s rr\n-a -f 259 -r 10.0.0.10:0 -m -w 1\n")?;
//! for r in ipvs.execute(&ops) {
//!     r?;
//! }
//! let mut table = Vec::new();
//! for s in ipvs.services()? {
//!     let d = ipvs.dests(&s.service.key)?;
//!     table.push((s, d));
//! }
//! print!("{}", save::render_list(&ipvs.info()?, &table, save::ListView::Table));
//! # Ok::<(), vipmesh_ipvs::Error>(())
//! ```
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
