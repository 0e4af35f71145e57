//! What a rule does: [`Target`], with its `REJECT` and `DNAT` arguments.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::error::Error;

use super::{ChainName, Mark, Port};

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
