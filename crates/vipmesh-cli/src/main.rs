//! `vipmesh`: apply, plan and inspect a node's state file; serve a network's DNS.
//!
//! ```text
//! vipmesh apply  --state FILE [--drains FILE]   idempotent: prints the plan, then the report
//! vipmesh plan   --state FILE [--drains FILE]   dry run: the plan, with the rule diff
//! vipmesh status --state FILE                   services by name, their IPVS table and rules
//! vipmesh dns    --state FILE --listen ADDR [--network ID] [--netns NS] [--zone ZONE]
//! vipmesh agent  --node NAME --etcd URL[,URL...] [OPTIONS]    the per-node agent (etcd)
//! vipmesh cluster apply --etcd URL[,URL...] --state FILE [--if-revision N]
//! vipmesh cluster get   --etcd URL[,URL...]
//! ```
//!
//! `agent` and `cluster` are parsed by clap (`vipmesh agent --help`, `vipmesh cluster apply
//! --help`, ...) and run by `vipmesh_agent::cli::run`, exactly as the `vipmesh-agent`
//! command runs them; the other subcommands keep their hand-written parser, so their exit
//! codes and messages are unchanged.
//!
//! The state file is JSON (see the README); unknown fields and wrong types are reported with
//! their line and column. Exit status: 0 success, 1 failure (some steps failed, a namespace is
//! missing, no privileges), 2 usage or bad input (state file, drains file), 3 another
//! `vipmesh apply` holds the node lock.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vipmesh::model::{EndpointMode, Family, NodeState};
use vipmesh::plan::{DrainBook, now_secs};
use vipmesh::{Controller, ControllerConfig, Error};

const USAGE: &str = "usage:
  vipmesh apply  --state FILE [--drains FILE]
  vipmesh plan   --state FILE [--drains FILE]
  vipmesh status --state FILE
  vipmesh dns    --state FILE --listen ADDR [--network ID] [--netns NS] [--zone ZONE]
  vipmesh agent  --node NAME --etcd URL[,URL...] [OPTIONS]   (see vipmesh agent --help)
  vipmesh cluster apply --etcd URL[,URL...] --state FILE [--if-revision N]
  vipmesh cluster get   --etcd URL[,URL...]";

#[derive(Debug, Default)]
struct Args {
    state: Option<PathBuf>,
    drains: Option<PathBuf>,
    listen: Option<String>,
    netns: Option<String>,
    zone: Option<String>,
    network: Option<String>,
}

