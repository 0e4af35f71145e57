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

impl From<vipmesh_types::Family> for Family {
    /// `V4` is `AF_INET`, `V6` is `AF_INET6`.
    fn from(f: vipmesh_types::Family) -> Family {
        match f {
            vipmesh_types::Family::V4 => Family::Inet,
            vipmesh_types::Family::V6 => Family::Inet6,
        }
    }
}

impl From<Family> for vipmesh_types::Family {
    /// `AF_INET` is `V4`, `AF_INET6` is `V6`.
    fn from(f: Family) -> vipmesh_types::Family {
        match f {
            Family::Inet => vipmesh_types::Family::V4,
            Family::Inet6 => vipmesh_types::Family::V6,
        }
    }
}

/// A virtual service's transport protocol: the workspace's shared
/// [`vipmesh_types::Protocol`] (IPVS serves TCP, UDP and SCTP, exactly its variants).
pub use vipmesh_types::Protocol;

/// The IP protocol number, as `IPVS_SVC_ATTR_PROTOCOL` carries it.
pub(crate) fn protocol_raw(p: Protocol) -> u16 {
    u16::from(p.number())
}

/// The protocol of an `IPVS_SVC_ATTR_PROTOCOL` value.
///
/// # Errors
/// [`Error::Invalid`] for protocols IPVS services do not support.
pub(crate) fn protocol_from_raw(p: u16) -> Result<Protocol, Error> {
    u8::try_from(p)
        .ok()
        .and_then(Protocol::from_number)
        .ok_or_else(|| {
            invalid(
                "protocol",
                p,
                "IPVS services are TCP (6), UDP (17) or SCTP (132)",
            )
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_convert_both_ways_at_the_edge() {
        for (shared, ipvs, af) in [
            (vipmesh_types::Family::V4, Family::Inet, AF_INET),
            (vipmesh_types::Family::V6, Family::Inet6, AF_INET6),
        ] {
            assert_eq!(Family::from(shared), ipvs);
            assert_eq!(vipmesh_types::Family::from(ipvs), shared);
            assert_eq!(Family::from(shared).raw(), af);
        }
    }

    #[test]
    fn protocol_numbers_are_checked_without_truncation() {
        for p in Protocol::ALL {
            assert_eq!(protocol_from_raw(protocol_raw(p)).ok(), Some(p));
        }
        assert_eq!(protocol_raw(Protocol::Sctp), 132);
        // 262 would be TCP if cut to a byte.
        for bad in [0, 1, 58, 262, u16::MAX] {
            let e = protocol_from_raw(bad).err();
            assert!(
                matches!(&e, Some(Error::Invalid { field: "protocol", value, .. }) if *value == bad.to_string()),
                "{bad}: {e:?}"
            );
        }
    }
}
