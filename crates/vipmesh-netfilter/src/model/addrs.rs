//! What a packet is addressed by: [`Cidr`], [`Port`], [`PortRange`], [`Protocol`] and
//! interfaces ([`Iface`]).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::error::Error;

use super::Family;

/// An address with prefix length. Host bits are cleared on construction, as the kernel does
/// (`10.0.0.5/16` becomes `10.0.0.0/16`); a bare address means a host route (`/32`, `/128`).
///
/// # Examples
/// ```
/// use vipmesh_netfilter::Cidr;
/// let c: Cidr = "10.255.0.7/16".parse().unwrap();
/// assert_eq!(c.to_string(), "10.255.0.0/16");
/// assert!("10.0.0.0/33".parse::<Cidr>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Build from an address and a prefix length.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] if `prefix` exceeds 32 (IPv4) or 128 (IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, Error> {
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > max {
            return Err(Error::invalid(
                "cidr",
                format!("{addr}/{prefix}"),
                "prefix too long",
            ));
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let m = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(prefix))
                };
                IpAddr::V4((u32::from(a) & m).into())
            }
            IpAddr::V6(a) => {
                let m = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(prefix))
                };
                IpAddr::V6((u128::from(a) & m).into())
            }
        };
        Ok(Cidr { addr, prefix })
    }

    /// A single host (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Cidr {
        let prefix = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        Cidr { addr, prefix }
    }

    /// The (masked) network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }
    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
    /// The family.
    pub fn family(&self) -> Family {
        Family::of(self.addr)
    }
    /// Whether `ip` lies inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match Cidr::new(ip, self.prefix) {
            Ok(c) => c.addr == self.addr,
            Err(_) => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = Error;
    fn from_str(s: &str) -> Result<Cidr, Error> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|e: std::net::AddrParseError| {
            tracing::debug!(error = %e, value = s, "bad address");
            Error::invalid("cidr", s, "not an IP address")
        })?;
        match p {
            None => Ok(Cidr::host(addr)),
            Some(p) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Error::invalid("cidr", s, "prefix length is not a number"));
                }
                let prefix: u8 = p.parse().map_err(|e: std::num::ParseIntError| {
                    tracing::debug!(error = %e, value = s, "bad prefix");
                    Error::invalid("cidr", s, "prefix length out of range")
                })?;
                Cidr::new(addr, prefix)
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A port number, 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(u16);

