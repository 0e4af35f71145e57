//! Executes a namespace's plan exactly as planned, each step interpreted once, and reports a
//! result per step. Also advances an observation by the steps that succeeded, so a controller
//! keeps an accurate view without reading the kernel again.

use std::fmt;
use std::net::IpAddr;

use vipmesh_ipvs::{self as ipvs, IpvsBackend};

use crate::dataplane::{Host, NsHandle, Rules};
use crate::error::Error;
use crate::model::{Family, NetworkId, ServiceName};
use crate::plan::{
    AddrChange, IpvsChange, IpvsPersistence, IpvsStep, NsObserved, NsPlan, ObservedAddr,
    ObservedDest, ObservedService, RulesPlan, SysctlSet,
};
use crate::rules;

/// What a step is about, for per-object status.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKey {
    /// A namespace as a whole (sysctls, opening it).
    Namespace(String),
    /// One family's netfilter batch of a namespace.
    Rules(String, Family),
    /// One nft table of a namespace.
    NftTable(String, String),
    /// An address of a namespace.
    Address(String, IpAddr),
    /// A service of a network.
    Service(NetworkId, ServiceName),
    /// An IPVS service no desired service uses (being removed).
    Mark(String, u32),
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectKey::Namespace(ns) => write!(f, "namespace {ns}"),
            ObjectKey::Rules(ns, fam) => write!(f, "{fam} rules in {ns}"),
            ObjectKey::NftTable(ns, t) => write!(f, "nft table {t} in {ns}"),
            ObjectKey::Address(ns, a) => write!(f, "address {a} in {ns}"),
            ObjectKey::Service(n, s) => write!(f, "service {n}/{s}"),
            ObjectKey::Mark(ns, m) => write!(f, "FWM {m} in {ns}"),
        }
    }
}

/// The outcome of one step.
#[derive(Debug)]
pub struct StepReport {
    /// The namespace.
    pub netns: String,
    /// What the step is about.
    pub object: ObjectKey,
    /// The step, as the plan prints it.
    pub step: String,
    /// Its result.
    pub result: Result<(), Error>,
}

/// What an apply did: a result per step, in execution order. An apply whose steps did not
/// all succeed returns [`Error::StepsFailed`] with this report inside, so a failure cannot go
/// unnoticed.
#[derive(Debug, Default)]
#[must_use = "a report says which steps failed"]
pub struct Report {
    /// Per step, in execution order.
    pub steps: Vec<StepReport>,
}

impl Report {
    /// True when every step succeeded.
    pub fn ok(&self) -> bool {
        self.steps.iter().all(|s| s.result.is_ok())
    }

    /// The failed steps.
    pub fn failures(&self) -> impl Iterator<Item = &StepReport> {
        self.steps.iter().filter(|s| s.result.is_err())
    }

    /// The first error, if any.
    pub fn first_error(&self) -> Option<&Error> {
        self.steps.iter().find_map(|s| s.result.as_ref().err())
    }

    /// `Ok(self)` when every step succeeded, else [`Error::StepsFailed`] carrying the report.
    ///
    /// # Errors
    /// [`Error::StepsFailed`].
    pub fn into_result(self) -> Result<Report, Error> {
        let failed = self.failures().count();
        if failed == 0 {
            return Ok(self);
        }
        let first = self
            .failures()
            .next()
            .map(|s| format!("{}: {}", s.step, chain(s.result.as_ref().err())))
            .unwrap_or_default();
        Err(Error::StepsFailed {
            failed,
            total: self.steps.len(),
            first,
            report: Box::new(self),
        })
    }

    fn push(&mut self, netns: &str, object: ObjectKey, step: String, result: Result<(), Error>) {
        self.steps.push(StepReport {
            netns: netns.to_string(),
            object,
            step,
            result,
        });
    }
}

