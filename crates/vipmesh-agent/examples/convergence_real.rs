//! Convergence latency on a real kernel (issue #15): a write to etcd → the change visible in
//! the IPVS of every node, beside the controller's own apply time.
//!
//! The cluster lab of `vipmesh_testkit::cluster` (namespaces it creates, nothing outside
//! them): `CONV_NODES` (3) node namespaces with the ingress mesh between them (VXLAN), an etcd
//! of `CONV_MEMBERS` (1) members in the control namespace, and one agent per node: the
//! library's [`Agent`] over `Controller::real`, what `vipmesh-agent agent` runs, here
//! in-process so that its batch window can be set (the CLI has no flag for it) and its sync
//! histogram read directly. `CONV_SERVICES` (1000) published services (ports 20000 + k),
//! each with one task on `n0`, a node registered by this program under a lease of its own
//! (no namespaces, no `ready/` key: all its tasks count), so every task is an IPVS real
//! server in the sandbox of every lab node.
//!
//! For each batch window of `CONV_WINDOWS` (`50,5,0` ms; 50 is the agent's default) the
//! agents are started (their first sync adopts the kernel state), then `CONV_CHANGES` (100)
//! times one etcd put replaces one service's task address, and each node's sandbox IPVS is
//! polled over netlink (the service's fwmark only) until the new address is a real server
//! with a weight. Printed: the convergence (put → visible) p50/p99 of the slowest node and
//! per node; the apply time (the agent's `sync_duration_seconds` histogram: sum and count
//! of the syncs each change caused, per node); the agent overhead (convergence − apply, per
//! node and change) and its ratio to the apply time; the etcd put's own round trip and the
//! cost of one poll; at the end, one assembly of a node's state from the whole snapshot
//! (part of the overhead). A node that ends a sync without the address under the fwmark
//! known re-reads the service's mark from its controller (such moves are counted).
//!
//! The agents' logs (`synced ... ms=`) go to stderr (`RUST_LOG`, default info). Run in the
//! IPVS guest (emulated: about 3 minutes for the defaults), noting `/proc/loadavg` of the
//! host before and after; the binary is copied first, so that a rebuild cannot swap it:
//!
//! ```text
//! CARGO_TARGET_DIR=/work/conv-target cargo build --release -p vipmesh-agent --example convergence_real
//! mkdir -p /work/conv-out/run && cp /work/conv-target/release/examples/convergence_real /work/conv-out/run/
//! CARGO_TARGET_DIR=/work/conv-target cargo xtask vm --kernel 6.1 --timeout 1500 --out /work/conv-out/run -- \
//!   bash -c "/work/conv-out/run/convergence_real > /work/conv-out/run/x.log 2>&1"
//! ```
//!
//! `CONV_NODES=1 CONV_WINDOWS=50,0` gives one agent alone on the guest's CPUs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    missing_docs
)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{PutOptions, Txn, TxnOp};
use vipmesh::{Controller, ControllerConfig};
use vipmesh_agent::agent::{Agent, AgentConfig, StatusHandle};
use vipmesh_agent::layout::{self, ClusterFile, NodeLocal, NodeRecord};
use vipmesh_agent::store::StoreConfig;
use vipmesh_ipvs as ipvs;
use vipmesh_testkit::cluster::ClusterLab;
use vipmesh_testkit::ingress::{INGRESS_GATEWAY, INGRESS_SUBNET};
use vipmesh_testkit::{Requirement, unmet};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The remote node: registered by this program, no namespaces.
const REMOTE: &str = "n0";

/// Task address `k` of a block of the ingress subnet starting at 10.255.`base`.0.
fn task_addr(base: u8, k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        10,
        255,
        base + (k / 200) as u8,
        10 + (k % 200) as u8,
    ))
}
/// Service `k`'s initial task address: 10.255.16.0 on.
fn initial_addr(k: usize) -> IpAddr {
    task_addr(16, k)
}
/// Change `i`'s new address: 10.255.96.0 on (distinct from every initial one).
fn changed_addr(i: usize) -> IpAddr {
    task_addr(96, i)
}

