//! Pure planning: a node's desired state + what was observed in its namespaces → the steps
//! that make them equal, grouped by namespace.
//!
//! [`plan`] is a pure function: the drain clock is an input ([`DrainBook`] and `now`) and an
//! output ([`Plan::drains`]). The [`Plan`]'s `Display` is its stable text form (golden-tested):
//! per namespace, the sysctls, address changes, IPVS operations and the exact
//! `iptables-restore` batch (the rule diff). A plan is empty when the kernel already matches,
//! so applying twice changes nothing.
//!
//! Execution order inside a namespace (see [`NsPlan`]): sysctls, addresses, IPVS additions
//! and updates, the netfilter batch, then IPVS removals. New IPVS services exist before the
//! rule that marks traffic into them, removed ones go only after their rule, and an address
//! is added or removed before the rule that records it changes, so a kill at any instant
//! leaves a state from which the next sync finds everything it owns.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vipmesh_netfilter as nf;
use vipmesh_nft as nft;

use crate::error::Error;
use crate::model::{
    Family, Firewall, Layout, NetworkId, NetworkState, NodeState, Persistence, Scheduler, Service,
    ServiceName, Weight,
};
use crate::rules::{self, Recorded};

/// A kernel release, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KernelVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

impl KernelVersion {
    /// Parses `6.1.0-56-amd64` into 6.1.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `kernel.osrelease` when there is no `major.minor`.
    pub fn parse(s: &str) -> Result<KernelVersion, Error> {
        let mut it = s.trim().splitn(3, |c: char| !c.is_ascii_digit());
        match (
            it.next().and_then(|v| v.parse().ok()),
            it.next().and_then(|v| v.parse().ok()),
        ) {
            (Some(major), Some(minor)) => Ok(KernelVersion { major, minor }),
            _ => Err(Error::invalid(
                "kernel.osrelease",
                s.trim(),
                "expected MAJOR.MINOR...",
            )),
        }
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

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

/// IPVS persistence as the kernel holds it: timeout and client prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpvsPersistence {
    /// Seconds.
    pub timeout: u32,
    /// Client netmask prefix.
    pub prefix: u8,
}

impl IpvsPersistence {
    /// The kernel form of a service's persistence for one family.
    pub fn of(p: &Persistence, family: Family) -> IpvsPersistence {
        IpvsPersistence {
            timeout: p.timeout_secs,
            prefix: p.prefix(family),
        }
    }
}

/// One IPVS fwmark service, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedService {
    /// Scheduler name.
    pub scheduler: String,
    /// Persistence, if set.
    pub persistence: Option<IpvsPersistence>,
    /// Real servers by address.
    pub dests: BTreeMap<IpAddr, ObservedDest>,
}

/// An address in a namespace, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedAddr {
    /// The interface it is on.
    pub interface: String,
    /// Its prefix length.
    pub prefix: u8,
    /// True when it carries our address protocol (`IFA_PROTO`): ours, found after any crash.
    pub owned: bool,
}

/// The identity of a namespace file (device and inode of its nsfs inode): a namespace deleted
/// and re-created under the same name has a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NsIdentity {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

/// What vipmesh may own in one namespace, as observed: read once per sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsObserved {
    /// Which namespace was read.
    pub identity: Option<NsIdentity>,
    /// Every IPVS fwmark service, by (family, mark). Ownership is decided by the planner
    /// (marks in a network's range, or recorded by our rules); the rest is never touched.
    pub ipvs: BTreeMap<(Family, u32), ObservedService>,
    /// Our chains and tagged jumps, per family.
    pub rules: BTreeMap<Family, nf::Observed>,
    /// The `inet` tables named like ours (`vipmesh-<id>`), by table name, with their ownership
    /// as read (a foreign table with our name is listed, and never touched).
    pub nft: BTreeMap<String, nft::Observed>,
    /// Every address of the namespace, by address.
    pub addresses: BTreeMap<IpAddr, ObservedAddr>,
    /// Current values of the sysctls we manage (absent = the key does not exist).
    pub sysctls: BTreeMap<String, String>,
    /// The running kernel.
    pub kernel: KernelVersion,
    /// IPVS connection timeouts (tcp, tcp_fin, udp), when read.
    pub ipvs_timeouts: Option<(u32, u32, u32)>,
}

impl NsObserved {
    /// An empty namespace on a given kernel.
    pub fn empty(kernel: KernelVersion) -> NsObserved {
        NsObserved {
            identity: None,
            ipvs: BTreeMap::new(),
            rules: [Family::V4, Family::V6]
                .into_iter()
                .map(|f| (f, nf::Observed::empty(rules::nf_family(f))))
                .collect(),
            nft: BTreeMap::new(),
            addresses: BTreeMap::new(),
            sysctls: BTreeMap::new(),
            kernel,
            ipvs_timeouts: None,
        }
    }

    /// Every mark recorded by our mark rules (both families) and by the VIP maps of our nft
    /// tables.
    pub fn recorded(&self) -> Vec<Recorded> {
        let mut all: Vec<Recorded> = self.rules.values().flat_map(rules::recorded).collect();
        all.extend(self.nft.values().flat_map(crate::nft_rules::recorded));
        all.sort();
        all.dedup();
        all
    }
}

/// What was observed on the node: one entry per namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeObserved {
    /// By namespace (as named in the state).
    pub namespaces: BTreeMap<String, NsObserved>,
    /// The XDP mesh (`ingress.xdp`), when the node has one and it could be observed.
    #[cfg(feature = "xdp")]
    pub xdp: Option<crate::xdp_mesh::XdpObserved>,
}

