//! Pure planning: desired state + observed kernel state -> the steps that make them equal.
//!
//! The [`Plan`]'s `Display` is its stable text form (golden-tested). A plan is empty when the
//! kernel already matches, so applying twice changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::error::Error;
use crate::model::{DesiredState, Family, Layout, Persistence, Service, ServiceName};

/// One IPVS real server as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObservedDest {
    /// Its weight.
    pub weight: u32,
    /// Active connections.
    pub active: u32,
    /// Inactive connections.
    pub inactive: u32,
}

/// One IPVS fwmark service in our range, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedService {
    /// Scheduler name.
    pub scheduler: String,
    /// Persistence, if set.
    pub persistence: Option<Persistence>,
    /// Real servers by address.
    pub dests: BTreeMap<IpAddr, ObservedDest>,
}

/// What vipmesh owns in the kernel of one LB namespace, as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Our IPVS fwmark services (marks in our range, of the network's family), by mark.
    pub ipvs: BTreeMap<u32, ObservedService>,
    /// Marks and VIPs recorded in our mark rules (the comment names the service): this is
    /// how marks survive a restart.
    pub marks: BTreeMap<ServiceName, (u32, IpAddr)>,
    /// Whether our netfilter rules already equal the desired ones.
    pub rules_match: bool,
    /// VIP addresses present on the LB interface.
    pub addresses: BTreeSet<IpAddr>,
    /// Current values of the sysctls we manage (absent = not readable).
    pub sysctls: BTreeMap<String, String>,
    /// The kernel's (major, minor) version.
    pub kernel: (u32, u32),
}

/// When each draining real server started draining, in seconds of the caller's clock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainBook {
    started: BTreeMap<(u32, IpAddr), u64>,
}

impl DrainBook {
    /// Brings the book in line with what is observed and desired at time `now`: a real server
    /// at weight 0 that is not desired is draining (a restarted process adopts it from now);
    /// anything else is forgotten.
    pub fn sync(
        &mut self,
        desired: &DesiredState,
        marks: &BTreeMap<ServiceName, u32>,
        observed: &Observed,
        now: u64,
    ) {
        let mut keep = BTreeSet::new();
        for s in desired.services() {
            let Some(mark) = marks.get(&s.name) else {
                continue;
            };
            let Some(os) = observed.ipvs.get(mark) else {
                continue;
            };
            for addr in os.dests.keys() {
                if !s.backends.iter().any(|b| b.addr == *addr) {
                    keep.insert((*mark, *addr));
                    self.started.entry((*mark, *addr)).or_insert(now);
                }
            }
        }
        self.started.retain(|k, _| keep.contains(k));
    }

    /// [`DrainBook::sync`] for one service: its real servers that are not desired drain
    /// (from `now` if new to the book); its desired ones are forgotten.
    pub fn sync_service(
        &mut self,
        s: &Service,
        mark: u32,
        observed: Option<&ObservedService>,
        now: u64,
    ) {
        let Some(os) = observed else { return };
        for addr in os.dests.keys() {
            if s.backends.iter().any(|b| b.addr == *addr) {
                self.started.remove(&(mark, *addr));
            } else {
                self.started.entry((mark, *addr)).or_insert(now);
            }
        }
    }

    /// Records that `(mark, addr)` started draining at `now` (kept if already draining).
    pub fn start(&mut self, mark: u32, addr: IpAddr, now: u64) {
        self.started.entry((mark, addr)).or_insert(now);
    }

    /// Forgets `(mark, addr)` (deleted, or desired again).
    pub fn forget(&mut self, mark: u32, addr: IpAddr) {
        self.started.remove(&(mark, addr));
    }

    /// When `(mark, addr)` started draining.
    pub fn started(&self, mark: u32, addr: IpAddr) -> Option<u64> {
        self.started.get(&(mark, addr)).copied()
    }

    /// The book as `(fwmark, address, start)` entries, sorted (for saving between runs).
    pub fn entries(&self) -> Vec<(u32, IpAddr, u64)> {
        self.started
            .iter()
            .map(|((m, a), t)| (*m, *a, *t))
            .collect()
    }

