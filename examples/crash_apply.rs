//! The crash harness's applier: applies one node state through a fresh controller (as a
//! restarted `vipmesh` would) and exits 0, unless the `failpoints` feature's
//! `VIPMESH_KILL_AT_STEP=N` kills it with `SIGKILL` just before its N-th kernel write.
//!
//! ```text
//! crash_apply STATE.json
//! crash_apply --netns NS [--interface lb0] [--services 200] [--backends 3]
//! ```
//!
//! The second form generates the harness's large state: `--services` VIP services in
//! 10.64.0.0/16 (VIPs from 10.64.1.10, the LB address 10.64.0.2 on `--interface`), each with
//! `--backends` real servers drawn in turn from a pool of 64 (so services share them).
//! Without `VIPMESH_KILL_AT_STEP` it prints how many kernel writes the apply made: the range
//! of useful kill points. `crates/vipmesh/tests/guest_crash.rs` runs the same apply
//! (re-executing itself) at kill points spread over that range and checks what a restarted
//! process converges to.
//!
//! ```sh
//! cargo build -p vipmesh --features failpoints --example crash_apply
//! ip netns add lb-crash && ip -n lb-crash link add lb0 type dummy && ip -n lb-crash link set lb0 up
//! ip -n lb-crash addr add 10.64.0.2/16 dev lb0
//! VIPMESH_KILL_AT_STEP=300 target/debug/examples/crash_apply --netns lb-crash   # killed
//! target/debug/examples/crash_apply --netns lb-crash                            # converges
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use vipmesh::model::NodeState;
use vipmesh::{Controller, ControllerConfig, Error};

const USAGE: &str = "usage: crash_apply STATE.json
       crash_apply --netns NS [--interface lb0] [--services 200] [--backends 3]";

/// The generated state file (the README's format).
fn generated(netns: &str, interface: &str, services: usize, backends: usize) -> String {
    let pool = 64;
    let svcs: Vec<serde_json::Value> = (0..services)
        .map(|i| {
            let b: Vec<serde_json::Value> = (0..backends)
                .map(|j| {
                    serde_json::json!({"addr": format!("10.64.100.{}", 1 + (i * backends + j) % pool)})
                })
                .collect();
            serde_json::json!({
                "name": format!("s{i:04}"),
                "mode": {"vip": [format!("10.64.{}.{}", 1 + i / 200, 10 + i % 200)]},
                "backends": b,
            })
        })
        .collect();
    serde_json::json!({
        "networks": [{
            "id": "crash", "lb_netns": netns, "lb_interface": interface,
            "subnets": [{"subnet": "10.64.0.0/16", "lb_addr": "10.64.0.2"}],
            "services": svcs,
        }]
    })
    .to_string()
}

fn state_text(args: &[String]) -> Result<String, String> {
    match args {
        [path] if !path.starts_with("--") => {
            std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
        }
        _ => {
            let (mut netns, mut iface, mut services, mut backends) =
                (None, "lb0".to_string(), 200usize, 3usize);
            let mut it = args.iter();
            while let Some(flag) = it.next() {
                let val = it
                    .next()
                    .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
                let count = || {
                    val.parse::<usize>()
                        .map_err(|e| format!("{flag} {val:?}: {e}"))
                };
                match flag.as_str() {
                    "--netns" => netns = Some(val.clone()),
                    "--interface" => iface = val.clone(),
                    "--services" => services = count()?,
                    "--backends" => backends = count()?,
                    other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
                }
            }
            let netns = netns.ok_or_else(|| USAGE.to_string())?;
            if services > 200 * 250 {
                return Err(format!(
                    "--services {services}: at most 50000 fit the subnet"
                ));
            }
            Ok(generated(&netns, &iface, services, backends))
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let text = match state_text(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("crash_apply: {e}");
            return ExitCode::from(2);
        }
    };
    let state = match NodeState::from_json(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("crash_apply: {}", vipmesh::apply::chain(Some(&e)));
            return ExitCode::from(2);
        }
    };
    let mut ctl = Controller::real(ControllerConfig::default());
    ctl.set_desired(state);
    match ctl.sync_full(vipmesh::plan::now_secs()) {
        Ok(report) => {
            println!("applied: {} kernel writes", report.steps.len());
            ExitCode::SUCCESS
        }
        Err(Error::StepsFailed { report, .. }) => {
            eprintln!("crash_apply: some steps failed:\n{report}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("crash_apply: {}", vipmesh::apply::chain(Some(&e)));
            ExitCode::from(1)
        }
    }
}