/// When each draining real server started draining, in seconds of the caller's clock. Saved
/// between runs by the CLI (JSON, versioned).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainBook {
    version: DrainBookVersion,
    started: Vec<DrainEntry>,
}

/// The version of the drain book's file format; other versions are refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
struct DrainBookVersion;

impl TryFrom<u32> for DrainBookVersion {
    type Error = String;
    fn try_from(v: u32) -> Result<Self, String> {
        if v == 1 {
            Ok(DrainBookVersion)
        } else {
            Err(format!(
                "drain book version {v} is not supported (this is version 1)"
            ))
        }
    }
}

impl From<DrainBookVersion> for u32 {
    fn from(_: DrainBookVersion) -> u32 {
        1
    }
}

/// One draining real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainEntry {
    /// The IPVS service's fwmark.
    pub mark: u32,
    /// The real server.
    pub addr: IpAddr,
    /// When it started draining.
    pub since: u64,
}

impl DrainBook {
    fn find(&self, mark: u32, addr: IpAddr) -> Option<usize> {
        self.started
            .binary_search_by(|e| (e.mark, e.addr).cmp(&(mark, addr)))
            .ok()
    }

    /// Records that `(mark, addr)` started draining at `now` (kept if already draining).
    pub fn start(&mut self, mark: u32, addr: IpAddr, now: u64) {
        if let Err(i) = self
            .started
            .binary_search_by(|e| (e.mark, e.addr).cmp(&(mark, addr)))
        {
            self.started.insert(
                i,
                DrainEntry {
                    mark,
                    addr,
                    since: now,
                },
            );
        }
    }

    /// Forgets `(mark, addr)` (deleted, or desired again).
    pub fn forget(&mut self, mark: u32, addr: IpAddr) {
        if let Some(i) = self.find(mark, addr) {
            self.started.remove(i);
        }
    }

    /// When `(mark, addr)` started draining.
    pub fn started(&self, mark: u32, addr: IpAddr) -> Option<u64> {
        self.find(mark, addr).map(|i| self.started[i].since)
    }

    /// The entries, sorted.
    pub fn entries(&self) -> &[DrainEntry] {
        &self.started
    }

    /// Number of draining real servers.
    pub fn len(&self) -> usize {
        self.started.len()
    }

    /// True when nothing drains.
    pub fn is_empty(&self) -> bool {
        self.started.is_empty()
    }

    /// The earliest time a drain times out with `timeout`, if anything drains.
    pub fn next_deadline(&self, timeout: Duration) -> Option<u64> {
        self.started
            .iter()
            .map(|e| e.since.saturating_add(timeout.as_secs()))
            .min()
    }

    /// Parses a saved book.
    ///
    /// # Errors
    /// [`Error::DrainBook`] naming `path` for anything that is not a valid book of this
    /// version (never an empty book instead).
    pub fn from_json(path: &str, text: &str) -> Result<DrainBook, Error> {
        let mut b: DrainBook = serde_json::from_str(text).map_err(|e| Error::DrainBook {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        b.started.sort();
        b.started
            .dedup_by(|a, b| (a.mark, a.addr) == (b.mark, b.addr));
        Ok(b)
    }

    /// The saved form.
    pub fn to_json(&self) -> String {
        // A struct of plain values always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    fn retain(&mut self, keep: &BTreeSet<(u32, IpAddr)>) {
        self.started.retain(|e| keep.contains(&(e.mark, e.addr)));
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

/// A sysctl to write.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SysctlSet {
    /// The key, dotted (`net.ipv4.vs.conntrack`).
    pub key: String,
    /// The value.
    pub value: String,
}

impl fmt::Display for SysctlSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sysctl {}={}", self.key, self.value)
    }
}

/// An address to add to or remove from an interface (always a host prefix, /32 or /128).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddrChange {
    /// Add a VIP address.
    Add {
        /// The interface.
        interface: String,
        /// The VIP.
        addr: IpAddr,
        /// Its network and service.
        owner: (NetworkId, ServiceName),
    },
    /// Remove an address of ours that no service uses.
    Del {
        /// The interface it is on.
        interface: String,
        /// The address.
        addr: IpAddr,
        /// Its prefix length as observed.
        prefix: u8,
    },
}

/// The host prefix of an address.
pub fn host_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl fmt::Display for AddrChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrChange::Add {
                interface,
                addr,
                owner,
            } => write!(
                f,
                "address add {addr}/{} dev {interface} ({}/{})",
                host_prefix(*addr),
                owner.0,
                owner.1
            ),
            AddrChange::Del {
                interface,
                addr,
                prefix,
            } => write!(f, "address del {addr}/{prefix} dev {interface}"),
        }
    }
}

/// What an IPVS step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpvsChange {
    /// Create the fwmark service.
    AddService {
        /// Scheduler.
        scheduler: Scheduler,
        /// Persistence.
        persistence: Option<IpvsPersistence>,
    },
    /// Change scheduler or persistence in place (no connection is dropped).
    UpdateService {
        /// Scheduler.
        scheduler: Scheduler,
        /// Persistence.
        persistence: Option<IpvsPersistence>,
    },
    /// Add a real server (Masq, port 0).
    AddDest {
        /// The task address.
        addr: IpAddr,
        /// Weight.
        weight: Weight,
    },
    /// Change a real server's weight (0 = start draining).
    UpdateDest {
        /// The task address.
        addr: IpAddr,
        /// New weight.
        weight: Weight,
    },
    /// Delete a real server.
    DelDest {
        /// The task address.
        addr: IpAddr,
        /// Why.
        reason: DeleteReason,
    },
    /// Delete the fwmark service.
    DelService,
}

