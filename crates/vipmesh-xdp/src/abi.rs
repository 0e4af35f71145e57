//! Rust mirrors of the structs in `ebpf/vipmesh_abi.h`.
//!
//! The header is the single declaration. [`check_layout`](crate::btf::check_layout) compares
//! every struct below (size and field offsets) with the compiled object's BTF; a unit test runs
//! it, so drift fails loudly.

/// Maximum number of services (`VM_MAX_SERVICES`).
pub const MAX_SERVICES: u32 = 1024;
/// Maximum number of backends over all services (`VM_MAX_BACKENDS`).
pub const MAX_BACKENDS: u32 = 4096;
/// Size of the DEVMAP of egress interfaces (`VM_MAX_TX_PORTS`).
pub const MAX_TX_PORTS: u32 = 256;
/// Default capacity of the LRU flow table (`VM_FLOW_ENTRIES`).
pub const FLOW_ENTRIES: u32 = 65536;
/// Largest Maglev table size M (`VM_MAX_TABLE`); inner maps hold M + 1 slots.
pub const MAX_TABLE: u32 = 65537;
/// Words of the `svc_filter` map (`VM_FILTER_WORDS`): a port bitmap, then an address-hash
/// bitmap ([`filter_bits`]).
pub const FILTER_WORDS: u32 = 4096;
/// First word of the address half of `svc_filter` (`VM_FILTER_ADDR_BASE`).
pub const FILTER_ADDR_BASE: u32 = 2048;
/// Multiplier of the address hash (`VM_ADDR_HASH_MUL`).
pub const ADDR_HASH_MUL: u32 = 0x9e37_79b1;

/// The two `svc_filter` bits, as (word, bit mask), that a service key sets: its destination port
/// (host order) in the port half, and the hash of its address in the address half. Mirrors the
/// check at the top of `xdp_lb` (and `vm_addr_bit`).
pub fn filter_bits(key: &SvcKey) -> [(u32, u32); 2] {
    let port = u32::from(u16::from_be(key.port));
    let w = key.addr.w[0] ^ key.addr.w[1] ^ key.addr.w[2] ^ key.addr.w[3];
    let h = w.wrapping_mul(ADDR_HASH_MUL) >> 16;
    [
        (port >> 5, 1 << (port & 31)),
        (FILTER_ADDR_BASE + (h >> 5), 1 << (h & 31)),
    ]
}
/// Number of global counters (`VM_C_COUNT`).
pub const COUNTER_SLOTS: u32 = 32;

/// `VM_FAMILY_V4`.
pub const FAMILY_V4: u8 = 4;
/// `VM_FAMILY_V6`.
pub const FAMILY_V6: u8 = 6;
/// `VM_MODE_NAT`.
pub const MODE_NAT: u8 = 0;
/// `VM_MODE_ENCAP`.
pub const MODE_ENCAP: u8 = 1;
/// `VM_BACKEND_VALID`.
pub const BACKEND_VALID: u8 = 1;
/// `VM_FLOW_REPLIED`: a reply without SYN went back through `tc_rev`.
pub const FLOW_REPLIED: u8 = 1;
/// `VM_REV_VIPS`: how many NAT services may share one backend address and port.
pub const REV_VIPS: usize = 4;
/// `VM_ST_NEW`.
pub const ST_NEW: u8 = 0;
/// `VM_ST_ESTABLISHED`.
pub const ST_ESTABLISHED: u8 = 1;
/// `VM_ST_CLOSING`.
pub const ST_CLOSING: u8 = 2;

/// `struct vm_addr`: an IPv4 address in `w[0]`, or an IPv6 address; network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    /// The address bytes as four words in wire order.
    pub w: [u32; 4],
}

/// `struct vm_svc_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcKey {
    /// Service address.
    pub addr: Addr,
    /// Port, network byte order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
}

/// `struct vm_svc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Svc {
    /// Index into `maglev_outer` and `svc_stats`.
    pub id: u32,
    /// `MODE_NAT` or `MODE_ENCAP`.
    pub mode: u8,
    /// Reserved.
    pub flags: u8,
    /// Padding.
    pub pad: u16,
}

/// `struct vm_backend`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendEntry {
    /// Backend address.
    pub addr: Addr,
    /// Target port (NAT), network byte order.
    pub port: u16,
    /// Address family.
    pub family: u8,
    /// `BACKEND_VALID` when in use.
    pub flags: u8,
    /// Key into `tx_ports`.
    pub tx_slot: u32,
    /// Source MAC written on the way out.
    pub smac: [u8; 6],
    /// Destination MAC written on the way out.
    pub dmac: [u8; 6],
    /// Generation of this id's assignment: fresh for every newly allocated id, kept while the
    /// backend stays. Flows remember it, so a flow never follows a reused id.
    pub generation: u32,
    /// `MODE_*` of the backend's service.
    pub mode: u8,
    /// Padding.
    pub pad: [u8; 3],
}

