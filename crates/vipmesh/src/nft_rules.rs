//! The one place that maps a namespace's networks and ingress roles to nftables tables (pure),
//! for [`crate::model::Firewall::Nftables`]. The iptables counterpart is [`crate::rules`] (and
//! the ingress's in [`crate::ingress`]); both are built from the same model and marks.
//!
//! One `inet` table `vipmesh-<id>` per network and namespace, made with `vipmesh-nft`'s
//! builders, whose rule count never depends on the number of services (a service is a map
//! element):
//! - LB namespace: `vip_marks` on `input` (VIP [. proto . port] → mark, one lookup rule per
//!   map), `vip_reject` (VIPs of services without backends of that family: TCP reset, else
//!   port unreachable) and `ipvs_snat`: `meta mark <the network's range> ip daddr <subnet> snat ip to <lb>`
//!   instead of iptables' `-m ipvs --ipvs` (nft has no such match; our mark survives IPVS).
//! - per-client layout: `vip_marks` and `vip_reject` on `output`, no SNAT.
//! - ingress sandbox: `ingress_port_marks` (proto . port → mark) on `prerouting` and the SNAT.
//! - host namespace (table `vipmesh-<ingress id>`): `publish_dnat` (proto . port →
//!   sandbox address . port, for local destinations) and `local_masquerade` on the gateway
//!   bridge.
//! - a local task (same table name, in the task's namespace): `task_ingress` (REDIRECT,
//!   ACCEPT, DROP on its ingress interface).
//!
//! The VIP mark maps are the record of the marks in the kernel (as the rule comments are on
//! iptables): [`recorded`] reads them back; the IPVS services are the second record.
//!
//! The host's `FORWARD` accept of published ports stays in iptables on this backend too
//! ([`crate::rules::add_host_forward`]): an nft `accept` cannot override the iptables `DROP`
//! policy Docker sets (every base chain of a hook must accept a packet).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use vipmesh_nft as nft;

use crate::error::Error;
use crate::ingress::{Ingress, PublishMode};
use crate::model::{Family, Layout, NetworkId, NetworkState, ServiceName};
use crate::rules::Recorded;

/// A model error of `vipmesh-nft`, as this crate's error.
pub(crate) fn nft_err(op: &str, netns: &str, source: nft::Error) -> Error {
    Error::Nft {
        op: op.to_string(),
        netns: netns.to_string(),
        source: Box::new(source),
    }
}

/// Whether an error only says that nftables cannot be used here (`nft` missing or older than
/// 1.0, a kernel without nf_tables): on iptables that means no nft table of ours exists.
pub fn is_unavailable(e: &Error) -> bool {
    matches!(e, Error::Nft { source, .. } if matches!(**source,
        nft::Error::NftMissing { .. } | nft::Error::NftTooOld { .. } | nft::Error::KernelNoNfTables { .. }))
}

fn e(op: &str) -> impl Fn(nft::Error) -> Error + '_ {
    move |source| nft_err(op, "", source)
}

/// The nft table id of a network id (both accept `[a-z0-9]{1,10}`).
///
/// # Errors
/// [`Error::Nft`] if the id is not a valid table id.
pub fn table_id(id: &NetworkId) -> Result<nft::NetworkId, Error> {
    nft::NetworkId::new(id.as_str()).map_err(e("table name"))
}

fn proto(p: crate::model::Protocol) -> nft::Proto {
    match p {
        crate::model::Protocol::Tcp => nft::Proto::TCP,
        crate::model::Protocol::Udp => nft::Proto::UDP,
        crate::model::Protocol::Sctp => nft::Proto::SCTP,
    }
}

/// Adds network `net`'s objects (with the fwmarks `marks`) to `t`, a table of its own.
///
/// # Errors
/// [`Error::Nft`] if the table model rejects a value.
pub fn add_network(
    t: &mut nft::Table,
    net: &NetworkState,
    marks: &BTreeMap<ServiceName, u32>,
) -> Result<(), Error> {
    let n = net.network();
    let err = e("build table");
    if n.layout == Layout::Ingress {
        let mut ports = Vec::new();
        for s in net.services() {
            let Some(&mark) = marks.get(&s.name) else {
                continue;
            };
            for p in &s.ports {
                ports.push(nft::PortMark {
                    proto: proto(p.protocol),
                    port: p.port.get(),
                    mark,
                });
            }
        }
        nft::ingress_port_marks(t, &ports).map_err(&err)?;
    } else {
        let mut vips = Vec::new();
        let mut rejects = Vec::new();
        for s in net.services() {
            let Some(&mark) = marks.get(&s.name) else {
                continue;
            };
            for fam in n.families() {
                let Some(vip) = s.vip_addr(fam) else {
                    continue;
                };
                if s.backends_of(fam).next().is_none() {
                    rejects.push(vip);
                }
                if s.ports.is_empty() {
                    vips.push(nft::VipMark {
                        vip,
                        port: None,
                        mark,
                    });
                }
                for p in &s.ports {
                    vips.push(nft::VipMark {
                        vip,
                        port: Some((proto(p.protocol), p.port.get())),
                        mark,
                    });
                }
            }
        }
        let hook = if n.layout == Layout::PerClient {
            nft::Hook::Output
        } else {
            nft::Hook::Input
        };
        nft::vip_marks(t, &[hook], &vips).map_err(&err)?;
        nft::vip_reject(t, &[hook], &rejects).map_err(&err)?;
    }
    if n.layout != Layout::PerClient {
        let mut snat = Vec::new();
        for fam in [Family::V4, Family::V6] {
            let Some(sn) = n.subnet(fam) else { continue };
            snat.push(nft::IpvsSnat {
                first_mark: n.fwmarks.first(),
                last_mark: n.fwmarks.last(),
                subnet: nft::Prefix::new(sn.subnet.addr(), sn.subnet.prefix()).map_err(&err)?,
                to: sn.lb_addr,
            });
        }
        nft::ipvs_snat(t, &snat).map_err(&err)?;
    }
    Ok(())
}

