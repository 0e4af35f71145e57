//! The kernel side, behind small traits so the controller can run on fakes:
//! [`vipmesh_ipvs::IpvsBackend`] for IPVS, [`Rules`] for our netfilter chains and [`Host`] for
//! addresses, sysctls and the kernel version, bundled per namespace in an [`NsHandle`] that a
//! [`Kernel`] opens.
//!
//! The real implementations share ONE handle per namespace (an fd opened once,
//! [`vipmesh_netns::Netns`]): the IPVS generic-netlink socket is created inside it,
//! `iptables-restore`/`iptables-save` are spawned from a thread that entered it, addresses go
//! through rtnetlink on a socket opened inside it
//! ([`rtnetlink(7)`](https://man7.org/linux/man-pages/man7/rtnetlink.7.html)), and sysctls are
//! read and written from a thread inside it
//! ([`proc_sys_net(5)`](https://man7.org/linux/man-pages/man5/proc_sys_net.5.html)).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vipmesh_ipvs::{self as ipvs, IpvsBackend};
use vipmesh_netfilter as nf;
use vipmesh_netns::Netns;

use crate::error::Error;
use crate::model::Family;
use crate::plan::{KernelVersion, NsIdentity, ObservedAddr, RulesPlan};
use crate::rules;

/// Our firewall objects in one namespace, on either backend: iptables chains (per family) and
/// nft tables. A [`RulesPlan`] is one atomic batch of either kind.
pub trait Rules {
    /// Our chains and tagged jumps of `family` as they are now (foreign content excluded):
    /// one ruleset read.
    ///
    /// # Errors
    /// [`Error::Netfilter`].
    fn observe(&mut self, family: Family) -> Result<nf::Observed, Error>;
    /// The `inet` tables named like ours (`vipmesh-<id>`), by name, with their ownership as
    /// read.
    ///
    /// # Errors
    /// [`Error::Nft`] (`nft` missing or older than 1.0, no nf_tables, a listing that does not
    /// parse).
    fn observe_nft(&mut self) -> Result<BTreeMap<String, vipmesh_nft::Observed>, Error>;
    /// Runs exactly this batch (one atomic `iptables-restore`, or one `nft -f` transaction),
    /// after which the kernel holds its `desired`.
    ///
    /// # Errors
    /// [`Error::Netfilter`] or [`Error::Nft`]; nothing of a failed batch is applied.
    fn execute(&mut self, plan: &RulesPlan) -> Result<(), Error>;
    /// Checks, writing nothing, that the kernel accepts this batch: that every module its
    /// rules need can be loaded. `iptables-restore` commits table by table, so without this a
    /// batch failing in its second table leaves the first committed; the controller checks
    /// every batch before its first write of a sync.
    ///
    /// # Errors
    /// As [`execute`](Rules::execute) (a missing module: [`Error::Netfilter`] with
    /// `vipmesh_netfilter::Error::MissingExtension`, or [`Error::Nft`]).
    fn check(&mut self, plan: &RulesPlan) -> Result<(), Error>;
}

/// Addresses, sysctls and the kernel version of one namespace.
pub trait Host {
    /// Every address of the namespace.
    ///
    /// # Errors
    /// [`Error::System`] (errno kept).
    fn addresses(&mut self) -> Result<BTreeMap<IpAddr, ObservedAddr>, Error>;
    /// Adds a host address (/32 or /128) to `interface`, tagged as ours; present is success.
    ///
    /// # Errors
    /// [`Error::System`] (errno kept).
    fn add_address(&mut self, interface: &str, addr: IpAddr) -> Result<(), Error>;
    /// Removes an address; absent is success.
    ///
    /// # Errors
    /// [`Error::System`] (errno kept).
    fn del_address(&mut self, interface: &str, addr: IpAddr, prefix: u8) -> Result<(), Error>;
    /// Reads sysctls (dotted keys); keys that do not exist are left out.
    ///
    /// # Errors
    /// [`Error::System`] when the namespace cannot be entered or a key cannot be read for
    /// another reason than its absence.
    fn sysctls(&mut self, keys: &[String]) -> Result<BTreeMap<String, String>, Error>;
    /// Writes a sysctl.
    ///
    /// # Errors
    /// [`Error::System`].
    fn set_sysctl(&mut self, key: &str, value: &str) -> Result<(), Error>;
    /// The running kernel.
    ///
    /// # Errors
    /// [`Error::System`] or [`Error::Invalid`] when the release cannot be read or parsed.
    fn kernel(&mut self) -> Result<KernelVersion, Error>;
}

