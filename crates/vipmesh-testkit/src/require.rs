//! The one skip policy: a privileged test states what it needs, and when this machine cannot
//! give it, the test FAILS with the reason. It never returns early and passes.
//!
//! `cargo xtask test` runs host tests as root on the host and guest tests in the IPVS guest,
//! so there every requirement holds; a plain `cargo test -- --ignored` as a normal user fails
//! these tests loudly, which is the point: an ignored privileged test that "passed" without
//! running would be a lie in the summary.

use std::path::Path;
use std::process::Command;

/// Something a privileged test needs from the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Requirement {
    /// Effective uid 0 (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF).
    Root,
    /// Root and `ip` from iproute2: what [`TestNetns`](crate::TestNetns) and
    /// [`Topology`](crate::Topology) need.
    Netns,
    /// IPVS in this kernel (`modprobe ip_vs`, then `/proc/net/ip_vs` exists): the guest
    /// kernel has it, the host's does not.
    Ipvs,
    /// A kernel module that `modprobe` loads (or that is built in: `/sys/module/<name>`).
    Module(&'static str),
    /// A program on `PATH` (`dig`, `wrk`, `busybox`, ...).
    Tool(&'static str),
}

impl Requirement {
    /// Why this requirement does not hold here, or `None` when it does.
    pub fn unmet(self) -> Option<String> {
        match self {
            Requirement::Root => (!is_root())
                .then(|| "not running as root (needs CAP_NET_ADMIN and CAP_SYS_ADMIN)".into()),
            Requirement::Netns => Requirement::Root
                .unmet()
                .or_else(|| Requirement::Tool("ip").unmet()),
            Requirement::Ipvs => {
                let _ = Command::new("modprobe").args(["-q", "ip_vs"]).status();
                (!Path::new("/proc/net/ip_vs").exists()).then(|| {
                    "this kernel has no IPVS (/proc/net/ip_vs is missing); run in the guest \
                     (cargo xtask test)"
                        .into()
                })
            }
            Requirement::Module(name) => {
                let loaded = Command::new("modprobe")
                    .args(["-q", name])
                    .status()
                    .is_ok_and(|s| s.success());
                (!loaded && !Path::new("/sys/module").join(name).exists()).then(|| {
                    format!("kernel module {name} cannot be loaded (modprobe -q {name} failed)")
                })
            }
            Requirement::Tool(tool) => {
                (!on_path(tool)).then(|| format!("`{tool}` is not installed (not found on PATH)"))
            }
        }
    }
}

/// Every unmet requirement of `needs`, in order, as reasons; empty when all hold.
///
/// For demos and benchmarks that print the reasons and exit non-zero themselves; tests call
/// [`require`].
pub fn unmet(needs: &[Requirement]) -> Vec<String> {
    needs.iter().filter_map(|r| r.unmet()).collect()
}

/// Makes the calling test fail, with every reason, unless all of `needs` hold here.
///
/// # Panics
/// When a requirement does not hold: that is the policy (a privileged test that cannot run
/// fails loudly; it never passes without running).
///
/// # Examples
/// ```no_run
/// use vipmesh_testkit::{Requirement, require};
///
/// #[test]
/// #[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
/// fn answers_on_53() {
///     require(&[Requirement::Netns, Requirement::Tool("dig")]);
///     // ... the test proper
/// }
/// ```
#[track_caller]
pub fn require(needs: &[Requirement]) {
    let why = unmet(needs);
    if !why.is_empty() {
        let test = std::thread::current()
            .name()
            .unwrap_or("this test")
            .to_owned();
        #[allow(clippy::panic)]
        {
            panic!(
                "{test} CANNOT RUN HERE and fails instead of passing unrun: {}. \
                 Run privileged tests with `cargo xtask test` (host tests as root, guest tests \
                 in the IPVS guest).",
                why.join("; ")
            );
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let is_exe = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if tool.contains('/') {
        return is_exe(Path::new(tool));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| is_exe(&dir.join(tool))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_is_unmet_with_its_name() {
        let why = unmet(&[Requirement::Tool("vipmesh-no-such-tool")]);
        assert_eq!(why.len(), 1);
        assert!(why[0].contains("vipmesh-no-such-tool"), "{why:?}");
    }

    #[test]
    fn a_present_tool_is_met() {
        assert!(Requirement::Tool("sh").unmet().is_none());
    }

    #[test]
    #[should_panic(expected = "CANNOT RUN HERE")]
    fn require_fails_the_test_instead_of_skipping() {
        require(&[Requirement::Tool("vipmesh-no-such-tool")]);
    }
}
