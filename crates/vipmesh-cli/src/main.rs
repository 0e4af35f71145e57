//! `vipmesh`: apply, plan and inspect a vipmesh state file; serve its DNS.
//!
//! ```text
//! vipmesh apply  --state FILE [--drains FILE]   idempotent: prints the plan, then the report
//! vipmesh plan   --state FILE                   dry run
//! vipmesh status --state FILE                   services by name, their IPVS table and rules
//! vipmesh dns    --state FILE --listen ADDR [--netns NS] [--zone ZONE]
//! ```
//!
//! The state file is JSON (see the README); unknown fields and wrong types are reported with
//! their line and column. Exit status: 0 success, 1 failure, 2 usage or bad input.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use vipmesh::model::{DesiredState, EndpointMode};
use vipmesh::plan::{DrainBook, now_secs};
use vipmesh::{Error, KernelMesh, Mesh};

const USAGE: &str = "usage:
  vipmesh apply  --state FILE [--drains FILE]
  vipmesh plan   --state FILE
  vipmesh status --state FILE
  vipmesh dns    --state FILE --listen ADDR [--netns NS] [--zone ZONE]";

#[derive(Debug, Default)]
struct Args {
    state: Option<PathBuf>,
    drains: Option<PathBuf>,
    listen: Option<String>,
    netns: Option<String>,
    zone: Option<String>,
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

fn load(a: &Args) -> Result<DesiredState, (u8, String)> {
    let path = a
        .state
        .as_ref()
        .ok_or((2, "--state FILE is required".to_string()))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| (2, format!("cannot read {}: {e}", path.display())))?;
    DesiredState::from_json(&text).map_err(|e| (2, format!("{}: {}", path.display(), chain(&e))))
}

fn open(d: &DesiredState) -> Result<KernelMesh, (u8, String)> {
    Mesh::kernel(d.network()).map_err(|e| (1, chain(&e)))
}

/// Where the drain clock is kept between runs: the drain timeout must count from when a
/// backend started draining, not from the latest `apply`.
fn drains_path(a: &Args, d: &DesiredState) -> PathBuf {
    a.drains.clone().unwrap_or_else(|| {
        let ns = d.network().lb_netns.replace('/', "_");
        PathBuf::from(format!("/run/vipmesh/{ns}.drains.json"))
    })
}

fn read_drains(p: &PathBuf) -> DrainBook {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<(u32, std::net::IpAddr, u64)>>(&t).ok())
        .map(DrainBook::from_entries)
        .unwrap_or_default()
}

fn write_drains(p: &PathBuf, book: &DrainBook) -> Result<(), String> {
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string(&book.entries()).map_err(|e| e.to_string())?;
    std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))
}

fn apply(a: &Args) -> Result<(), (u8, String)> {
    let d = load(a)?;
    let mut mesh = open(&d)?;
    let dp = drains_path(a, &d);
    mesh.set_drains(read_drains(&dp));
    let now = now_secs();
    let (plan, _) = mesh.plan_at(&d, now).map_err(|e| (1, chain(&e)))?;
    println!("== plan\n{plan}");
    let report = mesh.execute(&d, &plan, now).map_err(|e| (1, chain(&e)))?;
    println!("== report\n{report}");
    write_drains(&dp, mesh.drains()).map_err(|e| (1, format!("saving the drain clock: {e}")))?;
    if report.ok() {
        Ok(())
    } else {
        Err((1, "some steps failed".into()))
    }
}

fn plan(a: &Args) -> Result<(), (u8, String)> {
    let d = load(a)?;
    let mut mesh = open(&d)?;
    mesh.set_drains(read_drains(&drains_path(a, &d)));
    let (plan, _) = mesh.plan(&d).map_err(|e| (1, chain(&e)))?;
    print!("{plan}");
    Ok(())
}

fn status(a: &Args) -> Result<(), (u8, String)> {
    let d = load(a)?;
    let mut mesh = open(&d)?;
    let obs = mesh.observe(&d).map_err(|e| (1, chain(&e)))?;
    let marks: BTreeMap<String, u32> = obs
        .marks
        .iter()
        .map(|(k, (m, _))| (k.to_string(), *m))
        .collect();
    println!(
        "network {} ({}), LB namespace {}",
        d.network().name,
        d.network().subnet,
        d.network().lb_netns
    );
    for s in d.services() {
        match s.mode {
            EndpointMode::DnsRr => {
                let tasks: Vec<String> = s.backends.iter().map(|b| b.addr.to_string()).collect();
                println!("\nservice {} dnsrr -> {}", s.name, tasks.join(" "));
            }
            EndpointMode::Vip(vip) => {
                let Some(mark) = marks.get(s.name.as_str()) else {
                    println!("\nservice {} vip {vip}: NOT APPLIED", s.name);
                    continue;
                };
                println!("\nservice {} vip {vip} fwmark {mark:#x}", s.name);
                match obs.ipvs.get(mark) {
                    None => println!("  FWM  {mark} MISSING from IPVS"),
                    Some(svc) => {
                        println!("  FWM  {mark} {}", svc.scheduler);
                        println!(
                            "    {:<28} {:>6} {:>10} {:>9}",
                            "-> RemoteAddress:Port", "Weight", "ActiveConn", "InActConn"
                        );
                        for (addr, dst) in &svc.dests {
                            println!(
                                "    -> {:<25} {:>6} {:>10} {:>9}",
                                format!("{addr}:0"),
                                dst.weight,
                                dst.active,
                                dst.inactive
                            );
                        }
                    }
                }
            }
        }
    }
    println!(
        "\nnetfilter: our VIPMESH- chains {}",
        if obs.rules_match {
            "match the state"
        } else {
            "DIFFER from the state (run apply)"
        }
    );
    Ok(())
}

fn dns(a: &Args) -> Result<(), (u8, String)> {
    let d = load(a)?;
    let listen: SocketAddr = a
        .listen
        .as_deref()
        .ok_or((2, "--listen ADDR is required".to_string()))?
        .parse()
        .map_err(|e| (2, format!("--listen: {e}")))?;
    let zone = a.zone.clone().unwrap_or_else(|| "mesh.local.".into());
    let table = vipmesh::dns::table(&d, &zone).map_err(|e| (2, chain(&e)))?;
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
