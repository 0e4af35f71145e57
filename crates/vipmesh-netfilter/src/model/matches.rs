//! The match part of a rule ([`Matches`]) and the values only matches use: address types,
//! conntrack states, marks, comments.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

use super::{Cidr, Iface, PortRange, Protocol};

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
