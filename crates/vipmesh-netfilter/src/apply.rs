//! The thin shell: observe with `iptables-save`, apply with one `iptables-restore -w --noflush`,
//! read back and verify. Only this module runs processes.
//!
//! Man pages: [`iptables-restore(8)`](https://man7.org/linux/man-pages/man8/iptables-restore.8.html),
//! [`iptables-save(8)`](https://man7.org/linux/man-pages/man8/iptables-save.8.html),
//! [`setns(2)`](https://man7.org/linux/man-pages/man2/setns.2.html) (through
//! [`vipmesh_netns::Netns::run`]: the tool is spawned from a thread that entered the namespace,
//! so the child starts inside it and the caller's threads never switch).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use vipmesh_netns::Netns;

use crate::error::Error;
use crate::model::{Family, Table};
use crate::plan::{Observed, Plan, plan};
use crate::ruleset::OwnedRuleset;
use crate::save::parse_save;

/// The network namespace to work in.
#[derive(Debug, Clone)]
pub enum NetnsTarget {
    /// The namespace of the calling thread.
    Current,
    /// A namespace file (`/run/netns/<name>`, `/proc/<pid>/ns/net`, a bind mount …), opened
    /// for each operation.
    Path(PathBuf),
    /// An open handle from `vipmesh-netns`.
    Handle(Arc<Netns>),
}

impl From<Netns> for NetnsTarget {
    fn from(n: Netns) -> Self {
        NetnsTarget::Handle(Arc::new(n))
    }
}

impl From<Arc<Netns>> for NetnsTarget {
    fn from(n: Arc<Netns>) -> Self {
        NetnsTarget::Handle(n)
    }
}

impl NetnsTarget {
    /// A namespace created by `ip netns add <name>` (`/run/netns/<name>`).
    pub fn named(name: &str) -> NetnsTarget {
        NetnsTarget::Path(Path::new("/run/netns").join(name))
    }

    fn describe(&self) -> String {
        match self {
            NetnsTarget::Current => "current".to_owned(),
            NetnsTarget::Path(p) => p.display().to_string(),
            NetnsTarget::Handle(n) => n.to_string(),
        }
    }
}

/// Which iptables backend the tools program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `iptables-nft` (nf_tables kernel API, xtables compat).
    Nft,
    /// `iptables-legacy` (x_tables, whole-table replace).
    Legacy,
}

/// How the backend is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendChoice {
    /// Use `iptables-restore`/`iptables-save` as the system has them (the alternatives
    /// selection), and detect which backend that is from `iptables-restore -V`.
    System,
    /// Force one backend (`iptables-nft-restore` or `iptables-legacy-restore`).
    Force(Backend),
}

/// The executables used for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// `iptables-restore` (or the v6/nft/legacy variant).
    pub restore: String,
    /// `iptables-save` (or variant).
    pub save: String,
}

impl Tools {
    /// Tool names for a family and backend choice.
    pub fn for_family(family: Family, choice: BackendChoice) -> Tools {
        let p = family.tool_prefix();
        let infix = match choice {
            BackendChoice::System => "",
            BackendChoice::Force(Backend::Nft) => "-nft",
            BackendChoice::Force(Backend::Legacy) => "-legacy",
        };
        Tools {
            restore: format!("{p}{infix}-restore"),
            save: format!("{p}{infix}-save"),
        }
    }
}

/// Whether [`Applier::apply`] reads the kernel back after the restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Verify {
    /// Run `iptables-save` again and fail with [`Error::Verify`] if anything still differs
    /// (the default). Costs one more ruleset dump.
    #[default]
    ReadBack,
    /// Trust `iptables-restore`'s exit status. The next apply still observes first, so drift
    /// is repaired then.
    Skip,
}

/// Where [`Applier::apply`] gets the current state from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ObserveMode {
    /// Run `iptables-save` before every apply (the default): tampering is repaired by the
    /// next apply.
    #[default]
    EveryApply,
    /// Plan against the state this applier last applied (kube-proxy's partial sync). The
    /// first apply, and any apply after [`Applier::invalidate`], observes; a restore (or a
    /// read-back) that fails on the cached state falls back to a full sync. Tampering is only
    /// repaired after `invalidate`, so call it periodically.
    Cached,
}

