//! The typed model, in the kernel's language: [`IpvsService`], [`IpvsDest`], their keys,
//! [`Scheduler`], [`ServiceFlags`], [`FwdMethod`], [`Stats`], [`Timeouts`], [`Info`].
//!
//! Values are valid once built: constructors return `Result` with an [`Error::Invalid`]
//! naming the field and the value. Caller-owned parameters ([`IpvsService`], [`IpvsDest`])
//! are separate from what the kernel reports back ([`ServiceEntry`], [`DestEntry`]: stats
//! and connection counts), so a planner can compare desired and observed parameters with
//! `==`.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;

use crate::Error;
use crate::codec::ipvs::{CmdAttr, DestAttr, NestFlag, StatsAttr, SvcAttr, attr};

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

fn invalid(field: &'static str, value: impl fmt::Display, reason: &'static str) -> Error {
    Error::Invalid {
        field,
        value: value.to_string(),
        reason,
    }
}

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

/// A virtual service's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn raw(self) -> u16 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// From an IP protocol number.
    ///
    /// # Errors
    /// [`Error::Invalid`] for protocols IPVS services do not support.
    pub fn from_raw(p: u16) -> Result<Self, Error> {
        match p {
            6 => Ok(Protocol::Tcp),
            17 => Ok(Protocol::Udp),
            132 => Ok(Protocol::Sctp),
            _ => Err(invalid(
                "protocol",
                p,
                "IPVS services are TCP (6), UDP (17) or SCTP (132)",
            )),
        }
    }
}

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
                    Protocol::from_raw(proto.ok_or_else(|| {
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
                SvcAttr::Protocol(protocol.raw()),
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

fn addr_from(field: &'static str, af: Family, b: &[u8]) -> Result<IpAddr, Error> {
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

/// A scheduler name (`ip_vs_<name>` module). Open: any name the kernel may know is
/// accepted (1 to 15 ASCII alphanumerics/`_`); the kernel rejects unknown ones with
/// `ENOENT`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scheduler(Cow<'static, str>);

#[allow(missing_docs)]
impl Scheduler {
    pub const RR: Scheduler = Scheduler(Cow::Borrowed("rr"));
    pub const WRR: Scheduler = Scheduler(Cow::Borrowed("wrr"));
    pub const LC: Scheduler = Scheduler(Cow::Borrowed("lc"));
    pub const WLC: Scheduler = Scheduler(Cow::Borrowed("wlc"));
    pub const LBLC: Scheduler = Scheduler(Cow::Borrowed("lblc"));
    pub const LBLCR: Scheduler = Scheduler(Cow::Borrowed("lblcr"));
    pub const DH: Scheduler = Scheduler(Cow::Borrowed("dh"));
    pub const SH: Scheduler = Scheduler(Cow::Borrowed("sh"));
    pub const SED: Scheduler = Scheduler(Cow::Borrowed("sed"));
    pub const NQ: Scheduler = Scheduler(Cow::Borrowed("nq"));
    pub const FO: Scheduler = Scheduler(Cow::Borrowed("fo"));
    pub const OVF: Scheduler = Scheduler(Cow::Borrowed("ovf"));
    pub const MH: Scheduler = Scheduler(Cow::Borrowed("mh"));
    pub const TWOS: Scheduler = Scheduler(Cow::Borrowed("twos"));

    /// Every scheduler in Linux 6.1's `net/netfilter/ipvs/`.
    pub const ALL: [Scheduler; 14] = [
        Self::RR,
        Self::WRR,
        Self::LC,
        Self::WLC,
        Self::LBLC,
        Self::LBLCR,
        Self::DH,
        Self::SH,
        Self::SED,
        Self::NQ,
        Self::FO,
        Self::OVF,
        Self::MH,
        Self::TWOS,
    ];
}

impl Scheduler {
    /// A scheduler by name (`IP_VS_SCHEDNAME_MAXLEN` is 16 with the NUL).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `scheduler` if empty, longer than 15 bytes, or not
    /// `[A-Za-z0-9_]`.
    pub fn new(name: &str) -> Result<Self, Error> {
        if name.is_empty()
            || name.len() > 15
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(invalid(
                "scheduler",
                name,
                "1 to 15 characters from [A-Za-z0-9_]",
            ));
        }
        Ok(Scheduler(Cow::Owned(name.to_owned())))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

bitflags::bitflags! {
    /// Service flags (`IP_VS_SVC_F_*`). `HASHED` is owned by the kernel: it is reported
    /// but never sent.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct ServiceFlags: u32 {
        /// Persistent port (`-p`).
        const PERSISTENT = 0x0001;
        /// Hashed entry (kernel-owned).
        const HASHED = 0x0002;
        /// One-packet scheduling (`-o`).
        const ONEPACKET = 0x0004;
        /// Scheduler flag 1: `sh-fallback` for sh, `mh-fallback` for mh.
        const SCHED1 = 0x0008;
        /// Scheduler flag 2: `sh-port` for sh, `mh-port` for mh.
        const SCHED2 = 0x0010;
        /// Scheduler flag 3.
        const SCHED3 = 0x0020;
    }
}

impl ServiceFlags {
    /// `IP_VS_SVC_F_SCHED_SH_FALLBACK`.
    pub const SH_FALLBACK: ServiceFlags = ServiceFlags::SCHED1;
    /// `IP_VS_SVC_F_SCHED_SH_PORT`.
    pub const SH_PORT: ServiceFlags = ServiceFlags::SCHED2;
    /// `IP_VS_SVC_F_SCHED_MH_FALLBACK`.
    pub const MH_FALLBACK: ServiceFlags = ServiceFlags::SCHED1;
    /// `IP_VS_SVC_F_SCHED_MH_PORT`.
    pub const MH_PORT: ServiceFlags = ServiceFlags::SCHED2;
}

/// The persistence netmask: an IPv4 mask, or an IPv6 prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Netmask {
    /// IPv4 mask (default 255.255.255.255).
    V4(Ipv4Addr),
    /// IPv6 prefix length 1..=128 (default 128).
    V6(u8),
}

impl Netmask {
    /// The default for a family (a host mask).
    pub fn host(af: Family) -> Self {
        match af {
            Family::Inet => Netmask::V4(Ipv4Addr::BROADCAST),
            Family::Inet6 => Netmask::V6(128),
        }
    }

    fn wire(self) -> [u8; 4] {
        match self {
            Netmask::V4(m) => m.octets(),
            Netmask::V6(p) => u32::from(p).to_ne_bytes(),
        }
    }

    fn from_wire(af: Family, b: [u8; 4]) -> Result<Self, Error> {
        match af {
            Family::Inet => Ok(Netmask::V4(Ipv4Addr::from(b))),
            Family::Inet6 => {
                let p = u32::from_ne_bytes(b);
                match u8::try_from(p) {
                    Ok(p) if (1..=128).contains(&p) => Ok(Netmask::V6(p)),
                    _ => Err(invalid(
                        "netmask",
                        p,
                        "an IPv6 persistence netmask is a prefix length 1..=128",
                    )),
                }
            }
        }
    }
}

/// A virtual service: what the caller sets (see [`ServiceEntry`] for what the kernel
/// adds).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpvsService {
    /// Identity.
    pub key: ServiceKey,
    /// Scheduler.
    pub scheduler: Scheduler,
    /// Flags, without the kernel-owned `HASHED`.
    pub flags: ServiceFlags,
    /// Persistence timeout in seconds (meaningful with `PERSISTENT`).
    pub timeout: u32,
    /// Persistence netmask.
    pub netmask: Netmask,
    /// Persistence engine name (`-pe sip`), if any.
    pub pe_name: Option<String>,
}

impl IpvsService {
    /// A service with the scheduler, no flags, no persistence.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `port` for port 0 on an `addr:port` service (only
    /// persistent services may use port 0: use [`IpvsService::persistent`]).
    ///
    /// # Examples
    /// ```
    /// use vipmesh_ipvs::{IpvsService, Scheduler, ServiceKey, Family};
    /// let svc = IpvsService::new(ServiceKey::fwmark(Family::Inet, 259)?, Scheduler::RR)?;
    /// assert_eq!(svc.key.to_string(), "FWM 259");
    /// # Ok::<(), vipmesh_ipvs::Error>(())
    /// ```
    pub fn new(key: ServiceKey, scheduler: Scheduler) -> Result<Self, Error> {
        let svc = IpvsService {
            key,
            scheduler,
            flags: ServiceFlags::empty(),
            timeout: 0,
            netmask: Netmask::host(key.family()),
            pe_name: None,
        };
        svc.validate()?;
        Ok(svc)
    }

    /// Makes the service persistent with `timeout` seconds (`ipvsadm -p`).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `timeout` if 0.
    pub fn persistent(mut self, timeout: u32, netmask: Netmask) -> Result<Self, Error> {
        if timeout == 0 {
            return Err(invalid(
                "timeout",
                timeout,
                "a persistent service needs a non-zero timeout",
            ));
        }
        self.flags |= ServiceFlags::PERSISTENT;
        self.timeout = timeout;
        self.netmask = netmask;
        self.validate()?;
        Ok(self)
    }

    /// Checks the invariants the public fields may have lost.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field: port 0 without persistence, a netmask of the
    /// wrong family, `HASHED` set by the caller.
    pub fn validate(&self) -> Result<(), Error> {
        if let ServiceKey::Addr { port: 0, .. } = self.key
            && !self.flags.contains(ServiceFlags::PERSISTENT)
        {
            return Err(invalid(
                "port",
                0,
                "port 0 is only valid for a persistent service",
            ));
        }
        match (self.key.family(), self.netmask) {
            (Family::Inet, Netmask::V4(_)) => {}
            (Family::Inet6, Netmask::V6(p)) if (1..=128).contains(&p) => {}
            (_, m) => {
                return Err(invalid(
                    "netmask",
                    format!("{m:?}"),
                    "netmask does not fit the service's family",
                ));
            }
        }
        if let Some(pe) = &self.pe_name
            && (pe.is_empty() || pe.len() > 15)
        {
            return Err(invalid("pe_name", pe, "1 to 15 bytes"));
        }
        Ok(())
    }

    /// The full service attribute set, as ipvsadm sends it for `-A`/`-E`.
    pub(crate) fn attrs(&self) -> Vec<SvcAttr> {
        let mut a = self.key.attrs();
        let mut name = self.scheduler.as_str().as_bytes().to_vec();
        name.push(0);
        a.push(SvcAttr::SchedName(name));
        if let Some(pe) = &self.pe_name {
            let mut pe = pe.as_bytes().to_vec();
            pe.push(0);
            a.push(SvcAttr::PeName(pe));
        }
        a.push(SvcAttr::Flags {
            flags: (self.flags - ServiceFlags::HASHED).bits(),
            mask: u32::MAX,
        });
        a.push(SvcAttr::Timeout(self.timeout));
        a.push(SvcAttr::Netmask(self.netmask.wire()));
        a
    }
}

/// A service as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The parameters.
    pub service: IpvsService,
    /// Whether the kernel reported `HASHED` (always, for a live service).
    pub hashed: bool,
    /// Counters and rates (from `STATS64` when present, else `STATS`).
    pub stats: Stats,
}

fn cstr(field: &'static str, b: &[u8]) -> Result<String, Error> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = b.get(..end).unwrap_or_default();
    std::str::from_utf8(s).map(str::to_owned).map_err(|source| {
        tracing::debug!(%source, field, "non-UTF-8 name from the kernel");
        invalid(field, String::from_utf8_lossy(s), "not UTF-8")
    })
}

impl ServiceEntry {
    /// Builds an entry from the `IPVS_CMD_ATTR_SERVICE` attributes of a dump reply.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the missing or bad attribute.
    pub fn from_attrs(attrs: &[SvcAttr]) -> Result<Self, Error> {
        let (mut sched, mut flags, mut timeout, mut netmask, mut pe) =
            (None, 0u32, 0u32, None, None);
        let (mut s32, mut s64) = (None, None);
        for a in attrs {
            match a {
                SvcAttr::SchedName(b) => sched = Some(cstr("scheduler", b)?),
                SvcAttr::Flags { flags: f, .. } => flags = *f,
                SvcAttr::Timeout(v) => timeout = *v,
                SvcAttr::Netmask(b) => netmask = Some(*b),
                SvcAttr::PeName(b) => pe = Some(cstr("pe_name", b)?).filter(|s| !s.is_empty()),
                SvcAttr::Stats(_, s) => s32 = Some(Stats::from_attrs(s)),
                SvcAttr::Stats64(_, s) => s64 = Some(Stats::from_attrs(s)),
                SvcAttr::Af(_)
                | SvcAttr::Protocol(_)
                | SvcAttr::Addr(_)
                | SvcAttr::Port(_)
                | SvcAttr::Fwmark(_)
                | SvcAttr::Other { .. } => {}
            }
        }
        let key = ServiceKey::from_attrs(attrs)?;
        let af = key.family();
        let scheduler = Scheduler::new(&sched.unwrap_or_default())?;
        let netmask = match netmask {
            Some(b) => Netmask::from_wire(af, b)?,
            None => Netmask::host(af),
        };
        let flags = ServiceFlags::from_bits_retain(flags);
        let service = IpvsService {
            key,
            scheduler,
            flags: flags - ServiceFlags::HASHED,
            timeout,
            netmask,
            pe_name: pe,
        };
        Ok(ServiceEntry {
            service,
            hashed: flags.contains(ServiceFlags::HASHED),
            stats: s64.or(s32).unwrap_or_default(),
        })
    }
}

/// How packets reach a real server (`IP_VS_CONN_F_FWD_MASK` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FwdMethod {
    /// NAT (`-m`, "Masq").
    Masq,
    /// Local node ("Local").
    Local,
    /// IP-in-IP/GUE/GRE tunnel (`-i`, "Tunnel").
    Tunnel,
    /// Direct routing (`-g`, "Route").
    DirectRoute,
    /// Cache bypass ("Bypass").
    Bypass,
}

