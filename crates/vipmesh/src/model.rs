//! The typed desired state a runtime hands to vipmesh, and its validation.
//!
//! Everything here is pure. A [`NodeState`] is what one node must hold: its networks, each a
//! [`NetworkState`] (the network and its services). Building one with [`NodeState::new`] or
//! [`NetworkState::new`] checks every cross-object rule (unique ids, names and VIPs, VIPs inside
//! a subnet of their family, no VIP that is also a backend, non-overlapping fwmark ranges), so
//! a value of these types is always valid. Deserialisation validates too: every struct denies
//! unknown fields and every newtype goes through its constructor (`TryFrom`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

pub use vipmesh_types::Family;

/// An IP network in CIDR form, with the host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet {
    addr: IpAddr,
    prefix: u8,
}

impl Subnet {
    /// Builds a subnet; host bits must be zero.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `subnet` when the prefix is too long or host bits are set.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Subnet, Error> {
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let shown = format!("{addr}/{prefix}");
        if prefix > max {
            return Err(Error::invalid(
                "subnet",
                shown,
                "prefix longer than the address",
            ));
        }
        let s = Subnet { addr, prefix };
        if s.network_bits(addr) != bits(addr) {
            return Err(Error::invalid("subnet", shown, "host bits are set"));
        }
        Ok(s)
    }

    /// The network address.
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

    fn network_bits(&self, ip: IpAddr) -> u128 {
        let width = match ip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let host = u32::from(width - self.prefix.min(width));
        let mask = if host >= 128 { 0 } else { u128::MAX << host };
        bits(ip) & mask
    }

    /// Whether two subnets share an address.
    pub fn overlaps(&self, o: &Subnet) -> bool {
        self.contains(o.addr) || o.contains(self.addr)
    }

    /// Whether `ip` lies in this subnet.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family() && self.network_bits(ip) == bits(self.addr)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Subnet, Error> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| Error::invalid("subnet", s, "expected ADDR/PREFIX"))?;
        let addr = a
            .parse::<IpAddr>()
            .map_err(|e| Error::invalid("subnet", s, &e.to_string()))?;
        let prefix = p
            .parse::<u8>()
            .map_err(|e| Error::invalid("subnet", s, &e.to_string()))?;
        Subnet::new(addr, prefix)
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Subnet, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A service name: a DNS label (1–63 of `a-z`, `0-9`, `-`, `_`, not starting or ending with
/// `-`). It also names the service's rules in the kernel (as a comment), so nothing else is
/// allowed: no quotes, spaces or shell metacharacters can reach a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ServiceName(String);

impl ServiceName {
    /// Validates a name.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `service.name`.
    pub fn new(name: &str) -> Result<ServiceName, Error> {
        let why = if name.is_empty() {
            Some("empty")
        } else if name.len() > 63 {
            Some("longer than 63 bytes")
        } else if name.starts_with('-') || name.ends_with('-') {
            Some("starts or ends with '-'")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            Some("only a-z, 0-9, '-' and '_' are allowed")
        } else {
            None
        };
        match why {
            Some(w) => Err(Error::invalid("service.name", name, w)),
            None => Ok(ServiceName(name.to_string())),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for ServiceName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ServiceName, D::Error> {
        let s = String::deserialize(d)?;
        ServiceName::new(&s).map_err(serde::de::Error::custom)
    }
}

pub use vipmesh_types::Protocol;

/// A port number, 1–65535 (0 is not a port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u16")]
pub struct Port(u16);

impl Port {
    /// Validates a port.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `port` for 0 or a value above 65535.
    pub fn new(p: u32) -> Result<Port, Error> {
        match u16::try_from(p) {
            Ok(v) if v != 0 => Ok(Port(v)),
            _ => Err(Error::invalid("port", p, "must be 1..=65535")),
        }
    }

    /// The value.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<u32> for Port {
    type Error = Error;
    fn try_from(p: u32) -> Result<Port, Error> {
        Port::new(p)
    }
}

impl From<Port> for u16 {
    fn from(p: Port) -> u16 {
        p.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A port a service serves on its VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    /// The protocol.
    pub protocol: Protocol,
    /// The port, 1–65535.
    pub port: Port,
}

impl ServicePort {
    /// A port of a protocol.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `port` for 0.
    pub fn new(protocol: Protocol, port: u16) -> Result<ServicePort, Error> {
        Ok(ServicePort {
            protocol,
            port: Port::new(u32::from(port))?,
        })
    }
}

/// The virtual IPs of a service: at most one per family. In a state file either one address
/// (`"10.0.0.9"`) or a list (`["10.0.0.9", "fd00::9"]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Vips {
    v4: Option<IpAddr>,
    v6: Option<IpAddr>,
}

impl Vips {
    /// One VIP.
    pub fn one(addr: IpAddr) -> Vips {
        let mut v = Vips::default();
        match Family::of(addr) {
            Family::V4 => v.v4 = Some(addr),
            Family::V6 => v.v6 = Some(addr),
        }
        v
    }

    /// Validates a list: 1 or 2 addresses, at most one per family.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `service.vip`.
    pub fn new(addrs: &[IpAddr]) -> Result<Vips, Error> {
        if addrs.is_empty() || addrs.len() > 2 {
            return Err(Error::invalid(
                "service.vip",
                format!("{addrs:?}"),
                "one address, or one of each family",
            ));
        }
        let mut v = Vips::default();
        for a in addrs {
            let slot = match Family::of(*a) {
                Family::V4 => &mut v.v4,
                Family::V6 => &mut v.v6,
            };
            if slot.replace(*a).is_some() {
                return Err(Error::invalid(
                    "service.vip",
                    format!("{addrs:?}"),
                    "at most one VIP per family",
                ));
            }
        }
        Ok(v)
    }

    /// The VIP of a family.
    pub fn get(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }

    /// Every VIP, v4 first.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.v4.into_iter().chain(self.v6)
    }

    /// The families that have a VIP.
    pub fn families(&self) -> impl Iterator<Item = Family> + '_ {
        self.iter().map(Family::of)
    }
}

impl fmt::Display for Vips {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self.iter().map(|a| a.to_string()).collect();
        f.write_str(&all.join(","))
    }
}

