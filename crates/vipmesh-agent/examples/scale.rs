//! The agent at scale, on the fake kernel: memory holding 10 000 services x 10 backends, and
//! how many syncs a watch burst of 1000 task changes costs.
//!
//! Starts its own etcd on loopback (Debian's `etcd-server`), writes one network and N
//! services (default 10 000, `SCALE_SERVICES`) of 10 backends each, starts the agent in
//! this process on `vipmesh::fake::FakeKernel` and waits until every service is in the fake
//! IPVS. Prints VmRSS and VmHWM of this process before the agent started (the baseline: the
//! runtime and an etcd client) and once converged and idle (no sync for 2 s). The fake kernel's tables live in this
//! process too (on a real node the kernel holds them), so the figure over-counts the agent.
//! Then 1000 separate puts from 8 connections each change one service's backends, and it
//! prints the watch events and the change syncs they became. Run:
//! `cargo run --release -p vipmesh-agent --example scale`.
//!
//! `SCALE_BASELINE=1`: no etcd and no agent; the same state is assembled from keys in
//! memory and applied by a bare controller to the fake kernel (what the agent adds is the
//! difference).
//!
//! `SCALE_REAL=1`: the agent programs the real kernel (IPVS: run it in the guest, `cargo
//! xtask vm`) in a namespace it creates (`vmscale-<pid>`, a dummy `eth0`, deleted at the
//! end), so this process holds only what the agent itself keeps: its RSS is the agent's.
//! Its etcd listens on 127.0.0.1: in the guest, `ip link set lo up` first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/etcd/mod.rs"]
mod etcd;
#[path = "../tests/scale/mod.rs"]
mod scale;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Txn, TxnOp};
use scale::{net, svc};
use vipmesh::dataplane::Kernel;
use vipmesh::fake::FakeKernel;
use vipmesh::{Controller, ControllerConfig};
use vipmesh_agent::agent::{Agent, AgentConfig, StatusHandle};
use vipmesh_agent::layout;

/// The namespace of `SCALE_REAL`: created with a dummy `eth0`, deleted on drop.
struct RealNs(String);

impl RealNs {
    fn new() -> RealNs {
        let name = format!("vmscale-{}", std::process::id());
        for args in [
            vec!["netns", "add", &name],
            vec!["-n", &name, "link", "add", "eth0", "type", "dummy"],
            vec!["-n", &name, "link", "set", "eth0", "up"],
            vec!["-n", &name, "link", "set", "lo", "up"],
        ] {
            let st = std::process::Command::new("ip")
                .args(&args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        }
        RealNs(name)
    }
}

impl Drop for RealNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // As `vipmesh-agent agent` does before its runtime starts.
    vipmesh_agent::cli::limit_malloc_arenas();
    let n: u32 = std::env::var("SCALE_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    if std::env::var_os("SCALE_BASELINE").is_some() {
        return baseline(n);
    }
    let real = std::env::var_os("SCALE_REAL").map(|_| RealNs::new());
    let lb_netns = real.as_ref().map_or("lb-demo".to_string(), |r| r.0.clone());
    let e = etcd::Etcd::start().await;
    let mut raw = etcd_client::Client::connect([e.url()], None).await.unwrap();
    raw.put(layout::network_key("demo"), net(&lb_netns), None)
        .await
        .unwrap();
    let t0 = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| {
                TxnOp::put(
                    layout::service_key("demo", &format!("s{i}")),
                    svc(*i, 0),
                    None,
                )
            })
            .collect();
        raw.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    println!(
        "wrote {n} services x 10 backends in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let cfg = ControllerConfig {
        resync_interval: Duration::from_secs(3600),
        ..ControllerConfig::default()
    };
    match real {
        Some(ns) => {
            let name = ns.0.clone();
            converge(n, &e, Controller::real(cfg), move || ipvs_dests(&name)).await;
            drop(ns);
        }
        None => {
            let kernel = FakeKernel::new();
            kernel.add_namespace("lb-demo", &["lo", "eth0"]);
            let k = kernel.clone();
            let dests = move || {
                k.with("lb-demo", |ns| {
                    use vipmesh_ipvs::IpvsBackend;
                    ns.ipvs
                        .services()
                        .unwrap()
                        .iter()
                        .map(|s| ns.ipvs.dests(&s.service.key).unwrap().len())
                        .sum()
                })
            };
            converge(n, &e, Controller::new(kernel, cfg), dests).await;
        }
    }
}

/// Real servers in namespace `ns`, from `ipvsadm -Ln`.
fn ipvs_dests(ns: &str) -> usize {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "ipvsadm", "-Ln"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("->") && !l.contains("RemoteAddress"))
        .count()
}