impl FwdMethod {
    /// The `IP_VS_CONN_F_*` value.
    pub fn raw(self) -> u32 {
        match self {
            FwdMethod::Masq => 0,
            FwdMethod::Local => 1,
            FwdMethod::Tunnel => 2,
            FwdMethod::DirectRoute => 3,
            FwdMethod::Bypass => 4,
        }
    }

    /// From the `IP_VS_CONN_F_*` value.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `fwd_method` for values above 4.
    pub fn from_raw(v: u32) -> Result<Self, Error> {
        Ok(match v {
            0 => FwdMethod::Masq,
            1 => FwdMethod::Local,
            2 => FwdMethod::Tunnel,
            3 => FwdMethod::DirectRoute,
            4 => FwdMethod::Bypass,
            _ => return Err(invalid("fwd_method", v, "forwarding method must be 0..=4")),
        })
    }

    /// The word ipvsadm prints in `-L` ("Masq", "Local", "Tunnel", "Route", "Bypass").
    pub fn ipvsadm_name(self) -> &'static str {
        match self {
            FwdMethod::Masq => "Masq",
            FwdMethod::Local => "Local",
            FwdMethod::Tunnel => "Tunnel",
            FwdMethod::DirectRoute => "Route",
            FwdMethod::Bypass => "Bypass",
        }
    }
}