/// The host namespace's objects of the ingress: DNAT of published ports, masquerade of local
/// traffic to the gateway bridge.
///
/// # Errors
/// [`Error::Nft`] if the table model rejects a value.
pub fn add_host(t: &mut nft::Table, ing: &Ingress) -> Result<(), Error> {
    let err = e("build table");
    let mut dnat = Vec::new();
    for fam in ing.families() {
        for (_, p, to, to_port) in ing.publish_targets(fam) {
            let to = SocketAddr::new(to, to_port.get());
            dnat.push(nft::PublishedDnat {
                proto: proto(p.protocol),
                port: p.published.get(),
                to,
            });
        }
    }
    nft::publish_dnat(t, &dnat).map_err(&err)?;
    let oif = nft::IfName::new(&ing.gw_bridge.name).map_err(&err)?;
    nft::local_masquerade(t, &oif).map_err(&err)
}

/// A local task namespace's objects: REDIRECT published → target, ACCEPT the targets, DROP
/// every other TCP/UDP/SCTP port, all on the task's ingress addresses (as the iptables rules
/// match `-d <task address>`, so traffic to its other addresses, such as a host-mode port's,
/// is untouched): chains `task_redirect` (nat prerouting) and `task_filter` (filter input).
/// Nothing when no task of this node lives there.
///
/// # Errors
/// [`Error::Nft`] if the table model rejects a value.
pub fn add_task(t: &mut nft::Table, ing: &Ingress, netns: &str) -> Result<bool, Error> {
    let err = e("build table");
    let n = |s: &str| nft::Name::new(s).map_err(&err);
    let mut rules: Vec<(bool, nft::Rule)> = Vec::new(); // (nat?, rule)
    for s in &ing.services {
        for task in s
            .tasks
            .iter()
            .filter(|t| t.node == ing.node && t.netns.as_deref() == Some(netns))
        {
            for addr in [Some(task.addr), task.addr_v6].into_iter().flatten() {
                let me = nft::Match::Daddr(nft::Prefix::host(addr));
                for p in s.ports.iter().filter(|p| p.mode == PublishMode::Ingress) {
                    let pr = proto(p.protocol);
                    if p.published != p.target {
                        rules.push((
                            true,
                            nft::Rule::new(
                                vec![
                                    me.clone(),
                                    nft::Match::dport(pr, p.published.get()).map_err(&err)?,
                                ],
                                nft::Statement::Redirect(p.target.get()),
                            ),
                        ));
                    }
                    rules.push((
                        false,
                        nft::Rule::new(
                            vec![
                                me.clone(),
                                nft::Match::dport(pr, p.target.get()).map_err(&err)?,
                            ],
                            nft::Statement::Verdict(nft::Verdict::Accept),
                        ),
                    ));
                }
                for pr in [nft::Proto::TCP, nft::Proto::UDP, nft::Proto::SCTP] {
                    rules.push((
                        false,
                        nft::Rule::new(
                            vec![me.clone(), nft::Match::L4Proto(pr)],
                            nft::Statement::Verdict(nft::Verdict::Drop),
                        ),
                    ));
                }
            }
        }
    }
    if rules.is_empty() {
        return Ok(false);
    }
    // Accepts before drops, whatever the order of services and tasks; no duplicates.
    let (mut nat, mut filter): (Vec<_>, Vec<_>) = rules.into_iter().partition(|(n, _)| *n);
    filter.sort_by_key(|(_, r)| matches!(r.stmt, nft::Statement::Verdict(nft::Verdict::Drop)));
    let mut seen = std::collections::BTreeSet::new();
    nat.retain(|(_, r)| seen.insert(r.clone()));
    filter.retain(|(_, r)| seen.insert(r.clone()));
    let redirect = n(nft::names::TASK_REDIRECT)?;
    let filt = n(nft::names::TASK_FILTER)?;
    let base =
        |kind, hook, prio| nft::BaseChain::new(kind, hook, prio, nft::Policy::Accept).map_err(&err);
    t.add_chain(
        redirect.clone(),
        Some(base(
            nft::ChainType::Nat,
            nft::Hook::Prerouting,
            nft::Priority::DSTNAT,
        )?),
    )
    .map_err(&err)?;
    t.add_chain(
        filt.clone(),
        Some(base(
            nft::ChainType::Filter,
            nft::Hook::Input,
            nft::Priority::FILTER,
        )?),
    )
    .map_err(&err)?;
    for (_, r) in nat {
        t.add_rule(&redirect, r).map_err(&err)?;
    }
    for (_, r) in filter {
        t.add_rule(&filt, r).map_err(&err)?;
    }
    Ok(true)
}

