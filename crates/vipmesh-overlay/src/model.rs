//! The desired overlay of one node, and its validation (pure).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use vipmesh_netns::rtnl::{Mac, VXLAN_PORT};

use crate::Error;

/// Bytes VXLAN adds around an inner Ethernet frame on an IPv4 underlay: outer IPv4 header
/// (20) + UDP (8) + VXLAN header (8) + the inner Ethernet header (14), which the inner MTU
/// does not count but the outer packet carries. An overlay MTU of `underlay MTU - 50`
/// (1450 on a 1500 underlay, Docker's default) makes every encapsulated packet fit.
pub const VXLAN_OVERHEAD_V4: u32 = 20 + 8 + 8 + 14;

/// The same on an IPv6 underlay: the outer header is 40 bytes, so 70 (1430 on 1500).
pub const VXLAN_OVERHEAD_V6: u32 = 40 + 8 + 8 + 14;

/// The smallest overlay MTU for IPv4-only overlays (`ETH_MIN_MTU`).
pub const MIN_MTU_V4: u32 = 68;

/// The smallest overlay MTU when an overlay subnet is IPv6 (RFC 8200: every IPv6 link
/// carries 1280-byte packets; the kernel disables IPv6 on a device below it).
pub const MIN_MTU_V6: u32 = 1280;

/// The largest overlay MTU: the VXLAN device's maximum without a lower device,
/// `IP_MAX_MTU - VXLAN_HEADROOM` (65535 - 50) in `drivers/net/vxlan/vxlan_core.c`.
pub const MAX_MTU: u32 = 65535 - VXLAN_OVERHEAD_V4;

/// The overlay MTU that fits an underlay MTU: `underlay - 50` (IPv4 underlay) or
/// `underlay - 70` (IPv6 underlay).
///
/// # Examples
/// ```
/// assert_eq!(vipmesh_overlay::overlay_mtu_for(1500, false), 1450);
/// assert_eq!(vipmesh_overlay::overlay_mtu_for(9000, true), 8930);
/// ```
pub fn overlay_mtu_for(underlay_mtu: u32, ipv6_underlay: bool) -> u32 {
    let overhead = if ipv6_underlay {
        VXLAN_OVERHEAD_V6
    } else {
        VXLAN_OVERHEAD_V4
    };
    underlay_mtu.saturating_sub(overhead)
}

/// The MAC of an overlay endpoint, derived from its IP as Docker does
/// (`netutils.GenerateMACFromIP`): `02:42` (locally administered, unicast) followed by the
/// four IPv4 bytes. For IPv6, vipmesh uses `02:42` followed by the LAST four bytes of the
/// address (Docker picks a random MAC there); two IPv6 endpoints that differ only above
/// their last 32 bits would collide, which validation reports as a duplicate MAC (give one
/// of them an explicit MAC).
///
/// # Examples
/// ```
/// use std::net::IpAddr;
/// let ip: IpAddr = "10.255.0.6".parse().unwrap();
/// assert_eq!(vipmesh_overlay::mac_for(ip).to_string(), "02:42:0a:ff:00:06");
/// ```
pub fn mac_for(ip: IpAddr) -> Mac {
    let b = last4(ip);
    Mac([0x02, 0x42, b[0], b[1], b[2], b[3]])
}

fn last4(ip: IpAddr) -> [u8; 4] {
    match ip {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    }
}

/// The overlay-side veth name of a local endpoint: `vm-` and the last four address bytes in
/// hex (`vm-0aff0005` for 10.255.0.5). The `vm-` prefix marks the veths vipmesh owns in the
/// overlay namespace.
pub fn veth_name_for(ip: IpAddr) -> String {
    let b = last4(ip);
    format!(
        "{VETH_PREFIX}{:02x}{:02x}{:02x}{:02x}",
        b[0], b[1], b[2], b[3]
    )
}

/// The prefix of the overlay-side veths vipmesh creates.
pub const VETH_PREFIX: &str = "vm-";

/// An IP subnet, `addr/prefix`, with the host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet {
    addr: IpAddr,
    prefix: u8,
}

impl Subnet {
    /// A subnet; `None` when the prefix is too long or host bits are set.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Subnet> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return None;
        }
        let s = Subnet { addr, prefix };
        (s.network_bits(addr) == to_u128(addr)).then_some(s)
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn network_bits(&self, ip: IpAddr) -> u128 {
        let width: u32 = if ip.is_ipv4() { 32 } else { 128 };
        let host_bits = width - u32::from(self.prefix);
        let v = to_u128(ip);
        if host_bits >= 128 {
            0
        } else {
            (v >> host_bits) << host_bits
        }
    }

    /// Whether `ip` lies in this subnet.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && self.network_bits(ip) == to_u128(self.addr)
    }
}