/// The three backends of one namespace, opened together through one namespace handle.
#[derive(Debug)]
pub struct NsHandle<I, R, H> {
    /// IPVS.
    pub ipvs: I,
    /// Our netfilter chains.
    pub rules: R,
    /// Addresses, sysctls, kernel version.
    pub host: H,
    /// Which namespace this handle points to (None where unknown, e.g. fakes without one).
    pub identity: Option<NsIdentity>,
}

/// Opens namespaces: the kernel, or a fake world.
pub trait Kernel {
    /// IPVS backend.
    type Ipvs: IpvsBackend + std::fmt::Debug;
    /// Rules backend.
    type Rules: Rules + std::fmt::Debug;
    /// Host backend.
    type Host: Host + std::fmt::Debug;
    /// Opens a namespace by name (under `/run/netns`) or path.
    ///
    /// # Errors
    /// [`Error::MissingNamespace`], [`Error::Netns`], [`Error::Ipvs`] (`ip_vs` missing, no
    /// CAP_NET_ADMIN).
    #[allow(clippy::type_complexity)]
    fn open(&mut self, netns: &str)
    -> Result<NsHandle<Self::Ipvs, Self::Rules, Self::Host>, Error>;
    /// The identity of the namespace the name points to now (a re-created namespace has a new
    /// one).
    ///
    /// # Errors
    /// [`Error::MissingNamespace`].
    fn identity(&mut self, netns: &str) -> Result<Option<NsIdentity>, Error>;
    /// Builds (idempotently) the links of the ingress mesh: the sandbox namespace, the overlay
    /// (`vipmesh-overlay`), the gateway bridge and the sandbox's leg and default route on it.
    /// Returns what it changed (empty when everything was in place).
    ///
    /// # Errors
    /// [`Error::Overlay`], [`Error::Netns`] (errno kept), [`Error::MissingNamespace`] for a
    /// host or task namespace that does not exist.
    fn wire_ingress(&mut self, ingress: &crate::ingress::Ingress) -> Result<Vec<String>, Error>;
    /// Holds a bound socket for each published port in `netns` (and releases the ports no
    /// longer listed), as Docker does, so no local process can take a published port
    /// silently. Returns what it changed.
    ///
    /// # Errors
    /// [`Error::PortInUse`] naming the port a local process already holds (the others are
    /// still reserved), [`Error::Netns`].
    fn reserve_ports(
        &mut self,
        netns: &str,
        ports: &std::collections::BTreeSet<(Family, crate::model::Protocol, u16)>,
    ) -> Result<Vec<String>, Error>;
    /// Removes what [`Kernel::wire_ingress`] built, and nothing else.
    ///
    /// # Errors
    /// As [`Kernel::wire_ingress`].
    fn unwire_ingress(&mut self, ingress: &crate::ingress::Ingress) -> Result<Vec<String>, Error>;
    /// Runs the overlay steps of remote endpoints that came or went
    /// ([`crate::ingress::peer_steps`]), without observing the overlay: the incremental path
    /// of a change confined to tasks on other nodes.
    ///
    /// # Errors
    /// [`Error::Overlay`] naming the failed step; [`Error::MissingNamespace`] for the host.
    fn update_ingress_peers(
        &mut self,
        ingress: &crate::ingress::Ingress,
        steps: &vipmesh_overlay::Plan,
    ) -> Result<(), Error>;
}

/// Resolves a namespace given as a name under `/run/netns` or an absolute path.
pub fn netns_path(netns: &str) -> PathBuf {
    if netns.starts_with('/') {
        PathBuf::from(netns)
    } else {
        Path::new(vipmesh_netns::NETNS_RUN_DIR).join(netns)
    }
}

/// Opens a namespace.
///
/// # Errors
/// [`Error::MissingNamespace`] when it does not exist, [`Error::Netns`] otherwise.
pub fn open_netns(netns: &str) -> Result<Netns, Error> {
    Netns::from_path(netns_path(netns)).map_err(|source| {
        if source.is_not_found() {
            Error::MissingNamespace {
                netns: netns.to_string(),
            }
        } else {
            Error::Netns {
                netns: netns.to_string(),
                source,
            }
        }
    })
}