/// The outcome of one [`Applier::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// The family.
    pub family: Family,
    /// The backend the tools programmed.
    pub backend: Backend,
    /// True if a restore batch was run (the kernel differed from the desired state).
    pub changed: bool,
    /// What the batch did, per table (empty when unchanged).
    pub plan: Plan,
}

/// Applies [`OwnedRuleset`]s in one network namespace.
///
/// # Examples
/// ```no_run
/// use vipmesh_netfilter::*;
/// let applier = Applier::new(NetnsTarget::named("lb-web"));
/// let mut rs = OwnedRuleset::new(Family::V4);
/// let chain = ChainName::new("VIPMESH-VIP").unwrap();
/// rs.add_rule(Table::Mangle, &chain,
///     Rule::new(Matches::new().destination("10.0.0.4".parse().unwrap()), Target::SetMark(Mark::new(0x103))))
///     .unwrap();
/// rs.add_jump(Table::Mangle, Jump { from: BuiltinChain::Input, matches: Matches::new(),
///     to: chain, position: JumpPosition::Prepend }).unwrap();
/// let report = applier.apply(&rs)?;
/// assert!(!applier.apply(&rs)?.changed); // idempotent: no second restore call
/// applier.teardown(Family::V4)?;          // removes our chains and jumps, nothing else
/// # Ok::<(), vipmesh_netfilter::Error>(())
/// ```
#[derive(Debug)]
pub struct Applier {
    netns: NetnsTarget,
    choice: BackendChoice,
    tools_override: Option<Tools>,
    verify: Verify,
    observe_mode: ObserveMode,
    cache: [Mutex<Option<Observed>>; 2],
    backend: [OnceLock<Backend>; 2],
}

impl Applier {
    /// An applier for `netns`, using the system's iptables backend.
    pub fn new(netns: NetnsTarget) -> Applier {
        Applier {
            netns,
            choice: BackendChoice::System,
            tools_override: None,
            verify: Verify::ReadBack,
            observe_mode: ObserveMode::EveryApply,
            cache: Default::default(),
            backend: Default::default(),
        }
    }

    /// Choose the backend explicitly.
    pub fn with_backend(mut self, choice: BackendChoice) -> Applier {
        self.choice = choice;
        self
    }

    /// Choose whether to read back after applying (default [`Verify::ReadBack`]).
    pub fn with_verify(mut self, verify: Verify) -> Applier {
        self.verify = verify;
        self
    }

    /// Choose where the current state comes from (default [`ObserveMode::EveryApply`]).
    pub fn with_observe(mut self, mode: ObserveMode) -> Applier {
        self.observe_mode = mode;
        self
    }

    /// Use specific executables (for both families). Mostly for tests and unusual installs.
    pub fn with_tools(mut self, tools: Tools) -> Applier {
        self.tools_override = Some(tools);
        self
    }

    /// The namespace.
    pub fn netns(&self) -> &NetnsTarget {
        &self.netns
    }

    fn tools(&self, family: Family) -> Tools {
        self.tools_override
            .clone()
            .unwrap_or_else(|| Tools::for_family(family, self.choice))
    }

    /// Check privileges, the namespace and the tools before doing anything.
    fn preflight(&self, family: Family, op: &'static str) -> Result<(PathBuf, PathBuf), Error> {
        check_net_admin(op)?;
        if let NetnsTarget::Path(p) = &self.netns {
            open_netns(p, op)?;
        }
        let t = self.tools(family);
        Ok((find_tool(&t.restore)?, find_tool(&t.save)?))
    }

    /// The backend of `family`'s tools (detected once, from `iptables-restore -V`).
    ///
    /// # Errors
    /// [`Error::ToolMissing`], [`Error::CommandFailed`].
    pub fn backend(&self, family: Family) -> Result<Backend, Error> {
        let slot = match family {
            Family::V4 => &self.backend[0],
            Family::V6 => &self.backend[1],
        };
        if let Some(b) = slot.get() {
            return Ok(*b);
        }
        let b = match self.choice {
            BackendChoice::Force(b) => b,
            BackendChoice::System => {
                let restore = find_tool(&self.tools(family).restore)?;
                let out = run(
                    &NetnsTarget::Current,
                    &restore,
                    &["-V"],
                    None,
                    "detect backend",
                )?;
                let text = String::from_utf8_lossy(&out.stdout);
                if text.contains("legacy") {
                    Backend::Legacy
                } else {
                    Backend::Nft
                }
            }
        };
        let _ = slot.set(b);
        tracing::debug!(?family, backend = ?b, "iptables backend");
        Ok(b)
    }