/// A destination weight: `0..=i32::MAX` (the kernel rejects negative weights with
/// `ERANGE`; ipvsadm further limits to 65535). Weight 0 quiesces a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Weight(u32);

impl Weight {
    /// Largest weight the kernel accepts.
    pub const MAX: u32 = i32::MAX as u32;

    /// A weight.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `weight` above [`Weight::MAX`].
    pub fn new(w: u32) -> Result<Self, Error> {
        if w > Self::MAX {
            return Err(invalid("weight", w, "weight must be 0..=2147483647"));
        }
        Ok(Weight(w))
    }

    /// The weight.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Tunnel encapsulation (`IP_VS_CONN_F_TUNNEL_TYPE_*`), for the Tunnel method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TunnelType {
    /// IP-in-IP (0).
    #[default]
    Ipip,
    /// GUE (1): needs a port.
    Gue,
    /// GRE (2).
    Gre,
}

impl TunnelType {
    /// The raw value.
    pub fn raw(self) -> u8 {
        match self {
            TunnelType::Ipip => 0,
            TunnelType::Gue => 1,
            TunnelType::Gre => 2,
        }
    }

    /// From the raw value.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `tun_type` for values above 2.
    pub fn from_raw(v: u8) -> Result<Self, Error> {
        Ok(match v {
            0 => TunnelType::Ipip,
            1 => TunnelType::Gue,
            2 => TunnelType::Gre,
            _ => {
                return Err(invalid(
                    "tun_type",
                    v,
                    "tunnel type must be 0 (ipip), 1 (gue) or 2 (gre)",
                ));
            }
        })
    }
}

