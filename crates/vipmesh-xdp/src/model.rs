//! Typed values the dataplane is programmed with.

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

use crate::{Error, abi};

/// A transport protocol the fast path handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Proto {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl From<Proto> for vipmesh_types::Protocol {
    fn from(p: Proto) -> vipmesh_types::Protocol {
        match p {
            Proto::Tcp => vipmesh_types::Protocol::Tcp,
            Proto::Udp => vipmesh_types::Protocol::Udp,
        }
    }
}

impl TryFrom<vipmesh_types::Protocol> for Proto {
    type Error = Error;

    /// TCP and UDP convert; the fast path does not handle SCTP.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `protocol` for SCTP.
    fn try_from(p: vipmesh_types::Protocol) -> Result<Proto, Error> {
        match p {
            vipmesh_types::Protocol::Tcp => Ok(Proto::Tcp),
            vipmesh_types::Protocol::Udp => Ok(Proto::Udp),
            vipmesh_types::Protocol::Sctp => Err(Error::InvalidConfig {
                field: "protocol",
                value: p.to_string(),
                reason: "the XDP fast path handles TCP and UDP only",
            }),
        }
    }
}

/// How packets reach a service's backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForwardMode {
    /// Rewrite destination to the backend (DNAT) and redirect; replies are un-NATed by the
    /// `tc_rev` program on the backend-facing interface. Backends on this node only.
    Nat,
    /// Encapsulate (IPIP / IP6IP6) towards the backend, which decapsulates with `tc_decap`
    /// and replies directly (DSR). The VIP must be on the backend's `lo`.
    Encap,
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidConfig {
            field: "mac",
            value: s.to_owned(),
            reason: "expected six hex bytes separated by ':'",
        };
        let mut out = [0u8; 6];
        let mut parts = s.trim().split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(invalid)?;
            if p.is_empty() || p.len() > 2 {
                return Err(invalid());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_bad_hex| invalid())?;
        }
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// What a service is: the destination the client addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// The VIP or the node address of a published port.
    pub addr: IpAddr,
    /// The (published) port.
    pub port: u16,
    /// The protocol.
    pub proto: Proto,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        match self.addr {
            IpAddr::V4(a) => write!(f, "{p}/{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "{p}/[{a}]:{}", self.port),
        }
    }
}

/// Where frames for a backend leave the node: the egress interface and the MACs to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Egress {
    /// Interface index the frame is redirected to. The kernel resolves it in the network
    /// namespace of the thread that calls [`crate::Dataplane::upsert_service`], so call it from
    /// the node's namespace.
    pub ifindex: u32,
    /// Source MAC (normally the egress interface's own).
    pub src_mac: MacAddr,
    /// Destination MAC (the backend's, or the next hop's).
    pub dst_mac: MacAddr,
}

/// One backend of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// The task's address. Same family as the service.
    pub addr: IpAddr,
    /// The target port. NAT rewrites to it; encap mode leaves the packet alone and the task's
    /// `tc_decap` translates the published port (see [`crate::Dataplane::set_task_port`]).
    pub port: u16,
    /// Maglev weight; 0 keeps the backend out of the table.
    pub weight: u32,
    /// How to reach it.
    pub egress: Egress,
}

/// A service and its backends, as the dataplane should serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The address the clients use.
    pub key: ServiceKey,
    /// NAT or encapsulation.
    pub mode: ForwardMode,
    /// The backends; an empty list is allowed (packets are then dropped, see the crate docs).
    pub backends: Vec<Backend>,
    /// Maglev table size M (prime); see [`vipmesh_maglev::TableSize`].
    pub table_size: vipmesh_maglev::TableSize,
}

/// Dataplane-wide settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Outer source of IPv4 encapsulated packets (the node's address).
    pub node_v4: Option<std::net::Ipv4Addr>,
    /// Outer source of IPv6 encapsulated packets.
    pub node_v6: Option<std::net::Ipv6Addr>,
    /// A TCP flow with no packet for this long is forgotten.
    pub tcp_idle: Duration,
    /// A UDP flow with no packet for this long is forgotten.
    pub udp_idle: Duration,
    /// A flow that saw FIN is forgotten after this long without packets; a new SYN on its
    /// tuple starts a new flow at once.
    pub close_timeout: Duration,
    /// MTU of the links encapsulated packets cross (at least 1280). The fast path lowers the
    /// MSS option of TCP SYNs to encap services so that a full segment still fits once wrapped:
    /// to `encap_mtu - 60` for IPv4 (outer and inner IPv4 header, TCP header) and
    /// `encap_mtu - 100` for IPv6. Counted as `mss_clamped`.
    pub encap_mtu: u16,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_v4: None,
            node_v6: None,
            tcp_idle: Duration::from_secs(300),
            udp_idle: Duration::from_secs(30),
            close_timeout: Duration::from_secs(10),
            encap_mtu: 1500,
        }
    }
}