    /// Read back what we own (chains with our prefix, tagged jumps) for `family`.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`], [`Error::NetnsNotFound`], [`Error::ToolMissing`],
    /// [`Error::CommandFailed`], [`Error::Parse`].
    pub fn observe(&self, family: Family) -> Result<Observed, Error> {
        let (_, save) = self.preflight(family, "observe")?;
        self.observe_with(family, &save)
    }

    /// [`observe`](Self::observe) as a typed ruleset (see [`Observed::to_ruleset`]).
    ///
    /// # Errors
    /// As [`observe`](Self::observe).
    pub fn observe_ruleset(&self, family: Family) -> Result<OwnedRuleset, Error> {
        Ok(self.observe(family)?.to_ruleset())
    }

    /// The full `iptables-save` text of the namespace (all tables, foreign content included).
    ///
    /// # Errors
    /// As [`observe`](Self::observe).
    pub fn save_text(&self, family: Family) -> Result<String, Error> {
        let (_, save) = self.preflight(family, "save")?;
        let out = run(&self.netns, &save, &[], None, "save")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn observe_with(&self, family: Family, save: &Path) -> Result<Observed, Error> {
        let out = run(&self.netns, save, &[], None, "observe")?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(Observed::from_dump(family, &parse_save(&text)?))
    }

    /// The batch [`apply`](Self::apply) would run now (observes the kernel, changes nothing).
    ///
    /// # Errors
    /// As [`observe`](Self::observe), plus [`Error::InvalidRule`].
    pub fn plan(&self, desired: &OwnedRuleset) -> Result<Plan, Error> {
        desired.validate()?;
        let obs = self.observe(desired.family())?;
        plan(desired, &obs)
    }

    /// Make the kernel's content of our chains and jumps equal `desired`, in one
    /// `iptables-restore -w --noflush` call, then read back and verify.
    ///
    /// Foreign chains and rules are never touched. When the kernel already matches, no restore
    /// runs and the report says `changed: false`.
    ///
    /// # Errors
    /// - [`Error::InvalidRule`]: `desired` is inconsistent; nothing ran.
    /// - [`Error::PermissionDenied`], [`Error::NetnsNotFound`], [`Error::ToolMissing`]: checked
    ///   before anything is applied.
    /// - [`Error::RestoreFailed`]: the kernel rejected the batch (the failing line and context
    ///   are in the error). Each table section is committed atomically.
    /// - [`Error::Verify`]: the readback still differs from `desired`.
    pub fn apply(&self, desired: &OwnedRuleset) -> Result<ApplyReport, Error> {
        let family = desired.family();
        desired.validate()?;
        let (restore, save) = self.preflight(family, "apply")?;
        let backend = self.backend(family)?;
        let cached = match self.observe_mode {
            ObserveMode::EveryApply => None,
            ObserveMode::Cached => self
                .cache_slot(family)
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        };
        let from_cache = cached.is_some();
        let obs = match cached {
            Some(o) => o,
            None => self.observe_with(family, &save)?,
        };
        match self.apply_on(desired, &obs, backend, &restore, &save) {
            Ok(r) => {
                if self.observe_mode == ObserveMode::Cached {
                    *self
                        .cache_slot(family)
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(Observed::from_ruleset(desired));
                }
                Ok(r)
            }
            Err(e) => {
                *self
                    .cache_slot(family)
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
                if !from_cache
                    || !matches!(
                        e,
                        Error::RestoreFailed { .. }
                            | Error::CommandFailed { .. }
                            | Error::Verify { .. }
                    )
                {
                    return Err(e);
                }
                // A failed partial sync falls back to a full one (observe, plan, restore).
                tracing::warn!(netns = %self.netns.describe(), %family, error = %e, "cached state was stale; full sync");
                let obs = self.observe_with(family, &save)?;
                let r = self.apply_on(desired, &obs, backend, &restore, &save)?;
                *self
                    .cache_slot(family)
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Observed::from_ruleset(desired));
                Ok(r)
            }
        }
    }