fn service_json(k: usize, addr: IpAddr) -> String {
    format!(
        r#"{{"name": "s{k}", "ports": [{{"protocol": "tcp", "published": {}, "target": 80}}],
            "tasks": [{{"addr": "{addr}", "node": "{REMOTE}"}}]}}"#,
        20000 + k
    )
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// (sum in seconds, count) of an agent's sync-duration histogram.
fn sync_hist(s: &StatusHandle) -> (f64, u64) {
    let text = vipmesh_agent::metrics::render::<vipmesh::dataplane::RealKernel>(s, None);
    let get = |suffix: &str| -> f64 {
        let name = format!("vipmesh_agent_sync_duration_seconds_{suffix} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name}in:\n{text}"))
    };
    (get("sum"), get("count") as u64)
}

/// Whether `addr` is a real server with a weight of the fwmark service `mark` (one netlink
/// dump of that service's real servers); its cost is pushed on `cost`.
fn has(cl: &mut ipvs::Client, mark: u32, addr: IpAddr, cost: &mut Vec<f64>) -> bool {
    let t = Instant::now();
    let key = ipvs::ServiceKey::fwmark(ipvs::Family::Inet, mark).unwrap();
    let r = cl
        .dests(&key)
        .unwrap_or_default()
        .iter()
        .any(|d| d.dest.key.addr == addr && d.dest.weight.get() > 0);
    cost.push(t.elapsed().as_secs_f64());
    r
}

/// setns(2) of the calling thread into the namespace at `path` (threads it spawns later
/// inherit it).
fn setns(path: &str) {
    let f = std::fs::File::open(path).unwrap();
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

type Ctl = Arc<Mutex<Controller<vipmesh::dataplane::RealKernel>>>;

struct Running {
    status: Vec<StatusHandle>,
    ctls: Vec<Ctl>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), vipmesh_agent::Error>>>,
}

fn start_agents(rt: &tokio::runtime::Runtime, c: &ClusterLab, window: Duration) -> Running {
    let mut r = Running {
        status: Vec::new(),
        ctls: Vec::new(),
        stops: Vec::new(),
        tasks: Vec::new(),
    };
    for n in &c.lab.nodes {
        let mut cfg = AgentConfig::new(&n.name);
        cfg.local = NodeLocal {
            host_netns: Some(n.netns.clone()),
            sandbox_netns: Some(n.sandbox_netns.clone()),
            overlay_netns: Some(n.overlay_netns.clone()),
            ..NodeLocal::default()
        };
        cfg.record = Some(NodeRecord {
            underlay: n.underlay,
            sandbox_addr: n.sandbox_addr,
        });
        cfg.lease_ttl_secs = 120;
        cfg.batch_window = window;
        let mut sc = StoreConfig::new(c.etcd.endpoints());
        sc.request_timeout = Duration::from_secs(60);
        let agent = Agent::new(cfg, sc, Controller::real(ControllerConfig::default()));
        r.status.push(agent.status());
        r.ctls.push(agent.controller());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        r.stops.push(tx);
        r.tasks.push(rt.spawn(agent.run(async {
            let _ = rx.await;
        })));
    }
    r
}

fn stop_agents(rt: &tokio::runtime::Runtime, r: Running) {
    for s in r.stops {
        let _ = s.send(());
    }
    for t in r.tasks {
        rt.block_on(t).unwrap().unwrap();
    }
}

