//! Counters and rates ([`Stats`]), connection timeouts ([`Timeouts`]) and general
//! information ([`Info`]).

use crate::codec::ipvs::{CmdAttr, StatsAttr, attr};

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
