//! An in-memory node with the kernel's semantics, for logic tests (feature `test-util`):
//! namespaces (by identity, so a re-created namespace is a new one and an old handle keeps
//! reaching the old one, as an fd does), each with `vipmesh-ipvs`'s IPVS [`Fake`], our
//! netfilter chains, our nft tables (an atomic transaction each, ownership by table name and
//! comment, as the kernel and `vipmesh-nft` do), addresses and sysctls. It counts ruleset reads and batches, and injects
//! failures (the next N operations, or at random with a seed) into every backend, to prove
//! that the controller converges.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use vipmesh_ipvs::fake::Fake;
use vipmesh_ipvs::{self as ipvs, IpvsBackend};
use vipmesh_netfilter as nf;

use crate::dataplane::{Host, Kernel, NsHandle, Rules};
use crate::error::Error;
use crate::model::Family;
use crate::plan::{KernelVersion, NsIdentity, ObservedAddr, RulesPlan};
use crate::rules;

/// One fake namespace.
#[derive(Debug, Clone)]
pub struct FakeNs {
    /// IPVS.
    pub ipvs: Fake,
    /// Our chains and jumps per family, as the kernel holds them.
    pub rules: BTreeMap<Family, nf::Observed>,
    /// Addresses.
    pub addrs: BTreeMap<IpAddr, ObservedAddr>,
    /// Interfaces that exist.
    pub interfaces: Vec<String>,
    /// Sysctl values.
    pub sysctls: BTreeMap<String, String>,
    /// Ruleset reads per family.
    pub rule_reads: BTreeMap<Family, usize>,
    /// Netfilter batches run (iptables batches and nft transactions).
    pub batches: usize,
    /// The `inet` tables named like ours, by name (a foreign one has another owner).
    pub nft: BTreeMap<String, vipmesh_nft::Observed>,
    /// nft listings.
    pub nft_reads: usize,
}

impl FakeNs {
    fn new(interfaces: &[&str]) -> FakeNs {
        FakeNs {
            ipvs: Fake::new(),
            rules: [Family::V4, Family::V6]
                .into_iter()
                .map(|f| (f, nf::Observed::empty(rules::nf_family(f))))
                .collect(),
            addrs: BTreeMap::new(),
            interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
            sysctls: BTreeMap::new(),
            rule_reads: BTreeMap::new(),
            batches: 0,
            nft: BTreeMap::new(),
            nft_reads: 0,
        }
    }

    /// Total ruleset reads (both families).
    pub fn reads(&self) -> usize {
        self.rule_reads.values().sum()
    }
}

/// Failure injection shared by every backend of the world.
#[derive(Debug, Clone, Default)]
struct Faults {
    /// Extensions (`-m ipvs`, as [`nf::Plan::extensions`] names them) whose module the fake
    /// kernel cannot load: a batch using one fails its check and its execution.
    missing: std::collections::BTreeSet<String>,
    rules_next: usize,
    host_next: usize,
    random: Option<(u64, u32)>,
}

impl Faults {
    /// xorshift64*: deterministic for a seed, good enough to pick failures.
    fn roll(&mut self) -> bool {
        let Some((state, permille)) = self.random.as_mut() else {
            return false;
        };
        let mut x = *state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *state = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % 1000 < u64::from(*permille)
    }
}

/// The fake node: namespaces by identity, names pointing to identities.
#[derive(Debug, Default)]
pub struct FakeWorld {
    by_ino: BTreeMap<u64, FakeNs>,
    names: BTreeMap<String, u64>,
    next_ino: u64,
    faults: Faults,
    kernel: Option<KernelVersion>,
    /// How many times a namespace was opened.
    pub opens: usize,
    /// The overlay steps run by the incremental path (`Kernel::update_ingress_peers`), as
    /// displayed, and how many times the ingress was wired whole (`wire_ingress`).
    pub peer_steps: Vec<String>,
    /// How many times `wire_ingress` ran.
    pub wirings: usize,
    /// The overlay endpoints (local and remote addresses) of the last `wire_ingress`.
    pub wired: std::collections::BTreeSet<IpAddr>,
}

/// A shared fake world; clones see the same state.
#[derive(Debug, Clone, Default)]
pub struct FakeKernel(Arc<Mutex<FakeWorld>>);