impl Serialize for Vips {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let all: Vec<IpAddr> = self.iter().collect();
        match all.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Vips {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Vips, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vips;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IP address or a list of one IPv4 and one IPv6 address")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Vips, E> {
                let a: IpAddr = s.parse().map_err(E::custom)?;
                Ok(Vips::one(a))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vips, A::Error> {
                let mut addrs = Vec::new();
                while let Some(a) = seq.next_element::<IpAddr>()? {
                    addrs.push(a);
                    if addrs.len() > 2 {
                        break;
                    }
                }
                Vips::new(&addrs).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// How clients find a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// Virtual IPs (one per family), load-balanced by IPVS.
    Vip(Vips),
    /// DNS round robin: the name resolves to the task addresses, shuffled; no VIP, no IPVS.
    DnsRr,
    /// Reached through published ports only (the services of the ingress network, derived
    /// from [`crate::ingress::Ingress`]): marked by destination port in the ingress sandbox.
    Published,
}

/// An IPVS scheduler name, checked against the schedulers Linux ships.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scheduler(String);

impl Scheduler {
    /// The schedulers in Linux (`net/netfilter/ipvs/ip_vs_*.c`).
    pub const KNOWN: &'static [&'static str] = &[
        "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh",
        "twos",
    ];

    /// Round robin, the default (as Swarm).
    pub fn rr() -> Scheduler {
        Scheduler("rr".into())
    }

    /// Validates a name.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `service.scheduler` for a name Linux does not have.
    pub fn new(name: &str) -> Result<Scheduler, Error> {
        if Self::KNOWN.contains(&name) {
            Ok(Scheduler(name.to_string()))
        } else {
            Err(Error::invalid(
                "service.scheduler",
                name,
                "unknown IPVS scheduler (known: rr wrr lc wlc lblc lblcr dh sh sed nq fo ovf mh twos)",
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Scheduler {
    type Error = Error;
    fn try_from(s: String) -> Result<Scheduler, Error> {
        Scheduler::new(&s)
    }
}

impl From<Scheduler> for String {
    fn from(s: Scheduler) -> String {
        s.0
    }
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler::rr()
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Client affinity: connections from one client go to the same task for `timeout_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "PersistenceFile")]
pub struct Persistence {
    /// Seconds a client stays with its task (1–2678400, as ipvsadm).
    pub timeout_secs: u32,
    /// The IPv4 client netmask prefix that groups clients (0–32, default 32 = one address).
    #[serde(default = "default_netmask")]
    pub netmask_prefix: u8,
    /// The IPv6 client prefix (1–128, default 128 = one address; the kernel rejects 0 for
    /// IPv6, `ip_vs_ctl.c`).
    #[serde(default = "default_netmask6")]
    pub netmask_prefix_v6: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersistenceFile {
    timeout_secs: u32,
    #[serde(default = "default_netmask")]
    netmask_prefix: u8,
    #[serde(default = "default_netmask6")]
    netmask_prefix_v6: u8,
}

impl TryFrom<PersistenceFile> for Persistence {
    type Error = Error;
    fn try_from(f: PersistenceFile) -> Result<Persistence, Error> {
        Persistence::new(f.timeout_secs, f.netmask_prefix, f.netmask_prefix_v6)
    }
}

impl Persistence {
    /// Validates persistence settings.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `service.persistence.*`.
    pub fn new(
        timeout_secs: u32,
        netmask_prefix: u8,
        netmask_prefix_v6: u8,
    ) -> Result<Persistence, Error> {
        if timeout_secs == 0 || timeout_secs > 2_678_400 {
            return Err(Error::invalid(
                "service.persistence.timeout_secs",
                timeout_secs,
                "must be 1..=2678400",
            ));
        }
        if netmask_prefix > 32 {
            return Err(Error::invalid(
                "service.persistence.netmask_prefix",
                netmask_prefix,
                "must be 0..=32",
            ));
        }
        if netmask_prefix_v6 == 0 || netmask_prefix_v6 > 128 {
            return Err(Error::invalid(
                "service.persistence.netmask_prefix_v6",
                netmask_prefix_v6,
                "must be 1..=128 (the kernel rejects 0 for IPv6)",
            ));
        }
        Ok(Persistence {
            timeout_secs,
            netmask_prefix,
            netmask_prefix_v6,
        })
    }

    /// One-address affinity for `timeout_secs`.
    ///
    /// # Errors
    /// As [`Persistence::new`].
    pub fn per_client(timeout_secs: u32) -> Result<Persistence, Error> {
        Persistence::new(timeout_secs, 32, 128)
    }

    /// The prefix used for a family.
    pub fn prefix(&self, family: Family) -> u8 {
        match family {
            Family::V4 => self.netmask_prefix,
            Family::V6 => self.netmask_prefix_v6,
        }
    }
}

fn default_netmask() -> u8 {
    32
}

fn default_netmask6() -> u8 {
    128
}

/// A relative weight, 0–65535 (IPVS's range); 0 takes no new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Weight(u32);

impl Weight {
    /// The largest weight.
    pub const MAX: u32 = 65535;

    /// Validates a weight.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `backend.weight` above 65535.
    pub fn new(w: u32) -> Result<Weight, Error> {
        if w > Self::MAX {
            return Err(Error::invalid("backend.weight", w, "must be 0..=65535"));
        }
        Ok(Weight(w))
    }

    /// Weight 0 (drain).
    pub const ZERO: Weight = Weight(0);

    /// The value.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Weight {
    type Error = Error;
    fn try_from(w: u32) -> Result<Weight, Error> {
        Weight::new(w)
    }
}

impl From<Weight> for u32 {
    fn from(w: Weight) -> u32 {
        w.0
    }
}

impl Default for Weight {
    fn default() -> Self {
        Weight(1)
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A task behind a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// The task's address on the network.
    pub addr: IpAddr,
    /// Its weight (default 1).
    #[serde(default)]
    pub weight: Weight,
}

impl Backend {
    /// A backend of weight 1.
    pub fn new(addr: IpAddr) -> Backend {
        Backend {
            addr,
            weight: Weight::default(),
        }
    }
}

/// A service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Its name (a DNS label).
    pub name: ServiceName,
    /// VIP or DNS round robin.
    pub mode: EndpointMode,
    /// The ports it serves; empty means every port of the VIP.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// The IPVS scheduler (default rr).
    #[serde(default)]
    pub scheduler: Scheduler,
    /// Client affinity.
    #[serde(default)]
    pub persistence: Option<Persistence>,
    /// Its tasks (of either family). May be empty: traffic to the VIP is then rejected at once.
    #[serde(default)]
    pub backends: Vec<Backend>,
}

impl Service {
    /// A VIP service with round robin and no ports restriction.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad name.
    pub fn vip(name: &str, vip: IpAddr, backends: &[IpAddr]) -> Result<Service, Error> {
        Ok(Service {
            name: ServiceName::new(name)?,
            mode: EndpointMode::Vip(Vips::one(vip)),
            ports: Vec::new(),
            scheduler: Scheduler::rr(),
            persistence: None,
            backends: backends.iter().copied().map(Backend::new).collect(),
        })
    }

    /// A dual-stack (or single-family) VIP service: one VIP per family in `vips`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad name or VIP list.
    pub fn vips(name: &str, vips: &[IpAddr], backends: &[IpAddr]) -> Result<Service, Error> {
        Ok(Service {
            mode: EndpointMode::Vip(Vips::new(vips)?),
            ..Service::vip(name, IpAddr::from([0, 0, 0, 0]), backends)?
        })
    }

    /// A DNS round-robin service.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad name.
    pub fn dnsrr(name: &str, backends: &[IpAddr]) -> Result<Service, Error> {
        Ok(Service {
            mode: EndpointMode::DnsRr,
            ..Service::vip(name, IpAddr::from([0, 0, 0, 0]), backends)?
        })
    }

    /// The VIPs, in VIP mode.
    pub fn vips_of(&self) -> Option<Vips> {
        match self.mode {
            EndpointMode::Vip(v) => Some(v),
            EndpointMode::DnsRr | EndpointMode::Published => None,
        }
    }

    /// True when IPVS balances it (VIP or published ports): it gets a fwmark.
    pub fn is_balanced(&self) -> bool {
        matches!(self.mode, EndpointMode::Vip(_) | EndpointMode::Published)
    }

    /// The families IPVS balances it in, on `net`: its VIPs' families, or every family of the
    /// network for a published service.
    pub fn lb_families(&self, net: &Network) -> Vec<Family> {
        match self.mode {
            EndpointMode::Vip(v) => v.families().collect(),
            EndpointMode::Published => net.families(),
            EndpointMode::DnsRr => Vec::new(),
        }
    }

    /// The VIP of a family, in VIP mode.
    pub fn vip_addr(&self, family: Family) -> Option<IpAddr> {
        self.vips_of().and_then(|v| v.get(family))
    }

    /// The backends of one family.
    pub fn backends_of(&self, family: Family) -> impl Iterator<Item = &Backend> + '_ {
        self.backends
            .iter()
            .filter(move |b| Family::of(b.addr) == family)
    }

    /// True when every port is UDP: removed backends are then deleted at once, since UDP
    /// "connections" never reach zero (kube-proxy learned this: k8s #71514).
    pub fn udp_only(&self) -> bool {
        !self.ports.is_empty() && self.ports.iter().all(|p| p.protocol == Protocol::Udp)
    }
}

/// A short network id, 1–10 of `a-z0-9`. It names the network's chains
/// (`VIPMESH-<id>-MARK`, within iptables' 28-character limit) and its rule comments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NetworkId(String);

impl NetworkId {
    /// The longest id: `VIPMESH-` + 10 + `-` + a 9-character suffix stays within 28.
    pub const MAX_LEN: usize = 10;

    /// Validates an id.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `network.id`.
    pub fn new(id: &str) -> Result<NetworkId, Error> {
        if id.is_empty() || id.len() > Self::MAX_LEN {
            return Err(Error::invalid(
                "network.id",
                id,
                "must be 1-10 characters (it names iptables chains, at most 28 bytes)",
            ));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(Error::invalid(
                "network.id",
                id,
                "only a-z and 0-9 are allowed",
            ));
        }
        Ok(NetworkId(id.to_string()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NetworkId {
    type Error = Error;
    fn try_from(s: String) -> Result<NetworkId, Error> {
        NetworkId::new(&s)
    }
}

impl From<NetworkId> for String {
    fn from(n: NetworkId) -> String {
        n.0
    }
}

impl fmt::Display for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for NetworkId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The fwmarks a network may allocate: non-empty, without 0. Ranges of the networks of one
/// node never overlap, which is how IPVS services are attributed to their network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "FwmarkFile")]
pub struct FwmarkRange {
    first: u32,
    last: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FwmarkFile {
    first: u32,
    last: u32,
}

impl TryFrom<FwmarkFile> for FwmarkRange {
    type Error = Error;
    fn try_from(f: FwmarkFile) -> Result<FwmarkRange, Error> {
        FwmarkRange::new(f.first, f.last)
    }
}

impl FwmarkRange {
    /// Validates a range.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `network.fwmarks`.
    pub fn new(first: u32, last: u32) -> Result<FwmarkRange, Error> {
        if first == 0 || first > last {
            return Err(Error::invalid(
                "network.fwmarks",
                format!("{first:#x}..={last:#x}"),
                "the fwmark range must be non-empty and not include 0",
            ));
        }
        Ok(FwmarkRange { first, last })
    }

    /// The first mark.
    pub fn first(&self) -> u32 {
        self.first
    }

    /// The last mark.
    pub fn last(&self) -> u32 {
        self.last
    }

    /// How many marks the range holds.
    pub fn size(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }

    /// Whether `m` lies in the range.
    pub fn contains(&self, m: u32) -> bool {
        (self.first..=self.last).contains(&m)
    }

    /// Whether two ranges share a mark.
    pub fn overlaps(&self, o: &FwmarkRange) -> bool {
        self.first <= o.last && o.first <= self.last
    }
}

impl Default for FwmarkRange {
    /// `0x100..=0x1ffff`: Swarm's first mark, as default for a node with one network.
    fn default() -> Self {
        FwmarkRange {
            first: 0x100,
            last: 0x1ffff,
        }
    }
}

impl fmt::Display for FwmarkRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..={:#x}", self.first, self.last)
    }
}

/// One subnet of a network and the load balancer's own address in it (the SNAT source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSubnet {
    /// The subnet tasks and VIPs of this family live in.
    pub subnet: Subnet,
    /// The LB namespace's address in it.
    pub lb_addr: IpAddr,
}

/// Where the load-balancing rules live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// One load-balancer namespace per network (libnetwork since 2018): the VIPs are
    /// addresses of its interface, marks are set in mangle `INPUT`, and a `-m ipvs` SNAT
    /// brings replies back. Clients in other namespaces reach the VIPs through it.
    #[default]
    LbNamespace,
    /// The old Swarm layout: the rules live in each client's own namespace (`lb_netns` names
    /// the client, `lb_interface`/`lb_addr` its interface and address). Marks are set in mangle
    /// `OUTPUT` on the client's own packets; no VIP address, no SNAT and no forwarding are
    /// needed, since IPVS answers locally generated traffic. Several networks may share one
    /// client namespace: each owns its chains and its fwmark range.
    PerClient,
    /// The ingress sandbox of the routing mesh (derived from [`crate::ingress::Ingress`]):
    /// published ports are marked in mangle `PREROUTING` by destination port, with the same
    /// IPVS services and `-m ipvs` SNAT as an LB namespace, and no VIP addresses.
    Ingress,
}

/// A network: its id, subnets, load-balancer namespace and fwmark range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    /// Its short id (names its chains).
    pub id: NetworkId,
    /// The load-balancer namespace: a name under `/run/netns` or an absolute path.
    pub lb_netns: String,
    /// The LB namespace's interface on the subnet (VIPs are added to it).
    pub lb_interface: String,
    /// One subnet per family (v4, v6 or both).
    pub subnets: Vec<NetSubnet>,
    /// The fwmarks this network allocates.
    pub fwmarks: FwmarkRange,
    /// Where its rules live.
    pub layout: Layout,
}

impl Network {
    /// A single-family network with the default mark range and layout.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad id.
    pub fn new(
        id: &str,
        subnet: Subnet,
        lb_netns: &str,
        lb_interface: &str,
        lb_addr: IpAddr,
    ) -> Result<Network, Error> {
        Ok(Network {
            id: NetworkId::new(id)?,
            lb_netns: lb_netns.to_string(),
            lb_interface: lb_interface.to_string(),
            subnets: vec![NetSubnet { subnet, lb_addr }],
            fwmarks: FwmarkRange::default(),
            layout: Layout::default(),
        })
    }

    /// Adds the subnet of the other family (dual stack).
    pub fn with_subnet(mut self, subnet: Subnet, lb_addr: IpAddr) -> Network {
        self.subnets.push(NetSubnet { subnet, lb_addr });
        self
    }

    /// Sets the fwmark range.
    pub fn with_fwmarks(mut self, fwmarks: FwmarkRange) -> Network {
        self.fwmarks = fwmarks;
        self
    }

    /// Sets the layout.
    pub fn with_layout(mut self, layout: Layout) -> Network {
        self.layout = layout;
        self
    }

    /// The subnet of a family.
    pub fn subnet(&self, family: Family) -> Option<&NetSubnet> {
        self.subnets.iter().find(|s| s.subnet.family() == family)
    }

    /// The families the network carries, v4 first.
    pub fn families(&self) -> Vec<Family> {
        let mut f: Vec<Family> = self.subnets.iter().map(|s| s.subnet.family()).collect();
        f.sort();
        f
    }
}

/// A network and its services. Build it with [`NetworkState::new`]; a value of this type is
/// valid.
///
/// A clone shares its services and its index with the original (each is copied on its first
/// change), so the controller's record of what it applied costs no second copy of a large
/// state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkState {
    network: Network,
    #[serde(serialize_with = "serialize_shared")]
    services: BTreeMap<ServiceName, Arc<Service>>,
    /// Who holds each VIP, and how many services list each backend address: derived from
    /// `services`, kept so one service can be validated and replaced in O(its size).
    #[serde(skip)]
    index: Arc<Index>,
}

/// Serializes shared services as the services themselves (serde's `rc` feature would do the
/// same, for every `Arc` of the workspace).
fn serialize_shared<S: serde::Serializer>(
    m: &BTreeMap<ServiceName, Arc<Service>>,
    ser: S,
) -> Result<S::Ok, S::Error> {
    ser.collect_map(m.iter().map(|(k, v)| (k, &**v)))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Index {
    vips: BTreeMap<IpAddr, ServiceName>,
    backends: BTreeMap<IpAddr, usize>,
    /// Services IPVS balances (each holds one fwmark).
    balanced: u64,
}

impl Index {
    /// The index of `services` (valid together).
    fn build(services: &[Service]) -> Index {
        let mut addrs: Vec<IpAddr> = services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.addr))
            .collect();
        addrs.sort_unstable();
        let mut backends: Vec<(IpAddr, usize)> = Vec::new();
        for a in addrs {
            match backends.last_mut() {
                Some((last, n)) if *last == a => *n += 1,
                _ => backends.push((a, 1)),
            }
        }
        Index {
            vips: services
                .iter()
                .flat_map(|s| {
                    s.vips_of()
                        .iter()
                        .flat_map(|v| v.iter().collect::<Vec<_>>())
                        .map(|v| (v, s.name.clone()))
                        .collect::<Vec<_>>()
                })
                .collect(),
            backends: backends.into_iter().collect(),
            balanced: services.iter().map(|s| u64::from(s.is_balanced())).sum(),
        }
    }

    fn add(&mut self, s: &Service) {
        for v in s
            .vips_of()
            .iter()
            .flat_map(|v| v.iter().collect::<Vec<_>>())
        {
            self.vips.insert(v, s.name.clone());
        }
        for b in &s.backends {
            *self.backends.entry(b.addr).or_default() += 1;
        }
        self.balanced += u64::from(s.is_balanced());
    }

    fn remove(&mut self, s: &Service) {
        for v in s
            .vips_of()
            .iter()
            .flat_map(|v| v.iter().collect::<Vec<_>>())
        {
            self.vips.remove(&v);
        }
        for b in &s.backends {
            if let Some(n) = self.backends.get_mut(&b.addr) {
                *n -= 1;
                if *n == 0 {
                    self.backends.remove(&b.addr);
                }
            }
        }
        self.balanced -= u64::from(s.is_balanced());
    }
}

impl NetworkState {
    /// Validates a network and its services.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field and value: an empty or duplicate-family subnet
    /// list, an LB address outside its subnet, duplicate service names or VIPs, a VIP outside
    /// the subnet of its family or of a family the network has no subnet for, a VIP that is
    /// also a backend or the LB address, a backend of a family the network lacks, a persistence
    /// netmask the kernel would reject, more services IPVS balances than marks in the
    /// network's fwmark range (`network.fwmarks`: each holds one).
    ///
    /// # Examples
    /// ```
    /// use vipmesh::model::*;
    /// let net = Network::new("demo", "10.0.0.0/24".parse()?, "lb-demo", "eth0",
    ///     "10.0.0.2".parse().unwrap())?;
    /// let vote = Service::vip("vote", "10.0.0.9".parse().unwrap(),
    ///     &["10.0.0.10".parse().unwrap(), "10.0.0.11".parse().unwrap()])?;
    /// let state = NetworkState::new(net, vec![vote])?;
    /// assert_eq!(state.services().count(), 1);
    /// # Ok::<(), vipmesh::Error>(())
    /// ```
    pub fn new(network: Network, services: Vec<Service>) -> Result<NetworkState, Error> {
        validate_network(&network)?;
        let mut st = NetworkState {
            network,
            services: BTreeMap::new(),
            index: Arc::new(Index::default()),
        };
        let mut vips = BTreeSet::new();
        let backend_addrs: BTreeSet<IpAddr> = services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.addr))
            .collect();
        let mut names = BTreeSet::new();
        for s in &services {
            st.check_service(s, &|a| backend_addrs.contains(&a), &mut |v| vips.insert(v))?;
            if !names.insert(&s.name) {
                return Err(Error::invalid(
                    "service.name",
                    s.name.clone(),
                    "used by two services",
                ));
            }
        }
        // Built in bulk: a map collected at once fills its nodes, one built by inserts in
        // order leaves them half empty (at 10 000 x 10 the index took 5.5 MiB that way).
        st.index = Arc::new(Index::build(&services));
        st.check_marks(st.index.balanced)?;
        st.services = services
            .into_iter()
            .map(|s| (s.name.clone(), Arc::new(s)))
            .collect();
        Ok(st)
    }

    /// Every balanced service holds one fwmark: `balanced` of them must fit the range.
    fn check_marks(&self, balanced: u64) -> Result<(), Error> {
        let range = self.network.fwmarks;
        if balanced > range.size() {
            return Err(Error::invalid(
                "network.fwmarks",
                format!("{}: {range}", self.network.id),
                &format!(
                    "{} marks for {balanced} services that IPVS balances (one mark each)",
                    range.size()
                ),
            ));
        }
        Ok(())
    }

    /// Checks one service against the network; `is_backend(a)`: `a` is a backend of some
    /// service; `claim_vip(v)`: claims `v`, false when another service holds it.
    fn check_service(
        &self,
        s: &Service,
        is_backend: &dyn Fn(IpAddr) -> bool,
        claim_vip: &mut dyn FnMut(IpAddr) -> bool,
    ) -> Result<(), Error> {
        let name = &s.name;
        let net = &self.network;
        let mut seen = BTreeSet::new();
        for b in &s.backends {
            let fam = Family::of(b.addr);
            if net.subnet(fam).is_none() {
                return Err(Error::invalid(
                    "service.backends.addr",
                    format!("{name}: {}", b.addr),
                    &format!("the network has no {fam} subnet"),
                ));
            }
            if !seen.insert(b.addr) {
                return Err(Error::invalid(
                    "service.backends.addr",
                    format!("{name}: {}", b.addr),
                    "listed twice",
                ));
            }
        }
        let ingress = net.layout == Layout::Ingress;
        match s.mode {
            EndpointMode::Published if !ingress => {
                return Err(Error::invalid(
                    "service.mode",
                    format!("{name}: published"),
                    "only the ingress network has published services",
                ));
            }
            EndpointMode::Vip(_) if ingress => {
                return Err(Error::invalid(
                    "service.mode",
                    format!("{name}: vip"),
                    "the ingress network has published services only",
                ));
            }
            EndpointMode::Published if s.ports.is_empty() => {
                return Err(Error::invalid(
                    "service.ports",
                    format!("{name}: none"),
                    "a published service needs at least one port",
                ));
            }
            _ => {}
        }
        if let Some(v) = s.vips_of() {
            for vip in v.iter() {
                let fam = Family::of(vip);
                let Some(sn) = net.subnet(fam) else {
                    return Err(Error::invalid(
                        "service.vip",
                        format!("{name}: {vip}"),
                        &format!("the network has no {fam} subnet"),
                    ));
                };
                if !sn.subnet.contains(vip) {
                    return Err(Error::invalid(
                        "service.vip",
                        format!("{name}: {vip}"),
                        &format!("not inside the subnet {}", sn.subnet),
                    ));
                }
                if vip == sn.lb_addr {
                    return Err(Error::invalid(
                        "service.vip",
                        format!("{name}: {vip}"),
                        "is the load balancer's own address",
                    ));
                }
                if is_backend(vip) {
                    return Err(Error::invalid(
                        "service.vip",
                        format!("{name}: {vip}"),
                        "collides with a backend address",
                    ));
                }
                if !claim_vip(vip) {
                    return Err(Error::invalid(
                        "service.vip",
                        format!("{name}: {vip}"),
                        "used by two services",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Parses and validates one network from JSON (the form of one entry of a state file's
    /// `networks`).
    ///
    /// # Errors
    /// [`Error::StateFile`] with line and column, or as [`NetworkState::new`].
    pub fn from_json(text: &str) -> Result<NetworkState, Error> {
        let f: NetworkFile = parse_json(text)?;
        f.try_into()
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The network's id.
    pub fn id(&self) -> &NetworkId {
        &self.network.id
    }

    /// The services, by name.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values().map(|s| &**s)
    }

    /// One service.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name).map(|s| &**s)
    }

    /// The services, shared.
    pub(crate) fn services_shared(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// One service, shared (a clone of it costs one reference count).
    pub(crate) fn service_shared(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name)
    }

    /// Adds or replaces one service, validated against the rest of the network, in
    /// O(the service's size · log n).
    ///
    /// # Errors
    /// As [`NetworkState::new`]; `self` is unchanged then.
    pub fn upsert_service(&mut self, s: Service) -> Result<(), Error> {
        let old = self.services.get(&s.name);
        let own: BTreeSet<IpAddr> = s.backends.iter().map(|b| b.addr).collect();
        let old_backends: BTreeMap<IpAddr, usize> = old
            .iter()
            .flat_map(|o| o.backends.iter())
            .fold(BTreeMap::new(), |mut m, b| {
                *m.entry(b.addr).or_default() += 1;
                m
            });
        let is_backend = |a: IpAddr| {
            own.contains(&a)
                || self.index.backends.get(&a).copied().unwrap_or(0)
                    > old_backends.get(&a).copied().unwrap_or(0)
        };
        let vips = &self.index.vips;
        let mut claim = |v: IpAddr| vips.get(&v).is_none_or(|holder| *holder == s.name);
        self.check_service(&s, &is_backend, &mut claim)?;
        let was = self.services.get(&s.name).is_some_and(|o| o.is_balanced());
        self.check_marks(self.index.balanced - u64::from(was) + u64::from(s.is_balanced()))?;
        // A new backend must not be another service's VIP.
        for b in &s.backends {
            if let Some(holder) = self.index.vips.get(&b.addr).filter(|h| **h != s.name) {
                return Err(Error::invalid(
                    "service.vip",
                    format!("{holder}: {}", b.addr),
                    "collides with a backend address",
                ));
            }
        }
        self.set_service_unchecked(Arc::new(s));
        Ok(())
    }

    /// The service holding VIP `v`, if any.
    pub fn vip_holder(&self, v: IpAddr) -> Option<&ServiceName> {
        self.index.vips.get(&v)
    }

    /// Removes one service; returns it.
    pub fn remove_service(&mut self, name: &str) -> Option<Service> {
        let s = self.services.remove(name)?;
        Arc::make_mut(&mut self.index).remove(&s);
        Some(Arc::unwrap_or_clone(s))
    }

    /// Replaces a service by a version of itself taken from another valid state of the same
    /// network (the controller's record of what it applied).
    pub(crate) fn set_service_unchecked(&mut self, s: Arc<Service>) {
        let index = Arc::make_mut(&mut self.index);
        if let Some(o) = self.services.remove(&s.name) {
            index.remove(&o);
        }
        index.add(&s);
        self.services.insert(s.name.clone(), s);
    }
}

fn validate_network(n: &Network) -> Result<(), Error> {
    if n.subnets.is_empty() || n.subnets.len() > 2 {
        return Err(Error::invalid(
            "network.subnets",
            format!("{}: {} subnets", n.id, n.subnets.len()),
            "one subnet, or one of each family",
        ));
    }
    if n.subnets.len() == 2 && n.subnets[0].subnet.family() == n.subnets[1].subnet.family() {
        return Err(Error::invalid(
            "network.subnets",
            format!(
                "{}: {} and {}",
                n.id, n.subnets[0].subnet, n.subnets[1].subnet
            ),
            "at most one subnet per family",
        ));
    }
    for s in &n.subnets {
        if !s.subnet.contains(s.lb_addr) {
            return Err(Error::invalid(
                "network.subnets.lb_addr",
                format!("{}: {}", n.id, s.lb_addr),
                &format!("not inside the subnet {}", s.subnet),
            ));
        }
    }
    if n.lb_interface.is_empty()
        || n.lb_interface.len() > 15
        || n.lb_interface
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        return Err(Error::invalid(
            "network.lb_interface",
            &n.lb_interface,
            "interface names are 1-15 bytes without '/', ':' or spaces",
        ));
    }
    if n.lb_netns.is_empty() {
        return Err(Error::invalid("network.lb_netns", "", "empty"));
    }
    if !n.lb_netns.starts_with('/') {
        vipmesh_netns::validate_name(&n.lb_netns)
            .map_err(|e| Error::invalid("network.lb_netns", &n.lb_netns, &e.to_string()))?;
    }
    Ok(())
}

/// Node-wide tunables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeOptions {
    /// How long a removed TCP backend drains before it is deleted even with connections; at
    /// most [`MAX_DRAIN_TIMEOUT`].
    #[serde(default = "default_drain", with = "secs")]
    pub drain_timeout: Duration,
    /// The firewall backend of every namespace of the node (`"iptables"`, the default, or
    /// `"nftables"`). A full sync on one backend removes our objects of the other.
    #[serde(default)]
    pub firewall: Firewall,
}

/// The firewall backend that classifies VIPs and published ports and does the SNAT.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub enum Firewall {
    /// Our `VIPMESH-*` chains, one `iptables-restore --noflush` per namespace and family.
    #[default]
    Iptables,
    /// One `inet` table `vipmesh-<id>` per network and namespace (maps: O(1) per packet,
    /// element-level updates), one `nft -f` transaction per table.
    Nftables,
}

impl Firewall {
    /// The name in the state file.
    pub fn as_str(self) -> &'static str {
        match self {
            Firewall::Iptables => "iptables",
            Firewall::Nftables => "nftables",
        }
    }
}

impl fmt::Display for Firewall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Firewall {
    type Err = Error;
    /// Parses `iptables` or `nftables`.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `options.firewall` and the value.
    fn from_str(s: &str) -> Result<Firewall, Error> {
        match s {
            "iptables" => Ok(Firewall::Iptables),
            "nftables" => Ok(Firewall::Nftables),
            other => Err(Error::invalid(
                "options.firewall",
                other,
                "expected iptables or nftables",
            )),
        }
    }
}

impl TryFrom<String> for Firewall {
    type Error = Error;
    fn try_from(s: String) -> Result<Firewall, Error> {
        s.parse()
    }
}

impl From<Firewall> for String {
    fn from(f: Firewall) -> String {
        f.as_str().to_string()
    }
}

fn default_drain() -> Duration {
    Duration::from_secs(30)
}

/// The longest drain a node accepts: 7 days. A drain is vipmesh's own timer (IPVS has none),
/// kept in the drains file across restarts; a longer one is a unit mistake rather than a
/// wish, and would hold a removed backend's real server for good.
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

fn check_drain(d: Duration) -> Result<(), Error> {
    if d > MAX_DRAIN_TIMEOUT {
        return Err(Error::invalid(
            "options.drain_timeout",
            d.as_secs(),
            &format!("at most {} s (7 days)", MAX_DRAIN_TIMEOUT.as_secs()),
        ));
    }
    Ok(())
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let d = Duration::from_secs(u64::deserialize(d)?);
        super::check_drain(d).map_err(serde::de::Error::custom)?;
        Ok(d)
    }
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            drain_timeout: default_drain(),
            firewall: Firewall::Iptables,
        }
    }
}

/// Everything one node must hold: its networks (each with its services) and node options.
/// Build it with [`NodeState::new`]; a value of this type is valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeState {
    networks: BTreeMap<NetworkId, NetworkState>,
    ingress: Option<crate::ingress::Ingress>,
    /// The part of the ingress the IPVS mesh programs ([`crate::ingress::Ingress::ipvs_part`]).
    #[serde(skip)]
    ipvs_ingress: Option<crate::ingress::Ingress>,
    #[serde(skip)]
    ingress_net: Option<NetworkState>,
    /// What the XDP mesh programs, derived (and so validated) from the ingress.
    #[cfg(feature = "xdp")]
    #[serde(skip)]
    xdp: Option<crate::xdp_mesh::XdpDesired>,
    options: NodeOptions,
}

impl NodeState {
    /// Validates the networks of a node together.
    ///
    /// # Errors
    /// [`Error::Invalid`]: two networks with one id; overlapping fwmark ranges; one VIP in
    /// two networks of the same namespace; a drain timeout over [`MAX_DRAIN_TIMEOUT`].
    ///
    /// # Examples
    /// ```
    /// use vipmesh::model::*;
    /// let a = Network::new("a", "10.1.0.0/24".parse()?, "client", "eth0", "10.1.0.2".parse().unwrap())?
    ///     .with_layout(Layout::PerClient)
    ///     .with_fwmarks(FwmarkRange::new(0x100, 0x1ff)?);
    /// let b = Network::new("b", "10.2.0.0/24".parse()?, "client", "eth1", "10.2.0.2".parse().unwrap())?
    ///     .with_layout(Layout::PerClient)
    ///     .with_fwmarks(FwmarkRange::new(0x100, 0x2ff)?);
    /// let err = NodeState::new(vec![NetworkState::new(a, vec![])?, NetworkState::new(b, vec![])?],
    ///     NodeOptions::default()).unwrap_err();
    /// assert!(err.to_string().contains("network.fwmarks"));
    /// # Ok::<(), vipmesh::Error>(())
    /// ```
    pub fn new(networks: Vec<NetworkState>, options: NodeOptions) -> Result<NodeState, Error> {
        NodeState::with_ingress(networks, None, options)
    }

    /// [`NodeState::new`] with the ingress routing mesh.
    ///
    /// # Errors
    /// As [`NodeState::new`] and [`crate::ingress::Ingress::validate`]; an ingress subnet
    /// overlapping a network's, or an ingress fwmark range overlapping one.
    pub fn with_ingress(
        networks: Vec<NetworkState>,
        ingress: Option<crate::ingress::Ingress>,
        options: NodeOptions,
    ) -> Result<NodeState, Error> {
        check_drain(options.drain_timeout)?;
        if let Some(i) = &ingress {
            i.validate()?;
        }
        #[cfg(feature = "xdp")]
        let xdp = match ingress
            .as_ref()
            .and_then(|i| i.xdp.as_ref().map(|x| (i, x)))
        {
            Some((i, x)) => Some(crate::xdp_mesh::derive(
                i,
                &crate::xdp_mesh::XdpMeshConfig::from(x),
            )?),
            None => None,
        };
        #[cfg(not(feature = "xdp"))]
        if ingress.as_ref().is_some_and(|i| i.xdp.is_some()) {
            return Err(Error::invalid(
                "ingress.xdp",
                "set",
                "this build of vipmesh has no XDP mesh (cargo feature `xdp`)",
            ));
        }
        let ipvs_ingress = ingress
            .as_ref()
            .and_then(crate::ingress::Ingress::ipvs_part);
        let ingress_net = match &ipvs_ingress {
            Some(i) => {
                let net = i.sandbox_network()?;
                for n in &networks {
                    for sn in &n.network.subnets {
                        if sn.subnet.overlaps(&i.subnet) {
                            return Err(Error::invalid(
                                "ingress.subnet",
                                format!("{} overlaps {} of {}", i.subnet, sn.subnet, n.network.id),
                                "the ingress subnet must not overlap a service network's",
                            ));
                        }
                    }
                    if n.network.lb_netns == i.sandbox_netns || n.network.id == i.id {
                        return Err(Error::invalid(
                            "ingress.sandbox_netns",
                            format!("{} / {}", i.sandbox_netns, i.id),
                            "the ingress needs its own namespace and network id",
                        ));
                    }
                }
                Some(net)
            }
            None => None,
        };
        let mut by_id: BTreeMap<NetworkId, NetworkState> = BTreeMap::new();
        let all = networks.into_iter().chain(ingress_net.clone());
        for n in all {
            let id = n.id().clone();
            for o in by_id.values() {
                let (a, b) = (&n.network, &o.network);
                if a.fwmarks.overlaps(&b.fwmarks) {
                    return Err(Error::invalid(
                        "network.fwmarks",
                        format!("{}: {} overlaps {}: {}", a.id, a.fwmarks, b.id, b.fwmarks),
                        "the fwmark ranges of a node's networks must not overlap",
                    ));
                }
                if a.lb_netns == b.lb_netns {
                    let va: BTreeSet<IpAddr> = n
                        .services()
                        .filter_map(Service::vips_of)
                        .flat_map(|v| v.iter().collect::<Vec<_>>())
                        .collect();
                    if let Some(v) = o
                        .services()
                        .filter_map(Service::vips_of)
                        .flat_map(|v| v.iter().collect::<Vec<_>>())
                        .find(|v| va.contains(v))
                    {
                        return Err(Error::invalid(
                            "service.vip",
                            format!("{v} in {} and {}", a.id, b.id),
                            "one VIP in two networks of the same namespace",
                        ));
                    }
                }
            }
            if by_id.insert(id.clone(), n).is_some() {
                return Err(Error::invalid("network.id", id, "used by two networks"));
            }
        }
        if let Some(n) = &ingress_net {
            by_id.remove(n.id());
        }
        Ok(NodeState {
            networks: by_id,
            ingress,
            ipvs_ingress,
            ingress_net,
            #[cfg(feature = "xdp")]
            xdp,
            options,
        })
    }

    /// The ingress routing mesh, if the node takes part in one, as given (both dataplanes).
    pub fn ingress(&self) -> Option<&crate::ingress::Ingress> {
        self.ingress.as_ref()
    }

    /// The part of the ingress the IPVS mesh programs: all of it without `ingress.xdp`; the
    /// ports XDP does not serve with it; `None` when XDP serves every port.
    pub fn ipvs_ingress(&self) -> Option<&crate::ingress::Ingress> {
        self.ipvs_ingress.as_ref()
    }

    /// What the XDP mesh programs on this node (`ingress.xdp`), derived from the ingress.
    #[cfg(feature = "xdp")]
    pub fn xdp(&self) -> Option<&crate::xdp_mesh::XdpDesired> {
        self.xdp.as_ref()
    }

    /// Every network the node programs: its networks and, with an ingress, the ingress
    /// sandbox's derived network.
    pub fn all_networks(&self) -> impl Iterator<Item = &NetworkState> {
        self.networks.values().chain(self.ingress_net.as_ref())
    }

    /// One network of [`NodeState::all_networks`].
    pub fn any_network(&self, id: &str) -> Option<&NetworkState> {
        self.networks
            .get(id)
            .or_else(|| self.ingress_net.as_ref().filter(|n| n.id().as_str() == id))
    }

    /// Every namespace the node programs: the networks' namespaces, and with an ingress the
    /// host namespace and the local tasks' namespaces.
    pub fn namespace_names(&self) -> BTreeSet<String> {
        let mut s: BTreeSet<String> = self.namespaces().into_keys().map(str::to_string).collect();
        if let Some(i) = &self.ipvs_ingress {
            s.insert(i.host_netns.clone());
            s.extend(i.local_task_namespaces().into_iter().map(str::to_string));
        }
        s
    }

    /// A node with one network and default options.
    ///
    /// # Errors
    /// As [`NodeState::new`].
    pub fn single(network: NetworkState) -> Result<NodeState, Error> {
        NodeState::new(vec![network], NodeOptions::default())
    }

    /// Parses and validates a JSON state file. Unknown fields and wrong types are errors with
    /// their line and column; invalid values name the field and the value.
    ///
    /// # Errors
    /// [`Error::StateFile`] with line and column, or as [`NodeState::new`].
    pub fn from_json(text: &str) -> Result<NodeState, Error> {
        let f: StateFile = parse_json(text)?;
        NodeState::try_from(f)
    }

    /// The networks, by id.
    pub fn networks(&self) -> impl Iterator<Item = &NetworkState> {
        self.networks.values()
    }

    /// One network.
    pub fn network(&self, id: &str) -> Option<&NetworkState> {
        self.networks.get(id)
    }

    /// The options.
    pub fn options(&self) -> &NodeOptions {
        &self.options
    }

    /// The namespaces the networks live in, each with its networks (sorted, deduplicated).
    pub fn namespaces(&self) -> BTreeMap<&str, Vec<&NetworkState>> {
        let mut m: BTreeMap<&str, Vec<&NetworkState>> = BTreeMap::new();
        for n in self.all_networks() {
            m.entry(n.network.lb_netns.as_str()).or_default().push(n);
        }
        m
    }

    /// Replaces one network (validated against the others).
    ///
    /// # Errors
    /// As [`NodeState::new`]; `self` is unchanged then.
    pub fn upsert_network(&mut self, n: NetworkState) -> Result<(), Error> {
        let mut all: Vec<NetworkState> = self
            .networks
            .values()
            .filter(|o| o.id() != n.id())
            .cloned()
            .collect();
        all.push(n);
        *self = NodeState::with_ingress(all, self.ingress.clone(), self.options.clone())?;
        Ok(())
    }

    /// Replaces the ingress (validated with the networks).
    ///
    /// # Errors
    /// As [`NodeState::with_ingress`]; `self` is unchanged then.
    pub fn set_ingress(&mut self, ingress: Option<crate::ingress::Ingress>) -> Result<(), Error> {
        let nets = self.networks.values().cloned().collect();
        *self = NodeState::with_ingress(nets, ingress, self.options.clone())?;
        Ok(())
    }

    /// Adds or replaces one service of a network, validated against its network and against
    /// the networks sharing its namespace, in O(the service's size · log n) (what
    /// [`NodeState::new`] would check for the whole state).
    ///
    /// # Errors
    /// [`Error::UnknownObject`] for an unknown network (the ingress network's services follow
    /// its spec: set a new ingress instead); validation errors as [`NetworkState::new`], and
    /// one VIP in two networks of the same namespace. `self` is unchanged then.
    ///
    /// # Examples
    /// ```
    /// use vipmesh::model::*;
    /// let net = Network::new("demo", "10.0.0.0/24".parse()?, "lb-demo", "eth0",
    ///     "10.0.0.2".parse().unwrap())?;
    /// let mut st = NodeState::new(vec![NetworkState::new(net, vec![])?], NodeOptions::default())?;
    /// let vote = Service::vip("vote", "10.0.0.9".parse().unwrap(), &["10.0.0.10".parse().unwrap()])?;
    /// st.upsert_service("demo", vote)?;
    /// assert!(st.network("demo").unwrap().service("vote").is_some());
    /// assert!(st.upsert_service("nope", Service::dnsrr("web", &[])?).is_err());
    /// # Ok::<(), vipmesh::Error>(())
    /// ```
    pub fn upsert_service(&mut self, network: &str, s: Service) -> Result<(), Error> {
        let unknown = || Error::UnknownObject {
            kind: "network",
            name: network.to_string(),
        };
        let net = self.networks.get(network).ok_or_else(unknown)?;
        let ns = &net.network().lb_netns;
        for other in self.all_networks() {
            if other.id() == net.id() || other.network().lb_netns != *ns {
                continue;
            }
            for v in s
                .vips_of()
                .iter()
                .flat_map(|v| v.iter().collect::<Vec<_>>())
            {
                if other.vip_holder(v).is_some() {
                    return Err(Error::invalid(
                        "service.vip",
                        format!("{v} in {network} and {}", other.id()),
                        "one VIP in two networks of the same namespace",
                    ));
                }
            }
        }
        self.networks
            .get_mut(network)
            .ok_or_else(unknown)?
            .upsert_service(s)
    }

    /// Removes one service of a network (not of the ingress network); returns it.
    pub fn remove_service(&mut self, network: &str, name: &str) -> Option<Service> {
        self.networks.get_mut(network)?.remove_service(name)
    }

    /// Mutable access for the controller's validated single-service updates.
    pub(crate) fn network_mut(&mut self, id: &str) -> Option<&mut NetworkState> {
        match self.networks.get_mut(id) {
            Some(n) => Some(n),
            None => self.ingress_net.as_mut().filter(|n| n.id().as_str() == id),
        }
    }

    /// Removes one network; returns it.
    pub fn remove_network(&mut self, id: &str) -> Option<NetworkState> {
        self.networks.remove(id)
    }

    /// The state file form (round-trips through [`NodeState::from_json`]).
    pub fn to_file(&self) -> StateFile {
        StateFile {
            networks: self
                .networks
                .values()
                .map(|n| NetworkFile {
                    id: n.network.id.clone(),
                    lb_netns: n.network.lb_netns.clone(),
                    lb_interface: n.network.lb_interface.clone(),
                    subnets: n.network.subnets.clone(),
                    fwmarks: n.network.fwmarks,
                    layout: n.network.layout,
                    services: n.services().cloned().collect(),
                })
                .collect(),
            ingress: self.ingress.clone(),
            options: self.options.clone(),
        }
    }
}

/// Parses a state document. A type error names where it is (the field's path, through
/// `serde_path_to_error`) and the rejected value when it is a scalar: serde's own message does
/// not always say either (an address is "invalid IP address syntax").
fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Error> {
    let file_error = |e: serde_json::Error, path: String| {
        // serde_json's message ends with the position the error already carries.
        let (line, column) = (e.line(), e.column());
        let message = e.to_string();
        let message = message
            .strip_suffix(&format!(" at line {line} column {column}"))
            .map_or(message.clone(), str::to_string);
        Error::StateFile {
            line,
            column,
            path,
            message,
        }
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let v = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().clone();
        let mut at = String::new();
        if path.iter().next().is_some() {
            at = path.to_string();
            if let Some(v) = value_at(text, &path) {
                at = format!("{at} = {v}");
            }
        }
        file_error(e.into_inner(), at)
    })?;
    de.end().map_err(|e| file_error(e, String::new()))?;
    Ok(v)
}

/// The scalar at `path` in `text`, as JSON, when `text` is JSON and the path leads to one.
fn value_at(text: &str, path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let root: serde_json::Value = serde_json::from_str(text).ok()?;
    let mut v = &root;
    for seg in path.iter() {
        v = match seg {
            Segment::Seq { index } => v.get(*index)?,
            Segment::Map { key } => v.get(key.as_str())?,
            Segment::Enum { .. } | Segment::Unknown => return None,
        };
    }
    match v {
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => None,
        scalar => Some(scalar.to_string()),
    }
}

/// One network in a state file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    /// The network's short id.
    pub id: NetworkId,
    /// The LB namespace.
    pub lb_netns: String,
    /// The LB interface.
    pub lb_interface: String,
    /// One subnet per family.
    pub subnets: Vec<NetSubnet>,
    /// The fwmark range (default `0x100..=0x1ffff`).
    #[serde(default)]
    pub fwmarks: FwmarkRange,
    /// The layout (default `lb_namespace`).
    #[serde(default)]
    pub layout: Layout,
    /// Its services.
    #[serde(default)]
    pub services: Vec<Service>,
}

impl TryFrom<NetworkFile> for NetworkState {
    type Error = Error;
    fn try_from(f: NetworkFile) -> Result<NetworkState, Error> {
        NetworkState::new(
            Network {
                id: f.id,
                lb_netns: f.lb_netns,
                lb_interface: f.lb_interface,
                subnets: f.subnets,
                fwmarks: f.fwmarks,
                layout: f.layout,
            },
            f.services,
        )
    }
}

/// The serialised form of a [`NodeState`] (the state file): see the README for an example.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// The networks.
    #[serde(default)]
    pub networks: Vec<NetworkFile>,
    /// The ingress routing mesh.
    #[serde(default)]
    pub ingress: Option<crate::ingress::Ingress>,
    /// Node options.
    #[serde(default)]
    pub options: NodeOptions,
}

impl TryFrom<StateFile> for NodeState {
    type Error = Error;
    fn try_from(f: StateFile) -> Result<NodeState, Error> {
        let nets = f
            .networks
            .into_iter()
            .map(NetworkState::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        NodeState::with_ingress(nets, f.ingress, f.options)
    }
}