bitflags::bitflags! {
    /// Tunnel encapsulation flags (`IP_VS_TUNNEL_ENCAP_FLAG_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
    pub struct TunnelFlags: u16 {
        /// Checksum.
        const CSUM = 1;
        /// Remote checksum offload.
        const REMCSUM = 2;
    }
}

/// Which destination of a service: address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DestKey {
    /// Real server address (its family may differ from the service's for tunnels).
    pub addr: IpAddr,
    /// Real server port.
    pub port: u16,
}

impl fmt::Display for DestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SockAddr(self.addr, self.port).fmt(f)
    }
}

impl DestKey {
    pub(crate) fn attrs(&self) -> Vec<DestAttr> {
        vec![
            DestAttr::AddrFamily(Family::of(&self.addr).raw()),
            DestAttr::Addr(addr_bytes(&self.addr).to_vec()),
            DestAttr::Port(self.port),
        ]
    }
}

/// A real server of a service: what the caller sets (see [`DestEntry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpvsDest {
    /// Address and port.
    pub key: DestKey,
    /// Forwarding method.
    pub fwd: FwdMethod,
    /// Weight.
    pub weight: Weight,
    /// Upper connection threshold (0 = none).
    pub upper_threshold: u32,
    /// Lower connection threshold (0 = none).
    pub lower_threshold: u32,
    /// Tunnel type (Tunnel method only).
    pub tun_type: TunnelType,
    /// Tunnel port (GUE).
    pub tun_port: u16,
    /// Tunnel flags.
    pub tun_flags: TunnelFlags,
}