fn to_u128(ip: IpAddr) -> u128 {
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
        let bad = |reason| Error::InvalidField {
            field: "subnet".into(),
            value: s.into(),
            reason,
        };
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| bad("expected ADDR/PREFIX"))?;
        let addr: IpAddr = a.parse().map_err(|_| bad("not an IP address"))?;
        let prefix: u8 = p.parse().map_err(|_| bad("bad prefix length"))?;
        Subnet::new(addr, prefix).ok_or_else(|| bad("prefix too long or host bits set"))
    }
}

/// An overlay subnet and the gateway address the overlay bridge carries in it (the same on
/// every node; it is reached only locally).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetSpec {
    /// The subnet, e.g. 10.255.0.0/16.
    pub subnet: Subnet,
    /// The gateway, e.g. 10.255.0.1.
    pub gateway: IpAddr,
}

/// An endpoint on this node: an interface in a sandbox or task namespace, joined to the
/// overlay bridge by a veth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// The endpoint's namespace (a name under `/run/netns`); it must exist.
    pub netns: String,
    /// The interface name inside it, e.g. `eth0`.
    pub ifname: String,
    /// The overlay address.
    pub addr: IpAddr,
    /// The MAC; [`mac_for`] of the address when `None`.
    pub mac: Option<Mac>,
    /// More addresses of the same interface, each in one of the overlay's subnets (a
    /// dual-stack endpoint's IPv6 address beside its IPv4 one).
    pub extra_addrs: Vec<IpAddr>,
}

/// An endpoint on another node, reached over VXLAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// The overlay address.
    pub addr: IpAddr,
    /// The MAC; [`mac_for`] of the address when `None`.
    pub mac: Option<Mac>,
    /// The node it runs on (a key of [`OverlaySpec::nodes`]).
    pub node: String,
    /// More addresses of the same endpoint (one MAC, one FDB entry, a neighbour each).
    pub extra_addrs: Vec<IpAddr>,
}

/// The desired overlay of one node, as the caller writes it. [`Overlay::new`] validates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlaySpec {
    /// A short id of the network (1..=4 of `[a-z0-9]`), part of the temporary VXLAN name
    /// `vx-<vni hex>-<id>` (Docker: the first characters of the network id).
    pub network_id: String,
    /// The VNI, 1..=2^24-1.
    pub vni: u32,
    /// The overlay MTU (see [`overlay_mtu_for`]); Docker's default is 1450.
    pub mtu: u32,
    /// The VXLAN UDP port, 4789 by default. Sent explicitly: the kernel's default is 8472.
    pub port: u16,
    /// The overlay subnets and their gateways.
    pub subnets: Vec<SubnetSpec>,
    /// The overlay namespace (created if missing), e.g. `1-ingress`.
    pub netns: String,
    /// The bridge in the overlay namespace, `br0`.
    pub bridge: String,
    /// The VXLAN device's final name in the overlay namespace, `vxlan0`.
    pub vxlan: String,
    /// Endpoints on this node.
    pub local: Vec<LocalEndpoint>,
    /// Endpoints on other nodes.
    pub remote: Vec<RemoteEndpoint>,
    /// Node name -> underlay (VTEP) address.
    pub nodes: BTreeMap<String, IpAddr>,
}

impl OverlaySpec {
    /// A spec with Docker's defaults: MTU 1450, port 4789, `br0`, `vxlan0`, and no subnets,
    /// endpoints or nodes yet.
    pub fn new(network_id: &str, vni: u32, netns: &str) -> OverlaySpec {
        OverlaySpec {
            network_id: network_id.to_string(),
            vni,
            mtu: 1450,
            port: VXLAN_PORT,
            subnets: Vec::new(),
            netns: netns.to_string(),
            bridge: "br0".into(),
            vxlan: "vxlan0".into(),
            local: Vec::new(),
            remote: Vec::new(),
            nodes: BTreeMap::new(),
        }
    }
}

/// A validated local endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEp {
    /// Its namespace.
    pub netns: String,
    /// Its interface name there.
    pub ifname: String,
    /// Its address.
    pub addr: IpAddr,
    /// The prefix length of its subnet.
    pub prefix: u8,
    /// Its MAC.
    pub mac: Mac,
    /// Its further addresses with their prefix lengths.
    pub extra: Vec<(IpAddr, u8)>,
}

