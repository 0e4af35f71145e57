//! Host prerequisites, installed idempotently with apt.

use std::process::Command;

use crate::cmd::{self, Result};
use crate::lab_err;

/// (file that proves the package is there, Debian package).
pub const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("/bin/busybox", "busybox-static"),
    ("ipvsadm", "ipvsadm"),
    ("iptables", "iptables"),
    ("ip", "iproute2"),
    ("depmod", "kmod"),
    ("cpio", "cpio"),
    ("xz", "xz-utils"),
    ("curl", "curl"),
    ("clang", "clang"),
    ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
    ("bpftool", "bpftool"),
    ("dig", "dnsutils"),
    ("ping", "iputils-ping"),
    ("ethtool", "ethtool"),
    ("wrk", "wrk"),
    ("tcpdump", "tcpdump"),
    ("flock", "util-linux"),
    ("nft", "nftables"),
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    ("openssl", "openssl"),
    ("protoc", "protobuf-compiler"),
    (
        "/usr/include/google/protobuf/descriptor.proto",
        "libprotobuf-dev",
    ),
];

/// Installs whatever is missing. Runs `apt-get update` only when the install fails.
pub fn ensure_all() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(probe, _)| !cmd::have(probe) && !cmd::have(&format!("/usr/sbin/{probe}")))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let install = || {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing);
        cmd::output(&mut c)
    };
    if install().is_err() {
        cmd::output(Command::new("apt-get").args(["update", "-qq"]))
            .map_err(|e| lab_err!("prerequisite install failed: apt-get update: {e}"))?;
        install().map_err(|e| lab_err!("prerequisite install failed: {e}"))?;
    }
    Ok(())
}