/// One IPVS operation on one fwmark service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsStep {
    /// The owning network (None: a mark recorded by a network id that is not valid).
    pub network: Option<NetworkId>,
    /// The service, when one is desired or recorded for this mark.
    pub service: Option<ServiceName>,
    /// The family of the IPVS service.
    pub family: Family,
    /// Its fwmark.
    pub mark: u32,
    /// What to do.
    pub change: IpvsChange,
}

fn hostport(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:0"),
        IpAddr::V6(a) => format!("[{a}]:0"),
    }
}

impl fmt::Display for IpvsStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let persist = |p: &Option<IpvsPersistence>| match p {
            Some(p) => format!(" persistent {} mask /{}", p.timeout, p.prefix),
            None => String::new(),
        };
        let fam = match self.family {
            Family::V4 => "",
            Family::V6 => " IPv6",
        };
        let mark = self.mark;
        match &self.change {
            IpvsChange::AddService {
                scheduler,
                persistence,
            } => write!(
                f,
                "ipvs add-service FWM {mark}{fam} {scheduler}{}",
                persist(persistence)
            )?,
            IpvsChange::UpdateService {
                scheduler,
                persistence,
            } => write!(
                f,
                "ipvs set-service FWM {mark}{fam} {scheduler}{}",
                persist(persistence)
            )?,
            IpvsChange::AddDest { addr, weight } => write!(
                f,
                "ipvs add-dest FWM {mark}{fam} -> {} Masq weight {weight}",
                hostport(*addr)
            )?,
            IpvsChange::UpdateDest { addr, weight } => write!(
                f,
                "ipvs set-dest FWM {mark}{fam} -> {} weight {weight}{}",
                hostport(*addr),
                if weight.get() == 0 { " drain" } else { "" }
            )?,
            IpvsChange::DelDest { addr, reason } => write!(
                f,
                "ipvs del-dest FWM {mark}{fam} -> {} [{reason}]",
                hostport(*addr)
            )?,
            IpvsChange::DelService => write!(f, "ipvs del-service FWM {mark}{fam}")?,
        }
        match (&self.network, &self.service) {
            (Some(n), Some(s)) => write!(f, " ({n}/{s})"),
            (Some(n), None) => write!(f, " ({n})"),
            (None, Some(s)) => write!(f, " (?/{s})"),
            (None, None) => Ok(()),
        }
    }
}

/// One firewall transaction in one namespace: an `iptables-restore --noflush` batch of one
/// family, or one `nft -f` transaction on one of our tables. Both are atomic; the controller,
/// the plan text and the tests treat them alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulesPlan {
    /// Our `VIPMESH-*` chains of one family.
    Iptables {
        /// The family.
        family: Family,
        /// Everything we want in our chains of this namespace (all its networks, merged):
        /// what the kernel holds once the batch succeeded.
        desired: nf::OwnedRuleset,
        /// The `iptables-restore --noflush` batch: exactly the rule diff.
        diff: nf::Plan,
    },
    /// One of our nft tables (`inet vipmesh-<id>`).
    Nft {
        /// The table's name.
        table: String,
        /// The table as the kernel holds it once the transaction succeeded (`None`: deleted).
        desired: Option<Box<nft::Table>>,
        /// The transaction: element changes only, the whole table, or its deletion.
        diff: nft::Plan,
    },
}

impl RulesPlan {
    /// The family of an iptables batch; `None` for an nft table (it holds both).
    pub fn family(&self) -> Option<Family> {
        match self {
            RulesPlan::Iptables { family, .. } => Some(*family),
            RulesPlan::Nft { .. } => None,
        }
    }

    /// The object this batch programs in `netns` (what its report step is about).
    pub fn object(&self, netns: &str) -> crate::apply::ObjectKey {
        use crate::apply::ObjectKey;
        match self {
            RulesPlan::Iptables { family, .. } => ObjectKey::Rules(netns.to_string(), *family),
            RulesPlan::Nft { table, .. } => ObjectKey::NftTable(netns.to_string(), table.clone()),
        }
    }

    /// The batch's text (what runs: `iptables-restore` input or the `nft -f` script).
    pub fn script(&self) -> String {
        match self {
            RulesPlan::Iptables { diff, .. } => diff.to_string(),
            RulesPlan::Nft { diff, .. } => diff.to_string(),
        }
    }

    /// The header line of the plan text.
    pub fn header(&self) -> String {
        match self {
            RulesPlan::Iptables { family, .. } => {
                format!("netfilter {family}: iptables-restore --noflush")
            }
            RulesPlan::Nft { table, .. } => format!("nftables {table}: nft -f"),
        }
    }

    /// The step as a report names it.
    pub fn step(&self) -> String {
        let lines = self.script().lines().count();
        match self {
            RulesPlan::Iptables { family, .. } => {
                format!("netfilter {family} batch ({lines} lines)")
            }
            RulesPlan::Nft { table, .. } => format!("nftables {table} transaction ({lines} lines)"),
        }
    }
}