impl IpvsDest {
    /// A destination with weight 1, no thresholds, no tunnel options.
    ///
    /// # Examples
    /// ```
    /// use vipmesh_ipvs::{IpvsDest, FwdMethod};
    /// let d = IpvsDest::new("10.0.0.10".parse().unwrap(), 0, FwdMethod::Masq);
    /// assert_eq!(d.weight.get(), 1);
    /// ```
    pub fn new(addr: IpAddr, port: u16, fwd: FwdMethod) -> Self {
        IpvsDest {
            key: DestKey { addr, port },
            fwd,
            weight: Weight(1),
            upper_threshold: 0,
            lower_threshold: 0,
            tun_type: TunnelType::Ipip,
            tun_port: 0,
            tun_flags: TunnelFlags::empty(),
        }
    }

    /// Sets the weight.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `weight` when out of range.
    pub fn with_weight(mut self, w: u32) -> Result<Self, Error> {
        self.weight = Weight::new(w)?;
        Ok(self)
    }

    /// Checks what the kernel checks before touching its table: thresholds ordered, a
    /// GUE tunnel has a port, a destination of the other family only with Tunnel.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field.
    pub fn validate_for(&self, svc: &ServiceKey) -> Result<(), Error> {
        if self.upper_threshold != 0 && self.lower_threshold > self.upper_threshold {
            return Err(invalid(
                "lower_threshold",
                self.lower_threshold,
                "lower threshold above the upper threshold",
            ));
        }
        if self.tun_type == TunnelType::Gue && self.fwd == FwdMethod::Tunnel && self.tun_port == 0 {
            return Err(invalid("tun_port", 0, "a GUE tunnel needs a port"));
        }
        if Family::of(&self.key.addr) != svc.family() && self.fwd != FwdMethod::Tunnel {
            return Err(invalid(
                "addr",
                self.key.addr,
                "a destination of another family than its service needs the Tunnel method",
            ));
        }
        Ok(())
    }

