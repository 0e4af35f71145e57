//! IPVS generic-netlink messages and attributes, as in `include/uapi/linux/ip_vs.h`
//! (<https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/include/uapi/linux/ip_vs.h>).
//!
//! These types mirror the wire one to one: each attribute keeps its exact encoding, and an
//! attribute this crate does not know parses as `Other { kind, bytes }` and is emitted back
//! unchanged, so `parse(bytes).emit() == bytes` for every message the kernel or `ipvsadm`
//! sends. The typed model ([`crate::model`]) is built from these.

use super::wire::{
    DecodeError, DecodeErrorKind, Emit, EncodeError, GENL_HDRLEN, NLA_F_NESTED, NLA_HDRLEN,
    NLMSG_HDRLEN, NlHeader, RawAttr, Writer, align4, attr_len, attrs,
};

/// An IPVS generic-netlink command (`IPVS_CMD_*`). Open: unknown values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cmd(pub u8);

#[allow(missing_docs)]
impl Cmd {
    pub const NEW_SERVICE: Cmd = Cmd(1);
    pub const SET_SERVICE: Cmd = Cmd(2);
    pub const DEL_SERVICE: Cmd = Cmd(3);
    pub const GET_SERVICE: Cmd = Cmd(4);
    pub const NEW_DEST: Cmd = Cmd(5);
    pub const SET_DEST: Cmd = Cmd(6);
    pub const DEL_DEST: Cmd = Cmd(7);
    pub const GET_DEST: Cmd = Cmd(8);
    pub const NEW_DAEMON: Cmd = Cmd(9);
    pub const DEL_DAEMON: Cmd = Cmd(10);
    pub const GET_DAEMON: Cmd = Cmd(11);
    pub const SET_CONFIG: Cmd = Cmd(12);
    pub const GET_CONFIG: Cmd = Cmd(13);
    pub const SET_INFO: Cmd = Cmd(14);
    pub const GET_INFO: Cmd = Cmd(15);
    pub const ZERO: Cmd = Cmd(16);
    pub const FLUSH: Cmd = Cmd(17);
}

/// `IPVS_GENL_VERSION`.
pub const IPVS_GENL_VERSION: u8 = 1;
/// `IPVS_GENL_NAME`.
pub const IPVS_GENL_NAME: &str = "IPVS";

/// Attribute numbers (`IPVS_CMD_ATTR_*`, `IPVS_SVC_ATTR_*`, ...).
#[allow(missing_docs)]
pub mod attr {
    pub const CMD_SERVICE: u16 = 1;
    pub const CMD_DEST: u16 = 2;
    pub const CMD_DAEMON: u16 = 3;
    pub const CMD_TIMEOUT_TCP: u16 = 4;
    pub const CMD_TIMEOUT_TCP_FIN: u16 = 5;
    pub const CMD_TIMEOUT_UDP: u16 = 6;

    pub const SVC_AF: u16 = 1;
    pub const SVC_PROTOCOL: u16 = 2;
    pub const SVC_ADDR: u16 = 3;
    pub const SVC_PORT: u16 = 4;
    pub const SVC_FWMARK: u16 = 5;
    pub const SVC_SCHED_NAME: u16 = 6;
    pub const SVC_FLAGS: u16 = 7;
    pub const SVC_TIMEOUT: u16 = 8;
    pub const SVC_NETMASK: u16 = 9;
    pub const SVC_STATS: u16 = 10;
    pub const SVC_PE_NAME: u16 = 11;
    pub const SVC_STATS64: u16 = 12;

