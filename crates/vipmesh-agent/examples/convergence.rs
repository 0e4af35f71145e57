//! Convergence latency: a write to etcd → the change visible in the (fake) kernel.
//!
//! Starts its own etcd on loopback (Debian's `etcd-server`), an agent on the fake kernel,
//! then 100 times: put a service's new backend (one etcd put) and poll the fake IPVS until
//! the backend is there. Baseline in the same run: the etcd put's own round trip. Run:
//! `cargo run --release -p vipmesh-agent --example convergence`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/etcd/mod.rs"]
mod etcd;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use vipmesh::fake::FakeKernel;
use vipmesh::{Controller, ControllerConfig};
use vipmesh_agent::agent::{Agent, AgentConfig};
use vipmesh_agent::layout;
use vipmesh_ipvs::{self as ipvs, IpvsBackend};

const NET: &str = r#"{"id": "demo", "lb_netns": "lb-demo", "lb_interface": "eth0",
    "subnets": [{"subnet": "10.0.0.0/16", "lb_addr": "10.0.0.2"}]}"#;

fn svc(backend: &str) -> String {
    format!(
        r#"{{"name": "vote", "mode": {{"vip": ["10.0.0.9"]}}, "backends": [{{"addr": "{backend}"}}]}}"#
    )
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

async fn run(window: Duration) {
    let e = etcd::Etcd::start().await;
    let mut raw = etcd_client::Client::connect([e.url()], None).await.unwrap();
    raw.put(layout::network_key("demo"), NET, None)
        .await
        .unwrap();
    raw.put(layout::service_key("demo", "vote"), svc("10.0.1.0"), None)
        .await
        .unwrap();
    let kernel = FakeKernel::new();
    kernel.add_namespace("lb-demo", &["lo", "eth0"]);
    let ctl = Controller::new(kernel.clone(), ControllerConfig::default());
    let mut cfg = AgentConfig::new("n1");
    cfg.batch_window = window;
    let agent = Agent::new(cfg, e.store_config(), ctl);
    let ctl = agent.controller();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async {
        let _ = rx.await;
    }));
    let has = |addr: IpAddr| -> bool {
        let mark = {
            let c = ctl.lock().unwrap();
            c.marks().values().find_map(|m| m.get("vote").copied())
        };
        let Some(mark) = mark else { return false };
        let key = ipvs::ServiceKey::fwmark(ipvs::Family::Inet, mark).unwrap();
        kernel.with("lb-demo", |n| {
            n.ipvs
                .dests(&key)
                .unwrap_or_default()
                .iter()
                .any(|d| d.dest.key.addr == addr && d.dest.weight.get() > 0)
        })
    };
    let start = Instant::now();
    while !has("10.0.1.0".parse().unwrap()) {
        assert!(start.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (mut conv, mut rtt) = (Vec::new(), Vec::new());
    for i in 1..=100u32 {
        let b = format!("10.0.{}.{}", 1 + i / 250, i % 250);
        let t0 = Instant::now();
        raw.put(layout::service_key("demo", "vote"), svc(&b), None)
            .await
            .unwrap();
        rtt.push(t0.elapsed());
        let addr: IpAddr = b.parse().unwrap();
        while !has(addr) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "change {i} never arrived"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        conv.push(t0.elapsed());
    }
    let _ = tx.send(());
    task.await.unwrap().unwrap();
    let (c50, c99) = (pct(&mut conv, 0.5), pct(&mut conv, 0.99));
    let (r50, r99) = (pct(&mut rtt, 0.5), pct(&mut rtt, 0.99));
    println!(
        "batch window {:>3} ms: convergence p50 {:>6.2} ms p99 {:>6.2} ms | etcd put p50 {:.2} ms p99 {:.2} ms | p50 ratio {:.1}x",
        window.as_millis(),
        c50.as_secs_f64() * 1e3,
        c99.as_secs_f64() * 1e3,
        r50.as_secs_f64() * 1e3,
        r99.as_secs_f64() * 1e3,
        c50.as_secs_f64() / r50.as_secs_f64(),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    for w in [50, 5, 0] {
        run(Duration::from_millis(w)).await;
    }
}
