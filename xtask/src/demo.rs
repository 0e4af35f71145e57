//! `cargo xtask demo [vip|dnsrr|ingress|cluster|ingress-xdp|xdp|all]`: replays the seed demos.
//!
//! `vip`, `dnsrr`, `ingress` and `cluster` need IPVS, so they are built on the host and run in
//! one guest boot; `xdp` runs on the host kernel (XDP, no IPVS) in namespaces it creates.
//! `cluster` (`crates/vipmesh-agent/examples/cluster_demo.rs`) runs a 3-member etcd cluster
//! and one `vipmesh-agent` process per node, and gets the agent binary built here in
//! `VIPMESH_AGENT_BIN`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cmd::{self, shell_quote, workspace_root};
use crate::{prereq, vm};

#[path = "demo_xdp_mesh.rs"]
mod demo_xdp_mesh;

/// Builds one example and returns its executable.
fn build_example(package: &str, name: &str, features: &str) -> Result<PathBuf, String> {
    build(package, "--example", name, features)
}

/// Builds one target (`kind`: `--example` or `--bin`) and returns its executable.
fn build(package: &str, kind: &str, name: &str, features: &str) -> Result<PathBuf, String> {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root())
        .args(["build", "-p", package, kind, name]);
    if !features.is_empty() {
        c.args(["--features", features]);
    }
    c.arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit());
    let out = c
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cmd::show(&c)))?;
    if !out.status.success() {
        return Err(format!("building {name} failed"));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("cargo reported no executable for {name}"))
}

/// The guest script's command line of demo `name`, its programs built.
fn guest_command(name: &str) -> Result<String, String> {
    if name == "cluster" {
        let agent = build("vipmesh-agent", "--bin", "vipmesh-agent", "")?;
        let exe = build_example("vipmesh-agent", "cluster_demo", "")?;
        return Ok(format!(
            "VIPMESH_AGENT_BIN={} {}",
            shell_quote(&agent.to_string_lossy()),
            shell_quote(&exe.to_string_lossy())
        ));
    }
    let exe = build_example("vipmesh", &format!("{name}_demo"), "test-util")?;
    Ok(shell_quote(&exe.to_string_lossy()))
}

fn guest_demos(names: &[&str], firewall: &str) -> i32 {
    let mut script = format!(
        "set -u\nrc=0\nexport VIPMESH_FIREWALL={}\n",
        shell_quote(firewall)
    );
    for n in names {
        let line = match guest_command(n) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("xtask demo: {e}");
                return 1;
            }
        };
        script.push_str(&format!(
            "echo; echo \"=== {n} demo (guest kernel $(uname -r))\"\n{line} || rc=1\n"
        ));
    }
    script.push_str("exit $rc\n");
    // The cluster demo runs etcd and the agents under emulation: minutes, not seconds.
    let cluster = if names.contains(&"cluster") { 2400 } else { 0 };
    let opts = vm::VmOpts {
        timeout: Duration::from_secs(1200 + cluster),
        ..vm::VmOpts::default()
    };
    match vm::run(&["bash".into(), "-c".into(), script], &opts) {
        Ok(rc) => rc,
        Err(e) => {
            eprintln!("xtask demo: {e}");
            1
        }
    }
}

fn xdp_demo() -> i32 {
    let exe = match build_example("vipmesh-xdp", "xdp_demo", "test-util") {
        Ok(e) => e,
        Err(e) => {
            eprintln!("xtask demo: {e}");
            return 1;
        }
    };
    println!("\n=== xdp demo (host kernel)");
    match Command::new(&exe).current_dir(workspace_root()).status() {
        Ok(s) if s.success() => 0,
        Ok(s) => {
            eprintln!("xtask demo: xdp demo failed ({s})");
            1
        }
        Err(e) => {
            eprintln!("xtask demo: cannot run {}: {e}", exe.display());
            1
        }
    }
}

pub fn main(args: &[String]) -> i32 {
    // `--firewall iptables|nftables` (default iptables) selects the backend of the guest demos.
    let mut firewall = "iptables".to_string();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--firewall" => match it.next().map(String::as_str) {
                Some(f @ ("iptables" | "nftables")) => firewall = f.to_string(),
                other => {
                    eprintln!("xtask demo: --firewall takes iptables or nftables, not {other:?}");
                    return 2;
                }
            },
            _ => rest.push(a.clone()),
        }
    }
    let which = rest.first().map(String::as_str).unwrap_or("all");
    if let Err(e) = prereq::ensure_all() {
        eprintln!("xtask demo: {e}");
        return 1;
    }
    match which {
        "vip" => guest_demos(&["vip"], &firewall),
        "dnsrr" => guest_demos(&["dnsrr"], &firewall),
        "xdp" => xdp_demo(),
        "ingress" => guest_demos(&["ingress"], &firewall),
        "cluster" => guest_demos(&["cluster"], &firewall),
        "ingress-xdp" => demo_xdp_mesh::run(),
        "all" => {
            let g = guest_demos(&["vip", "dnsrr", "ingress", "cluster"], &firewall);
            let x = xdp_demo();
            let ix = demo_xdp_mesh::run();
            println!(
                "\n=== demos: vip+dnsrr+ingress+cluster {}, xdp {}, ingress-xdp {}",
                if g == 0 { "PASS" } else { "FAIL" },
                if x == 0 { "PASS" } else { "FAIL" },
                if ix == 0 { "PASS" } else { "FAIL" }
            );
            i32::from(g != 0 || x != 0 || ix != 0)
        }
        other => {
            eprintln!(
                "xtask demo: unknown demo {other:?}\nusage: cargo xtask demo [vip|dnsrr|ingress|cluster|ingress-xdp|xdp|all] [--firewall iptables|nftables]"
            );
            2
        }
    }
}
