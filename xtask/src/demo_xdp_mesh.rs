//! `cargo xtask demo ingress-xdp`: the XDP ingress mesh across two node namespaces on the host
//! kernel (XDP and tcx, no IPVS), from `crates/vipmesh/examples/ingress_xdp_demo.rs`: Maglev
//! over the tasks of both nodes, every task printing the real client address, one flow landing
//! on the same task via either node, and the DNAT + MASQUERADE path beside it where the task
//! sees the node's address. Exits 0 only if all hold.

use std::process::Command;

use crate::cmd::workspace_root;

/// Builds and runs the demo; its exit status.
pub fn run() -> i32 {
    let exe = match super::build_example("vipmesh", "ingress_xdp_demo", "xdp") {
        Ok(e) => e,
        Err(e) => {
            eprintln!("xtask demo: {e}");
            return 1;
        }
    };
    println!("\n=== ingress-xdp demo (host kernel)");
    match Command::new(&exe)
        .current_dir(workspace_root().join("crates/vipmesh"))
        .status()
    {
        Ok(s) if s.success() => 0,
        Ok(s) => {
            eprintln!("xtask demo: ingress-xdp demo failed ({s})");
            1
        }
        Err(e) => {
            eprintln!("xtask demo: cannot run {}: {e}", exe.display());
            1
        }
    }
}