    pub const DEST_ADDR: u16 = 1;
    pub const DEST_PORT: u16 = 2;
    pub const DEST_FWD_METHOD: u16 = 3;
    pub const DEST_WEIGHT: u16 = 4;
    pub const DEST_U_THRESH: u16 = 5;
    pub const DEST_L_THRESH: u16 = 6;
    pub const DEST_ACTIVE_CONNS: u16 = 7;
    pub const DEST_INACT_CONNS: u16 = 8;
    pub const DEST_PERSIST_CONNS: u16 = 9;
    pub const DEST_STATS: u16 = 10;
    pub const DEST_ADDR_FAMILY: u16 = 11;
    pub const DEST_STATS64: u16 = 12;
    pub const DEST_TUN_TYPE: u16 = 13;
    pub const DEST_TUN_PORT: u16 = 14;
    pub const DEST_TUN_FLAGS: u16 = 15;

    pub const STATS_CONNS: u16 = 1;
    pub const STATS_INPKTS: u16 = 2;
    pub const STATS_OUTPKTS: u16 = 3;
    pub const STATS_INBYTES: u16 = 4;
    pub const STATS_OUTBYTES: u16 = 5;
    pub const STATS_CPS: u16 = 6;
    pub const STATS_INPPS: u16 = 7;
    pub const STATS_OUTPPS: u16 = 8;
    pub const STATS_INBPS: u16 = 9;
    pub const STATS_OUTBPS: u16 = 10;

    pub const INFO_VERSION: u16 = 1;
    pub const INFO_CONN_TAB_SIZE: u16 = 2;
}

/// A nested attribute's flag bit as it was on the wire, kept for exact round trips
/// (the kernel and libnl send nests without `NLA_F_NESTED`; some clients set it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NestFlag {
    /// `NLA_F_NESTED` clear (what the kernel and ipvsadm send).
    #[default]
    Clear,
    /// `NLA_F_NESTED` set.
    Set,
}

impl NestFlag {
    fn of(kind: u16) -> Self {
        if kind & NLA_F_NESTED != 0 {
            NestFlag::Set
        } else {
            NestFlag::Clear
        }
    }
    fn apply(self, kind: u16) -> u16 {
        match self {
            NestFlag::Clear => kind,
            NestFlag::Set => kind | NLA_F_NESTED,
        }
    }
}

/// One statistics attribute (`IPVS_STATS_ATTR_*`): the kernel sends 32-bit counters in
/// `*_STATS` (bytes are 64-bit) and 64-bit counters in `*_STATS64`; the width is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatsAttr {
    /// A 4-byte counter.
    U32 {
        /// `IPVS_STATS_ATTR_*`.
        kind: u16,
        /// Value.
        value: u32,
    },
    /// An 8-byte counter.
    U64 {
        /// `IPVS_STATS_ATTR_*`.
        kind: u16,
        /// Value.
        value: u64,
    },
    /// Anything else (e.g. `IPVS_STATS_ATTR_PAD`), kept as is.
    Other {
        /// Attribute type as on the wire.
        kind: u16,
        /// Payload.
        bytes: Vec<u8>,
    },
}

/// A service attribute (`IPVS_SVC_ATTR_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvcAttr {
    /// `AF`: address family (`AF_INET`/`AF_INET6`).
    Af(u16),
    /// `PROTOCOL`: IP protocol number.
    Protocol(u16),
    /// `ADDR`: `union nf_inet_addr`, normally 16 bytes (IPv4 in the first 4).
    Addr(Vec<u8>),
    /// `PORT`: network byte order on the wire; host order here.
    Port(u16),
    /// `FWMARK`.
    Fwmark(u32),
    /// `SCHED_NAME`: bytes as on the wire (normally NUL-terminated).
    SchedName(Vec<u8>),
    /// `FLAGS`: `struct ip_vs_flags { flags, mask }`.
    Flags {
        /// Flag bits.
        flags: u32,
        /// Which bits to change.
        mask: u32,
    },
    /// `TIMEOUT`: persistence timeout in seconds.
    Timeout(u32),
    /// `NETMASK`: the raw 4 bytes (an IPv4 mask in network order, or an IPv6 prefix length
    /// as a native u32).
    Netmask([u8; 4]),
    /// `STATS`.
    Stats(NestFlag, Vec<StatsAttr>),
    /// `PE_NAME`: bytes as on the wire.
    PeName(Vec<u8>),
    /// `STATS64`.
    Stats64(NestFlag, Vec<StatsAttr>),
    /// An attribute this crate does not know.
    Other {
        /// Type as on the wire.
        kind: u16,
        /// Payload.
        bytes: Vec<u8>,
    },
}