/// Every table we want in one namespace, by table name: one per network there, and the
/// ingress's table in the host and in local task namespaces.
///
/// # Errors
/// As [`add_network`], [`add_host`], [`add_task`].
pub fn tables(
    nets: &[&NetworkState],
    marks: &BTreeMap<NetworkId, BTreeMap<ServiceName, u32>>,
    ingress: Option<&Ingress>,
    netns: &str,
) -> Result<BTreeMap<String, nft::Table>, Error> {
    let mut out = BTreeMap::new();
    let empty = BTreeMap::new();
    for n in nets {
        let mut t = nft::Table::new(table_id(n.id())?);
        add_network(&mut t, n, marks.get(n.id()).unwrap_or(&empty))?;
        out.insert(t.name(), t);
    }
    if let Some(ing) = ingress {
        let mut t = nft::Table::new(table_id(&ing.id)?);
        let mut any = false;
        if ing.host_netns == netns {
            add_host(&mut t, ing)?;
            any = true;
        }
        if ing.local_task_namespaces().contains(netns) {
            any |= add_task(&mut t, ing, netns)?;
        }
        if any {
            out.insert(t.name(), t);
        }
    }
    Ok(out)
}

/// The marks our VIP maps and ingress port map record in one observed table of ours
/// (network = the table's id; the planner resolves the service by its VIP or published port).
pub fn recorded(obs: &nft::Observed) -> Vec<Recorded> {
    let mut out = Vec::new();
    if obs.owner != nft::Ownership::Ours {
        return out;
    }
    for (name, map) in obs.table.maps() {
        if name.as_str() != nft::names::INGRESS_PORT {
            continue;
        }
        for (k, v) in map.elements() {
            let (Some(nft::KeyValue::Proto(p)), Some(nft::KeyValue::Port(port))) =
                (k.values().first(), k.values().get(1))
            else {
                continue;
            };
            let Some(protocol) = crate::model::Protocol::ALL
                .into_iter()
                .find(|x| proto(*x) == *p)
            else {
                continue;
            };
            let nft::Value::Mark(mark) = v else { continue };
            out.push(Recorded {
                network: obs.table.id().as_str().to_string(),
                service: None,
                mark: *mark,
                vip: IpAddr::from([0u8; 4]),
                port: Some((protocol, *port)),
            });
        }
    }
    let names = [
        nft::names::VIP4,
        nft::names::VIP4_PORT,
        nft::names::VIP6,
        nft::names::VIP6_PORT,
    ];
    for (name, map) in obs.table.maps() {
        if !names.contains(&name.as_str()) {
            continue;
        }
        for (k, v) in map.elements() {
            let vip = match k.values().first() {
                Some(nft::KeyValue::Ipv4(a)) => IpAddr::V4(*a),
                Some(nft::KeyValue::Ipv6(a)) => IpAddr::V6(*a),
                _ => continue,
            };
            let nft::Value::Mark(mark) = v else { continue };
            out.push(Recorded {
                network: obs.table.id().as_str().to_string(),
                service: None,
                mark: *mark,
                vip,
                port: None,
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The services of `net` by published port (protocol, port): how a recorded mark of the nft
/// ingress port map is resolved to its service.
pub(crate) fn services_by_port(
    net: &NetworkState,
) -> BTreeMap<(crate::model::Protocol, u16), &ServiceName> {
    net.services()
        .flat_map(|s| {
            s.ports
                .iter()
                .map(move |p| ((p.protocol, p.port.get()), &s.name))
        })
        .collect()
}

/// The services of `net` by VIP (both families): how a recorded mark of an nft map element is
/// resolved to its service.
pub(crate) fn services_by_vip(net: &NetworkState) -> BTreeMap<IpAddr, &ServiceName> {
    let mut out = BTreeMap::new();
    for s in net.services() {
        for v in s
            .vips_of()
            .iter()
            .flat_map(|v| v.iter().collect::<Vec<_>>())
        {
            out.insert(v, &s.name);
        }
    }
    out
}
