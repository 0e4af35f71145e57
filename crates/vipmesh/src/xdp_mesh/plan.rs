//! What the kernel holds ([`XdpObserved`]) and the typed steps that take it to the desired
//! state ([`XdpPlan`], [`plan`]). Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use vipmesh_xdp::{Backend, Egress, ForwardMode, MacAddr, Program, ServiceKey, ServiceSpec};

use super::config::AttachRequest;
use super::derive::{Via, XdpDesired};
use crate::error::Error;

/// Each backend's forwarding mode, by (address, target port).
pub type BackendModes = BTreeMap<(IpAddr, u16), ForwardMode>;

/// A fast-path service with its backends' modes.
pub type ModedSpec = (ServiceSpec, BackendModes);

/// An interface as observed: index and MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkFacts {
    /// Its ifindex in its namespace.
    pub ifindex: u32,
    /// Its MAC.
    pub mac: MacAddr,
}

/// Where a program is attached: namespace (as the desired state names it), interface,
/// program.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttachKey {
    /// The namespace (`host_netns` or a task's).
    pub netns: String,
    /// The interface.
    pub interface: String,
    /// The program.
    pub program: Program,
}

impl fmt::Display for AttachKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on {} in {}",
            self.program.name(),
            self.interface,
            self.netns
        )
    }
}

/// What the kernel holds for one node's XDP mesh ([`super::XdpMesh::observe`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XdpObserved {
    /// Whether this process holds the loaded fast path.
    pub loaded: bool,
    /// Interfaces by (namespace, name); an interface that is absent is not listed.
    pub links: BTreeMap<(String, String), LinkFacts>,
    /// MACs of the other nodes' underlay addresses, from the host namespace's neighbour table.
    pub neighbours: BTreeMap<IpAddr, MacAddr>,
    /// Services in the (possibly pinned) maps, with each backend's mode.
    pub services: BTreeMap<ServiceKey, ModedSpec>,
    /// Task-side port translations in the maps.
    pub task_ports: BTreeMap<ServiceKey, u16>,
    /// Attachments this process holds.
    pub attached: BTreeSet<AttachKey>,
    /// Attachments pinned by a previous process (taken over atomically by an attach).
    pub pinned: BTreeSet<AttachKey>,
    /// Pinned links under the pin root that no desired attachment and nothing this process
    /// holds accounts for (a task that went while the controller was down).
    pub stale_pins: BTreeSet<PathBuf>,
    /// Addresses of ours (`IFA_PROTO` vipmesh) on `lo`, by task namespace.
    pub task_addrs: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Sysctl values by (namespace, key); unreadable keys are not listed.
    pub sysctls: BTreeMap<(String, String), String>,
    /// The values our sysctl writes replaced, by (namespace, key), from
    /// [`super::XdpDesired::sysctl_record`].
    pub saved_sysctls: BTreeMap<(String, String), SavedSysctl>,
}

/// A sysctl value our write replaced, and the value we wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedSysctl {
    /// The namespace.
    pub netns: String,
    /// The key.
    pub key: String,
    /// The value before our write.
    pub previous: String,
    /// The value we wrote: the previous one is put back only while this one is still there
    /// (a value someone else wrote since is theirs).
    pub ours: String,
}

/// Sysctls of the host namespace that stay at teardown: other dataplanes of the node (the
/// IPVS mesh, the container runtime) forward too.
pub const KEPT_SYSCTLS: [&str; 2] = ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"];

