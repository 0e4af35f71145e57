//! The one place that maps a network's services to netfilter rules (pure).
//!
//! Each network owns its own chains, named from its id, so several networks can share one
//! namespace (the per-client layout) without touching each other. In the LB namespace, as
//! libnetwork's `configureFWMark` does, but in our own chains:
//! - mangle `VIPMESH-<id>-MARK` (jumped to from `INPUT`, since the VIP is a local address
//!   there): `-d VIP [-p P --dport N] -m comment --comment "vipmesh net=ID svc=NAME" -j MARK
//!   --set-mark M`. The comment records the service's mark in the kernel, which is how marks
//!   survive a restart (and the IPVS services themselves are the second record).
//! - nat `VIPMESH-<id>-SNAT` (from `POSTROUTING`): `-d SUBNET -m ipvs --ipvs -j SNAT
//!   --to-source LB`, so replies from tasks come back through the LB namespace.
//! - filter `VIPMESH-<id>-REJECT` (from `INPUT`): a VIP whose service has no backends of its
//!   family is rejected at once (TCP reset, ICMP port unreachable otherwise), as kube-proxy
//!   does.
//!
//! With [`Layout::PerClient`] the rules live in each client's own namespace: the mark and
//! reject chains are jumped to from `OUTPUT`, and there is no SNAT.

use std::collections::BTreeMap;
use std::net::IpAddr;

use vipmesh_netfilter as nf;

use crate::error::Error;
use crate::model::{Family, Layout, NetworkState, ServiceName};

/// Comment prefix of a mark rule: `vipmesh net=ID svc=NAME`.
pub const RECORD_TAG: &str = "vipmesh net=";

/// The chain names of one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chains {
    /// mangle: the mark rules.
    pub mark: nf::ChainName,
    /// nat: the SNAT rule.
    pub snat: nf::ChainName,
    /// filter: rejects for VIPs without backends.
    pub reject: nf::ChainName,
}

/// The chain name `VIPMESH-<id>-<suffix>`.
///
/// # Errors
/// [`Error::Netfilter`] if the name is not a valid chain name (cannot happen for a valid
/// network id and the suffixes used here).
pub fn chain_name(net: &str, suffix: &str) -> Result<nf::ChainName, Error> {
    nf::ChainName::new(format!("{}{net}-{suffix}", nf::ChainName::PREFIX))
        .map_err(|e| nf_err("chain name", e))
}

impl Chains {
    /// The chains of network `id`.
    ///
    /// # Errors
    /// As [`chain_name`].
    pub fn of(id: &str) -> Result<Chains, Error> {
        Ok(Chains {
            mark: chain_name(id, "MARK")?,
            snat: chain_name(id, "SNAT")?,
            reject: chain_name(id, "REJECT")?,
        })
    }
}

/// A rule-model error, as this crate's error.
pub(crate) fn nf_err(op: &str, source: nf::Error) -> Error {
    Error::Netfilter {
        op: op.to_string(),
        netns: String::new(),
        source: Box::new(source),
    }
}

/// Adds a rule to one of our chains.
pub(crate) fn add_rule(
    rs: &mut nf::OwnedRuleset,
    t: nf::Table,
    c: &nf::ChainName,
    r: nf::Rule,
) -> Result<(), Error> {
    rs.add_rule(t, c, r).map_err(|e| nf_err("add rule", e))
}

/// A jump from a built-in chain into one of ours, inserted first.
pub(crate) fn jump(from: nf::BuiltinChain, matches: nf::Matches, to: &nf::ChainName) -> nf::Jump {
    nf::Jump {
        from,
        matches,
        to: to.clone(),
        position: nf::JumpPosition::Prepend,
    }
}

/// The netfilter family of a network family.
pub fn nf_family(f: Family) -> nf::Family {
    f.into()
}

