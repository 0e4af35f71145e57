//! The thin shell: observe with `nft -j list table`, apply with one `nft -f -` transaction,
//! teardown with `delete table`. Only this module runs processes.
//!
//! Man pages: [`nft(8)`](https://www.netfilter.org/projects/nftables/manpage.html),
//! [`libnftables-json(5)`](https://www.netfilter.org/projects/nftables/manpage.html),
//! [`setns(2)`](https://man7.org/linux/man-pages/man2/setns.2.html) (through
//! [`vipmesh_netns::Netns::run`]: `nft` is spawned from a thread inside the namespace).
//! Atomicity: `nft -f` sends the whole script as one netlink batch
//! (`NFNL_MSG_BATCH_BEGIN` … `END`); the kernel commits all or nothing
//! (`net/netfilter/nf_tables_api.c`, `nf_tables_commit`/`nf_tables_abort`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use vipmesh_netns::Netns;

use crate::error::Error;
use crate::model::{FAMILY, NetworkId, Table};
use crate::parse::{Observed, Ownership, comment_from_text, parse_table_json};
use crate::plan::{Plan, plan, plan_teardown};

/// Where [`Nft::sync`] gets the current state from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ObserveMode {
    /// List the table before every sync (the default): drift is repaired by the next sync.
    #[default]
    EveryApply,
    /// Plan against the table this handle last applied (kube-proxy's partial sync): one
    /// `nft` process per sync. The first sync observes; a failed transaction drops the cache,
    /// so the next sync observes again and is planned in full. Call [`Nft::invalidate`]
    /// periodically to repair tampering.
    Cached,
}

/// How transactions reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Runner {
    /// Spawn `nft -f -` from a thread inside the namespace, per transaction (the default).
    #[default]
    Process,
    /// libnftables in-process (`dlopen`): one context per handle, made on a thread inside the
    /// namespace, so its netlink socket belongs there. Saves the process start (~10 ms) per
    /// transaction; listings still use the `nft` binary.
    Library,
}

/// The outcome of one [`Nft::sync`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Whether a transaction ran.
    pub changed: bool,
    /// Whether the plan was made against the cached state (no listing).
    pub from_cache: bool,
    /// The plan that ran (its `Display` is the script).
    pub plan: Plan,
}

/// One namespace's nftables, driven through the `nft` tool.
///
/// # Examples
/// ```no_run
/// use std::sync::Arc;
/// use vipmesh_nft::*;
/// let netns = Arc::new(vipmesh_netns::Netns::named("lb-web").unwrap());
/// let nft = Nft::new(netns).with_observe(ObserveMode::Cached);
/// let mut t = Table::new(NetworkId::new("web")?);
/// vip_marks(&mut t, &[Hook::Input], &[VipMark { vip: "10.0.0.9".parse().unwrap(), port: None, mark: 0x100 }])?;
/// nft.sync(&t)?;                     // creates table inet vipmesh-web
/// assert!(!nft.sync(&t)?.changed);   // nothing to do
/// nft.teardown(t.id())?;             // deletes our table, nothing else
/// # Ok::<(), vipmesh_nft::Error>(())
/// ```
#[derive(Debug)]
pub struct Nft {
    netns: Arc<Netns>,
    tool: PathBuf,
    mode: ObserveMode,
    cache: Mutex<Option<Option<Table>>>,
    version: OnceLock<String>,
    runner: Runner,
    lib: Mutex<Option<crate::sys::LibNft>>,
}

/// The version in `nft --version` output (`nftables v1.0.6 (Lester Gooch #5)` → `1.0.6`).
pub fn parse_version(text: &str) -> Option<String> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    v.split('.')
        .next()
        .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))?;
    Some(v.to_owned())
}

