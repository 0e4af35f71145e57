//! `vipmesh-agent cluster apply|get` against a real etcd on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli;
mod etcd;

use cli::{FILE, cli, text};
use etcd::Etcd;

#[tokio::test]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn cluster_apply_then_get_and_a_stale_revision_is_refused() {
    let e = Etcd::start().await;
    let url = e.url();
    let path = e.dir.join("cluster.json");
    std::fs::write(&path, FILE).unwrap();
    let p = path.to_str().unwrap();

    let out = cli(&["cluster", "apply", "--etcd", &url, "--state", p]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("put /vipmesh/v1/services/demo/vote"),
        "{stdout}"
    );

    let out = cli(&["cluster", "get", "--etcd", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["networks"][0]["services"][0]["name"], "vote");
    let rev: i64 = text(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("revision "))
        .unwrap()
        .parse()
        .unwrap();

    // Someone else applies; an apply based on the old revision is refused.
    std::fs::write(&path, FILE.replace("10.0.0.10", "10.0.0.11")).unwrap();
    let out = cli(&["cluster", "apply", "--etcd", &url, "--state", p]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(&path, FILE.replace("10.0.0.10", "10.0.0.12")).unwrap();
    let out = cli(&[
        "cluster",
        "apply",
        "--etcd",
        &url,
        "--state",
        p,
        "--if-revision",
        &rev.to_string(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("nothing was written"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(&["cluster", "get", "--etcd", &url]);
    assert!(text(&out.stdout).contains("10.0.0.11"));

    // An invalid file names the key and writes nothing.
    std::fs::write(&path, FILE.replace("10.0.0.9", "10.9.0.9")).unwrap();
    let out = cli(&["cluster", "apply", "--etcd", &url, "--state", p]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/vipmesh/v1/services/demo/vote"),
        "{}",
        text(&out.stderr)
    );
    // Usage errors exit 2.
    assert_eq!(
        cli(&["cluster", "apply", "--etcd", &url]).status.code(),
        Some(2)
    );
}
