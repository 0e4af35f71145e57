//! Address families and transport protocols in IPVS's numbers, and addresses as the
//! netlink attributes carry them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::invalid;
use crate::Error;

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;
/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 (`AF_INET`).
    Inet,
    /// IPv6 (`AF_INET6`).
    Inet6,
}

impl Family {
    /// The `AF_*` number.
    pub fn raw(self) -> u16 {
        match self {
            Family::Inet => AF_INET,
            Family::Inet6 => AF_INET6,
        }
    }

    /// From an `AF_*` number.
    ///
    /// # Errors
    /// [`Error::Invalid`] for anything but `AF_INET`/`AF_INET6`.
    pub fn from_raw(field: &'static str, af: u16) -> Result<Self, Error> {
        match af {
            AF_INET => Ok(Family::Inet),
            AF_INET6 => Ok(Family::Inet6),
            _ => Err(invalid(
                field,
                af,
                "address family must be AF_INET (2) or AF_INET6 (10)",
            )),
        }
    }

    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::Inet,
            IpAddr::V6(_) => Family::Inet6,
        }
    }
}

/// A virtual service's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn raw(self) -> u16 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// From an IP protocol number.
    ///
    /// # Errors
    /// [`Error::Invalid`] for protocols IPVS services do not support.
    pub fn from_raw(p: u16) -> Result<Self, Error> {
        match p {
            6 => Ok(Protocol::Tcp),
            17 => Ok(Protocol::Udp),
            132 => Ok(Protocol::Sctp),
            _ => Err(invalid(
                "protocol",
                p,
                "IPVS services are TCP (6), UDP (17) or SCTP (132)",
            )),
        }
    }
}
/// `a.b.c.d:port` or `[v6]:port`, as ipvsadm prints them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SockAddr(pub IpAddr, pub u16);

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.1),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.1),
        }
    }
}

pub(crate) fn addr_bytes(a: &IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub(super) fn addr_from(field: &'static str, af: Family, b: &[u8]) -> Result<IpAddr, Error> {
    match af {
        Family::Inet => {
            let o: [u8; 4] = b.get(..4).and_then(|s| s.try_into().ok()).ok_or_else(|| {
                invalid(
                    field,
                    format!("{} bytes", b.len()),
                    "an IPv4 address needs 4 bytes",
                )
            })?;
            Ok(IpAddr::V4(Ipv4Addr::from(o)))
        }
        Family::Inet6 => {
            let o: [u8; 16] = b.get(..16).and_then(|s| s.try_into().ok()).ok_or_else(|| {
                invalid(
                    field,
                    format!("{} bytes", b.len()),
                    "an IPv6 address needs 16 bytes",
                )
            })?;
            Ok(IpAddr::V6(Ipv6Addr::from(o)))
        }
    }
}
