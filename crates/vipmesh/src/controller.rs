//! The node controller: one desired state per node, every namespace it names, kept equal to
//! it by full and incremental syncs.
//!
//! A sync is: observe once (per namespace: one IPVS dump, one ruleset read per family —
//! none in [`ObserveMode::Cached`] — one address dump, the sysctls), plan (pure, [`plan`]),
//! apply exactly that plan (one netfilter batch per namespace and family). Incremental updates
//! ([`Controller::upsert_service`], [`Controller::set_backends`], [`Controller::set_desired`])
//! mark services dirty; the next [`Controller::sync`] then reads back only those services'
//! real servers and sends only their operations. A periodic full resync repairs drift; a
//! failed sync is retried with backoff and is always a full one.
//!
//! The controller is synchronous and `Send`. From tokio, own it in one task and call it
//! through `spawn_blocking` (or a dedicated thread), sleeping until
//! [`Controller::next_deadline`] or the next update:
//!
//! ```no_run
//! # async fn run(mut ctl: vipmesh::Controller<vipmesh::dataplane::RealKernel>) {
//! use std::sync::{Arc, Mutex};
//! let ctl = Arc::new(Mutex::new(ctl));
//! loop {
//!     let c = ctl.clone();
//!     let next = tokio::task::spawn_blocking(move || {
//!         let mut c = c.lock().unwrap();
//!         let _ = c.sync(vipmesh::plan::now_secs()); // errors are in c.status()
//!         c.next_deadline()
//!     }).await.unwrap();
//!     let wait = next.map_or(60, |t| t.saturating_sub(vipmesh::plan::now_secs()).max(1));
//!     tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
//! }
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use vipmesh_ipvs::{self as ipvs, IpvsBackend};

use crate::apply::{self, ObjectKey, Report};
use crate::dataplane::{Host, Kernel, NsHandle, RealKernel, Rules};
use crate::error::Error;
use crate::model::{Backend, Family, NetworkId, NodeOptions, NodeState, Service, ServiceName};
use crate::plan::{self, DrainBook, NodeObserved, NsObserved, Plan};

/// Where the netfilter part of an observation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ObserveMode {
    /// Read the ruleset (`iptables-save`) at every full sync (the default): tampering is
    /// repaired at the next sync.
    #[default]
    EverySync,
    /// kube-proxy's partial sync: plan against what this controller last applied (rules,
    /// IPVS services, addresses, sysctls), reading only the real servers of draining services
    /// (for their connection counts). Everything is read again the first time, after a failed
    /// step, after a namespace was re-created, on [`Controller::request_full_sync`], and every
    /// [`ControllerConfig::verify_interval`] — which is when drift made by others is repaired.
    Cached,
}

/// Controller tunables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Where rules are observed from.
    pub observe: ObserveMode,
    /// A full sync at least this often (repairs drift).
    pub resync_interval: Duration,
    /// In [`ObserveMode::Cached`], the ruleset is read again at least this often.
    pub verify_interval: Duration,
    /// First retry delay after a failed sync; doubles up to `retry_max`.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// While real servers drain, how often their connection counts are checked.
    pub drain_poll: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            observe: ObserveMode::EverySync,
            resync_interval: Duration::from_secs(60),
            verify_interval: Duration::from_secs(600),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            drain_poll: Duration::from_secs(2),
        }
    }
}

/// The status of one object (a service, a namespace's rules, an address…).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectStatus {
    /// The last error, rendered with its causes; None once a step on it succeeded again.
    pub last_error: Option<String>,
    /// When a step on it last succeeded (seconds of the sync clock).
    pub last_applied: Option<u64>,
    /// Failures since the last success.
    pub failures: u32,
}

/// What kind of sync ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// Everything observed and planned.
    Full,
    /// Only the dirty services' real servers.
    Incremental,
    /// Nothing was due.
    Idle,
}

type Handle<K> = NsHandle<<K as Kernel>::Ipvs, <K as Kernel>::Rules, <K as Kernel>::Host>;

/// The node controller. See the module docs.
///
/// # Examples
/// ```no_run
/// use vipmesh::{Controller, ControllerConfig, model::*};
/// let net = Network::new("demo", "10.0.0.0/24".parse()?, "lb-demo", "eth0",
///     "10.0.0.2".parse().unwrap())?;
/// let vote = Service::vip("vote", "10.0.0.9".parse().unwrap(),
///     &["10.0.0.10".parse().unwrap(), "10.0.0.11".parse().unwrap()])?;
/// let node = NodeState::single(NetworkState::new(net, vec![vote])?)?;
/// let mut ctl = Controller::real(ControllerConfig::default());
/// ctl.set_desired(node);
/// let report = ctl.sync_full(vipmesh::plan::now_secs())?; // Err if any step failed
/// println!("{report}");
/// assert!(ctl.plan_now()?.is_empty()); // applying twice changes nothing
/// # Ok::<(), vipmesh::Error>(())
/// ```
#[derive(Debug)]
pub struct Controller<K: Kernel> {
    kernel: K,
    cfg: ControllerConfig,
    handles: BTreeMap<String, Handle<K>>,
    desired: NodeState,
    applied: Option<NodeState>,
    cache: NodeObserved,
    rules_trusted: BTreeSet<String>,
    marks: BTreeMap<NetworkId, BTreeMap<ServiceName, u32>>,
    drains: DrainBook,
    dirty: BTreeSet<(NetworkId, ServiceName)>,
    full_due: bool,
    /// Remote overlay endpoints that came or went since the last sync (the incremental path
    /// of an ingress change confined to tasks on other nodes).
    peers_pending: Vec<crate::ingress::PeerChange>,
    /// Ingress tasks removed from the desired state whose real servers still drain: their
    /// overlay endpoints (veth, FDB entry, neighbour) stay until the drain ends, so the
    /// connections IPVS keeps sending them are not cut (removed at the next full sync after).
    lingering: BTreeMap<std::net::IpAddr, crate::ingress::IngressTask>,
    last_full: Option<u64>,
    last_verify: Option<u64>,
    last_sync: Option<u64>,
    retry: Option<(u32, u64)>,
    known_ns: BTreeSet<String>,
    status: BTreeMap<ObjectKey, ObjectStatus>,
    /// The XDP mesh (`ingress.xdp`) and what it was last applied for (what a teardown
    /// removes). It programs the real kernel, whatever `K` is.
    #[cfg(feature = "xdp")]
    xdp: Option<(crate::xdp_mesh::XdpMesh, crate::xdp_mesh::XdpDesired)>,
    /// Whether a mesh left by an earlier process for this node was looked for (once, at the
    /// first apply whose state has an ingress without `xdp`).
    #[cfg(feature = "xdp")]
    xdp_left_checked: bool,
}