/// A destination attribute (`IPVS_DEST_ATTR_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestAttr {
    /// `ADDR` (16 bytes normally).
    Addr(Vec<u8>),
    /// `PORT` (host order here).
    Port(u16),
    /// `FWD_METHOD` (`IP_VS_CONN_F_*` & `FWD_MASK`).
    FwdMethod(u32),
    /// `WEIGHT`.
    Weight(u32),
    /// `U_THRESH`.
    UThresh(u32),
    /// `L_THRESH`.
    LThresh(u32),
    /// `ACTIVE_CONNS`.
    ActiveConns(u32),
    /// `INACT_CONNS`.
    InactConns(u32),
    /// `PERSIST_CONNS`.
    PersistConns(u32),
    /// `STATS`.
    Stats(NestFlag, Vec<StatsAttr>),
    /// `ADDR_FAMILY`.
    AddrFamily(u16),
    /// `STATS64`.
    Stats64(NestFlag, Vec<StatsAttr>),
    /// `TUN_TYPE` (u8).
    TunType(u8),
    /// `TUN_PORT` (host order here).
    TunPort(u16),
    /// `TUN_FLAGS`.
    TunFlags(u16),
    /// An attribute this crate does not know.
    Other {
        /// Type as on the wire.
        kind: u16,
        /// Payload.
        bytes: Vec<u8>,
    },
}

/// A top-level attribute of an IPVS command (`IPVS_CMD_ATTR_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdAttr {
    /// `SERVICE` (nested).
    Service(NestFlag, Vec<SvcAttr>),
    /// `DEST` (nested).
    Dest(NestFlag, Vec<DestAttr>),
    /// `TIMEOUT_TCP`.
    TimeoutTcp(u32),
    /// `TIMEOUT_TCP_FIN`.
    TimeoutTcpFin(u32),
    /// `TIMEOUT_UDP`.
    TimeoutUdp(u32),
    /// Anything else (including `DAEMON`), kept as is.
    Other {
        /// Type as on the wire.
        kind: u16,
        /// Payload.
        bytes: Vec<u8>,
    },
}

/// A top-level attribute of a `GET_INFO` reply (`IPVS_INFO_ATTR_*`): the numbering
/// overlaps `IPVS_CMD_ATTR_*`, so info replies get their own type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfoAttr {
    /// `VERSION` (`0x010201` is 1.2.1).
    Version(u32),
    /// `CONN_TAB_SIZE`.
    ConnTabSize(u32),
    /// Anything else.
    Other {
        /// Type as on the wire.
        kind: u16,
        /// Payload.
        bytes: Vec<u8>,
    },
}

/// The attributes of an IPVS message: command attributes, or info attributes in the
/// `SET_INFO`/`GET_INFO` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpvsAttrs {
    /// `IPVS_CMD_ATTR_*`.
    Cmd(Vec<CmdAttr>),
    /// `IPVS_INFO_ATTR_*`.
    Info(Vec<InfoAttr>),
}

/// A generic-netlink IPVS message: the genl header and the attributes (no nlmsghdr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    /// `genlmsghdr.cmd`.
    pub cmd: Cmd,
    /// `genlmsghdr.version`.
    pub version: u8,
    /// `genlmsghdr.reserved`.
    pub reserved: u16,
    /// Attributes.
    pub attrs: IpvsAttrs,
}

impl IpvsMessage {
    /// A request with command attributes.
    pub fn new(cmd: Cmd, attrs: Vec<CmdAttr>) -> Self {
        IpvsMessage {
            cmd,
            version: IPVS_GENL_VERSION,
            reserved: 0,
            attrs: IpvsAttrs::Cmd(attrs),
        }
    }

