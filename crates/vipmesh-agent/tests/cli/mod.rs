//! Running the `vipmesh-agent` binary from the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::process::{Command, Output};

/// Runs the `vipmesh-agent` binary with `args`.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vipmesh-agent"))
        .args(args)
        .output()
        .unwrap()
}

/// A process's output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A cluster file with one network and one VIP service.
pub const FILE: &str = r#"{"networks": [{"id": "demo", "lb_netns": "lb-demo", "lb_interface": "eth0",
  "subnets": [{"subnet": "10.0.0.0/24", "lb_addr": "10.0.0.2"}],
  "services": [{"name": "vote", "mode": {"vip": ["10.0.0.9"]}, "backends": [{"addr": "10.0.0.10"}]}]}]}"#;
