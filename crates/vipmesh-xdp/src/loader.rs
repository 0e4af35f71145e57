//! Loading, attaching and detaching the programs (aya 0.14), pinning, and test runs.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::programs::{
    ProgramError, SchedClassifier, TestRun as _, TestRunOptions, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachType},
    xdp::XdpLink,
};

use crate::{Config, Dataplane, Error, maps::KernelMaps, sys};

/// The eBPF object compiled by `build.rs` (empty when clang was missing).
pub(crate) const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vipmesh.o"));

/// The programs in the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Program {
    /// `xdp_lb`: XDP on the node's uplink.
    XdpLb,
    /// `xdp_pass`: returns `XDP_PASS`; the benchmark baseline and the NAPI enabler that a veth
    /// redirect target needs on its peer.
    XdpPass,
    /// `tc_rev`: tc ingress on the node-side veth of a task (NAT reverse path).
    TcRev,
    /// `tc_decap`: tc ingress in the task (encap mode decap + port translation).
    TcDecap,
    /// `tc_egress`: tc egress in the task (encap mode reply port translation).
    TcEgress,
}

impl Program {
    /// The function name in the object.
    pub const fn name(self) -> &'static str {
        match self {
            Program::XdpLb => "xdp_lb",
            Program::XdpPass => "xdp_pass",
            Program::TcRev => "tc_rev",
            Program::TcDecap => "tc_decap",
            Program::TcEgress => "tc_egress",
        }
    }

    const ALL: [Program; 5] = [
        Program::XdpLb,
        Program::XdpPass,
        Program::TcRev,
        Program::TcDecap,
        Program::TcEgress,
    ];

    const fn is_xdp(self) -> bool {
        matches!(self, Program::XdpLb | Program::XdpPass)
    }
}

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic (skb) mode; the result says which.
    Auto,
    /// Native mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
    /// Hardware offload only.
    Offload,
}

/// What an attach did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The program.
    pub program: Program,
    /// The interface name.
    pub interface: String,
    /// For XDP: the mode in effect (never `Auto`).
    pub mode: Option<AttachMode>,
    /// For `AttachMode::Auto`: why native mode was refused, when it was.
    pub fallback_reason: Option<String>,
    /// The link's pin, with [`Pinning::MapsAndLinks`].
    pub pinned: Option<PathBuf>,
    /// Whether an existing pinned link was taken over (its program atomically replaced)
    /// instead of attaching anew; `mode` is then `None` (the link keeps its mode).
    pub reused_pin: bool,
}

/// Where maps are pinned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pinning {
    /// Nothing is pinned: everything goes away with the [`FastPath`].
    None,
    /// Maps are pinned (and reused when already pinned) under `root/vipmesh/`, so that a
    /// restarted process keeps the flow table. `root` is bpffs, mounted if needed.
    Maps {
        /// The bpffs mount point, normally `/sys/fs/bpf`.
        root: PathBuf,
    },
    /// Maps as in [`Pinning::Maps`], and every attachment's bpf_link too
    /// (`root/vipmesh/link_<program>_<netns inode>_<ifindex>`): the programs stay attached when the process
    /// exits, and the next process's [`FastPath::attach`] atomically swaps its own program into
    /// the pinned link, so traffic is never left without the fast path. [`FastPath::detach`]
    /// removes the pin.
    MapsAndLinks {
        /// The bpffs mount point, normally `/sys/fs/bpf`.
        root: PathBuf,
    },
}

impl Pinning {
    fn root(&self) -> Option<&Path> {
        match self {
            Pinning::None => None,
            Pinning::Maps { root } | Pinning::MapsAndLinks { root } => Some(root),
        }
    }
}

/// Options for [`FastPath::load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Dataplane configuration.
    pub config: Config,
    /// Capacity of the LRU flow table (both directions of a flow share one entry).
    pub flow_entries: u32,
    /// Pinning.
    pub pinning: Pinning,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            config: Config::default(),
            flow_entries: crate::abi::FLOW_ENTRIES,
            pinning: Pinning::None,
        }
    }
}

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's return value (`XDP_*` or `TC_ACT_*`).
    pub verdict: u32,
    /// The output packet.
    pub data: Vec<u8>,
    /// Average duration per run, as the kernel measured it.
    pub duration: Duration,
}

