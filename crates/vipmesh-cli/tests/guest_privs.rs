//! The `vipmesh` command without privileges (guest kernel): run as `nobody` with every
//! capability dropped (`setpriv`), `plan` and `apply` exit 1 with one error line naming the
//! cause, and change nothing in the kernel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

use vipmesh_testkit::vip::{IpFamily, VipLab};

fn unprivileged(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_vipmesh"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("setpriv (util-linux) is needed: {e}"))
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn without_cap_net_admin_plan_and_apply_fail_with_one_line_naming_the_cause() {
    let lab = VipLab::new(IpFamily::V4, "vote", 1);
    let dir = std::env::temp_dir().join(format!("vipmesh-privs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let state = dir.join("state.json");
    std::fs::write(
        &state,
        format!(
            r#"{{"networks": [{{"id": "lab", "lb_netns": "{lb}", "lb_interface": "eth0",
    "subnets": [{{"subnet": "10.0.0.0/24", "lb_addr": "10.0.0.2"}}],
    "services": [{{"name": "vote", "mode": {{"vip": "10.0.0.9"}},
                   "backends": [{{"addr": "10.0.0.10"}}]}}]}}]}}"#,
            lb = lab.lb
        ),
    )
    .unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = state.to_str().unwrap();
    let drains = dir.join("drains.json");
    let d = drains.to_str().unwrap();

    for args in [
        vec!["plan", "--state", s, "--drains", d],
        vec!["apply", "--state", s, "--drains", d],
    ] {
        let out = unprivileged(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        eprintln!(
            "vipmesh {} as nobody: exit {:?}: {stderr}",
            args[0],
            out.status.code()
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: {stderr}{}",
            args[0],
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(lines.len(), 1, "{}: one error line: {stderr}", args[0]);
        let l = lines[0].to_ascii_lowercase();
        assert!(
            l.contains("cap_net_admin")
                || l.contains("not permitted")
                || l.contains("permission denied"),
            "{}: the line names the cause: {stderr}",
            args[0]
        );
    }
    assert_eq!(lab.sh(&lab.lb, "ipvsadm -Sn"), "", "nothing applied");
    assert!(!lab.sh(&lab.lb, "iptables-save").contains("VIPMESH"));
    assert!(!lab.sh(&lab.lb, "ip -o addr").contains("10.0.0.9"));
    let _ = std::fs::remove_dir_all(&dir);
}