/// With the `failpoints` feature (tests only): when `VIPMESH_KILL_AT_STEP=N` is set, the
/// process kills itself with `SIGKILL` just before its N-th kernel write (counting from 1), as
/// a `kill -9` at that instant would. The crash harness uses it to stop an apply at chosen
/// points. Without the feature this is nothing.
#[inline]
pub fn failpoint() {
    #[cfg(feature = "failpoints")]
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let n = WRITES.fetch_add(1, Ordering::SeqCst) + 1;
        if std::env::var("VIPMESH_KILL_AT_STEP")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            == Some(n)
        {
            // SAFETY: kill(2) on our own pid with a constant signal; no memory is involved.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

/// An error with its chain of causes, on one line.
pub fn chain(e: Option<&Error>) -> String {
    let Some(e) = e else {
        return String::new();
    };
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            return writeln!(f, "(nothing to do)");
        }
        for s in &self.steps {
            match &s.result {
                Ok(()) => writeln!(f, "ok      [{}] {}", s.netns, s.step)?,
                Err(e) => writeln!(f, "FAILED  [{}] {}: {}", s.netns, s.step, chain(Some(e)))?,
            }
        }
        Ok(())
    }
}

fn step_object(netns: &str, s: &IpvsStep) -> ObjectKey {
    match (&s.network, &s.service) {
        (Some(n), Some(svc)) if !matches!(s.change, IpvsChange::DelService) => {
            ObjectKey::Service(n.clone(), svc.clone())
        }
        _ => ObjectKey::Mark(netns.to_string(), s.mark),
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
            ipvs::Netmask::V4(std::net::Ipv4Addr::from(m))
        }
        Family::V6 => ipvs::Netmask::V6(prefix),
    }
}

/// The persistence the kernel holds for a service.
pub fn persistence_of(s: &ipvs::IpvsService) -> Option<IpvsPersistence> {
    if !s.flags.contains(ipvs::ServiceFlags::PERSISTENT) {
        return None;
    }
    let prefix = match s.netmask {
        ipvs::Netmask::V4(m) => u32::from(m).leading_ones() as u8,
        ipvs::Netmask::V6(p) => p,
    };
    Some(IpvsPersistence {
        timeout: s.timeout,
        prefix,
    })
}

/// The kernel operation of a step.
///
/// # Errors
/// The IPVS model's error for a value it rejects (the state model validates the same limits
/// first, so this is a bug guard).
pub fn ipvs_op(s: &IpvsStep) -> Result<ipvs::Op, ipvs::Error> {
    let key = ipvs::ServiceKey::fwmark(s.family.into(), s.mark)?;
    let service = |scheduler: &crate::model::Scheduler, p: &Option<IpvsPersistence>| {
        let svc = ipvs::IpvsService::new(key, ipvs::Scheduler::new(scheduler.as_str())?)?;
        match p {
            Some(p) => svc.persistent(p.timeout, netmask(s.family, p.prefix)),
            None => Ok(svc),
        }
    };
    let dest =
        |addr: IpAddr, w: u32| ipvs::IpvsDest::new(addr, 0, ipvs::FwdMethod::Masq).with_weight(w);
    Ok(match &s.change {
        IpvsChange::AddService {
            scheduler,
            persistence,
        } => ipvs::Op::AddService(service(scheduler, persistence)?),
        IpvsChange::UpdateService {
            scheduler,
            persistence,
        } => ipvs::Op::UpdateService(service(scheduler, persistence)?),
        IpvsChange::AddDest { addr, weight } => ipvs::Op::AddDest(key, dest(*addr, weight.get())?),
        IpvsChange::UpdateDest { addr, weight } => {
            ipvs::Op::UpdateDest(key, dest(*addr, weight.get())?)
        }
        IpvsChange::DelDest { addr, .. } => ipvs::Op::DelDest(
            key,
            ipvs::DestKey {
                addr: *addr,
                port: 0,
            },
        ),
        IpvsChange::DelService => ipvs::Op::DelService(key),
    })
}