impl FakeKernel {
    /// An empty world on kernel 6.1.
    pub fn new() -> FakeKernel {
        FakeKernel::default()
    }

    /// Locks the world.
    pub fn world(&self) -> MutexGuard<'_, FakeWorld> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates (or re-creates, with a new identity) a namespace with these interfaces.
    pub fn add_namespace(&self, name: &str, interfaces: &[&str]) {
        let mut w = self.world();
        w.next_ino += 1;
        let ino = w.next_ino;
        w.by_ino.insert(ino, FakeNs::new(interfaces));
        w.names.insert(name.to_string(), ino);
    }

    /// Deletes a namespace's name (handles still open keep reaching it, as an fd does).
    pub fn remove_namespace(&self, name: &str) {
        self.world().names.remove(name);
    }

    /// Runs `f` on the namespace the name points to now.
    ///
    /// # Panics
    /// When there is no such namespace (a test bug).
    #[allow(clippy::panic)]
    pub fn with<T>(&self, name: &str, f: impl FnOnce(&mut FakeNs) -> T) -> T {
        let mut w = self.world();
        let Some(ino) = w.names.get(name).copied() else {
            panic!("no fake namespace {name}");
        };
        match w.by_ino.get_mut(&ino) {
            Some(ns) => f(ns),
            None => panic!("no fake namespace {name}"),
        }
    }

    /// The next `n` netfilter batches fail.
    pub fn fail_rules_next(&self, n: usize) {
        self.world().faults.rules_next = n;
    }

    /// The module behind `extension` (`-m ipvs`, `-j MASQUERADE`) cannot be loaded: every
    /// iptables batch using it fails [`Rules::check`] and [`Rules::execute`] with
    /// `MissingExtension`, changing nothing.
    pub fn remove_extension(&self, extension: &str) {
        self.world().faults.missing.insert(extension.to_string());
    }

    /// The next `n` address or sysctl writes fail.
    pub fn fail_host_next(&self, n: usize) {
        self.world().faults.host_next = n;
    }

    /// Every write (IPVS operation, netfilter batch, address, sysctl) fails with probability
    /// `permille`/1000, deterministically for `seed`; `permille` 0 turns it off.
    pub fn random_faults(&self, seed: u64, permille: u32) {
        self.world().faults.random = (permille > 0).then_some((seed | 1, permille));
    }

    /// Sets the kernel version every namespace reports.
    pub fn set_kernel(&self, k: KernelVersion) {
        self.world().kernel = Some(k);
    }
}

/// The kernel's answer to a batch that uses an extension whose module cannot be loaded.
fn missing_extension(
    faults: &Faults,
    netns: &str,
    op: &str,
    plan: &RulesPlan,
) -> Result<(), Error> {
    let RulesPlan::Iptables { diff, .. } = plan else {
        return Ok(());
    };
    let exts = diff.extensions();
    let Some(ext) = exts
        .values()
        .flatten()
        .find(|e| faults.missing.contains(*e))
    else {
        return Ok(());
    };
    let name = ext.split_once(' ').map_or(ext.as_str(), |(_, n)| n);
    Err(Error::Netfilter {
        op: op.to_string(),
        netns: netns.to_string(),
        source: Box::new(nf::Error::MissingExtension {
            tool: "iptables-restore".into(),
            extension: name.to_string(),
            line: None,
            context: String::new(),
            stderr: format!("Couldn't load match `{name}':No such file or directory"),
        }),
    })
}

fn injected(what: &str) -> std::io::Error {
    std::io::Error::other(format!("injected failure: {what}"))
}

/// A backend handle on one fake namespace (by identity).
#[derive(Debug, Clone)]
pub struct FakeHandle {
    world: FakeKernel,
    ino: u64,
    name: String,
}

impl FakeHandle {
    fn ns<T>(
        &self,
        f: impl FnOnce(&mut FakeNs, &mut Faults) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut w = self.world.world();
        let w = &mut *w;
        match w.by_ino.get_mut(&self.ino) {
            Some(ns) => f(ns, &mut w.faults),
            None => Err(Error::MissingNamespace {
                netns: self.name.clone(),
            }),
        }
    }