fn empty_state() -> NodeState {
    // An empty node is always valid.
    NodeState::new(Vec::new(), NodeOptions::default()).unwrap_or_else(|_| unreachable_state())
}

#[allow(clippy::panic)]
fn unreachable_state() -> NodeState {
    panic!("an empty node state is valid")
}

impl Controller<RealKernel> {
    /// A controller on the real kernel.
    pub fn real(cfg: ControllerConfig) -> Controller<RealKernel> {
        Controller::new(RealKernel::default(), cfg)
    }
}

impl<K: Kernel> Controller<K> {
    /// A controller over a kernel (real or fake), holding an empty desired state.
    pub fn new(kernel: K, cfg: ControllerConfig) -> Controller<K> {
        Controller {
            kernel,
            cfg,
            handles: BTreeMap::new(),
            desired: empty_state(),
            applied: None,
            cache: NodeObserved::default(),
            rules_trusted: BTreeSet::new(),
            marks: BTreeMap::new(),
            drains: DrainBook::default(),
            dirty: BTreeSet::new(),
            full_due: true,
            peers_pending: Vec::new(),
            lingering: BTreeMap::new(),
            last_full: None,
            last_verify: None,
            last_sync: None,
            retry: None,
            known_ns: BTreeSet::new(),
            status: BTreeMap::new(),
            #[cfg(feature = "xdp")]
            xdp: None,
            #[cfg(feature = "xdp")]
            xdp_left_checked: false,
        }
    }

    /// The kernel (or fake world).
    pub fn kernel(&mut self) -> &mut K {
        &mut self.kernel
    }

    /// The desired state.
    pub fn desired(&self) -> &NodeState {
        &self.desired
    }

    /// The fwmarks in use, per network, as of the last sync.
    pub fn marks(&self) -> &BTreeMap<NetworkId, BTreeMap<ServiceName, u32>> {
        &self.marks
    }

    /// The drain clock.
    pub fn drains(&self) -> &DrainBook {
        &self.drains
    }

    /// Replaces the drain clock (e.g. one saved by a previous process), so drain timeouts
    /// count from when draining started, across restarts.
    pub fn set_drains(&mut self, drains: DrainBook) {
        self.drains = drains;
    }

    /// Per-object status: last error and last success.
    pub fn status(&self) -> &BTreeMap<ObjectKey, ObjectStatus> {
        &self.status
    }

    /// Replaces the whole desired state. Services that changed become dirty; a change to a
    /// network itself (its namespace, subnets, marks, layout), to the set of networks or to
    /// the options makes the next sync full.
    pub fn set_desired(&mut self, new: NodeState) {
        let old = std::mem::replace(&mut self.desired, new);
        // The XDP mesh is synced whole (its plan is a diff of maps and links).
        #[cfg(feature = "xdp")]
        if old.xdp() != self.desired.xdp() {
            self.full_due = true;
        }
        // An ingress change confined to tasks on other nodes is incremental (their services'
        // real servers, the overlay's remote endpoints); any other ingress change (the
        // cluster view, ports, services listed, local tasks) is a full sync.
        let ingress_delta = match (old.ipvs_ingress(), self.desired.ipvs_ingress()) {
            (None, None) => Some(crate::ingress::RemoteDelta::default()),
            (Some(a), Some(b)) => crate::ingress::remote_delta(a, b),
            _ => None,
        };
        let nets_same = old.options() == self.desired.options()
            && ingress_delta.is_some()
            && old.networks().count() == self.desired.networks().count()
            && old.networks().all(|o| {
                self.desired
                    .network(o.id().as_str())
                    .is_some_and(|n| n.network() == o.network())
            });
        if !nets_same {
            self.full_due = true;
            return;
        }
        if let (Some(d), Some(ing)) = (ingress_delta, self.desired.ipvs_ingress()) {
            let id = ing.id.clone();
            self.dirty
                .extend(d.services.into_iter().map(|s| (id.clone(), s)));
            // Endpoints that go stay until their drain ends (the next full sync sees them in
            // `lingering`); endpoints that come are written at once.
            self.peers_pending
                .extend(d.peers.into_iter().filter(|p| p.add));
        }
        for n in self.desired.networks() {
            let Some(o) = old.network(n.id().as_str()) else {
                continue;
            };
            for s in n.services_shared() {
                // A service the two states share is unchanged (no need to compare it).
                let same = o
                    .service_shared(s.name.as_str())
                    .is_some_and(|x| Arc::ptr_eq(x, s) || x == s);
                if !same {
                    self.dirty.insert((n.id().clone(), s.name.clone()));
                }
            }
            for s in o.services() {
                if n.service(s.name.as_str()).is_none() {
                    self.dirty.insert((n.id().clone(), s.name.clone()));
                }
            }
        }
    }