fn run_ipvs<I: IpvsBackend>(
    ipvs_b: &mut I,
    netns: &str,
    steps: &[IpvsStep],
    report: &mut Report,
) -> Vec<bool> {
    let mut ops = Vec::new();
    let mut idx = Vec::new();
    let mut results: Vec<Option<Result<(), Error>>> = Vec::new();
    for s in steps {
        match ipvs_op(s) {
            Ok(op) => {
                idx.push(results.len());
                ops.push(op);
                results.push(None);
            }
            Err(source) => results.push(Some(Err(Error::Ipvs {
                op: "build".into(),
                netns: netns.to_string(),
                source: Box::new(source),
            }))),
        }
    }
    let outcomes = if ops.is_empty() {
        Vec::new()
    } else if cfg!(feature = "failpoints") {
        // One operation at a time, so a crash can be injected between any two.
        ops.iter()
            .flat_map(|op| {
                failpoint();
                ipvs_b.execute(std::slice::from_ref(op))
            })
            .collect()
    } else {
        ipvs_b.execute(&ops)
    };
    for ((i, op), res) in idx.into_iter().zip(ops.iter()).zip(outcomes) {
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
        results[i] = Some(res.map_err(|source| Error::Ipvs {
            op: op.to_string(),
            netns: netns.to_string(),
            source: Box::new(source),
        }));
    }
    let mut ok = Vec::new();
    for (s, r) in steps.iter().zip(results) {
        let r = r.unwrap_or(Ok(()));
        ok.push(r.is_ok());
        report.push(netns, step_object(netns, s), s.to_string(), r);
    }
    ok
}

/// Executes one namespace's plan on its handle: sysctls, addresses, IPVS additions, the
/// netfilter batches, IPVS removals. Every step gets a result; a failed step does not stop
/// the next ones, except that the IPVS removals wait for the netfilter batch of their
/// family (a service is never removed while a rule still marks traffic into it). Updates
/// `obs` with every step that succeeded.
pub fn apply_ns<I: IpvsBackend, R: Rules, H: Host>(
    h: &mut NsHandle<I, R, H>,
    netns: &str,
    p: &NsPlan,
    obs: &mut NsObserved,
    report: &mut Report,
) {
    for s in &p.sysctls {
        failpoint();
        let r = h.host.set_sysctl(&s.key, &s.value);
        if r.is_ok() {
            advance_sysctl(obs, s);
        }
        report.push(
            netns,
            ObjectKey::Namespace(netns.to_string()),
            s.to_string(),
            r,
        );
    }
    if let Some((tcp, tcp_fin, udp)) = p.timeouts {
        failpoint();
        let t = ipvs::Timeouts { tcp, tcp_fin, udp };
        let r = h
            .ipvs
            .execute(&[ipvs::Op::SetTimeouts(t)])
            .pop()
            .unwrap_or(Ok(()))
            .map_err(|source| Error::Ipvs {
                op: "set timeouts".into(),
                netns: netns.to_string(),
                source: Box::new(source),
            });
        if r.is_ok() {
            obs.ipvs_timeouts = Some((tcp, tcp_fin, udp));
        }
        report.push(
            netns,
            ObjectKey::Namespace(netns.to_string()),
            format!("ipvs set-timeouts tcp {tcp} tcpfin {tcp_fin} udp {udp}"),
            r,
        );
    }
    for a in &p.addresses {
        failpoint();
        let (r, addr) = match a {
            AddrChange::Add {
                interface, addr, ..
            } => (h.host.add_address(interface, *addr), *addr),
            AddrChange::Del {
                interface,
                addr,
                prefix,
            } => (h.host.del_address(interface, *addr, *prefix), *addr),
        };
        if r.is_ok() {
            advance_addr(obs, a);
        }
        report.push(
            netns,
            ObjectKey::Address(netns.to_string(), addr),
            a.to_string(),
            r,
        );
    }
    let ok = run_ipvs(&mut h.ipvs, netns, &p.ipvs, report);
    for (s, ok) in p.ipvs.iter().zip(ok) {
        if ok {
            advance_ipvs(obs, s);
        }
    }
    let mut failed_rules = Vec::new();
    let mut failed_nft = None;
    for r in &p.rules {
        failpoint();
        let res = h.rules.execute(r);
        let object = r.object(netns);
        if res.is_ok() {
            advance_rules(obs, r);
        } else {
            match r {
                RulesPlan::Iptables { family, .. } => failed_rules.push(*family),
                RulesPlan::Nft { table, .. } => failed_nft = Some(table.clone()),
            }
        }
        report.push(netns, object, r.step(), res);
    }
    let (removals, held): (Vec<IpvsStep>, Vec<IpvsStep>) = p
        .ipvs_removals
        .iter()
        .cloned()
        .partition(|s| !failed_rules.contains(&s.family) && failed_nft.is_none());
    for s in &held {
        let reason = match &failed_nft {
            Some(t) => format!("the nft transaction of {t} failed"),
            None => format!("the {} netfilter batch failed", s.family),
        };
        report.push(
            netns,
            step_object(netns, s),
            s.to_string(),
            Err(Error::Held {
                netns: netns.to_string(),
                reason,
            }),
        );
    }
    let ok = run_ipvs(&mut h.ipvs, netns, &removals, report);
    for (s, ok) in removals.iter().zip(ok) {
        if ok {
            advance_ipvs(obs, s);
        }
    }
}

