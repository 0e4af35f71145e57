//! The typed rule model: tables, chains, matches, targets.
//!
//! Every value type has a validating constructor; a built value is valid. Cross-field rules
//! (family, table, `--dport` needs `-p tcp|udp|sctp`) are checked by
//! [`OwnedRuleset`](crate::OwnedRuleset) when a rule is added.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::error::Error;

/// Address family: selects `iptables-restore` or `ip6tables-restore`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 (`iptables`).
    V4,
    /// IPv6 (`ip6tables`).
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    /// Tool prefix: `iptables` or `ip6tables`.
    pub fn tool_prefix(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

/// An iptables table we program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `filter`.
    Filter,
    /// `nat`.
    Nat,
    /// `mangle`.
    Mangle,
}

impl Table {
    /// All tables, in render order.
    pub const ALL: [Table; 3] = [Table::Filter, Table::Nat, Table::Mangle];

    /// The table's name as iptables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
            Table::Mangle => "mangle",
        }
    }

    /// Parse a table name; `None` for tables we do not model (`raw`, `security`).
    pub fn from_name(s: &str) -> Option<Table> {
        match s {
            "filter" => Some(Table::Filter),
            "nat" => Some(Table::Nat),
            "mangle" => Some(Table::Mangle),
            _ => None,
        }
    }

    /// Whether the built-in chain exists in this table.
    pub fn has_builtin(self, chain: BuiltinChain) -> bool {
        use BuiltinChain::*;
        match self {
            Table::Filter => matches!(chain, Input | Forward | Output),
            Table::Nat => matches!(chain, Prerouting | Input | Output | Postrouting),
            Table::Mangle => true,
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A built-in chain (netfilter hook).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BuiltinChain {
    /// `PREROUTING`.
    Prerouting,
    /// `INPUT`.
    Input,
    /// `FORWARD`.
    Forward,
    /// `OUTPUT`.
    Output,
    /// `POSTROUTING`.
    Postrouting,
}

impl BuiltinChain {
    /// The chain's name.
    pub fn as_str(self) -> &'static str {
        match self {
            BuiltinChain::Prerouting => "PREROUTING",
            BuiltinChain::Input => "INPUT",
            BuiltinChain::Forward => "FORWARD",
            BuiltinChain::Output => "OUTPUT",
            BuiltinChain::Postrouting => "POSTROUTING",
        }
    }
    /// Parse a built-in chain name.
    pub fn from_name(s: &str) -> Option<BuiltinChain> {
        Some(match s {
            "PREROUTING" => BuiltinChain::Prerouting,
            "INPUT" => BuiltinChain::Input,
            "FORWARD" => BuiltinChain::Forward,
            "OUTPUT" => BuiltinChain::Output,
            "POSTROUTING" => BuiltinChain::Postrouting,
            _ => return None,
        })
    }
}

impl fmt::Display for BuiltinChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of a chain we own: `VIPMESH-` followed by `[A-Za-z0-9_.-]`, at most 28 bytes
/// (the kernel's `XT_EXTENSION_MAXNAMELEN` is 29 including the NUL).
///
/// # Examples
/// ```
/// use vipmesh_netfilter::ChainName;
/// assert!(ChainName::new("VIPMESH-VIP").is_ok());
/// assert!(ChainName::new("DOCKER-INGRESS").is_err());
/// assert!(ChainName::new("VIPMESH-THIS-NAME-IS-FAR-TOO-LONG").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChainName(String);

impl ChainName {
    /// Our prefix.
    pub const PREFIX: &'static str = "VIPMESH-";
    /// Maximum length in bytes.
    pub const MAX_LEN: usize = 28;

    /// Validate a chain name.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] with field `"chain name"` if the prefix is missing, the name is
    /// longer than 28 bytes, has nothing after the prefix, or contains a character outside
    /// `[A-Za-z0-9_.-]`.
    pub fn new(name: impl Into<String>) -> Result<ChainName, Error> {
        let name = name.into();
        if !name.starts_with(Self::PREFIX) {
            return Err(Error::invalid(
                "chain name",
                name,
                "must start with VIPMESH-",
            ));
        }
        if name.len() > Self::MAX_LEN {
            return Err(Error::invalid("chain name", name, "longer than 28 bytes"));
        }
        if name.len() == Self::PREFIX.len() {
            return Err(Error::invalid(
                "chain name",
                name,
                "nothing after the VIPMESH- prefix",
            ));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(Error::invalid(
                "chain name",
                name,
                "only [A-Za-z0-9_.-] allowed",
            ));
        }
        Ok(ChainName(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a (possibly foreign) chain name carries our prefix, i.e. is ours to delete.
    pub fn is_ours(name: &str) -> bool {
        name.starts_with(Self::PREFIX)
    }
}

impl fmt::Display for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ChainName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        ChainName::new(s)
    }
}

/// A chain: built-in or ours.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Chain {
    /// A built-in chain; we only ever add tagged jump rules to these.
    Builtin(BuiltinChain),
    /// A chain we own.
    Owned(ChainName),
}

impl Chain {
    /// Name as iptables spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Chain::Builtin(b) => b.as_str(),
            Chain::Owned(n) => n.as_str(),
        }
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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

/// `-m addrtype` address types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddrType {
    /// `LOCAL`: an address of this netns.
    Local,
    /// `UNICAST`.
    Unicast,
    /// `BROADCAST`.
    Broadcast,
    /// `MULTICAST`.
    Multicast,
}