    /// Adds or replaces one service of a network (validated against the network).
    ///
    /// # Errors
    /// [`Error::UnknownObject`] for an unknown network; validation errors as
    /// [`crate::model::NetworkState::new`]; nothing changes then.
    pub fn upsert_service(&mut self, network: &str, s: Service) -> Result<(), Error> {
        let name = s.name.clone();
        self.desired.upsert_service(network, s)?;
        if let Some(net) = self.desired.network(network) {
            self.dirty.insert((net.id().clone(), name));
        }
        Ok(())
    }

    /// Removes one service of a network.
    ///
    /// # Errors
    /// [`Error::UnknownObject`] for an unknown network or service.
    pub fn remove_service(&mut self, network: &str, name: &str) -> Result<(), Error> {
        let net = self
            .desired
            .network_mut(network)
            .ok_or_else(|| Error::UnknownObject {
                kind: "network",
                name: network.to_string(),
            })?;
        let s = net
            .remove_service(name)
            .ok_or_else(|| Error::UnknownObject {
                kind: "service",
                name: format!("{network}/{name}"),
            })?;
        let id = net.id().clone();
        self.dirty.insert((id, s.name));
        Ok(())
    }

    /// Replaces the backends of one service.
    ///
    /// # Errors
    /// As [`Controller::upsert_service`].
    pub fn set_backends(
        &mut self,
        network: &str,
        name: &str,
        backends: Vec<Backend>,
    ) -> Result<(), Error> {
        let mut s = self
            .desired
            .network(network)
            .and_then(|n| n.service(name))
            .cloned()
            .ok_or_else(|| Error::UnknownObject {
                kind: "service",
                name: format!("{network}/{name}"),
            })?;
        s.backends = backends;
        self.upsert_service(network, s)
    }

    /// Makes the next sync a full one (also forgetting cached rules in cached mode).
    pub fn request_full_sync(&mut self) {
        self.full_due = true;
        self.rules_trusted.clear();
    }

    /// Whether the whole desired state is applied: a sync succeeded since it was last set,
    /// and nothing is dirty, due or waiting for a retry. A cluster agent publishes its local
    /// tasks as ready only then, so other nodes never send to a task before it is wired.
    ///
    /// # Examples
    /// ```no_run
    /// use vipmesh::{Controller, ControllerConfig};
    /// let mut ctl = Controller::real(ControllerConfig::default());
    /// assert!(!ctl.in_sync()); // nothing applied yet
    /// if ctl.sync(vipmesh::plan::now_secs()).is_ok() {
    ///     assert!(ctl.in_sync());
    /// }
    /// ```
    pub fn in_sync(&self) -> bool {
        self.applied.is_some()
            && !self.full_due
            && self.dirty.is_empty()
            && self.retry.is_none()
            && self.peers_pending.is_empty()
    }

    /// When the next sync is due (seconds of the sync clock): a retry, a periodic resync,
    /// a drain to check. `None` when nothing is scheduled (nothing applied yet: sync now).
    pub fn next_deadline(&self) -> Option<u64> {
        let mut t = Vec::new();
        if let Some((_, due)) = self.retry {
            t.push(due);
        }
        if let Some(l) = self.last_full {
            t.push(l.saturating_add(self.cfg.resync_interval.as_secs()));
        }
        if !self.drains.is_empty() {
            if let Some(d) = self
                .drains
                .next_deadline(self.desired.options().drain_timeout)
            {
                t.push(d);
            }
            if let Some(l) = self.last_sync {
                t.push(l.saturating_add(self.cfg.drain_poll.as_secs().max(1)));
            }
        }
        if (!self.dirty.is_empty() || self.full_due) && self.retry.is_none() {
            t.push(self.last_sync.unwrap_or(0));
        }
        t.into_iter().min()
    }

    fn namespaces_to_observe(&self) -> BTreeSet<String> {
        let mut s = self.desired.namespace_names();
        s.extend(self.known_ns.iter().cloned());
        s
    }

    fn handle(&mut self, ns: &str) -> Result<&mut Handle<K>, Error> {
        let now_id = self.kernel.identity(ns)?;
        let stale = self
            .handles
            .get(ns)
            .is_some_and(|h| h.identity.is_some() && h.identity != now_id);
        if stale {
            tracing::warn!(
                netns = ns,
                "namespace re-created under the same name; reprogramming it"
            );
            self.handles.remove(ns);
            self.cache.namespaces.remove(ns);
            self.rules_trusted.remove(ns);
            self.full_due = true;
        }
        if !self.handles.contains_key(ns) {
            let h = self.kernel.open(ns)?;
            self.handles.insert(ns.to_string(), h);
        }
        self.handles
            .get_mut(ns)
            .ok_or_else(|| Error::MissingNamespace {
                netns: ns.to_string(),
            })
    }

