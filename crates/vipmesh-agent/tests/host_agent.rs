//! The agent loop against a real etcd (3.4, started on loopback by the test) and the fake
//! kernel of `vipmesh` (no IPVS needed on the host): what is written to etcd reaches the
//! fake dataplane; a malformed value is reported and the rest applied; a burst of changes
//! becomes few syncs; losing etcd keeps the dataplane and reports degraded; etcd's return
//! resumes the watch from the last revision.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod etcd;

use std::net::IpAddr;
use std::time::Duration;

use etcd::{Etcd, eventually};
use tokio::sync::oneshot;
use vipmesh::fake::FakeKernel;
use vipmesh::{Controller, ControllerConfig};
use vipmesh_agent::agent::{Agent, AgentConfig, StatusHandle};
use vipmesh_agent::layout::{self, ClusterFile};
use vipmesh_ipvs::{self as ipvs, IpvsBackend};

const NET: &str = r#"{"id": "demo", "lb_netns": "lb-demo", "lb_interface": "eth0",
    "subnets": [{"subnet": "10.0.0.0/16", "lb_addr": "10.0.0.2"}]}"#;

fn svc(name: &str, vip: &str, backends: &[&str]) -> String {
    let b: Vec<String> = backends
        .iter()
        .map(|a| format!(r#"{{"addr": "{a}"}}"#))
        .collect();
    format!(
        r#"{{"name": "{name}", "mode": {{"vip": ["{vip}"]}}, "backends": [{}]}}"#,
        b.join(",")
    )
}

fn cluster(services: &[String]) -> ClusterFile {
    ClusterFile::from_json(&format!(
        r#"{{"networks": [{}]}}"#,
        NET.replace(
            "}]}",
            &format!("}}], \"services\": [{}]}}", services.join(","))
        )
    ))
    .unwrap()
}

struct Running {
    kernel: FakeKernel,
    status: StatusHandle,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    ctl: std::sync::Arc<std::sync::Mutex<Controller<FakeKernel>>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await.unwrap();
    }

    fn marks(&self) -> std::collections::BTreeMap<String, u32> {
        let c = self.ctl.lock().unwrap();
        c.marks()
            .values()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_str().to_string(), *v)))
            .collect()
    }

    /// The real servers of a service in the fake IPVS, with weights.
    fn dests(&self, service: &str) -> Vec<(IpAddr, u32)> {
        let Some(mark) = self.marks().get(service).copied() else {
            return Vec::new();
        };
        let key = ipvs::ServiceKey::fwmark(ipvs::Family::Inet, mark).unwrap();
        self.kernel
            .with("lb-demo", |n| n.ipvs.dests(&key).unwrap_or_default())
            .iter()
            .map(|d| (d.dest.key.addr, d.dest.weight.get()))
            .collect()
    }

    fn has_vip(&self, vip: &str) -> bool {
        let ip: IpAddr = vip.parse().unwrap();
        self.kernel.with("lb-demo", |n| n.addrs.contains_key(&ip))
    }

    /// Everything the fake kernel holds in the LB namespace.
    fn dataplane(&self) -> String {
        self.kernel.with("lb-demo", |n| {
            let services = n.ipvs.services().unwrap();
            let dests: Vec<_> = services
                .iter()
                .map(|s| n.ipvs.dests(&s.service.key).unwrap())
                .collect();
            format!("{services:?}\n{dests:?}\n{:?}\n{:?}", n.addrs, n.rules)
        })
    }
}

fn start(e: &Etcd, resync: Duration, batch_window: Duration) -> Running {
    start_with(
        e,
        resync,
        batch_window,
        Duration::from_millis(100),
        Duration::from_millis(500),
    )
}

