//! The agent against a three-member etcd cluster on loopback: losing one member is
//! survived (the agent is given every member), losing quorum makes it degraded with the
//! fake dataplane kept, and quorum's return resumes it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod etcd;

use std::net::IpAddr;
use std::time::Duration;

use etcd::{Etcd, eventually};
use vipmesh::fake::FakeKernel;
use vipmesh::{Controller, ControllerConfig};
use vipmesh_agent::agent::{Agent, AgentConfig};
use vipmesh_agent::layout::ClusterFile;
use vipmesh_agent::store::{Store, StoreConfig};
use vipmesh_ipvs::{self as ipvs, IpvsBackend};

fn cluster(backend: &str) -> ClusterFile {
    ClusterFile::from_json(&format!(
        r#"{{"networks": [{{"id": "demo", "lb_netns": "lb-demo", "lb_interface": "eth0",
            "subnets": [{{"subnet": "10.0.0.0/24", "lb_addr": "10.0.0.2"}}],
            "services": [{{"name": "vote", "mode": {{"vip": ["10.0.0.9"]}},
                           "backends": [{{"addr": "{backend}"}}]}}]}}]}}"#
    ))
    .unwrap()
}

fn config(urls: Vec<String>) -> StoreConfig {
    let mut c = StoreConfig::new(urls);
    c.request_timeout = Duration::from_secs(3);
    c.connect_timeout = Duration::from_secs(1);
    c.keepalive_interval = Duration::from_secs(1);
    c.keepalive_timeout = Duration::from_secs(3);
    c
}

async fn apply_via(m: &Etcd, backend: &str) {
    // Retries while the cluster elects a leader.
    for _ in 0..50 {
        if let Ok(mut s) = Store::connect(config(vec![m.url()])).await
            && s.cluster_apply(&cluster(backend), None).await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("cannot apply through {}", m.url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs a real etcd cluster on loopback"]
async fn one_member_down_is_survived_and_quorum_loss_degrades_and_resumes() {
    let mut ms = Etcd::start_cluster(3).await;
    apply_via(&ms[0], "10.0.0.10").await;
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
    let agent = Agent::new(acfg, config(ms.iter().map(Etcd::url).collect()), ctl);
    let status = agent.status();
    let ctl = agent.controller();
    let task = tokio::spawn(agent.run(std::future::pending()));
    let backends = || -> Vec<IpAddr> {
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
                .map(|d| d.dest.key.addr)
                .collect()
        })
    };
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    eventually("vote programmed", 30, || backends() == [ip("10.0.0.10")]).await;

    // One member down: a change through another reaches the node.
    ms[0].kill();
    apply_via(&ms[1], "10.0.0.11").await;
    eventually("change with one member down", 60, || {
        backends() == [ip("10.0.0.11")]
    })
    .await;
    eventually("healthy with two members", 60, || {
        status.get().degraded.is_none()
    })
    .await;
    // A connection skips the dead member (one refused connect), even when told to start there.
    let all: Vec<String> = ms.iter().map(Etcd::url).collect();
    let s = Store::connect_from(config(all.clone()), 0).await.unwrap();
    assert_ne!(s.endpoint(), 0, "connected to the dead member");
    drop(s);

    // Quorum lost: degraded, dataplane kept.
    let before = kernel.with("lb-demo", |n| {
        format!(
            "{:?} {:?} {:?}",
            n.ipvs.services().unwrap(),
            n.addrs,
            n.rules
        )
    });
    ms[1].kill();
    eventually("degraded without quorum", 60, || {
        status.get().degraded.is_some()
    })
    .await;
    // The live member has no leader: it answers no read, so nothing connects to it.
    assert!(Store::connect(config(all)).await.is_err());
    let full = status.get().full_syncs;
    eventually("periodic syncs go on", 30, || {
        status.get().full_syncs >= full + 2
    })
    .await;
    let after = kernel.with("lb-demo", |n| {
        format!(
            "{:?} {:?} {:?}",
            n.ipvs.services().unwrap(),
            n.addrs,
            n.rules
        )
    });
    assert_eq!(before, after, "the dataplane changed without quorum");

    // Quorum back: resumes, and sees the next change.
    ms[1].restart().await;
    apply_via(&ms[2], "10.0.0.12").await;
    eventually("resumed after quorum returned", 60, || {
        status.get().degraded.is_none() && backends() == [ip("10.0.0.12")]
    })
    .await;
    task.abort();
}
