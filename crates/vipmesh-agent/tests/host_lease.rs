//! Two agents (n1, n2) on two fake kernels and one real etcd, with the ingress: n2's task of
//! a published service is a real server in n1's ingress sandbox while n2 is registered;
//! when n2's agent dies without a goodbye (its task aborted: no lease revoke, as after a
//! kill -9), its lease expires, its node key goes, and n1 drains n2's task.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod etcd;

use std::net::IpAddr;
use std::time::Duration;

use etcd::{Etcd, eventually};
use vipmesh::dataplane::Kernel;
use vipmesh::fake::FakeKernel;
use vipmesh::{Controller, ControllerConfig};
use vipmesh_agent::agent::{Agent, AgentConfig, StatusHandle};
use vipmesh_agent::layout::{self, ClusterFile, NodeRecord};
use vipmesh_ipvs::IpvsBackend;

const FILE: &str = r#"{"ingress": {"subnet": "10.255.0.0/16", "gateway": "10.255.0.1", "vni": 4096,
  "host_netns": "host",
  "services": [{"name": "web", "ports": [{"protocol": "tcp", "published": 8080, "target": 80}],
    "tasks": [{"addr": "10.255.0.10", "node": "n1", "netns": "task-a"},
              {"addr": "10.255.0.11", "node": "n2", "netns": "task-b"}]}]}}"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

type Running = (
    FakeKernel,
    StatusHandle,
    tokio::task::JoinHandle<Result<(), vipmesh_agent::Error>>,
);

fn agent(e: &Etcd, node: &str, underlay: &str, sandbox: &str, task_ns: &str) -> Running {
    agent_with(e, node, underlay, sandbox, Some(task_ns))
}

/// An agent on a fake kernel that has the node's host namespace and, when given, its task's.
fn agent_with(
    e: &Etcd,
    node: &str,
    underlay: &str,
    sandbox: &str,
    task_ns: Option<&str>,
) -> Running {
    let kernel = FakeKernel::new();
    kernel.add_namespace("host", &["lo", "eth0"]);
    if let Some(ns) = task_ns {
        kernel.add_namespace(ns, &["lo", "eth0"]);
    }
    let ctl = Controller::new(kernel.clone(), ControllerConfig::default());
    let mut cfg = AgentConfig::new(node);
    cfg.record = Some(NodeRecord {
        underlay: ip(underlay),
        sandbox_addr: ip(sandbox),
    });
    cfg.lease_ttl_secs = 2;
    cfg.batch_window = Duration::from_millis(20);
    let a = Agent::new(cfg, e.store_config(), ctl);
    let status = a.status();
    let task = tokio::spawn(a.run(std::future::pending()));
    (kernel, status, task)
}