    /// Rebuilds a book from [`DrainBook::entries`].
    pub fn from_entries(entries: impl IntoIterator<Item = (u32, IpAddr, u64)>) -> DrainBook {
        DrainBook {
            started: entries.into_iter().map(|(m, a, t)| ((m, a), t)).collect(),
        }
    }

    /// Number of draining real servers.
    pub fn len(&self) -> usize {
        self.started.len()
    }

    /// True when nothing drains.
    pub fn is_empty(&self) -> bool {
        self.started.is_empty()
    }
}

/// Why a real server is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeleteReason {
    /// Its service is gone.
    ServiceRemoved,
    /// It drained: no active or inactive connections left.
    Drained,
    /// The drain timeout expired.
    DrainTimeout,
    /// A UDP service: deleted at once.
    Udp,
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeleteReason::ServiceRemoved => "service removed",
            DeleteReason::Drained => "drained",
            DeleteReason::DrainTimeout => "drain timeout",
            DeleteReason::Udp => "udp: no drain",
        })
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Write a sysctl in the LB namespace.
    Sysctl {
        /// The key, dotted (`net.ipv4.vs.conntrack`).
        key: String,
        /// The value.
        value: String,
    },
    /// Add a VIP address to the LB interface.
    AddAddress {
        /// The VIP.
        addr: IpAddr,
        /// Its service.
        service: ServiceName,
    },
    /// Apply our netfilter rules (one `iptables-restore` batch).
    Rules {
        /// How many services have mark rules.
        services: usize,
    },
    /// Create an IPVS fwmark service.
    AddService {
        /// The service.
        service: ServiceName,
        /// Its fwmark.
        mark: u32,
        /// Scheduler.
        scheduler: String,
        /// Persistence.
        persistence: Option<Persistence>,
    },
    /// Change scheduler or persistence in place (no connection is dropped).
    UpdateService {
        /// The service.
        service: ServiceName,
        /// Its fwmark.
        mark: u32,
        /// Scheduler.
        scheduler: String,
        /// Persistence.
        persistence: Option<Persistence>,
    },
    /// Add a real server.
    AddDest {
        /// The service.
        service: ServiceName,
        /// Its fwmark.
        mark: u32,
        /// The task address.
        addr: IpAddr,
        /// Weight.
        weight: u32,
    },
    /// Change a real server's weight (0 = start draining).
    UpdateDest {
        /// The service.
        service: ServiceName,
        /// Its fwmark.
        mark: u32,
        /// The task address.
        addr: IpAddr,
        /// New weight.
        weight: u32,
    },
    /// Delete a real server.
    DelDest {
        /// The service (or `-` when the service is gone).
        service: String,
        /// Its fwmark.
        mark: u32,
        /// The task address.
        addr: IpAddr,
        /// Why.
        reason: DeleteReason,
    },
    /// Delete an IPVS fwmark service of ours that no service uses.
    DelService {
        /// Its fwmark.
        mark: u32,
    },
    /// Remove a VIP address that no service uses.
    DelAddress {
        /// The address.
        addr: IpAddr,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let persist = |p: &Option<Persistence>| match p {
            Some(p) => format!(" persistent {} mask /{}", p.timeout_secs, p.netmask_prefix),
            None => String::new(),
        };
        match self {
            Step::Sysctl { key, value } => write!(f, "sysctl {key}={value}"),
            Step::AddAddress { addr, service } => write!(f, "address add {addr} ({service})"),
            Step::Rules { services } => {
                write!(
                    f,
                    "netfilter apply VIPMESH- chains ({services} VIP services)"
                )
            }
            Step::AddService {
                service,
                mark,
                scheduler,
                persistence,
            } => write!(
                f,
                "ipvs add-service FWM {mark} {scheduler}{} ({service})",
                persist(persistence)
            ),
            Step::UpdateService {
                service,
                mark,
                scheduler,
                persistence,
            } => write!(
                f,
                "ipvs set-service FWM {mark} {scheduler}{} ({service})",
                persist(persistence)
            ),
            Step::AddDest {
                service,
                mark,
                addr,
                weight,
            } => write!(
                f,
                "ipvs add-dest FWM {mark} -> {} Masq weight {weight} ({service})",
                hostport(*addr)
            ),
            Step::UpdateDest {
                service,
                mark,
                addr,
                weight,
            } => write!(
                f,
                "ipvs set-dest FWM {mark} -> {} weight {weight}{} ({service})",
                hostport(*addr),
                if *weight == 0 { " drain" } else { "" }
            ),
            Step::DelDest {
                service,
                mark,
                addr,
                reason,
            } => write!(
                f,
                "ipvs del-dest FWM {mark} -> {} ({service}: {reason})",
                hostport(*addr)
            ),
            Step::DelService { mark } => write!(f, "ipvs del-service FWM {mark}"),
            Step::DelAddress { addr } => write!(f, "address del {addr}"),
        }
    }
}