    /// The command attributes (empty for an info message).
    pub fn cmd_attrs(&self) -> &[CmdAttr] {
        match &self.attrs {
            IpvsAttrs::Cmd(a) => a,
            IpvsAttrs::Info(_) => &[],
        }
    }

    /// Parses a genl payload (what follows the nlmsghdr); `base` is its offset in the
    /// outermost buffer, used in errors.
    ///
    /// # Errors
    /// [`DecodeError`] with the offset of the first malformed byte.
    pub fn parse(buf: &[u8], base: usize) -> Result<Self, DecodeError> {
        let h: [u8; GENL_HDRLEN] = buf
            .get(..GENL_HDRLEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError {
                offset: base,
                kind: DecodeErrorKind::Truncated {
                    needed: GENL_HDRLEN,
                    available: buf.len(),
                },
            })?;
        let cmd = Cmd(h[0]);
        let body = buf.get(GENL_HDRLEN..).unwrap_or_default();
        let body_base = base.saturating_add(GENL_HDRLEN);
        let attrs = if cmd == Cmd::SET_INFO || cmd == Cmd::GET_INFO {
            IpvsAttrs::Info(
                attrs(body, body_base)
                    .map(|a| a.and_then(|a| parse_info_attr(&a)))
                    .collect::<Result<_, _>>()?,
            )
        } else {
            IpvsAttrs::Cmd(
                attrs(body, body_base)
                    .map(|a| a.and_then(|a| parse_cmd_attr(&a)))
                    .collect::<Result<_, _>>()?,
            )
        };
        Ok(IpvsMessage {
            cmd,
            version: h[1],
            reserved: u16::from_ne_bytes([h[2], h[3]]),
            attrs,
        })
    }
}

fn other(a: &RawAttr<'_>) -> (u16, Vec<u8>) {
    (a.kind, a.payload.to_vec())
}

fn parse_stats(a: &RawAttr<'_>) -> Result<Vec<StatsAttr>, DecodeError> {
    a.nested()
        .map(|s| {
            let s = s?;
            Ok(match s.payload.len() {
                4 if s.kind() <= attr::STATS_OUTBPS && s.kind() != 0 => StatsAttr::U32 {
                    kind: s.kind,
                    value: s.u32("stats")?,
                },
                8 if s.kind() <= attr::STATS_OUTBPS && s.kind() != 0 => StatsAttr::U64 {
                    kind: s.kind,
                    value: u64::from_ne_bytes(s.array::<8>("stats")?),
                },
                _ => {
                    let (kind, bytes) = other(&s);
                    StatsAttr::Other { kind, bytes }
                }
            })
        })
        .collect()
}

fn parse_svc_attr(a: &RawAttr<'_>) -> Result<SvcAttr, DecodeError> {
    const C: &str = "service";
    Ok(match a.kind() {
        attr::SVC_AF => SvcAttr::Af(a.u16(C)?),
        attr::SVC_PROTOCOL => SvcAttr::Protocol(a.u16(C)?),
        attr::SVC_ADDR => SvcAttr::Addr(a.payload.to_vec()),
        attr::SVC_PORT => SvcAttr::Port(a.be16(C)?),
        attr::SVC_FWMARK => SvcAttr::Fwmark(a.u32(C)?),
        attr::SVC_SCHED_NAME => SvcAttr::SchedName(a.payload.to_vec()),
        attr::SVC_FLAGS => {
            let b = a.array::<8>(C)?;
            SvcAttr::Flags {
                flags: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                mask: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            }
        }
        attr::SVC_TIMEOUT => SvcAttr::Timeout(a.u32(C)?),
        attr::SVC_NETMASK => SvcAttr::Netmask(a.array::<4>(C)?),
        attr::SVC_STATS => SvcAttr::Stats(NestFlag::of(a.kind), parse_stats(a)?),
        attr::SVC_PE_NAME => SvcAttr::PeName(a.payload.to_vec()),
        attr::SVC_STATS64 => SvcAttr::Stats64(NestFlag::of(a.kind), parse_stats(a)?),
        _ => {
            let (kind, bytes) = other(a);
            SvcAttr::Other { kind, bytes }
        }
    })
}