    /// The full destination attribute set, as ipvsadm sends it for `-a`/`-e`.
    pub(crate) fn attrs(&self) -> Vec<DestAttr> {
        let mut a = self.key.attrs();
        a.extend([
            DestAttr::FwdMethod(self.fwd.raw()),
            DestAttr::Weight(self.weight.get()),
            DestAttr::TunType(self.tun_type.raw()),
            DestAttr::TunPort(self.tun_port),
            DestAttr::TunFlags(self.tun_flags.bits()),
            DestAttr::UThresh(self.upper_threshold),
            DestAttr::LThresh(self.lower_threshold),
        ]);
        a
    }
}

/// A destination as the kernel reports it: parameters plus connection counts (the mesh
/// drains by `active_conns`/`inactive_conns`) and stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestEntry {
    /// The parameters.
    pub dest: IpvsDest,
    /// Active connections.
    pub active_conns: u32,
    /// Inactive connections.
    pub inactive_conns: u32,
    /// Persistent (template) connections.
    pub persistent_conns: u32,
    /// Counters and rates.
    pub stats: Stats,
}

impl DestEntry {
    /// Builds an entry from the `IPVS_CMD_ATTR_DEST` attributes of a dump reply;
    /// `svc_af` is used when the kernel omits `ADDR_FAMILY` (kernels before 4.9).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the missing or bad attribute.
    pub fn from_attrs(svc_af: Family, attrs: &[DestAttr]) -> Result<Self, Error> {
        let mut d = IpvsDest::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, FwdMethod::Masq);
        let (mut af, mut addr) = (None, None);
        let (mut active, mut inactive, mut persist, mut s32, mut s64) = (0, 0, 0, None, None);
        let mut have_fwd = false;
        for a in attrs {
            match a {
                DestAttr::Addr(b) => addr = Some(b.as_slice()),
                DestAttr::Port(p) => d.key.port = *p,
                DestAttr::FwdMethod(v) => {
                    d.fwd = FwdMethod::from_raw(*v)?;
                    have_fwd = true;
                }
                DestAttr::Weight(w) => d.weight = Weight::new(*w)?,
                DestAttr::UThresh(v) => d.upper_threshold = *v,
                DestAttr::LThresh(v) => d.lower_threshold = *v,
                DestAttr::ActiveConns(v) => active = *v,
                DestAttr::InactConns(v) => inactive = *v,
                DestAttr::PersistConns(v) => persist = *v,
                DestAttr::Stats(_, s) => s32 = Some(Stats::from_attrs(s)),
                DestAttr::AddrFamily(v) => af = Some(*v),
                DestAttr::Stats64(_, s) => s64 = Some(Stats::from_attrs(s)),
                DestAttr::TunType(v) => d.tun_type = TunnelType::from_raw(*v)?,
                DestAttr::TunPort(v) => d.tun_port = *v,
                DestAttr::TunFlags(v) => d.tun_flags = TunnelFlags::from_bits_retain(*v),
                DestAttr::Other { .. } => {}
            }
        }
        if !have_fwd {
            return Err(invalid(
                "fwd_method",
                "missing",
                "destination without forwarding method",
            ));
        }
        let af = match af {
            Some(v) => Family::from_raw("dest af", v)?,
            None => svc_af,
        };
        d.key.addr = addr_from(
            "dest addr",
            af,
            addr.ok_or_else(|| invalid("dest addr", "missing", "destination without address"))?,
        )?;
        Ok(DestEntry {
            dest: d,
            active_conns: active,
            inactive_conns: inactive,
            persistent_conns: persist,
            stats: s64.or(s32).unwrap_or_default(),
        })
    }
}

