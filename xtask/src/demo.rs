//! `cargo xtask demo [vip|dnsrr|ingress|ingress-xdp|xdp|all]`: replays the seed demos.
//!
//! `vip` and `dnsrr` need IPVS, so they are built on the host and run in one guest boot;
//! `xdp` runs on the host kernel (XDP, no IPVS) in namespaces it creates.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cmd::{self, shell_quote, workspace_root};
use crate::{prereq, vm};

#[path = "demo_xdp_mesh.rs"]
mod demo_xdp_mesh;

/// Builds one example and returns its executable.
fn build_example(package: &str, name: &str, features: &str) -> Result<PathBuf, String> {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root())
        .args([
            "build",
            "-p",
            package,
            "--example",
            name,
            "--features",
            features,
        ])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit());
    let out = c
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cmd::show(&c)))?;
    if !out.status.success() {
        return Err(format!("building example {name} failed"));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("cargo reported no executable for example {name}"))
}

fn guest_demos(names: &[&str], firewall: &str) -> i32 {
    let mut script = format!(
        "set -u\nrc=0\nexport VIPMESH_FIREWALL={}\n",
        shell_quote(firewall)
    );
    for n in names {
        let exe = match build_example("vipmesh", &format!("{n}_demo"), "test-util") {
            Ok(e) => e,
            Err(e) => {
                eprintln!("xtask demo: {e}");
                return 1;
            }
        };
        script.push_str(&format!(
            "echo; echo \"=== {n} demo (guest kernel $(uname -r))\"\n{} || rc=1\n",
            shell_quote(&exe.to_string_lossy())
        ));
    }
    script.push_str("exit $rc\n");
    let opts = vm::VmOpts {
        timeout: Duration::from_secs(1200),
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
        "ingress-xdp" => demo_xdp_mesh::run(),
        "all" => {
            let g = guest_demos(&["vip", "dnsrr", "ingress"], &firewall);
            let x = xdp_demo();
            let ix = demo_xdp_mesh::run();
            println!(
                "\n=== demos: vip+dnsrr+ingress {}, xdp {}, ingress-xdp {}",
                if g == 0 { "PASS" } else { "FAIL" },
                if x == 0 { "PASS" } else { "FAIL" },
                if ix == 0 { "PASS" } else { "FAIL" }
            );
            i32::from(g != 0 || x != 0 || ix != 0)
        }
        other => {
            eprintln!(
                "xtask demo: unknown demo {other:?}\nusage: cargo xtask demo [vip|dnsrr|ingress|ingress-xdp|xdp|all] [--firewall iptables|nftables]"
            );
            2
        }
    }
}
