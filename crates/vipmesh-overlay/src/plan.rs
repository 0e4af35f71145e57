//! Observed state, typed plan steps, and the pure planner.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use vipmesh_netns::rtnl::{Mac, VIPMESH_ADDR_PROTO, VxlanInfo};

use crate::model::{Overlay, VETH_PREFIX};

/// Where a step runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ns {
    /// The node (underlay) namespace the caller passes to `apply`.
    Node,
    /// The overlay namespace (by name).
    Overlay(String),
    /// A local endpoint's namespace (by name).
    Endpoint(String),
}

impl fmt::Display for Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ns::Node => f.write_str("node"),
            Ns::Overlay(n) | Ns::Endpoint(n) => f.write_str(n),
        }
    }
}

/// A link as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLink {
    /// The ifindex.
    pub index: u32,
    /// `IFLA_INFO_KIND`.
    pub kind: Option<String>,
    /// The MTU.
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// The master's name (in the same namespace).
    pub master: Option<String>,
    /// The MAC.
    pub mac: Option<Mac>,
    /// VXLAN attributes.
    pub vxlan: Option<VxlanInfo>,
}

/// The endpoint side of a local endpoint, as observed in its namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedEndpoint {
    /// The interface, when it exists.
    pub link: Option<ObservedLink>,
    /// Its addresses.
    pub addrs: BTreeSet<(IpAddr, u8)>,
}

/// What is in the kernel, as far as this overlay is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The overlay namespace exists.
    pub overlay_netns: bool,
    /// A VXLAN device with the temporary name is left in the node namespace (an interrupted
    /// apply).
    pub node_tmp_vxlan: bool,
    /// Links of the overlay namespace by name.
    pub links: BTreeMap<String, ObservedLink>,
    /// Addresses of the overlay namespace by device name.
    pub addrs: BTreeMap<String, BTreeSet<(IpAddr, u8)>>,
    /// Local endpoints by overlay-side veth name (only the desired ones are observed).
    pub endpoints: BTreeMap<String, ObservedEndpoint>,
    /// Permanent `self` FDB entries with a `dst` on the VXLAN device: (MAC, VTEP).
    pub fdb: BTreeSet<(Mac, IpAddr)>,
    /// Permanent neighbours on the VXLAN device: IP -> MAC.
    pub neigh: BTreeMap<IpAddr, Mac>,
}

/// Link settings applied by [`Step::SetLink`]; `None` leaves a setting alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSettings {
    /// `address`.
    pub mac: Option<Mac>,
    /// `mtu`.
    pub mtu: Option<u32>,
    /// `master`.
    pub master: Option<String>,
    /// `up`.
    pub up: bool,
}

