//! The thin shell: observe, apply, teardown ([`XdpMesh`]). Each namespace through one
//! [`Netns`] handle; the programs and maps through one [`FastPath`] per node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use vipmesh_netns::Netns;
use vipmesh_netns::rtnl::{Rtnl, VIPMESH_ADDR_PROTO};
use vipmesh_xdp::{Attachment, FastPath, LoadOptions, MacAddr, Pinning, Program};

use super::derive::{Via, XdpDesired};
use super::plan::{
    AttachKey, KEPT_SYSCTLS, LinkFacts, SavedSysctl, XdpObserved, XdpPlan, XdpStep,
    desired_attachments,
};
use crate::dataplane::open_netns;
use crate::error::Error;

/// What [`XdpMesh::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XdpApplyReport {
    /// Steps applied, as their text.
    pub applied: Vec<String>,
    /// XDP attachments that fell back from native to generic mode: (interface, reason).
    pub fallbacks: Vec<(String, String)>,
}

/// One node's XDP mesh: the loaded fast path and the namespace handles.
///
/// # Examples
///
/// ```no_run
/// use vipmesh::xdp_mesh::{XdpMesh, XdpMeshConfig};
/// # fn f(ingress: &vipmesh::ingress::Ingress) -> Result<(), vipmesh::Error> {
/// let desired = XdpMesh::derive(ingress, &XdpMeshConfig::new("eth0"))?;
/// let mut mesh = XdpMesh::new(&desired)?;
/// let observed = mesh.observe(&desired)?;
/// let plan = XdpMesh::plan(&desired, &observed)?;
/// print!("{plan}");
/// mesh.apply(&desired, &plan)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct XdpMesh {
    host: Netns,
    host_name: String,
    tasks: BTreeMap<String, Netns>,
    fast: Option<FastPath>,
    held: BTreeMap<AttachKey, Attachment>,
    pin_root: PathBuf,
}

fn xe(op: impl Into<String>, netns: &str) -> impl FnOnce(vipmesh_xdp::Error) -> Error {
    let op = op.into();
    let netns = netns.to_owned();
    move |source| Error::Xdp {
        op,
        netns,
        source: Box::new(source),
    }
}

fn ne(netns: &str) -> impl FnOnce(vipmesh_netns::Error) -> Error {
    let netns = netns.to_owned();
    move |source| Error::Netns { netns, source }
}

fn facts(l: &vipmesh_netns::rtnl::Link) -> LinkFacts {
    LinkFacts {
        ifindex: l.index,
        mac: MacAddr(l.mac.map(|m| m.0).unwrap_or_default()),
    }
}

impl XdpMesh {
    /// [`super::derive()`].
    ///
    /// # Errors
    /// As [`super::derive()`].
    pub fn derive(
        ing: &crate::ingress::Ingress,
        cfg: &super::XdpMeshConfig,
    ) -> Result<XdpDesired, Error> {
        super::derive(ing, cfg)
    }

    /// [`super::plan()`].
    ///
    /// # Errors
    /// As [`super::plan()`].
    pub fn plan(d: &XdpDesired, o: &XdpObserved) -> Result<XdpPlan, Error> {
        super::plan(d, o)
    }

    /// Opens the node's host namespace; nothing is written.
    ///
    /// # Errors
    /// [`Error::MissingNamespace`], [`Error::Netns`].
    pub fn new(d: &XdpDesired) -> Result<XdpMesh, Error> {
        Ok(XdpMesh {
            host: open_netns(&d.host_netns)?,
            host_name: d.host_netns.clone(),
            tasks: BTreeMap::new(),
            fast: None,
            held: BTreeMap::new(),
            pin_root: d.pin_root.clone(),
        })
    }

    /// The loaded fast path (counters, stats, test runs), once a plan loaded it.
    pub fn fast_path(&mut self) -> Option<&mut FastPath> {
        self.fast.as_mut()
    }