/// Everything to do in one namespace, in execution order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsPlan {
    /// Sysctls to write.
    pub sysctls: Vec<SysctlSet>,
    /// IPVS connection timeouts to set (tcp, tcp_fin, udp).
    pub timeouts: Option<(u32, u32, u32)>,
    /// Addresses to add, then to remove.
    pub addresses: Vec<AddrChange>,
    /// IPVS additions and updates (services, then real servers).
    pub ipvs: Vec<IpvsStep>,
    /// Netfilter batches (only families that change).
    pub rules: Vec<RulesPlan>,
    /// IPVS removals (real servers, then services), after the rules stopped marking into them.
    pub ipvs_removals: Vec<IpvsStep>,
}

impl NsPlan {
    /// True when nothing changes in this namespace.
    pub fn is_empty(&self) -> bool {
        self.sysctls.is_empty()
            && self.timeouts.is_none()
            && self.addresses.is_empty()
            && self.ipvs.is_empty()
            && self.rules.is_empty()
            && self.ipvs_removals.is_empty()
    }

    /// Number of steps (a netfilter batch counts as one).
    pub fn len(&self) -> usize {
        self.sysctls.len()
            + usize::from(self.timeouts.is_some())
            + self.addresses.len()
            + self.ipvs.len()
            + self.rules.len()
            + self.ipvs_removals.len()
    }
}

impl fmt::Display for NsPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.sysctls {
            writeln!(f, "  {s}")?;
        }
        if let Some((tcp, fin, udp)) = self.timeouts {
            writeln!(f, "  ipvs set-timeouts tcp {tcp} tcpfin {fin} udp {udp}")?;
        }
        for a in &self.addresses {
            writeln!(f, "  {a}")?;
        }
        for s in &self.ipvs {
            writeln!(f, "  {s}")?;
        }
        for r in &self.rules {
            writeln!(f, "  {}", r.header())?;
            for line in r.script().lines() {
                writeln!(f, "    {line}")?;
            }
        }
        for s in &self.ipvs_removals {
            writeln!(f, "  {s}")?;
        }
        Ok(())
    }
}

/// A node's plan: per namespace, the typed sub-plans; the fwmarks it allocated; the drain
/// book as it stands once the plan is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Per namespace (only namespaces with something to do).
    pub namespaces: BTreeMap<String, NsPlan>,
    /// The fwmark of every VIP service, per network.
    pub marks: BTreeMap<NetworkId, BTreeMap<ServiceName, u32>>,
    /// The drain clock after this plan.
    pub drains: DrainBook,
    /// The XDP mesh's steps (`ingress.xdp`): `None` when the node has none, or it could not
    /// be observed.
    #[cfg(feature = "xdp")]
    pub xdp: Option<crate::xdp_mesh::XdpPlan>,
}

impl Plan {
    /// True when the kernel already matches.
    pub fn is_empty(&self) -> bool {
        self.namespaces.values().all(NsPlan::is_empty) && self.xdp_len() == 0
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.namespaces.values().map(NsPlan::len).sum::<usize>() + self.xdp_len()
    }

    #[cfg(feature = "xdp")]
    fn xdp_len(&self) -> usize {
        self.xdp.as_ref().map_or(0, |x| x.steps.len())
    }

    #[cfg(not(feature = "xdp"))]
    fn xdp_len(&self) -> usize {
        0
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "(no changes)");
        }
        for (ns, p) in &self.namespaces {
            if p.is_empty() {
                continue;
            }
            writeln!(f, "namespace {ns}")?;
            write!(f, "{p}")?;
        }
        #[cfg(feature = "xdp")]
        if let Some(x) = self.xdp.as_ref().filter(|x| !x.is_empty()) {
            write!(f, "{x}")?;
        }
        Ok(())
    }
}