impl AddrType {
    /// Name as iptables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AddrType::Local => "LOCAL",
            AddrType::Unicast => "UNICAST",
            AddrType::Broadcast => "BROADCAST",
            AddrType::Multicast => "MULTICAST",
        }
    }
    fn from_name(s: &str) -> Option<AddrType> {
        Some(match s {
            "LOCAL" => AddrType::Local,
            "UNICAST" => AddrType::Unicast,
            "BROADCAST" => AddrType::Broadcast,
            "MULTICAST" => AddrType::Multicast,
            _ => return None,
        })
    }
}

impl FromStr for AddrType {
    type Err = Error;
    fn from_str(s: &str) -> Result<AddrType, Error> {
        AddrType::from_name(s)
            .ok_or_else(|| Error::invalid("addrtype", s, "unsupported address type"))
    }
}

bitflags::bitflags! {
    /// `-m conntrack --ctstate` states. Rendered in the kernel's order:
    /// `INVALID,NEW,RELATED,ESTABLISHED,UNTRACKED,SNAT,DNAT`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct CtState: u8 {
        /// `INVALID`.
        const INVALID = 1 << 0;
        /// `NEW`.
        const NEW = 1 << 1;
        /// `RELATED`.
        const RELATED = 1 << 2;
        /// `ESTABLISHED`.
        const ESTABLISHED = 1 << 3;
        /// `UNTRACKED`.
        const UNTRACKED = 1 << 4;
        /// `SNAT`.
        const SNAT = 1 << 5;
        /// `DNAT`.
        const DNAT = 1 << 6;
    }
}

const CTSTATE_NAMES: [(CtState, &str); 7] = [
    (CtState::INVALID, "INVALID"),
    (CtState::NEW, "NEW"),
    (CtState::RELATED, "RELATED"),
    (CtState::ESTABLISHED, "ESTABLISHED"),
    (CtState::UNTRACKED, "UNTRACKED"),
    (CtState::SNAT, "SNAT"),
    (CtState::DNAT, "DNAT"),
];

impl fmt::Display for CtState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (flag, name) in CTSTATE_NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl FromStr for CtState {
    type Err = Error;
    fn from_str(s: &str) -> Result<CtState, Error> {
        let mut out = CtState::empty();
        for part in s.split(',') {
            let flag = CTSTATE_NAMES
                .iter()
                .find(|(_, n)| *n == part)
                .map(|(f, _)| *f)
                .ok_or_else(|| Error::invalid("ctstate", s, "unknown conntrack state"))?;
            out |= flag;
        }
        if out.is_empty() {
            return Err(Error::invalid("ctstate", s, "empty state list"));
        }
        Ok(out)
    }
}

/// A mark value with an optional mask (`0x103`, `0x5/0xff`). No mask means all 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mark {
    /// The value.
    pub value: u32,
    /// The mask (`0xffffffff` means all bits).
    pub mask: u32,
}

impl Mark {
    /// A full 32-bit mark.
    pub fn new(value: u32) -> Mark {
        Mark {
            value,
            mask: u32::MAX,
        }
    }
    /// A masked mark.
    pub fn masked(value: u32, mask: u32) -> Mark {
        Mark { value, mask }
    }
}

