//! The typed model, in the kernel's language: [`IpvsService`], [`IpvsDest`], their keys,
//! [`Scheduler`], [`ServiceFlags`], [`FwdMethod`], [`Stats`], [`Timeouts`], [`Info`].
//!
//! Values are valid once built: constructors return `Result` with an [`Error::Invalid`]
//! naming the field and the value. Caller-owned parameters ([`IpvsService`], [`IpvsDest`])
//! are separate from what the kernel reports back ([`ServiceEntry`], [`DestEntry`]: stats
//! and connection counts), so a planner can compare desired and observed parameters with
//! `==`.
//!
//! One submodule per concern: [`Family`]/[`Protocol`] and addresses on the wire (`family`),
//! service identity (`key`), services (`service`), destinations (`dest`), and counters,
//! timeouts and info (`stats`). Everything is re-exported here.

use std::fmt;

use crate::Error;

mod dest;
mod family;
mod key;
mod service;
mod stats;

pub use dest::{DestEntry, DestKey, FwdMethod, IpvsDest, TunnelFlags, TunnelType, Weight};
pub use family::{AF_INET, AF_INET6, Family, Protocol};
pub(crate) use family::{SockAddr, addr_bytes, protocol_raw};
pub use key::{Fwmark, ServiceKey};
pub(crate) use service::service_nest;
pub use service::{IpvsService, Netmask, Scheduler, ServiceEntry, ServiceFlags};
pub use stats::{Info, Stats, Timeouts};

fn invalid(field: &'static str, value: impl fmt::Display, reason: &'static str) -> Error {
    Error::Invalid {
        field,
        value: value.to_string(),
        reason,
    }
}