/// One step of an [`XdpPlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum XdpStep {
    /// Load the programs; create the maps pinned under `pin_root`, or reopen them and take
    /// their ids and flows over.
    Load {
        /// The bpffs root.
        pin_root: PathBuf,
    },
    /// Write a sysctl.
    SetSysctl {
        /// The namespace.
        netns: String,
        /// The key (`net.ipv4.ip_forward`).
        key: String,
        /// The value.
        value: String,
    },
    /// Put back the value a sysctl had before our write (a task that left the mesh), if our
    /// value is still there; then forget the record.
    RestoreSysctl {
        /// What was recorded.
        saved: SavedSysctl,
    },
    /// Program a service (ids kept for the backends that stay; the Maglev table swapped
    /// whole).
    UpsertService {
        /// The service, resolved to ifindexes and MACs.
        spec: ServiceSpec,
        /// Each backend's mode.
        modes: BTreeMap<(IpAddr, u16), ForwardMode>,
    },
    /// Remove a service.
    RemoveService {
        /// Its key.
        key: ServiceKey,
    },
    /// Task side: `vip` (another node's address and the published port) → `target`.
    SetTaskPort {
        /// The key.
        vip: ServiceKey,
        /// The target port.
        target: u16,
    },
    /// Remove a task-side translation.
    RemoveTaskPort {
        /// The key.
        vip: ServiceKey,
    },
    /// Add an address (/32 or /128, ours) on a task's `lo`.
    AddTaskAddr {
        /// The task namespace.
        netns: String,
        /// The address.
        addr: IpAddr,
    },
    /// Remove one of our addresses from a task's `lo`.
    RemoveTaskAddr {
        /// The task namespace.
        netns: String,
        /// The address.
        addr: IpAddr,
    },
    /// Attach a program (or take over its pinned link).
    Attach {
        /// Where.
        at: AttachKey,
        /// The XDP mode asked for (XDP programs).
        mode: AttachRequest,
        /// A previous process's pinned link is taken over (its program swapped atomically).
        adopt: bool,
    },
    /// Detach a program this process attached.
    Detach {
        /// Where.
        at: AttachKey,
    },
    /// Remove a stale pinned link (the kernel detaches it with its last reference).
    Unpin {
        /// The pin.
        path: PathBuf,
    },
}

impl fmt::Display for XdpStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XdpStep::Load { pin_root } => {
                write!(
                    f,
                    "load xdp programs, maps pinned under {}",
                    pin_root.display()
                )
            }
            XdpStep::SetSysctl { netns, key, value } => {
                write!(f, "sysctl {key}={value} in {netns}")
            }
            XdpStep::RestoreSysctl { saved } => write!(
                f,
                "restore sysctl {}={} in {} (if still {})",
                saved.key, saved.previous, saved.netns, saved.ours
            ),
            XdpStep::UpsertService { spec, modes } => {
                write!(f, "upsert {} ({} backends)", spec.key, spec.backends.len())?;
                for b in &spec.backends {
                    let m = match modes.get(&(b.addr, b.port)).copied().unwrap_or(spec.mode) {
                        ForwardMode::Nat => "nat",
                        ForwardMode::Encap => "encap",
                    };
                    write!(
                        f,
                        "\n    {} {m} ifindex {} -> {} w{}",
                        std::net::SocketAddr::new(b.addr, b.port),
                        b.egress.ifindex,
                        b.egress.dst_mac,
                        b.weight
                    )?;
                }
                Ok(())
            }
            XdpStep::RemoveService { key } => write!(f, "remove {key}"),
            XdpStep::SetTaskPort { vip, target } => {
                write!(f, "task port {vip} -> {target}")
            }
            XdpStep::RemoveTaskPort { vip } => write!(f, "remove task port {vip}"),
            XdpStep::AddTaskAddr { netns, addr } => write!(f, "add {addr} on lo in {netns}"),
            XdpStep::RemoveTaskAddr { netns, addr } => {
                write!(f, "remove {addr} from lo in {netns}")
            }
            XdpStep::Attach { at, mode, adopt } => {
                write!(f, "attach {at}")?;
                if at.program == Program::XdpLb {
                    write!(f, " ({mode})")?;
                }
                if *adopt {
                    f.write_str(" (take over pinned link)")?;
                }
                Ok(())
            }
            XdpStep::Detach { at } => write!(f, "detach {at}"),
            XdpStep::Unpin { path } => write!(f, "unpin stale link {}", path.display()),
        }
    }
}

/// The steps from observed to desired, in apply order; empty when nothing is to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XdpPlan {
    /// The steps.
    pub steps: Vec<XdpStep>,
}

impl XdpPlan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

impl fmt::Display for XdpPlan {
    /// One line per step (services continue on indented lines); empty when nothing to do.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            writeln!(f, "xdp: {s}")?;
        }
        Ok(())
    }
}