/// Adds network `net`'s rules for `family` (with the fwmarks `marks`) to `rs`. A network
/// without a subnet of that family adds nothing.
///
/// # Errors
/// [`Error::Netfilter`] if a value is rejected by the rule model (it validates again).
pub fn add_network(
    rs: &mut nf::OwnedRuleset,
    net: &NetworkState,
    family: Family,
    marks: &BTreeMap<ServiceName, u32>,
) -> Result<(), Error> {
    let n = net.network();
    let Some(sn) = n.subnet(family) else {
        return Ok(());
    };
    let chains = Chains::of(n.id.as_str())?;
    let add = add_rule;
    let per_client = n.layout == Layout::PerClient;
    rs.declare_chain(nf::Table::Mangle, &chains.mark);
    if !per_client {
        rs.declare_chain(nf::Table::Nat, &chains.snat);
    }
    let ingress = n.layout == Layout::Ingress;
    if !ingress {
        rs.declare_chain(nf::Table::Filter, &chains.reject);
    }
    for s in net.services() {
        let Some(mark) = marks.get(&s.name) else {
            continue;
        };
        if ingress {
            // The ingress sandbox: published ports, by destination port (any address: the
            // node DNATs them to the sandbox's gateway-bridge address).
            let comment = nf::Comment::new(format!("{RECORD_TAG}{} svc={}", n.id, s.name))
                .map_err(|e| nf_err("comment", e))?;
            for p in &s.ports {
                let port = nf::Port::new(p.port.get()).map_err(|e| nf_err("port", e))?;
                let m = nf::Matches::new()
                    .protocol(nf::Protocol::from(p.protocol))
                    .dport(nf::PortRange::single(port));
                let r = nf::Rule::new(m, nf::Target::SetMark(nf::Mark::new(*mark)))
                    .with_comment(comment.clone());
                add(rs, nf::Table::Mangle, &chains.mark, r)?;
            }
            continue;
        }
        let Some(vip) = s.vip_addr(family) else {
            continue;
        };
        let comment = nf::Comment::new(format!("{RECORD_TAG}{} svc={}", n.id, s.name))
            .map_err(|e| nf_err("comment", e))?;
        let dst = nf::Matches::new().destination(nf::Cidr::host(vip));
        let target = nf::Target::SetMark(nf::Mark::new(*mark));
        if s.ports.is_empty() {
            let r = nf::Rule::new(dst.clone(), target.clone()).with_comment(comment.clone());
            add(rs, nf::Table::Mangle, &chains.mark, r)?;
        }
        for p in &s.ports {
            let port = nf::Port::new(p.port.get()).map_err(|e| nf_err("port", e))?;
            let m = dst
                .clone()
                .protocol(nf::Protocol::from(p.protocol))
                .dport(nf::PortRange::single(port));
            let r = nf::Rule::new(m, target.clone()).with_comment(comment.clone());
            add(rs, nf::Table::Mangle, &chains.mark, r)?;
        }
        if s.backends_of(family).next().is_none() {
            let tcp_reset = nf::Rule::new(
                dst.clone().protocol(nf::Protocol::Tcp),
                nf::Target::Reject(nf::RejectWith::TcpReset),
            )
            .with_comment(comment.clone());
            let unreachable = match family {
                Family::V4 => nf::RejectWith::IcmpPortUnreachable,
                Family::V6 => nf::RejectWith::Icmp6PortUnreachable,
            };
            add(rs, nf::Table::Filter, &chains.reject, tcp_reset)?;
            let r =
                nf::Rule::new(dst.clone(), nf::Target::Reject(unreachable)).with_comment(comment);
            add(rs, nf::Table::Filter, &chains.reject, r)?;
        }
    }
    if !per_client {
        let cidr =
            nf::Cidr::new(sn.subnet.addr(), sn.subnet.prefix()).map_err(|e| nf_err("subnet", e))?;
        let r = nf::Rule::new(
            nf::Matches::new().destination(cidr).ipvs(),
            nf::Target::Snat(sn.lb_addr),
        );
        add(rs, nf::Table::Nat, &chains.snat, r)?;
    }
    let jump = |from, to: &nf::ChainName| jump(from, nf::Matches::new(), to);
    // Packets to a VIP arrive from other namespaces (INPUT, the VIP is local there), or, per
    // client, are the namespace's own packets (OUTPUT).
    let hook = match n.layout {
        Layout::PerClient => nf::BuiltinChain::Output,
        Layout::LbNamespace => nf::BuiltinChain::Input,
        // Published ports are marked before routing: the packet is DNATed to this namespace
        // and must carry the mark when IPVS sees it in LOCAL_IN.
        Layout::Ingress => nf::BuiltinChain::Prerouting,
    };
    rs.add_jump(nf::Table::Mangle, jump(hook, &chains.mark))
        .map_err(|e| nf_err("add jump", e))?;
    if !per_client {
        rs.add_jump(
            nf::Table::Nat,
            jump(nf::BuiltinChain::Postrouting, &chains.snat),
        )
        .map_err(|e| nf_err("add jump", e))?;
    }
    if !ingress {
        rs.add_jump(nf::Table::Filter, jump(hook, &chains.reject))
            .map_err(|e| nf_err("add jump", e))?;
    }
    Ok(())
}