/// XDP verdicts.
pub mod verdict {
    /// `XDP_ABORTED`.
    pub const XDP_ABORTED: u32 = 0;
    /// `XDP_DROP`.
    pub const XDP_DROP: u32 = 1;
    /// `XDP_PASS`.
    pub const XDP_PASS: u32 = 2;
    /// `XDP_TX`.
    pub const XDP_TX: u32 = 3;
    /// `XDP_REDIRECT`.
    pub const XDP_REDIRECT: u32 = 4;
    /// `TC_ACT_OK`.
    pub const TC_ACT_OK: u32 = 0;
    /// `TC_ACT_SHOT`.
    pub const TC_ACT_SHOT: u32 = 2;
    /// `TC_ACT_REDIRECT`.
    pub const TC_ACT_REDIRECT: u32 = 7;
}

/// The loaded fast path: programs, maps and the [`Dataplane`] that drives them.
///
/// Dropping it detaches every program it attached and frees every map that is not pinned.
///
/// # Examples
///
/// ```no_run
/// use vipmesh_xdp::{AttachMode, FastPath, LoadOptions};
///
/// let mut fp = FastPath::load(&LoadOptions::default())?;
/// let att = fp.attach("eth0", vipmesh_xdp::Program::XdpLb, AttachMode::Auto)?;
/// println!("attached in {:?} mode", att.mode);
/// # Ok::<(), vipmesh_xdp::Error>(())
/// ```
#[derive(Debug)]
pub struct FastPath {
    ebpf: aya::Ebpf,
    dataplane: Dataplane<KernelMaps>,
    links: Vec<(Attachment, LinkId)>,
    link_dir: Option<PathBuf>,
}

#[derive(Debug)]
enum LinkId {
    Xdp(aya::programs::xdp::XdpLinkId),
    Tc(aya::programs::tc::SchedClassifierLinkId),
}

/// Pins an XDP or tc link at `path` and gives it back as the same kind of link, to be handed
/// back to its program ([bpf_link pinning](https://docs.kernel.org/bpf/bpf_links.html)).
fn pin_link<L>(link: L, path: &Path) -> Result<L, Error>
where
    FdLink: TryFrom<L>,
    L: TryFrom<FdLink>,
    <FdLink as TryFrom<L>>::Error: std::error::Error + Send + Sync + 'static,
    <L as TryFrom<FdLink>>::Error: std::error::Error + Send + Sync + 'static,
{
    let err = |op: &'static str, e: Box<dyn std::error::Error + Send + Sync>| Error::LinkPin {
        op,
        path: path.to_owned(),
        source: e,
    };
    let fd = FdLink::try_from(link).map_err(|e| err("convert", Box::new(e)))?;
    let pinned = fd.pin(path).map_err(|e| err("pin", Box::new(e)))?;
    L::try_from(FdLink::from(pinned)).map_err(|e| err("convert", Box::new(e)))
}

fn pin_dir(root: &Path) -> PathBuf {
    root.join("vipmesh")
}

const MAP_NAMES: [&str; 13] = [
    "services",
    "backends",
    "svc_filter",
    "maglev_outer",
    "tx_ports",
    "flows",
    "rev_vips",
    "config",
    "counters",
    "svc_stats",
    "backend_stats",
    "task_ports",
    "task_egress",
];