/// One kernel change. `Display` renders it as the equivalent iproute2 command, prefixed with
/// the namespace it runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// `ip netns add NAME`, then `lo` up inside it.
    CreateNetns {
        /// The name.
        name: String,
    },
    /// `ip netns del NAME` (only when nothing but `lo` is left in it).
    DeleteNetns {
        /// The name.
        name: String,
    },
    /// `ip link add NAME type bridge`.
    CreateBridge {
        /// Where.
        ns: Ns,
        /// The name.
        name: String,
    },
    /// `ip link add NAME mtu M type vxlan id VNI dstport P nolearning proxy l2miss l3miss`,
    /// in the node namespace.
    CreateVxlan {
        /// The temporary name.
        name: String,
        /// The VNI.
        vni: u32,
        /// The UDP port.
        port: u16,
        /// The MTU.
        mtu: u32,
    },
    /// `ip link set TMP netns OVERLAY name FINAL`.
    MoveVxlan {
        /// The temporary name in the node namespace.
        from: String,
        /// The overlay namespace.
        netns: String,
        /// The final name.
        to: String,
    },
    /// `ip link add NAME type veth peer name PEER netns PEER_NS`.
    CreateVeth {
        /// Where the local end goes.
        ns: Ns,
        /// The local end.
        name: String,
        /// The peer's name.
        peer: String,
        /// The peer's namespace.
        peer_netns: String,
    },
    /// `ip link set NAME [address MAC] [mtu M] [master B] up`.
    SetLink {
        /// Where.
        ns: Ns,
        /// The link.
        name: String,
        /// What to set.
        settings: LinkSettings,
    },
    /// `ip addr replace ADDR/PREFIX dev DEV proto 0x56`.
    AddAddress {
        /// Where.
        ns: Ns,
        /// The device.
        dev: String,
        /// The address.
        addr: IpAddr,
        /// The prefix length.
        prefix: u8,
    },
    /// `ip addr del ADDR/PREFIX dev DEV` (a gateway address no longer desired on our bridge).
    DeleteAddress {
        /// Where.
        ns: Ns,
        /// The device.
        dev: String,
        /// The address.
        addr: IpAddr,
        /// The prefix length.
        prefix: u8,
    },
    /// `ip link del NAME`.
    DeleteLink {
        /// Where.
        ns: Ns,
        /// The link.
        name: String,
    },
    /// `bridge fdb replace MAC dev DEV dst VTEP self permanent`.
    ReplaceFdb {
        /// Where (the overlay namespace).
        ns: Ns,
        /// The VXLAN device.
        dev: String,
        /// The remote endpoint's MAC.
        mac: Mac,
        /// Its node's underlay address.
        vtep: IpAddr,
    },
    /// `bridge fdb del MAC dev DEV dst VTEP self`.
    DeleteFdb {
        /// Where.
        ns: Ns,
        /// The VXLAN device.
        dev: String,
        /// The MAC.
        mac: Mac,
        /// The VTEP.
        vtep: IpAddr,
    },
    /// `ip neigh replace IP lladdr MAC dev DEV nud permanent`.
    ReplaceNeigh {
        /// Where.
        ns: Ns,
        /// The VXLAN device.
        dev: String,
        /// The remote endpoint's IP.
        ip: IpAddr,
        /// Its MAC.
        mac: Mac,
    },
    /// `ip neigh del IP dev DEV`.
    DeleteNeigh {
        /// Where.
        ns: Ns,
        /// The VXLAN device.
        dev: String,
        /// The IP.
        ip: IpAddr,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CreateNetns { name } => {
                write!(f, "[root] ip netns add {name}; ip -n {name} link set lo up")
            }
            Step::DeleteNetns { name } => write!(f, "[root] ip netns del {name}"),
            Step::CreateBridge { ns, name } => write!(f, "[{ns}] ip link add {name} type bridge"),
            Step::CreateVxlan {
                name,
                vni,
                port,
                mtu,
            } => write!(
                f,
                "[node] ip link add {name} mtu {mtu} type vxlan id {vni} dstport {port} \
                 nolearning proxy l2miss l3miss"
            ),
            Step::MoveVxlan { from, netns, to } => {
                write!(f, "[node] ip link set {from} netns {netns} name {to}")
            }
            Step::CreateVeth {
                ns,
                name,
                peer,
                peer_netns,
            } => write!(
                f,
                "[{ns}] ip link add {name} type veth peer name {peer} netns {peer_netns}"
            ),
            Step::SetLink { ns, name, settings } => {
                write!(f, "[{ns}] ip link set {name}")?;
                if let Some(m) = settings.mac {
                    write!(f, " address {m}")?;
                }
                if let Some(m) = settings.mtu {
                    write!(f, " mtu {m}")?;
                }
                if let Some(m) = &settings.master {
                    write!(f, " master {m}")?;
                }
                if settings.up {
                    write!(f, " up")?;
                }
                Ok(())
            }
            Step::AddAddress {
                ns,
                dev,
                addr,
                prefix,
            } => write!(
                f,
                "[{ns}] ip addr replace {addr}/{prefix} dev {dev} proto {VIPMESH_ADDR_PROTO:#04x}"
            ),
            Step::DeleteAddress {
                ns,
                dev,
                addr,
                prefix,
            } => write!(f, "[{ns}] ip addr del {addr}/{prefix} dev {dev}"),
            Step::DeleteLink { ns, name } => write!(f, "[{ns}] ip link del {name}"),
            Step::ReplaceFdb { ns, dev, mac, vtep } => write!(
                f,
                "[{ns}] bridge fdb replace {mac} dev {dev} dst {vtep} self permanent"
            ),
            Step::DeleteFdb { ns, dev, mac, vtep } => {
                write!(f, "[{ns}] bridge fdb del {mac} dev {dev} dst {vtep} self")
            }
            Step::ReplaceNeigh { ns, dev, ip, mac } => write!(
                f,
                "[{ns}] ip neigh replace {ip} lladdr {mac} dev {dev} nud permanent"
            ),
            Step::DeleteNeigh { ns, dev, ip } => write!(f, "[{ns}] ip neigh del {ip} dev {dev}"),
        }
    }
}

/// An ordered list of steps. `Display` prints one step per line; an empty plan prints
/// nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The steps, in execution order.
    pub steps: Vec<Step>,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            writeln!(f, "{s}")?;
        }
        Ok(())
    }
}

fn vxlan_matches(link: &ObservedLink, d: &Overlay) -> bool {
    let s = d.spec();
    link.kind.as_deref() == Some("vxlan")
        && link.vxlan.as_ref().is_some_and(|v| {
            v.vni == s.vni
                && v.port == s.port
                && !v.learning
                && v.proxy
                && v.l2miss
                && v.l3miss
                && v.dev.is_none()
                && v.local.is_none()
        })
}

