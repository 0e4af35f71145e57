//! TLS to etcd: a member that serves clients over TLS only and checks client certificates
//! (certificates made here with `openssl`), reached by `vipmesh-agent cluster` with
//! `--etcd-cacert/--etcd-cert/--etcd-key`; refused without a client certificate or with
//! another CA; and the TLS options' bad input, refused before anything connects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli;
mod etcd;

use std::path::{Path, PathBuf};
use std::process::Command;

use cli::{FILE, cli, text};
use etcd::{Etcd, ServerTls};
use vipmesh_agent::store::Tls;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl (apt-get install openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        text(&out.stderr)
    );
}

/// A CA (`<name>-ca.pem`) and certificates it signs: `server.pem` for 127.0.0.1 and
/// `client.pem`, with their keys (PKCS#8 P-256).
fn pki(dir: &Path, name: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = format!("{name}-ca");
    let mut a = vec!["req", "-x509", "-days", "1", "-subj"];
    let subj = format!("/CN=vipmesh test {ca}");
    let (ca_key, ca_pem) = (format!("{ca}.key"), format!("{ca}.pem"));
    a.extend([subj.as_str(), "-keyout", &ca_key, "-out", &ca_pem]);
    a.extend(ec);
    openssl(dir, &a);
    for (who, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (key, csr, pem) = (
            format!("{name}-{who}.key"),
            format!("{name}-{who}.csr"),
            format!("{name}-{who}.pem"),
        );
        let subj = format!("/CN={who}");
        let mut a = vec!["req", "-subj", &subj, "-keyout", &key, "-out", &csr];
        a.extend(ec);
        openssl(dir, &a);
        let extfile = format!("{name}-{who}.ext");
        std::fs::write(dir.join(&extfile), ext).unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-extfile",
                &extfile,
                "-out",
                &pem,
            ],
        );
    }
}

#[tokio::test]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn cluster_over_tls_with_client_certificates_and_the_refusals() {
    let dir = std::env::temp_dir().join(format!("vipmesh-tls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    pki(&dir, "good");
    pki(&dir, "other");
    let f = |n: &str| -> PathBuf { dir.join(n) };
    let s = |n: &str| -> String { f(n).display().to_string() };
    let client = Tls::from_files(
        &f("good-ca.pem"),
        Some(&f("good-client.pem")),
        Some(&f("good-client.key")),
    )
    .unwrap();
    let e = Etcd::start_tls(ServerTls {
        cert: f("good-server.pem"),
        key: f("good-server.key"),
        ca: f("good-ca.pem"),
        client,
    })
    .await;
    let url = e.url();
    assert!(url.starts_with("https://"), "{url}");
    std::fs::write(f("cluster.json"), FILE).unwrap();
    let state = s("cluster.json");
    let (ca, cert, key) = (s("good-ca.pem"), s("good-client.pem"), s("good-client.key"));
    let tls = [
        "--etcd-cacert",
        &ca,
        "--etcd-cert",
        &cert,
        "--etcd-key",
        &key,
    ];

    // With the CA and a client certificate: apply, then read it back.
    let mut args = vec!["cluster", "apply", "--etcd", &url, "--state", &state];
    args.extend(tls);
    let out = cli(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut args = vec!["cluster", "get", "--etcd", &url];
    args.extend(tls);
    let out = cli(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["networks"][0]["services"][0]["name"], "vote");

    // The member checks client certificates: the CA alone is refused (etcd: exit 1).
    let out = cli(&["cluster", "get", "--etcd", &url, "--etcd-cacert", &ca]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // A client that trusts another CA refuses the member's certificate.
    let (oca, ocert, okey) = (
        s("other-ca.pem"),
        s("other-client.pem"),
        s("other-client.key"),
    );
    let out = cli(&[
        "cluster",
        "get",
        "--etcd",
        &url,
        "--etcd-cacert",
        &oca,
        "--etcd-cert",
        &ocert,
        "--etcd-key",
        &okey,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // Plain HTTP to a TLS port does not answer: the same exit, naming the endpoint.
    let plain = url.replace("https://", "http://");
    let out = cli(&["cluster", "get", "--etcd", &plain]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&plain), "{}", text(&out.stderr));

    // Bad TLS input: exit 2 before anything connects, naming the option or file.
    let missing = s("no-such.pem");
    for (args, names) in [
        (
            vec!["--etcd", &url, "--etcd-cacert", &missing],
            missing.as_str(),
        ),
        (
            vec!["--etcd", &url, "--etcd-cacert", &ca, "--etcd-cert", &cert],
            "--etcd-key",
        ),
        (
            vec![
                "--etcd",
                &url,
                "--etcd-cacert",
                &ca,
                "--etcd-cert",
                &key,
                "--etcd-key",
                &key,
            ],
            "--etcd-cert",
        ),
        (vec!["--etcd", &url, "--etcd-cacert", &key], "--etcd-cacert"),
        (vec!["--etcd", &plain, "--etcd-cacert", &ca], "--etcd"),
        (vec!["--etcd", &url], "--etcd-cacert"),
    ] {
        for sub in [&["cluster", "get"][..], &["agent", "--node", "n1"][..]] {
            let mut a: Vec<&str> = sub.to_vec();
            a.extend(&args);
            let out = cli(&a);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{a:?}: {err}");
            assert!(err.contains(names), "{a:?} names {names}: {err}");
        }
    }
    drop(e);
    std::fs::remove_dir_all(&dir).unwrap();
}
