//! The command line: `agent`, `cluster apply`, `cluster get` (clap). The `vipmesh-agent`
//! binary is [`main`]; another binary can delegate its `agent` and `cluster` subcommands to
//! [`run`] with its own argument list.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vipmesh::ingress::{AttachRequest, IngressXdp};
use vipmesh::{Controller, ControllerConfig};

use crate::agent::{Agent, AgentConfig};
use crate::error::Error;
use crate::layout::{ClusterFile, NodeLocal, NodeRecord};
use crate::metrics::MetricsServer;
use crate::store::{Store, StoreConfig, Tls, check_endpoints};

/// The per-node vipmesh agent and the cluster's desired state in etcd.
#[derive(Debug, Parser)]
#[command(name = "vipmesh-agent", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs this node's agent: watches etcd and keeps the kernel equal to the node's state.
    Agent {
        /// This node's name.
        #[arg(long)]
        node: String,
        /// Where etcd is.
        #[command(flatten)]
        etcd: Etcd,
        /// This node's underlay address (registers the node: needed for the ingress).
        #[arg(long, requires = "sandbox_addr")]
        underlay: Option<IpAddr>,
        /// This node's ingress sandbox address.
        #[arg(long, requires = "underlay")]
        sandbox_addr: Option<IpAddr>,
        /// This node's host namespace for the ingress (a name under /run/netns or a path;
        /// default: the cluster's ingress config).
        #[arg(long)]
        host_netns: Option<String>,
        /// This node's ingress sandbox namespace (default: the cluster's ingress config).
        #[arg(long)]
        sandbox_netns: Option<String>,
        /// This node's overlay namespace (default: the cluster's ingress config).
        #[arg(long)]
        overlay_netns: Option<String>,
        /// The node registration's lease TTL, in seconds.
        #[arg(long, default_value_t = 10)]
        lease_ttl: i64,
        /// Where to serve /metrics, /healthz and /plan (a dry run: empty when converged).
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Serve this node's published ports with the XDP mesh on this uplink of its host
        /// namespace (every task sees the client's address); the cluster's ingress config
        /// `xdp.ports` may leave ports to IPVS. The tasks' `host_veth` name their veths.
        #[arg(long)]
        xdp_uplink: Option<String>,
        /// The XDP attach mode on the uplink: native-or-generic, native or generic.
        #[arg(long, requires = "xdp_uplink", value_parser = parse_attach)]
        xdp_attach: Option<AttachRequest>,
        /// MTU of the underlay links between nodes (default 1500).
        #[arg(long, requires = "xdp_uplink")]
        xdp_underlay_mtu: Option<u16>,
    },
    /// The cluster's desired state.
    Cluster {
        /// What to do with it.
        #[command(subcommand)]
        op: ClusterOp,
    },
}

/// `cluster` operations.
#[derive(Debug, Subcommand)]
pub enum ClusterOp {
    /// Replaces the desired state by a cluster file, in one transaction.
    Apply {
        /// The cluster file (a state file's networks and options, and the ingress without
        /// node and nodes).
        #[arg(long)]
        state: PathBuf,
        /// Fail (and write nothing) if the desired state changed after this revision
        /// (as printed by `cluster get`).
        #[arg(long)]
        if_revision: Option<i64>,
        /// Where etcd is.
        #[command(flatten)]
        etcd: Etcd,
    },
    /// Prints the desired state as a cluster file; the revision and skipped values go to
    /// stderr.
    Get {
        /// Where etcd is.
        #[command(flatten)]
        etcd: Etcd,
    },
}

/// Where etcd is.
#[derive(Debug, clap::Args)]
pub struct Etcd {
    /// etcd client URLs (repeat or comma-separate).
    #[arg(long = "etcd", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// Deadline of each etcd request, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub etcd_timeout: u64,
    /// TLS: the CA certificate (PEM) that signed the members' certificates; needed for
    /// https:// endpoints.
    #[arg(long)]
    pub etcd_cacert: Option<PathBuf>,
    /// TLS: this client's certificate (PEM), for members that check client certificates
    /// (`--client-cert-auth`); with --etcd-key.
    #[arg(long, requires = "etcd_cacert")]
    pub etcd_cert: Option<PathBuf>,
    /// TLS: this client's private key (PEM); with --etcd-cert.
    #[arg(long, requires = "etcd_cacert")]
    pub etcd_key: Option<PathBuf>,
}

