//! The only module that touches the kernel: observe and apply, through
//! [`vipmesh_netns::rtnl::Rtnl`] handles (one per namespace, opened once per call).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use vipmesh_netns::Netns;
use vipmesh_netns::rtnl::{Link, Rtnl, VIPMESH_ADDR_PROTO, VxlanSpec};

use crate::Error;
use crate::model::Overlay;
use crate::plan::{LinkSettings, Ns, Observed, ObservedEndpoint, ObservedLink, Plan, Step};

fn observed_links(links: &[Link]) -> BTreeMap<String, ObservedLink> {
    let names: HashMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
    links
        .iter()
        .map(|l| {
            (
                l.name.clone(),
                ObservedLink {
                    index: l.index,
                    kind: l.kind.clone(),
                    mtu: l.mtu,
                    up: l.up,
                    master: l.master.and_then(|m| names.get(&m).map(|n| n.to_string())),
                    mac: l.mac,
                    vxlan: l.vxlan.clone(),
                },
            )
        })
        .collect()
}

fn open_named(name: &str) -> Result<Option<Netns>, Error> {
    match Netns::named(name) {
        Ok(ns) => Ok(Some(ns)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(Error::kernel(format!("open network namespace {name}"))(e)),
    }
}

/// Reads what is there: the overlay namespace's links, addresses, FDB entries and
/// neighbours on the VXLAN device, the endpoint interfaces, and a leftover temporary VXLAN
/// device in `node`.
///
/// # Errors
/// [`Error::EndpointNetnsMissing`] when a local endpoint's namespace does not exist;
/// [`Error::Kernel`] when a dump fails.
pub fn observe(node: &Netns, overlay: &Overlay) -> Result<Observed, Error> {
    let s = overlay.spec();
    let mut o = Observed::default();
    // Endpoint namespaces first: a missing one is a caller error, reported before anything.
    let mut ep_ns = BTreeMap::new();
    for (veth, ep) in overlay.local() {
        let ns = open_named(&ep.netns)?.ok_or_else(|| Error::EndpointNetnsMissing {
            endpoint: format!("local endpoint {}", ep.addr),
            netns: ep.netns.clone(),
        })?;
        ep_ns.insert(veth.clone(), ns);
    }
    let node_rtnl =
        Rtnl::open(node).map_err(Error::kernel("open rtnetlink in the node namespace"))?;
    o.node_tmp_vxlan = match node_rtnl.link(overlay.vxlan_tmp_name()) {
        Ok(_) => true,
        Err(e) if e.is_not_found() => false,
        Err(e) => return Err(Error::kernel("look up the temporary vxlan device")(e)),
    };
    if let Some(ns) = open_named(&s.netns)? {
        o.overlay_netns = true;
        let r =
            Rtnl::open(&ns).map_err(Error::kernel("open rtnetlink in the overlay namespace"))?;
        let links = r.links().map_err(Error::kernel("dump overlay links"))?;
        let by_index: HashMap<u32, &str> =
            links.iter().map(|l| (l.index, l.name.as_str())).collect();
        for a in r
            .addresses()
            .map_err(Error::kernel("dump overlay addresses"))?
        {
            if let Some(dev) = by_index.get(&a.ifindex) {
                o.addrs
                    .entry(dev.to_string())
                    .or_default()
                    .insert((a.addr, a.prefix_len));
            }
        }
        o.links = observed_links(&links);
        if let Some(vx) = o.links.get(&s.vxlan).map(|l| l.index) {
            for e in r.fdb().map_err(Error::kernel("dump fdb"))? {
                if let (true, true, true, Some(dst)) =
                    (e.ifindex == vx, e.is_self, e.permanent, e.dst)
                {
                    o.fdb.insert((e.mac, dst));
                }
            }
            for n in r.neighbours().map_err(Error::kernel("dump neighbours"))? {
                if let (true, true, Some(mac)) = (n.ifindex == vx, n.permanent, n.mac) {
                    o.neigh.insert(n.ip, mac);
                }
            }
        }
    }
    for (veth, ep) in overlay.local() {
        let Some(ns) = ep_ns.get(veth) else { continue };
        let r = Rtnl::open(ns).map_err(Error::kernel(format!(
            "open rtnetlink in endpoint namespace {}",
            ep.netns
        )))?;
        let mut obs = ObservedEndpoint::default();
        match r.link(&ep.ifname) {
            Ok(l) => {
                let idx = l.index;
                let links = r.links().map_err(Error::kernel("dump endpoint links"))?;
                obs.link = observed_links(&links).remove(&l.name);
                obs.addrs = r
                    .addresses()
                    .map_err(Error::kernel("dump endpoint addresses"))?
                    .into_iter()
                    .filter(|a| a.ifindex == idx)
                    .map(|a| (a.addr, a.prefix_len))
                    .collect::<BTreeSet<_>>();
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(Error::kernel("look up the endpoint interface")(e)),
        }
        o.endpoints.insert(veth.clone(), obs);
    }
    Ok(o)
}

/// The open handles of one apply, and an ifindex cache.
struct Handles<'a> {
    node: &'a Netns,
    rtnl: BTreeMap<Ns, Rtnl>,
    netns: BTreeMap<String, Netns>,
    index: HashMap<(Ns, String), u32>,
}

impl Handles<'_> {
    fn netns(&mut self, ns: &Ns) -> Result<&Netns, Error> {
        let name = match ns {
            Ns::Node => return Ok(self.node),
            Ns::Overlay(n) | Ns::Endpoint(n) => n.clone(),
        };
        if !self.netns.contains_key(&name) {
            let h = Netns::named(&name)
                .map_err(Error::kernel(format!("open network namespace {name}")))?;
            self.netns.insert(name.clone(), h);
        }
        self.netns
            .get(&name)
            .ok_or_else(|| Error::EndpointNetnsMissing {
                endpoint: "plan step".into(),
                netns: name,
            })
    }

    fn rtnl(&mut self, ns: &Ns) -> Result<&Rtnl, Error> {
        if !self.rtnl.contains_key(ns) {
            let h = self.netns(ns)?;
            let r = Rtnl::open(h).map_err(Error::kernel(format!("open rtnetlink in {ns}")))?;
            self.rtnl.insert(ns.clone(), r);
        }
        self.rtnl
            .get(ns)
            .ok_or_else(|| Error::EndpointNetnsMissing {
                endpoint: "plan step".into(),
                netns: ns.to_string(),
            })
    }

    fn index(&mut self, ns: &Ns, name: &str, op: &str) -> Result<u32, Error> {
        let key = (ns.clone(), name.to_string());
        if let Some(i) = self.index.get(&key) {
            return Ok(*i);
        }
        let i = self.rtnl(ns)?.link_index(name).map_err(Error::kernel(op))?;
        self.index.insert(key, i);
        Ok(i)
    }

    fn forget(&mut self, ns: &Ns, name: &str) {
        self.index.remove(&(ns.clone(), name.to_string()));
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Steps executed (all of the plan's, on success).
    pub steps: usize,
    /// Delete steps whose object was already gone (counted as done).
    pub already_gone: usize,
}

/// Executes exactly `plan`, step by step, in `node` and the namespaces the steps name.
/// Before the first write it opens every namespace the plan names (except one the plan
/// creates), so a missing endpoint namespace fails before anything changes. Deleting what
/// is already gone counts as done.
///
/// # Errors
/// [`Error::EndpointNetnsMissing`] before any write; [`Error::Kernel`] naming the failed
/// step (as displayed) with the kernel errno in its source.
pub fn apply(node: &Netns, plan: &Plan) -> Result<ApplyReport, Error> {
    let mut h = Handles {
        node,
        rtnl: BTreeMap::new(),
        netns: BTreeMap::new(),
        index: HashMap::new(),
    };
    let created: BTreeSet<&str> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::CreateNetns { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    for s in &plan.steps {
        let names: Vec<&str> = match s {
            Step::CreateVeth { peer_netns, .. } => vec![peer_netns.as_str()],
            Step::SetLink { ns, .. } | Step::AddAddress { ns, .. } => match ns {
                Ns::Endpoint(n) => vec![n.as_str()],
                _ => vec![],
            },
            _ => vec![],
        };
        for n in names {
            if !created.contains(n) && !h.netns.contains_key(n) {
                let ns = open_named(n)?.ok_or_else(|| Error::EndpointNetnsMissing {
                    endpoint: format!("step `{s}`"),
                    netns: n.to_string(),
                })?;
                h.netns.insert(n.to_string(), ns);
            }
        }
    }
    let mut report = ApplyReport::default();
    for step in &plan.steps {
        let gone = run_step(&mut h, step).map_err(|e| match e {
            Error::Kernel { source, .. } => Error::Kernel {
                op: step.to_string(),
                source,
            },
            other => other,
        })?;
        report.steps += 1;
        if gone {
            report.already_gone += 1;
        }
    }
    Ok(report)
}

/// Absent-is-success for deletes: `Ok(true)` when the object was already gone.
fn gone_ok(r: Result<(), vipmesh_netns::Error>) -> Result<bool, Error> {
    match r {
        Ok(()) => Ok(false),
        Err(e) if e.is_not_found() => Ok(true),
        Err(e) => Err(Error::kernel("")(e)),
    }
}

fn k(r: Result<(), vipmesh_netns::Error>) -> Result<bool, Error> {
    r.map(|()| false).map_err(Error::kernel(""))
}

fn run_step(h: &mut Handles<'_>, step: &Step) -> Result<bool, Error> {
    match step {
        Step::CreateNetns { name } => {
            let ns = Netns::create_named(name).map_err(Error::kernel(""))?;
            let r = Rtnl::open(&ns).map_err(Error::kernel(""))?;
            let lo = r.link_index("lo").map_err(Error::kernel(""))?;
            r.set_up(lo).map_err(Error::kernel(""))?;
            h.rtnl.insert(Ns::Overlay(name.clone()), r);
            h.netns.insert(name.clone(), ns);
            Ok(false)
        }
        Step::DeleteNetns { name } => {
            h.rtnl
                .retain(|k, _| !matches!(k, Ns::Overlay(n) if n == name));
            h.netns.remove(name);
            match Netns::delete_named(name) {
                Ok(()) => Ok(false),
                Err(e) if e.errno() == Some(ENOENT) => Ok(true),
                Err(e) => Err(Error::kernel("")(e)),
            }
        }
        Step::CreateBridge { ns, name } => {
            let i = h.rtnl(ns)?.add_bridge(name).map_err(Error::kernel(""))?;
            h.index.insert((ns.clone(), name.clone()), i);
            Ok(false)
        }
        Step::CreateVxlan {
            name,
            vni,
            port,
            mtu,
        } => {
            let mut spec = VxlanSpec::docker(name.clone(), *vni);
            spec.port = *port;
            spec.mtu = Some(*mtu);
            let i = h
                .rtnl(&Ns::Node)?
                .add_vxlan(&spec)
                .map_err(Error::kernel(""))?;
            h.index.insert((Ns::Node, name.clone()), i);
            Ok(false)
        }
        Step::MoveVxlan { from, netns, to } => {
            let i = h.index(&Ns::Node, from, "")?;
            let target = h
                .netns(&Ns::Overlay(netns.clone()))?
                .try_clone()
                .map_err(Error::kernel(""))?;
            h.forget(&Ns::Node, from);
            k(h.rtnl(&Ns::Node)?.move_to_netns(i, &target, Some(to)))
        }
        Step::CreateVeth {
            ns,
            name,
            peer,
            peer_netns,
        } => {
            let target = h
                .netns(&Ns::Endpoint(peer_netns.clone()))?
                .try_clone()
                .map_err(Error::kernel(""))?;
            let i = h
                .rtnl(ns)?
                .add_veth(name, peer, &target)
                .map_err(Error::kernel(""))?;
            h.index.insert((ns.clone(), name.clone()), i);
            h.forget(&Ns::Endpoint(peer_netns.clone()), peer);
            Ok(false)
        }
        Step::SetLink { ns, name, settings } => set_link(h, ns, name, settings),
        Step::AddAddress {
            ns,
            dev,
            addr,
            prefix,
        } => {
            let i = h.index(ns, dev, "")?;
            k(h.rtnl(ns)?
                .add_address(i, *addr, *prefix, VIPMESH_ADDR_PROTO))
        }
        Step::DeleteAddress {
            ns,
            dev,
            addr,
            prefix,
        } => {
            let i = h.index(ns, dev, "")?;
            gone_ok(h.rtnl(ns)?.delete_address(i, *addr, *prefix))
        }
        Step::DeleteLink { ns, name } => {
            let r = h.rtnl(ns)?;
            let res = match r.link_index(name) {
                Ok(i) => r.delete_link(i),
                Err(e) => Err(e),
            };
            h.forget(ns, name);
            gone_ok(res)
        }
        Step::ReplaceFdb { ns, dev, mac, vtep } => {
            let i = h.index(ns, dev, "")?;
            k(h.rtnl(ns)?.replace_fdb(i, *mac, *vtep))
        }
        Step::DeleteFdb { ns, dev, mac, vtep } => {
            let i = h.index(ns, dev, "")?;
            gone_ok(h.rtnl(ns)?.delete_fdb(i, *mac, Some(*vtep)))
        }
        Step::ReplaceNeigh { ns, dev, ip, mac } => {
            let i = h.index(ns, dev, "")?;
            k(h.rtnl(ns)?.replace_neighbour(i, *ip, *mac))
        }
        Step::DeleteNeigh { ns, dev, ip } => {
            let i = h.index(ns, dev, "")?;
            gone_ok(h.rtnl(ns)?.delete_neighbour(i, *ip))
        }
    }
}

/// `ENOENT` (asm-generic/errno-base.h): `Netns::delete_named` of a name that is gone.
const ENOENT: i32 = 2;

fn set_link(h: &mut Handles<'_>, ns: &Ns, name: &str, s: &LinkSettings) -> Result<bool, Error> {
    let i = h.index(ns, name, "")?;
    let master = match &s.master {
        Some(m) => Some(h.index(ns, m, "")?),
        None => None,
    };
    let r = h.rtnl(ns)?;
    if let Some(mac) = s.mac {
        r.set_mac(i, mac).map_err(Error::kernel(""))?;
    }
    if let Some(mtu) = s.mtu {
        r.set_mtu(i, mtu).map_err(Error::kernel(""))?;
    }
    if let Some(m) = master {
        r.set_master(i, m).map_err(Error::kernel(""))?;
    }
    if s.up {
        r.set_up(i).map_err(Error::kernel(""))?;
    }
    Ok(false)
}

/// Observes, plans and applies; returns the plan that was executed (empty when nothing
/// had to change).
///
/// # Errors
/// As [`observe`] and [`apply`].
pub fn sync(node: &Netns, overlay: &Overlay) -> Result<Plan, Error> {
    let observed = observe(node, overlay)?;
    let plan = crate::plan::plan(overlay, &observed);
    apply(node, &plan)?;
    Ok(plan)
}

/// Removes what this overlay created (see [`crate::plan_teardown`]); returns the executed
/// plan.
///
/// # Errors
/// As [`apply`]. Endpoint namespaces that are gone are not an error here.
pub fn teardown(node: &Netns, overlay: &Overlay) -> Result<Plan, Error> {
    // Teardown needs no endpoint namespaces: observe without local endpoints.
    let mut spec = overlay.spec().clone();
    spec.local.clear();
    let bare = Overlay::new(&spec)?;
    let observed = observe(node, &bare)?;
    let plan = crate::plan::plan_teardown(overlay, &observed);
    apply(node, &plan)?;
    Ok(plan)
}
