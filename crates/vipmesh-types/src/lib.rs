//! The words every vipmesh layer shares: an address [`Family`] and a transport [`Protocol`].
//!
//! One definition, so that the model, the planner and the backends do not each carry a copy
//! and glue between them. No dependencies (serde only with the `serde` feature).
//!
//! Where a kernel layer needs its own form, it keeps it and converts at its edge:
//!
//! | crate | its type | conversions |
//! |---|---|---|
//! | `vipmesh-ipvs` | `Protocol` | *is* [`Protocol`] (re-exported) |
//! | `vipmesh-ipvs` | `Family` (`AF_INET`/`AF_INET6` on the wire) | `From` both ways |
//! | `vipmesh-netfilter` | `Family` (picks `iptables`/`ip6tables`) | `From` both ways |
//! | `vipmesh-netfilter` | `Protocol` (adds `icmp`, `ipv6-icmp`) | `From<Protocol>`; `TryFrom` back |
//! | `vipmesh-xdp` | `Proto` (TCP and UDP only) | `From<Proto>`; `TryFrom<Protocol>` |
//!
//! # Examples
//! ```
//! use vipmesh_types::{Family, Protocol};
//! assert_eq!(Family::of("2001:db8::1".parse().unwrap()), Family::V6);
//! assert_eq!(Protocol::Sctp.number(), 132);
//! assert_eq!(Protocol::from_number(17), Some(Protocol::Udp));
//! assert_eq!(Protocol::Tcp.to_string(), "tcp");
//! ```
#![deny(missing_docs)]

use std::fmt;
use std::net::IpAddr;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of an address.
    pub const fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// `ipv4` or `ipv6`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

impl From<IpAddr> for Family {
    fn from(addr: IpAddr) -> Family {
        Family::of(addr)
    }
}

impl fmt::Display for Family {
    /// `ipv4` or `ipv6`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transport protocol with ports: what a service port, an IPVS service or a port match
/// speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
    /// SCTP (IP protocol 132).
    Sctp,
}

impl Protocol {
    /// Every protocol, in order.
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The IP protocol number (IANA; `IPPROTO_*` in `<netinet/in.h>`).
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The protocol of an IP protocol number; `None` for any other number.
    pub const fn from_number(number: u8) -> Option<Protocol> {
        match number {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// `tcp`, `udp` or `sctp` (as `/etc/protocols`, iptables and nft spell them).
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    /// `tcp`, `udp` or `sctp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn family_of_addresses() {
        assert_eq!(Family::of("10.0.0.1".parse().unwrap()), Family::V4);
        assert_eq!(Family::from("::1".parse::<IpAddr>().unwrap()), Family::V6);
        assert_eq!(Family::of("::ffff:10.0.0.1".parse().unwrap()), Family::V6);
        assert_eq!(Family::ALL.map(|f| f.to_string()), ["ipv4", "ipv6"]);
        assert!(Family::V4 < Family::V6);
    }

    #[test]
    fn protocol_numbers_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(Protocol::from_number(p.number()), Some(p));
        }
        assert_eq!(Protocol::ALL.map(Protocol::number), [6, 17, 132]);
        for n in (0..=u8::MAX).filter(|n| ![6, 17, 132].contains(n)) {
            assert_eq!(Protocol::from_number(n), None, "{n}");
        }
        assert_eq!(Protocol::ALL.map(|p| p.to_string()), ["tcp", "udp", "sctp"]);
    }

    /// The spellings of the node state file (`vipmesh::model`), which these types replace.
    #[cfg(feature = "serde")]
    #[test]
    fn serde_spellings_match_the_node_state_file() {
        assert_eq!(serde_json::to_string(&Family::V6).unwrap(), "\"V6\"");
        assert_eq!(
            serde_json::from_str::<Family>("\"V4\"").unwrap(),
            Family::V4
        );
        assert!(serde_json::from_str::<Family>("\"ipv4\"").is_err());
        assert_eq!(serde_json::to_string(&Protocol::Sctp).unwrap(), "\"sctp\"");
        assert_eq!(
            serde_json::from_str::<Protocol>("\"udp\"").unwrap(),
            Protocol::Udp
        );
        assert!(serde_json::from_str::<Protocol>("\"TCP\"").is_err());
    }
}