/// A validated remote endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteEp {
    /// Its MAC.
    pub mac: Mac,
    /// Its node's underlay address.
    pub vtep: IpAddr,
}

/// A validated overlay: every value is in range and consistent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    spec: OverlaySpec,
    vxlan_tmp: String,
    local: BTreeMap<String, LocalEp>,
    remote: BTreeMap<IpAddr, RemoteEp>,
}

fn check_ifname(field: &str, value: &str) -> Result<(), Error> {
    let reason = if value.is_empty() {
        "empty"
    } else if value.len() > 15 {
        "longer than 15 bytes (IFNAMSIZ)"
    } else if value == "." || value == ".." {
        "not a name"
    } else if value
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        "contains '/', ':', NUL or whitespace"
    } else {
        return Ok(());
    };
    Err(Error::InvalidField {
        field: field.into(),
        value: value.into(),
        reason,
    })
}

fn check_netns(field: &str, value: &str) -> Result<(), Error> {
    vipmesh_netns::validate_name(value).map_err(|_| Error::InvalidField {
        field: field.into(),
        value: value.into(),
        reason: "not a namespace name (empty, '.', '..', '/' or NUL)",
    })
}

impl Overlay {
    /// Validates `spec`.
    ///
    /// # Errors
    /// A typed error naming the field and the value: [`Error::InvalidVni`],
    /// [`Error::InvalidMtu`], [`Error::InvalidField`], [`Error::OutsideSubnets`],
    /// [`Error::DuplicateIp`], [`Error::DuplicateMac`], [`Error::DuplicateVeth`],
    /// [`Error::NodeWithoutUnderlay`], [`Error::DuplicateUnderlay`].
    pub fn new(spec: &OverlaySpec) -> Result<Overlay, Error> {
        if spec.vni == 0 || spec.vni > 0x00ff_ffff {
            return Err(Error::InvalidVni { value: spec.vni });
        }
        let v6 = spec.subnets.iter().any(|s| s.subnet.addr().is_ipv6());
        let (min, reason) = if v6 {
            (MIN_MTU_V6, "an IPv6 subnet needs >= 1280")
        } else {
            (MIN_MTU_V4, "68 (ETH_MIN_MTU) up to the VXLAN maximum 65485")
        };
        if spec.mtu < min || spec.mtu > MAX_MTU {
            return Err(Error::InvalidMtu {
                value: spec.mtu,
                min,
                max: MAX_MTU,
                reason,
            });
        }
        if spec.port == 0 {
            return Err(Error::InvalidField {
                field: "port".into(),
                value: "0".into(),
                reason: "the VXLAN port must be non-zero",
            });
        }
        if spec.network_id.is_empty()
            || spec.network_id.len() > 4
            || !spec
                .network_id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(Error::InvalidField {
                field: "network_id".into(),
                value: spec.network_id.clone(),
                reason: "1 to 4 characters of [a-z0-9]",
            });
        }
        check_netns("netns", &spec.netns)?;
        check_ifname("bridge", &spec.bridge)?;
        check_ifname("vxlan", &spec.vxlan)?;
        if spec.bridge == spec.vxlan || spec.bridge.starts_with(VETH_PREFIX) {
            return Err(Error::InvalidField {
                field: "bridge".into(),
                value: spec.bridge.clone(),
                reason: "equals the vxlan name or uses the veth prefix vm-",
            });
        }
        if spec.vxlan.starts_with(VETH_PREFIX) {
            return Err(Error::InvalidField {
                field: "vxlan".into(),
                value: spec.vxlan.clone(),
                reason: "uses the veth prefix vm-",
            });
        }
        if spec.subnets.is_empty() {
            return Err(Error::InvalidField {
                field: "subnets".into(),
                value: "[]".into(),
                reason: "at least one subnet",
            });
        }
        // IP ownership: gateways first, then endpoints.
        let mut ips: BTreeMap<IpAddr, String> = BTreeMap::new();
        let mut claim = |ip: IpAddr, who: String| match ips.get(&ip) {
            Some(first) => Err(Error::DuplicateIp {
                addr: ip,
                first: first.clone(),
                second: who,
            }),
            None => {
                ips.insert(ip, who);
                Ok(())
            }
        };
        for (i, s) in spec.subnets.iter().enumerate() {
            if !s.subnet.contains(s.gateway) {
                return Err(Error::OutsideSubnets {
                    field: format!("subnets[{i}].gateway"),
                    addr: s.gateway,
                });
            }
            for t in spec.subnets.iter().take(i) {
                if t.subnet.contains(s.subnet.addr()) || s.subnet.contains(t.subnet.addr()) {
                    return Err(Error::InvalidField {
                        field: format!("subnets[{i}].subnet"),
                        value: s.subnet.to_string(),
                        reason: "overlaps another subnet",
                    });
                }
            }
            claim(s.gateway, format!("subnets[{i}].gateway"))?;
        }
        let prefix_of = |field: String, ip: IpAddr| {
            spec.subnets
                .iter()
                .find(|s| s.subnet.contains(ip))
                .map(|s| s.subnet.prefix())
                .ok_or(Error::OutsideSubnets { field, addr: ip })
        };
        let mut macs: BTreeMap<Mac, String> = BTreeMap::new();
        let mut claim_mac = |mac: Mac, who: String| match macs.get(&mac) {
            Some(first) => Err(Error::DuplicateMac {
                mac,
                first: first.clone(),
                second: who,
            }),
            None => {
                macs.insert(mac, who);
                Ok(())
            }
        };
        let mut underlay: BTreeMap<IpAddr, &str> = BTreeMap::new();
        for (node, addr) in &spec.nodes {
            if let Some(first) = underlay.insert(*addr, node) {
                return Err(Error::DuplicateUnderlay {
                    addr: *addr,
                    first: first.to_string(),
                    second: node.clone(),
                });
            }
        }
        let mut local = BTreeMap::new();
        for (i, e) in spec.local.iter().enumerate() {
            let who = format!("local[{i}] ({} in {})", e.addr, e.netns);
            check_netns(&format!("local[{i}].netns"), &e.netns)?;
            check_ifname(&format!("local[{i}].ifname"), &e.ifname)?;
            let prefix = prefix_of(format!("local[{i}].addr"), e.addr)?;
            claim(e.addr, who.clone())?;
            let mac = e.mac.unwrap_or_else(|| mac_for(e.addr));
            claim_mac(mac, who.clone())?;
            let veth = veth_name_for(e.addr);
            if let Some(first) = local.get(&veth).map(|f: &LocalEp| f.addr) {
                return Err(Error::DuplicateVeth {
                    name: veth,
                    first: first.to_string(),
                    second: who,
                });
            }
            let mut extra = Vec::new();
            for (j, a) in e.extra_addrs.iter().enumerate() {
                extra.push((*a, prefix_of(format!("local[{i}].extra_addrs[{j}]"), *a)?));
                claim(*a, who.clone())?;
            }
            local.insert(
                veth,
                LocalEp {
                    netns: e.netns.clone(),
                    ifname: e.ifname.clone(),
                    addr: e.addr,
                    prefix,
                    mac,
                    extra,
                },
            );
        }
        let mut remote = BTreeMap::new();
        for (i, e) in spec.remote.iter().enumerate() {
            let who = format!("remote[{i}] ({} on {})", e.addr, e.node);
            prefix_of(format!("remote[{i}].addr"), e.addr)?;
            claim(e.addr, who.clone())?;
            let mac = e.mac.unwrap_or_else(|| mac_for(e.addr));
            claim_mac(mac, who.clone())?;
            let vtep = *spec
                .nodes
                .get(&e.node)
                .ok_or_else(|| Error::NodeWithoutUnderlay {
                    endpoint: who.clone(),
                    node: e.node.clone(),
                })?;
            remote.insert(e.addr, RemoteEp { mac, vtep });
            for (j, a) in e.extra_addrs.iter().enumerate() {
                prefix_of(format!("remote[{i}].extra_addrs[{j}]"), *a)?;
                claim(*a, who.clone())?;
                remote.insert(*a, RemoteEp { mac, vtep });
            }
        }
        let vxlan_tmp = format!("vx-{:06x}-{}", spec.vni, spec.network_id);
        Ok(Overlay {
            spec: spec.clone(),
            vxlan_tmp,
            local,
            remote,
        })
    }

    /// The spec this overlay was built from.
    pub fn spec(&self) -> &OverlaySpec {
        &self.spec
    }

    /// The temporary name of the VXLAN device in the node namespace, `vx-<vni hex>-<id>`.
    pub fn vxlan_tmp_name(&self) -> &str {
        &self.vxlan_tmp
    }

    /// Local endpoints by overlay-side veth name.
    pub fn local(&self) -> &BTreeMap<String, LocalEp> {
        &self.local
    }

    /// Remote endpoints by address.
    pub fn remote(&self) -> &BTreeMap<IpAddr, RemoteEp> {
        &self.remote
    }
}