fn parse_dest_attr(a: &RawAttr<'_>) -> Result<DestAttr, DecodeError> {
    const C: &str = "dest";
    Ok(match a.kind() {
        attr::DEST_ADDR => DestAttr::Addr(a.payload.to_vec()),
        attr::DEST_PORT => DestAttr::Port(a.be16(C)?),
        attr::DEST_FWD_METHOD => DestAttr::FwdMethod(a.u32(C)?),
        attr::DEST_WEIGHT => DestAttr::Weight(a.u32(C)?),
        attr::DEST_U_THRESH => DestAttr::UThresh(a.u32(C)?),
        attr::DEST_L_THRESH => DestAttr::LThresh(a.u32(C)?),
        attr::DEST_ACTIVE_CONNS => DestAttr::ActiveConns(a.u32(C)?),
        attr::DEST_INACT_CONNS => DestAttr::InactConns(a.u32(C)?),
        attr::DEST_PERSIST_CONNS => DestAttr::PersistConns(a.u32(C)?),
        attr::DEST_STATS => DestAttr::Stats(NestFlag::of(a.kind), parse_stats(a)?),
        attr::DEST_ADDR_FAMILY => DestAttr::AddrFamily(a.u16(C)?),
        attr::DEST_STATS64 => DestAttr::Stats64(NestFlag::of(a.kind), parse_stats(a)?),
        attr::DEST_TUN_TYPE => DestAttr::TunType(a.u8(C)?),
        attr::DEST_TUN_PORT => DestAttr::TunPort(a.be16(C)?),
        attr::DEST_TUN_FLAGS => DestAttr::TunFlags(a.u16(C)?),
        _ => {
            let (kind, bytes) = other(a);
            DestAttr::Other { kind, bytes }
        }
    })
}

fn parse_cmd_attr(a: &RawAttr<'_>) -> Result<CmdAttr, DecodeError> {
    const C: &str = "command";
    Ok(match a.kind() {
        attr::CMD_SERVICE => CmdAttr::Service(
            NestFlag::of(a.kind),
            a.nested()
                .map(|x| x.and_then(|x| parse_svc_attr(&x)))
                .collect::<Result<_, _>>()?,
        ),
        attr::CMD_DEST => CmdAttr::Dest(
            NestFlag::of(a.kind),
            a.nested()
                .map(|x| x.and_then(|x| parse_dest_attr(&x)))
                .collect::<Result<_, _>>()?,
        ),
        attr::CMD_TIMEOUT_TCP => CmdAttr::TimeoutTcp(a.u32(C)?),
        attr::CMD_TIMEOUT_TCP_FIN => CmdAttr::TimeoutTcpFin(a.u32(C)?),
        attr::CMD_TIMEOUT_UDP => CmdAttr::TimeoutUdp(a.u32(C)?),
        _ => {
            let (kind, bytes) = other(a);
            CmdAttr::Other { kind, bytes }
        }
    })
}

fn parse_info_attr(a: &RawAttr<'_>) -> Result<InfoAttr, DecodeError> {
    const C: &str = "info";
    Ok(match a.kind() {
        attr::INFO_VERSION => InfoAttr::Version(a.u32(C)?),
        attr::INFO_CONN_TAB_SIZE => InfoAttr::ConnTabSize(a.u32(C)?),
        _ => {
            let (kind, bytes) = other(a);
            InfoAttr::Other { kind, bytes }
        }
    })
}

// ---- emit ----

fn stats_len(s: &[StatsAttr]) -> usize {
    s.iter()
        .map(|a| match a {
            StatsAttr::U32 { .. } => attr_len(4),
            StatsAttr::U64 { .. } => attr_len(8),
            StatsAttr::Other { bytes, .. } => attr_len(bytes.len()),
        })
        .sum()
}