/// Counters and rates of a service or destination (`IPVS_STATS_ATTR_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Connections scheduled.
    pub conns: u64,
    /// Incoming packets.
    pub inpkts: u64,
    /// Outgoing packets.
    pub outpkts: u64,
    /// Incoming bytes.
    pub inbytes: u64,
    /// Outgoing bytes.
    pub outbytes: u64,
    /// Connection rate (per second).
    pub cps: u64,
    /// Incoming packet rate.
    pub inpps: u64,
    /// Outgoing packet rate.
    pub outpps: u64,
    /// Incoming byte rate.
    pub inbps: u64,
    /// Outgoing byte rate.
    pub outbps: u64,
}

impl Stats {
    /// From a stats nest (either width).
    pub fn from_attrs(attrs: &[StatsAttr]) -> Self {
        let mut s = Stats::default();
        for a in attrs {
            let (kind, v) = match a {
                StatsAttr::U32 { kind, value } => (*kind, u64::from(*value)),
                StatsAttr::U64 { kind, value } => (*kind, *value),
                StatsAttr::Other { .. } => continue,
            };
            let slot = match kind & crate::codec::wire::NLA_TYPE_MASK {
                attr::STATS_CONNS => &mut s.conns,
                attr::STATS_INPKTS => &mut s.inpkts,
                attr::STATS_OUTPKTS => &mut s.outpkts,
                attr::STATS_INBYTES => &mut s.inbytes,
                attr::STATS_OUTBYTES => &mut s.outbytes,
                attr::STATS_CPS => &mut s.cps,
                attr::STATS_INPPS => &mut s.inpps,
                attr::STATS_OUTPPS => &mut s.outpps,
                attr::STATS_INBPS => &mut s.inbps,
                attr::STATS_OUTBPS => &mut s.outbps,
                _ => continue,
            };
            *slot = v;
        }
        s
    }

    /// As a `STATS64` nest.
    pub fn to_attrs64(&self) -> Vec<StatsAttr> {
        [
            (attr::STATS_CONNS, self.conns),
            (attr::STATS_INPKTS, self.inpkts),
            (attr::STATS_OUTPKTS, self.outpkts),
            (attr::STATS_INBYTES, self.inbytes),
            (attr::STATS_OUTBYTES, self.outbytes),
            (attr::STATS_CPS, self.cps),
            (attr::STATS_INPPS, self.inpps),
            (attr::STATS_OUTPPS, self.outpps),
            (attr::STATS_INBPS, self.inbps),
            (attr::STATS_OUTBPS, self.outbps),
        ]
        .into_iter()
        .map(|(kind, value)| StatsAttr::U64 { kind, value })
        .collect()
    }
}

/// Connection timeouts in seconds (`ipvsadm --set tcp tcpfin udp`); on set, 0 leaves a
/// value unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeouts {
    /// Established TCP.
    pub tcp: u32,
    /// TCP after FIN.
    pub tcp_fin: u32,
    /// UDP.
    pub udp: u32,
}

impl Timeouts {
    pub(crate) fn attrs(&self) -> Vec<CmdAttr> {
        vec![
            CmdAttr::TimeoutTcp(self.tcp),
            CmdAttr::TimeoutTcpFin(self.tcp_fin),
            CmdAttr::TimeoutUdp(self.udp),
        ]
    }

    pub(crate) fn from_attrs(attrs: &[CmdAttr]) -> Self {
        let mut t = Timeouts::default();
        for a in attrs {
            match a {
                CmdAttr::TimeoutTcp(v) => t.tcp = *v,
                CmdAttr::TimeoutTcpFin(v) => t.tcp_fin = *v,
                CmdAttr::TimeoutUdp(v) => t.udp = *v,
                _ => {}
            }
        }
        t
    }
}

/// General IPVS information (`IPVS_CMD_GET_INFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Info {
    /// Version code (`0x010201` = 1.2.1).
    pub version: u32,
    /// Connection hash table size.
    pub conn_tab_size: u32,
}