fn parse_u32(field: &'static str, s: &str) -> Result<u32, Error> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse::<u32>(),
    };
    r.map_err(|e| {
        tracing::debug!(error = %e, value = s, field, "bad number");
        Error::invalid(field, s, "not a 32-bit number")
    })
}

impl FromStr for Mark {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mark, Error> {
        match s.split_once('/') {
            Some((v, m)) => Ok(Mark::masked(parse_u32("mark", v)?, parse_u32("mark", m)?)),
            None => Ok(Mark::new(parse_u32("mark", s)?)),
        }
    }
}

/// A rule comment (`-m comment --comment`): 1–255 bytes of printable ASCII, without `"`, `'`,
/// or `\`. Rendering always quotes it, so spaces and shell metacharacters are inert, and the
/// rejected characters make it impossible to close the quote or start a new line.
///
/// # Examples
/// ```
/// use vipmesh_netfilter::Comment;
/// assert!(Comment::new("svc web; $(rm -rf /) `x` #").is_ok());
/// assert!(Comment::new("a\" -j ACCEPT").is_err());
/// assert!(Comment::new("a\n-A INPUT -j ACCEPT").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Comment(String);

impl Comment {
    /// The tag on every jump rule we own.
    pub const OWNER_TAG: &'static str = "vipmesh";

    /// Validate a comment.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] with field `"comment"`.
    pub fn new(text: impl Into<String>) -> Result<Comment, Error> {
        let text = text.into();
        if text.is_empty() || text.len() > 255 {
            return Err(Error::invalid("comment", text, "must be 1..=255 bytes"));
        }
        if !text
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && !matches!(b, b'"' | b'\'' | b'\\'))
        {
            return Err(Error::invalid(
                "comment",
                text,
                "only printable ASCII without quotes or backslashes allowed",
            ));
        }
        Ok(Comment(text))
    }
    /// The owner tag `vipmesh`.
    pub fn owner() -> Comment {
        Comment(Self::OWNER_TAG.to_owned())
    }
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Comment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An address or CIDR match, possibly negated (`! -d 10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrMatch {
    /// The CIDR.
    pub cidr: Cidr,
    /// `!`.
    pub negated: bool,
}

/// An interface match, possibly negated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfaceMatch {
    /// The interface.
    pub iface: Iface,
    /// `!`.
    pub negated: bool,
}

/// The match part of a rule. Build with the chained setters; every field is optional and each
/// kind appears at most once, so the rendered order is canonical (the order `iptables-save`
/// prints).
///
/// # Examples
/// ```
/// use vipmesh_netfilter::{Matches, Protocol, Port};
/// let m = Matches::new()
///     .destination("10.0.0.4".parse().unwrap())
///     .protocol(Protocol::Tcp)
///     .dport(Port::new(80).unwrap().into());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Matches {
    /// `-s`.
    pub source: Option<AddrMatch>,
    /// `-d`.
    pub destination: Option<AddrMatch>,
    /// `-i`.
    pub in_iface: Option<IfaceMatch>,
    /// `-o`.
    pub out_iface: Option<IfaceMatch>,
    /// `-p`.
    pub protocol: Option<Protocol>,
    /// `--sport` (needs tcp, udp or sctp).
    pub sport: Option<PortRange>,
    /// `--dport` (needs tcp, udp or sctp).
    pub dport: Option<PortRange>,
    /// `-m addrtype --src-type`.
    pub src_type: Option<AddrType>,
    /// `-m addrtype --dst-type`.
    pub dst_type: Option<AddrType>,
    /// `-m ipvs --ipvs` (the packet belongs to an IPVS connection).
    pub ipvs: bool,
    /// `-m conntrack --ctstate`.
    pub ctstate: Option<CtState>,
    /// `-m mark --mark`.
    pub mark: Option<Mark>,
}