fn main() {
    let missing = unmet(&[
        Requirement::Root,
        Requirement::Ipvs,
        Requirement::Tool("etcd"),
        Requirement::Tool("curl"),
        Requirement::Tool("nsenter"),
    ]);
    if !missing.is_empty() {
        println!("CONVERGENCE: CANNOT RUN HERE: {}", missing.join("; "));
        std::process::exit(2);
    }
    // The agents' logs (`synced ... ms=`, warnings) on stderr; RUST_LOG overrides.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let nodes = env("CONV_NODES", 3);
    let services = env("CONV_SERVICES", 1000);
    let changes = env("CONV_CHANGES", 100);
    let members = env("CONV_MEMBERS", 1);
    let windows: Vec<u64> = std::env::var("CONV_WINDOWS")
        .unwrap_or_else(|_| "50,5,0".into())
        .split(',')
        .map(|w| w.trim().parse().unwrap())
        .collect();
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "convergence_real: {nodes} nodes, {services} services, {changes} changes, {members} etcd member(s), windows {windows:?} ms; guest loadavg {}",
        load().trim()
    );
    let t_all = Instant::now();

    // The lab runs no agent binary of its own here (the agents are in-process).
    let mut c = ClusterLab::new("/bin/false", nodes, &[], members);
    let ctl_ns = c.ctl.clone();
    c.etcd
        .wait_healthy(&ctl_ns, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.etcd.logs()));
    println!("[{:7.1}s] lab and etcd up", t_all.elapsed().as_secs_f64());

    // etcd listens on the control namespace's loopback: this thread (and the runtime's
    // threads, spawned from it) live there from now on.
    let root = std::fs::File::open("/proc/self/ns/net").unwrap();
    setns(&format!("/run/netns/{ctl_ns}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut etcd = rt
        .block_on(etcd_client::Client::connect(c.etcd.endpoints(), None))
        .unwrap();

    // The desired state: the ingress and its services, in transactions of 100 puts.
    let svcs: Vec<String> = (0..services)
        .map(|k| service_json(k, initial_addr(k)))
        .collect();
    let file = format!(
        r#"{{"ingress": {{"host_netns": "/proc/1/ns/net", "subnet": "{INGRESS_SUBNET}",
            "gateway": "{INGRESS_GATEWAY}", "vni": 4096, "mtu": 1450,
            "services": [{}]}}}}"#,
        svcs.join(",\n")
    );
    let kvs: BTreeMap<String, String> = ClusterFile::from_json(&file).unwrap().to_kvs().unwrap();
    let kvs: Vec<(String, String)> = kvs.into_iter().collect();
    for chunk in kvs.chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
            .collect();
        rt.block_on(etcd.txn(Txn::new().and_then(ops))).unwrap();
    }
    // The remote node, under a lease that outlives the run.
    let lease = rt.block_on(etcd.lease_grant(7200, None)).unwrap().id();
    let rec = NodeRecord {
        underlay: "192.168.50.200".parse().unwrap(),
        sandbox_addr: "10.255.0.200".parse().unwrap(),
    };
    rt.block_on(etcd.put(
        layout::node_key(REMOTE),
        serde_json::to_string(&rec).unwrap(),
        Some(PutOptions::new().with_lease(lease)),
    ))
    .unwrap();
    println!(
        "[{:7.1}s] {} keys written",
        t_all.elapsed().as_secs_f64(),
        kvs.len()
    );

    // One netlink IPVS client per node's sandbox (opened there, used from here).
    let mut clients: Vec<ipvs::Client> = c
        .lab
        .nodes
        .iter()
        .map(|n| ipvs::Client::open_in_path(format!("/run/netns/{}", n.sandbox_netns)).unwrap())
        .collect();
    let mut poll_cost: Vec<f64> = Vec::new();

    // The current address of each service (changes accumulate across the windows).
    let mut current: Vec<IpAddr> = (0..services).map(initial_addr).collect();
    let mut next_change = 0usize;
    let mut summary = Vec::new();
    for w in windows {
        let window = Duration::from_millis(w);
        let t_start = Instant::now();
        let r = start_agents(&rt, &c, window);
        // The first sync (full) and every service marked on every node.
        let mut marks: Vec<Vec<u32>> = (0..nodes)
            .map(|i| {
                loop {
                    {
                        let ctl = r.ctls[i].lock().unwrap();
                        let m = ctl.marks().get("ingress");
                        if ctl.in_sync()
                            && let Some(m) = m
                            && m.len() == services
                        {
                            break (0..services)
                                .map(|k| *m.get(format!("s{k}").as_str()).unwrap())
                                .collect();
                        }
                    }
                    assert!(
                        t_start.elapsed() < Duration::from_secs(3600),
                        "node {i} never converged"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
            .collect();
        // And the kernel has them: each service's current address on every node.
        for (i, cl) in clients.iter_mut().enumerate() {
            for (k, addr) in current.iter().enumerate() {
                while !has(cl, marks[i][k], *addr, &mut poll_cost) {
                    assert!(
                        t_start.elapsed() < Duration::from_secs(3600),
                        "node {i} never got s{k} -> {addr}"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        let first: Vec<(f64, u64)> = r.status.iter().map(sync_hist).collect();
        println!(
            "[{:7.1}s] window {w} ms: agents in sync after {:.1} s (first syncs: {})",
            t_all.elapsed().as_secs_f64(),
            t_start.elapsed().as_secs_f64(),
            first
                .iter()
                .map(|(s, n)| format!("{n} in {s:.1} s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        poll_cost.clear();
        // Let the registrations' and ready keys' echoes settle.
        std::thread::sleep(Duration::from_secs(2));

        let mut conv_max = Vec::new(); // ms, per change: the slowest node
        let mut conv = vec![Vec::new(); nodes]; // ms, per node
        let mut apply = vec![Vec::new(); nodes]; // ms, per node: sync time the change caused
        let mut over = Vec::new(); // ms, per (change, node): convergence - apply
        // ms, per (change, node): convergence - apply - the put's round trip - the window
        let mut own = Vec::new();
        let mut syncs_per_change = Vec::new();
        let mut put_rtt = Vec::new();
        let mut remarked = 0usize; // changes after which a node moved the service's fwmark
        for _ in 0..changes {
            let i = next_change;
            next_change += 1;
            let k = (i * 397) % services;
            let addr = changed_addr(i);
            let before: Vec<(f64, u64)> = r.status.iter().map(sync_hist).collect();
            let t0 = Instant::now();
            rt.block_on(etcd.put(
                layout::ingress_service_key(&format!("s{k}")),
                service_json(k, addr),
                None,
            ))
            .unwrap();
            put_rtt.push(t0.elapsed().as_secs_f64() * 1e3);
            let mut seen: Vec<Option<f64>> = vec![None; nodes];
            while seen.iter().any(Option::is_none) {
                for (j, cl) in clients.iter_mut().enumerate() {
                    if seen[j].is_none() && has(cl, marks[j][k], addr, &mut poll_cost) {
                        seen[j] = Some(t0.elapsed().as_secs_f64() * 1e3);
                    } else if seen[j].is_none() && sync_hist(&r.status[j]).1 > before[j].1 {
                        // A sync ended without it under the mark we know: the service may
                        // have a new fwmark (seen in the guest); ask the controller.
                        let m = {
                            let ctl = r.ctls[j].lock().unwrap();
                            ctl.marks()
                                .get("ingress")
                                .and_then(|m| m.get(format!("s{k}").as_str()).copied())
                        };
                        if let Some(m) = m.filter(|m| *m != marks[j][k]) {
                            println!(
                                "  change {i}: s{k} on node{} moved from fwmark {:#x} to {m:#x}",
                                j + 1,
                                marks[j][k]
                            );
                            marks[j][k] = m;
                            remarked += 1;
                        }
                    }
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(600),
                    "change {i} (s{k} -> {addr}) never arrived: {seen:?}"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            current[k] = addr;
            // The syncs it caused have ended (the histogram is observed after the sync).
            let after: Vec<(f64, u64)> = loop {
                let a: Vec<(f64, u64)> = r.status.iter().map(sync_hist).collect();
                if a.iter().zip(&before).all(|(a, b)| a.1 > b.1) {
                    break a;
                }
                assert!(t0.elapsed() < Duration::from_secs(600), "no sync counted");
                std::thread::sleep(Duration::from_millis(1));
            };
            let seen: Vec<f64> = seen.into_iter().map(Option::unwrap).collect();
            if (i + 1).is_multiple_of(10) {
                println!(
                    "[{:7.1}s]   change {}: {seen:.1?} ms",
                    t_all.elapsed().as_secs_f64(),
                    i + 1
                );
            }
            let put = put_rtt[put_rtt.len() - 1];
            conv_max.push(seen.iter().copied().fold(0.0, f64::max));
            for j in 0..nodes {
                let a = (after[j].0 - before[j].0) * 1e3;
                conv[j].push(seen[j]);
                apply[j].push(a);
                over.push(seen[j] - a);
                own.push(seen[j] - a - put - w as f64);
                syncs_per_change.push((after[j].1 - before[j].1) as f64);
            }
        }
        stop_agents(&rt, r);
        let all_apply: Vec<f64> = apply.iter().flatten().copied().collect();
        let (c50, c99) = (pct(&conv_max, 0.5), pct(&conv_max, 0.99));
        let (a50, a99) = (pct(&all_apply, 0.5), pct(&all_apply, 0.99));
        let (o50, o99) = (pct(&over, 0.5), pct(&over, 0.99));
        let (n50, n99) = (pct(&own, 0.5), pct(&own, 0.99));
        let poll_ms = poll_cost.iter().sum::<f64>() / poll_cost.len().max(1) as f64 * 1e3;
        println!(
            "window {w:>2} ms: convergence (slowest node) p50 {c50:.1} ms p99 {c99:.1} ms | apply (sync) p50 {a50:.1} ms p99 {a99:.1} ms | overhead p50 {o50:.1} ms p99 {o99:.1} ms = {:.0} % of apply p50 | minus put and window p50 {n50:.1} ms p99 {n99:.1} ms = {:.0} % | etcd put p50 {:.1} ms | syncs/change/node mean {:.2} | fwmark moved {remarked} times | one poll {poll_ms:.2} ms ({} polls)",
            o50 / a50 * 100.0,
            n50 / a50 * 100.0,
            pct(&put_rtt, 0.5),
            syncs_per_change.iter().sum::<f64>() / syncs_per_change.len() as f64,
            poll_cost.len(),
        );
        for j in 0..nodes {
            println!(
                "  node{}: convergence p50 {:.1} p99 {:.1} ms, apply p50 {:.1} p99 {:.1} ms",
                j + 1,
                pct(&conv[j], 0.5),
                pct(&conv[j], 0.99),
                pct(&apply[j], 0.5),
                pct(&apply[j], 0.99)
            );
        }
        summary.push((w, c50, c99, a50, a99, o50, o99, n50, pct(&put_rtt, 0.5)));
    }
    // Where the overhead goes, in part: one assembly of a node's state from the whole
    // snapshot (what the agent does after each batch, before its sync), alone on this thread.
    let resp = rt
        .block_on(etcd.get(
            layout::PREFIX,
            Some(etcd_client::GetOptions::new().with_prefix()),
        ))
        .unwrap();
    let kvs: BTreeMap<Vec<u8>, Vec<u8>> = resp
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect();
    let n = &c.lab.nodes[0];
    let local = NodeLocal {
        host_netns: Some(n.netns.clone()),
        sandbox_netns: Some(n.sandbox_netns.clone()),
        overlay_netns: Some(n.overlay_netns.clone()),
        me: Some(NodeRecord {
            underlay: n.underlay,
            sandbox_addr: n.sandbox_addr,
        }),
        ..NodeLocal::default()
    };
    let asm: Vec<f64> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let a = layout::assemble_local(&n.name, &local, &kvs);
            assert!(a.issues.is_empty(), "{:?}", a.issues);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    println!(
        "one assembly of node1's state from the snapshot ({} keys): p50 {:.1} ms, min {:.1} ms",
        kvs.len(),
        pct(&asm, 0.5),
        pct(&asm, 0.0)
    );
    println!(
        "| window | conv p50 | conv p99 | apply p50 | apply p99 | overhead p50 | p99 | overhead / apply | etcd put p50 | overhead - put - window p50 | / apply |"
    );
    for (w, c50, c99, a50, a99, o50, o99, n50, put50) in summary {
        println!(
            "| {w} ms | {c50:.1} | {c99:.1} | {a50:.1} | {a99:.1} | {o50:.1} | {o99:.1} | {:.0} % | {put50:.1} | {n50:.1} | {:.0} % |",
            o50 / a50 * 100.0,
            n50 / a50 * 100.0
        );
    }
    println!(
        "[{:7.1}s] done; guest loadavg {}",
        t_all.elapsed().as_secs_f64(),
        load().trim()
    );
    drop(etcd);
    drop(rt);
    // Back to the root namespace before the lab deletes its namespaces.
    let rc = unsafe { libc::setns(root.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0);
    drop(c);
}