fn emit_stats(w: &mut Writer<'_>, kind: u16, s: &[StatsAttr]) -> Result<(), EncodeError> {
    w.nested(kind, |w| {
        for a in s {
            match a {
                StatsAttr::U32 { kind, value } => w.attr(*kind, &value.to_ne_bytes())?,
                StatsAttr::U64 { kind, value } => w.attr(*kind, &value.to_ne_bytes())?,
                StatsAttr::Other { kind, bytes } => w.attr(*kind, bytes)?,
            }
        }
        Ok(())
    })
}

impl SvcAttr {
    fn buffer_len(&self) -> usize {
        match self {
            SvcAttr::Af(_) | SvcAttr::Protocol(_) | SvcAttr::Port(_) => attr_len(2),
            SvcAttr::Fwmark(_) | SvcAttr::Timeout(_) | SvcAttr::Netmask(_) => attr_len(4),
            SvcAttr::Flags { .. } => attr_len(8),
            SvcAttr::Addr(b)
            | SvcAttr::SchedName(b)
            | SvcAttr::PeName(b)
            | SvcAttr::Other { bytes: b, .. } => attr_len(b.len()),
            SvcAttr::Stats(_, s) | SvcAttr::Stats64(_, s) => NLA_HDRLEN + stats_len(s),
        }
    }

    fn emit(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            SvcAttr::Af(v) => w.attr(attr::SVC_AF, &v.to_ne_bytes()),
            SvcAttr::Protocol(v) => w.attr(attr::SVC_PROTOCOL, &v.to_ne_bytes()),
            SvcAttr::Addr(b) => w.attr(attr::SVC_ADDR, b),
            SvcAttr::Port(v) => w.attr(attr::SVC_PORT, &v.to_be_bytes()),
            SvcAttr::Fwmark(v) => w.attr(attr::SVC_FWMARK, &v.to_ne_bytes()),
            SvcAttr::SchedName(b) => w.attr(attr::SVC_SCHED_NAME, b),
            SvcAttr::Flags { flags, mask } => {
                let mut b = [0u8; 8];
                b[..4].copy_from_slice(&flags.to_ne_bytes());
                b[4..].copy_from_slice(&mask.to_ne_bytes());
                w.attr(attr::SVC_FLAGS, &b)
            }
            SvcAttr::Timeout(v) => w.attr(attr::SVC_TIMEOUT, &v.to_ne_bytes()),
            SvcAttr::Netmask(b) => w.attr(attr::SVC_NETMASK, b),
            SvcAttr::Stats(f, s) => emit_stats(w, f.apply(attr::SVC_STATS), s),
            SvcAttr::PeName(b) => w.attr(attr::SVC_PE_NAME, b),
            SvcAttr::Stats64(f, s) => emit_stats(w, f.apply(attr::SVC_STATS64), s),
            SvcAttr::Other { kind, bytes } => w.attr(*kind, bytes),
        }
    }
}

impl DestAttr {
    fn buffer_len(&self) -> usize {
        match self {
            DestAttr::TunType(_) => attr_len(1),
            DestAttr::Port(_)
            | DestAttr::AddrFamily(_)
            | DestAttr::TunPort(_)
            | DestAttr::TunFlags(_) => attr_len(2),
            DestAttr::FwdMethod(_)
            | DestAttr::Weight(_)
            | DestAttr::UThresh(_)
            | DestAttr::LThresh(_)
            | DestAttr::ActiveConns(_)
            | DestAttr::InactConns(_)
            | DestAttr::PersistConns(_) => attr_len(4),
            DestAttr::Addr(b) | DestAttr::Other { bytes: b, .. } => attr_len(b.len()),
            DestAttr::Stats(_, s) | DestAttr::Stats64(_, s) => NLA_HDRLEN + stats_len(s),
        }
    }

