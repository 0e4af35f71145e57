//! The controller: observe → plan → apply, with the drain clock.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use vipmesh_ipvs::{self as ipvs, IpvsBackend};

use crate::dataplane::{self, Host, KernelHost, KernelRules, Rules};
use crate::error::Error;
use crate::model::{DesiredState, Family, Network, Persistence, ServiceName};
use crate::plan::{self, DrainBook, Observed, ObservedDest, ObservedService, Plan, Step};
use crate::rules;

/// The outcome of one step.
#[derive(Debug)]
pub struct StepReport {
    /// The step.
    pub step: Step,
    /// Its result.
    pub result: Result<(), Error>,
}

/// What [`Mesh::apply`] did: the plan and a result per step.
#[derive(Debug, Default)]
pub struct Report {
    /// Per step, in execution order.
    pub steps: Vec<StepReport>,
}

impl Report {
    /// True when every step succeeded.
    pub fn ok(&self) -> bool {
        self.steps.iter().all(|s| s.result.is_ok())
    }

    /// The first error, if any.
    pub fn first_error(&self) -> Option<&Error> {
        self.steps.iter().find_map(|s| s.result.as_ref().err())
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.steps.is_empty() {
            return writeln!(f, "(nothing to do)");
        }
        for s in &self.steps {
            match &s.result {
                Ok(()) => writeln!(f, "ok      {}", s.step)?,
                Err(e) => {
                    let mut msg = e.to_string();
                    let mut src = std::error::Error::source(e);
                    while let Some(s) = src {
                        msg.push_str(": ");
                        msg.push_str(&s.to_string());
                        src = s.source();
                    }
                    writeln!(f, "FAILED  {}: {msg}", s.step)?
                }
            }
        }
        Ok(())
    }
}

/// One network's load balancer: IPVS, our netfilter chains and the LB namespace's addresses
/// and sysctls, kept equal to a [`DesiredState`].
///
/// # Examples
/// ```no_run
/// use vipmesh::{Mesh, model::*};
/// let net = Network {
///     name: "demo".into(),
///     subnet: "10.0.0.0/24".parse()?,
///     lb_netns: "lb-demo".into(),
///     lb_interface: "eth0".into(),
///     lb_addr: "10.0.0.2".parse().unwrap(),
/// };
/// let vote = Service::vip("vote", "10.0.0.9".parse().unwrap(),
///     &["10.0.0.10".parse().unwrap(), "10.0.0.11".parse().unwrap()])?;
/// let desired = DesiredState::new(net, vec![vote], Options::default())?;
/// let mut mesh = Mesh::kernel(desired.network())?;
/// let report = mesh.apply(&desired)?;
/// assert!(report.ok(), "{report}");
/// assert!(mesh.plan(&desired)?.0.is_empty()); // applying twice changes nothing
/// # Ok::<(), vipmesh::Error>(())
/// ```
#[derive(Debug)]
pub struct Mesh<I, R, H> {
    ipvs: I,
    rules: R,
    host: H,
    netns: String,
    drains: DrainBook,
    cache: Option<Cache>,
}

/// What the last successful full apply left in the kernel, for incremental updates.
#[derive(Debug)]
struct Cache {
    desired: DesiredState,
    observed: Observed,
    marks: BTreeMap<ServiceName, u32>,
}

/// The mesh on the real kernel.
pub type KernelMesh = Mesh<ipvs::Client, KernelRules, KernelHost>;

impl KernelMesh {
    /// Opens the network's LB namespace: an IPVS socket inside it, the netfilter applier and
    /// the host helpers.
    ///
    /// # Errors
    /// [`Error::MissingNamespace`], or [`Error::Ipvs`] (`ip_vs` missing, no CAP_NET_ADMIN).
    pub fn kernel(network: &Network) -> Result<KernelMesh, Error> {
        let ns = dataplane::open_netns(&network.lb_netns)?;
        let client = ipvs::Client::open_in(&ns).map_err(|source| Error::Ipvs {
            op: "open".into(),
            netns: network.lb_netns.clone(),
            source: Box::new(source),
        })?;
        Ok(Mesh::from_parts(
            client,
            KernelRules::new(&network.lb_netns),
            KernelHost::new(&network.lb_netns, &network.lb_interface)?,
            &network.lb_netns,
        ))
    }
}