    /// Reads every namespace of the state (and those programmed before): once each. Returns
    /// what could be read and, separately, the namespaces that could not.
    pub fn observe(&mut self, now: u64) -> (NodeObserved, Vec<(String, Error)>) {
        let mut out = NodeObserved::default();
        let mut failed = Vec::new();
        let verify_due = self.cfg.observe == ObserveMode::EverySync
            || self
                .last_verify
                .is_none_or(|l| now >= l.saturating_add(self.cfg.verify_interval.as_secs()));
        if verify_due {
            self.rules_trusted.clear();
        }
        let draining: BTreeSet<u32> = self.drains.entries().iter().map(|e| e.mark).collect();
        for ns in self.namespaces_to_observe() {
            // Cached mode between verifications: the whole view of a namespace comes from
            // what this controller applied (kube-proxy's partial sync), but for the real
            // servers of draining services, read again for their connection counts. A
            // re-created namespace is never trusted (its handle check drops the cache).
            if self.rules_trusted.contains(&ns) {
                let same = self.handle(&ns).map(|h| h.identity);
                if let (Ok(id), Some(cached)) = (same, self.cache.namespaces.get(&ns))
                    && cached.identity == id
                {
                    let mut o = cached.clone();
                    match refresh_draining(self.handles.get_mut(&ns), &mut o, &draining) {
                        Ok(()) => {
                            out.namespaces.insert(ns, o);
                            continue;
                        }
                        Err(e) => {
                            failed.push((ns, e));
                            continue;
                        }
                    }
                }
            }
            let cached_rules = if self.rules_trusted.contains(&ns) {
                self.cache
                    .namespaces
                    .get(&ns)
                    .map(|o| (o.rules.clone(), o.nft.clone()))
            } else {
                None
            };
            let firewall = self.desired.options().firewall;
            let extra: Vec<String> = self
                .desired
                .ipvs_ingress()
                .filter(|i| i.host_netns == ns)
                .map(|i| i.host_sysctls().into_keys().collect())
                .unwrap_or_default();
            let res = self
                .handle(&ns)
                .and_then(|h| observe_ns(h, &ns, cached_rules, firewall, &extra));
            match res {
                Ok(o) => {
                    out.namespaces.insert(ns, o);
                }
                Err(e) => failed.push((ns, e)),
            }
        }
        if verify_due {
            self.last_verify = Some(now);
        }
        #[cfg(feature = "xdp")]
        if let Some(d) = self.desired.xdp().cloned() {
            let host = d.host_netns.clone();
            match self.observe_xdp(d) {
                Ok(o) => out.xdp = Some(o),
                Err(e) => failed.push((host, e)),
            }
        }
        (out, failed)
    }

    /// Observes the XDP mesh of `d`, opening it first (a restarted process reopens the
    /// pinned maps and links at its first apply).
    #[cfg(feature = "xdp")]
    fn observe_xdp(
        &mut self,
        d: crate::xdp_mesh::XdpDesired,
    ) -> Result<crate::xdp_mesh::XdpObserved, Error> {
        use crate::xdp_mesh::XdpMesh;
        let mesh = match self.xdp.take() {
            // Another host namespace or pin root is another mesh: the old one goes first.
            Some((m, old)) if old.host_netns == d.host_netns && old.pin_root == d.pin_root => m,
            Some((m, old)) => {
                m.teardown(&old)?;
                XdpMesh::new(&d)?
            }
            None => XdpMesh::new(&d)?,
        };
        let (mesh, d) = self.xdp.insert((mesh, d));
        mesh.observe(d)
    }

    /// Applies the XDP mesh's plan (or tears the mesh down when the desired state has none
    /// any more), reporting each step.
    #[cfg(feature = "xdp")]
    fn apply_xdp(&mut self, plan: &Plan, report: &mut Report) {
        let Some(d) = self.desired.xdp().cloned() else {
            if let Some((mesh, old)) = self.xdp.take() {
                let host = old.host_netns.clone();
                report.steps.push(apply::StepReport {
                    netns: host.clone(),
                    object: ObjectKey::Namespace(host),
                    step: "xdp mesh teardown".into(),
                    result: mesh.teardown(&old),
                });
            } else if !self.xdp_left_checked
                && let Some(ing) = self.desired.ingress()
            {
                // A process before this one may have applied a mesh this state no longer has.
                let host = ing.host_netns.clone();
                match crate::xdp_mesh::XdpMesh::teardown_left(&ing.node) {
                    Ok(found) => {
                        self.xdp_left_checked = true;
                        if found {
                            report.steps.push(apply::StepReport {
                                netns: host.clone(),
                                object: ObjectKey::Namespace(host),
                                step: "xdp mesh teardown (left by an earlier process)".into(),
                                result: Ok(()),
                            });
                        }
                    }
                    Err(e) => report.steps.push(apply::StepReport {
                        netns: host.clone(),
                        object: ObjectKey::Namespace(host),
                        step: "xdp mesh teardown (left by an earlier process)".into(),
                        result: Err(e),
                    }),
                }
            }
            return;
        };
        let (Some(xp), Some((mesh, applied))) = (plan.xdp.as_ref(), self.xdp.as_mut()) else {
            return;
        };
        if xp.is_empty() {
            return;
        }
        let host = d.host_netns.clone();
        let res = mesh.apply(&d, xp);
        *applied = d;
        match res {
            Ok(r) => {
                for (iface, why) in &r.fallbacks {
                    tracing::warn!(interface = %iface, reason = %why, "xdp: generic mode");
                }
                for step in r.applied {
                    report.steps.push(apply::StepReport {
                        netns: host.clone(),
                        object: ObjectKey::Namespace(host.clone()),
                        step: format!("xdp: {step}"),
                        result: Ok(()),
                    });
                }
            }
            Err(e) => report.steps.push(apply::StepReport {
                netns: host.clone(),
                object: ObjectKey::Namespace(host),
                step: format!("xdp mesh plan ({} steps)", xp.steps.len()),
                result: Err(e),
            }),
        }
    }