    fn ns(&mut self, netns: &str) -> Result<&Netns, Error> {
        if netns == self.host_name {
            return Ok(&self.host);
        }
        if !self.tasks.contains_key(netns) {
            let h = open_netns(netns)?;
            self.tasks.insert(netns.to_owned(), h);
        }
        self.tasks
            .get(netns)
            .ok_or_else(|| Error::MissingNamespace {
                netns: netns.to_owned(),
            })
    }

    fn pin_path(&mut self, at: &AttachKey, ifindex: u32) -> Result<PathBuf, Error> {
        let ns = self.ns(&at.netns)?;
        let ino = ns.id().map_err(ne(&at.netns))?.ino;
        Ok(self
            .pin_root
            .join("vipmesh")
            .join(format!("link_{}_{ino}_{ifindex}", at.program.name())))
    }

    /// Reads what the kernel holds for `d` (see [`XdpObserved`]). Besides reading, it asks
    /// the kernel to resolve the MAC of another node's underlay address that is not in the
    /// neighbour table yet (one empty UDP datagram to its discard port).
    ///
    /// # Errors
    /// [`Error::MissingNamespace`] for a task namespace that does not exist; [`Error::Netns`].
    pub fn observe(&mut self, d: &XdpDesired) -> Result<XdpObserved, Error> {
        let mut o = XdpObserved {
            loaded: self.fast.is_some(),
            ..XdpObserved::default()
        };
        let host_rt = Rtnl::open(&self.host).map_err(ne(&self.host_name))?;
        for l in host_rt.links().map_err(ne(&self.host_name))? {
            o.links
                .insert((self.host_name.clone(), l.name.clone()), facts(&l));
        }
        // The other nodes' MACs.
        let uplink = o
            .links
            .get(&(self.host_name.clone(), d.uplink.clone()))
            .map(|f| f.ifindex);
        let remotes: BTreeSet<IpAddr> = d
            .services
            .values()
            .flat_map(|s| s.backends.iter())
            .filter_map(|b| match b.via {
                Via::Remote { underlay, .. } => Some(underlay),
                Via::Local { .. } => None,
            })
            .collect();
        let read_neigh = |rt: &Rtnl| -> Result<BTreeMap<IpAddr, MacAddr>, Error> {
            Ok(rt
                .neighbours()
                .map_err(ne(&self.host_name))?
                .into_iter()
                .filter(|n| Some(n.ifindex) == uplink)
                .filter_map(|n| n.mac.map(|m| (n.ip, MacAddr(m.0))))
                .filter(|(_, m)| *m != MacAddr::default())
                .collect())
        };
        let mut neigh = read_neigh(&host_rt)?;
        let missing: Vec<IpAddr> = remotes
            .iter()
            .filter(|a| !neigh.contains_key(a))
            .copied()
            .collect();
        if !missing.is_empty() {
            let _probed = self.host.run(|| {
                for a in &missing {
                    let any: IpAddr = if a.is_ipv4() {
                        IpAddr::from([0u8; 4])
                    } else {
                        IpAddr::from([0u8; 16])
                    };
                    if let Ok(s) = UdpSocket::bind(SocketAddr::new(any, 0)) {
                        let _sent = s.send_to(&[], SocketAddr::new(*a, 9));
                    }
                }
            });
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(50));
                neigh = read_neigh(&host_rt)?;
                if missing.iter().all(|a| neigh.contains_key(a)) {
                    break;
                }
            }
        }
        o.neighbours = neigh;
        for k in d.host_sysctls.keys() {
            if let Ok(val) = self.host.sysctl_read(k) {
                o.sysctls
                    .insert((self.host_name.clone(), k.clone()), val.trim().to_owned());
            }
        }
        // Tasks: desired ones, and those this process or the one before it (its record)
        // programmed, to clean up after them.
        let mut names: BTreeSet<String> = d.tasks.keys().cloned().collect();
        names.extend(self.tasks.keys().cloned());
        if let Ok(Some(b)) = Breadcrumb::read(&d.node)
            && b.pin_root == d.pin_root
            && b.host_netns == d.host_netns
        {
            names.extend(b.tasks);
        }
        for netns in names {
            let wanted = d.tasks.contains_key(&netns);
            let ns = match self.ns(&netns) {
                Ok(ns) => ns.try_clone().map_err(ne(&netns))?,
                Err(e) if wanted => return Err(e),
                Err(_gone) => {
                    self.tasks.remove(&netns);
                    continue;
                }
            };
            let rt = Rtnl::open(&ns).map_err(ne(&netns))?;
            let links = rt.links().map_err(ne(&netns))?;
            let lo = links.iter().find(|l| l.name == "lo").map(|l| l.index);
            for l in &links {
                o.links.insert((netns.clone(), l.name.clone()), facts(l));
            }
            let ours: BTreeSet<IpAddr> = rt
                .addresses()
                .map_err(ne(&netns))?
                .into_iter()
                .filter(|a| Some(a.ifindex) == lo && a.proto == Some(VIPMESH_ADDR_PROTO))
                .map(|a| a.addr)
                .collect();
            if !ours.is_empty() {
                o.task_addrs.insert(netns.clone(), ours);
            }
            if wanted {
                for k in d.task_sysctls.keys() {
                    if let Ok(val) = ns.sysctl_read(k) {
                        o.sysctls
                            .insert((netns.clone(), k.clone()), val.trim().to_owned());
                    }
                }
            }
        }
        if let Some(fp) = self.fast.as_mut() {
            let dp = fp.dataplane();
            let specs: Vec<_> = dp.services().cloned().collect();
            for s in specs {
                let modes = dp.backend_modes(&s.key);
                o.services.insert(s.key, (s, modes));
            }
            o.task_ports = dp.task_ports().clone();
        }
        o.saved_sysctls = read_record(&d.sysctl_record, &self.host_name)?;
        o.attached = self.held.keys().cloned().collect();
        // Pins: a desired attachment's pin that this process does not hold is a previous
        // process's (taken over by the attach); a pin nothing accounts for is stale.
        let mut accounted: BTreeSet<PathBuf> = self
            .held
            .values()
            .filter_map(|a| a.pinned.clone())
            .collect();
        for at in desired_attachments(d) {
            let Some(f) = o.links.get(&(at.netns.clone(), at.interface.clone())) else {
                continue;
            };
            let p = self.pin_path(&at, f.ifindex)?;
            if p.exists() && !self.held.contains_key(&at) {
                o.pinned.insert(at);
            }
            accounted.insert(p);
        }
        o.stale_pins = FastPath::pinned_links(&self.pin_root)
            .map_err(xe("list pinned links", &self.host_name))?
            .into_iter()
            .filter(|p| !accounted.contains(p))
            .collect();
        Ok(o)
    }

    /// Applies `plan` (from [`XdpMesh::plan`] on `d`), each step once, in order.
    ///
    /// # Errors
    /// The first failing step's error ([`Error::Xdp`], [`Error::XdpModeUnsupported`],
    /// [`Error::Netns`], [`Error::MissingNamespace`]); the steps before it stay applied and
    /// the next observe plans the rest.
    pub fn apply(&mut self, d: &XdpDesired, plan: &XdpPlan) -> Result<XdpApplyReport, Error> {
        let mut report = XdpApplyReport::default();
        if !plan.steps.is_empty() {
            // Before the first write: a process restarted without this mesh in its state
            // finds what to remove from the node's name alone (XdpMesh::teardown_left).
            let mut b = Breadcrumb::of(d);
            b.tasks.extend(self.tasks.keys().cloned());
            write_json(&Breadcrumb::path(&d.node), &b, &d.host_netns)?;
        }
        self.steps(d, &plan.steps, "plan", &mut report)?;
        if plan.steps.iter().any(|s| matches!(s, XdpStep::Load { .. })) {
            // Maps reopened from their pins hold what an earlier process wrote, which the plan
            // could not see before the load: one more round removes what is no longer
            // desired (a task that left while no process ran), so applying twice changes
            // nothing. The fast path is loaded now: this round has no load step of its own.
            let o = self.observe(d)?;
            self.steps(d, &super::plan(d, &o)?.steps, "after the load", &mut report)?;
        }
        Ok(report)
    }

    /// Applies `steps` in order, each logged and reported; `round` names the round in the log.
    fn steps(
        &mut self,
        d: &XdpDesired,
        steps: &[XdpStep],
        round: &str,
        report: &mut XdpApplyReport,
    ) -> Result<(), Error> {
        for step in steps {
            self.step(d, step, report)?;
            tracing::info!(node = %d.node, step = %step, round, "xdp mesh step applied");
            report.applied.push(step.to_string());
        }
        Ok(())
    }

    /// Observes, plans and applies until nothing is left to do (at most twice).
    ///
    /// # Errors
    /// As [`XdpMesh::observe`], [`XdpMesh::plan`], [`XdpMesh::apply`].
    pub fn converge(&mut self, d: &XdpDesired) -> Result<XdpApplyReport, Error> {
        let o = self.observe(d)?;
        let p = super::plan(d, &o)?;
        self.apply(d, &p)
    }

    fn fast(&mut self) -> Result<&mut FastPath, Error> {
        let netns = self.host_name.clone();
        self.fast.as_mut().ok_or_else(|| Error::Xdp {
            op: "use the fast path before loading it".into(),
            netns,
            source: Box::new(vipmesh_xdp::Error::ObjectUnavailable {
                reason: "not loaded",
            }),
        })
    }

    fn step(
        &mut self,
        d: &XdpDesired,
        step: &XdpStep,
        report: &mut XdpApplyReport,
    ) -> Result<(), Error> {
        let host = self.host_name.clone();
        match step {
            XdpStep::Load { pin_root } => {
                // bpffs at its usual place, as systemd mounts it (a bare container may not).
                let bpf = Path::new("/sys/fs/bpf");
                if pin_root.starts_with(bpf) {
                    vipmesh_xdp::sys::ensure_bpffs(bpf).map_err(xe("mount bpffs", &host))?;
                }
                std::fs::create_dir_all(pin_root).map_err(|source| Error::System {
                    op: format!("create {}", pin_root.display()),
                    netns: host.clone(),
                    source,
                })?;
                let fp = FastPath::load(&LoadOptions {
                    config: d.config,
                    flow_entries: d.flow_entries,
                    pinning: Pinning::MapsAndLinks {
                        root: pin_root.clone(),
                    },
                })
                .map_err(xe("load", &host))?;
                self.fast = Some(fp);
            }
            XdpStep::SetSysctl { netns, key, value } => {
                let ns = self.ns(netns)?.try_clone().map_err(ne(netns))?;
                // The value replaced is recorded before the write (a kill -9 between the two
                // leaves a record whose value is not ours yet: nothing is put back).
                let mut record = read_record(&d.sysctl_record, &host)?;
                let at = (netns.clone(), key.clone());
                if let Ok(previous) = ns.sysctl_read(key)
                    && previous.trim() != value
                    && !record.contains_key(&at)
                {
                    record.insert(
                        at,
                        SavedSysctl {
                            netns: netns.clone(),
                            key: key.clone(),
                            previous: previous.trim().to_owned(),
                            ours: value.clone(),
                        },
                    );
                    write_record(&d.sysctl_record, &record, &host)?;
                }
                ns.sysctl_write(key, value).map_err(ne(netns))?;
            }
            XdpStep::RestoreSysctl { saved } => {
                self.restore_sysctl(saved)?;
                let mut record = read_record(&d.sysctl_record, &host)?;
                record.remove(&(saved.netns.clone(), saved.key.clone()));
                write_record(&d.sysctl_record, &record, &host)?;
            }
            XdpStep::UpsertService { spec, modes } => {
                let fp = self.fast.as_mut().ok_or_else(|| Error::Xdp {
                    op: format!("upsert {}", spec.key),
                    netns: host.clone(),
                    source: Box::new(vipmesh_xdp::Error::ObjectUnavailable {
                        reason: "not loaded",
                    }),
                })?;
                // The DEVMAP resolves ifindexes in the caller's namespace: the node's.
                self.host
                    .run(|| fp.dataplane().upsert_service_modes(spec, modes))
                    .map_err(ne(&host))?
                    .map_err(xe(format!("upsert {}", spec.key), &host))?;
            }
            XdpStep::RemoveService { key } => {
                self.fast()?
                    .dataplane()
                    .remove_service(key)
                    .map_err(xe(format!("remove {key}"), &host))?;
            }
            XdpStep::SetTaskPort { vip, target } => {
                self.fast()?
                    .dataplane()
                    .set_task_port(*vip, *target)
                    .map_err(xe(format!("task port {vip}"), &host))?;
            }
            XdpStep::RemoveTaskPort { vip } => {
                self.fast()?
                    .dataplane()
                    .remove_task_port(*vip)
                    .map_err(xe(format!("remove task port {vip}"), &host))?;
            }
            XdpStep::AddTaskAddr { netns, addr } | XdpStep::RemoveTaskAddr { netns, addr } => {
                let ns = self.ns(netns)?;
                let rt = Rtnl::open(ns).map_err(ne(netns))?;
                let lo = rt.link_index("lo").map_err(ne(netns))?;
                let len = if addr.is_ipv4() { 32 } else { 128 };
                if matches!(step, XdpStep::AddTaskAddr { .. }) {
                    rt.add_address(lo, *addr, len, VIPMESH_ADDR_PROTO)
                        .map_err(ne(netns))?;
                } else {
                    match rt.delete_address(lo, *addr, len) {
                        Err(e) if !e.is_not_found() => return Err(ne(netns)(e)),
                        _ => {}
                    }
                }
            }
            XdpStep::Attach { at, mode, .. } => {
                let ns = self.ns(&at.netns)?.try_clone().map_err(ne(&at.netns))?;
                let fp = self.fast()?;
                let iface = at.interface.clone();
                let program = at.program;
                let att = ns
                    .run(|| fp.attach(&iface, program, mode.to_xdp()))
                    .map_err(ne(&at.netns))?
                    .map_err(|e| match e {
                        vipmesh_xdp::Error::XdpModeUnsupported { source, .. } => {
                            Error::XdpModeUnsupported {
                                netns: at.netns.clone(),
                                interface: at.interface.clone(),
                                mode: mode.to_string(),
                                reason: source.to_string(),
                            }
                        }
                        vipmesh_xdp::Error::InterfaceNotFound { .. } => {
                            Error::MissingTaskInterface {
                                netns: at.netns.clone(),
                                interface: at.interface.clone(),
                            }
                        }
                        e => xe(format!("attach {at}"), &at.netns)(e),
                    })?;
                if let Some(r) = &att.fallback_reason {
                    report.fallbacks.push((at.interface.clone(), r.clone()));
                }
                self.held.insert(at.clone(), att);
            }
            XdpStep::Detach { at } => {
                if let Some(att) = self.held.remove(at) {
                    self.fast()?
                        .detach(&att)
                        .map_err(xe(format!("detach {at}"), &at.netns))?;
                }
            }
            XdpStep::Unpin { path } => remove_pin(path, &host)?,
        }
        Ok(())
    }

    /// Puts `saved.previous` back if the sysctl still holds our value; a namespace or key
    /// that is gone has nothing to put back.
    fn restore_sysctl(&mut self, saved: &SavedSysctl) -> Result<(), Error> {
        let ns = match self.ns(&saved.netns) {
            Ok(ns) => ns,
            Err(Error::MissingNamespace { .. }) => {
                self.tasks.remove(&saved.netns);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match ns.sysctl_read(&saved.key) {
            Ok(now) if now.trim() == saved.ours => ns
                .sysctl_write(&saved.key, &saved.previous)
                .map_err(ne(&saved.netns)),
            _ => Ok(()),
        }
    }

    /// Removes everything of ours for `d`: detaches and unpins our links (those of a previous
    /// process too), removes our addresses from the tasks' `lo`, puts back the sysctl values
    /// our writes replaced (the tasks' ARP settings, the host veths' `rp_filter`; the host's
    /// forwarding ([`KEPT_SYSCTLS`]) stays on, other dataplanes need it), unloads the programs
    /// and removes the pinned maps. Foreign programs, addresses and links are not touched.
    /// Removing what is absent is success.
    ///
    /// # Errors
    /// [`Error::Xdp`], [`Error::Netns`], [`Error::System`].
    pub fn teardown(self, d: &XdpDesired) -> Result<(), Error> {
        let tasks: BTreeSet<String> = d.tasks.keys().cloned().collect();
        self.teardown_at(&tasks, &d.sysctl_record)?;
        Breadcrumb::remove(&d.node, &d.host_netns)
    }

    /// Tears down the mesh an earlier process applied for node `node`, when this process's
    /// state has none (`ingress.xdp` was removed while no controller ran): what
    /// [`XdpMesh::apply`] recorded under `/run/vipmesh/xdp/<node>/mesh.json` (the host
    /// namespace, the pin root, the sysctl record and the task namespaces, whatever
    /// `pin_root` and `state_dir` were) says what to remove, as [`XdpMesh::teardown`] does.
    /// Returns whether there was one. A mesh applied by a version without that record is not
    /// found.
    ///
    /// # Errors
    /// A record that does not parse ([`Error::System`], naming it); as [`XdpMesh::teardown`].
    pub fn teardown_left(node: &str) -> Result<bool, Error> {
        let Some(b) = Breadcrumb::read(node)? else {
            return Ok(false);
        };
        let host = match open_netns(&b.host_netns) {
            Ok(h) => h,
            Err(Error::MissingNamespace { .. }) => {
                // The node's namespace is gone, and its programs and addresses with it; the
                // pins outlive it.
                tracing::warn!(node, netns = %b.host_netns, "xdp mesh left in a namespace that is gone: removing its pins");
                FastPath::unpin_links(&b.pin_root).map_err(xe("unpin links", &b.host_netns))?;
                FastPath::unpin(&b.pin_root).map_err(xe("unpin maps", &b.host_netns))?;
                let _ = std::fs::remove_dir(&b.pin_root);
                Breadcrumb::remove(node, &b.host_netns)?;
                return Ok(true);
            }
            Err(e) => return Err(e),
        };
        let mesh = XdpMesh {
            host,
            host_name: b.host_netns.clone(),
            tasks: BTreeMap::new(),
            fast: None,
            held: BTreeMap::new(),
            pin_root: b.pin_root.clone(),
        };
        mesh.teardown_at(&b.tasks, &b.sysctl_record)?;
        Breadcrumb::remove(node, &b.host_netns)?;
        Ok(true)
    }

    fn teardown_at(mut self, tasks: &BTreeSet<String>, sysctl_record: &Path) -> Result<(), Error> {
        let host = self.host_name.clone();
        if let Some(fp) = self.fast.as_mut() {
            fp.detach_all().map_err(xe("detach", &host))?;
        }
        self.held.clear();
        FastPath::unpin_links(&self.pin_root).map_err(xe("unpin links", &host))?;
        let mut names = tasks.clone();
        names.extend(self.tasks.keys().cloned());
        for netns in names {
            let Ok(ns) = self.ns(&netns) else { continue };
            let rt = Rtnl::open(ns).map_err(ne(&netns))?;
            let Ok(lo) = rt.link_index("lo") else {
                continue;
            };
            for a in rt.addresses().map_err(ne(&netns))? {
                if a.ifindex == lo && a.proto == Some(VIPMESH_ADDR_PROTO) {
                    match rt.delete_address(lo, a.addr, a.prefix_len) {
                        Err(e) if !e.is_not_found() => return Err(ne(&netns)(e)),
                        _ => {}
                    }
                }
            }
        }
        let record = read_record(sysctl_record, &host)?;
        for saved in record.values() {
            if saved.netns == host && KEPT_SYSCTLS.contains(&saved.key.as_str()) {
                continue;
            }
            self.restore_sysctl(saved)?;
        }
        write_record(sysctl_record, &BTreeMap::new(), &host)?;
        drop(self.fast.take());
        FastPath::unpin(&self.pin_root).map_err(xe("unpin maps", &host))?;
        match std::fs::remove_dir(&self.pin_root) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::System {
                op: format!("remove {}", self.pin_root.display()),
                netns: host,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Programs attached by this process, for inspection.
    pub fn attachments(&self) -> impl Iterator<Item = (&AttachKey, &Attachment)> {
        self.held.iter()
    }

    /// The XDP program of the uplink, for inspection.
    pub const UPLINK_PROGRAM: Program = Program::XdpLb;
}

fn remove_pin(path: &Path, netns: &str) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::System {
            op: format!("unpin {}", path.display()),
            netns: netns.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

type Record = BTreeMap<(String, String), SavedSysctl>;

fn record_error(path: &Path, netns: &str, what: &str, source: std::io::Error) -> Error {
    Error::System {
        op: format!("{what} the sysctl record {}", path.display()),
        netns: netns.to_owned(),
        source,
    }
}

/// The sysctl record at `path`; absent is empty. A file that does not parse is an error
/// naming it (never an empty record: the values in it would be lost).
pub(super) fn read_record(path: &Path, netns: &str) -> Result<Record, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Record::new()),
        Err(e) => return Err(record_error(path, netns, "read", e)),
    };
    let list: Vec<SavedSysctl> = serde_json::from_str(&text).map_err(|e| {
        record_error(
            path,
            netns,
            "parse",
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    Ok(list
        .into_iter()
        .map(|s| ((s.netns.clone(), s.key.clone()), s))
        .collect())
}

/// Replaces the record at `path` atomically (a new file renamed over it); an empty record
/// removes the file.
pub(super) fn write_record(path: &Path, record: &Record, netns: &str) -> Result<(), Error> {
    if record.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(record_error(path, netns, "remove", e))
            }
            _ => Ok(()),
        };
    }
    let list: Vec<&SavedSysctl> = record.values().collect();
    write_json(path, &list, netns)
}

/// Writes `value` as JSON to `path` atomically (a new file renamed over it).
fn write_json(path: &Path, value: &impl serde::Serialize, netns: &str) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| record_error(path, netns, "create", e))?;
    }
    let text = serde_json::to_string_pretty(value).map_err(|e| {
        record_error(
            path,
            netns,
            "encode",
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| record_error(path, netns, "write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| record_error(path, netns, "replace", e))
}

/// Where a node's mesh lives, recorded at a place found from the node's name alone
/// (`/run/vipmesh/xdp/<node>/mesh.json`), so that a process whose state no longer has the
/// mesh can still remove it ([`XdpMesh::teardown_left`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Breadcrumb {
    host_netns: String,
    pin_root: PathBuf,
    sysctl_record: PathBuf,
    /// The task namespaces the mesh has programmed and that may still hold an address of
    /// ours: the desired ones and those the writing process still knew (observe adds the
    /// recorded ones that still exist, so a task that left while no process ran is cleaned
    /// up, and the list does not grow with namespaces that are gone).
    tasks: BTreeSet<String>,
}

impl Breadcrumb {
    fn path(node: &str) -> PathBuf {
        PathBuf::from("/run/vipmesh/xdp")
            .join(node)
            .join("mesh.json")
    }

    fn of(d: &XdpDesired) -> Breadcrumb {
        Breadcrumb {
            host_netns: d.host_netns.clone(),
            pin_root: d.pin_root.clone(),
            sysctl_record: d.sysctl_record.clone(),
            tasks: d.tasks.keys().cloned().collect(),
        }
    }

    fn read(node: &str) -> Result<Option<Breadcrumb>, Error> {
        let path = Breadcrumb::path(node);
        let err = |what: &str, e: std::io::Error| Error::System {
            op: format!("{what} the xdp mesh record {}", path.display()),
            netns: String::new(),
            source: e,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err("read", e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            err(
                "parse",
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }

    fn remove(node: &str, netns: &str) -> Result<(), Error> {
        let path = Breadcrumb::path(node);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(record_error(&path, netns, "remove", e))
            }
            _ => {
                // The directory goes when nothing else is in it (the default state dir).
                if let Some(dir) = path.parent() {
                    let _ = std::fs::remove_dir(dir);
                }
                Ok(())
            }
        }
    }
}