fn hostport(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:0"),
        IpAddr::V6(a) => format!("[{a}]:0"),
    }
}

/// The steps, in execution order: sysctls, addresses, rules, services, dests, then
/// removals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The steps.
    pub steps: Vec<Step>,
    /// The fwmark of every VIP service (kept and newly allocated).
    pub marks: BTreeMap<ServiceName, u32>,
}

impl Plan {
    /// True when the kernel already matches.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            return writeln!(f, "(no changes)");
        }
        for s in &self.steps {
            writeln!(f, "{s}")?;
        }
        Ok(())
    }
}

/// Assigns a fwmark to every VIP service: the mark recorded in the kernel when there is one
/// (so a restarted process picks the same marks), else the lowest free mark in the range.
///
/// # Errors
/// [`Error::FwmarkExhausted`] when the range has too few free marks.
pub fn allocate_marks(
    desired: &DesiredState,
    observed: &Observed,
) -> Result<BTreeMap<ServiceName, u32>, Error> {
    let opts = desired.options();
    let range = opts.fwmark_first..=opts.fwmark_last;
    let mut marks = BTreeMap::new();
    let mut used = BTreeSet::new();
    let vip_services: Vec<&Service> = desired
        .services()
        .filter(|s| s.vip_addr().is_some())
        .collect();
    for s in &vip_services {
        if let Some((m, _)) = observed.marks.get(&s.name)
            && range.contains(m)
            && used.insert(*m)
        {
            marks.insert(s.name.clone(), *m);
        }
    }
    // Marks held by IPVS services of ours that no desired service claims stay reserved until
    // they are deleted, so a mark is never reused while stale state still carries it.
    let mut reserved: BTreeSet<u32> = used;
    for (name, (m, _)) in &observed.marks {
        if desired.service(name.as_str()).is_none() {
            reserved.insert(*m);
        }
    }
    reserved.extend(observed.ipvs.keys().copied());
    let exhausted = || Error::FwmarkExhausted {
        first: opts.fwmark_first,
        last: opts.fwmark_last,
        needed: vip_services.len(),
    };
    let mut free = (opts.fwmark_first..=opts.fwmark_last).filter(|m| !reserved.contains(m));
    for s in &vip_services {
        if marks.contains_key(&s.name) {
            continue;
        }
        let m = free.next().ok_or_else(exhausted)?;
        marks.insert(s.name.clone(), m);
    }
    Ok(marks)
}

/// The sysctls of a layout: [`sysctls`] in an LB namespace; in a client namespace (no SNAT,
/// no forwarding) only the IPVS expiry ones.
pub fn sysctls_for(layout: Layout, kernel: (u32, u32), family: Family) -> BTreeMap<String, String> {
    let mut m = sysctls(kernel, family);
    if layout == Layout::PerClient {
        m.retain(|k, _| k.contains(".vs.expire_") || k.ends_with("conn_reuse_mode"));
    }
    m
}