fn parse_args(rest: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--state" => a.state = Some(PathBuf::from(val()?)),
            "--drains" => a.drains = Some(PathBuf::from(val()?)),
            "--listen" => a.listen = Some(val()?),
            "--netns" => a.netns = Some(val()?),
            "--zone" => a.zone = Some(val()?),
            "--network" => a.network = Some(val()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

/// Renders an error with its chain of causes.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

type Failure = (u8, String);

/// Reads a regular file (not a directory, FIFO or device), naming it in every error.
fn read_file(path: &Path, what: &str) -> Result<String, Failure> {
    let meta =
        std::fs::metadata(path).map_err(|e| (2, format!("{what} {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err((2, format!("{what} {}: not a regular file", path.display())));
    }
    std::fs::read_to_string(path).map_err(|e| (2, format!("{what} {}: {e}", path.display())))
}

fn load(a: &Args) -> Result<NodeState, Failure> {
    let path = a
        .state
        .as_ref()
        .ok_or((2, "--state FILE is required".to_string()))?;
    let text = read_file(path, "state file")?;
    NodeState::from_json(&text).map_err(|e| (2, format!("{}: {}", path.display(), chain(&e))))
}

/// Where the drain clock is kept between runs: the drain timeout must count from when a
/// backend started draining, not from the latest `apply`.
fn drains_path(a: &Args) -> PathBuf {
    a.drains
        .clone()
        .unwrap_or_else(|| PathBuf::from("/run/vipmesh/drains.json"))
}

fn read_drains(p: &Path) -> Result<DrainBook, Failure> {
    match std::fs::metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DrainBook::default()),
        _ => {}
    }
    let text = read_file(p, "drains file")?;
    DrainBook::from_json(&p.display().to_string(), &text).map_err(|e| (2, chain(&e)))
}

fn write_drains(p: &Path, book: &DrainBook) -> Result<(), String> {
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    // Written whole, then renamed: a crash never leaves half a file.
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, book.to_json()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Holds the node lock (`flock(2)` on `/run/vipmesh/apply.lock`) until dropped, so two
/// `vipmesh apply` never interleave. The second one waits up to 30 s, then gives up.
struct NodeLock(#[allow(dead_code)] std::fs::File);

fn lock_node() -> Result<NodeLock, Failure> {
    let dir = Path::new("/run/vipmesh");
    std::fs::create_dir_all(dir).map_err(|e| (1, format!("{}: {e}", dir.display())))?;
    let path = dir.join("apply.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| (1, format!("{}: {e}", path.display())))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut told = false;
    loop {
        // SAFETY: flock on an fd we own; no memory is passed.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(NodeLock(f));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err((1, format!("lock {}: {err}", path.display())));
        }
        if std::time::Instant::now() >= deadline {
            return Err((
                3,
                format!(
                    "another vipmesh apply holds {} (waited 30 s); nothing was changed",
                    path.display()
                ),
            ));
        }
        if !told {
            eprintln!(
                "vipmesh: waiting for another vipmesh apply ({})",
                path.display()
            );
            told = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn controller(
    a: &Args,
    st: NodeState,
) -> Result<Controller<vipmesh::dataplane::RealKernel>, Failure> {
    let mut c = Controller::real(ControllerConfig::default());
    c.set_drains(read_drains(&drains_path(a))?);
    c.set_desired(st);
    Ok(c)
}

fn apply(a: &Args) -> Result<(), Failure> {
    let st = load(a)?;
    let _lock = lock_node()?;
    let mut c = controller(a, st)?;
    let now = now_secs();
    let (obs, failed) = c.observe(now);
    if let Some((_, e)) = failed.first() {
        return Err((1, chain(e)));
    }
    let plan = c.plan(&obs, now).map_err(|e| (1, chain(&e)))?;
    println!("== plan\n{plan}");
    let res = c.apply(&plan, obs, now);
    write_drains(&drains_path(a), c.drains())
        .map_err(|e| (1, format!("saving the drain clock: {e}")))?;
    match res {
        Ok(report) => {
            println!("== report\n{report}");
            Ok(())
        }
        Err(Error::StepsFailed { report, failed, .. }) => {
            println!("== report\n{report}");
            Err((1, format!("{failed} steps failed")))
        }
        Err(e) => Err((1, chain(&e))),
    }
}

fn plan(a: &Args) -> Result<(), Failure> {
    let st = load(a)?;
    let mut c = controller(a, st)?;
    let p = c.plan_now().map_err(|e| (1, chain(&e)))?;
    print!("{p}");
    Ok(())
}

fn status(a: &Args) -> Result<(), Failure> {
    let st = load(a)?;
    let mut c = controller(a, st.clone())?;
    let now = now_secs();
    let (obs, failed) = c.observe(now);
    if let Some((_, e)) = failed.first() {
        return Err((1, chain(e)));
    }
    let p = c.plan(&obs, now).map_err(|e| (1, chain(&e)))?;
    for n in st.all_networks() {
        let net = n.network();
        let subnets: Vec<String> = net.subnets.iter().map(|s| s.subnet.to_string()).collect();
        println!(
            "network {} ({}), namespace {}, fwmarks {}",
            net.id,
            subnets.join(" "),
            net.lb_netns,
            net.fwmarks
        );
        let Some(o) = obs.namespaces.get(&net.lb_netns) else {
            continue;
        };
        for s in n.services() {
            let vips = match s.mode {
                EndpointMode::DnsRr => {
                    let tasks: Vec<String> =
                        s.backends.iter().map(|b| b.addr.to_string()).collect();
                    println!("\n  service {} dnsrr -> {}", s.name, tasks.join(" "));
                    continue;
                }
                EndpointMode::Vip(v) => format!("vip {v}"),
                EndpointMode::Published => {
                    let ports: Vec<String> = s
                        .ports
                        .iter()
                        .map(|p| format!("{}/{}", p.protocol, p.port))
                        .collect();
                    format!("published {}", ports.join(","))
                }
            };
            let Some(mark) = p.marks.get(&net.id).and_then(|m| m.get(&s.name)) else {
                continue;
            };
            println!("\n  service {} {vips} fwmark {mark:#x}", s.name);
            for fam in s.lb_families(net) {
                let tag = if fam == Family::V6 { " IPv6" } else { "" };
                match o.ipvs.get(&(fam, *mark)) {
                    None => println!("    FWM  {mark}{tag} MISSING from IPVS"),
                    Some(svc) => {
                        println!("    FWM  {mark}{tag} {}", svc.scheduler);
                        for (addr, d) in &svc.dests {
                            let drain = c
                                .drains()
                                .started(*mark, *addr)
                                .map(|t| format!("  draining for {} s", now.saturating_sub(t)))
                                .unwrap_or_default();
                            println!(
                                "      -> {:<25} weight {:>5}  active {:>5}  inactive {:>5}{drain}",
                                format!("{addr}:0"),
                                d.weight,
                                d.active,
                                d.inactive
                            );
                        }
                    }
                }
            }
        }
        let rules_ok = p
            .namespaces
            .get(&net.lb_netns)
            .is_none_or(|ns| ns.rules.is_empty());
        println!(
            "\n  netfilter: our VIPMESH- chains in {} {}\n",
            net.lb_netns,
            if rules_ok {
                "match the state"
            } else {
                "DIFFER from the state (run apply)"
            }
        );
    }
    Ok(())
}

fn dns(a: &Args) -> Result<(), Failure> {
    let st = load(a)?;
    let listen: SocketAddr = a
        .listen
        .as_deref()
        .ok_or((2, "--listen ADDR is required".to_string()))?
        .parse()
        .map_err(|e| (2, format!("--listen: {e}")))?;
    let net =
        match &a.network {
            Some(id) => st
                .network(id)
                .ok_or((2, format!("--network {id:?}: no such network in the state")))?,
            None => {
                let mut it = st.networks();
                match (it.next(), it.next()) {
                    (Some(n), None) => n,
                    _ => return Err((
                        2,
                        "--network ID is required when the state has several networks (or none)"
                            .into(),
                    )),
                }
            }
        };
    let zone = a.zone.clone().unwrap_or_else(|| "mesh.local.".into());
    let table = vipmesh::dns::table(net, &zone).map_err(|e| (2, chain(&e)))?;
    let ns = match &a.netns {
        Some(n) => Some(vipmesh::dataplane::open_netns(n).map_err(|e: Error| (1, chain(&e)))?),
        None => None,
    };
    let server =
        vipmesh_dns::DnsServer::spawn(ns.as_ref(), listen, table).map_err(|e| (1, chain(&e)))?;
    println!(
        "vipmesh dns: serving zone {zone} on {} (Ctrl-C stops)",
        server.local_addr()
    );
    loop {
        std::thread::park();
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if matches!(cmd.as_str(), "agent" | "cluster") {
        // clap, with `vipmesh` as the program name in its usage and help texts.
        return vipmesh_agent::cli::run(std::iter::once("vipmesh".to_string()).chain(args));
    }
    let parsed = match parse_args(rest) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vipmesh: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let res = match cmd.as_str() {
        "apply" => apply(&parsed),
        "plan" => plan(&parsed),
        "status" => status(&parsed),
        "dns" => dns(&parsed),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err((2, format!("unknown command {other:?}\n{USAGE}"))),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("vipmesh: {msg}");
            ExitCode::from(code)
        }
    }
}