fn ipvs_family(f: Family) -> ipvs::Family {
    match f {
        Family::V4 => ipvs::Family::Inet,
        Family::V6 => ipvs::Family::Inet6,
    }
}

fn netmask(f: Family, prefix: u8) -> ipvs::Netmask {
    match f {
        Family::V4 => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            ipvs::Netmask::V4(Ipv4Addr::from(m))
        }
        Family::V6 => ipvs::Netmask::V6(prefix.clamp(1, 128)),
    }
}

fn persistence_of(s: &ipvs::IpvsService) -> Option<Persistence> {
    if !s.flags.contains(ipvs::ServiceFlags::PERSISTENT) {
        return None;
    }
    let netmask_prefix = match s.netmask {
        ipvs::Netmask::V4(m) => u32::from(m).leading_ones() as u8,
        ipvs::Netmask::V6(p) => p,
    };
    Some(Persistence {
        timeout_secs: s.timeout,
        netmask_prefix,
    })
}

impl<I: IpvsBackend, R: Rules, H: Host> Mesh<I, R, H> {
    /// A mesh over given backends (real or fake). `netns` names the LB namespace in errors.
    pub fn from_parts(ipvs: I, rules: R, host: H, netns: &str) -> Self {
        Mesh {
            ipvs,
            rules,
            host,
            netns: netns.to_string(),
            drains: DrainBook::default(),
            cache: None,
        }
    }

    /// The IPVS backend (for inspection in tests and status output).
    pub fn ipvs(&mut self) -> &mut I {
        &mut self.ipvs
    }

    /// The rules backend.
    pub fn rules(&mut self) -> &mut R {
        &mut self.rules
    }

    /// The host backend.
    pub fn host(&mut self) -> &mut H {
        &mut self.host
    }

    /// Replaces the drain clock, e.g. with one saved by a previous process, so a drain
    /// timeout counts from when the drain started, across restarts.
    pub fn set_drains(&mut self, drains: DrainBook) {
        self.drains = drains;
    }

    /// The real servers that are draining.
    pub fn drains(&self) -> &DrainBook {
        &self.drains
    }

    fn ipvs_err(&self, op: &str, source: ipvs::Error) -> Error {
        Error::Ipvs {
            op: op.to_string(),
            netns: self.netns.clone(),
            source: Box::new(source),
        }
    }

    /// Reads what vipmesh owns in the kernel.
    ///
    /// # Errors
    /// [`Error::Ipvs`], [`Error::Netfilter`], [`Error::System`].
    pub fn observe(&mut self, desired: &DesiredState) -> Result<Observed, Error> {
        let fam = desired.family();
        let opts = desired.options();
        let range = opts.fwmark_first..=opts.fwmark_last;
        let mut obs = Observed::default();
        let services = self
            .ipvs
            .services()
            .map_err(|e| self.ipvs_err("dump services", e))?;
        for entry in services {
            let ipvs::ServiceKey::Fwmark { af, mark } = entry.service.key else {
                continue;
            };
            if af != ipvs_family(fam) || !range.contains(&mark.get()) {
                continue; // not ours: listed elsewhere, never touched
            }
            let dests = self
                .ipvs
                .dests(&entry.service.key)
                .map_err(|e| self.ipvs_err("dump dests", e))?;
            obs.ipvs.insert(
                mark.get(),
                ObservedService {
                    scheduler: entry.service.scheduler.as_str().to_string(),
                    persistence: persistence_of(&entry.service),
                    dests: dest_map(&dests),
                },
            );
        }
        let recorded = self.rules.recorded(fam)?;
        obs.marks = rules::recorded_marks(&recorded);
        obs.addresses = self.host.addresses()?;
        obs.kernel = self.host.kernel();
        let keys: Vec<String> = plan::sysctls_for(desired.options().layout, obs.kernel, fam)
            .into_keys()
            .collect();
        obs.sysctls = self.host.sysctls(&keys);
        let marks = plan::allocate_marks(desired, &obs)?;
        obs.rules_match = self.rules.matches(&rules::ruleset(desired, &marks)?)?;
        Ok(obs)
    }