    fn emit(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            DestAttr::Addr(b) => w.attr(attr::DEST_ADDR, b),
            DestAttr::Port(v) => w.attr(attr::DEST_PORT, &v.to_be_bytes()),
            DestAttr::FwdMethod(v) => w.attr(attr::DEST_FWD_METHOD, &v.to_ne_bytes()),
            DestAttr::Weight(v) => w.attr(attr::DEST_WEIGHT, &v.to_ne_bytes()),
            DestAttr::UThresh(v) => w.attr(attr::DEST_U_THRESH, &v.to_ne_bytes()),
            DestAttr::LThresh(v) => w.attr(attr::DEST_L_THRESH, &v.to_ne_bytes()),
            DestAttr::ActiveConns(v) => w.attr(attr::DEST_ACTIVE_CONNS, &v.to_ne_bytes()),
            DestAttr::InactConns(v) => w.attr(attr::DEST_INACT_CONNS, &v.to_ne_bytes()),
            DestAttr::PersistConns(v) => w.attr(attr::DEST_PERSIST_CONNS, &v.to_ne_bytes()),
            DestAttr::Stats(f, s) => emit_stats(w, f.apply(attr::DEST_STATS), s),
            DestAttr::AddrFamily(v) => w.attr(attr::DEST_ADDR_FAMILY, &v.to_ne_bytes()),
            DestAttr::Stats64(f, s) => emit_stats(w, f.apply(attr::DEST_STATS64), s),
            DestAttr::TunType(v) => w.attr(attr::DEST_TUN_TYPE, &[*v]),
            DestAttr::TunPort(v) => w.attr(attr::DEST_TUN_PORT, &v.to_be_bytes()),
            DestAttr::TunFlags(v) => w.attr(attr::DEST_TUN_FLAGS, &v.to_ne_bytes()),
            DestAttr::Other { kind, bytes } => w.attr(*kind, bytes),
        }
    }
}

impl CmdAttr {
    fn buffer_len(&self) -> usize {
        match self {
            CmdAttr::Service(_, a) => NLA_HDRLEN + a.iter().map(SvcAttr::buffer_len).sum::<usize>(),
            CmdAttr::Dest(_, a) => NLA_HDRLEN + a.iter().map(DestAttr::buffer_len).sum::<usize>(),
            CmdAttr::TimeoutTcp(_) | CmdAttr::TimeoutTcpFin(_) | CmdAttr::TimeoutUdp(_) => {
                attr_len(4)
            }
            CmdAttr::Other { bytes, .. } => attr_len(bytes.len()),
        }
    }

    fn emit(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            CmdAttr::Service(f, a) => w.nested(f.apply(attr::CMD_SERVICE), |w| {
                a.iter().try_for_each(|x| x.emit(w))
            }),
            CmdAttr::Dest(f, a) => w.nested(f.apply(attr::CMD_DEST), |w| {
                a.iter().try_for_each(|x| x.emit(w))
            }),
            CmdAttr::TimeoutTcp(v) => w.attr(attr::CMD_TIMEOUT_TCP, &v.to_ne_bytes()),
            CmdAttr::TimeoutTcpFin(v) => w.attr(attr::CMD_TIMEOUT_TCP_FIN, &v.to_ne_bytes()),
            CmdAttr::TimeoutUdp(v) => w.attr(attr::CMD_TIMEOUT_UDP, &v.to_ne_bytes()),
            CmdAttr::Other { kind, bytes } => w.attr(*kind, bytes),
        }
    }
}

impl InfoAttr {
    fn buffer_len(&self) -> usize {
        match self {
            InfoAttr::Version(_) | InfoAttr::ConnTabSize(_) => attr_len(4),
            InfoAttr::Other { bytes, .. } => attr_len(bytes.len()),
        }
    }

    fn emit(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            InfoAttr::Version(v) => w.attr(attr::INFO_VERSION, &v.to_ne_bytes()),
            InfoAttr::ConnTabSize(v) => w.attr(attr::INFO_CONN_TAB_SIZE, &v.to_ne_bytes()),
            InfoAttr::Other { kind, bytes } => w.attr(*kind, bytes),
        }
    }
}