/// The settings still to apply to `have` to reach `want` (`None` when it matches).
fn link_diff(have: Option<&ObservedLink>, want: &LinkSettings) -> Option<LinkSettings> {
    let Some(h) = have else {
        return Some(want.clone());
    };
    let d = LinkSettings {
        mac: want.mac.filter(|m| h.mac != Some(*m)),
        mtu: want.mtu.filter(|m| h.mtu != Some(*m)),
        master: want.master.clone().filter(|m| h.master.as_ref() != Some(m)),
        up: want.up,
    };
    let changed = d.mac.is_some() || d.mtu.is_some() || d.master.is_some() || (want.up && !h.up);
    changed.then_some(d)
}

/// The steps that take `observed` to `desired`. Empty when they match.
///
/// Remote endpoints are diffed entry by entry, as libnetwork's peerDB does: adding or
/// removing one endpoint adds or removes only its FDB entry and its neighbour.
pub fn plan(desired: &Overlay, observed: &Observed) -> Plan {
    let s = desired.spec();
    let ov = Ns::Overlay(s.netns.clone());
    let mut steps = Vec::new();
    let empty = Observed::default();
    let o = if observed.overlay_netns {
        observed
    } else {
        steps.push(Step::CreateNetns {
            name: s.netns.clone(),
        });
        &empty
    };

    // The bridge and its gateway addresses.
    let br = o.links.get(&s.bridge);
    if br.is_none() {
        steps.push(Step::CreateBridge {
            ns: ov.clone(),
            name: s.bridge.clone(),
        });
    }
    let want = LinkSettings {
        mac: None,
        mtu: Some(s.mtu),
        master: None,
        up: true,
    };
    if let Some(settings) = link_diff(br, &want) {
        steps.push(Step::SetLink {
            ns: ov.clone(),
            name: s.bridge.clone(),
            settings,
        });
    }
    let br_addrs = o.addrs.get(&s.bridge);
    // The bridge is ours: an address on it that is no gateway any more goes (IPv6
    // link-local addresses are the kernel's).
    for (addr, prefix) in br_addrs.into_iter().flatten() {
        let link_local = matches!(addr, IpAddr::V6(a) if a.is_unicast_link_local());
        let wanted = s
            .subnets
            .iter()
            .any(|sub| sub.gateway == *addr && sub.subnet.prefix() == *prefix);
        if !wanted && !link_local {
            steps.push(Step::DeleteAddress {
                ns: ov.clone(),
                dev: s.bridge.clone(),
                addr: *addr,
                prefix: *prefix,
            });
        }
    }
    for sub in &s.subnets {
        let a = (sub.gateway, sub.subnet.prefix());
        if !br_addrs.is_some_and(|set| set.contains(&a)) {
            steps.push(Step::AddAddress {
                ns: ov.clone(),
                dev: s.bridge.clone(),
                addr: a.0,
                prefix: a.1,
            });
        }
    }

    // The VXLAN device: created in the node namespace, moved and renamed.
    let vx = o.links.get(&s.vxlan);
    let vx_ok = vx.is_some_and(|l| vxlan_matches(l, desired));
    let want = LinkSettings {
        mac: None,
        mtu: Some(s.mtu),
        master: Some(s.bridge.clone()),
        up: true,
    };
    if vx_ok {
        if let Some(settings) = link_diff(vx, &want) {
            steps.push(Step::SetLink {
                ns: ov.clone(),
                name: s.vxlan.clone(),
                settings,
            });
        }
    } else {
        if vx.is_some() {
            steps.push(Step::DeleteLink {
                ns: ov.clone(),
                name: s.vxlan.clone(),
            });
        }
        if observed.node_tmp_vxlan {
            steps.push(Step::DeleteLink {
                ns: Ns::Node,
                name: desired.vxlan_tmp_name().to_string(),
            });
        }
        steps.push(Step::CreateVxlan {
            name: desired.vxlan_tmp_name().to_string(),
            vni: s.vni,
            port: s.port,
            mtu: s.mtu,
        });
        steps.push(Step::MoveVxlan {
            from: desired.vxlan_tmp_name().to_string(),
            netns: s.netns.clone(),
            to: s.vxlan.clone(),
        });
        steps.push(Step::SetLink {
            ns: ov.clone(),
            name: s.vxlan.clone(),
            settings: want,
        });
    }

    // Local endpoints: a veth per endpoint, bridge side named vm-<ip hex>.
    for name in o.links.keys() {
        if name.starts_with(VETH_PREFIX) && !desired.local().contains_key(name) {
            steps.push(Step::DeleteLink {
                ns: ov.clone(),
                name: name.clone(),
            });
        }
    }
    for (veth, ep) in desired.local() {
        let host = o.links.get(veth);
        let epns = Ns::Endpoint(ep.netns.clone());
        let obs = if host.is_some() {
            o.endpoints.get(veth).cloned().unwrap_or_default()
        } else {
            steps.push(Step::CreateVeth {
                ns: ov.clone(),
                name: veth.clone(),
                peer: ep.ifname.clone(),
                peer_netns: ep.netns.clone(),
            });
            ObservedEndpoint::default()
        };
        let want_host = LinkSettings {
            mac: None,
            mtu: Some(s.mtu),
            master: Some(s.bridge.clone()),
            up: true,
        };
        if let Some(settings) = link_diff(host, &want_host) {
            steps.push(Step::SetLink {
                ns: ov.clone(),
                name: veth.clone(),
                settings,
            });
        }
        let want_ep = LinkSettings {
            mac: Some(ep.mac),
            mtu: Some(s.mtu),
            master: None,
            up: true,
        };
        if let Some(settings) = link_diff(obs.link.as_ref(), &want_ep) {
            steps.push(Step::SetLink {
                ns: epns.clone(),
                name: ep.ifname.clone(),
                settings,
            });
        }
        for &(addr, prefix) in std::iter::once(&(ep.addr, ep.prefix)).chain(&ep.extra) {
            if !obs.addrs.contains(&(addr, prefix)) {
                steps.push(Step::AddAddress {
                    ns: epns.clone(),
                    dev: ep.ifname.clone(),
                    addr,
                    prefix,
                });
            }
        }
    }

    // Remote endpoints: static FDB entries and permanent neighbours on the VXLAN device.
    // A re-created device starts empty.
    let (fdb, neigh) = if vx_ok {
        (o.fdb.clone(), o.neigh.clone())
    } else {
        (BTreeSet::new(), BTreeMap::new())
    };
    let want_macs: BTreeSet<Mac> = desired.remote().values().map(|r| r.mac).collect();
    for ip in neigh.keys() {
        if !desired.remote().contains_key(ip) {
            steps.push(Step::DeleteNeigh {
                ns: ov.clone(),
                dev: s.vxlan.clone(),
                ip: *ip,
            });
        }
    }
    for (mac, vtep) in &fdb {
        if !want_macs.contains(mac) {
            steps.push(Step::DeleteFdb {
                ns: ov.clone(),
                dev: s.vxlan.clone(),
                mac: *mac,
                vtep: *vtep,
            });
        }
    }
    let mut fdb_done = BTreeSet::new();
    for (ip, r) in desired.remote() {
        if !fdb.contains(&(r.mac, r.vtep)) && fdb_done.insert((r.mac, r.vtep)) {
            steps.push(Step::ReplaceFdb {
                ns: ov.clone(),
                dev: s.vxlan.clone(),
                mac: r.mac,
                vtep: r.vtep,
            });
        }
        if neigh.get(ip) != Some(&r.mac) {
            steps.push(Step::ReplaceNeigh {
                ns: ov.clone(),
                dev: s.vxlan.clone(),
                ip: *ip,
                mac: r.mac,
            });
        }
    }
    Plan { steps }
}