fn major(v: &str) -> u32 {
    v.split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

fn trim(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_owned()
}

/// Kernel modules a script line needs, from its keywords (for EOPNOTSUPP errors).
fn modules_for_line(text: &str) -> Vec<&'static str> {
    let mut m = Vec::new();
    let has = |w: &str| text.split_whitespace().any(|t| t == w);
    if has("fib") {
        m.push("nft_fib_inet");
    }
    if has("ct") {
        m.push("nft_ct");
    }
    if has("snat") || has("dnat") || has("nat") {
        m.push("nft_nat");
        m.push("nft_chain_nat");
    }
    if has("masquerade") {
        m.push("nft_masq");
    }
    if has("redirect") {
        m.push("nft_redir");
    }
    if has("route") {
        m.push("nft_chain_route_ipv4");
    }
    if m.is_empty() {
        m.push("nf_tables");
    }
    m
}

/// The first error of nft's stderr: `(line, message)`, from `PATH:LINE:COL: Error: MSG`
/// (`/dev/stdin` for `nft -f -`, `/proc/self/fd/N` for the library). A bare `Error: MSG`
/// (no location) gives no line.
fn locate_error(stderr: &str) -> Option<(Option<usize>, String)> {
    stderr.lines().find_map(|l| {
        let (loc, msg) = l.split_once("Error: ")?;
        let mut parts = loc.trim_end().trim_end_matches(':').rsplitn(3, ':');
        let _col = parts.next();
        let line = parts.next().and_then(|n| n.parse().ok());
        Some((line, msg.to_owned()))
    })
}

impl Nft {
    /// A handle for `netns`, using `nft` from `PATH`.
    pub fn new(netns: Arc<Netns>) -> Nft {
        Nft {
            netns,
            tool: PathBuf::from("nft"),
            mode: ObserveMode::EveryApply,
            cache: Mutex::new(None),
            version: OnceLock::new(),
            runner: Runner::Process,
            lib: Mutex::new(None),
        }
    }

    /// Choose how transactions are run (default [`Runner::Process`]).
    pub fn with_runner(mut self, runner: Runner) -> Nft {
        self.runner = runner;
        self
    }

    /// Use another `nft` executable.
    pub fn with_tool(mut self, tool: impl Into<PathBuf>) -> Nft {
        self.tool = tool.into();
        self
    }

    /// Choose where the current state comes from (default [`ObserveMode::EveryApply`]).
    pub fn with_observe(mut self, mode: ObserveMode) -> Nft {
        self.mode = mode;
        self
    }