    fn cache_slot(&self, family: Family) -> &Mutex<Option<Observed>> {
        match family {
            Family::V4 => &self.cache[0],
            Family::V6 => &self.cache[1],
        }
    }

    /// Forget the cached state ([`ObserveMode::Cached`]): the next apply observes the kernel.
    pub fn invalidate(&self) {
        for c in &self.cache {
            *c.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    fn apply_on(
        &self,
        desired: &OwnedRuleset,
        obs: &Observed,
        backend: Backend,
        restore: &Path,
        save: &Path,
    ) -> Result<ApplyReport, Error> {
        let family = desired.family();
        let p = plan(desired, obs)?;
        if p.is_empty() {
            tracing::debug!(netns = %self.netns.describe(), %family, "netfilter already up to date");
            return Ok(ApplyReport {
                family,
                backend,
                changed: false,
                plan: p,
            });
        }
        let input = p.to_string();
        tracing::info!(
            netns = %self.netns.describe(), %family, ?backend,
            tables = p.tables.len(), lines = input.lines().count(), "iptables-restore"
        );
        restore_batch(&self.netns, restore, &input, "apply")?;
        if self.verify == Verify::Skip {
            return Ok(ApplyReport {
                family,
                backend,
                changed: true,
                plan: p,
            });
        }
        let after = self.observe_with(family, save)?;
        let rest = plan(desired, &after)?;
        if let Some((table, tp)) = rest.tables.iter().next() {
            return Err(Error::Verify {
                family,
                table: *table,
                detail: format!("still to do:\n{}", tp.text),
            });
        }
        Ok(ApplyReport {
            family,
            backend,
            changed: true,
            plan: p,
        })
    }

    /// Runs exactly `plan` (computed by the caller with [`plan()`] against an observation it
    /// made or cached) as one `iptables-restore -w --noflush` batch: no observe, no read-back.
    /// Callers that plan themselves (the vipmesh controller) use this so each sync reads the
    /// ruleset at most once. An empty plan runs nothing.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`], [`Error::NetnsNotFound`], [`Error::ToolMissing`] before
    /// anything runs; [`Error::RestoreFailed`] when the kernel rejects the batch (each table
    /// section is committed atomically, so a failed section changes nothing). Any failure
    /// also drops this applier's cached state ([`ObserveMode::Cached`]).
    pub fn execute(&self, plan: &Plan) -> Result<(), Error> {
        if plan.is_empty() {
            return Ok(());
        }
        let family = plan.family;
        let res = self.preflight(family, "apply").and_then(|(restore, _)| {
            let input = plan.to_string();
            tracing::info!(
                netns = %self.netns.describe(), %family,
                tables = plan.tables.len(), lines = input.lines().count(), "iptables-restore"
            );
            restore_batch(&self.netns, &restore, &input, "apply")
        });
        if res.is_err() {
            *self
                .cache_slot(family)
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
        }
        res
    }

    /// Checks, before anything is written, that the kernel accepts every rule `plan` adds:
    /// [`Plan::probe`] runs in a new, empty, unnamed namespace
    /// ([`vipmesh_netns::Netns::anonymous`]), which the kernel drops afterwards. A module
    /// that cannot be loaded (`-m ipvs` without `xt_ipvs`) fails here instead of after
    /// `iptables-restore` committed the tables before it. Modules are global, so a set of
    /// extensions verified once per table and tool is not probed again in this process
    /// ([`Plan::extensions`]); a plan that adds nothing new costs nothing.
    ///
    /// # Errors
    /// As [`execute`](Self::execute) ([`Error::MissingExtension`] naming the module for a
    /// missing one); [`Error::Netns`] when no namespace can be created.
    pub fn check(&self, plan: &Plan) -> Result<(), Error> {
        let exts = plan.extensions();
        if exts.values().all(BTreeSet::is_empty) {
            return Ok(());
        }
        let (restore, _) = self.preflight(plan.family, "check")?;
        let mut verified = verified_extensions()
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let new = exts.iter().any(|(table, set)| {
            verified
                .get(&(restore.clone(), *table))
                .is_none_or(|v| !set.is_subset(v))
        });
        if !new {
            return Ok(());
        }
        let probe = plan.probe();
        let scratch = vipmesh_netns::Netns::anonymous()
            .map_err(|e| netns_error("check", "<anonymous>".to_owned(), e))?;
        tracing::debug!(
            netns = %self.netns.describe(), family = %plan.family,
            lines = probe.lines().count(), "iptables-restore trial in a scratch namespace"
        );
        restore_batch(
            &NetnsTarget::Handle(Arc::new(scratch)),
            &restore,
            &probe,
            "check",
        )?;
        for (table, set) in exts {
            verified
                .entry((restore.clone(), table))
                .or_default()
                .extend(set);
        }
        Ok(())
    }

    /// Remove every chain with our prefix and every tagged jump in all three tables of
    /// `family`, and nothing else.
    ///
    /// # Errors
    /// As [`apply`](Self::apply).
    pub fn teardown(&self, family: Family) -> Result<ApplyReport, Error> {
        self.apply(&OwnedRuleset::new(family))
    }
}

/// Apply `desired` in `netns` with the system's backend (see [`Applier::apply`]).
///
/// # Errors
/// As [`Applier::apply`].
pub fn apply(netns: &NetnsTarget, desired: &OwnedRuleset) -> Result<ApplyReport, Error> {
    Applier::new(netns.clone()).apply(desired)
}

/// Read back what we own in `netns` (see [`Applier::observe_ruleset`]).
///
/// # Errors
/// As [`Applier::observe`].
pub fn observe(netns: &NetnsTarget, family: Family) -> Result<OwnedRuleset, Error> {
    Applier::new(netns.clone()).observe_ruleset(family)
}

/// Remove everything we own in `netns` for `family` (see [`Applier::teardown`]).
///
/// # Errors
/// As [`Applier::apply`].
pub fn teardown(netns: &NetnsTarget, family: Family) -> Result<ApplyReport, Error> {
    Applier::new(netns.clone()).teardown(family)
}

const CAP_NET_ADMIN: u32 = 12;

/// Fail early, with a typed error, when the effective capability set lacks CAP_NET_ADMIN
/// (`capabilities(7)`; read from `/proc/thread-self/status`).
fn check_net_admin(op: &'static str) -> Result<(), Error> {
    let status = match std::fs::read_to_string("/proc/thread-self/status") {
        Ok(s) => s,
        Err(e) => {
            // Without /proc we cannot tell; let the tools decide.
            tracing::debug!(error = %e, "cannot read capabilities");
            return Ok(());
        }
    };
    let Some(hex) = status.lines().find_map(|l| l.strip_prefix("CapEff:")) else {
        return Ok(());
    };
    let caps = u64::from_str_radix(hex.trim(), 16).unwrap_or(u64::MAX);
    if caps & (1u64 << CAP_NET_ADMIN) == 0 {
        return Err(Error::PermissionDenied {
            op,
            detail: format!("effective capabilities {:#x}", caps),
        });
    }
    Ok(())
}

/// Resolve an executable on `PATH` (plus `/usr/sbin` and `/sbin`, where iptables lives).
fn find_tool(name: &str) -> Result<PathBuf, Error> {
    let p = Path::new(name);
    if p.is_absolute() {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(Error::ToolMissing {
                tool: name.to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")];
    for dir in std::env::split_paths(&path).chain(extra) {
        let cand = dir.join(name);
        if cand.is_file() {
            return Ok(cand);
        }
    }
    Err(Error::ToolMissing {
        tool: name.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

fn open_netns(p: &Path, op: &'static str) -> Result<Netns, Error> {
    Netns::from_path(p).map_err(|source| netns_error(op, p.display().to_string(), source))
}

fn netns_error(op: &'static str, netns: String, source: vipmesh_netns::Error) -> Error {
    match source {
        vipmesh_netns::Error::NotFound { path } | vipmesh_netns::Error::NotNetns { path } => {
            Error::NetnsNotFound { path }
        }
        e if e.is_permission_denied() => Error::PermissionDenied {
            op,
            detail: e.to_string(),
        },
        source => Error::Netns {
            op,
            netns,
            source: Box::new(source),
        },
    }
}

/// Spawn, feed stdin, wait.
fn spawn_wait(mut cmd: Command, stdin: Option<&[u8]>) -> std::io::Result<Output> {
    let mut child = cmd.spawn()?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error (EPIPE) means the tool exited early; its status and stderr say why.
        if let Err(e) = pipe.write_all(data) {
            tracing::debug!(error = %e, "writing restore input");
        }
    }
    child.wait_with_output()
}

/// Run `tool args` inside `netns`, feeding `stdin`.
fn run(
    netns: &NetnsTarget,
    tool: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    op: &'static str,
) -> Result<Output, Error> {
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let tool_name = tool.display().to_string();
    let result = match netns {
        NetnsTarget::Current => spawn_wait(cmd, stdin),
        NetnsTarget::Path(p) => {
            let ns = open_netns(p, op)?;
            ns.run(move || spawn_wait(cmd, stdin))
                .map_err(|e| netns_error(op, p.display().to_string(), e))?
        }
        NetnsTarget::Handle(ns) => ns
            .run(move || spawn_wait(cmd, stdin))
            .map_err(|e| netns_error(op, ns.to_string(), e))?,
    };
    let out = result.map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::ToolMissing {
                tool: tool_name.clone(),
                source,
            }
        } else {
            Error::Spawn {
                op,
                tool: tool_name.clone(),
                source,
            }
        }
    })?;
    if out.status.success() {
        return Ok(out);
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if stderr.contains("Permission denied") || stderr.contains("you must be root") {
        return Err(Error::PermissionDenied { op, detail: stderr });
    }
    Err(Error::CommandFailed {
        tool: tool_name,
        status: out.status.to_string(),
        stderr,
    })
}

/// Runs `input` through `restore -w --noflush` in `netns`; a rejected batch is reported with
/// its failing line in context ([`restore_error`]).
fn restore_batch(
    netns: &NetnsTarget,
    restore: &Path,
    input: &str,
    op: &'static str,
) -> Result<(), Error> {
    match run(
        netns,
        restore,
        &["-w", "--noflush"],
        Some(input.as_bytes()),
        op,
    ) {
        Ok(_) => Ok(()),
        Err(Error::CommandFailed {
            tool,
            status,
            stderr,
        }) => Err(restore_error(tool, status, &stderr, input)),
        Err(e) => Err(e),
    }
}

/// Find the failing line in `iptables-restore`'s stderr (`Error occurred at line: N` for
/// parse errors, `line N: …` for kernel errors on the nft backend) and show it in context.
fn restore_error(tool: String, status: String, stderr: &str, input: &str) -> Error {
    if stderr.contains("Permission denied") || stderr.contains("you must be root") {
        return Error::PermissionDenied {
            op: "apply",
            detail: stderr.to_owned(),
        };
    }
    let line = failed_line(stderr);
    if line.is_none() && stderr.trim().is_empty() {
        // It died without saying why (a signal, an OOM kill): keep how it ended.
        return Error::CommandFailed {
            tool,
            status,
            stderr: stderr.to_owned(),
        };
    }
    let context = match line {
        Some(n) => {
            let lines: Vec<&str> = input.lines().collect();
            let lo = n.saturating_sub(3);
            let hi = n.saturating_add(2).min(lines.len());
            let mut s = String::new();
            for (i, l) in lines.iter().enumerate().take(hi).skip(lo) {
                let no = i.saturating_add(1);
                let marker = if no == n { '>' } else { ' ' };
                s.push_str(&format!("{marker}{no:6} {l}\n"));
            }
            s
        }
        None => String::new(),
    };
    if let Some(extension) = missing_extension(stderr) {
        return Error::MissingExtension {
            tool,
            extension,
            line,
            context,
            stderr: stderr.to_owned(),
        };
    }
    Error::RestoreFailed {
        tool,
        line,
        context,
        stderr: stderr.to_owned(),
    }
}

/// The extension iptables reports the kernel lacks: `Extension ipvs revision 0 not supported,
/// missing kernel module?` (nft-based iptables), `Couldn't load match `ipvs'` or `Couldn't
/// load target `MASQUERADE'` (legacy).
fn missing_extension(stderr: &str) -> Option<String> {
    for l in stderr.lines() {
        if let Some(rest) = l.split("Extension ").nth(1)
            && rest.contains("not supported")
            && let Some(name) = rest.split_whitespace().next()
        {
            return Some(name.to_owned());
        }
        for kind in ["Couldn't load match `", "Couldn't load target `"] {
            if let Some(rest) = l.split(kind).nth(1)
                && let Some((name, _)) = rest.split_once('\'')
            {
                return Some(name.to_owned());
            }
        }
    }
    None
}

fn failed_line(stderr: &str) -> Option<usize> {
    for l in stderr.lines() {
        if let Some(rest) = l.split("Error occurred at line:").nth(1)
            && let Ok(n) = rest.trim().parse()
        {
            return Some(n);
        }
        if let Some(rest) = l.trim_start().strip_prefix("line ")
            && let Some((n, _)) = rest.split_once(':')
            && let Ok(n) = n.trim().parse()
        {
            return Some(n);
        }
    }
    None
}

/// Extensions the kernel accepted, by restore tool and table.
type Verified = BTreeMap<(PathBuf, Table), BTreeSet<String>>;

/// The extensions [`Applier::check`] found the kernel to accept: modules are global, so
/// this is process-wide.
fn verified_extensions() -> &'static Mutex<Verified> {
    static VERIFIED: OnceLock<Mutex<Verified>> = OnceLock::new();
    VERIFIED.get_or_init(Mutex::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_extension_names_its_module() {
        let nft = "Warning: Extension ipvs revision 0 not supported, missing kernel module?\n\
            iptables-restore v1.8.9 (nf_tables): \nline 14: RULE_APPEND failed (No such file or \
            directory): rule in chain VIPMESH-SNAT";
        let e = restore_error("iptables-restore".into(), "exit status: 4".into(), nft, "");
        match &e {
            Error::MissingExtension {
                extension, line, ..
            } => assert_eq!((extension.as_str(), *line), ("ipvs", Some(14))),
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("module xt_ipvs"), "{e}");
        let legacy = "iptables-restore v1.8.9 (legacy): Couldn't load target `MASQUERADE':No such file or directory\n\nError occurred at line: 7";
        match restore_error(
            "iptables-restore".into(),
            "exit status: 2".into(),
            legacy,
            "",
        ) {
            e @ Error::MissingExtension { line, .. } => {
                assert_eq!(line, Some(7));
                assert!(e.to_string().contains("module xt_MASQUERADE"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(crate::extension_module("DNAT"), "xt_nat");
        // Other failures stay RestoreFailed; odd text never panics.
        for s in [
            "line 3: RULE_APPEND failed",
            "Extension ",
            "Couldn't load match `",
            "",
        ] {
            assert!(missing_extension(s).is_none(), "{s:?}");
        }
    }

    #[test]
    fn failed_line_forms() {
        assert_eq!(
            failed_line(
                "iptables-restore v1.8.9 (nf_tables): Chain 'X' does not exist\nError occurred at line: 24\nTry"
            ),
            Some(24)
        );
        assert_eq!(
            failed_line(
                "iptables-restore v1.8.9 (nf_tables): \nline 9: RULE_INSERT failed (Invalid argument): rule in chain PREROUTING"
            ),
            Some(9)
        );
        assert_eq!(failed_line("something else"), None);
    }

    #[test]
    fn restore_error_has_context() {
        let input = "*nat\n:VIPMESH-A - [0:0]\n-A VIPMESH-A -j BAD\nCOMMIT\n";
        let e = restore_error(
            "iptables-restore".into(),
            "exit status: 1".into(),
            "Error occurred at line: 3",
            input,
        );
        let Error::RestoreFailed { line, context, .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!(line, Some(3));
        assert!(context.contains(">     3 -A VIPMESH-A -j BAD"), "{context}");
    }

    #[test]
    fn missing_tool_is_typed() {
        assert!(matches!(
            find_tool("vipmesh-no-such-tool"),
            Err(Error::ToolMissing { .. })
        ));
    }

    #[test]
    fn tool_names() {
        assert_eq!(
            Tools::for_family(Family::V6, BackendChoice::Force(Backend::Legacy)).restore,
            "ip6tables-legacy-restore"
        );
        assert_eq!(
            Tools::for_family(Family::V4, BackendChoice::System).save,
            "iptables-save"
        );
    }
}