impl Matches {
    /// No matches: every packet.
    pub fn new() -> Matches {
        Matches::default()
    }
    /// `-s cidr`.
    pub fn source(mut self, cidr: Cidr) -> Self {
        self.source = Some(AddrMatch {
            cidr,
            negated: false,
        });
        self
    }
    /// `! -s cidr`.
    pub fn not_source(mut self, cidr: Cidr) -> Self {
        self.source = Some(AddrMatch {
            cidr,
            negated: true,
        });
        self
    }
    /// `-d cidr`.
    pub fn destination(mut self, cidr: Cidr) -> Self {
        self.destination = Some(AddrMatch {
            cidr,
            negated: false,
        });
        self
    }
    /// `! -d cidr`.
    pub fn not_destination(mut self, cidr: Cidr) -> Self {
        self.destination = Some(AddrMatch {
            cidr,
            negated: true,
        });
        self
    }
    /// `-i iface`.
    pub fn in_iface(mut self, iface: Iface) -> Self {
        self.in_iface = Some(IfaceMatch {
            iface,
            negated: false,
        });
        self
    }
    /// `-o iface`.
    pub fn out_iface(mut self, iface: Iface) -> Self {
        self.out_iface = Some(IfaceMatch {
            iface,
            negated: false,
        });
        self
    }
    /// `-p proto`.
    pub fn protocol(mut self, p: Protocol) -> Self {
        self.protocol = Some(p);
        self
    }
    /// `--sport`.
    pub fn sport(mut self, p: PortRange) -> Self {
        self.sport = Some(p);
        self
    }
    /// `--dport`.
    pub fn dport(mut self, p: PortRange) -> Self {
        self.dport = Some(p);
        self
    }
    /// `-m addrtype --src-type`.
    pub fn src_type(mut self, t: AddrType) -> Self {
        self.src_type = Some(t);
        self
    }
    /// `-m addrtype --dst-type`.
    pub fn dst_type(mut self, t: AddrType) -> Self {
        self.dst_type = Some(t);
        self
    }
    /// `-m ipvs --ipvs`.
    pub fn ipvs(mut self) -> Self {
        self.ipvs = true;
        self
    }
    /// `-m conntrack --ctstate`.
    pub fn ctstate(mut self, s: CtState) -> Self {
        self.ctstate = Some(s);
        self
    }
    /// `-m mark --mark`.
    pub fn mark(mut self, m: Mark) -> Self {
        self.mark = Some(m);
        self
    }
}

/// `REJECT --reject-with`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectWith {
    /// `tcp-reset` (needs `-p tcp`): the client's connect fails at once with ECONNREFUSED.
    TcpReset,
    /// `icmp-port-unreachable` (IPv4).
    IcmpPortUnreachable,
    /// `icmp6-port-unreachable` (IPv6).
    Icmp6PortUnreachable,
}

impl RejectWith {
    /// Name as iptables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectWith::TcpReset => "tcp-reset",
            RejectWith::IcmpPortUnreachable => "icmp-port-unreachable",
            RejectWith::Icmp6PortUnreachable => "icmp6-port-unreachable",
        }
    }
}

/// A DNAT destination: an address and an optional port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NatTo {
    /// The address.
    pub addr: IpAddr,
    /// The port (needs `-p tcp|udp|sctp`).
    pub port: Option<Port>,
}

impl fmt::Display for NatTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.addr, self.port) {
            (a, None) => write!(f, "{a}"),
            (IpAddr::V4(a), Some(p)) => write!(f, "{a}:{p}"),
            (IpAddr::V6(a), Some(p)) => write!(f, "[{a}]:{p}"),
        }
    }
}

impl FromStr for NatTo {
    type Err = Error;
    fn from_str(s: &str) -> Result<NatTo, Error> {
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(NatTo { addr, port: None });
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (a, p) = rest
                .split_once("]:")
                .ok_or_else(|| Error::invalid("nat destination", s, "expected [addr]:port"))?;
            let addr = a.parse::<IpAddr>().map_err(|e| {
                tracing::debug!(error = %e, value = s, "bad address");
                Error::invalid("nat destination", s, "not an IP address")
            })?;
            return Ok(NatTo {
                addr,
                port: Some(p.parse()?),
            });
        }
        let (a, p) = s
            .rsplit_once(':')
            .ok_or_else(|| Error::invalid("nat destination", s, "expected addr or addr:port"))?;
        let addr = a.parse::<std::net::Ipv4Addr>().map_err(|e| {
            tracing::debug!(error = %e, value = s, "bad address");
            Error::invalid("nat destination", s, "not an IPv4 address")
        })?;
        Ok(NatTo {
            addr: IpAddr::V4(addr),
            port: Some(p.parse()?),
        })
    }
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// `-j ACCEPT`.
    Accept,
    /// `-j DROP`.
    Drop,
    /// `-j RETURN`.
    Return,
    /// `-j REJECT --reject-with …` (filter table only).
    Reject(RejectWith),
    /// `-j <our chain>`.
    Jump(ChainName),
    /// `-j MARK --set-xmark value/mask` (mangle only). `Mark::new(v)` is `--set-mark v`.
    SetMark(Mark),
    /// `-j DNAT --to-destination` (nat only).
    Dnat(NatTo),
    /// `-j SNAT --to-source` (nat only).
    Snat(IpAddr),
    /// `-j MASQUERADE` (nat only).
    Masquerade,
    /// `-j REDIRECT --to-ports` (nat only; needs `-p tcp|udp|sctp`).
    Redirect(Port),
}