fn parse_attach(s: &str) -> Result<AttachRequest, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("{s:?}: one of native-or-generic, native, generic"))
}

/// The `ingress.xdp` of the `--xdp-*` options (the rest at their defaults).
fn xdp_options(
    uplink: Option<String>,
    attach: Option<AttachRequest>,
    mtu: Option<u16>,
) -> Option<IngressXdp> {
    let mut x = IngressXdp::new(uplink?);
    if let Some(a) = attach {
        x.attach = a;
    }
    if let Some(m) = mtu {
        x.underlay_mtu = m;
    }
    Some(x)
}

impl Etcd {
    /// The store configuration: the endpoints checked against the TLS options, the PEM
    /// files read, before anything connects.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the option, [`Error::File`] naming the file (exit 2).
    fn store_config(&self) -> Result<StoreConfig, Error> {
        let tls = match &self.etcd_cacert {
            Some(ca) => Some(Tls::from_files(
                ca,
                self.etcd_cert.as_deref(),
                self.etcd_key.as_deref(),
            )?),
            None => None,
        };
        check_endpoints(&self.etcd, tls.is_some())?;
        let mut c = StoreConfig::new(self.etcd.clone());
        c.request_timeout = std::time::Duration::from_secs(self.etcd_timeout);
        c.tls = tls;
        Ok(c)
    }
}

/// Keeps glibc's malloc to one arena before the runtime starts its threads (what
/// `MALLOC_ARENA_MAX=1` does; an environment setting still wins, as glibc reads it first).
/// glibc gives threads that allocate concurrently arenas of their own (up to 8 per core), and
/// a sync's large, short-lived allocations on tokio's blocking threads were left spread over
/// them. At 10 000 services x 10 backends on a real kernel, after a burst of 1000 watch
/// events the agent's RSS was 156.8 MiB with the default and 117.7 MiB with two arenas; with
/// the heap trimmed after syncs ([`crate::agent::release_free_heap`]), one arena left
/// 49.6-51.0 MiB where two left 53.6-55.5 (README, "Memory and watch bursts"). The agent's
/// allocations are not contended enough for one arena's lock to matter. See mallopt(3).
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it is called before this process
        // starts any thread of its own.
        let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
}

/// Parses `args` (the first is the program name) and runs the command on a new tokio
/// runtime. Returns the process's exit code; errors are printed to stderr.
///
/// Exit status: 0 success; 1 failure (etcd unreachable for `cluster`, a metrics address
/// that cannot be bound); 2 bad input (usage, an unreadable or invalid cluster file, named
/// by its key or line); 3 `cluster apply` lost the compare-and-swap (nothing was written);
/// 4 `agent`: another node (another record under a live lease) is registered under this
/// node's name. `agent` never exits for etcd trouble: it reports itself degraded and retries.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let name = args
        .first()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .map_or_else(
            || "vipmesh-agent".into(),
            |n| n.to_string_lossy().into_owned(),
        );
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(match cli.command {
        Command::Agent { .. } => "info",
        Command::Cluster { .. } => "warn",
    });
    if matches!(cli.command, Command::Agent { .. }) {
        limit_malloc_arenas();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `default`).
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A subscriber set before (by an embedding binary) wins.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `vipmesh-agent`'s entry point.
pub fn main() -> ExitCode {
    run(std::env::args_os())
}

/// `cluster apply|get`.
async fn cluster(op: ClusterOp, etcd: StoreConfig) -> Result<(), Error> {
    let mut store = Store::connect(etcd).await?;
    match op {
        ClusterOp::Apply {
            state, if_revision, ..
        } => {
            let text = std::fs::read_to_string(&state).map_err(|source| Error::File {
                path: state.display().to_string(),
                source,
            })?;
            let file = ClusterFile::from_json(&text)?;
            let out = store.cluster_apply(&file, if_revision).await?;
            println!(
                "applied at revision {}: {} written, {} deleted",
                out.revision,
                out.written.len(),
                out.deleted.len()
            );
            for k in &out.written {
                println!("  put {k}");
            }
            for k in &out.deleted {
                println!("  del {k}");
            }
            for (k, addr) in &out.allocated {
                println!("  vip {addr} allocated for {k}");
            }
        }
        ClusterOp::Get { .. } => {
            let (file, issues, rev) = store.cluster_get().await?;
            let text = serde_json::to_string_pretty(&file)
                .map_err(|e| Error::invalid("cluster file", e.to_string()))?;
            println!("{text}");
            eprintln!("revision {rev}");
            for i in issues {
                eprintln!("skipped {i}");
            }
        }
    }
    Ok(())
}