/// `struct vm_flow_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Sender address.
    pub src: Addr,
    /// Receiver address.
    pub dst: Addr,
    /// Sender port.
    pub sport: u16,
    /// Receiver port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Address family.
    pub family: u8,
    /// Padding.
    pub pad: u16,
}

/// `struct vm_flow`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Last packet in either direction (`bpf_ktime_get_coarse_ns`, as cached per CPU by the
    /// programs).
    pub atime: u64,
    /// Backend id.
    pub backend: u32,
    /// Service id.
    pub svc: u32,
    /// The backend's [`BackendEntry::generation`] when the flow was created.
    pub generation: u32,
    /// `ST_*`.
    pub state: u8,
    /// `FLOW_*`.
    pub flags: u8,
    /// Padding.
    pub pad: u16,
    /// NAT: the interface the client's packets came in on.
    pub ifindex: u32,
    /// NAT: the client-side MAC (destination of replies).
    pub client_mac: [u8; 6],
    /// NAT: the node's MAC (source of replies).
    pub our_mac: [u8; 6],
}

/// `struct vm_rev_vip`: one service a NAT backend serves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevVip {
    /// The VIP replies leave as.
    pub vip: Addr,
    /// The VIP port replies leave as (network byte order).
    pub vport: u16,
    /// Padding.
    pub pad: u16,
    /// The backend's id in that service.
    pub backend: u32,
}

/// `struct vm_rev_vips`: value of `rev_vips`, keyed by the backend's address, target port and
/// protocol ([`SvcKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevVips {
    /// How many of `v` are used.
    pub n: u32,
    /// Padding.
    pub pad: u32,
    /// The services, in service-key order.
    pub v: [RevVip; REV_VIPS],
}

/// `struct vm_cfg`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cfg {
    /// Outer source address for IPv4 encapsulation.
    pub node4: Addr,
    /// Outer source address for IPv6 encapsulation.
    pub node6: Addr,
    /// TCP idle timeout.
    pub tcp_idle_ns: u64,
    /// UDP idle timeout.
    pub udp_idle_ns: u64,
    /// Lifetime of a flow after FIN.
    pub close_ns: u64,
    /// Reserved.
    pub flags: u32,
    /// MTU of the links encapsulated packets cross (MSS clamping of SYNs to encap services).
    pub encap_mtu: u16,
    /// Padding.
    pub pad: u16,
}

/// `struct vm_stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsEntry {
    /// Packets.
    pub packets: u64,
    /// Bytes (whole frames as received).
    pub bytes: u64,
    /// Flows created.
    pub new_flows: u64,
}

/// `struct vm_port_map`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortMap {
    /// Port, network byte order.
    pub port: u16,
    /// Padding.
    pub pad: u16,
}

/// One field of a layout: name, byte offset.
pub type Field = (&'static str, usize);

/// The expected layout of each shared struct, derived from the Rust definitions.
pub fn layouts() -> Vec<(&'static str, usize, Vec<Field>)> {
    use core::mem::{offset_of, size_of};
    macro_rules! l {
        ($c:literal, $t:ty, [$($f:ident),*]) => {
            ($c, size_of::<$t>(), vec![$((stringify!($f), offset_of!($t, $f))),*])
        };
    }
    vec![
        l!("vm_addr", Addr, [w]),
        l!("vm_svc_key", SvcKey, [addr, port, proto, family]),
        l!("vm_svc", Svc, [id, mode, flags, pad]),
        l!(
            "vm_backend",
            BackendEntry,
            [
                addr, port, family, flags, tx_slot, smac, dmac, generation, mode, pad
            ]
        ),
        l!(
            "vm_flow_key",
            FlowKey,
            [src, dst, sport, dport, proto, family, pad]
        ),
        l!(
            "vm_flow",
            Flow,
            [
                atime, backend, svc, generation, state, flags, pad, ifindex, client_mac, our_mac
            ]
        ),
        l!("vm_rev_vip", RevVip, [vip, vport, pad, backend]),
        l!("vm_rev_vips", RevVips, [n, pad, v]),
        l!(
            "vm_cfg",
            Cfg,
            [
                node4,
                node6,
                tcp_idle_ns,
                udp_idle_ns,
                close_ns,
                flags,
                encap_mtu,
                pad
            ]
        ),
        l!("vm_stats", StatsEntry, [packets, bytes, new_flows]),
        l!("vm_port_map", PortMap, [port, pad]),
    ]
}

/// Global counters, in the order of `enum vm_counter`.
pub const COUNTER_NAMES: [&str; 26] = [
    "rx",
    "pass_not_ip",
    "pass_fragment",
    "pass_malformed",
    "pass_not_ours",
    "pass_options",
    "pass_proto",
    "drop_no_backend",
    "flow_new",
    "flow_hit",
    "flow_miss_midstream",
    "flow_insert_fail",
    "flow_closed",
    "flow_expired",
    "redirect_nat",
    "redirect_encap",
    "encap_fail",
    "drop_family",
    "rev_hit",
    "rev_expired",
    "rev_stale_syn",
    "rev_closed",
    "decap",
    "decap_port",
    "egress_port",
    "mss_clamped",
];