    /// The namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    fn tool_name(&self) -> String {
        self.tool.display().to_string()
    }

    fn run(&self, op: &'static str, args: &[&str], input: Option<&str>) -> Result<Output, Error> {
        run_in(&self.netns, &self.tool, op, args, input)
    }

    fn failed(&self, op: &'static str, out: &Output) -> Error {
        let stderr = trim(&out.stderr);
        let netns = self.netns.to_string();
        if stderr.contains("Operation not permitted") {
            return Error::PermissionDenied { op, netns, stderr };
        }
        if stderr.contains("Protocol not supported") {
            return Error::KernelNoNfTables {
                op,
                netns,
                module: "nf_tables",
                stderr,
            };
        }
        Error::CommandFailed {
            op,
            netns,
            tool: self.tool_name(),
            status: out.status.to_string(),
            stderr,
        }
    }

    /// The `nft` version (checked once): 1.0 or newer.
    ///
    /// # Errors
    /// [`Error::NftMissing`], [`Error::NftTooOld`] (naming the version found).
    pub fn version(&self) -> Result<String, Error> {
        if let Some(v) = self.version.get() {
            return Ok(v.clone());
        }
        let out = Command::new(&self.tool)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| spawn_error(&self.tool, "version", source))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let found = parse_version(&text).unwrap_or_else(|| text.trim().to_owned());
        if !out.status.success() || major(&found) < 1 {
            return Err(Error::NftTooOld {
                tool: self.tool_name(),
                found,
            });
        }
        let _ = self.version.set(found.clone());
        Ok(found)
    }

    /// Lists our table `vipmesh-<id>`: `None` when absent. Ownership is resolved (from the
    /// JSON comment, or from the text listing on nft < 1.0.7).
    ///
    /// # Errors
    /// [`Error::NftMissing`], [`Error::NftTooOld`], [`Error::KernelNoNfTables`],
    /// [`Error::PermissionDenied`], [`Error::CommandFailed`], [`Error::Parse`].
    pub fn observe(&self, id: &NetworkId) -> Result<Option<Observed>, Error> {
        self.version()?;
        let name = id.table_name();
        let out = self.run("observe", &["-j", "list", "table", FAMILY, &name], None)?;
        if !out.status.success() {
            let stderr = trim(&out.stderr);
            if stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(self.failed("observe", &out));
        }
        let mut obs = parse_table_json(&String::from_utf8_lossy(&out.stdout), id)?;
        if obs.owner == Ownership::Unknown {
            let out = self.run("observe", &["-t", "list", "table", FAMILY, &name], None)?;
            if !out.status.success() {
                return Err(self.failed("observe", &out));
            }
            obs.owner = match comment_from_text(&String::from_utf8_lossy(&out.stdout)) {
                Some(c) if c == crate::model::OWNER_COMMENT => Ownership::Ours,
                Some(c) => Ownership::Foreign(c),
                None => Ownership::Foreign(String::new()),
            };
        }
        Ok(Some(obs))
    }

    /// The names of the `inet` tables that look like ours (`vipmesh-<id>`), by id, as
    /// `nft -j list tables inet` shows them (ownership is checked by [`observe`](Self::observe)).
    ///
    /// # Errors
    /// As [`observe`](Self::observe).
    pub fn list_tables(&self) -> Result<Vec<NetworkId>, Error> {
        self.version()?;
        let out = self.run("list tables", &["-j", "list", "tables", FAMILY], None)?;
        if !out.status.success() {
            return Err(self.failed("list tables", &out));
        }
        crate::parse::parse_table_names(&String::from_utf8_lossy(&out.stdout))
    }

    fn foreign(&self, e: Error) -> Error {
        match e {
            Error::ForeignTable { family, table, .. } => Error::ForeignTable {
                family,
                table,
                netns: self.netns.to_string(),
            },
            e => e,
        }
    }

    fn cached(&self) -> Option<Option<Table>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_cache(&self, v: Option<Option<Table>>) {
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }

    /// Forget the cached state: the next sync lists the table.
    pub fn invalidate(&self) {
        self.set_cache(None);
    }

    /// The plan [`sync`](Self::sync) would run now, and whether it came from the cache.
    ///
    /// # Errors
    /// As [`observe`](Self::observe), plus [`Error::ForeignTable`].
    pub fn plan(&self, desired: &Table) -> Result<(Plan, bool), Error> {
        let cached = match self.mode {
            ObserveMode::Cached => self.cached(),
            ObserveMode::EveryApply => None,
        };
        let from_cache = cached.is_some();
        let current = match cached {
            Some(c) => c.map(|table| Observed {
                table,
                owner: Ownership::Ours,
                unparsed: Vec::new(),
            }),
            None => self.observe(desired.id())?,
        };
        let p = plan(desired, current.as_ref()).map_err(|e| self.foreign(e))?;
        Ok((p, from_cache))
    }

    /// Makes our table equal `desired` in one `nft -f -` transaction (nothing runs when it
    /// already is).
    ///
    /// # Errors
    /// - [`Error::ForeignTable`]: a table with our name is not ours; nothing ran.
    /// - [`Error::TransactionFailed`] (with the failing line and element) or
    ///   [`Error::KernelUnsupported`] (with the modules to load): the kernel applied nothing.
    ///   The cache is dropped, so the next sync lists the table.
    /// - As [`observe`](Self::observe).
    pub fn sync(&self, desired: &Table) -> Result<SyncReport, Error> {
        self.version()?;
        let (p, from_cache) = self.plan(desired)?;
        if p.is_empty() {
            tracing::debug!(netns = %self.netns, table = %desired.name(), "nft table up to date");
            if self.mode == ObserveMode::Cached {
                self.set_cache(Some(Some(desired.clone())));
            }
            return Ok(SyncReport {
                changed: false,
                from_cache,
                plan: p,
            });
        }
        match self.execute(&p) {
            Ok(()) => {
                if self.mode == ObserveMode::Cached {
                    self.set_cache(Some(Some(desired.clone())));
                }
                Ok(SyncReport {
                    changed: true,
                    from_cache,
                    plan: p,
                })
            }
            Err(e) => {
                self.set_cache(None);
                Err(e)
            }
        }
    }

    /// Runs exactly `plan` as one `nft -f -` transaction (no listing). An empty plan runs
    /// nothing. A failure drops the cache.
    ///
    /// # Errors
    /// [`Error::TransactionFailed`], [`Error::KernelUnsupported`], [`Error::KernelNoNfTables`],
    /// [`Error::PermissionDenied`], [`Error::NftMissing`], [`Error::Spawn`], [`Error::Netns`].
    pub fn execute(&self, plan: &Plan) -> Result<(), Error> {
        if plan.is_empty() {
            return Ok(());
        }
        let script = plan.to_string();
        tracing::info!(netns = %self.netns, lines = script.lines().count(), "nft -f -");
        let res = match self.runner {
            Runner::Process => self
                .run("apply", &["-f", "-"], Some(&script))
                .and_then(|out| {
                    if out.status.success() {
                        Ok(())
                    } else {
                        Err(self.transaction_error(&script, &trim(&out.stderr)))
                    }
                }),
            Runner::Library => self.run_library(&script, false),
        };
        if res.is_err() {
            self.set_cache(None);
        }
        res
    }

    /// Has the kernel validate `plan` without committing it (`nft --check`: the
    /// transaction is sent and aborted), so a module the kernel cannot load is found before
    /// the caller writes anything else. Only a whole-table [`Plan::Rebuild`] can need a new
    /// module; element changes and deletions are not checked.
    ///
    /// # Errors
    /// As [`execute`](Self::execute); nothing is changed either way.
    pub fn check(&self, plan: &Plan) -> Result<(), Error> {
        if !matches!(plan, Plan::Rebuild { .. }) {
            return Ok(());
        }
        let script = plan.to_string();
        match self.runner {
            Runner::Process => {
                let out = self.run("check", &["--check", "-f", "-"], Some(&script))?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(self.transaction_error(&script, &trim(&out.stderr)))
                }
            }
            Runner::Library => self.run_library(&script, true),
        }
    }

    fn run_library(&self, script: &str, dry: bool) -> Result<(), Error> {
        let mut slot = self.lib.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            let lib = self
                .netns
                .run(crate::sys::LibNft::new)
                .map_err(|source| Error::Netns {
                    op: "apply",
                    netns: self.netns.to_string(),
                    source: Box::new(source),
                })?
                .map_err(|reason| Error::NftMissing {
                    tool: crate::sys::LIBNFTABLES.to_owned(),
                    source: std::io::Error::other(reason),
                })?;
            *slot = Some(lib);
        }
        let Some(lib) = slot.as_mut() else {
            return Ok(());
        };
        let (ok, err) = lib
            .run(script, dry)
            .map_err(|reason| Error::TransactionFailed {
                netns: self.netns.to_string(),
                line: None,
                text: String::new(),
                kernel_error: String::new(),
                stderr: reason,
            })?;
        if ok {
            Ok(())
        } else {
            Err(self.transaction_error(script, err.trim()))
        }
    }

    fn transaction_error(&self, script: &str, stderr: &str) -> Error {
        let stderr = stderr.to_owned();
        let netns = self.netns.to_string();
        let (line, msg) = match locate_error(&stderr) {
            Some((l, m)) => (l, Some(m)),
            None => (None, None),
        };
        let text = line.and_then(|l| {
            script
                .lines()
                .nth(l.wrapping_sub(1))
                .map(|t| t.trim().trim_end_matches(',').to_owned())
        });
        let kernel_error = msg
            .as_deref()
            .and_then(|m| m.strip_prefix("Could not process rule: "))
            .map(str::to_owned);
        match (&kernel_error, line, &text) {
            (Some(k), Some(line), Some(text)) if k.starts_with("Operation not supported") => {
                return Error::KernelUnsupported {
                    netns,
                    line,
                    text: text.clone(),
                    modules: modules_for_line(text),
                    stderr,
                };
            }
            (Some(k), _, _) if k.starts_with("Operation not permitted") => {
                return Error::PermissionDenied {
                    op: "apply",
                    netns,
                    stderr,
                };
            }
            (Some(k), _, _) if k.starts_with("Protocol not supported") => {
                return Error::KernelNoNfTables {
                    op: "apply",
                    netns,
                    module: "nf_tables",
                    stderr,
                };
            }
            _ => {}
        }
        Error::TransactionFailed {
            netns,
            line,
            text: text.unwrap_or_default(),
            kernel_error: kernel_error.unwrap_or_default(),
            stderr,
        }
    }

    /// Deletes our table `vipmesh-<id>` (and nothing else). Absent is success (`false`).
    ///
    /// # Errors
    /// [`Error::ForeignTable`] when a table with our name is not ours (it is left alone); as
    /// [`observe`](Self::observe) and [`execute`](Self::execute).
    pub fn teardown(&self, id: &NetworkId) -> Result<bool, Error> {
        self.set_cache(None);
        let cur = self.observe(id)?;
        let p = plan_teardown(cur.as_ref()).map_err(|e| self.foreign(e))?;
        let changed = !p.is_empty();
        self.execute(&p)?;
        Ok(changed)
    }
}