/// The sysctls vipmesh sets in an LB namespace, chosen by kernel version (see the README).
pub fn sysctls(kernel: (u32, u32), family: Family) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        m.insert(k.to_string(), v.to_string());
    };
    set("net.ipv4.vs.conntrack", "1");
    set("net.ipv4.vs.expire_nodest_conn", "1");
    set("net.ipv4.vs.expire_quiescent_template", "1");
    if kernel < (5, 9) {
        // Before 5.9, conn_reuse_mode=1 with conntrack stalls reused ports for 1 s
        // (k8s #70747); 5.9 fixed it, so newer kernels keep the default.
        set("net.ipv4.vs.conn_reuse_mode", "0");
    }
    match family {
        Family::V4 => set("net.ipv4.ip_forward", "1"),
        Family::V6 => set("net.ipv6.conf.all.forwarding", "1"),
    }
    m
}

/// Computes the plan. `now` is in seconds of the same clock as the [`DrainBook`].
///
/// # Errors
/// [`Error::FwmarkExhausted`].
pub fn plan(
    desired: &DesiredState,
    observed: &Observed,
    drains: &DrainBook,
    now: u64,
) -> Result<Plan, Error> {
    let marks = allocate_marks(desired, observed)?;
    Ok(plan_with_marks(desired, observed, marks, drains, now))
}

/// [`plan`] with the marks [`allocate_marks`] already chose for `desired` and `observed`.
pub fn plan_with_marks(
    desired: &DesiredState,
    observed: &Observed,
    marks: BTreeMap<ServiceName, u32>,
    drains: &DrainBook,
    now: u64,
) -> Plan {
    let mut steps = Vec::new();
    let drain_timeout = desired.options().drain_timeout.as_secs();

    let layout = desired.options().layout;
    for (k, v) in sysctls_for(layout, observed.kernel, desired.family()) {
        if observed.sysctls.get(&k) != Some(&v) {
            steps.push(Step::Sysctl { key: k, value: v });
        }
    }
    let mut wanted_addrs = BTreeSet::new();
    for s in desired.services() {
        if let (Layout::LbNamespace, Some(vip)) = (layout, s.vip_addr()) {
            wanted_addrs.insert(vip);
            if !observed.addresses.contains(&vip) {
                steps.push(Step::AddAddress {
                    addr: vip,
                    service: s.name.clone(),
                });
            }
        }
    }
    // Recorded marks must match the allocation too, or the rules are rewritten.
    let recorded_ok = desired
        .services()
        .filter(|s| s.vip_addr().is_some())
        .all(|s| {
            observed.marks.get(&s.name).map(|(m, a)| (*m, Some(*a)))
                == marks.get(&s.name).map(|m| (*m, s.vip_addr()))
        });
    if !observed.rules_match || !recorded_ok {
        steps.push(Step::Rules {
            services: marks.len(),
        });
    }

    let mut dest_steps = Vec::new();
    for s in desired.services() {
        let Some(&mark) = marks.get(&s.name) else {
            continue;
        };
        let (svc, dests) = service_steps(
            s,
            mark,
            observed.ipvs.get(&mark),
            drains,
            now,
            drain_timeout,
        );
        steps.extend(svc);
        dest_steps.extend(dests);
    }
    steps.extend(dest_steps);

    let live: BTreeSet<u32> = marks.values().copied().collect();
    for mark in observed.ipvs.keys() {
        if !live.contains(mark) {
            steps.push(Step::DelService { mark: *mark });
        }
    }
    for (name, (_, addr)) in &observed.marks {
        if desired
            .service(name.as_str())
            .and_then(Service::vip_addr)
            .is_none()
            && !wanted_addrs.contains(addr)
            && observed.addresses.contains(addr)
        {
            steps.push(Step::DelAddress { addr: *addr });
        }
    }
    steps.dedup();
    Plan { steps, marks }
}