impl Port {
    /// Validate a port.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] for port 0.
    pub fn new(port: u16) -> Result<Port, Error> {
        if port == 0 {
            return Err(Error::invalid("port", "0", "port 0 is not a valid port"));
        }
        Ok(Port(port))
    }
    /// The number.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl FromStr for Port {
    type Err = Error;
    fn from_str(s: &str) -> Result<Port, Error> {
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::invalid("port", s, "not a number in 1..=65535"));
        }
        let n: u32 = s.parse().map_err(|e: std::num::ParseIntError| {
            tracing::debug!(error = %e, value = s, "bad port");
            Error::invalid("port", s, "not a number in 1..=65535")
        })?;
        let n = u16::try_from(n).map_err(|e| {
            tracing::debug!(error = %e, value = s, "port out of range");
            Error::invalid("port", s, "not a number in 1..=65535")
        })?;
        Port::new(n)
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A port or an inclusive port range (`1000:2000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    first: Port,
    last: Port,
}

impl PortRange {
    /// A single port.
    pub fn single(p: Port) -> PortRange {
        PortRange { first: p, last: p }
    }
    /// A range.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] if `first > last`.
    pub fn new(first: Port, last: Port) -> Result<PortRange, Error> {
        if first > last {
            return Err(Error::invalid(
                "port range",
                format!("{first}:{last}"),
                "first > last",
            ));
        }
        Ok(PortRange { first, last })
    }
    /// Whether `port` lies inside.
    pub fn contains(&self, port: u16) -> bool {
        self.first.0 <= port && port <= self.last.0
    }
}

impl From<Port> for PortRange {
    fn from(p: Port) -> Self {
        PortRange::single(p)
    }
}

impl FromStr for PortRange {
    type Err = Error;
    fn from_str(s: &str) -> Result<PortRange, Error> {
        match s.split_once(':') {
            None => Ok(PortRange::single(s.parse()?)),
            Some((a, b)) => PortRange::new(a.parse()?, b.parse()?),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// Protocol (`-p`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// ICMP (IPv4 only).
    Icmp,
    /// ICMPv6 (IPv6 only).
    Icmpv6,
}

impl Protocol {
    /// Name as iptables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
            Protocol::Icmp => "icmp",
            Protocol::Icmpv6 => "ipv6-icmp",
        }
    }
    /// Whether `--sport`/`--dport` are available.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp | Protocol::Sctp)
    }
    fn from_name(s: &str) -> Option<Protocol> {
        Some(match s {
            "tcp" | "6" => Protocol::Tcp,
            "udp" | "17" => Protocol::Udp,
            "sctp" | "132" => Protocol::Sctp,
            "icmp" | "1" => Protocol::Icmp,
            "ipv6-icmp" | "icmpv6" | "icmp6" | "58" => Protocol::Icmpv6,
            _ => return None,
        })
    }
}

impl FromStr for Protocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Protocol, Error> {
        Protocol::from_name(s).ok_or_else(|| Error::invalid("protocol", s, "unsupported protocol"))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<vipmesh_types::Protocol> for Protocol {
    fn from(p: vipmesh_types::Protocol) -> Protocol {
        match p {
            vipmesh_types::Protocol::Tcp => Protocol::Tcp,
            vipmesh_types::Protocol::Udp => Protocol::Udp,
            vipmesh_types::Protocol::Sctp => Protocol::Sctp,
        }
    }
}

impl TryFrom<Protocol> for vipmesh_types::Protocol {
    type Error = Error;

    /// The transport protocols convert; ICMP and ICMPv6 have no ports and no shared form.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] naming `protocol` for `icmp` and `ipv6-icmp`.
    fn try_from(p: Protocol) -> Result<vipmesh_types::Protocol, Error> {
        match p {
            Protocol::Tcp => Ok(vipmesh_types::Protocol::Tcp),
            Protocol::Udp => Ok(vipmesh_types::Protocol::Udp),
            Protocol::Sctp => Ok(vipmesh_types::Protocol::Sctp),
            Protocol::Icmp | Protocol::Icmpv6 => Err(Error::invalid(
                "protocol",
                p.as_str(),
                "not a transport protocol with ports (tcp, udp or sctp)",
            )),
        }
    }
}

/// An interface name (1–15 bytes, no `/`, whitespace, quotes or control characters); a
/// trailing `+` is iptables' wildcard.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Iface(String);

impl Iface {
    /// Validate an interface name.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] with field `"interface"`.
    pub fn new(name: impl Into<String>) -> Result<Iface, Error> {
        let name = name.into();
        if name.is_empty() || name.len() > 15 {
            return Err(Error::invalid("interface", name, "must be 1..=15 bytes"));
        }
        if !name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'+' | b'@' | b':')
        }) {
            return Err(Error::invalid(
                "interface",
                name,
                "only [A-Za-z0-9_.@:+-] allowed",
            ));
        }
        if name.starts_with('-') {
            return Err(Error::invalid("interface", name, "must not start with '-'"));
        }
        Ok(Iface(name))
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// iptables matching (trailing `+` is a prefix wildcard).
    pub fn matches(&self, dev: &str) -> bool {
        match self.0.strip_suffix('+') {
            Some(prefix) => dev.starts_with(prefix),
            None => self.0 == dev,
        }
    }
}

impl fmt::Display for Iface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_convert_at_the_edge() {
        for shared in vipmesh_types::Protocol::ALL {
            let nf = Protocol::from(shared);
            assert!(nf.has_ports());
            assert_eq!(nf.as_str(), shared.as_str());
            assert_eq!(vipmesh_types::Protocol::try_from(nf).ok(), Some(shared));
        }
        for nf in [Protocol::Icmp, Protocol::Icmpv6] {
            let e = vipmesh_types::Protocol::try_from(nf).err();
            assert!(
                matches!(&e, Some(Error::InvalidValue { field: "protocol", value, .. }) if *value == nf.as_str()),
                "{nf}: {e:?}"
            );
        }
    }
}
