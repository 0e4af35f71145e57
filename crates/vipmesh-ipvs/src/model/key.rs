//! What identifies a virtual service: [`ServiceKey`] and [`Fwmark`].

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;

use super::family::{SockAddr, addr_bytes, addr_from, protocol_from_raw, protocol_raw};
use super::invalid;
use super::{Family, Protocol};
use crate::Error;
use crate::codec::ipvs::SvcAttr;

/// A firewall mark identifying a service; never 0 (the kernel treats 0 as "no fwmark").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fwmark(NonZeroU32);

impl Fwmark {
    /// A fwmark.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `fwmark` if `mark` is 0.
    pub fn new(mark: u32) -> Result<Self, Error> {
        NonZeroU32::new(mark)
            .map(Fwmark)
            .ok_or_else(|| invalid("fwmark", mark, "a fwmark service needs a non-zero mark"))
    }

    /// The mark.
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

/// What identifies a virtual service: `{af, protocol, addr, port}` or `{af, fwmark}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceKey {
    /// An `addr:port` service (`ipvsadm -t/-u/--sctp-service`).
    Addr {
        /// Protocol.
        protocol: Protocol,
        /// Virtual address (its family is the service's).
        addr: IpAddr,
        /// Virtual port (0 only for persistent services).
        port: u16,
    },
    /// A firewall-mark service (`ipvsadm -f`).
    Fwmark {
        /// Address family of the service.
        af: Family,
        /// The mark.
        mark: Fwmark,
    },
}

impl ServiceKey {
    /// An `addr:port` key.
    pub fn addr(protocol: Protocol, addr: IpAddr, port: u16) -> Self {
        ServiceKey::Addr {
            protocol,
            addr,
            port,
        }
    }

    /// An `addr:port` key where the family is given separately (as on the wire).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `addr` when `addr` is not of family `af`.
    pub fn addr_in(af: Family, protocol: Protocol, addr: IpAddr, port: u16) -> Result<Self, Error> {
        if Family::of(&addr) != af {
            return Err(invalid(
                "addr",
                addr,
                "address does not match the service's address family",
            ));
        }
        Ok(ServiceKey::Addr {
            protocol,
            addr,
            port,
        })
    }

    /// A fwmark key.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `fwmark` if `mark` is 0.
    pub fn fwmark(af: Family, mark: u32) -> Result<Self, Error> {
        Ok(ServiceKey::Fwmark {
            af,
            mark: Fwmark::new(mark)?,
        })
    }

    /// The key from a service nest (`AF` plus `FWMARK`, or `PROTOCOL`/`ADDR`/`PORT`).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the missing or bad attribute.
    pub fn from_attrs(attrs: &[SvcAttr]) -> Result<Self, Error> {
        let (mut af, mut proto, mut addr, mut port, mut fwmark) = (None, None, None, None, None);
        for a in attrs {
            match a {
                SvcAttr::Af(v) => af = Some(*v),
                SvcAttr::Protocol(v) => proto = Some(*v),
                SvcAttr::Addr(b) => addr = Some(b.as_slice()),
                SvcAttr::Port(v) => port = Some(*v),
                SvcAttr::Fwmark(v) => fwmark = Some(*v),
                _ => {}
            }
        }
        let af = Family::from_raw(
            "af",
            af.ok_or_else(|| invalid("af", "missing", "service without AF"))?,
        )?;
        match fwmark {
            Some(m) if m != 0 => ServiceKey::fwmark(af, m),
            _ => {
                let proto =
                    protocol_from_raw(proto.ok_or_else(|| {
                        invalid("protocol", "missing", "service without protocol")
                    })?)?;
                let addr = addr_from(
                    "addr",
                    af,
                    addr.ok_or_else(|| invalid("addr", "missing", "service without address"))?,
                )?;
                ServiceKey::addr_in(af, proto, addr, port.unwrap_or(0))
            }
        }
    }

    /// The service's address family.
    pub fn family(&self) -> Family {
        match self {
            ServiceKey::Addr { addr, .. } => Family::of(addr),
            ServiceKey::Fwmark { af, .. } => *af,
        }
    }

    /// The identifying attributes (`AF` and `FWMARK`, or `AF`, `PROTOCOL`, `ADDR`, `PORT`).
    pub(crate) fn attrs(&self) -> Vec<SvcAttr> {
        match self {
            ServiceKey::Addr {
                protocol,
                addr,
                port,
            } => vec![
                SvcAttr::Af(Family::of(addr).raw()),
                SvcAttr::Protocol(protocol_raw(*protocol)),
                SvcAttr::Addr(addr_bytes(addr).to_vec()),
                SvcAttr::Port(*port),
            ],
            ServiceKey::Fwmark { af, mark } => {
                vec![SvcAttr::Af(af.raw()), SvcAttr::Fwmark(mark.get())]
            }
        }
    }
}

impl fmt::Display for ServiceKey {
    /// `TCP 10.0.0.1:80`, `UDP [2001:db8::1]:53`, `FWM 259` (`FWM 259 IPv6`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Addr {
                protocol,
                addr,
                port,
            } => {
                let p = match protocol {
                    Protocol::Tcp => "TCP",
                    Protocol::Udp => "UDP",
                    Protocol::Sctp => "SCTP",
                };
                write!(f, "{p} {}", SockAddr(*addr, *port))
            }
            ServiceKey::Fwmark {
                af: Family::Inet,
                mark,
            } => write!(f, "FWM {}", mark.get()),
            ServiceKey::Fwmark {
                af: Family::Inet6,
                mark,
            } => write!(f, "FWM {} IPv6", mark.get()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    #[test]
    fn fwmark_zero_is_rejected() {
        let e = ServiceKey::fwmark(Family::Inet, 0).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Invalid {
                    field: "fwmark",
                    ..
                }
            ),
            "{e}"
        );
    }
}
