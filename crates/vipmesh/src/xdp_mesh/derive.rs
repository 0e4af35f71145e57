//! The XDP desired state of one node, derived from the ingress model ([`derive`]). Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use vipmesh_xdp::{ForwardMode, Proto, ServiceKey};

use super::config::{AttachRequest, PortDataplane, XdpMeshConfig};
use crate::error::Error;
use crate::ingress::{Ingress, PublishMode};
use crate::model::Protocol;

/// IPIP's outer IPv4 header.
pub const IPIP_OVERHEAD: u16 = 20;
/// IPv6-in-IPv6's outer header.
pub const IP6IP6_OVERHEAD: u16 = 40;

/// Where a backend is, as the node sees it (resolved to an ifindex and MACs by the planner).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    /// A task on this node: NAT, redirected into the node-side peer of its veth.
    Local {
        /// The task's namespace.
        netns: String,
        /// Its interface there.
        interface: String,
        /// The node-side peer in the host namespace.
        host_veth: String,
    },
    /// A task on another node: IPIP towards the task's address, sent to that node's uplink
    /// MAC through this node's uplink; that node routes it to the task, which decapsulates.
    Remote {
        /// The node's name.
        node: String,
        /// Its underlay address (the next hop on the LAN).
        underlay: IpAddr,
    },
}

/// One backend of a published port, as every node lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredBackend {
    /// The task's address.
    pub addr: IpAddr,
    /// The target port (the Maglev key is `addr:target`, the same on every node).
    pub port: u16,
    /// The Maglev weight.
    pub weight: u32,
    /// NAT (local task) or encap (remote task).
    pub mode: ForwardMode,
    /// Where it is.
    pub via: Via,
}

/// One published port on this node's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredService {
    /// This node's address, the published port, the protocol.
    pub key: ServiceKey,
    /// The service's name (for the plan's text).
    pub service: String,
    /// Its backends on every node, in canonical order (address, port): every node builds
    /// the same Maglev table from them.
    pub backends: Vec<DesiredBackend>,
}

/// The task side of one local task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredTask {
    /// Its interface (default `eth0`).
    pub interface: String,
    /// The node-side peer of its veth.
    pub host_veth: String,
    /// The addresses on its `lo` (/32, /128; ours by `IFA_PROTO`): the other nodes' underlay
    /// addresses, the inner destination of what they encapsulate to it (DSR: it replies from
    /// that address).
    pub lo_addrs: BTreeSet<IpAddr>,
    /// `tc_decap` port translations: (other node's address, published port, protocol) →
    /// target port.
    pub ports: BTreeMap<ServiceKey, u16>,
}

/// Everything the XDP mesh programs on one node ([`derive()`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpDesired {
    /// This node's name.
    pub node: String,
    /// Its host namespace.
    pub host_netns: String,
    /// Its uplink.
    pub uplink: String,
    /// The attach mode asked for.
    pub attach: AttachRequest,
    /// The bpffs root of this node's pins.
    pub pin_root: PathBuf,
    /// The file recording the sysctl values our writes replaced
    /// ([`super::XdpMeshConfig::state_dir`]`/sysctls.json`).
    pub sysctl_record: PathBuf,
    /// The fast path's settings (the node's address as the outer source, the encap MTU).
    pub config: vipmesh_xdp::Config,
    /// Maglev table size.
    pub table_size: vipmesh_xdp::TableSize,
    /// LRU flow table capacity.
    pub flow_entries: u32,
    /// Published ports served by XDP, by key.
    pub services: BTreeMap<ServiceKey, DesiredService>,
    /// Local tasks, by namespace.
    pub tasks: BTreeMap<String, DesiredTask>,
    /// Sysctls of the host namespace (`ip_forward` for the encapsulated transit to local
    /// tasks; loose `rp_filter` on the host veths, whose DSR replies carry another node's
    /// address), by key.
    pub host_sysctls: BTreeMap<String, String>,
    /// Sysctls of each task namespace (`arp_ignore=1`, `arp_announce=2`: the addresses on
    /// `lo` are never answered or used for ARP on the veth).
    pub task_sysctls: BTreeMap<String, String>,
}