    /// The plan for the desired state against an observation (pure: `&self`).
    ///
    /// # Errors
    /// As [`plan::plan`].
    pub fn plan(&self, observed: &NodeObserved, now: u64) -> Result<Plan, Error> {
        plan::plan(&self.desired, observed, &self.drains, now)
    }

    /// Observes and plans now, changing nothing (a dry run).
    ///
    /// # Errors
    /// The first namespace that could not be observed, or as [`plan::plan`].
    pub fn plan_now(&mut self) -> Result<Plan, Error> {
        let now = plan::now_secs();
        let (obs, mut failed) = self.observe(now);
        if let Some((_, e)) = failed.drain(..).next() {
            return Err(e);
        }
        self.plan(&obs, now)
    }

    /// Applies a plan made from `observed`, exactly. Every namespace is applied (one failing
    /// does not stop the others); the controller's cache, marks and drain clock follow what
    /// succeeded.
    ///
    /// # Errors
    /// [`Error::StepsFailed`] when any step failed (the report is inside).
    pub fn apply(
        &mut self,
        plan: &Plan,
        observed: NodeObserved,
        now: u64,
    ) -> Result<Report, Error> {
        let mut report = Report::default();
        let mut cache = observed;
        // Task namespaces first (a new task's REDIRECT/ACCEPT is in place before the sandbox
        // sends it connections), namespaces torn down last (a removed task drains first).
        let tasks: BTreeSet<String> = self
            .desired
            .ipvs_ingress()
            .map(|i| {
                i.local_task_namespaces()
                    .into_iter()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let desired_ns = self.desired.namespace_names();
        let mut order: Vec<(&String, &plan::NsPlan)> = plan.namespaces.iter().collect();
        order.sort_by_key(|(ns, _)| {
            if tasks.contains(*ns) {
                0
            } else if desired_ns.contains(*ns) {
                1
            } else {
                2
            }
        });
        // Before the first write of the sync, every batch is checked: a module the kernel
        // cannot load is found now, not after the addresses, the IPVS services and the tables
        // committed before the one that needs it. Nothing is written then.
        for (ns, p) in &order {
            let Some(h) = self.handles.get_mut(*ns) else {
                continue;
            };
            for r in &p.rules {
                if let Err(e) = h.rules.check(r) {
                    report.steps.push(apply::StepReport {
                        netns: (*ns).clone(),
                        object: r.object(ns),
                        step: r.step(),
                        result: Err(e),
                    });
                }
            }
        }
        if !report.ok() {
            self.finish(&report, now);
            for (ns, o) in cache.namespaces {
                self.cache.namespaces.insert(ns, o);
            }
            return report.into_result();
        }
        for (ns, p) in order {
            let Some(obs) = cache.namespaces.get_mut(ns) else {
                continue;
            };
            // The namespace must still be the one observed: one deleted (or replaced) since
            // would take the writes into a namespace no name leads to.
            let now_id = self.kernel.identity(ns);
            let same = match (&now_id, self.handles.get(ns)) {
                (Ok(id), Some(h)) => h.identity.is_none() || h.identity == *id,
                _ => false,
            };
            match self.handles.get_mut(ns) {
                Some(h) if same => apply::apply_ns(h, ns, p, obs, &mut report),
                _ => {
                    self.handles.remove(ns);
                    self.rules_trusted.remove(ns);
                    self.full_due = true;
                    report.steps.push(apply::StepReport {
                        netns: ns.clone(),
                        object: ObjectKey::Namespace(ns.clone()),
                        step: format!("apply in namespace {ns}"),
                        result: Err(Error::MissingNamespace { netns: ns.clone() }),
                    });
                }
            }
        }
        #[cfg(feature = "xdp")]
        self.apply_xdp(plan, &mut report);
        self.drains = plan.drains.clone();
        for (id, m) in &plan.marks {
            self.marks.insert(id.clone(), m.clone());
        }
        self.finish(&report, now);
        for (ns, o) in cache.namespaces {
            if report.failures().any(|s| {
                s.netns == ns && matches!(s.object, ObjectKey::Rules(..) | ObjectKey::NftTable(..))
            }) {
                self.rules_trusted.remove(&ns);
            } else {
                self.rules_trusted.insert(ns.clone());
            }
            self.cache.namespaces.insert(ns, o);
        }
        report.into_result()
    }

    fn finish(&mut self, report: &Report, now: u64) {
        for s in &report.steps {
            let st = self.status.entry(s.object.clone()).or_default();
            match &s.result {
                Ok(()) => {
                    st.last_applied = Some(now);
                    st.last_error = None;
                    st.failures = 0;
                }
                Err(e) => {
                    st.last_error = Some(format!("{}: {}", s.step, apply::chain(Some(e))));
                    st.failures += 1;
                }
            }
        }
        self.last_sync = Some(now);
        if report.ok() {
            self.retry = None;
        } else {
            self.schedule_retry(now);
        }
    }

    fn schedule_retry(&mut self, now: u64) {
        let attempt = self.retry.map_or(0, |(a, _)| a.saturating_add(1));
        let base = self.cfg.retry_base.as_secs().max(1);
        let delay = base
            .saturating_mul(1u64 << attempt.min(20))
            .min(self.cfg.retry_max.as_secs().max(1));
        self.retry = Some((attempt, now.saturating_add(delay)));
        self.full_due = true;
    }

    /// A full sync now: observe every namespace, plan, apply.
    ///
    /// # Errors
    /// [`Error::StepsFailed`] when a namespace could not be observed or a step failed (the
    /// other namespaces are still converged; the report says which failed); a planning error.
    pub fn sync_full(&mut self, now: u64) -> Result<Report, Error> {
        let mut failures = Report::default();
        // Wiring syncs the whole overlay.
        self.peers_pending.clear();
        self.wire(&mut failures);
        let (obs, failed) = self.observe(now);
        let p = match self.plan(&obs, now) {
            Ok(p) => p,
            Err(e) => {
                self.schedule_retry(now);
                return Err(e);
            }
        };
        tracing::debug!(steps = p.len(), "full sync");
        for (ns, e) in failed {
            self.handles.remove(&ns);
            self.cache.namespaces.remove(&ns);
            self.rules_trusted.remove(&ns);
            failures.steps.push(apply::StepReport {
                netns: ns.clone(),
                object: ObjectKey::Namespace(ns.clone()),
                step: format!("observe namespace {ns}"),
                result: Err(e),
            });
        }
        let res = self.apply(&p, obs, now);
        let draining: BTreeSet<std::net::IpAddr> =
            self.drains.entries().iter().map(|e| e.addr).collect();
        self.lingering.retain(|a, t| {
            draining.contains(a) || t.addr_v6.is_some_and(|v6| draining.contains(&v6))
        });
        let ok_all = res.is_ok() && failures.ok();
        let mut report = match res {
            Ok(r) => r,
            Err(Error::StepsFailed { report, .. }) => *report,
            Err(e) => return Err(e),
        };
        if !failures.steps.is_empty() {
            self.finish(&failures, now);
            failures.steps.append(&mut report.steps);
            report = failures;
        }
        if ok_all {
            self.unwire_previous();
            self.full_due = false;
            self.dirty.clear();
            self.applied = Some(self.desired.clone());
            self.known_ns = self.desired.namespace_names();
            self.handles.retain(|k, _| self.known_ns.contains(k));
            self.cache
                .namespaces
                .retain(|k, _| self.known_ns.contains(k));
            self.prune_status();
        }
        self.last_full = Some(now);
        report.into_result()
    }

    /// Forgets the status of objects gone after a successful full sync: services no longer
    /// desired, and IPVS services, addresses and namespaces no longer in the kernel as it now
    /// is (the cache). Without this the status grew with every service a long-running node
    /// ever had.
    fn prune_status(&mut self) {
        let (cache, desired) = (&self.cache.namespaces, &self.desired);
        #[cfg(feature = "xdp")]
        let xdp_host = desired.xdp().map(|x| x.host_netns.as_str());
        #[cfg(not(feature = "xdp"))]
        let xdp_host: Option<&str> = None;
        self.status.retain(|k, _| match k {
            ObjectKey::Namespace(ns) | ObjectKey::Rules(ns, _) | ObjectKey::NftTable(ns, _) => {
                cache.contains_key(ns) || xdp_host == Some(ns.as_str())
            }
            ObjectKey::Address(ns, a) => cache.get(ns).is_some_and(|o| o.addresses.contains_key(a)),
            ObjectKey::Service(n, s) => desired
                .any_network(n.as_str())
                .is_some_and(|net| net.service(s.as_str()).is_some()),
            ObjectKey::Mark(ns, m) => cache
                .get(ns)
                .is_some_and(|o| o.ipvs.keys().any(|(_, mark)| mark == m)),
        });
    }

    /// Builds the ingress overlay and gateway bridge (before anything is observed: the
    /// sandbox namespace must exist).
    fn wire(&mut self, report: &mut Report) {
        let Some(ing) = self.desired.ipvs_ingress().cloned() else {
            self.lingering.clear();
            return;
        };
        // Tasks removed since the last full sync linger while they drain (see `lingering`).
        let wanted: BTreeSet<std::net::IpAddr> = ing
            .services
            .iter()
            .flat_map(|s| s.tasks.iter())
            .flat_map(|t| std::iter::once(t.addr).chain(t.addr_v6))
            .collect();
        if let Some(old) = self.applied.as_ref().and_then(|a| a.ipvs_ingress()) {
            for t in old.services.iter().flat_map(|s| s.tasks.iter()) {
                if !wanted.contains(&t.addr) {
                    self.lingering.insert(t.addr, t.clone());
                }
            }
        }
        let kernel = &mut self.kernel;
        self.lingering.retain(|a, t| {
            !wanted.contains(a)
                && t.addr_v6.is_none_or(|v6| !wanted.contains(&v6))
                && (t.node != ing.node
                    || t.netns
                        .as_deref()
                        .is_some_and(|ns| kernel.identity(ns).is_ok()))
        });
        let mut wiring = ing.clone();
        if !self.lingering.is_empty() {
            wiring.services.push(crate::ingress::IngressService {
                name: crate::model::ServiceName::new("vipmesh-draining")
                    .unwrap_or_else(|_| unreachable_name()),
                ports: Vec::new(),
                scheduler: crate::model::Scheduler::default(),
                tasks: self.lingering.values().cloned().collect(),
            });
        }
        let object = ObjectKey::Namespace(ing.sandbox_netns.clone());
        let mut push = |step: &str, r: Result<Vec<String>, Error>| {
            let (step, result) = match r {
                Ok(done) if done.is_empty() => return,
                Ok(done) => (format!("{step}: {}", done.join("; ")), Ok(())),
                Err(e) => (step.to_string(), Err(e)),
            };
            report.steps.push(apply::StepReport {
                netns: ing.host_netns.clone(),
                object: object.clone(),
                step,
                result,
            });
        };
        push("ingress wiring", self.kernel.wire_ingress(&wiring));
        let families = ing.families();
        let ports = ing
            .services
            .iter()
            .flat_map(|s| s.ports.iter())
            .flat_map(|p| families.iter().map(|f| (*f, p.protocol, p.published.get())))
            .collect();
        push(
            "published ports reserved",
            self.kernel.reserve_ports(&ing.host_netns, &ports),
        );
    }

    /// After a successful full sync: the links of an ingress that is gone (or moved) go too.
    fn unwire_previous(&mut self) {
        let Some(old) = self
            .applied
            .as_ref()
            .and_then(|a| a.ipvs_ingress())
            .cloned()
        else {
            return;
        };
        let same_place = self.desired.ipvs_ingress().is_some_and(|n| {
            n.host_netns == old.host_netns
                && n.sandbox_netns == old.sandbox_netns
                && n.overlay_netns == old.overlay_netns
                && n.gw_bridge == old.gw_bridge
        });
        if !same_place && let Err(e) = self.kernel.unwire_ingress(&old) {
            tracing::warn!(error = %e, "removing the old ingress wiring");
        }
    }

    /// Syncs what is due: a full sync when one is due (first sync, a network changed, the
    /// resync interval passed, after a failure), else the dirty and draining services only,
    /// else nothing.
    ///
    /// # Errors
    /// As [`Controller::sync_full`].
    pub fn sync(&mut self, now: u64) -> Result<(SyncKind, Report), Error> {
        let periodic = self
            .last_full
            .is_none_or(|l| now >= l.saturating_add(self.cfg.resync_interval.as_secs()));
        let retry_wait = self.retry.is_some_and(|(_, due)| now < due);
        if (self.full_due || periodic || self.applied.is_none()) && !retry_wait {
            return self.sync_full(now).map(|r| (SyncKind::Full, r));
        }
        if retry_wait {
            return Ok((SyncKind::Idle, Report::default()));
        }
        let mut set = std::mem::take(&mut self.dirty);
        for e in self.drains.entries() {
            for (id, m) in &self.marks {
                if let Some((name, _)) = m.iter().find(|(_, mark)| **mark == e.mark) {
                    set.insert((id.clone(), name.clone()));
                }
            }
        }
        if set.is_empty() && self.peers_pending.is_empty() {
            return Ok((SyncKind::Idle, Report::default()));
        }
        // New remote endpoints are reachable before IPVS sends to them.
        if !self.peers_pending.is_empty()
            && let Some(ing) = self.desired.ipvs_ingress()
        {
            let steps = crate::ingress::peer_steps(ing, &self.peers_pending);
            if let Err(e) = self.kernel.update_ingress_peers(ing, &steps) {
                tracing::warn!(error = %e, "remote overlay endpoints; a full sync follows");
                self.dirty.extend(set);
                self.full_due = true;
                return self.sync_full(now).map(|r| (SyncKind::Full, r));
            }
            self.peers_pending.clear();
        }
        match self.sync_services(&set, now) {
            Some(r) => r.map(|r| (SyncKind::Incremental, r)),
            None => {
                self.full_due = true;
                self.sync_full(now).map(|r| (SyncKind::Full, r))
            }
        }
    }

    /// The incremental path; None when the change is not confined to real servers, scheduler
    /// or persistence (the caller then runs a full sync).
    fn sync_services(
        &mut self,
        set: &BTreeSet<(NetworkId, ServiceName)>,
        now: u64,
    ) -> Option<Result<Report, Error>> {
        let applied = self.applied.as_ref()?;
        for (id, name) in set {
            let o = applied.any_network(id.as_str())?.service(name.as_str())?;
            let d = self
                .desired
                .any_network(id.as_str())?
                .service(name.as_str())?;
            let shape = |s: &Service| {
                (
                    s.mode,
                    s.ports.clone(),
                    [Family::V4, Family::V6].map(|f| s.backends_of(f).next().is_none()),
                )
            };
            if shape(o) != shape(d) {
                return None;
            }
            self.marks.get(id)?.get(name)?;
        }
        // Fresh real servers (and their connection counts) of the services concerned.
        let mut fresh: Vec<(String, Family, u32, Vec<ipvs::DestEntry>)> = Vec::new();
        for (id, name) in set {
            let net = self.desired.any_network(id.as_str())?;
            let s = net.service(name.as_str())?;
            let ns = net.network().lb_netns.clone();
            let mark = *self.marks.get(id)?.get(name)?;
            let h = self.handles.get_mut(&ns)?;
            for fam in s.lb_families(net.network()) {
                let key = apply::fwmark_key(fam, mark).ok()?;
                match h.ipvs.dests(&key) {
                    Ok(d) => fresh.push((ns.clone(), fam, mark, d)),
                    Err(_) => return None,
                }
            }
        }
        for (ns, fam, mark, d) in fresh {
            let svc = self
                .cache
                .namespaces
                .get_mut(&ns)?
                .ipvs
                .get_mut(&(fam, mark))?;
            svc.dests = apply::dest_map(&d);
        }
        let p = plan::plan_services(
            &self.desired,
            &self.cache,
            &self.marks,
            set,
            &self.drains,
            now,
        );
        let obs = std::mem::take(&mut self.cache);
        let res = self.apply(&p, obs, now);
        if res.is_ok()
            && let Some(applied) = self.applied.as_mut()
        {
            for (id, name) in set {
                let new = self
                    .desired
                    .any_network(id.as_str())
                    .and_then(|n| n.service_shared(name.as_str()));
                if let (Some(n), Some(s)) = (applied.network_mut(id.as_str()), new) {
                    n.set_service_unchecked(Arc::clone(s));
                }
            }
        } else {
            self.dirty.extend(set.iter().cloned());
        }
        Some(res)
    }
}

#[allow(clippy::panic)]
fn unreachable_name() -> crate::model::ServiceName {
    panic!("\"vipmesh-draining\" is a valid service name")
}

/// Reads again the real servers of the IPVS services whose marks drain.
fn refresh_draining<I: IpvsBackend, R: Rules, H: Host>(
    h: Option<&mut NsHandle<I, R, H>>,
    o: &mut NsObserved,
    draining: &BTreeSet<u32>,
) -> Result<(), Error> {
    let Some(h) = h else {
        return Ok(());
    };
    for ((fam, mark), svc) in o.ipvs.iter_mut() {
        if !draining.contains(mark) {
            continue;
        }
        let key = apply::fwmark_key(*fam, *mark).map_err(|source| Error::Ipvs {
            op: "build".into(),
            netns: String::new(),
            source: Box::new(source),
        })?;
        let d = h.ipvs.dests(&key).map_err(|source| Error::Ipvs {
            op: "dump dests".into(),
            netns: String::new(),
            source: Box::new(source),
        })?;
        svc.dests = apply::dest_map(&d);
    }
    Ok(())
}

type CachedRules = (
    BTreeMap<Family, vipmesh_netfilter::Observed>,
    BTreeMap<String, vipmesh_nft::Observed>,
);

/// Reads one namespace: one IPVS dump, one ruleset read per family and one listing of our nft
/// tables (unless `cached_rules`), one address dump, the sysctls and the kernel version. On
/// iptables, a node without a usable `nft` simply has no nft tables of ours.
fn observe_ns<I: IpvsBackend, R: Rules, H: Host>(
    h: &mut NsHandle<I, R, H>,
    netns: &str,
    cached_rules: Option<CachedRules>,
    firewall: crate::model::Firewall,
    extra_sysctls: &[String],
) -> Result<NsObserved, Error> {
    let ipvs_err = |op: &str, source| Error::Ipvs {
        op: op.to_string(),
        netns: netns.to_string(),
        source: Box::new(source),
    };
    let kernel = h.host.kernel()?;
    let mut o = NsObserved::empty(kernel);
    o.identity = h.identity;
    for entry in h
        .ipvs
        .services()
        .map_err(|e| ipvs_err("dump services", e))?
    {
        let ipvs::ServiceKey::Fwmark { af, mark } = entry.service.key else {
            continue;
        };
        let dests = h
            .ipvs
            .dests(&entry.service.key)
            .map_err(|e| ipvs_err("dump dests", e))?;
        o.ipvs.insert(
            (af.into(), mark.get()),
            plan::ObservedService {
                scheduler: entry.service.scheduler.as_str().to_string(),
                persistence: apply::persistence_of(&entry.service),
                dests: apply::dest_map(&dests),
            },
        );
    }
    (o.rules, o.nft) = match cached_rules {
        Some(r) => r,
        None => {
            let mut m = BTreeMap::new();
            for fam in [Family::V4, Family::V6] {
                m.insert(fam, h.rules.observe(fam)?);
            }
            let nft = match h.rules.observe_nft() {
                Ok(t) => t,
                Err(e)
                    if firewall == crate::model::Firewall::Iptables
                        && crate::nft_rules::is_unavailable(&e) =>
                {
                    tracing::debug!(netns, error = %e, "no usable nft: no nft tables of ours");
                    BTreeMap::new()
                }
                Err(e) => return Err(e),
            };
            (m, nft)
        }
    };
    o.ipvs_timeouts = h.ipvs.timeouts().ok().map(|t| (t.tcp, t.tcp_fin, t.udp));
    o.addresses = h.host.addresses()?;
    let keys: Vec<String> = [Family::V4, Family::V6]
        .into_iter()
        .flat_map(|f| plan::sysctls(kernel, f).into_keys())
        .chain(extra_sysctls.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    o.sysctls = h.host.sysctls(&keys)?;
    Ok(o)
}

#[cfg(test)]
mod send_check {
    fn assert_send<T: Send>() {}
    #[test]
    fn the_real_controller_is_send() {
        assert_send::<super::Controller<crate::dataplane::RealKernel>>();
        assert_send::<super::Controller<crate::fake::FakeKernel>>();
    }
}
