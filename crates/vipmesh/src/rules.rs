//! The one place that maps services to netfilter rules (pure).
//!
//! In the LB namespace, as libnetwork's `configureFWMark` does, but in our own chains:
//! - mangle `VIPMESH-MARK` (jumped to from `INPUT`, since the VIP is a local address there):
//!   `-d VIP [-p P --dport N] -m comment --comment "vipmesh svc=NAME" -j MARK --set-mark M`.
//!   The comment records the service's mark in the kernel, which is how marks survive a
//!   restart.
//! - nat `VIPMESH-SNAT` (from `POSTROUTING`): `-d SUBNET -m ipvs --ipvs -j SNAT --to-source LB`,
//!   so replies from tasks come back through the LB namespace.
//! - filter `VIPMESH-REJECT` (from `INPUT`): a VIP whose service has no backends is rejected
//!   at once (TCP reset, ICMP port unreachable otherwise), as kube-proxy does.
//!
//! With [`Layout::PerClient`] the rules live in each client's own namespace: the mark and
//! reject chains are jumped to from `OUTPUT`, and there is no SNAT.

use std::collections::BTreeMap;
use std::net::IpAddr;

use vipmesh_netfilter as nf;

use crate::error::Error;
use crate::model::{DesiredState, Family, Layout, Protocol, ServiceName};

/// The mangle chain holding the mark rules.
pub const MARK_CHAIN: &str = "VIPMESH-MARK";
/// The nat chain holding the SNAT rule.
pub const SNAT_CHAIN: &str = "VIPMESH-SNAT";
/// The filter chain rejecting VIPs with no backends.
pub const REJECT_CHAIN: &str = "VIPMESH-REJECT";
/// Comment prefix of a mark rule; the service name follows.
pub const SERVICE_TAG: &str = "vipmesh svc=";

fn nf_err(op: &str, source: nf::Error) -> Error {
    Error::Netfilter {
        op: op.to_string(),
        netns: String::new(),
        source: Box::new(source),
    }
}

fn chain(name: &str) -> Result<nf::ChainName, Error> {
    nf::ChainName::new(name).map_err(|e| nf_err("chain name", e))
}

/// The netfilter family of a network family.
pub fn nf_family(f: Family) -> nf::Family {
    match f {
        Family::V4 => nf::Family::V4,
        Family::V6 => nf::Family::V6,
    }
}

fn proto(p: Protocol) -> nf::Protocol {
    match p {
        Protocol::Tcp => nf::Protocol::Tcp,
        Protocol::Udp => nf::Protocol::Udp,
        Protocol::Sctp => nf::Protocol::Sctp,
    }
}

