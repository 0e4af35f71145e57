//! A throwaway etcd on loopback for the host tests: its own data directory, free ports,
//! killed (only the PID this harness started) and removed on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vipmesh_agent::store::{Store, StoreConfig};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member.
pub struct Etcd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub client_port: u16,
    peer_port: u16,
    name: String,
    initial_cluster: String,
    /// Serve clients over TLS: the member's certificate, key and the CA of its clients.
    tls: Option<ServerTls>,
}

/// TLS of one member's client port (etcd's `--cert-file`, `--key-file`,
/// `--trusted-ca-file`, `--client-cert-auth`) and what a client needs to reach it.
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// The client's side, for `store_config`.
    pub client: vipmesh_agent::store::Tls,
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "vipmesh-agent-etcd-{}-{tag}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Etcd {
    /// Starts a single-member etcd and waits until it answers.
    pub async fn start() -> Etcd {
        let peer_port = free_port();
        let mut e = Etcd {
            child: None,
            dir: temp_dir("t"),
            client_port: free_port(),
            peer_port,
            name: "t".into(),
            initial_cluster: format!("t=http://127.0.0.1:{peer_port}"),
            tls: None,
        };
        e.spawn().await;
        e
    }

    /// Starts a single-member etcd whose client port speaks TLS only and checks client
    /// certificates.
    pub async fn start_tls(tls: ServerTls) -> Etcd {
        let peer_port = free_port();
        let mut e = Etcd {
            child: None,
            dir: temp_dir("tls"),
            client_port: free_port(),
            peer_port,
            name: "t".into(),
            initial_cluster: format!("t=http://127.0.0.1:{peer_port}"),
            tls: Some(tls),
        };
        e.spawn().await;
        e
    }

    /// Starts an `n`-member cluster and waits until every member answers.
    pub async fn start_cluster(n: usize) -> Vec<Etcd> {
        let peers: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let initial = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Etcd> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| Etcd {
                child: None,
                dir: temp_dir(&format!("m{i}")),
                client_port: free_port(),
                peer_port: *p,
                name: format!("m{i}"),
                initial_cluster: initial.clone(),
                tls: None,
            })
            .collect();
        for m in &mut members {
            m.spawn_process();
        }
        for m in &mut members {
            m.wait_ready().await;
        }
        members
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn store_config(&self) -> StoreConfig {
        let mut c = StoreConfig::new(vec![self.url()]);
        c.request_timeout = Duration::from_secs(5);
        c.connect_timeout = Duration::from_secs(1);
        c.keepalive_interval = Duration::from_secs(1);
        c.keepalive_timeout = Duration::from_secs(3);
        c.tls = self.tls.as_ref().map(|t| t.client.clone());
        c
    }

    pub async fn store(&self) -> Store {
        Store::connect(self.store_config()).await.unwrap()
    }

    async fn spawn(&mut self) {
        self.spawn_process();
        self.wait_ready().await;
    }

    fn spawn_process(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.join("etcd.log")).unwrap();
        let mut cmd = Command::new("etcd");
        // A profiler preloaded into the test (heaptrack) is not etcd's.
        cmd.env_remove("LD_PRELOAD");
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.cert)
                .arg("--key-file")
                .arg(&t.key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--max-txn-ops", "1024"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd (apt-get install etcd-server): {e}"));
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok(mut s) = Store::connect(self.store_config()).await
                && s.snapshot().await.is_ok()
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
                panic!("etcd exited with {st}:\n{log}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "etcd did not answer in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL to the PID we started, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `f` every 20 ms until it is true; panics after `secs` (a liveness bound, not a
/// timing assertion).
pub async fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