/// The steps that remove what this overlay created: its veths (their endpoint ends go with
/// them), the VXLAN device (its FDB entries and neighbours go with it), the bridge, a
/// leftover temporary VXLAN device in the node namespace, and the overlay namespace when
/// nothing but `lo` is left in it. Foreign links are never touched.
pub fn plan_teardown(desired: &Overlay, observed: &Observed) -> Plan {
    let s = desired.spec();
    let ov = Ns::Overlay(s.netns.clone());
    let mut steps = Vec::new();
    if observed.node_tmp_vxlan {
        steps.push(Step::DeleteLink {
            ns: Ns::Node,
            name: desired.vxlan_tmp_name().to_string(),
        });
    }
    if !observed.overlay_netns {
        return Plan { steps };
    }
    let mut foreign = false;
    for name in observed.links.keys() {
        let ours = name.starts_with(VETH_PREFIX) || *name == s.vxlan || *name == s.bridge;
        if ours {
            // Delete ports before the bridge: the bridge's name sorts anywhere.
            if *name != s.bridge {
                steps.push(Step::DeleteLink {
                    ns: ov.clone(),
                    name: name.clone(),
                });
            }
        } else if name != "lo" {
            foreign = true;
        }
    }
    if observed.links.contains_key(&s.bridge) {
        steps.push(Step::DeleteLink {
            ns: ov.clone(),
            name: s.bridge.clone(),
        });
    }
    if !foreign {
        steps.push(Step::DeleteNetns {
            name: s.netns.clone(),
        });
    }
    Plan { steps }
}