    fn sys(&self, op: &str) -> Error {
        Error::System {
            op: op.to_string(),
            netns: self.name.clone(),
            source: injected(op),
        }
    }
}

impl IpvsBackend for FakeHandle {
    fn services(&mut self) -> Result<Vec<ipvs::ServiceEntry>, ipvs::Error> {
        let w = self.world.world();
        match w.by_ino.get(&self.ino) {
            Some(ns) => ns.ipvs.clone().services(),
            None => Ok(Vec::new()),
        }
    }

    fn dests(&mut self, service: &ipvs::ServiceKey) -> Result<Vec<ipvs::DestEntry>, ipvs::Error> {
        let mut w = self.world.world();
        match w.by_ino.get_mut(&self.ino) {
            Some(ns) => ns.ipvs.dests(service),
            None => Ok(Vec::new()),
        }
    }

    fn timeouts(&mut self) -> Result<ipvs::Timeouts, ipvs::Error> {
        let w = self.world.world();
        Ok(match w.by_ino.get(&self.ino) {
            Some(ns) => ns.ipvs.timeouts(),
            None => Fake::new().timeouts(),
        })
    }

    fn execute(&mut self, ops: &[ipvs::Op]) -> Vec<Result<(), ipvs::Error>> {
        let mut w = self.world.world();
        let w = &mut *w;
        let Some(ns) = w.by_ino.get_mut(&self.ino) else {
            // A namespace that is gone: the kernel's socket would fail every request.
            let mut f = Fake::new();
            f.fail_next(&vec![libc::ENODEV; ops.len()]);
            return f.execute(ops);
        };
        ops.iter()
            .map(|op| {
                if w.faults.roll() {
                    ns.ipvs.fail_next(&[libc::EIO]);
                }
                ns.ipvs
                    .execute(std::slice::from_ref(op))
                    .pop()
                    .unwrap_or(Ok(()))
            })
            .collect()
    }
}

impl Rules for FakeHandle {
    fn observe(&mut self, family: Family) -> Result<nf::Observed, Error> {
        self.ns(|ns, _| {
            *ns.rule_reads.entry(family).or_default() += 1;
            Ok(ns.rules[&family].clone())
        })
    }

    fn observe_nft(&mut self) -> Result<BTreeMap<String, vipmesh_nft::Observed>, Error> {
        self.ns(|ns, _| {
            ns.nft_reads += 1;
            Ok(ns.nft.clone())
        })
    }

    fn check(&mut self, plan: &RulesPlan) -> Result<(), Error> {
        let name = self.name.clone();
        self.ns(|_, faults| missing_extension(faults, &name, "check", plan))
    }

    fn execute(&mut self, plan: &RulesPlan) -> Result<(), Error> {
        let name = self.name.clone();
        self.ns(|ns, faults| {
            missing_extension(faults, &name, "apply", plan)?;
            let fail = faults.rules_next > 0 || faults.roll();
            faults.rules_next = faults.rules_next.saturating_sub(1);
            let (family, desired, diff) = match plan {
                RulesPlan::Iptables {
                    family,
                    desired,
                    diff,
                } => (*family, desired, diff),
                RulesPlan::Nft {
                    table,
                    desired,
                    diff,
                } => {
                    if fail {
                        return Err(crate::nft_rules::nft_err(
                            "apply",
                            &name,
                            vipmesh_nft::Error::TransactionFailed {
                                netns: name.clone(),
                                line: None,
                                text: String::new(),
                                kernel_error: String::new(),
                                stderr: "injected failure".into(),
                            },
                        ));
                    }
                    return fake_nft_transaction(ns, &name, table, desired.as_deref(), diff);
                }
            };
            if fail {
                return Err(Error::Netfilter {
                    op: "apply".into(),
                    netns: name,
                    source: Box::new(nf::Error::CommandFailed {
                        tool: "iptables-restore".into(),
                        status: "exit status: 1".into(),
                        stderr: "injected failure".into(),
                    }),
                });
            }
            // Kernel semantics of the batch: our chains become exactly the desired ones,
            // provided the batch was made against what the kernel holds.
            let now = &ns.rules[&family];
            let expected = nf::plan(desired, now).map_err(|source| Error::Netfilter {
                op: "plan".into(),
                netns: name.clone(),
                source: Box::new(source),
            })?;
            if expected != *diff {
                return Err(Error::Netfilter {
                    op: "apply".into(),
                    netns: name,
                    source: Box::new(nf::Error::CommandFailed {
                        tool: "iptables-restore".into(),
                        status: "exit status: 1".into(),
                        stderr: "batch made against a stale view (a real restore would fail or misapply)".into(),
                    }),
                });
            }
            ns.rules
                .insert(family, nf::Observed::from_ruleset(desired));
            ns.batches += 1;
            Ok(())
        })
    }
}