/// The rules of one network for one family, alone in a ruleset (for tests and goldens).
///
/// # Errors
/// As [`add_network`].
pub fn ruleset(
    net: &NetworkState,
    family: Family,
    marks: &BTreeMap<ServiceName, u32>,
) -> Result<nf::OwnedRuleset, Error> {
    let mut rs = nf::OwnedRuleset::new(nf_family(family));
    add_network(&mut rs, net, family, marks)?;
    Ok(rs)
}

/// One service's mark as recorded in the kernel by a mark rule's comment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Recorded {
    /// The network id the comment names (as written; it may belong to a network that is no
    /// longer desired).
    pub network: String,
    /// The service: named by an iptables rule's comment; `None` for an nft map element
    /// (the planner resolves it by the VIP).
    pub service: Option<ServiceName>,
    /// Its fwmark.
    pub mark: u32,
    /// The VIP the rule matches (unspecified for the ingress sandbox's, which match any
    /// address).
    pub vip: IpAddr,
    /// For an nft ingress map element: the published port (protocol, port) it marks; the
    /// planner resolves the service by it.
    pub port: Option<(crate::model::Protocol, u16)>,
}

/// Reads back the recorded marks from our mark chains (any network) of one observed family.
pub fn recorded(obs: &nf::Observed) -> Vec<Recorded> {
    let mut out = Vec::new();
    let Some(mangle) = obs.tables.get(&nf::Table::Mangle) else {
        return out;
    };
    for rules in mangle.chains.values() {
        for r in rules {
            let Some(nf::Rule {
                comment: Some(c),
                target: nf::Target::SetMark(m),
                matches,
                ..
            }) = &r.rule
            else {
                continue;
            };
            let Some(rest) = c.as_str().strip_prefix(RECORD_TAG) else {
                continue;
            };
            // The ingress sandbox's rules match published ports on any address: their record
            // is the comment alone (the address is only read for records without a service).
            let vip = matches.destination.as_ref().map_or_else(
                || match obs.family {
                    nf::Family::V4 => IpAddr::from([0u8; 4]),
                    nf::Family::V6 => IpAddr::from([0u8; 16]),
                },
                |d| d.cidr.addr(),
            );
            let Some((net, svc)) = rest.split_once(" svc=") else {
                continue;
            };
            if let Ok(service) = ServiceName::new(svc) {
                let rec = Recorded {
                    network: net.to_string(),
                    service: Some(service),
                    mark: m.value,
                    vip,
                    port: None,
                };
                out.push(rec);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The host's `FORWARD` accept of published ports (filter `VIPMESH-<ingress>-FWD`, each family of
/// the ingress), kept
/// in iptables on the nftables backend too: Docker sets the iptables `FORWARD` policy to
/// `DROP`, and an nft `accept` in another base chain cannot override an iptables drop (a
/// packet must pass every base chain of the hook). The same rules as
/// [`crate::ingress::add_host_rules`] puts in that chain.
///
/// # Errors
/// [`Error::Netfilter`] if the rule model rejects a value.
pub fn add_host_forward(
    rs: &mut nf::OwnedRuleset,
    ing: &crate::ingress::Ingress,
) -> Result<(), Error> {
    let fam: Family = rs.family().into();
    if !ing.families().contains(&fam) {
        return Ok(());
    }
    let fwd = chain_name(ing.id.as_str(), "FWD")?;
    rs.declare_chain(nf::Table::Filter, &fwd);
    let port = |p: crate::model::Port| nf::Port::new(p.get()).map_err(|e| nf_err("port", e));
    for (_, p, to, to_port) in ing.publish_targets(fam) {
        let accept = nf::Matches::new()
            .protocol(nf::Protocol::from(p.protocol))
            .dport(nf::PortRange::single(port(to_port)?))
            .destination(nf::Cidr::host(to));
        add_rule(
            rs,
            nf::Table::Filter,
            &fwd,
            nf::Rule::new(accept, nf::Target::Accept),
        )?;
        let back = nf::Matches::new()
            .protocol(nf::Protocol::from(p.protocol))
            .sport(nf::PortRange::single(port(to_port)?))
            .source(nf::Cidr::host(to))
            .ctstate(nf::CtState::ESTABLISHED | nf::CtState::RELATED);
        add_rule(
            rs,
            nf::Table::Filter,
            &fwd,
            nf::Rule::new(back, nf::Target::Accept),
        )?;
    }
    rs.add_jump(
        nf::Table::Filter,
        jump(nf::BuiltinChain::Forward, nf::Matches::new(), &fwd),
    )
    .map_err(|e| nf_err("add jump", e))
}