/// Runs the agent over `ctl` until it converged, prints the memory, then the watch burst.
async fn converge<K: Kernel + Send + 'static>(
    n: u32,
    e: &etcd::Etcd,
    ctl: Controller<K>,
    count_dests: impl Fn() -> usize,
) where
    Controller<K>: Send,
{
    let (rss0, hwm0) = (status_kb("VmRSS:"), status_kb("VmHWM:"));
    let mut acfg = AgentConfig::new("n1");
    acfg.batch_window = Duration::from_millis(100);
    let agent = Agent::new(acfg, e.store_config(), ctl);
    let status = agent.status();
    let ctl = agent.controller();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async {
        let _ = rx.await;
    }));
    let t0 = Instant::now();
    let marks = || {
        ctl.lock()
            .unwrap()
            .marks()
            .values()
            .map(|m| m.len())
            .sum::<usize>()
    };
    while marks() < n as usize || status.get().full_syncs == 0 {
        assert!(t0.elapsed() < Duration::from_secs(600), "never converged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    settle(&status, &ctl).await;
    let (rss1, hwm1) = (status_kb("VmRSS:"), status_kb("VmHWM:"));
    let dests = count_dests();
    println!(
        "converged in {:.1} s: {} services, {dests} real servers in IPVS",
        t0.elapsed().as_secs_f64(),
        marks()
    );
    println!(
        "VmRSS before the agent {:.1} MiB, converged {:.1} MiB (+{:.1} MiB); VmHWM {:.1} -> {:.1} MiB",
        mib(rss0),
        mib(rss1),
        mib(rss1.saturating_sub(rss0)),
        mib(hwm0),
        mib(hwm1)
    );

    // A watch burst: 1000 task changes, each its own put, from 8 connections at once.
    let before = status.get();
    const CHANGES: u32 = 1000;
    let mut writers = Vec::new();
    for w in 0..8u32 {
        let url = e.url();
        writers.push(tokio::spawn(async move {
            let mut c = etcd_client::Client::connect([url], None).await.unwrap();
            for i in (w..CHANGES).step_by(8) {
                let s = i * (n / CHANGES).max(1);
                c.put(
                    layout::service_key("demo", &format!("s{s}")),
                    svc(s, 1),
                    None,
                )
                .await
                .unwrap();
            }
        }));
    }
    let t0 = Instant::now();
    for w in writers {
        w.await.unwrap();
    }
    while status.get().watch_events - before.watch_events < u64::from(CHANGES) {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "the burst never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    settle(&status, &ctl).await;
    let after = status.get();
    println!(
        "watch burst: {} task changes (one put each) -> {} watch responses -> {} change syncs ({} incremental, {} full) in {:.2} s",
        after.watch_events - before.watch_events,
        after.watch_batches - before.watch_batches,
        after.change_syncs - before.change_syncs,
        after.incremental_syncs - before.incremental_syncs,
        after.full_syncs - before.full_syncs,
        t0.elapsed().as_secs_f64()
    );
    let (rss2, hwm2) = (status_kb("VmRSS:"), status_kb("VmHWM:"));
    println!(
        "after the burst: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        mib(rss2),
        mib(hwm2)
    );
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

/// Waits until the agent is idle: no sync ran for 2 s after the one running (which holds the
/// controller) ended, so the memory is measured between syncs, after the agent gave a large
/// sync's freed memory back (`agent::release_free_heap`).
async fn settle<K: Kernel>(status: &StatusHandle, ctl: &Arc<Mutex<Controller<K>>>) {
    let syncs = || {
        let s = status.get();
        (
            s.change_syncs,
            s.full_syncs + s.incremental_syncs + s.sync_errors,
        )
    };
    loop {
        let before = syncs();
        drop(ctl.lock().unwrap());
        tokio::time::sleep(Duration::from_secs(2)).await;
        if syncs() == before {
            break;
        }
    }
}

fn baseline(n: u32) {
    let (rss0, _) = (status_kb("VmRSS:"), status_kb("VmHWM:"));
    let state = {
        let mut kvs = std::collections::BTreeMap::new();
        kvs.insert(
            layout::network_key("demo").into_bytes(),
            net("lb-demo").into_bytes(),
        );
        for i in 0..n {
            kvs.insert(
                layout::service_key("demo", &format!("s{i}")).into_bytes(),
                svc(i, 0).into_bytes(),
            );
        }
        layout::assemble("n1", &kvs).state
    };
    let kernel = FakeKernel::new();
    kernel.add_namespace("lb-demo", &["lo", "eth0"]);
    let mut ctl = Controller::new(kernel.clone(), ControllerConfig::default());
    ctl.set_desired(state);
    let report = ctl.sync_full(vipmesh::plan::now_secs()).unwrap();
    assert!(report.ok(), "{report}");
    let (rss1, hwm1) = (status_kb("VmRSS:"), status_kb("VmHWM:"));
    println!(
        "baseline (controller + fake kernel, no agent): VmRSS {:.1} MiB -> {:.1} MiB (+{:.1}); VmHWM {:.1} MiB; {} services",
        mib(rss0),
        mib(rss1),
        mib(rss1.saturating_sub(rss0)),
        mib(hwm1),
        ctl.marks().values().map(|m| m.len()).sum::<usize>()
    );
}