/// The real servers with a positive weight in a fake node's ingress sandbox.
fn sandbox_backends(k: &FakeKernel) -> Vec<IpAddr> {
    if k.clone().identity("ingress_sbox").is_err() {
        return Vec::new();
    }
    k.with("ingress_sbox", |n| {
        let mut out = Vec::new();
        for s in n.ipvs.services().unwrap() {
            for d in n.ipvs.dests(&s.service.key).unwrap() {
                if d.dest.weight.get() > 0 {
                    out.push(d.dest.key.addr);
                }
            }
        }
        out.sort();
        out
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn a_dead_agents_lease_expires_and_its_tasks_drain_elsewhere() {
    let e = Etcd::start().await;
    let mut s = e.store().await;
    s.cluster_apply(&ClusterFile::from_json(FILE).unwrap(), None)
        .await
        .unwrap();
    let (k1, st1, t1) = agent(&e, "n1", "192.0.2.1", "10.255.0.2", "task-a");
    let (_k2, _st2, t2) = agent(&e, "n2", "192.0.2.2", "10.255.0.3", "task-b");
    eventually("n1 balances over both nodes' tasks", 30, || {
        sandbox_backends(&k1) == [ip("10.255.0.10"), ip("10.255.0.11")]
    })
    .await;
    assert!(st1.get().issues.is_empty(), "{:?}", st1.get().issues);

    t2.abort(); // no revoke, no goodbye
    let _ = t2.await;
    eventually("n2's key expired", 30, || {
        let snap = node_keys(&e);
        !snap.contains(&layout::node_key("n2"))
    })
    .await;
    eventually("n1 drained n2's task", 30, || {
        sandbox_backends(&k1) == [ip("10.255.0.10")]
    })
    .await;
    let st = st1.get();
    assert!(st.issues.is_empty(), "{:?}", st.issues);
    assert!(st.degraded.is_none());
    t1.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn a_remote_task_gets_traffic_only_once_its_node_has_wired_it() {
    let e = Etcd::start().await;
    let mut s = e.store().await;
    s.cluster_apply(&ClusterFile::from_json(FILE).unwrap(), None)
        .await
        .unwrap();
    let (k1, st1, t1) = agent(&e, "n1", "192.0.2.1", "10.255.0.2", "task-a");
    // n2's task namespace does not exist yet (its runtime is slow): n2 registers, but its
    // syncs fail, so it never lists the task as ready.
    let (k2, st2, t2) = agent_with(&e, "n2", "192.0.2.2", "10.255.0.3", None);
    eventually("n2 registered and failed to wire its task", 30, || {
        node_keys(&e).contains(&layout::node_key("n2")) && st2.get().sync_errors > 0
    })
    .await;
    let ready = |e: &Etcd| -> Option<layout::ReadyTasks> {
        etcd_get(e, layout::ready_key("n2"), false)
            .first()
            .map(|(_, v)| serde_json::from_str(v).unwrap())
    };
    assert_eq!(ready(&e), Some(layout::ReadyTasks::default()));
    // Time for n1 to take n2's registration in (its watch, batch window and sync).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(st1.get().revision >= st2.get().revision);
    assert_eq!(
        sandbox_backends(&k1),
        [ip("10.255.0.10")],
        "n1 balances to n2's task before n2 has wired it"
    );

    // The runtime creates the namespace: n2's retry wires the task, lists it, and n1 adds it.
    k2.add_namespace("task-b", &["lo", "eth0"]);
    eventually("n1 balances to n2's task once n2 wired it", 60, || {
        sandbox_backends(&k1) == [ip("10.255.0.10"), ip("10.255.0.11")]
    })
    .await;
    let r = ready(&e).unwrap();
    assert!(r.lists("web", ip("10.255.0.11")), "{r:?}");
    assert!(
        k2.with("task-b", |n| !n.rules.is_empty()),
        "n2 wired its task"
    );
    t1.abort();
    t2.abort();
}

/// The key-value pairs under `key` (with `prefix`, every key that starts with it) now: a
/// blocking read from a fresh client on a helper thread.
fn etcd_get(e: &Etcd, key: String, prefix: bool) -> Vec<(String, String)> {
    let url = e.url();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = etcd_client::Client::connect([url], None).await.unwrap();
            let opts = prefix.then(|| etcd_client::GetOptions::new().with_prefix());
            let r = c.get(key, opts).await.unwrap();
            r.kvs()
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8(kv.key().to_vec()).unwrap(),
                        String::from_utf8(kv.value().to_vec()).unwrap(),
                    )
                })
                .collect()
        })
    })
    .join()
    .unwrap()
}

/// The node keys now.
fn node_keys(e: &Etcd) -> Vec<String> {
    etcd_get(e, layout::NODES_PREFIX.to_string(), true)
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn a_second_node_with_a_taken_name_refuses_to_start_and_a_restart_takes_over() {
    let e = Etcd::start().await;
    let mut s = e.store().await;
    s.cluster_apply(&ClusterFile::from_json(FILE).unwrap(), None)
        .await
        .unwrap();
    let (k1, _st1, t1) = agent(&e, "n1", "192.0.2.1", "10.255.0.2", "task-a");
    eventually("n1 programs its sandbox", 30, || {
        !sandbox_backends(&k1).is_empty()
    })
    .await;
    let record_before = node_value(&e, "n1");

    // Another node (another underlay) under n1's name: refused, n1's key untouched.
    let (_k, _st, impostor) = agent(&e, "n1", "192.0.2.9", "10.255.0.9", "task-b");
    let r = tokio::time::timeout(Duration::from_secs(30), impostor)
        .await
        .expect("the second agent stops at once")
        .unwrap();
    match r {
        Err(err @ vipmesh_agent::Error::NodeNameTaken { .. }) => {
            assert_eq!(err.exit_code(), 4);
            let msg = err.to_string();
            assert!(msg.contains("\"n1\"") && msg.contains("192.0.2.1"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(node_value(&e, "n1"), record_before);

    // n1 killed (no revoke) and started again at once, its old lease still alive: the same
    // record takes its key over under the new lease, which outlives the old one.
    t1.abort();
    let _ = t1.await;
    let (k1b, st1b, t1b) = agent(&e, "n1", "192.0.2.1", "10.255.0.2", "task-a");
    eventually("the restarted n1 synced", 30, || st1b.get().full_syncs >= 1).await;
    tokio::time::sleep(Duration::from_secs(5)).await; // > the old lease's 2 s TTL
    assert_eq!(node_value(&e, "n1"), record_before);
    assert!(!sandbox_backends(&k1b).is_empty());
    assert!(!t1b.is_finished());
    t1b.abort();
}

/// The value of a node's key, if any.
fn node_value(e: &Etcd, node: &str) -> Option<String> {
    etcd_get(e, layout::node_key(node), false)
        .into_iter()
        .next()
        .map(|(_, v)| v)
}
