//! The typed desired state a runtime hands to vipmesh, and its validation.
//!
//! Everything here is pure. Building a [`DesiredState`] with [`DesiredState::new`] checks
//! every cross-object rule (unique names and VIPs, VIPs inside the subnet, no VIP that is also
//! a backend), so a value of that type is always valid.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
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
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

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

/// A transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        })
    }
}

/// A port a service serves on its VIP. Port 0 is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    /// The protocol.
    pub protocol: Protocol,
    /// The port, 1–65535.
    pub port: u16,
}

/// How clients find a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// A virtual IP, load-balanced by IPVS.
    Vip(IpAddr),
    /// DNS round robin: the name resolves to the task addresses, shuffled; no VIP, no IPVS.
    DnsRr,
}

/// An IPVS scheduler name, checked against the schedulers Linux ships.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
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

impl<'de> Deserialize<'de> for Scheduler {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scheduler, D::Error> {
        let s = String::deserialize(d)?;
        Scheduler::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Client affinity: connections from one client go to the same task for `timeout_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persistence {
    /// Seconds a client stays with its task (1–2678400, as ipvsadm).
    pub timeout_secs: u32,
    /// The client netmask prefix that groups clients (IPv4 0–32, IPv6 0–128); 32/128 = one
    /// client address.
    #[serde(default = "default_netmask")]
    pub netmask_prefix: u8,
}

fn default_netmask() -> u8 {
    32
}

/// A relative weight, 0–65535 (IPVS's range); 0 takes no new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
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

    /// The value.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for Weight {
    fn default() -> Self {
        Weight(1)
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
    /// Its tasks. May be empty: traffic to the VIP is then rejected at once.
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
            mode: EndpointMode::Vip(vip),
            ports: Vec::new(),
            scheduler: Scheduler::rr(),
            persistence: None,
            backends: backends.iter().copied().map(Backend::new).collect(),
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

    /// The VIP, in VIP mode.
    pub fn vip_addr(&self) -> Option<IpAddr> {
        match self.mode {
            EndpointMode::Vip(a) => Some(a),
            EndpointMode::DnsRr => None,
        }
    }

    /// True when every port is UDP: removed backends are then deleted at once, since UDP
    /// "connections" never reach zero (kube-proxy learned this: k8s #71514).
    pub fn udp_only(&self) -> bool {
        !self.ports.is_empty() && self.ports.iter().all(|p| p.protocol == Protocol::Udp)
    }
}

/// A network: its subnet and its load-balancer namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The network's name (used in messages).
    pub name: String,
    /// The subnet tasks and VIPs live in.
    pub subnet: Subnet,
    /// The load-balancer namespace: a name under `/run/netns` or an absolute path.
    pub lb_netns: String,
    /// The LB namespace's interface on the subnet (VIPs are added to it).
    pub lb_interface: String,
    /// The LB namespace's own address on the subnet (the SNAT source).
    pub lb_addr: IpAddr,
}

/// Tunables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// First fwmark vipmesh may allocate (default 0x100, as Swarm).
    #[serde(default = "default_first_mark")]
    pub fwmark_first: u32,
    /// Last fwmark vipmesh may allocate (default 0x1ffff).
    #[serde(default = "default_last_mark")]
    pub fwmark_last: u32,
    /// How long a removed TCP backend drains before it is deleted even with connections.
    #[serde(default = "default_drain", with = "secs")]
    pub drain_timeout: Duration,
    /// Where the load-balancing rules live (default: a load-balancer namespace).
    #[serde(default)]
    pub layout: Layout,
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
    /// needed, since IPVS answers locally generated traffic. Apply the same state once per
    /// client namespace.
    PerClient,
}

fn default_first_mark() -> u32 {
    0x100
}
fn default_last_mark() -> u32 {
    0x1ffff
}
fn default_drain() -> Duration {
    Duration::from_secs(30)
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fwmark_first: default_first_mark(),
            fwmark_last: default_last_mark(),
            drain_timeout: default_drain(),
            layout: Layout::default(),
        }
    }
}

/// The whole desired state of one network. Build it with [`DesiredState::new`]; a value of
/// this type is valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredState {
    network: Network,
    services: BTreeMap<ServiceName, Service>,
    options: Options,
}

/// The serialised form (the state file): see the README for an example.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// The network.
    pub network: Network,
    /// Its services.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Tunables.
    #[serde(default)]
    pub options: Options,
}

impl DesiredState {
    /// Validates a network and its services.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field and value: duplicate service names or VIPs, a VIP
    /// outside the subnet or of the wrong family, a VIP that is also a backend or the LB
    /// address, port 0, a persistence timeout or netmask out of range, a bad fwmark range,
    /// a backend of the wrong family.
    ///
    /// # Examples
    /// ```
    /// use vipmesh::model::*;
    /// let net = Network {
    ///     name: "demo".into(),
    ///     subnet: "10.0.0.0/24".parse()?,
    ///     lb_netns: "lb-demo".into(),
    ///     lb_interface: "eth0".into(),
    ///     lb_addr: "10.0.0.2".parse().unwrap(),
    /// };
    /// let vote = Service::vip("vote", "10.0.0.9".parse().unwrap(),
    ///     &["10.0.0.10".parse().unwrap(), "10.0.0.11".parse().unwrap()])?;
    /// let state = DesiredState::new(net, vec![vote], Options::default())?;
    /// assert_eq!(state.services().count(), 1);
    /// # Ok::<(), vipmesh::Error>(())
    /// ```
    pub fn new(
        network: Network,
        services: Vec<Service>,
        options: Options,
    ) -> Result<DesiredState, Error> {
        let subnet = network.subnet;
        if !subnet.contains(network.lb_addr) {
            return Err(Error::invalid(
                "network.lb_addr",
                network.lb_addr,
                &format!("not inside the subnet {subnet}"),
            ));
        }
        if network.lb_interface.is_empty() || network.lb_interface.len() > 15 {
            return Err(Error::invalid(
                "network.lb_interface",
                &network.lb_interface,
                "interface names are 1-15 bytes",
            ));
        }
        if network.lb_netns.is_empty() {
            return Err(Error::invalid("network.lb_netns", "", "empty"));
        }
        if options.fwmark_first == 0 || options.fwmark_first > options.fwmark_last {
            return Err(Error::invalid(
                "options.fwmark_first",
                format!("{:#x}..={:#x}", options.fwmark_first, options.fwmark_last),
                "the fwmark range must be non-empty and not include 0",
            ));
        }
        let mut by_name = BTreeMap::new();
        let mut vips = BTreeSet::new();
        let mut backend_addrs = BTreeSet::new();
        for s in &services {
            for b in &s.backends {
                backend_addrs.insert(b.addr);
            }
        }
        for s in services {
            let name = s.name.clone();
            for p in &s.ports {
                if p.port == 0 {
                    return Err(Error::invalid(
                        "service.ports.port",
                        format!("{name}: {}/0", p.protocol),
                        "port 0 is not a port",
                    ));
                }
            }
            if let Some(p) = s.persistence {
                if p.timeout_secs == 0 || p.timeout_secs > 2_678_400 {
                    return Err(Error::invalid(
                        "service.persistence.timeout_secs",
                        format!("{name}: {}", p.timeout_secs),
                        "must be 1..=2678400",
                    ));
                }
                let max = if subnet.family() == Family::V4 {
                    32
                } else {
                    128
                };
                if p.netmask_prefix > max {
                    return Err(Error::invalid(
                        "service.persistence.netmask_prefix",
                        format!("{name}: {}", p.netmask_prefix),
                        &format!("must be 0..={max}"),
                    ));
                }
            }
            let mut seen = BTreeSet::new();
            for b in &s.backends {
                if Family::of(b.addr) != subnet.family() {
                    return Err(Error::invalid(
                        "service.backends.addr",
                        format!("{name}: {}", b.addr),
                        &format!("not of the network's family ({})", subnet.family()),
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
            if let EndpointMode::Vip(vip) = s.mode {
                if !subnet.contains(vip) {
                    return Err(Error::invalid(
                        "service.vip",
                        format!("{name}: {vip}"),
                        &format!("not inside the subnet {subnet}"),
                    ));
                }
                if vip == network.lb_addr {
                    return Err(Error::invalid(
                        "service.vip",
                        format!("{name}: {vip}"),
                        "is the load balancer's own address",
                    ));
                }
                if backend_addrs.contains(&vip) {
                    return Err(Error::invalid(
                        "service.vip",
                        format!("{name}: {vip}"),
                        "collides with a backend address",
                    ));
                }
                if !vips.insert(vip) {
                    return Err(Error::invalid(
                        "service.vip",
                        format!("{name}: {vip}"),
                        "used by two services",
                    ));
                }
            }
            if by_name.insert(name.clone(), s).is_some() {
                return Err(Error::invalid("service.name", name, "used by two services"));
            }
        }
        Ok(DesiredState {
            network,
            services: by_name,
            options,
        })
    }

    /// Validates a parsed state file.
    ///
    /// # Errors
    /// As [`DesiredState::new`].
    pub fn from_file(f: StateFile) -> Result<DesiredState, Error> {
        DesiredState::new(f.network, f.services, f.options)
    }

    /// Parses and validates a JSON state file. Unknown fields and wrong types are errors
    /// with their line and column.
    ///
    /// # Errors
    /// [`Error::StateFile`] with line and column, or as [`DesiredState::new`].
    pub fn from_json(text: &str) -> Result<DesiredState, Error> {
        let f: StateFile = serde_json::from_str(text).map_err(|e| Error::StateFile {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        DesiredState::from_file(f)
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The services, by name.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// One service.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }

    /// Replaces a service by a new version of itself that the caller took from another valid
    /// state with the same network (used by incremental updates).
    pub(crate) fn replace_service(&mut self, s: Service) {
        self.services.insert(s.name.clone(), s);
    }

    /// The tunables.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The family of the network.
    pub fn family(&self) -> Family {
        self.network.subnet.family()
    }
}