async fn execute(cmd: Command) -> Result<(), Error> {
    match cmd {
        Command::Cluster { op } => {
            let etcd = match &op {
                ClusterOp::Apply { etcd, .. } | ClusterOp::Get { etcd } => etcd.store_config()?,
            };
            let endpoints = etcd.endpoints.clone();
            cluster(op, etcd)
                .await
                .map_err(|e| e.at_endpoints(&endpoints))
        }
        Command::Agent {
            node,
            etcd,
            underlay,
            sandbox_addr,
            host_netns,
            sandbox_netns,
            overlay_netns,
            lease_ttl,
            metrics,
            xdp_uplink,
            xdp_attach,
            xdp_underlay_mtu,
        } => {
            let store_cfg = etcd.store_config()?;
            let mut cfg = AgentConfig::new(&node);
            cfg.local = NodeLocal {
                host_netns,
                sandbox_netns,
                overlay_netns,
                me: None,
                xdp: xdp_options(xdp_uplink, xdp_attach, xdp_underlay_mtu),
            };
            cfg.lease_ttl_secs = lease_ttl;
            cfg.record = underlay
                .zip(sandbox_addr)
                .map(|(underlay, sandbox_addr)| NodeRecord {
                    underlay,
                    sandbox_addr,
                });
            let ctl = Controller::real(ControllerConfig::default());
            let agent = Agent::new(cfg, store_cfg, ctl);
            let (tx, rx) = tokio::sync::watch::channel(false);
            let stop = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|v| *v).await;
            };
            let server = match metrics {
                Some(addr) => {
                    let srv = MetricsServer::bind(addr).await?;
                    let (status, ctl) = (agent.status(), agent.controller());
                    Some(tokio::spawn(srv.serve(status, Some(ctl), stop(rx.clone()))))
                }
                None => None,
            };
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(
                    |source| Error::Io {
                        op: "install the SIGTERM handler".into(),
                        source,
                    },
                )?;
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                // The dataplane stays as it is: stopping the agent is not removing the node.
                let _ = tx.send(true);
            });
            agent.run(stop(rx)).await?;
            if let Some(s) = server
                && let Ok(r) = s.await
            {
                r?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "x",
            "cluster",
            "apply",
            "--state",
            "f.json",
            "--etcd",
            "http://a:1,http://b:2",
        ])
        .unwrap();
        match c.command {
            Command::Cluster {
                op: ClusterOp::Apply { etcd, .. },
            } => assert_eq!(etcd.etcd, ["http://a:1", "http://b:2"]),
            c => unreachable!("{c:?}"),
        }
        assert!(Cli::try_parse_from(["x", "agent", "--node", "n"]).is_err());
        assert!(
            Cli::try_parse_from([
                "x",
                "agent",
                "--node",
                "n",
                "--etcd",
                "http://a:1",
                "--underlay",
                "192.0.2.1"
            ])
            .is_err(),
            "--underlay requires --sandbox-addr"
        );
        let agent = |extra: &[&str]| {
            let mut a = vec!["x", "agent", "--node", "n", "--etcd", "http://a:1"];
            a.extend(extra);
            Cli::try_parse_from(a)
        };
        assert!(
            agent(&["--xdp-attach", "native"]).is_err(),
            "needs --xdp-uplink"
        );
        assert!(agent(&["--xdp-uplink", "eth0", "--xdp-attach", "driver"]).is_err());
        match agent(&[
            "--xdp-uplink",
            "eth0",
            "--xdp-attach",
            "native",
            "--xdp-underlay-mtu",
            "9000",
        ])
        .unwrap()
        .command
        {
            Command::Agent {
                xdp_uplink,
                xdp_attach,
                xdp_underlay_mtu,
                ..
            } => {
                let x = xdp_options(xdp_uplink, xdp_attach, xdp_underlay_mtu).unwrap();
                assert_eq!(x.uplink, "eth0");
                assert_eq!(x.attach, AttachRequest::Native);
                assert_eq!(x.underlay_mtu, 9000);
            }
            c => unreachable!("{c:?}"),
        }
    }
}