impl FastPath {
    /// Loads and verifies every program and creates (or re-opens pinned) maps.
    ///
    /// # Errors
    ///
    /// [`Error::ObjectUnavailable`] (built without clang), [`Error::MissingCapability`],
    /// [`Error::BpffsUnavailable`], [`Error::InvalidConfig`], [`Error::Load`] (verifier),
    /// [`Error::Program`], [`Error::Map`]. Nothing stays loaded on error.
    pub fn load(opts: &LoadOptions) -> Result<Self, Error> {
        if OBJECT.is_empty() {
            return Err(Error::ObjectUnavailable {
                reason: "vipmesh-xdp was built without clang (see the build warnings)",
            });
        }
        sys::check_caps(sys::effective_caps()?)?;
        let cfg = opts.config.to_abi()?;
        if opts.flow_entries == 0 {
            return Err(Error::InvalidConfig {
                field: "flow_entries",
                value: "0".into(),
                reason: "the flow table needs at least one entry",
            });
        }
        let mut loader = aya::EbpfLoader::new();
        loader.map_max_entries("flows", opts.flow_entries);
        let dir;
        let paths: Vec<(&str, PathBuf)>;
        if let Some(root) = opts.pinning.root() {
            sys::ensure_bpffs(root)?;
            dir = pin_dir(root);
            std::fs::create_dir_all(&dir).map_err(|source| Error::Pin {
                op: "create",
                path: dir.clone(),
                source,
            })?;
            paths = MAP_NAMES.iter().map(|n| (*n, dir.join(n))).collect();
            for (n, p) in &paths {
                loader.map_pin_path(n, p.as_path());
            }
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| Error::Load(Box::new(e)))?;
        for p in Program::ALL {
            // The verifier gives up with EAGAIN when a signal arrives while it works (any
            // thread of a busy process); like libbpf, try again a few times.
            let mut attempt = 0;
            loop {
                let prog = ebpf.program_mut(p.name()).ok_or_else(|| {
                    Error::program(p.name(), "find", ProgramError::UnexpectedProgramType)
                })?;
                let r = if p.is_xdp() {
                    <&mut Xdp>::try_from(prog).and_then(|x| x.load())
                } else {
                    <&mut SchedClassifier>::try_from(prog).and_then(|x| x.load())
                };
                match r {
                    Ok(()) => break,
                    Err(ProgramError::LoadError { io_error, .. })
                        if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < 4 =>
                    {
                        attempt += 1;
                        tracing::debug!(
                            program = p.name(),
                            attempt,
                            "verifier interrupted, retrying"
                        );
                    }
                    Err(e) => return Err(Error::program(p.name(), "load", e)),
                }
            }
        }
        let mut maps = KernelMaps::from_ebpf(&mut ebpf)?;
        crate::maps::MapLayer::set_config(&mut maps, &cfg)?;
        let mut dataplane = Dataplane::new(maps, opts.config)?;
        if opts.pinning.root().is_some() {
            // Pinned maps may hold a previous process's state: take its ids over.
            dataplane.restore()?;
        }
        tracing::info!(pinning = ?opts.pinning, "vipmesh XDP fast path loaded");
        let link_dir = match &opts.pinning {
            Pinning::MapsAndLinks { root } => Some(pin_dir(root)),
            _ => None,
        };
        Ok(FastPath {
            ebpf,
            dataplane,
            links: Vec::new(),
            link_dir,
        })
    }

    /// The dataplane (services, backends, stats).
    pub fn dataplane(&mut self) -> &mut Dataplane<KernelMaps> {
        &mut self.dataplane
    }