/// One rule: matches, a target, and an optional comment (`-m comment`).
///
/// # Examples
/// ```
/// use vipmesh_netfilter::{Rule, Matches, Target, Mark};
/// let r = Rule::new(Matches::new().destination("10.0.0.4".parse().unwrap()), Target::SetMark(Mark::new(0x103)));
/// assert_eq!(r.to_string(), "-d 10.0.0.4/32 -j MARK --set-xmark 0x103/0xffffffff");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// The matches.
    pub matches: Matches,
    /// The target.
    pub target: Target,
    /// The comment, rendered as the last match (where `iptables-nft` prints it).
    pub comment: Option<Comment>,
}

impl Rule {
    /// A rule without a comment.
    pub fn new(matches: Matches, target: Target) -> Rule {
        Rule {
            matches,
            target,
            comment: None,
        }
    }
    /// Set the comment.
    pub fn with_comment(mut self, c: Comment) -> Rule {
        self.comment = Some(c);
        self
    }

    /// Check the cross-field invariants of a rule placed in `family`/`table`.
    pub(crate) fn check(&self, family: Family, table: Table) -> Result<(), String> {
        let m = &self.matches;
        for (what, a) in [("-s", &m.source), ("-d", &m.destination)] {
            if let Some(a) = a
                && a.cidr.family() != family
            {
                return Err(format!("{what} {} is not {family}", a.cidr));
            }
        }
        let ports_ok = m.protocol.is_some_and(Protocol::has_ports);
        if (m.sport.is_some() || m.dport.is_some()) && !ports_ok {
            return Err("--sport/--dport need -p tcp, udp or sctp".into());
        }
        match m.protocol {
            Some(Protocol::Icmp) if family == Family::V6 => {
                return Err("icmp in an ipv6 rule".into());
            }
            Some(Protocol::Icmpv6) if family == Family::V4 => {
                return Err("icmpv6 in an ipv4 rule".into());
            }
            _ => {}
        }
        let table_ok = |ok: &[Table], what: &str| {
            if ok.contains(&table) {
                Ok(())
            } else {
                Err(format!("{what} is not valid in the {table} table"))
            }
        };
        match &self.target {
            Target::Accept | Target::Drop | Target::Return | Target::Jump(_) => Ok(()),
            Target::Reject(w) => {
                table_ok(&[Table::Filter], "REJECT")?;
                match (w, family) {
                    (RejectWith::TcpReset, _) if m.protocol != Some(Protocol::Tcp) => {
                        Err("--reject-with tcp-reset needs -p tcp".into())
                    }
                    (RejectWith::IcmpPortUnreachable, Family::V6) => {
                        Err("icmp-port-unreachable in ipv6".into())
                    }
                    (RejectWith::Icmp6PortUnreachable, Family::V4) => {
                        Err("icmp6-port-unreachable in ipv4".into())
                    }
                    _ => Ok(()),
                }
            }
            Target::SetMark(_) => table_ok(&[Table::Mangle], "MARK"),
            Target::Dnat(to) => {
                table_ok(&[Table::Nat], "DNAT")?;
                if Family::of(to.addr) != family {
                    return Err(format!("DNAT to {to} is not {family}"));
                }
                if to.port.is_some() && !ports_ok {
                    return Err("DNAT to a port needs -p tcp, udp or sctp".into());
                }
                Ok(())
            }
            Target::Snat(a) => {
                table_ok(&[Table::Nat], "SNAT")?;
                if Family::of(*a) != family {
                    return Err(format!("SNAT to {a} is not {family}"));
                }
                Ok(())
            }
            Target::Masquerade => table_ok(&[Table::Nat], "MASQUERADE"),
            Target::Redirect(_) => {
                table_ok(&[Table::Nat], "REDIRECT")?;
                if !ports_ok {
                    return Err("REDIRECT --to-ports needs -p tcp, udp or sctp".into());
                }
                Ok(())
            }
        }
    }
}