/// Assigns a fwmark to every VIP service of `net` in the namespace observed as `obs`:
/// 1. the mark its rule comment records, or its VIP's or (ingress) published port's nft map
///    element (restarts keep their marks, and so does a service whose real servers were all
///    replaced);
/// 2. else the mark of an IPVS service of ours (in the network's range, not recorded for
///    another service) whose real servers are the service's backends — the second record, so a
///    mark survives the loss of its rule (a flushed chain) without recreating the service;
/// 3. else the lowest free mark of the range. A mark still held by an IPVS service or a
///    recorded rule is never reused while that state exists.
///
/// # Errors
/// [`Error::FwmarkExhausted`] when the range has too few free marks.
pub fn allocate_marks(
    net: &NetworkState,
    obs: &NsObserved,
) -> Result<BTreeMap<ServiceName, u32>, Error> {
    let n = net.network();
    let range = n.fwmarks;
    let recorded = obs.recorded();
    let mut marks = BTreeMap::new();
    let mut used = BTreeSet::new();
    let vip_services: Vec<&Service> = net.services().filter(|s| s.is_balanced()).collect();
    // This network's records, by service (recorded() is sorted, so marks come in order).
    let mut by_service: BTreeMap<&ServiceName, Vec<u32>> = BTreeMap::new();
    let owners = crate::nft_rules::services_by_vip(net);
    let port_owners = crate::nft_rules::services_by_port(net);
    let owner = |r: &Recorded| -> Option<&ServiceName> {
        match r.port {
            Some(p) => port_owners.get(&p).copied(),
            None => owners.get(&r.vip).copied(),
        }
    };
    let by_vip: Vec<(&ServiceName, u32)> = recorded
        .iter()
        .filter(|r| r.network == n.id.as_str() && range.contains(r.mark) && r.service.is_none())
        .filter_map(|r| Some((owner(r)?, r.mark)))
        .collect();
    for r in recorded
        .iter()
        .filter(|r| r.network == n.id.as_str() && range.contains(r.mark))
    {
        if let Some(s) = &r.service {
            by_service.entry(s).or_default().push(r.mark);
        }
    }
    for (s, m) in &by_vip {
        let e = by_service.entry(s).or_default();
        if !e.contains(m) {
            e.push(*m);
            e.sort_unstable();
        }
    }
    for s in &vip_services {
        let mine = by_service
            .get(&s.name)
            .and_then(|ms| ms.iter().find(|m| !used.contains(*m)));
        if let Some(&m) = mine {
            used.insert(m);
            marks.insert(s.name.clone(), m);
        }
    }
    // Marks recorded for anything else in the range stay reserved until they are deleted.
    // An nft map element of this network whose VIP no service has any more names no service
    // (iptables comments do): its IPVS service may still be claimed by its real servers below
    // (a VIP that moved keeps its mark), so it is not reserved here.
    let unnamed =
        |r: &&Recorded| r.service.is_none() && r.network == n.id.as_str() && owner(r).is_none();
    let mut reserved: BTreeSet<u32> = used.clone();
    reserved.extend(
        recorded
            .iter()
            .filter(|r| range.contains(r.mark) && !unnamed(r))
            .map(|r| r.mark),
    );
    // Second record: unrecorded IPVS services of ours, matched by their real servers.
    let mut unclaimed: BTreeSet<u32> = obs
        .ipvs
        .keys()
        .map(|(_, m)| *m)
        .filter(|m| range.contains(*m) && !reserved.contains(m))
        .collect();
    for s in &vip_services {
        if marks.contains_key(&s.name) || s.backends.is_empty() {
            continue;
        }
        let overlap = |m: u32| -> usize {
            obs.ipvs
                .iter()
                .filter(|((_, mark), _)| *mark == m)
                .map(|(_, os)| {
                    s.backends
                        .iter()
                        .filter(|b| os.dests.contains_key(&b.addr))
                        .count()
                })
                .sum()
        };
        let best = unclaimed
            .iter()
            .map(|m| (overlap(*m), *m))
            .filter(|(o, _)| *o > 0)
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        if let Some((_, m)) = best {
            unclaimed.remove(&m);
            marks.insert(s.name.clone(), m);
        }
    }
    // Services without backends have no real servers to match: take an unclaimed IPVS
    // service with none either and the same scheduler, lowest mark first (they were
    // allocated in name order, and such a service holds no connection to lose).
    for s in &vip_services {
        if marks.contains_key(&s.name) {
            continue;
        }
        let Some(fam) = s.lb_families(n).into_iter().next() else {
            continue;
        };
        let persistence = s.persistence.map(|p| IpvsPersistence::of(&p, fam));
        let found = unclaimed.iter().copied().find(|m| {
            obs.ipvs.get(&(fam, *m)).is_some_and(|os| {
                os.dests.is_empty()
                    && os.scheduler == s.scheduler.as_str()
                    && os.persistence == persistence
            })
        });
        if let Some(m) = found {
            unclaimed.remove(&m);
            marks.insert(s.name.clone(), m);
        }
    }
    reserved.extend(marks.values().copied());
    reserved.extend(
        obs.ipvs
            .keys()
            .map(|(_, m)| *m)
            .filter(|m| range.contains(*m)),
    );
    let needed = vip_services.len();
    let exhausted = || Error::FwmarkExhausted {
        network: n.id.to_string(),
        first: range.first(),
        last: range.last(),
        needed,
    };
    let mut free = (range.first()..=range.last()).filter(|m| !reserved.contains(m));
    for s in &vip_services {
        if marks.contains_key(&s.name) {
            continue;
        }
        let m = free.next().ok_or_else(exhausted)?;
        marks.insert(s.name.clone(), m);
    }
    Ok(marks)
}

/// The sysctls of a layout and family: all of [`sysctls`] in an LB namespace; in a client
/// namespace (no SNAT, no forwarding) only the IPVS expiry ones.
pub fn sysctls_for(
    layout: Layout,
    kernel: KernelVersion,
    family: Family,
) -> BTreeMap<String, String> {
    let mut m = sysctls(kernel, family);
    if layout == Layout::PerClient {
        m.retain(|k, _| k.contains(".vs.expire_") || k.ends_with("conn_reuse_mode"));
    }
    m
}