fn start_with(
    e: &Etcd,
    resync: Duration,
    batch_window: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
) -> Running {
    let kernel = FakeKernel::new();
    kernel.add_namespace("lb-demo", &["lo", "eth0"]);
    let cfg = ControllerConfig {
        resync_interval: resync,
        ..ControllerConfig::default()
    };
    let ctl = Controller::new(kernel.clone(), cfg);
    let mut acfg = AgentConfig::new("n1");
    acfg.batch_window = batch_window;
    acfg.reconnect_min = reconnect_min;
    acfg.reconnect_max = reconnect_max;
    let agent = Agent::new(acfg, e.store_config(), ctl);
    let status = agent.status();
    let ctl = agent.controller();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        agent
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Running {
        kernel,
        status,
        stop: Some(tx),
        task,
        ctl,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn a_change_written_to_etcd_reaches_the_fake_kernel() {
    let e = Etcd::start().await;
    let mut s = e.store().await;
    s.cluster_apply(&cluster(&[svc("vote", "10.0.0.9", &["10.0.0.10"])]), None)
        .await
        .unwrap();
    let r = start(&e, Duration::from_secs(60), Duration::from_millis(20));
    eventually("vote programmed", 30, || {
        r.dests("vote") == [(ip("10.0.0.10"), 1)]
    })
    .await;
    assert!(r.has_vip("10.0.0.9"));
    assert_eq!(r.status.get().snapshots, 1);

    // A task moves and a service is added: both arrive through the watch.
    s.cluster_apply(
        &cluster(&[
            svc("vote", "10.0.0.9", &["10.0.0.11"]),
            svc("web", "10.0.0.19", &["10.0.0.20"]),
        ]),
        None,
    )
    .await
    .unwrap();
    eventually("vote's new task", 30, || {
        r.dests("vote").contains(&(ip("10.0.0.11"), 1))
    })
    .await;
    eventually("web programmed", 30, || {
        r.has_vip("10.0.0.19") && r.dests("web") == [(ip("10.0.0.20"), 1)]
    })
    .await;
    // A removed service is torn down.
    s.cluster_apply(&cluster(&[svc("vote", "10.0.0.9", &["10.0.0.11"])]), None)
        .await
        .unwrap();
    eventually("web removed", 30, || !r.has_vip("10.0.0.19")).await;
    let st = r.status.get();
    assert!(st.issues.is_empty(), "{:?}", st.issues);
    assert_eq!(
        st.snapshots, 1,
        "changes came through the watch, not reloads"
    );
    // Services, claims and the apply record only: each batch went service by service.
    assert_eq!(st.service_batches, st.change_syncs, "{st:?}");
    assert!(st.service_batches >= 2, "{st:?}");
    assert!(st.degraded.is_none());
    assert!(st.revision >= s.snapshot().await.unwrap().revision - 1);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn a_malformed_value_is_reported_and_the_rest_applied() {
    let e = Etcd::start().await;
    let mut s = e.store().await;
    s.cluster_apply(&cluster(&[svc("vote", "10.0.0.9", &["10.0.0.10"])]), None)
        .await
        .unwrap();
    let r = start(&e, Duration::from_secs(60), Duration::from_millis(20));
    eventually("vote programmed", 30, || {
        r.dests("vote") == [(ip("10.0.0.10"), 1)]
    })
    .await;
    // Written behind cluster apply's back, as a buggy writer would.
    let mut raw = etcd_client::Client::connect([e.url()], None).await.unwrap();
    raw.put(layout::service_key("demo", "bad"), "{oops", None)
        .await
        .unwrap();
    raw.put(
        layout::service_key("demo", "web"),
        svc("web", "10.0.0.19", &["10.0.0.20"]),
        None,
    )
    .await
    .unwrap();
    eventually("web programmed", 30, || {
        r.dests("web") == [(ip("10.0.0.20"), 1)]
    })
    .await;
    eventually("bad reported", 30, || {
        r.status
            .get()
            .issues
            .iter()
            .any(|i| i.key == "/vipmesh/v1/services/demo/bad")
    })
    .await;
    let st = r.status.get();
    assert_eq!(st.issues.len(), 1, "{:?}", st.issues);
    assert!(
        st.issues[0].reason.contains("invalid JSON"),
        "{}",
        st.issues[0]
    );
    assert_eq!(r.dests("vote"), [(ip("10.0.0.10"), 1)]);
    // Fixing it applies it.
    raw.put(
        layout::service_key("demo", "bad"),
        svc("bad", "10.0.0.29", &["10.0.0.30"]),
        None,
    )
    .await
    .unwrap();
    eventually("bad fixed", 30, || r.dests("bad") == [(ip("10.0.0.30"), 1)]).await;
    assert!(r.status.get().issues.is_empty());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn a_burst_of_changes_becomes_few_syncs() {
    let e = Etcd::start().await;
    let mut s = e.store().await;
    s.cluster_apply(&cluster(&[]), None).await.unwrap();
    let r = start(&e, Duration::from_secs(600), Duration::from_millis(300));
    eventually("first sync", 30, || r.status.get().full_syncs >= 1).await;
    let before = r.status.get();
    // 200 separate puts (not one transaction), from 8 connections at once.
    const N: usize = 200;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let url = e.url();
        tasks.push(tokio::spawn(async move {
            let mut c = etcd_client::Client::connect([url], None).await.unwrap();
            for i in (w..N).step_by(8) {
                let name = format!("s{i}");
                let vip = format!("10.0.{}.{}", 1 + i / 200, 1 + i % 200);
                let task = format!("10.0.{}.{}", 10 + i / 200, 1 + i % 200);
                c.put(
                    layout::service_key("demo", &name),
                    svc(&name, &vip, &[&task]),
                    None,
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eventually("all 200 services programmed", 60, || {
        r.marks().len() == N && r.dests(&format!("s{}", N - 1)).len() == 1
    })
    .await;
    let after = r.status.get();
    let events = after.watch_events - before.watch_events;
    let syncs = after.change_syncs - before.change_syncs;
    assert_eq!(events, N as u64);
    assert_eq!(
        after.service_batches - before.service_batches,
        syncs,
        "every batch applied service by service"
    );
    assert!(syncs * 10 <= events, "{syncs} syncs for {events} events");
    assert!(after.issues.is_empty(), "{:?}", after.issues);
    eprintln!(
        "{events} events -> {syncs} syncs ({} watch responses)",
        after.watch_batches - before.watch_batches
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn losing_etcd_keeps_the_dataplane_and_its_return_resumes_the_watch() {
    let mut e = Etcd::start().await;
    let mut s = e.store().await;
    s.cluster_apply(
        &cluster(&[svc("vote", "10.0.0.9", &["10.0.0.10", "10.0.0.11"])]),
        None,
    )
    .await
    .unwrap();
    let r = start(&e, Duration::from_secs(1), Duration::from_millis(20));
    eventually("vote programmed", 30, || r.dests("vote").len() == 2).await;
    let before = r.dataplane();
    let rev = r.status.get().revision;

    e.kill();
    eventually("degraded", 30, || r.status.get().degraded.is_some()).await;
    let full = r.status.get().full_syncs;
    // Periodic full syncs go on while degraded (resync every second), and change nothing.
    eventually("two more full syncs", 30, || {
        r.status.get().full_syncs >= full + 2
    })
    .await;
    let st = r.status.get();
    assert!(st.degraded.is_some());
    assert_eq!(st.sync_errors, 0, "{:?}", st.last_sync_error);
    assert_eq!(
        r.dataplane(),
        before,
        "the dataplane changed while etcd was away"
    );
    assert_eq!(st.revision, rev);

    e.restart().await;
    eventually("healthy again", 30, || r.status.get().degraded.is_none()).await;
    let mut s = e.store().await;
    s.cluster_apply(
        &cluster(&[svc("vote", "10.0.0.9", &["10.0.0.10", "10.0.0.12"])]),
        None,
    )
    .await
    .unwrap();
    eventually("the change after the restart", 30, || {
        r.dests("vote").contains(&(ip("10.0.0.12"), 1))
    })
    .await;
    let st = r.status.get();
    assert_eq!(st.snapshots, 1, "resumed from the last revision, no reload");
    assert!(st.watches >= 2);
    assert!(st.revision > rev);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn a_compacted_revision_reloads_the_snapshot() {
    let mut e = Etcd::start().await;
    let mut s = e.store().await;
    s.cluster_apply(&cluster(&[svc("vote", "10.0.0.9", &["10.0.0.10"])]), None)
        .await
        .unwrap();
    // Reconnects every 4 s: etcd comes back, changes and compacts before the agent returns.
    let r = start_with(
        &e,
        Duration::from_secs(60),
        Duration::from_millis(20),
        Duration::from_secs(4),
        Duration::from_secs(4),
    );
    eventually("vote programmed", 30, || r.dests("vote").len() == 1).await;
    e.kill();
    eventually("degraded", 30, || r.status.get().degraded.is_some()).await;
    e.restart().await;
    let mut s = e.store().await;
    s.cluster_apply(&cluster(&[svc("vote", "10.0.0.9", &["10.0.0.12"])]), None)
        .await
        .unwrap();
    s.cluster_apply(&cluster(&[svc("vote", "10.0.0.9", &["10.0.0.13"])]), None)
        .await
        .unwrap();
    let now = s.snapshot().await.unwrap().revision;
    let mut raw = etcd_client::Client::connect([e.url()], None).await.unwrap();
    raw.compact(now, None).await.unwrap();
    assert!(
        r.status.get().degraded.is_some(),
        "the agent came back before the compaction"
    );
    eventually("converged after compaction", 30, || {
        r.dests("vote").contains(&(ip("10.0.0.13"), 1))
    })
    .await;
    let st = r.status.get();
    assert_eq!(st.snapshots, 2, "the compacted watch made it reload");
    assert!(st.degraded.is_none());
    r.stop().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn metrics_and_healthz_follow_the_agent() {
    use vipmesh_agent::metrics::MetricsServer;
    let mut e = Etcd::start().await;
    let mut s = e.store().await;
    s.cluster_apply(
        &cluster(&[svc("vote", "10.0.0.9", &["10.0.0.10", "10.0.0.11"])]),
        None,
    )
    .await
    .unwrap();
    let r = start(&e, Duration::from_secs(60), Duration::from_millis(20));
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let srv = tokio::spawn(server.serve(r.status.clone(), Some(r.ctl.clone()), async {
        let _ = stop_rx.await;
    }));
    eventually("vote programmed", 30, || r.dests("vote").len() == 2).await;
    // Connections on one real server, as the kernel would count them.
    let mark = r.marks()["vote"];
    r.kernel.with("lb-demo", |n| {
        let key = ipvs::ServiceKey::fwmark(ipvs::Family::Inet, mark).unwrap();
        let dest = n.ipvs.dests(&key).unwrap()[0].dest.key;
        n.ipvs.set_conns(&key, &dest, 7, 3).unwrap();
    });
    let (code, body) = http_get(addr, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, text) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    for want in [
        "vipmesh_agent_syncs_total{kind=\"full\"} 1",
        "vipmesh_agent_degraded 0",
        "vipmesh_agent_sync_duration_seconds_count 1",
        "vipmesh_service_connections{network=\"demo\",service=\"vote\",state=\"active\"} 7",
        "vipmesh_service_connections{network=\"demo\",service=\"vote\",state=\"inactive\"} 3",
        "vipmesh_backend_connections{network=\"demo\",service=\"vote\",backend=\"10.0.0.10\",state=\"active\"} 7",
        "vipmesh_backend_weight{network=\"demo\",service=\"vote\",backend=\"10.0.0.11\"} 1",
        &format!("vipmesh_agent_watch_revision {}", r.status.get().revision),
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    assert_eq!(http_get(addr, "/nope").await.0, 404);
    // Converged: the dry run is empty. A real server removed behind the agent's back
    // shows in it (and is not repaired by asking).
    assert_eq!(http_get(addr, "/plan").await, (200, String::new()));
    r.kernel.with("lb-demo", |n| {
        let key = ipvs::ServiceKey::fwmark(ipvs::Family::Inet, mark).unwrap();
        let dest = n.ipvs.dests(&key).unwrap()[1].dest.key;
        for r in n.ipvs.execute(&[ipvs::Op::DelDest(key, dest)]) {
            r.unwrap();
        }
    });
    let (code, plan) = http_get(addr, "/plan").await;
    assert_eq!(code, 200);
    assert!(plan.contains("add-dest"), "{plan}");
    assert_eq!(http_get(addr, "/plan").await, (200, plan));

    e.kill();
    eventually("degraded", 30, || r.status.get().degraded.is_some()).await;
    let (code, body) = http_get(addr, "/healthz").await;
    assert_eq!(code, 503);
    assert!(body.starts_with("degraded: "), "{body}");
    let (_, text) = http_get(addr, "/metrics").await;
    assert!(text.contains("vipmesh_agent_degraded 1"), "{text}");
    let _ = stop_tx.send(());
    srv.await.unwrap().unwrap();
    r.stop().await;
}