impl Emit for IpvsMessage {
    fn buffer_len(&self) -> usize {
        GENL_HDRLEN
            + match &self.attrs {
                IpvsAttrs::Cmd(a) => a.iter().map(CmdAttr::buffer_len).sum::<usize>(),
                IpvsAttrs::Info(a) => a.iter().map(InfoAttr::buffer_len).sum::<usize>(),
            }
    }

    fn emit(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.put(&[self.cmd.0, self.version])?;
        w.put(&self.reserved.to_ne_bytes())?;
        match &self.attrs {
            IpvsAttrs::Cmd(a) => a.iter().try_for_each(|x| x.emit(w)),
            IpvsAttrs::Info(a) => a.iter().try_for_each(|x| x.emit(w)),
        }
    }
}

/// The generic netlink controller's `CTRL_CMD_GETFAMILY` request for "IPVS".
pub(crate) fn getfamily_request(name: &str) -> Vec<u8> {
    // genl header: cmd CTRL_CMD_GETFAMILY (3), version 1; attr CTRL_ATTR_FAMILY_NAME (2).
    let mut v = vec![3u8, 1, 0, 0];
    let mut s = name.as_bytes().to_vec();
    s.push(0);
    let len = NLA_HDRLEN + s.len();
    v.extend_from_slice(&(len as u16).to_ne_bytes());
    v.extend_from_slice(&2u16.to_ne_bytes());
    v.extend_from_slice(&s);
    v.resize(align4(v.len()), 0);
    v
}

/// Finds `CTRL_ATTR_FAMILY_ID` in a controller reply payload (after the nlmsghdr).
///
/// # Errors
/// [`DecodeError`] on malformed attributes.
pub(crate) fn parse_family_id(payload: &[u8], base: usize) -> Result<Option<u16>, DecodeError> {
    for a in attrs(
        payload.get(GENL_HDRLEN..).unwrap_or_default(),
        base.saturating_add(GENL_HDRLEN),
    ) {
        let a = a?;
        if a.kind() == 1 {
            return Ok(Some(a.u16("ctrl")?));
        }
    }
    Ok(None)
}

/// A whole netlink message: header plus an IPVS payload. Used for fixtures and benches;
/// the client frames requests the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsNlMessage {
    /// The netlink header (`len` is recomputed on emit).
    pub header: NlHeader,
    /// The generic netlink IPVS payload.
    pub message: IpvsMessage,
}

impl IpvsNlMessage {
    /// Parses one netlink message that must carry an IPVS payload.
    ///
    /// # Errors
    /// [`DecodeError`] if the header or payload is malformed or the lengths disagree.
    pub fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        let header = NlHeader::parse(buf, 0)?;
        let len = usize::try_from(header.len).unwrap_or(usize::MAX);
        if len < NLMSG_HDRLEN {
            return Err(DecodeError {
                offset: 0,
                kind: DecodeErrorKind::BadLength { len },
            });
        }
        let payload = buf.get(NLMSG_HDRLEN..len).ok_or(DecodeError {
            offset: 0,
            kind: DecodeErrorKind::Truncated {
                needed: len,
                available: buf.len(),
            },
        })?;
        Ok(IpvsNlMessage {
            header,
            message: IpvsMessage::parse(payload, NLMSG_HDRLEN)?,
        })
    }
}

impl Emit for IpvsNlMessage {
    fn buffer_len(&self) -> usize {
        NLMSG_HDRLEN + self.message.buffer_len()
    }

    fn emit(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let len = self.buffer_len();
        let len32 = u32::try_from(len).map_err(|source| {
            tracing::trace!(%source, len, "message too long");
            EncodeError::TooLong { len }
        })?;
        self.header.emit_with_len(w, len32)?;
        self.message.emit(w)
    }
}