fn spawn_error(tool: &Path, op: &'static str, source: std::io::Error) -> Error {
    if source.kind() == std::io::ErrorKind::NotFound {
        Error::NftMissing {
            tool: tool.display().to_string(),
            source,
        }
    } else {
        Error::Spawn {
            op,
            tool: tool.display().to_string(),
            source,
        }
    }
}

/// Runs `tool args…` inside `netns`, feeding `input` to stdin from a second thread (so a
/// large script cannot deadlock against nft's output).
fn run_in(
    netns: &Netns,
    tool: &Path,
    op: &'static str,
    args: &[&str],
    input: Option<&str>,
) -> Result<Output, Error> {
    netns
        .run(|| -> Result<Output, Error> {
            let mut child = Command::new(tool)
                .args(args)
                .stdin(if input.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|source| spawn_error(tool, op, source))?;
            let stdin = child.stdin.take();
            std::thread::scope(|s| {
                let writer = s.spawn(move || -> std::io::Result<()> {
                    if let (Some(mut w), Some(text)) = (stdin, input) {
                        w.write_all(text.as_bytes())?;
                    }
                    Ok(())
                });
                let out = child
                    .wait_with_output()
                    .map_err(|source| spawn_error(tool, op, source))?;
                // A write error (EPIPE) only means nft stopped reading; its stderr says why.
                let _ = writer.join();
                Ok(out)
            })
        })
        .map_err(|source| Error::Netns {
            op,
            netns: netns.to_string(),
            source: Box::new(source),
        })?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("nftables v1.0.6 (Lester Gooch #5)\n").unwrap(),
            "1.0.6"
        );
        assert_eq!(parse_version("nftables v0.9.8 (E.D.S.)").unwrap(), "0.9.8");
        assert_eq!(parse_version("garbage"), None);
        assert_eq!(major("0.9.8"), 0);
        assert_eq!(major("1.1.1"), 1);
    }

    #[test]
    fn errors_are_located() {
        let e = "/dev/stdin:3:2-21: Error: Could not process rule: No such file or directory\n\t10.0.0.99 . tcp . 80\n";
        let nsfe = "Could not process rule: No such file or directory".to_owned();
        assert_eq!(locate_error(e).unwrap(), (Some(3), nsfe.clone()));
        let lib = "/proc/self/fd/7:3:2-10: Error: Could not process rule: No such file or directory\n\t10.0.0.99\n";
        assert_eq!(locate_error(lib).unwrap(), (Some(3), nsfe));
        assert_eq!(locate_error("Error: x").unwrap(), (None, "x".to_owned()));
        assert_eq!(locate_error("nothing"), None);
        assert_eq!(
            modules_for_line("add rule inet t c fib daddr type local jump x"),
            ["nft_fib_inet"]
        );
        assert_eq!(modules_for_line("add rule inet t c accept"), ["nf_tables"]);
    }
}