/// The attachments a desired state needs, with their modes.
pub(crate) fn desired_attachments(d: &XdpDesired) -> Vec<AttachKey> {
    let mut out = Vec::new();
    for (netns, t) in &d.tasks {
        // NAPI on the redirect target's peer (a veth drops XDP frames otherwise).
        for program in [Program::XdpPass, Program::TcDecap, Program::TcEgress] {
            out.push(AttachKey {
                netns: netns.clone(),
                interface: t.interface.clone(),
                program,
            });
        }
        out.push(AttachKey {
            netns: d.host_netns.clone(),
            interface: t.host_veth.clone(),
            program: Program::TcRev,
        });
    }
    // The uplink last: by then every task can take what it redirects.
    out.push(AttachKey {
        netns: d.host_netns.clone(),
        interface: d.uplink.clone(),
        program: Program::XdpLb,
    });
    out
}

fn link<'a>(
    o: &'a XdpObserved,
    netns: &str,
    interface: &str,
    task: bool,
) -> Result<&'a LinkFacts, Error> {
    o.links
        .get(&(netns.to_owned(), interface.to_owned()))
        .ok_or_else(|| {
            if task {
                Error::MissingTaskInterface {
                    netns: netns.to_owned(),
                    interface: interface.to_owned(),
                }
            } else {
                Error::Invalid {
                    field: "xdp.uplink",
                    value: format!("{interface} in {netns}"),
                    reason: "no such interface".into(),
                }
            }
        })
}

/// Resolves the desired services to fast-path specs (ifindexes, MACs) with what was observed.
///
/// # Errors
///
/// [`Error::MissingTaskInterface`] for a task (or its node-side veth) without its interface;
/// [`Error::Invalid`] (`xdp.uplink`) for a missing uplink, (`nodes.underlay`) for a remote
/// node whose MAC is not in the neighbour table.
pub fn resolve(d: &XdpDesired, o: &XdpObserved) -> Result<BTreeMap<ServiceKey, ModedSpec>, Error> {
    let uplink = link(o, &d.host_netns, &d.uplink, false)?;
    let mut out = BTreeMap::new();
    for (key, s) in &d.services {
        let mut backends = Vec::new();
        let mut modes = BTreeMap::new();
        for b in &s.backends {
            let egress = match &b.via {
                Via::Local {
                    netns,
                    interface,
                    host_veth,
                } => {
                    let task = link(o, netns, interface, true)?;
                    let host = link(o, &d.host_netns, host_veth, true)?;
                    Egress {
                        ifindex: host.ifindex,
                        src_mac: host.mac,
                        dst_mac: task.mac,
                    }
                }
                Via::Remote { node, underlay } => {
                    let mac = o.neighbours.get(underlay).ok_or_else(|| Error::Invalid {
                        field: "nodes.underlay",
                        value: format!("{node} = {underlay}"),
                        reason: format!(
                            "no neighbour entry (MAC) for it on {} in {}",
                            d.uplink, d.host_netns
                        ),
                    })?;
                    Egress {
                        ifindex: uplink.ifindex,
                        src_mac: uplink.mac,
                        dst_mac: *mac,
                    }
                }
            };
            modes.insert((b.addr, b.port), b.mode);
            backends.push(Backend {
                addr: b.addr,
                port: b.port,
                weight: b.weight,
                egress,
            });
        }
        let spec = ServiceSpec {
            key: *key,
            mode: ForwardMode::Encap,
            backends,
            table_size: d.table_size,
        };
        out.insert(*key, (spec, modes));
    }
    Ok(out)
}

/// Normalised for comparison: backends sorted, the modes in force.
fn same_service(a: &ModedSpec, b: &ModedSpec) -> bool {
    let norm = |s: &ModedSpec| {
        let mut v: Vec<_> =
            s.0.backends
                .iter()
                .map(|b| {
                    (
                        b.addr,
                        b.port,
                        b.weight,
                        b.egress.ifindex,
                        b.egress.src_mac,
                        b.egress.dst_mac,
                        s.1.get(&(b.addr, b.port)).copied().unwrap_or(s.0.mode) == ForwardMode::Nat,
                    )
                })
                .collect();
        v.sort();
        (v, s.0.table_size)
    };
    norm(a) == norm(b)
}