impl Info {
    /// `major.minor.patch`.
    pub fn version_string(&self) -> String {
        format!(
            "{}.{}.{}",
            (self.version >> 16) & 0xff,
            (self.version >> 8) & 0xff,
            self.version & 0xff
        )
    }
}

/// Wraps a service's identifying attributes for dest and delete commands.
pub(crate) fn service_nest(key: &ServiceKey) -> CmdAttr {
    CmdAttr::Service(NestFlag::Set, key.attrs())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn port_zero_needs_persistence() {
        let key = ServiceKey::addr(Protocol::Tcp, "10.0.0.1".parse().unwrap(), 0);
        let e = IpvsService::new(key, Scheduler::RR).unwrap_err();
        assert!(matches!(e, Error::Invalid { field: "port", .. }), "{e}");
        // persistent with port 0 is legal (ipvsadm -A -t 10.0.0.1:0 -p)
        let mut s = IpvsService::new(
            ServiceKey::addr(Protocol::Tcp, "10.0.0.1".parse().unwrap(), 80),
            Scheduler::RR,
        )
        .unwrap()
        .persistent(300, Netmask::host(Family::Inet))
        .unwrap();
        s.key = key;
        s.validate().unwrap();
    }

    #[test]
    fn v6_addr_with_v4_family_is_rejected() {
        let e = ServiceKey::addr_in(
            Family::Inet,
            Protocol::Tcp,
            "2001:db8::1".parse().unwrap(),
            80,
        )
        .unwrap_err();
        assert!(matches!(e, Error::Invalid { field: "addr", .. }), "{e}");
        let e = Netmask::from_wire(Family::Inet6, 129u32.to_ne_bytes()).unwrap_err();
        assert!(matches!(
            e,
            Error::Invalid {
                field: "netmask",
                ..
            }
        ));
    }

    #[test]
    fn weight_out_of_range_is_rejected() {
        assert!(Weight::new(i32::MAX as u32).is_ok());
        let e = Weight::new(1 << 31).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Invalid {
                    field: "weight",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn scheduler_names_are_checked() {
        assert!(Scheduler::new("").is_err());
        assert!(Scheduler::new("a-very-long-scheduler").is_err());
        assert!(Scheduler::new("r r").is_err());
        assert_eq!(Scheduler::new("wrr").unwrap(), Scheduler::WRR);
    }

    #[test]
    fn service_round_trips_through_attrs() {
        let svc = IpvsService::new(
            ServiceKey::addr(Protocol::Udp, "2001:db8::1".parse().unwrap(), 53),
            Scheduler::SH,
        )
        .unwrap()
        .persistent(60, Netmask::V6(64))
        .unwrap();
        let back = ServiceEntry::from_attrs(&svc.attrs()).unwrap();
        assert_eq!(back.service, svc);
    }

    #[test]
    fn dest_round_trips_through_attrs() {
        let mut d = IpvsDest::new("2001:db8::10".parse().unwrap(), 8080, FwdMethod::Tunnel)
            .with_weight(7)
            .unwrap();
        d.tun_type = TunnelType::Gue;
        d.tun_port = 6080;
        d.tun_flags = TunnelFlags::CSUM;
        d.upper_threshold = 100;
        d.lower_threshold = 10;
        let back = DestEntry::from_attrs(Family::Inet, &d.attrs()).unwrap();
        assert_eq!(back.dest, d);
    }

    #[test]
    fn dest_validation_matches_the_kernel() {
        let svc = ServiceKey::fwmark(Family::Inet, 1).unwrap();
        let mut d = IpvsDest::new("10.0.0.1".parse().unwrap(), 0, FwdMethod::Masq);
        d.upper_threshold = 5;
        d.lower_threshold = 6;
        assert!(d.validate_for(&svc).is_err());
        let d6 = IpvsDest::new("2001:db8::1".parse().unwrap(), 0, FwdMethod::Masq);
        assert!(d6.validate_for(&svc).is_err());
        let d6t = IpvsDest::new("2001:db8::1".parse().unwrap(), 0, FwdMethod::Tunnel);
        assert!(d6t.validate_for(&svc).is_ok());
    }
}