/// The IPVS steps of one VIP service: (service-level steps, real-server steps).
pub fn service_steps(
    s: &Service,
    mark: u32,
    observed: Option<&ObservedService>,
    drains: &DrainBook,
    now: u64,
    drain_timeout: u64,
) -> (Vec<Step>, Vec<Step>) {
    let mut svc_steps = Vec::new();
    let mut dest_steps = Vec::new();
    let scheduler = s.scheduler.as_str().to_string();
    let empty = ObservedService {
        scheduler: scheduler.clone(),
        persistence: s.persistence,
        dests: BTreeMap::new(),
    };
    let os = match observed {
        Some(os) => os,
        None => {
            svc_steps.push(Step::AddService {
                service: s.name.clone(),
                mark,
                scheduler: scheduler.clone(),
                persistence: s.persistence,
            });
            &empty
        }
    };
    if os.scheduler != scheduler || os.persistence != s.persistence {
        svc_steps.push(Step::UpdateService {
            service: s.name.clone(),
            mark,
            scheduler,
            persistence: s.persistence,
        });
    }
    for b in &s.backends {
        let weight = b.weight.get();
        match os.dests.get(&b.addr) {
            None => dest_steps.push(Step::AddDest {
                service: s.name.clone(),
                mark,
                addr: b.addr,
                weight,
            }),
            Some(d) if d.weight != weight => dest_steps.push(Step::UpdateDest {
                service: s.name.clone(),
                mark,
                addr: b.addr,
                weight,
            }),
            Some(_) => {}
        }
    }
    for (addr, d) in &os.dests {
        if s.backends.iter().any(|b| b.addr == *addr) {
            continue;
        }
        let del = |reason| Step::DelDest {
            service: s.name.to_string(),
            mark,
            addr: *addr,
            reason,
        };
        if s.udp_only() {
            dest_steps.push(del(DeleteReason::Udp));
        } else if d.weight != 0 {
            dest_steps.push(Step::UpdateDest {
                service: s.name.clone(),
                mark,
                addr: *addr,
                weight: 0,
            });
        } else if d.active + d.inactive == 0 {
            dest_steps.push(del(DeleteReason::Drained));
        } else if drains
            .started(mark, *addr)
            .is_some_and(|t| now.saturating_sub(t) >= drain_timeout)
        {
            dest_steps.push(del(DeleteReason::DrainTimeout));
        }
    }
    (svc_steps, dest_steps)
}

impl Observed {
    /// Updates this view with the effect of a step that succeeded, so a controller can keep
    /// an accurate picture without dumping the kernel again. `marks` is the plan's
    /// allocation, `desired` the state it was made for.
    pub fn advance(
        &mut self,
        step: &Step,
        desired: &DesiredState,
        marks: &BTreeMap<ServiceName, u32>,
    ) {
        match step {
            Step::Sysctl { key, value } => {
                self.sysctls.insert(key.clone(), value.clone());
            }
            Step::AddAddress { addr, .. } => {
                self.addresses.insert(*addr);
            }
            Step::DelAddress { addr } => {
                self.addresses.remove(addr);
            }
            Step::Rules { .. } => {
                self.rules_match = true;
                self.marks = desired
                    .services()
                    .filter_map(|s| Some((s.name.clone(), (*marks.get(&s.name)?, s.vip_addr()?))))
                    .collect();
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
            } => {
                let e = self.ipvs.entry(*mark).or_insert_with(|| ObservedService {
                    scheduler: String::new(),
                    persistence: None,
                    dests: BTreeMap::new(),
                });
                e.scheduler.clone_from(scheduler);
                e.persistence = *persistence;
            }
            Step::AddDest {
                mark, addr, weight, ..
            }
            | Step::UpdateDest {
                mark, addr, weight, ..
            } => {
                if let Some(svc) = self.ipvs.get_mut(mark) {
                    svc.dests
                        .entry(*addr)
                        .or_insert(ObservedDest {
                            weight: 0,
                            active: 0,
                            inactive: 0,
                        })
                        .weight = *weight;
                }
            }
            Step::DelDest { mark, addr, .. } => {
                if let Some(svc) = self.ipvs.get_mut(mark) {
                    svc.dests.remove(addr);
                }
            }
            Step::DelService { mark } => {
                self.ipvs.remove(mark);
            }
        }
    }
}

/// Seconds since the Unix epoch, the clock [`plan`] and [`DrainBook`] use in production.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}
