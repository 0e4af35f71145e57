//! Virtual services: [`IpvsService`] (what the caller sets), [`ServiceEntry`] (what the
//! kernel reports), and their parts ([`Scheduler`], [`ServiceFlags`], [`Netmask`]).

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv4Addr;

use super::invalid;
use super::{Family, ServiceKey, Stats};
use crate::Error;
use crate::codec::ipvs::{CmdAttr, NestFlag, SvcAttr};

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

/// Wraps a service's identifying attributes for dest and delete commands.
pub(crate) fn service_nest(key: &ServiceKey) -> CmdAttr {
    CmdAttr::Service(NestFlag::Set, key.attrs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

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
}