/// The sysctls vipmesh sets in an LB namespace, chosen by kernel version (see the README).
pub fn sysctls(kernel: KernelVersion, family: Family) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        m.insert(k.to_string(), v.to_string());
    };
    set("net.ipv4.vs.conntrack", "1");
    set("net.ipv4.vs.expire_nodest_conn", "1");
    set("net.ipv4.vs.expire_quiescent_template", "1");
    if kernel < (KernelVersion { major: 5, minor: 9 }) {
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

/// The sysctls every network of a namespace needs, merged.
pub fn namespace_sysctls(
    nets: &[&NetworkState],
    kernel: KernelVersion,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for n in nets {
        for fam in n.network().families() {
            m.extend(sysctls_for(n.network().layout, kernel, fam));
        }
    }
    m
}

/// Computes the plan of a node. Namespaces observed but holding no desired network are torn
/// down (everything of ours in them removed); desired namespaces missing from `observed`
/// (they could not be read) get no steps, and their drain entries are kept. `now` is in
/// seconds of the [`DrainBook`]'s clock.
///
/// # Errors
/// [`Error::FwmarkExhausted`]; [`Error::Netfilter`] if the rule model rejects a value.
pub fn plan(
    desired: &NodeState,
    observed: &NodeObserved,
    drains: &DrainBook,
    now: u64,
) -> Result<Plan, Error> {
    let by_ns = desired.namespaces();
    let mut out = Plan {
        drains: drains.clone(),
        ..Plan::default()
    };
    let mut keep_drains = BTreeSet::new();
    let timeout = desired.options().drain_timeout.as_secs();
    for (ns, nets) in &by_ns {
        if !observed.namespaces.contains_key(*ns) {
            for e in drains.entries() {
                if nets.iter().any(|n| n.network().fwmarks.contains(e.mark)) {
                    keep_drains.insert((e.mark, e.addr));
                }
            }
        }
    }
    for (ns, obs) in &observed.namespaces {
        let nets: &[&NetworkState] = by_ns.get(ns.as_str()).map_or(&[], |v| v.as_slice());
        let mut p = NsPlan {
            sysctls: Vec::new(),
            timeouts: None,
            addresses: Vec::new(),
            ipvs: Vec::new(),
            rules: Vec::new(),
            ipvs_removals: Vec::new(),
        };
        let mut marks = BTreeMap::new();
        for n in nets {
            marks.insert(n.id().clone(), allocate_marks(n, obs)?);
        }
        let ingress = desired.ipvs_ingress();
        let is_host = ingress.is_some_and(|i| i.host_netns == *ns);
        let is_task = ingress.is_some_and(|i| i.local_task_namespaces().contains(ns.as_str()));
        let mut want_sysctls = if nets.is_empty() {
            BTreeMap::new()
        } else {
            namespace_sysctls(nets, obs.kernel)
        };
        if let (true, Some(i)) = (is_host, ingress) {
            want_sysctls.extend(i.host_sysctls());
        }
        for (key, value) in want_sysctls {
            if obs.sysctls.get(&key) != Some(&value) {
                p.sysctls.push(SysctlSet { key, value });
            }
        }
        if let Some(i) = ingress.filter(|i| i.sandbox_netns == *ns) {
            let t = (i.timeouts.tcp, i.timeouts.tcp_fin, i.timeouts.udp);
            if obs.ipvs_timeouts != Some(t) {
                p.timeouts = Some(t);
            }
        }
        plan_addresses(nets, obs, &mut p);
        let firewall = desired.options().firewall;
        let mut ipt = Vec::new();
        for fam in [Family::V4, Family::V6] {
            let mut rs = nf::OwnedRuleset::new(rules::nf_family(fam));
            // On nftables our iptables chains are all removed (a backend switch), but for the
            // host's FORWARD accept (see rules::add_host_forward).
            if let (Firewall::Nftables, true, Some(i)) = (firewall, is_host, ingress) {
                rules::add_host_forward(&mut rs, i)?;
            }
            if firewall == Firewall::Iptables {
                for n in nets {
                    rules::add_network(&mut rs, n, fam, &marks[n.id()])?;
                }
                if let Some(i) = ingress {
                    if is_host {
                        crate::ingress::add_host_rules(&mut rs, i)?;
                    }
                    if is_task {
                        crate::ingress::add_task_rules(&mut rs, i, ns)?;
                    }
                }
            }
            let empty = nf::Observed::empty(rules::nf_family(fam));
            let o = obs.rules.get(&fam).unwrap_or(&empty);
            let diff = nf::plan(&rs, o).map_err(|source| Error::Netfilter {
                op: "plan".into(),
                netns: ns.clone(),
                source: Box::new(source),
            })?;
            if !diff.is_empty() {
                ipt.push(RulesPlan::Iptables {
                    family: fam,
                    desired: rs,
                    diff,
                });
            }
        }
        let nft_plans = plan_nft(firewall, nets, &marks, ingress, ns, obs)?;
        // The new backend's objects first, then the old one's removal: traffic is classified
        // by one or the other (or both, alike) at every instant of a switch.
        match firewall {
            Firewall::Iptables => {
                p.rules.extend(ipt);
                p.rules.extend(nft_plans);
            }
            Firewall::Nftables => {
                p.rules.extend(nft_plans);
                p.rules.extend(ipt);
            }
        }
        let mut live = BTreeSet::new();
        let mut dest_steps = Vec::new();
        for n in nets {
            for s in n.services() {
                let Some(&mark) = marks[n.id()].get(&s.name) else {
                    continue;
                };
                for fam in s.lb_families(n.network()) {
                    live.insert((fam, mark));
                    let os = obs.ipvs.get(&(fam, mark));
                    sync_service_drains(&mut out.drains, s, fam, mark, os, now, &mut keep_drains);
                    let (svc, dests) =
                        service_steps(n.id(), s, fam, mark, os, &out.drains, now, timeout);
                    p.ipvs.extend(svc);
                    for d in dests {
                        if matches!(d.change, IpvsChange::DelDest { .. }) {
                            p.ipvs_removals.push(d);
                        } else {
                            dest_steps.push(d);
                        }
                    }
                }
            }
        }
        p.ipvs.extend(dest_steps);
        // Services of ours no desired service uses: in a desired network's range, or recorded
        // by one of our rules (a network that left this namespace).
        let recorded: BTreeMap<u32, Recorded> = obs
            .recorded()
            .into_iter()
            .rev()
            .map(|r| (r.mark, r))
            .collect();
        for (fam, mark) in obs.ipvs.keys() {
            if live.contains(&(*fam, *mark)) {
                continue;
            }
            let owner = nets.iter().find(|n| n.network().fwmarks.contains(*mark));
            let rec = recorded.get(mark);
            let in_other_range = desired
                .all_networks()
                .any(|n| n.network().fwmarks.contains(*mark) && n.network().lb_netns != *ns);
            let (network, service) = match (owner, rec) {
                (Some(n), r) => (Some(n.id().clone()), r.and_then(|r| r.service.clone())),
                (None, Some(r)) if !in_other_range => {
                    (NetworkId::new(&r.network).ok(), r.service.clone())
                }
                _ => continue, // not ours: never touched
            };
            p.ipvs_removals.push(IpvsStep {
                network,
                service,
                family: *fam,
                mark: *mark,
                change: IpvsChange::DelService,
            });
        }
        for (id, m) in marks {
            out.marks.insert(id, m);
        }
        if !p.is_empty() {
            out.namespaces.insert(ns.clone(), p);
        }
    }
    // Entries of services and real servers that are gone are forgotten.
    out.drains.retain(&keep_drains);
    for p in out.namespaces.values() {
        for s in &p.ipvs_removals {
            if let IpvsChange::DelDest { addr, .. } = s.change {
                out.drains.forget(s.mark, addr);
            }
        }
    }
    #[cfg(feature = "xdp")]
    if let (Some(d), Some(o)) = (desired.xdp(), observed.xdp.as_ref()) {
        out.xdp = Some(crate::xdp_mesh::plan(d, o)?);
    }
    Ok(out)
}

/// The nft transactions of one namespace: each desired table against the observed one
/// (elements only when just they differ), and the deletion of our tables no longer wanted
/// (all of them on iptables). A table with our name that is not ours is never touched, and on
/// nftables it is an error.
fn plan_nft(
    firewall: Firewall,
    nets: &[&NetworkState],
    marks: &BTreeMap<NetworkId, BTreeMap<ServiceName, u32>>,
    ingress: Option<&crate::ingress::Ingress>,
    ns: &str,
    obs: &NsObserved,
) -> Result<Vec<RulesPlan>, Error> {
    let want = match firewall {
        Firewall::Nftables => crate::nft_rules::tables(nets, marks, ingress, ns)?,
        Firewall::Iptables => BTreeMap::new(),
    };
    let wanted: BTreeSet<String> = want.keys().cloned().collect();
    let mut out = Vec::new();
    let wrap = |source| crate::nft_rules::nft_err("plan", ns, source);
    for (name, t) in want {
        let diff = nft::plan(&t, obs.nft.get(&name)).map_err(|e| match e {
            nft::Error::ForeignTable { family, table, .. } => wrap(nft::Error::ForeignTable {
                family,
                table,
                netns: ns.to_string(),
            }),
            e => wrap(e),
        })?;
        if !diff.is_empty() {
            out.push(RulesPlan::Nft {
                table: name,
                desired: Some(Box::new(t)),
                diff,
            });
        }
    }
    for (name, o) in &obs.nft {
        if wanted.contains(name) || o.owner != nft::Ownership::Ours {
            continue; // wanted, or a foreign table with our name: never deleted
        }
        let diff = nft::plan_teardown(Some(o)).map_err(wrap)?;
        out.push(RulesPlan::Nft {
            table: name.clone(),
            desired: None,
            diff,
        });
    }
    Ok(out)
}

fn plan_addresses(nets: &[&NetworkState], obs: &NsObserved, p: &mut NsPlan) {
    let mut wanted: BTreeMap<IpAddr, (&str, NetworkId, ServiceName)> = BTreeMap::new();
    for n in nets {
        let net = n.network();
        if net.layout != Layout::LbNamespace {
            continue;
        }
        for s in n.services() {
            for vip in s
                .vips_of()
                .iter()
                .flat_map(|v| v.iter().collect::<Vec<_>>())
            {
                wanted.insert(
                    vip,
                    (net.lb_interface.as_str(), net.id.clone(), s.name.clone()),
                );
            }
        }
    }
    for (addr, (iface, id, svc)) in &wanted {
        let present = obs
            .addresses
            .get(addr)
            .is_some_and(|a| a.interface == *iface && a.prefix == host_prefix(*addr));
        if !present {
            p.addresses.push(AddrChange::Add {
                interface: iface.to_string(),
                addr: *addr,
                owner: (id.clone(), svc.clone()),
            });
        }
    }
    // Ours: tagged with our address protocol, or a VIP our rules record (addresses added
    // before the protocol tag existed).
    let recorded: BTreeSet<IpAddr> = obs.recorded().into_iter().map(|r| r.vip).collect();
    for (addr, a) in &obs.addresses {
        // A VIP is a host address (/32, /128): the overlay's and the gateway bridge's
        // addresses carry our protocol too, but with their subnet's prefix, and are not VIPs.
        let ours = (a.owned || recorded.contains(addr)) && a.prefix == host_prefix(*addr);
        let wanted_here = wanted
            .get(addr)
            .is_some_and(|(iface, ..)| *iface == a.interface);
        if ours && !wanted_here {
            p.addresses.push(AddrChange::Del {
                interface: a.interface.clone(),
                addr: *addr,
                prefix: a.prefix,
            });
        }
    }
}

/// Brings the drain book in line for one service's IPVS service at `now`: real servers that
/// are there but not desired are draining (a restarted process adopts them from now); desired
/// ones are forgotten. Every entry still draining is added to `keep`.
fn sync_service_drains(
    book: &mut DrainBook,
    s: &Service,
    family: Family,
    mark: u32,
    observed: Option<&ObservedService>,
    now: u64,
    keep: &mut BTreeSet<(u32, IpAddr)>,
) {
    let Some(os) = observed else { return };
    for addr in os.dests.keys() {
        if s.backends_of(family).any(|b| b.addr == *addr) {
            book.forget(mark, *addr);
        } else {
            book.start(mark, *addr, now);
            keep.insert((mark, *addr));
        }
    }
}

/// The IPVS steps of one VIP service in one family: (service-level steps, real-server steps).
#[allow(clippy::too_many_arguments)]
pub fn service_steps(
    network: &NetworkId,
    s: &Service,
    family: Family,
    mark: u32,
    observed: Option<&ObservedService>,
    drains: &DrainBook,
    now: u64,
    drain_timeout: u64,
) -> (Vec<IpvsStep>, Vec<IpvsStep>) {
    let step = |change| IpvsStep {
        network: Some(network.clone()),
        service: Some(s.name.clone()),
        family,
        mark,
        change,
    };
    let mut svc_steps = Vec::new();
    let mut dest_steps = Vec::new();
    let persistence = s.persistence.map(|p| IpvsPersistence::of(&p, family));
    let empty = ObservedService {
        scheduler: s.scheduler.as_str().to_string(),
        persistence,
        dests: BTreeMap::new(),
    };
    let os = match observed {
        Some(os) => os,
        None => {
            svc_steps.push(step(IpvsChange::AddService {
                scheduler: s.scheduler.clone(),
                persistence,
            }));
            &empty
        }
    };
    if os.scheduler != s.scheduler.as_str() || os.persistence != persistence {
        svc_steps.push(step(IpvsChange::UpdateService {
            scheduler: s.scheduler.clone(),
            persistence,
        }));
    }
    for b in s.backends_of(family) {
        match os.dests.get(&b.addr) {
            None => dest_steps.push(step(IpvsChange::AddDest {
                addr: b.addr,
                weight: b.weight,
            })),
            Some(d) if d.weight != b.weight.get() => {
                dest_steps.push(step(IpvsChange::UpdateDest {
                    addr: b.addr,
                    weight: b.weight,
                }))
            }
            Some(_) => {}
        }
    }
    for (addr, d) in &os.dests {
        if s.backends_of(family).any(|b| b.addr == *addr) {
            continue;
        }
        let del = |reason| {
            step(IpvsChange::DelDest {
                addr: *addr,
                reason,
            })
        };
        if s.udp_only() {
            dest_steps.push(del(DeleteReason::Udp));
        } else if d.weight != 0 {
            dest_steps.push(step(IpvsChange::UpdateDest {
                addr: *addr,
                weight: Weight::ZERO,
            }));
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

/// Plans only the IPVS real servers, scheduler and persistence of the named services, against
/// an observation whose IPVS entries for them are fresh (the controller's incremental sync).
/// Nothing else is looked at: no sysctls, addresses, rules or other services.
pub fn plan_services(
    desired: &NodeState,
    observed: &NodeObserved,
    marks: &BTreeMap<NetworkId, BTreeMap<ServiceName, u32>>,
    services: &BTreeSet<(NetworkId, ServiceName)>,
    drains: &DrainBook,
    now: u64,
) -> Plan {
    let timeout = desired.options().drain_timeout.as_secs();
    // The marks do not change here: the plan carries none (the controller keeps its own).
    let mut out = Plan {
        drains: drains.clone(),
        ..Plan::default()
    };
    for (id, name) in services {
        let Some(n) = desired.any_network(id.as_str()) else {
            continue;
        };
        let Some(s) = n.service(name.as_str()) else {
            continue;
        };
        let Some(mark) = marks.get(id).and_then(|m| m.get(name)).copied() else {
            continue;
        };
        let ns = &n.network().lb_netns;
        let Some(obs) = observed.namespaces.get(ns) else {
            continue;
        };
        let p = out.namespaces.entry(ns.clone()).or_insert_with(|| NsPlan {
            sysctls: Vec::new(),
            timeouts: None,
            addresses: Vec::new(),
            ipvs: Vec::new(),
            rules: Vec::new(),
            ipvs_removals: Vec::new(),
        });
        for fam in s.lb_families(n.network()) {
            let os = obs.ipvs.get(&(fam, mark));
            let mut keep = BTreeSet::new();
            sync_service_drains(&mut out.drains, s, fam, mark, os, now, &mut keep);
            let (svc, dests) = service_steps(id, s, fam, mark, os, &out.drains, now, timeout);
            p.ipvs.extend(svc);
            for d in dests {
                if let IpvsChange::DelDest { addr, .. } = d.change {
                    out.drains.forget(mark, addr);
                    p.ipvs_removals.push(d);
                } else {
                    p.ipvs.push(d);
                }
            }
        }
    }
    out.namespaces.retain(|_, p| !p.is_empty());
    out
}

/// Seconds since the Unix epoch, the clock [`plan`] and [`DrainBook`] use in production.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}
