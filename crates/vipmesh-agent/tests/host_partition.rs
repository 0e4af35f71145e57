//! A silent partition between the agent and etcd (a loopback proxy that stops forwarding
//! but keeps every socket open: no RST, no FIN), while etcd itself keeps running and
//! changes: the agent notices through its HTTP/2 keepalive, reports degraded, keeps the
//! fake dataplane, and after the partition heals it catches up on what changed meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod etcd;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd::{Etcd, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vipmesh::fake::FakeKernel;
use vipmesh::{Controller, ControllerConfig};
use vipmesh_agent::agent::{Agent, AgentConfig};
use vipmesh_agent::layout::ClusterFile;
use vipmesh_agent::store::StoreConfig;
use vipmesh_ipvs::{self as ipvs, IpvsBackend};

/// Forwards to `to` while `cut` is false; while it is true, reads and drops.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16384];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if cut.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn proxy(to: SocketAddr, cut: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (c, _) = l.accept().await.unwrap();
            if cut.load(Ordering::SeqCst) {
                held.push(c); // a black hole: open, silent
                continue;
            }
            let Ok(s) = TcpStream::connect(to).await else {
                continue;
            };
            let (cr, cw) = c.into_split();
            let (sr, sw) = s.into_split();
            tokio::spawn(pump(cr, sw, cut.clone()));
            tokio::spawn(pump(sr, cw, cut.clone()));
        }
    });
    addr
}

const NET: &str = r#"{"id": "demo", "lb_netns": "lb-demo", "lb_interface": "eth0",
    "subnets": [{"subnet": "10.0.0.0/24", "lb_addr": "10.0.0.2"}]}"#;

fn cluster(backend: &str) -> ClusterFile {
    ClusterFile::from_json(&format!(
        r#"{{"networks": [{}]}}"#,
        NET.replace(
            "}]}",
            &format!(
                r#"}}], "services": [{{"name": "vote", "mode": {{"vip": ["10.0.0.9"]}}, "backends": [{{"addr": "{backend}"}}]}}]}}"#
            )
        )
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn a_silent_partition_degrades_keeps_the_dataplane_and_heals() {
    let e = Etcd::start().await;
    let mut direct = e.store().await;
    direct
        .cluster_apply(&cluster("10.0.0.10"), None)
        .await
        .unwrap();

    let cut = Arc::new(AtomicBool::new(false));
    let via = proxy(
        format!("127.0.0.1:{}", e.client_port).parse().unwrap(),
        cut.clone(),
    )
    .await;
    let mut scfg = StoreConfig::new(vec![format!("http://{via}")]);
    scfg.request_timeout = Duration::from_secs(2);
    scfg.connect_timeout = Duration::from_secs(1);
    scfg.keepalive_interval = Duration::from_millis(500);
    scfg.keepalive_timeout = Duration::from_secs(1);

    let kernel = FakeKernel::new();
    kernel.add_namespace("lb-demo", &["lo", "eth0"]);
    let ctl = Controller::new(
        kernel.clone(),
        ControllerConfig {
            resync_interval: Duration::from_secs(1),
            ..ControllerConfig::default()
        },
    );
    let mut acfg = AgentConfig::new("n1");
    acfg.batch_window = Duration::from_millis(20);
    acfg.reconnect_min = Duration::from_millis(100);
    acfg.reconnect_max = Duration::from_millis(500);
    let agent = Agent::new(acfg, scfg, ctl);
    let status = agent.status();
    let ctl = agent.controller();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async {
        let _ = rx.await;
    }));
    let backends = || -> Vec<String> {
        let mark = ctl
            .lock()
            .unwrap()
            .marks()
            .values()
            .find_map(|m| m.get("vote").copied());
        let Some(mark) = mark else { return Vec::new() };
        let key = ipvs::ServiceKey::fwmark(ipvs::Family::Inet, mark).unwrap();
        kernel.with("lb-demo", |n| {
            n.ipvs
                .dests(&key)
                .unwrap_or_default()
                .iter()
                .filter(|d| d.dest.weight.get() > 0)
                .map(|d| d.dest.key.addr.to_string())
                .collect()
        })
    };
    eventually("vote programmed", 30, || backends() == ["10.0.0.10"]).await;
    let dataplane = || {
        kernel.with("lb-demo", |n| {
            format!(
                "{:?} {:?} {:?}",
                n.ipvs.services().unwrap(),
                n.addrs,
                n.rules
            )
        })
    };
    let before = dataplane();

    cut.store(true, Ordering::SeqCst);
    eventually("degraded by the keepalive", 30, || {
        status.get().degraded.is_some()
    })
    .await;
    // etcd is fine and changes meanwhile; the agent cannot see it.
    direct
        .cluster_apply(&cluster("10.0.0.11"), None)
        .await
        .unwrap();
    let full = status.get().full_syncs;
    eventually("periodic syncs while partitioned", 30, || {
        status.get().full_syncs >= full + 2
    })
    .await;
    assert_eq!(
        dataplane(),
        before,
        "the dataplane changed during the partition"
    );
    assert!(status.get().degraded.is_some());

    cut.store(false, Ordering::SeqCst);
    eventually("healed and caught up", 60, || {
        status.get().degraded.is_none() && backends() == ["10.0.0.11"]
    })
    .await;
    assert_eq!(
        status.get().snapshots,
        1,
        "caught up through the resumed watch"
    );
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}