/// The steps that take `o` to `d`, in apply order: load, sysctls, services, task ports, task
/// addresses, attachments (task side first, the uplink last); then what is no longer wanted:
/// detaches, services, task ports, addresses. Applying the plan and observing again gives an
/// empty plan.
///
/// # Errors
///
/// As [`resolve`]: nothing is planned when an interface or a neighbour is missing.
pub fn plan(d: &XdpDesired, o: &XdpObserved) -> Result<XdpPlan, Error> {
    let want = resolve(d, o)?;
    let mut steps = Vec::new();
    if !o.loaded {
        steps.push(XdpStep::Load {
            pin_root: d.pin_root.clone(),
        });
    }
    let mut sysctls: Vec<(String, String, String)> = d
        .host_sysctls
        .iter()
        .map(|(k, v)| (d.host_netns.clone(), k.clone(), v.clone()))
        .collect();
    for netns in d.tasks.keys() {
        for (k, v) in &d.task_sysctls {
            sysctls.push((netns.clone(), k.clone(), v.clone()));
        }
    }
    let wanted: BTreeSet<(String, String)> = sysctls
        .iter()
        .map(|(n, k, _)| (n.clone(), k.clone()))
        .collect();
    for (netns, key, value) in sysctls {
        if o.sysctls.get(&(netns.clone(), key.clone())) != Some(&value) {
            steps.push(XdpStep::SetSysctl { netns, key, value });
        }
    }
    for (at, saved) in &o.saved_sysctls {
        if !wanted.contains(at) {
            steps.push(XdpStep::RestoreSysctl {
                saved: saved.clone(),
            });
        }
    }
    for (key, w) in &want {
        if o.services
            .get(key)
            .is_none_or(|have| !same_service(have, w))
        {
            steps.push(XdpStep::UpsertService {
                spec: w.0.clone(),
                modes: w.1.clone(),
            });
        }
    }
    let want_ports: BTreeMap<ServiceKey, u16> = d
        .tasks
        .values()
        .flat_map(|t| t.ports.iter().map(|(k, v)| (*k, *v)))
        .collect();
    for (vip, target) in &want_ports {
        if o.task_ports.get(vip) != Some(target) {
            steps.push(XdpStep::SetTaskPort {
                vip: *vip,
                target: *target,
            });
        }
    }
    for (netns, t) in &d.tasks {
        let have = o.task_addrs.get(netns);
        for a in &t.lo_addrs {
            if !have.is_some_and(|h| h.contains(a)) {
                steps.push(XdpStep::AddTaskAddr {
                    netns: netns.clone(),
                    addr: *a,
                });
            }
        }
    }
    let atts = desired_attachments(d);
    for at in &atts {
        if !o.attached.contains(at) {
            steps.push(XdpStep::Attach {
                at: at.clone(),
                mode: d.attach,
                adopt: o.pinned.contains(at),
            });
        }
    }
    let atts: BTreeSet<AttachKey> = atts.into_iter().collect();
    for at in &o.attached {
        if !atts.contains(at) {
            steps.push(XdpStep::Detach { at: at.clone() });
        }
    }
    for path in &o.stale_pins {
        steps.push(XdpStep::Unpin { path: path.clone() });
    }
    for key in o.services.keys() {
        if !want.contains_key(key) {
            steps.push(XdpStep::RemoveService { key: *key });
        }
    }
    for vip in o.task_ports.keys() {
        if !want_ports.contains_key(vip) {
            steps.push(XdpStep::RemoveTaskPort { vip: *vip });
        }
    }
    for (netns, have) in &o.task_addrs {
        let keep = d.tasks.get(netns).map(|t| &t.lo_addrs);
        for a in have {
            if !keep.is_some_and(|k| k.contains(a)) {
                steps.push(XdpStep::RemoveTaskAddr {
                    netns: netns.clone(),
                    addr: *a,
                });
            }
        }
    }
    steps.dedup();
    Ok(XdpPlan { steps })
}