    /// Observes and plans at the current time; returns the plan and what was observed.
    ///
    /// # Errors
    /// As [`Mesh::observe`], and [`Error::FwmarkExhausted`].
    pub fn plan(&mut self, desired: &DesiredState) -> Result<(Plan, Observed), Error> {
        self.plan_at(desired, plan::now_secs())
    }

    /// As [`Mesh::plan`], at a given time (seconds of the drain clock).
    ///
    /// # Errors
    /// As [`Mesh::plan`].
    pub fn plan_at(&mut self, desired: &DesiredState, now: u64) -> Result<(Plan, Observed), Error> {
        let obs = self.observe(desired)?;
        let marks = plan::allocate_marks(desired, &obs)?;
        self.drains.sync(desired, &marks, &obs, now);
        let p = plan::plan_with_marks(desired, &obs, marks, &self.drains, now);
        Ok((p, obs))
    }

    /// Observes, plans and applies: one netfilter batch, one IPVS batch.
    ///
    /// # Errors
    /// Observation errors; step failures are in the [`Report`].
    pub fn apply(&mut self, desired: &DesiredState) -> Result<Report, Error> {
        self.apply_at(desired, plan::now_secs())
    }

    /// As [`Mesh::apply`], at a given time.
    ///
    /// # Errors
    /// As [`Mesh::apply`].
    pub fn apply_at(&mut self, desired: &DesiredState, now: u64) -> Result<Report, Error> {
        self.cache = None;
        let (p, mut obs) = self.plan_at(desired, now)?;
        let report = self.execute(desired, &p, now)?;
        if report.ok() {
            for sr in &report.steps {
                obs.advance(&sr.step, desired, &p.marks);
            }
            self.cache = Some(Cache {
                desired: desired.clone(),
                observed: obs,
                marks: p.marks,
            });
        }
        Ok(report)
    }

    /// Applies a change confined to the named services' backends, weights, scheduler or
    /// persistence, in O(changes): it reads back only those services' real servers (for the
    /// drain decisions) and sends only their operations. Anything else — a new, removed or
    /// renamed service, a changed VIP or ports, a service gaining or losing all its backends,
    /// other options — or no earlier successful [`Mesh::apply`] in this process, falls back to
    /// a full apply. `desired` is the whole new state.
    ///
    /// # Errors
    /// As [`Mesh::apply`].
    pub fn apply_services(
        &mut self,
        desired: &DesiredState,
        names: &[&str],
        now: u64,
    ) -> Result<Report, Error> {
        let Some(mut cache) = self.cache.take() else {
            return self.apply_at(desired, now);
        };
        let confined = cache.desired.network() == desired.network()
            && cache.desired.options() == desired.options()
            && names
                .iter()
                .all(|n| match (cache.desired.service(n), desired.service(n)) {
                    (Some(o), Some(d)) => {
                        o.mode == d.mode
                            && o.ports == d.ports
                            && o.backends.is_empty() == d.backends.is_empty()
                    }
                    _ => false,
                });
        if !confined {
            return self.apply_at(desired, now);
        }
        let fam = desired.family();
        let timeout = desired.options().drain_timeout.as_secs();
        let mut p = Plan::default();
        let mut dest_steps = Vec::new();
        for name in names {
            let Some(s) = desired.service(name) else {
                continue;
            };
            let Some(&mark) = cache.marks.get(*name) else {
                continue;
            };
            let key = ipvs::ServiceKey::fwmark(ipvs_family(fam), mark)
                .map_err(|e| self.ipvs_err("build service", e))?;
            let fresh = match self.ipvs.dests(&key) {
                Ok(d) => d,
                Err(e) if e.is_not_found() => return self.apply_at(desired, now),
                Err(e) => return Err(self.ipvs_err("dump dests", e)),
            };
            if let Some(os) = cache.observed.ipvs.get_mut(&mark) {
                os.dests = dest_map(&fresh);
            }
            self.drains
                .sync_service(s, mark, cache.observed.ipvs.get(&mark), now);
            let (svc, dests) = plan::service_steps(
                s,
                mark,
                cache.observed.ipvs.get(&mark),
                &self.drains,
                now,
                timeout,
            );
            p.steps.extend(svc);
            dest_steps.extend(dests);
        }
        p.steps.extend(dest_steps);
        let report = self.execute(desired, &p, now)?;
        if report.ok() {
            for sr in &report.steps {
                cache.observed.advance(&sr.step, desired, &cache.marks);
            }
            for name in names {
                if let Some(s) = desired.service(name) {
                    cache.desired.replace_service(s.clone());
                }
            }
            self.cache = Some(cache);
        }
        Ok(report)
    }