    /// Attaches `program` to `interface` in the calling thread's network namespace. `mode` is
    /// used for XDP programs; tc programs attach with tcx links (Linux 6.6+), `TcRev` and
    /// `TcDecap` on ingress, `TcEgress` on egress.
    ///
    /// # Errors
    ///
    /// [`Error::InterfaceNotFound`], [`Error::XdpModeUnsupported`], [`Error::Program`].
    pub fn attach(
        &mut self,
        interface: &str,
        program: Program,
        mode: AttachMode,
    ) -> Result<Attachment, Error> {
        let c = std::ffi::CString::new(interface).map_err(|_nul| Error::InterfaceNotFound {
            name: interface.to_owned(),
        })?;
        let ifindex = nix_if_nametoindex(&c);
        if ifindex == 0 {
            return Err(Error::InterfaceNotFound {
                name: interface.to_owned(),
            });
        }
        // The namespace's inode is part of the name: tasks' interfaces share ifindexes
        // (every task's eth0 may be 2), so the ifindex alone would make two tasks' links one.
        let netns = sys::current_netns_ino();
        let pin_path = self
            .link_dir
            .as_ref()
            .map(|d| d.join(format!("link_{}_{netns}_{ifindex}", program.name())));
        let prog = self.ebpf.program_mut(program.name()).ok_or_else(|| {
            Error::program(program.name(), "find", ProgramError::UnexpectedProgramType)
        })?;
        let name = program.name();
        let pin_err =
            |op: &'static str, path: &Path, e: Box<dyn std::error::Error + Send + Sync>| {
                Error::LinkPin {
                    op,
                    path: path.to_owned(),
                    source: e,
                }
            };
        // Take over a pinned link: atomically swap our program into it.
        if let Some(path) = pin_path.as_deref().filter(|p| p.exists()) {
            let fd = FdLink::from(
                PinnedLink::from_pin(path).map_err(|e| pin_err("open", path, Box::new(e)))?,
            );
            let link = if program.is_xdp() {
                let xdp: &mut Xdp = prog
                    .try_into()
                    .map_err(|e| Error::program(name, "cast", e))?;
                let l = XdpLink::try_from(fd).map_err(|e| pin_err("convert", path, Box::new(e)))?;
                LinkId::Xdp(
                    xdp.attach_to_link(l)
                        .map_err(|e| Error::program(name, "replace", e))?,
                )
            } else {
                let tc: &mut SchedClassifier = prog
                    .try_into()
                    .map_err(|e| Error::program(name, "cast", e))?;
                let l = SchedClassifierLink::try_from(fd)
                    .map_err(|e| pin_err("convert", path, Box::new(e)))?;
                LinkId::Tc(
                    tc.attach_to_link(l)
                        .map_err(|e| Error::program(name, "replace", e))?,
                )
            };
            let att = Attachment {
                program,
                interface: interface.to_owned(),
                mode: None,
                fallback_reason: None,
                pinned: Some(path.to_owned()),
                reused_pin: true,
            };
            tracing::info!(program = name, interface, pin = %path.display(), "took over pinned link");
            self.links.push((att.clone(), link));
            return Ok(att);
        }
        let (mut att, mut link) = if program.is_xdp() {
            let xdp: &mut Xdp = prog
                .try_into()
                .map_err(|e| Error::program(program.name(), "cast", e))?;
            let try_mode = |xdp: &mut Xdp, m: AttachMode| -> Result<_, Error> {
                let am = match m {
                    AttachMode::Native | AttachMode::Auto => XdpMode::Driver,
                    AttachMode::Generic => XdpMode::Skb,
                    AttachMode::Offload => XdpMode::Hardware,
                };
                xdp.attach(interface, am).map_err(|source| match source {
                    ProgramError::UnknownInterface { name } => Error::InterfaceNotFound { name },
                    source => Error::XdpModeUnsupported {
                        interface: interface.to_owned(),
                        mode: m,
                        source,
                    },
                })
            };
            let (id, used, reason) = match mode {
                AttachMode::Auto => match try_mode(xdp, AttachMode::Native) {
                    Ok(id) => (id, AttachMode::Native, None),
                    Err(Error::XdpModeUnsupported { source, .. }) => {
                        let reason = source.to_string();
                        tracing::warn!(interface, %reason, "native XDP refused; using generic XDP");
                        (
                            try_mode(xdp, AttachMode::Generic)?,
                            AttachMode::Generic,
                            Some(reason),
                        )
                    }
                    Err(e) => return Err(e),
                },
                m => (try_mode(xdp, m)?, m, None),
            };
            (
                Attachment {
                    program,
                    interface: interface.to_owned(),
                    mode: Some(used),
                    fallback_reason: reason,
                    pinned: None,
                    reused_pin: false,
                },
                LinkId::Xdp(id),
            )
        } else {
            let tc: &mut SchedClassifier = prog
                .try_into()
                .map_err(|e| Error::program(program.name(), "cast", e))?;
            let at = if program == Program::TcEgress {
                TcAttachType::Egress
            } else {
                TcAttachType::Ingress
            };
            let id = tc
                .attach(interface, at)
                .map_err(|e| Error::program(program.name(), "attach", e))?;
            (
                Attachment {
                    program,
                    interface: interface.to_owned(),
                    mode: None,
                    fallback_reason: None,
                    pinned: None,
                    reused_pin: false,
                },
                LinkId::Tc(id),
            )
        };
        if let Some(path) = pin_path.as_deref() {
            // Pin the new link, then hand it back to the program (same program: a no-op swap).
            let prog = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| Error::program(name, "find", ProgramError::UnexpectedProgramType))?;
            link = match link {
                LinkId::Xdp(id) => {
                    let xdp: &mut Xdp = prog
                        .try_into()
                        .map_err(|e| Error::program(name, "cast", e))?;
                    let l = xdp
                        .take_link(id)
                        .map_err(|e| Error::program(name, "take_link", e))?;
                    let l = pin_link(l, path)?;
                    LinkId::Xdp(
                        xdp.attach_to_link(l)
                            .map_err(|e| Error::program(name, "relink", e))?,
                    )
                }
                LinkId::Tc(id) => {
                    let tc: &mut SchedClassifier = prog
                        .try_into()
                        .map_err(|e| Error::program(name, "cast", e))?;
                    let l = tc
                        .take_link(id)
                        .map_err(|e| Error::program(name, "take_link", e))?;
                    let l = pin_link(l, path)?;
                    LinkId::Tc(
                        tc.attach_to_link(l)
                            .map_err(|e| Error::program(name, "relink", e))?,
                    )
                }
            };
            att.pinned = Some(path.to_owned());
        }
        tracing::info!(program = program.name(), interface, mode = ?att.mode, "attached");
        self.links.push((att.clone(), link));
        Ok(att)
    }

    /// Detaches one attachment made by this `FastPath`. Detaching what is not attached is
    /// success.
    ///
    /// # Errors
    ///
    /// [`Error::Program`] when the kernel refuses.
    pub fn detach(&mut self, att: &Attachment) -> Result<(), Error> {
        let Some(pos) = self.links.iter().position(|(a, _)| a == att) else {
            return Ok(());
        };
        let (a, link) = self.links.remove(pos);
        let name = a.program.name();
        if let Some(path) = &a.pinned {
            // Unpin first, so that closing our descriptor really detaches.
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Pin {
                        op: "unpin",
                        path: path.clone(),
                        source,
                    });
                }
            }
        }
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| Error::program(name, "find", ProgramError::UnexpectedProgramType))?;
        match link {
            LinkId::Xdp(id) => <&mut Xdp>::try_from(prog).and_then(|x| x.detach(id)),
            LinkId::Tc(id) => <&mut SchedClassifier>::try_from(prog).and_then(|x| x.detach(id)),
        }
        .map_err(|e| Error::program(name, "detach", e))?;
        tracing::info!(program = name, interface = %a.interface, "detached");
        Ok(())
    }

    /// Detaches everything this `FastPath` attached.
    ///
    /// # Errors
    ///
    /// The first detach error (the others are still attempted).
    pub fn detach_all(&mut self) -> Result<(), Error> {
        let atts: Vec<Attachment> = self.links.iter().map(|(a, _)| a.clone()).collect();
        let mut first = Ok(());
        for a in atts {
            if let Err(e) = self.detach(&a)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    /// Current attachments.
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.links.iter().map(|(a, _)| a)
    }

    /// Kernel ids of the loaded programs (for checking that nothing is left behind).
    ///
    /// # Errors
    ///
    /// [`Error::Program`].
    pub fn program_ids(&self) -> Result<BTreeMap<Program, u32>, Error> {
        let mut out = BTreeMap::new();
        for p in Program::ALL {
            let prog = self.ebpf.program(p.name()).ok_or_else(|| {
                Error::program(p.name(), "find", ProgramError::UnexpectedProgramType)
            })?;
            let info = prog
                .info()
                .map_err(|e| Error::program(p.name(), "info", e))?;
            out.insert(p, info.id());
        }
        Ok(out)
    }

    /// Kernel ids of the maps the programs use (for checking that nothing is left behind).
    ///
    /// # Errors
    ///
    /// [`Error::Program`].
    pub fn map_ids(&self) -> Result<Vec<u32>, Error> {
        let mut out = std::collections::BTreeSet::new();
        for p in Program::ALL {
            let prog = self.ebpf.program(p.name()).ok_or_else(|| {
                Error::program(p.name(), "find", ProgramError::UnexpectedProgramType)
            })?;
            let info = prog
                .info()
                .map_err(|e| Error::program(p.name(), "info", e))?;
            let ids = info
                .map_ids()
                .map_err(|e| Error::program(p.name(), "map_ids", e))?;
            out.extend(ids.unwrap_or_default());
        }
        Ok(out.into_iter().collect())
    }

    /// Runs `program` once per `repeat` on `input` with `BPF_PROG_TEST_RUN`
    /// ([kernel doc](https://docs.kernel.org/bpf/bpf_prog_run.html)). The kernel re-runs the
    /// program on the already-rewritten buffer for every repeat.
    ///
    /// # Errors
    ///
    /// [`Error::Program`].
    pub fn test_run(
        &mut self,
        program: Program,
        input: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutput, Error> {
        let prog = self.ebpf.program_mut(program.name()).ok_or_else(|| {
            Error::program(program.name(), "find", ProgramError::UnexpectedProgramType)
        })?;
        let mut out = vec![0u8; input.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        };
        let r = if program.is_xdp() {
            <&mut Xdp>::try_from(prog).and_then(|x| x.test_run(opts))
        } else {
            <&mut SchedClassifier>::try_from(prog).and_then(|x| x.test_run(opts))
        }
        .map_err(|e| Error::program(program.name(), "test_run", e))?;
        out.truncate(r.data_size_out as usize);
        Ok(TestRunOutput {
            verdict: r.return_value,
            data: out,
            duration: r.duration,
        })
    }

    /// The pinned links under `root/vipmesh/` ([`Pinning::MapsAndLinks`]), sorted: those of
    /// this process and those a previous process left attached.
    ///
    /// # Errors
    ///
    /// [`Error::Pin`] when the directory exists but cannot be read.
    pub fn pinned_links(root: &Path) -> Result<Vec<PathBuf>, Error> {
        let dir = pin_dir(root);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Pin {
                    op: "list",
                    path: dir,
                    source,
                });
            }
        };
        let mut out: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("link_"))
            .map(|e| e.path())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Removes every pinned link under `root/vipmesh/`: a link nothing else holds is detached
    /// by the kernel when its last reference goes. Removing what is absent is success.
    ///
    /// # Errors
    ///
    /// [`Error::Pin`].
    pub fn unpin_links(root: &Path) -> Result<(), Error> {
        for p in Self::pinned_links(root)? {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Pin {
                        op: "unpin",
                        path: p,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Runs XDP `program` `repeat` times on `input` with `BPF_PROG_TEST_RUN` in live-frames
    /// mode (`BPF_F_TEST_XDP_LIVE_FRAMES`, Linux 5.18+): frames come from a page pool, in
    /// batches of `batch`, and `XDP_REDIRECT`/`XDP_TX` really transmit, resolved in the calling
    /// thread's namespace ([kernel doc](https://docs.kernel.org/bpf/bpf_prog_run.html)). A page
    /// is initialised with `input` once, so a program sees the frames it rewrote earlier. No
    /// output packet; `duration` is the kernel's average per frame.
    ///
    /// # Errors
    ///
    /// [`Error::Program`] (a tc program, or a kernel without live frames).
    pub fn test_run_live(
        &mut self,
        program: Program,
        input: &[u8],
        repeat: u32,
        batch: u32,
    ) -> Result<TestRunOutput, Error> {
        let prog = self.ebpf.program_mut(program.name()).ok_or_else(|| {
            Error::program(program.name(), "find", ProgramError::UnexpectedProgramType)
        })?;
        let opts = TestRunOptions {
            data_in: Some(input),
            repeat,
            attrs: aya::programs::TestRunAttrs::new().xdp_live_frames(batch),
            ..Default::default()
        };
        let r = <&mut Xdp>::try_from(prog)
            .and_then(|x| x.test_run(opts))
            .map_err(|e| Error::program(program.name(), "test_run_live", e))?;
        Ok(TestRunOutput {
            verdict: r.return_value,
            data: Vec::new(),
            duration: r.duration,
        })
    }

    /// Removes the pinned maps under `root/vipmesh/` (what [`Pinning::Maps`] created).
    /// Removing what is absent is success.
    ///
    /// # Errors
    ///
    /// [`Error::Pin`].
    pub fn unpin(root: &Path) -> Result<(), Error> {
        let dir = pin_dir(root);
        for n in MAP_NAMES {
            let p = dir.join(n);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Pin {
                        op: "unpin",
                        path: p,
                        source,
                    });
                }
            }
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Pin {
                op: "remove",
                path: dir,
                source,
            }),
        }
    }
}

fn nix_if_nametoindex(name: &std::ffi::CStr) -> u32 {
    sys::if_nametoindex(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built without clang (`VIPMESH_CLANG=/nonexistent`), loading is a typed error.
    #[cfg(not(vipmesh_object))]
    #[test]
    fn load_without_the_object_is_a_typed_error() {
        assert!(!crate::object_available());
        assert!(matches!(
            FastPath::load(&LoadOptions::default()),
            Err(Error::ObjectUnavailable { .. })
        ));
    }

    #[cfg(vipmesh_object)]
    #[test]
    fn object_is_embedded() {
        assert!(crate::object_available());
        assert_eq!(&OBJECT[..4], b"\x7fELF");
    }
}