/// Renders the whole owned ruleset of the LB namespace for `desired` with `marks`.
///
/// # Errors
/// [`Error::Netfilter`] if a value is rejected by the rule model (it validates again).
pub fn ruleset(
    desired: &DesiredState,
    marks: &BTreeMap<ServiceName, u32>,
) -> Result<nf::OwnedRuleset, Error> {
    let fam = nf_family(desired.family());
    let mut rs = nf::OwnedRuleset::new(fam);
    let mark_chain = chain(MARK_CHAIN)?;
    let snat_chain = chain(SNAT_CHAIN)?;
    let reject_chain = chain(REJECT_CHAIN)?;
    let add = |rs: &mut nf::OwnedRuleset, t: nf::Table, c: &nf::ChainName, r: nf::Rule| {
        rs.add_rule(t, c, r).map_err(|e| nf_err("add rule", e))
    };
    rs.declare_chain(nf::Table::Mangle, &mark_chain);
    if desired.options().layout == Layout::LbNamespace {
        rs.declare_chain(nf::Table::Nat, &snat_chain);
    }
    rs.declare_chain(nf::Table::Filter, &reject_chain);
    for s in desired.services() {
        let (Some(vip), Some(mark)) = (s.vip_addr(), marks.get(&s.name)) else {
            continue;
        };
        let comment = nf::Comment::new(format!("{SERVICE_TAG}{}", s.name))
            .map_err(|e| nf_err("comment", e))?;
        let dst = nf::Matches::new().destination(nf::Cidr::host(vip));
        let target = nf::Target::SetMark(nf::Mark::new(*mark));
        if s.ports.is_empty() {
            add(
                &mut rs,
                nf::Table::Mangle,
                &mark_chain,
                nf::Rule::new(dst.clone(), target.clone()).with_comment(comment.clone()),
            )?;
        }
        for p in &s.ports {
            let port = nf::Port::new(p.port).map_err(|e| nf_err("port", e))?;
            let m = dst
                .clone()
                .protocol(proto(p.protocol))
                .dport(nf::PortRange::single(port));
            add(
                &mut rs,
                nf::Table::Mangle,
                &mark_chain,
                nf::Rule::new(m, target.clone()).with_comment(comment.clone()),
            )?;
        }
        if s.backends.is_empty() {
            let tcp_reset = nf::Rule::new(
                dst.clone().protocol(nf::Protocol::Tcp),
                nf::Target::Reject(nf::RejectWith::TcpReset),
            )
            .with_comment(comment.clone());
            let unreachable = match desired.family() {
                Family::V4 => nf::RejectWith::IcmpPortUnreachable,
                Family::V6 => nf::RejectWith::Icmp6PortUnreachable,
            };
            add(&mut rs, nf::Table::Filter, &reject_chain, tcp_reset)?;
            add(
                &mut rs,
                nf::Table::Filter,
                &reject_chain,
                nf::Rule::new(dst.clone(), nf::Target::Reject(unreachable)).with_comment(comment),
            )?;
        }
    }
    let per_client = desired.options().layout == Layout::PerClient;
    if !per_client {
        let subnet = desired.network().subnet;
        let cidr =
            nf::Cidr::new(subnet.addr(), subnet.prefix()).map_err(|e| nf_err("subnet", e))?;
        add(
            &mut rs,
            nf::Table::Nat,
            &snat_chain,
            nf::Rule::new(
                nf::Matches::new().destination(cidr).ipvs(),
                nf::Target::Snat(desired.network().lb_addr),
            ),
        )?;
    }
    let jump = |from, to: &nf::ChainName| nf::Jump {
        from,
        matches: nf::Matches::new(),
        to: to.clone(),
        position: nf::JumpPosition::Prepend,
    };
    // Packets to a VIP arrive from other namespaces (INPUT, the VIP is local there), or, per
    // client, are the namespace's own packets (OUTPUT).
    let hook = if per_client {
        nf::BuiltinChain::Output
    } else {
        nf::BuiltinChain::Input
    };
    rs.add_jump(nf::Table::Mangle, jump(hook, &mark_chain))
        .map_err(|e| nf_err("add jump", e))?;
    if !per_client {
        rs.add_jump(
            nf::Table::Nat,
            jump(nf::BuiltinChain::Postrouting, &snat_chain),
        )
        .map_err(|e| nf_err("add jump", e))?;
    }
    rs.add_jump(nf::Table::Filter, jump(hook, &reject_chain))
        .map_err(|e| nf_err("add jump", e))?;
    Ok(rs)
}

/// Reads back the service → (fwmark, VIP) records from our mark rules.
pub fn recorded_marks(rs: &nf::OwnedRuleset) -> BTreeMap<ServiceName, (u32, IpAddr)> {
    let mut out = BTreeMap::new();
    let Some(mangle) = rs.tables().get(&nf::Table::Mangle) else {
        return out;
    };
    let Some(rules) = mangle
        .chains
        .iter()
        .find(|(c, _)| c.as_str() == MARK_CHAIN)
        .map(|(_, r)| r)
    else {
        return out;
    };
    for r in rules {
        let (Some(c), nf::Target::SetMark(m), Some(d)) =
            (&r.comment, &r.target, &r.matches.destination)
        else {
            continue;
        };
        let Some(name) = c.as_str().strip_prefix(SERVICE_TAG) else {
            continue;
        };
        if let Ok(n) = ServiceName::new(name) {
            out.entry(n).or_insert((m.value, d.cidr.addr()));
        }
    }
    out
}