    /// Executes a plan made for `desired`.
    ///
    /// # Errors
    /// Never at the moment; failures are per step in the report.
    pub fn execute(&mut self, desired: &DesiredState, p: &Plan, now: u64) -> Result<Report, Error> {
        let fam = desired.family();
        let mut report = Report::default();
        let mut ipvs_ops: Vec<(Step, ipvs::Op)> = Vec::new();
        let mut late = Vec::new();
        let key = |mark: u32| ipvs::ServiceKey::fwmark(ipvs_family(fam), mark);
        // Addresses go in one batch; only if it fails are they retried one by one, so each
        // step still gets its own result.
        let adds: Vec<IpAddr> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::AddAddress { addr, .. } => Some(*addr),
                _ => None,
            })
            .collect();
        let adds_ok = !adds.is_empty() && self.host.add_addresses(&adds).is_ok();
        for step in &p.steps {
            let res = match step {
                Step::Sysctl { key, value } => self.host.set_sysctl(key, value),
                Step::AddAddress { .. } if adds_ok => Ok(()),
                Step::AddAddress { addr, .. } => self.host.add_address(*addr),
                Step::Rules { .. } => {
                    rules::ruleset(desired, &p.marks).and_then(|rs| self.rules.apply(&rs))
                }
                Step::DelAddress { .. } => {
                    late.push(step.clone());
                    continue;
                }
                Step::AddService {
                    mark,
                    scheduler,
                    persistence,
                    ..
                }
                | Step::UpdateService {
                    mark,
                    scheduler,
                    persistence,
                    ..
                } => match service(fam, *mark, scheduler, *persistence) {
                    Ok(svc) => {
                        let op = if matches!(step, Step::AddService { .. }) {
                            ipvs::Op::AddService(svc)
                        } else {
                            ipvs::Op::UpdateService(svc)
                        };
                        ipvs_ops.push((step.clone(), op));
                        continue;
                    }
                    Err(e) => Err(self.ipvs_err("build service", e)),
                },
                Step::AddDest {
                    mark, addr, weight, ..
                }
                | Step::UpdateDest {
                    mark, addr, weight, ..
                } => match (key(*mark), dest(*addr, *weight)) {
                    (Ok(k), Ok(d)) => {
                        let op = if matches!(step, Step::AddDest { .. }) {
                            ipvs::Op::AddDest(k, d)
                        } else {
                            ipvs::Op::UpdateDest(k, d)
                        };
                        ipvs_ops.push((step.clone(), op));
                        continue;
                    }
                    (Err(e), _) | (_, Err(e)) => Err(self.ipvs_err("build dest", e)),
                },
                Step::DelDest { mark, addr, .. } => match key(*mark) {
                    Ok(k) => {
                        let dk = ipvs::DestKey {
                            addr: *addr,
                            port: 0,
                        };
                        ipvs_ops.push((step.clone(), ipvs::Op::DelDest(k, dk)));
                        continue;
                    }
                    Err(e) => Err(self.ipvs_err("build dest", e)),
                },
                Step::DelService { mark } => match key(*mark) {
                    Ok(k) => {
                        ipvs_ops.push((step.clone(), ipvs::Op::DelService(k)));
                        continue;
                    }
                    Err(e) => Err(self.ipvs_err("build service", e)),
                },
            };
            report.steps.push(StepReport {
                step: step.clone(),
                result: res,
            });
        }
        if !ipvs_ops.is_empty() {
            let ops: Vec<ipvs::Op> = ipvs_ops.iter().map(|(_, o)| o.clone()).collect();
            let results = self.ipvs.execute(&ops);
            for ((step, op), res) in ipvs_ops.into_iter().zip(results) {
                // Deleting what is already gone is success.
                let res = match res {
                    Err(e)
                        if e.is_not_found()
                            && matches!(op, ipvs::Op::DelDest(..) | ipvs::Op::DelService(_)) =>
                    {
                        Ok(())
                    }
                    other => other,
                };
                if let (Ok(()), Step::DelDest { mark, addr, .. }) = (&res, &step) {
                    self.drains.forget(*mark, *addr);
                }
                if let (
                    Ok(()),
                    Step::UpdateDest {
                        mark,
                        addr,
                        weight: 0,
                        service,
                    },
                ) = (&res, &step)
                {
                    let desired_here = desired
                        .service(service.as_str())
                        .is_some_and(|s| s.backends.iter().any(|b| b.addr == *addr));
                    if !desired_here {
                        self.drains.start(*mark, *addr, now);
                    }
                }
                report.steps.push(StepReport {
                    result: res.map_err(|e| self.ipvs_err(&op.to_string(), e)),
                    step,
                });
            }
        }
        let dels: Vec<IpAddr> = late
            .iter()
            .filter_map(|s| match s {
                Step::DelAddress { addr } => Some(*addr),
                _ => None,
            })
            .collect();
        let dels_ok = !dels.is_empty() && self.host.del_addresses(&dels).is_ok();
        for step in late {
            if let Step::DelAddress { addr } = step {
                let result = if dels_ok {
                    Ok(())
                } else {
                    self.host.del_address(addr)
                };
                report.steps.push(StepReport { result, step });
            }
        }
        Ok(report)
    }

    /// The fwmark of every VIP service as the kernel records it now.
    ///
    /// # Errors
    /// As [`Mesh::observe`].
    pub fn marks(&mut self, desired: &DesiredState) -> Result<BTreeMap<String, u32>, Error> {
        let obs = self.observe(desired)?;
        Ok(obs
            .marks
            .into_iter()
            .map(|(k, (m, _))| (k.to_string(), m))
            .collect())
    }
}

fn dest_map(dests: &[ipvs::DestEntry]) -> BTreeMap<IpAddr, ObservedDest> {
    dests
        .iter()
        .map(|d| {
            (
                d.dest.key.addr,
                ObservedDest {
                    weight: d.dest.weight.get(),
                    active: d.active_conns,
                    inactive: d.inactive_conns,
                },
            )
        })
        .collect()
}

fn service(
    fam: Family,
    mark: u32,
    scheduler: &str,
    persistence: Option<Persistence>,
) -> Result<ipvs::IpvsService, ipvs::Error> {
    let key = ipvs::ServiceKey::fwmark(ipvs_family(fam), mark)?;
    let svc = ipvs::IpvsService::new(key, ipvs::Scheduler::new(scheduler)?)?;
    match persistence {
        Some(p) => svc.persistent(p.timeout_secs, netmask(fam, p.netmask_prefix)),
        None => Ok(svc),
    }
}

fn dest(addr: IpAddr, weight: u32) -> Result<ipvs::IpvsDest, ipvs::Error> {
    ipvs::IpvsDest::new(addr, 0, ipvs::FwdMethod::Masq).with_weight(weight)
}