fn bad(field: &'static str, value: impl std::fmt::Display, reason: &str) -> Error {
    Error::Invalid {
        field,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn proto(p: Protocol, service: &str, published: u16) -> Result<Proto, Error> {
    Proto::try_from(p).map_err(|_sctp| {
        bad(
            "services.ports.protocol",
            format!("{p}/{published} of {service}"),
            "the XDP mesh serves TCP and UDP only (publish it through the IPVS mesh)",
        )
    })
}

/// Derives this node's XDP desired state from the ingress model and the node's options.
///
/// Every ingress-published port served by XDP ([`XdpMeshConfig::ports`]) becomes a service on
/// this node's underlay address with every task of the service on any node as a backend, in
/// canonical order; local tasks are NAT backends, remote ones encap backends. Host-mode ports
/// are left alone. IPv6: [`crate::ingress::ClusterNode`] has one (IPv4) underlay address, so
/// the nodes' IPv6 addresses come from [`XdpMeshConfig::underlay_v6`]; a node that has one
/// serves its published ports on it too, with the tasks' `addr_v6` as backends (IPv6-in-IPv6
/// towards remote ones).
///
/// # Errors
///
/// [`Error::Invalid`] naming the field and value, before anything is written: the ingress
/// model's own checks; this node missing from the view; an underlay address that is
/// unspecified, IPv6 or of another family than this node's (`nodes.underlay`); SCTP; a local
/// task without namespace (`tasks.netns`) or without a node-side veth in
/// [`XdpMeshConfig::host_veths`] (`xdp.host_veths`); an underlay MTU leaving less than 1280
/// bytes after the IPIP header (`xdp.underlay_mtu`); more than
/// [`vipmesh_xdp::abi::REV_VIPS`] published ports NAT-ing to one task address and port
/// (`services.ports`); a table size that is not a prime in range (`xdp.table_size`); a bad
/// uplink name (`xdp.uplink`).
///
/// # Examples
///
/// See `crates/vipmesh/src/xdp_mesh/tests.rs`.
pub fn derive(ing: &Ingress, cfg: &XdpMeshConfig) -> Result<XdpDesired, Error> {
    ing.validate()?;
    if cfg.uplink.is_empty()
        || cfg.uplink.len() > 15
        || cfg.uplink.contains('/')
        || cfg.uplink.chars().any(char::is_whitespace)
    {
        return Err(bad("xdp.uplink", &cfg.uplink, "not an interface name"));
    }
    let this = ing
        .this_node()
        .ok_or_else(|| bad("ingress.node", &ing.node, "not in ingress.nodes"))?;
    let node4 = match this.underlay {
        IpAddr::V4(a) if !a.is_unspecified() => a,
        other => {
            return Err(bad(
                "nodes.underlay",
                format!("{} = {other}", this.name),
                "the XDP mesh needs this node's IPv4 underlay address",
            ));
        }
    };
    for n in &ing.nodes {
        if n.underlay.is_unspecified() || !n.underlay.is_ipv4() {
            return Err(bad(
                "nodes.underlay",
                format!("{} = {}", n.name, n.underlay),
                "a node needs an IPv4 underlay address to receive encapsulated flows",
            ));
        }
    }
    if cfg.underlay_mtu < 1280 + IPIP_OVERHEAD {
        return Err(bad(
            "xdp.underlay_mtu",
            cfg.underlay_mtu,
            "leaves less than 1280 bytes after the 20-byte IPIP header",
        ));
    }
    let table_size = vipmesh_xdp::TableSize::new(cfg.table_size)
        .map_err(|e| bad("xdp.table_size", cfg.table_size, &e.to_string()))?;
    for n in cfg.underlay_v6.keys() {
        if !ing.nodes.iter().any(|x| &x.name == n) {
            return Err(bad("xdp.underlay_v6", n, "not in ingress.nodes"));
        }
    }
    for (n, a) in &cfg.underlay_v6 {
        if a.is_unspecified() || a.is_multicast() {
            return Err(bad(
                "xdp.underlay_v6",
                format!("{n} = {a}"),
                "not a unicast address",
            ));
        }
    }
    let node6 = cfg.underlay_v6.get(&this.name).copied();
    if node6.is_some() && cfg.underlay_mtu < 1280 + IP6IP6_OVERHEAD {
        return Err(bad(
            "xdp.underlay_mtu",
            cfg.underlay_mtu,
            "leaves less than 1280 bytes after the 40-byte IPv6-in-IPv6 header",
        ));
    }
    // Per family: this node's address, every node's underlay, the other nodes' addresses.
    let mut fams: Vec<(IpAddr, BTreeMap<&str, IpAddr>)> = vec![(
        IpAddr::V4(node4),
        ing.nodes
            .iter()
            .map(|n| (n.name.as_str(), n.underlay))
            .collect(),
    )];
    if let Some(n6) = node6 {
        fams.push((
            IpAddr::V6(n6),
            cfg.underlay_v6
                .iter()
                .map(|(n, a)| (n.as_str(), IpAddr::V6(*a)))
                .collect(),
        ));
    }

    let mut services = BTreeMap::new();
    let mut tasks: BTreeMap<String, DesiredTask> = BTreeMap::new();
    // (task addr, target, proto) -> published keys NAT-ing to it (rev_vips' limit).
    let mut nat_users: BTreeMap<(IpAddr, u16, Proto), Vec<ServiceKey>> = BTreeMap::new();
    for svc in &ing.services {
        let name = svc.name.as_str();
        for p in &svc.ports {
            if p.mode != PublishMode::Ingress
                || cfg.port(p.protocol, p.published.get()) != PortDataplane::Xdp
            {
                continue;
            }
            let proto = proto(p.protocol, name, p.published.get())?;
            for (node_addr, underlay_of) in &fams {
                let others: BTreeSet<IpAddr> = underlay_of
                    .iter()
                    .filter(|(n, _)| **n != this.name)
                    .map(|(_, a)| *a)
                    .collect();
                let key = ServiceKey {
                    addr: *node_addr,
                    port: p.published.get(),
                    proto,
                };
                let mut backends = Vec::new();
                for t in &svc.tasks {
                    let Some(taddr) = (if node_addr.is_ipv4() {
                        Some(t.addr).filter(IpAddr::is_ipv4)
                    } else {
                        t.addr_v6.filter(IpAddr::is_ipv6)
                    }) else {
                        continue;
                    };
                    let via = if t.node == this.name {
                        let netns = t.netns.clone().ok_or_else(|| {
                            bad(
                                "tasks.netns",
                                format!("{taddr} of {name}"),
                                "a task on this node needs its namespace",
                            )
                        })?;
                        let host_veth = cfg
                            .host_veths
                            .get(&netns)
                            .or(t.host_veth.as_ref())
                            .cloned()
                            .ok_or_else(|| {
                                bad(
                                    "xdp.host_veths",
                                    &netns,
                                    "no node-side veth given for this task namespace (xdp.host_veths or the task's host_veth)",
                                )
                            })?;
                        let interface = t.interface.clone().unwrap_or_else(|| "eth0".into());
                        let task = tasks.entry(netns.clone()).or_default();
                        task.interface.clone_from(&interface);
                        task.host_veth.clone_from(&host_veth);
                        task.lo_addrs.extend(others.iter().copied());
                        for &o in &others {
                            task.ports.insert(
                                ServiceKey {
                                    addr: o,
                                    port: p.published.get(),
                                    proto,
                                },
                                p.target.get(),
                            );
                        }
                        nat_users
                            .entry((taddr, p.target.get(), proto))
                            .or_default()
                            .push(key);
                        Via::Local {
                            netns,
                            interface,
                            host_veth,
                        }
                    } else {
                        let underlay =
                            underlay_of.get(t.node.as_str()).copied().ok_or_else(|| {
                                if node_addr.is_ipv4() {
                                    bad(
                                        "tasks.node",
                                        format!("{taddr} of {name} on {}", t.node),
                                        "not in ingress.nodes",
                                    )
                                } else {
                                    bad(
                                        "xdp.underlay_v6",
                                        &t.node,
                                        "a node with IPv6 tasks needs an IPv6 underlay address",
                                    )
                                }
                            })?;
                        Via::Remote {
                            node: t.node.clone(),
                            underlay,
                        }
                    };
                    let mode = match via {
                        Via::Local { .. } => ForwardMode::Nat,
                        Via::Remote { .. } => ForwardMode::Encap,
                    };
                    backends.push(DesiredBackend {
                        addr: taddr,
                        port: p.target.get(),
                        weight: t.weight.get(),
                        mode,
                        via,
                    });
                }
                backends.sort_by_key(|b| (b.addr, b.port));
                backends.dedup_by(|a, b| (a.addr, a.port) == (b.addr, b.port));
                services.insert(
                    key,
                    DesiredService {
                        key,
                        service: name.to_owned(),
                        backends,
                    },
                );
            }
        }
    }
    for ((addr, port, proto), users) in &nat_users {
        if users.len() > vipmesh_xdp::abi::REV_VIPS {
            return Err(bad(
                "services.ports",
                format!(
                    "{proto:?} {} in {}",
                    std::net::SocketAddr::new(*addr, *port),
                    users
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "more than 4 published ports NAT to one task address and port",
            ));
        }
    }
    let mut host_sysctls = BTreeMap::from([("net.ipv4.ip_forward".to_owned(), "1".to_owned())]);
    for t in tasks.values() {
        host_sysctls.insert(
            format!("net.ipv4.conf.{}.rp_filter", t.host_veth),
            "2".into(),
        );
    }
    if node6.is_some() {
        host_sysctls.insert("net.ipv6.conf.all.forwarding".into(), "1".into());
    }
    let task_sysctls = BTreeMap::from([
        ("net.ipv4.conf.all.arp_ignore".to_owned(), "1".to_owned()),
        ("net.ipv4.conf.all.arp_announce".to_owned(), "2".to_owned()),
    ]);
    let pin_root = cfg
        .pin_root
        .clone()
        .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/vipmesh").join(&ing.node));
    let sysctl_record = cfg
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/run/vipmesh/xdp").join(&ing.node))
        .join("sysctls.json");
    Ok(XdpDesired {
        node: ing.node.clone(),
        host_netns: ing.host_netns.clone(),
        uplink: cfg.uplink.clone(),
        attach: cfg.attach,
        pin_root,
        sysctl_record,
        config: vipmesh_xdp::Config {
            node_v4: Some(node4),
            node_v6: node6,
            encap_mtu: cfg.underlay_mtu,
            ..vipmesh_xdp::Config::default()
        },
        table_size,
        flow_entries: cfg.flow_entries,
        services,
        tasks,
        host_sysctls,
        task_sysctls,
    })
}
