//! Real servers: [`IpvsDest`] (what the caller sets), [`DestEntry`] (what the kernel
//! reports), and their parts ([`DestKey`], [`FwdMethod`], [`Weight`], tunnel options).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use super::family::{SockAddr, addr_bytes, addr_from};
use super::invalid;
use super::{Family, ServiceKey, Stats};
use crate::Error;
use crate::codec::ipvs::DestAttr;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

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