fn path_identity(netns: &str) -> Result<Option<NsIdentity>, Error> {
    match std::fs::metadata(netns_path(netns)) {
        Ok(m) => Ok(Some(NsIdentity {
            dev: m.dev(),
            ino: m.ino(),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::MissingNamespace {
            netns: netns.to_string(),
        }),
        Err(source) => Err(Error::System {
            op: "stat".into(),
            netns: netns.to_string(),
            source,
        }),
    }
}

/// The real kernel. It holds the sockets that reserve published ports: one descriptor per
/// published port and family, so before the first reservation it raises the soft
/// `RLIMIT_NOFILE` to the hard limit (as Go's runtime does for every program; the usual soft
/// limit of 1024 would otherwise be spent by 1000 published ports). See
/// [`getrlimit(2)`](https://man7.org/linux/man-pages/man2/getrlimit.2.html).
#[derive(Debug, Default)]
pub struct RealKernel {
    nofile_raised: bool,
    reserved: BTreeMap<(String, Family, crate::model::Protocol, u16), std::os::fd::OwnedFd>,
}

/// The backends of a namespace on the real kernel.
pub type RealNs = NsHandle<ipvs::Client, KernelRules, KernelHost>;

impl Kernel for RealKernel {
    type Ipvs = ipvs::Client;
    type Rules = KernelRules;
    type Host = KernelHost;

    fn open(&mut self, netns: &str) -> Result<RealNs, Error> {
        // The identity is taken before opening: a namespace replaced in between makes the
        // next check see a difference and reopen, never the other way round.
        let identity = path_identity(netns)?;
        let ns = Arc::new(open_netns(netns)?);
        let client = ipvs::Client::open_in(&ns).map_err(|source| Error::Ipvs {
            op: "open".into(),
            netns: netns.to_string(),
            source: Box::new(source),
        })?;
        Ok(NsHandle {
            ipvs: client,
            rules: KernelRules::new(netns, ns.clone()),
            host: KernelHost::new(netns, ns),
            identity,
        })
    }

    fn identity(&mut self, netns: &str) -> Result<Option<NsIdentity>, Error> {
        path_identity(netns)
    }

    fn wire_ingress(&mut self, ingress: &crate::ingress::Ingress) -> Result<Vec<String>, Error> {
        crate::wire::wire(ingress)
    }

    fn update_ingress_peers(
        &mut self,
        ingress: &crate::ingress::Ingress,
        steps: &vipmesh_overlay::Plan,
    ) -> Result<(), Error> {
        let host = open_netns(&ingress.host_netns)?;
        vipmesh_overlay::apply(&host, steps)
            .map(|_| ())
            .map_err(|source| Error::Overlay {
                source: Box::new(source),
            })
    }

    fn unwire_ingress(&mut self, ingress: &crate::ingress::Ingress) -> Result<Vec<String>, Error> {
        let host = ingress.host_netns.clone();
        self.reserved.retain(|(ns, ..), _| *ns != host);
        crate::wire::unwire(ingress)
    }

    fn reserve_ports(
        &mut self,
        netns: &str,
        ports: &std::collections::BTreeSet<(Family, crate::model::Protocol, u16)>,
    ) -> Result<Vec<String>, Error> {
        let mut done = Vec::new();
        if !self.nofile_raised {
            self.nofile_raised = true;
            raise_nofile();
        }
        self.reserved.retain(|(ns, f, p, n), _| {
            let keep = ns != netns || ports.contains(&(*f, *p, *n));
            if !keep {
                done.push(format!("released {p}/{n} ({f})"));
            }
            keep
        });
        let mut first_err = None;
        for (f, p, n) in ports {
            let key = (netns.to_string(), *f, *p, *n);
            if self.reserved.contains_key(&key) {
                continue;
            }
            let ns = open_netns(netns)?;
            let (family, proto, port) = (*f, *p, *n);
            let res = ns
                .run(move || crate::wire::bind_port(family, proto, port))
                .map_err(|source| Error::Netns {
                    netns: netns.to_string(),
                    source,
                })?;
            match res {
                Ok(fd) => {
                    self.reserved.insert(key, fd);
                    done.push(format!("reserved {p}/{n} ({f})"));
                }
                Err(source) => {
                    if first_err.is_none() {
                        first_err = Some(Error::PortInUse {
                            netns: netns.to_string(),
                            family,
                            protocol: proto,
                            port,
                            source,
                        });
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (best effort: a failure is logged).
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid rlimit passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur >= lim.rlim_max {
        return;
    }
    let want = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads the valid rlimit passed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const want) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "raising RLIMIT_NOFILE for the published-port reservations"
        );
    } else {
        tracing::debug!(
            from = lim.rlim_cur,
            to = lim.rlim_max,
            "RLIMIT_NOFILE raised"
        );
    }
}

/// [`Rules`] on the kernel, through `vipmesh-netfilter` and `vipmesh-nft`, in the namespace's
/// handle.
#[derive(Debug)]
pub struct KernelRules {
    applier: nf::Applier,
    nft: vipmesh_nft::Nft,
    netns: String,
}

impl KernelRules {
    /// Rules in the namespace behind `ns` (named `netns` in errors). `nft` comes from `PATH`,
    /// or from `VIPMESH_NFT` when set (tests use it for a missing or old `nft`).
    pub fn new(netns: &str, ns: Arc<Netns>) -> KernelRules {
        let mut nft = vipmesh_nft::Nft::new(ns.clone());
        if let Some(tool) = std::env::var_os("VIPMESH_NFT") {
            nft = nft.with_tool(tool);
        }
        KernelRules {
            applier: nf::Applier::new(nf::NetnsTarget::Handle(ns)).with_verify(nf::Verify::Skip),
            nft,
            netns: netns.to_string(),
        }
    }

    /// Runs nft transactions with `runner` (default: the `nft` process;
    /// [`vipmesh_nft::Runner::Library`] keeps libnftables loaded, ~10 ms less per transaction).
    pub fn with_nft_runner(mut self, runner: vipmesh_nft::Runner) -> KernelRules {
        self.nft = self.nft.with_runner(runner);
        self
    }

    fn nft_err(&self, op: &str, source: vipmesh_nft::Error) -> Error {
        crate::nft_rules::nft_err(op, &self.netns, source)
    }

    fn err(&self, op: &str, source: nf::Error) -> Error {
        Error::Netfilter {
            op: op.to_string(),
            netns: self.netns.clone(),
            source: Box::new(source),
        }
    }
}

impl Rules for KernelRules {
    fn observe(&mut self, family: Family) -> Result<nf::Observed, Error> {
        self.applier
            .observe(rules::nf_family(family))
            .map_err(|e| self.err("observe", e))
    }

    fn observe_nft(&mut self) -> Result<BTreeMap<String, vipmesh_nft::Observed>, Error> {
        let mut out = BTreeMap::new();
        let ids = self
            .nft
            .list_tables()
            .map_err(|e| self.nft_err("list tables", e))?;
        for id in ids {
            if let Some(o) = self
                .nft
                .observe(&id)
                .map_err(|e| self.nft_err("observe", e))?
            {
                out.insert(id.table_name(), o);
            }
        }
        Ok(out)
    }

    fn execute(&mut self, plan: &RulesPlan) -> Result<(), Error> {
        match plan {
            RulesPlan::Iptables { diff, .. } => {
                self.applier.execute(diff).map_err(|e| self.err("apply", e))
            }
            RulesPlan::Nft { diff, .. } => {
                self.nft.execute(diff).map_err(|e| self.nft_err("apply", e))
            }
        }
    }

    fn check(&mut self, plan: &RulesPlan) -> Result<(), Error> {
        match plan {
            RulesPlan::Iptables { diff, .. } => {
                self.applier.check(diff).map_err(|e| self.err("check", e))
            }
            RulesPlan::Nft { diff, .. } => {
                self.nft.check(diff).map_err(|e| self.nft_err("check", e))
            }
        }
    }
}

/// [`Host`] on the kernel, inside one namespace.
#[derive(Debug)]
pub struct KernelHost {
    ns: Arc<Netns>,
    name: String,
    link: Option<vipmesh_netns::rtnl::Rtnl>,
}

impl KernelHost {
    /// The host side of the namespace behind `ns` (named `netns` in errors).
    pub fn new(netns: &str, ns: Arc<Netns>) -> KernelHost {
        KernelHost {
            ns,
            name: netns.to_string(),
            link: None,
        }
    }

    fn sys(&self, op: String, source: std::io::Error) -> Error {
        Error::System {
            op,
            netns: self.name.clone(),
            source,
        }
    }

    fn rtnl(&mut self) -> Result<&mut vipmesh_netns::rtnl::Rtnl, Error> {
        if self.link.is_none() {
            let r = vipmesh_netns::rtnl::Rtnl::open(&self.ns).map_err(|source| Error::Netns {
                netns: self.name.clone(),
                source,
            })?;
            self.link = Some(r);
        }
        let name = self.name.clone();
        self.link.as_mut().ok_or_else(|| Error::System {
            op: "rtnetlink".into(),
            netns: name,
            source: std::io::Error::other("no rtnetlink socket"),
        })
    }
}

impl Host for KernelHost {
    fn addresses(&mut self) -> Result<BTreeMap<IpAddr, ObservedAddr>, Error> {
        let name = self.name.clone();
        let r = self.rtnl()?;
        let links = r.links().map_err(|source| Error::Netns {
            netns: name.clone(),
            source,
        })?;
        let addrs = r.addresses().map_err(|source| Error::Netns {
            netns: name.clone(),
            source,
        })?;
        let by_index: BTreeMap<u32, String> =
            links.into_iter().map(|l| (l.index, l.name)).collect();
        Ok(addrs
            .into_iter()
            .filter_map(|a| {
                Some((
                    a.addr,
                    ObservedAddr {
                        interface: by_index.get(&a.ifindex)?.clone(),
                        prefix: a.prefix_len,
                        owned: a.proto == Some(vipmesh_netns::rtnl::VIPMESH_ADDR_PROTO),
                    },
                ))
            })
            .collect())
    }

    fn add_address(&mut self, interface: &str, addr: IpAddr) -> Result<(), Error> {
        let name = self.name.clone();
        let r = self.rtnl()?;
        let wrap = |source| Error::Netns {
            netns: name.clone(),
            source,
        };
        let idx = match r.link_index(interface) {
            Ok(i) => i,
            Err(e) if e.is_not_found() => {
                return Err(Error::MissingInterface {
                    netns: name.clone(),
                    interface: interface.to_string(),
                });
            }
            Err(e) => return Err(wrap(e)),
        };
        r.add_address(
            idx,
            addr,
            crate::plan::host_prefix(addr),
            vipmesh_netns::rtnl::VIPMESH_ADDR_PROTO,
        )
        .map_err(wrap)
    }

    fn del_address(&mut self, interface: &str, addr: IpAddr, prefix: u8) -> Result<(), Error> {
        let name = self.name.clone();
        let r = self.rtnl()?;
        let wrap = |source| Error::Netns {
            netns: name.clone(),
            source,
        };
        let idx = match r.link_index(interface) {
            Ok(i) => i,
            // The interface is gone, and its addresses with it.
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(wrap(e)),
        };
        match r.delete_address(idx, addr, prefix) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(wrap(e)),
        }
    }

    fn sysctls(&mut self, keys: &[String]) -> Result<BTreeMap<String, String>, Error> {
        let keys = keys.to_vec();
        let res = self
            .ns
            .run(move || {
                let mut out = BTreeMap::new();
                for k in keys {
                    let p = format!("/proc/sys/{}", k.replace('.', "/"));
                    match std::fs::read_to_string(&p) {
                        Ok(v) => {
                            out.insert(k, v.trim().to_string());
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err((k, e)),
                    }
                }
                Ok(out)
            })
            .map_err(|source| Error::Netns {
                netns: self.name.clone(),
                source,
            })?;
        res.map_err(|(k, e)| self.sys(format!("read sysctl {k}"), e))
    }

    fn set_sysctl(&mut self, key: &str, value: &str) -> Result<(), Error> {
        let p = format!("/proc/sys/{}", key.replace('.', "/"));
        let v = value.to_string();
        let res = self
            .ns
            .run(move || std::fs::write(&p, v))
            .map_err(|source| Error::Netns {
                netns: self.name.clone(),
                source,
            })?;
        res.map_err(|e| self.sys(format!("sysctl {key}={value}"), e))
    }

    fn kernel(&mut self) -> Result<KernelVersion, Error> {
        let s = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_err(|e| self.sys("read /proc/sys/kernel/osrelease".into(), e))?;
        KernelVersion::parse(&s)
    }
}
