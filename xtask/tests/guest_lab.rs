//! The lab's own guest test: proves the path end to end (host-built binary, guest kernel,
//! modules, /proc) before any IPVS code is involved.

use std::process::Command;

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn ip_vs_loads_and_proc_shows_the_table() {
    let st = Command::new("modprobe").arg("ip_vs").status().unwrap();
    assert!(
        st.success(),
        "modprobe ip_vs failed: the guest kernel lacks IPVS?"
    );
    let table = std::fs::read_to_string("/proc/net/ip_vs").unwrap();
    let first = table.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("IP Virtual Server version 1."),
        "unexpected /proc/net/ip_vs header: {first:?}"
    );
    assert!(
        table.contains("Prot LocalAddress:Port Scheduler Flags"),
        "{table}"
    );
    let modules = std::fs::read_to_string("/proc/modules").unwrap();
    assert!(
        modules.lines().any(|l| l.starts_with("ip_vs ")),
        "ip_vs is not listed as loaded"
    );
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn the_guest_runs_debians_kernel_with_our_environment() {
    assert_eq!(std::env::var("VIPMESH_GUEST").as_deref(), Ok("1"));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(
        release.trim().ends_with("-amd64"),
        "not a Debian stock kernel: {release}"
    );
    // Root, with the capabilities the suites need.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    );
}
