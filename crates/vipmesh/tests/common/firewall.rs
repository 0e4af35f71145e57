//! The firewall backend the guest tests run on: `VIPMESH_FIREWALL=nftables` runs the same
//! test bodies on nftables (`cargo xtask test` runs the mesh and ingress suites both ways).
#![allow(dead_code, clippy::panic)]

use vipmesh::model::{Firewall, NetworkState, NodeOptions, NodeState};

/// The backend of this run (iptables unless `VIPMESH_FIREWALL` says otherwise; an
/// unknown value fails the test loudly).
pub fn firewall() -> Firewall {
    match std::env::var("VIPMESH_FIREWALL") {
        Err(_) => Firewall::Iptables,
        Ok(v) if v.is_empty() => Firewall::Iptables,
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("VIPMESH_FIREWALL: {e}")),
    }
}

/// True on nftables.
pub fn nft() -> bool {
    firewall() == Firewall::Nftables
}

/// `d` on this run's backend.
pub fn on(d: NodeState) -> NodeState {
    with(d, firewall())
}

/// Loads the nf_tables modules the nft backend uses (in the guest; the kernel would autoload
/// most, this makes a missing one show up as such). Once per process.
pub fn load_nft_modules() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = std::process::Command::new("modprobe")
            .args([
                "-qa",
                "nf_tables",
                "nft_chain_nat",
                "nft_nat",
                "nft_masq",
                "nft_redir",
                "nft_reject_inet",
                "nft_fib_inet",
                "nft_ct",
            ])
            .status();
    });
}

/// `d` on `firewall`.
pub fn with(d: NodeState, firewall: Firewall) -> NodeState {
    if firewall == Firewall::Nftables {
        load_nft_modules();
    }
    let nets: Vec<NetworkState> = d.networks().cloned().collect();
    let opts = NodeOptions {
        firewall,
        ..d.options().clone()
    };
    NodeState::with_ingress(nets, d.ingress().cloned(), opts)
        .unwrap_or_else(|e| panic!("the same state on {firewall}: {e}"))
}

/// The word a report uses for a firewall batch of this run's backend.
pub fn step_word() -> &'static str {
    if nft() { "nftables" } else { "netfilter" }
}

/// A namespace's whole firewall as text: `iptables-save` (no comment lines) and `nft -s list
/// ruleset` (iptables-nft's own tables included; `-s`: without counters, which traffic moves),
/// for byte comparisons.
pub fn dump(sh: impl Fn(&str) -> String) -> String {
    format!(
        "{}\n--- nft\n{}",
        sh("iptables-save | grep -v '^#' || true"),
        sh("nft -s list ruleset")
    )
}