/// One nft transaction with the kernel's semantics: all or nothing; a table that exists but is
/// not ours is never written or deleted; the script must be the one `vipmesh-nft` plans against
/// what the kernel holds (an element deleted that is absent, or a table created over an
/// existing one, fails the whole transaction, as `nft -f` does).
fn fake_nft_transaction(
    ns: &mut FakeNs,
    netns: &str,
    table: &str,
    desired: Option<&vipmesh_nft::Table>,
    diff: &vipmesh_nft::Plan,
) -> Result<(), Error> {
    let err = |source| crate::nft_rules::nft_err("apply", netns, source);
    let current = ns.nft.get(table);
    if let Some(c) = current
        && c.owner != vipmesh_nft::Ownership::Ours
    {
        return Err(err(vipmesh_nft::Error::ForeignTable {
            family: vipmesh_nft::FAMILY,
            table: table.to_string(),
            netns: netns.to_string(),
        }));
    }
    let expected = match desired {
        Some(t) => vipmesh_nft::plan(t, current).map_err(err)?,
        None => vipmesh_nft::plan_teardown(current).map_err(err)?,
    };
    if expected != *diff {
        return Err(err(vipmesh_nft::Error::TransactionFailed {
            netns: netns.to_string(),
            line: None,
            text: String::new(),
            kernel_error: "No such file or directory".into(),
            stderr: "transaction made against a stale view (the kernel refuses it whole)".into(),
        }));
    }
    match diff.apply_to(current.map(|c| &c.table)) {
        Some(t) => {
            ns.nft.insert(
                table.to_string(),
                vipmesh_nft::Observed {
                    table: t,
                    owner: vipmesh_nft::Ownership::Ours,
                    unparsed: Vec::new(),
                },
            );
        }
        None => {
            ns.nft.remove(table);
        }
    }
    ns.batches += 1;
    Ok(())
}

impl Host for FakeHandle {
    fn addresses(&mut self) -> Result<BTreeMap<IpAddr, ObservedAddr>, Error> {
        self.ns(|ns, _| Ok(ns.addrs.clone()))
    }

    fn add_address(&mut self, interface: &str, addr: IpAddr) -> Result<(), Error> {
        let err = self.sys("address add");
        let name = self.name.clone();
        self.ns(|ns, f| {
            let fail = f.host_next > 0 || f.roll();
            f.host_next = f.host_next.saturating_sub(1);
            if fail {
                return Err(err);
            }
            if !ns.interfaces.iter().any(|i| i == interface) {
                return Err(Error::MissingInterface {
                    netns: name,
                    interface: interface.to_string(),
                });
            }
            ns.addrs.insert(
                addr,
                ObservedAddr {
                    interface: interface.to_string(),
                    prefix: crate::plan::host_prefix(addr),
                    owned: true,
                },
            );
            Ok(())
        })
    }

    fn del_address(&mut self, interface: &str, addr: IpAddr, _prefix: u8) -> Result<(), Error> {
        let err = self.sys("address del");
        self.ns(|ns, f| {
            let fail = f.host_next > 0 || f.roll();
            f.host_next = f.host_next.saturating_sub(1);
            if fail {
                return Err(err);
            }
            if ns
                .addrs
                .get(&addr)
                .is_some_and(|a| a.interface == interface)
            {
                ns.addrs.remove(&addr);
            }
            Ok(())
        })
    }

    fn sysctls(&mut self, keys: &[String]) -> Result<BTreeMap<String, String>, Error> {
        self.ns(|ns, _| {
            Ok(keys
                .iter()
                .filter_map(|k| ns.sysctls.get(k).map(|v| (k.clone(), v.clone())))
                .collect())
        })
    }