impl Config {
    pub(crate) fn to_abi(self) -> Result<abi::Cfg, Error> {
        let ns = |field: &'static str, d: Duration| -> Result<u64, Error> {
            let v = u64::try_from(d.as_nanos()).map_err(|_too_long| Error::InvalidConfig {
                field,
                value: format!("{d:?}"),
                reason: "longer than 584 years",
            })?;
            if v == 0 {
                return Err(Error::InvalidConfig {
                    field,
                    value: format!("{d:?}"),
                    reason: "must be positive",
                });
            }
            Ok(v)
        };
        if self.encap_mtu < 1280 {
            return Err(Error::InvalidConfig {
                field: "encap_mtu",
                value: self.encap_mtu.to_string(),
                reason: "below 1280, the IPv6 minimum MTU",
            });
        }
        Ok(abi::Cfg {
            node4: self
                .node_v4
                .map(|a| addr_to_abi(IpAddr::V4(a)))
                .unwrap_or_default(),
            node6: self
                .node_v6
                .map(|a| addr_to_abi(IpAddr::V6(a)))
                .unwrap_or_default(),
            tcp_idle_ns: ns("tcp_idle", self.tcp_idle)?,
            udp_idle_ns: ns("udp_idle", self.udp_idle)?,
            close_ns: ns("close_timeout", self.close_timeout)?,
            flags: 0,
            encap_mtu: self.encap_mtu,
            pad: 0,
        })
    }
}

/// The wire form of an address in a `vm_addr`.
pub fn addr_to_abi(addr: IpAddr) -> abi::Addr {
    let mut w = [0u32; 4];
    match addr {
        IpAddr::V4(a) => w[0] = u32::from_ne_bytes(a.octets()),
        IpAddr::V6(a) => {
            let o = a.octets();
            for (i, c) in o.chunks_exact(4).enumerate() {
                w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
    abi::Addr { w }
}

/// The address in a `vm_addr` of family `family` ([`abi::FAMILY_V4`] or IPv6 otherwise).
pub fn addr_from_abi(addr: abi::Addr, family: u8) -> IpAddr {
    if family == abi::FAMILY_V4 {
        IpAddr::from(addr.w[0].to_ne_bytes())
    } else {
        let mut o = [0u8; 16];
        for (i, w) in addr.w.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::from(o)
    }
}

/// The family byte of an address.
pub fn family(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => abi::FAMILY_V4,
        IpAddr::V6(_) => abi::FAMILY_V6,
    }
}

impl ServiceKey {
    /// The `vm_svc_key` of this service.
    pub fn to_abi(&self) -> abi::SvcKey {
        abi::SvcKey {
            addr: addr_to_abi(self.addr),
            port: self.port.to_be(),
            proto: self.proto.number(),
            family: family(self.addr),
        }
    }
}

/// Statistics of one service or backend, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded (frames as received).
    pub bytes: u64,
    /// Flows created (Maglev lookups).
    pub new_flows: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protos_convert_at_the_edge() {
        for p in [Proto::Tcp, Proto::Udp] {
            let shared = vipmesh_types::Protocol::from(p);
            assert_eq!(shared.number(), p.number());
            assert_eq!(Proto::try_from(shared).ok(), Some(p));
        }
        let e = Proto::try_from(vipmesh_types::Protocol::Sctp).err();
        assert!(
            matches!(&e, Some(Error::InvalidConfig { field: "protocol", value, .. }) if value == "sctp"),
            "{e:?}"
        );
    }

    #[test]
    fn mac_round_trip_and_errors() {
        let m: MacAddr = "02:00:0a:ff:00:01".parse().unwrap();
        assert_eq!(m.0, [2, 0, 0x0a, 0xff, 0, 1]);
        assert_eq!(m.to_string(), "02:00:0a:ff:00:01");
        for bad in [
            "",
            "02:00",
            "02:00:0a:ff:00:01:02",
            "zz:00:00:00:00:00",
            "002:0:0:0:0:0",
        ] {
            assert!(
                matches!(
                    bad.parse::<MacAddr>(),
                    Err(Error::InvalidConfig { field: "mac", .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn service_key_wire_form() {
        let k = ServiceKey {
            addr: "10.0.0.1".parse().unwrap(),
            port: 80,
            proto: Proto::Tcp,
        };
        let a = k.to_abi();
        assert_eq!(a.addr.w[0].to_ne_bytes(), [10, 0, 0, 1]);
        assert_eq!(a.addr.w[1..], [0, 0, 0]);
        assert_eq!(a.port.to_ne_bytes(), [0, 80]);
        assert_eq!((a.proto, a.family), (6, 4));
        assert_eq!(k.to_string(), "tcp/10.0.0.1:80");
    }

    #[test]
    fn addr_round_trip() {
        for a in ["10.1.2.3", "fd00::1:2", "::ffff:1.2.3.4"] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(addr_from_abi(addr_to_abi(ip), family(ip)), ip);
        }
    }

    #[test]
    fn config_rejects_zero_timeouts() {
        let c = Config {
            tcp_idle: Duration::ZERO,
            ..Config::default()
        };
        assert!(matches!(
            c.to_abi(),
            Err(Error::InvalidConfig {
                field: "tcp_idle",
                ..
            })
        ));
        assert!(Config::default().to_abi().is_ok());
    }

    #[test]
    fn config_rejects_an_encap_mtu_below_1280() {
        let c = Config {
            encap_mtu: 1279,
            ..Config::default()
        };
        match c.to_abi() {
            Err(Error::InvalidConfig { field, value, .. }) => {
                assert_eq!((field, value.as_str()), ("encap_mtu", "1279"));
            }
            other => panic!("{other:?}"),
        }
        let ok = Config {
            encap_mtu: 1280,
            ..Config::default()
        };
        assert_eq!(ok.to_abi().unwrap().encap_mtu, 1280);
    }
}