fn advance_sysctl(obs: &mut NsObserved, s: &SysctlSet) {
    obs.sysctls.insert(s.key.clone(), s.value.clone());
}

fn advance_addr(obs: &mut NsObserved, a: &AddrChange) {
    match a {
        AddrChange::Add {
            interface, addr, ..
        } => {
            obs.addresses.insert(
                *addr,
                ObservedAddr {
                    interface: interface.clone(),
                    prefix: crate::plan::host_prefix(*addr),
                    owned: true,
                },
            );
        }
        AddrChange::Del { addr, .. } => {
            obs.addresses.remove(addr);
        }
    }
}

/// Updates `obs` with the effect of a firewall batch that succeeded (the kernel then holds its
/// `desired`).
pub fn advance_rules(obs: &mut NsObserved, r: &RulesPlan) {
    match r {
        RulesPlan::Iptables {
            family, desired, ..
        } => {
            obs.rules
                .insert(*family, vipmesh_netfilter::Observed::from_ruleset(desired));
            debug_assert_eq!(rules::nf_family(*family), desired.family());
        }
        RulesPlan::Nft { table, desired, .. } => match desired {
            Some(t) => {
                obs.nft.insert(
                    table.clone(),
                    vipmesh_nft::Observed {
                        table: (**t).clone(),
                        owner: vipmesh_nft::Ownership::Ours,
                        unparsed: Vec::new(),
                    },
                );
            }
            None => {
                obs.nft.remove(table);
            }
        },
    }
}

/// Updates `obs` with the effect of an IPVS step that succeeded.
pub fn advance_ipvs(obs: &mut NsObserved, s: &IpvsStep) {
    let key = (s.family, s.mark);
    match &s.change {
        IpvsChange::AddService {
            scheduler,
            persistence,
        }
        | IpvsChange::UpdateService {
            scheduler,
            persistence,
        } => {
            let e = obs.ipvs.entry(key).or_insert_with(|| ObservedService {
                scheduler: String::new(),
                persistence: None,
                dests: Default::default(),
            });
            e.scheduler = scheduler.as_str().to_string();
            e.persistence = *persistence;
        }
        IpvsChange::AddDest { addr, weight } | IpvsChange::UpdateDest { addr, weight } => {
            if let Some(svc) = obs.ipvs.get_mut(&key) {
                svc.dests
                    .entry(*addr)
                    .or_insert(ObservedDest {
                        weight: 0,
                        active: 0,
                        inactive: 0,
                    })
                    .weight = weight.get();
            }
        }
        IpvsChange::DelDest { addr, .. } => {
            if let Some(svc) = obs.ipvs.get_mut(&key) {
                svc.dests.remove(addr);
            }
        }
        IpvsChange::DelService => {
            obs.ipvs.remove(&key);
        }
    }
}

/// The real servers of a dump as the planner sees them.
pub fn dest_map(dests: &[ipvs::DestEntry]) -> std::collections::BTreeMap<IpAddr, ObservedDest> {
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

/// The IPVS service key of a family and mark.
///
/// # Errors
/// For mark 0 (never planned).
pub fn fwmark_key(family: Family, mark: u32) -> Result<ipvs::ServiceKey, ipvs::Error> {
    ipvs::ServiceKey::fwmark(family.into(), mark)
}