    fn set_sysctl(&mut self, key: &str, value: &str) -> Result<(), Error> {
        let err = self.sys("sysctl");
        self.ns(|ns, f| {
            let fail = f.host_next > 0 || f.roll();
            f.host_next = f.host_next.saturating_sub(1);
            if fail {
                return Err(err);
            }
            ns.sysctls.insert(key.to_string(), value.to_string());
            Ok(())
        })
    }

    fn kernel(&mut self) -> Result<KernelVersion, Error> {
        Ok(self
            .world
            .world()
            .kernel
            .unwrap_or(KernelVersion { major: 6, minor: 1 }))
    }
}

impl Kernel for FakeKernel {
    type Ipvs = FakeHandle;
    type Rules = FakeHandle;
    type Host = FakeHandle;

    fn open(&mut self, netns: &str) -> Result<NsHandle<FakeHandle, FakeHandle, FakeHandle>, Error> {
        let mut w = self.world();
        let Some(ino) = w.names.get(netns).copied() else {
            return Err(Error::MissingNamespace {
                netns: netns.to_string(),
            });
        };
        w.opens += 1;
        drop(w);
        let h = FakeHandle {
            world: self.clone(),
            ino,
            name: netns.to_string(),
        };
        Ok(NsHandle {
            ipvs: h.clone(),
            rules: h.clone(),
            host: h,
            identity: Some(NsIdentity { dev: 1, ino }),
        })
    }

    fn identity(&mut self, netns: &str) -> Result<Option<NsIdentity>, Error> {
        match self.world().names.get(netns) {
            Some(ino) => Ok(Some(NsIdentity { dev: 1, ino: *ino })),
            None => Err(Error::MissingNamespace {
                netns: netns.to_string(),
            }),
        }
    }

    /// The fake wiring: the sandbox namespace is created (with `eth0`, `eth1`); the host
    /// namespace must exist; a missing task namespace is an error naming it, after the rest
    /// is wired (as the real wiring does).
    fn wire_ingress(&mut self, ingress: &crate::ingress::Ingress) -> Result<Vec<String>, Error> {
        self.world().wirings += 1;
        let spec = crate::ingress::overlay_spec(ingress);
        self.world().wired = spec
            .local
            .iter()
            .flat_map(|l| std::iter::once(l.addr).chain(l.extra_addrs.iter().copied()))
            .chain(
                spec.remote
                    .iter()
                    .flat_map(|r| std::iter::once(r.addr).chain(r.extra_addrs.iter().copied())),
            )
            .collect();
        if !self.world().names.contains_key(&ingress.host_netns) {
            return Err(Error::MissingNamespace {
                netns: ingress.host_netns.clone(),
            });
        }
        let missing = ingress
            .local_task_namespaces()
            .into_iter()
            .find(|ns| !self.world().names.contains_key(*ns));
        let mut done = Vec::new();
        if !self.world().names.contains_key(&ingress.sandbox_netns) {
            self.add_namespace(&ingress.sandbox_netns, &["lo", "eth0", "eth1"]);
            done.push(format!("namespace {} created", ingress.sandbox_netns));
        }
        match missing {
            Some(ns) => Err(Error::MissingNamespace {
                netns: ns.to_string(),
            }),
            None => Ok(done),
        }
    }

    fn reserve_ports(
        &mut self,
        _netns: &str,
        _ports: &std::collections::BTreeSet<(Family, crate::model::Protocol, u16)>,
    ) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }

    fn update_ingress_peers(
        &mut self,
        _ingress: &crate::ingress::Ingress,
        steps: &vipmesh_overlay::Plan,
    ) -> Result<(), Error> {
        self.world()
            .peer_steps
            .extend(steps.steps.iter().map(ToString::to_string));
        Ok(())
    }

    fn unwire_ingress(&mut self, ingress: &crate::ingress::Ingress) -> Result<Vec<String>, Error> {
        self.remove_namespace(&ingress.sandbox_netns);
        Ok(vec![format!("namespace {} deleted", ingress.sandbox_netns)])
    }
}
