//! `vipmesh dns` on the host kernel (no IPVS needed): serves the state's names inside a
//! namespace; and errors for a missing namespace.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};

use vipmesh_testkit::Topology;

const STATE: &str = r#"{
  "networks": [{"id": "lab", "lb_netns": "vipmesh-no-such-lb", "lb_interface": "eth0",
    "subnets": [{"subnet": "10.0.0.0/24", "lb_addr": "10.0.0.2"}],
    "services": [
      {"name": "vote", "mode": {"vip": "10.0.0.9"}, "backends": [{"addr": "10.0.0.10"}]},
      {"name": "web", "mode": "dnsrr", "backends": [{"addr": "10.0.0.11"}, {"addr": "10.0.0.12"}]}
    ]}]
}"#;

fn state_file(tag: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("vipmesh-cli-{tag}-{}.json", std::process::id()));
    std::fs::write(&p, STATE).unwrap();
    p
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn dns_serves_the_state_in_a_namespace() {
    let mut topo = Topology::new("cli");
    let ns = topo.ns("client");
    let state = state_file("dns");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vipmesh"))
        .args([
            "dns",
            "--state",
            state.to_str().unwrap(),
            "--listen",
            "127.0.0.11:53",
            "--netns",
            &ns,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut answer = String::new();
    for _ in 0..100 {
        let out = topo.try_sh(&ns, "dig +short +time=1 +tries=1 @127.0.0.11 vote");
        answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if answer == "10.0.0.9" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let web = topo.sh(&ns, "dig +short @127.0.0.11 web");
    let nx = topo.sh(
        &ns,
        "dig @127.0.0.11 nothere.mesh.local | grep -c NXDOMAIN || true",
    );
    child.kill().unwrap();
    let _ = child.wait();
    let _ = std::fs::remove_file(&state);
    assert_eq!(answer, "10.0.0.9");
    let mut ips: Vec<&str> = web.lines().collect();
    ips.sort();
    assert_eq!(ips, vec!["10.0.0.11", "10.0.0.12"]);
    assert_eq!(nx.trim(), "1");
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn a_missing_namespace_is_reported_and_nothing_runs() {
    let state = state_file("missing");
    let s = state.to_str().unwrap();
    for args in [
        vec!["plan", "--state", s],
        vec!["apply", "--state", s],
        vec![
            "dns",
            "--state",
            s,
            "--listen",
            "127.0.0.11:53",
            "--netns",
            "vipmesh-no-such-client",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vipmesh"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("does not exist"), "{args:?}: {err}");
    }
    let _ = std::fs::remove_file(&state);
}

/// Bad files: a directory, a FIFO, an unreadable path, a corrupt or future drains file — each an
/// error naming the file, exit 2, nothing run.
#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn bad_files_exit_2_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("vipmesh-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.json");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    let state = state_file("badfiles");
    let corrupt = dir.join("drains.json");
    std::fs::write(&corrupt, "{not json").unwrap();
    let future = dir.join("future.json");
    std::fs::write(&future, r#"{"version": 2, "started": []}"#).unwrap();
    let s = state.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &std::path::Path)> = vec![
        (vec!["plan", "--state", dir.to_str().unwrap()], &dir),
        (vec!["plan", "--state", fifo.to_str().unwrap()], &fifo),
        (
            vec!["plan", "--state", s, "--drains", corrupt.to_str().unwrap()],
            &corrupt,
        ),
        (
            vec!["apply", "--state", s, "--drains", future.to_str().unwrap()],
            &future,
        ),
    ];
    for (args, named) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_vipmesh"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&named.display().to_string()),
            "{args:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&state);
}
