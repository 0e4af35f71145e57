//! The agent as separate processes on a real kernel (the guest's: IPVS, VXLAN): etcd 3.4 and
//! one `vipmesh-agent agent` process per node, the ingress mesh between two node namespaces
//! of `vipmesh_testkit::ingress`, real traffic from a client namespace.
//!
//! etcd and the agents run in a control namespace of the lab (loopback only: the guest's own
//! loopback is down, and the test talks to nothing outside namespaces it created); each agent
//! programs its node's namespaces by name (`--host-netns`, `--sandbox-netns`,
//! `--overlay-netns` override the cluster's ingress config on that node). The lab, the process
//! handles and the traffic loop are `vipmesh_testkit::cluster`'s (`cargo xtask demo cluster`
//! runs the same lab with three etcd members).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use vipmesh_testkit::cluster::{ClusterLab, Traffic};
use vipmesh_testkit::{Requirement, eventually, require, within};

/// The agent binary: cargo's, or `VIPMESH_AGENT_BIN` (a copy, so that a rebuild during a
/// long guest run cannot swap it).
fn bin() -> String {
    std::env::var("VIPMESH_AGENT_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_vipmesh-agent").into())
}

fn needs() {
    require(&[
        Requirement::Root,
        Requirement::Ipvs,
        Requirement::Tool("curl"),
        Requirement::Tool("busybox"),
        Requirement::Tool("etcd"),
        Requirement::Tool("ipvsadm"),
    ]);
}

/// The lab with one etcd member, awaited.
fn cluster(nodes: usize, tasks_on: &[usize]) -> ClusterLab {
    let mut c = ClusterLab::new(&bin(), nodes, tasks_on, 1);
    let ctl = c.ctl.clone();
    c.etcd
        .wait_healthy(&ctl, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.etcd.logs()));
    c
}

/// `cluster apply` of the service `vote` (8080 -> 80, 9090 -> 9000) with these tasks.
fn apply_vote(c: &ClusterLab, tasks: &[&str]) {
    c.apply(
        "vote",
        &[(8080, 80), (9090, 9000)],
        tasks,
        Duration::from_secs(300),
    )
    .unwrap();
}

/// Parses `vipmesh_backend_connections{…backend="ADDR",state="STATE"} N` lines.
fn backend_conns(metrics: &str) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("vipmesh_backend_connections{"))
    {
        let label = |name: &str| -> String {
            let k = format!("{name}=\"");
            let rest = &l[l.find(&k).unwrap() + k.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        };
        let v: u64 = l.rsplit(' ').next().unwrap().parse().unwrap();
        out.insert((label("backend"), label("state")), v);
    }
    out
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel and etcd; run by cargo xtask test"]
fn agents_as_processes_serve_the_mesh_and_a_kill_9_drops_nothing() {
    needs();
    let mut c = cluster(2, &[0, 1]);
    apply_vote(&c, &["vote.1", "vote.2"]);
    c.start_agent(0);
    c.start_agent(1);

    // Both nodes' published port reaches both tasks, through the agents alone.
    let both: BTreeSet<String> = ["vote.1".into(), "vote.2".into()].into();
    for i in 0..2 {
        eventually(
            Duration::from_secs(600),
            &format!("node{} serves both tasks", i + 1),
            || match c.reached(i, 6) {
                Ok(got) if got == both => Ok(()),
                Ok(got) => Err(format!("{got:?}")),
                Err(e) => Err(e),
            },
        );
    }
    for (i, a) in c.agents.iter().enumerate() {
        let (code, body) = a.get("/healthz").unwrap();
        assert_eq!(code, 200, "agent {i}: {body}\n{}", c.diag());
    }

    // A task change written to etcd reaches both nodes' kernels.
    let t3 = c.lab.add_task(1);
    c.lab.start_servers();
    apply_vote(&c, &["vote.1", "vote.2", &t3.name]);
    for i in 0..2 {
        let sb = c.lab.nodes[i].sandbox_netns.clone();
        eventually(
            Duration::from_secs(300),
            &format!("{} in node{}'s IPVS", t3.addr, i + 1),
            || {
                let o = c.lab.topo.try_sh(&sb, "ipvsadm -Ln");
                let t = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                if t.contains(&format!("{}:0", t3.addr)) {
                    Ok(())
                } else {
                    Err(t)
                }
            },
        );
    }
    let all: BTreeSet<String> = ["vote.1".into(), "vote.2".into(), t3.name.clone()].into();
    for i in 0..2 {
        eventually(
            Duration::from_secs(300),
            &format!("node{} serves all three tasks", i + 1),
            || match c.reached(i, 9) {
                Ok(got) if got == all => Ok(()),
                Ok(got) => Err(format!("{got:?}")),
                Err(e) => Err(e),
            },
        );
    }

    // Connections the test holds open through node1 (greeter, 9090 -> 9000): node1's agent
    // reports them per backend, from its sandbox's IPVS.
    let mut held = Vec::new();
    let mut per_task: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..6 {
        let mut s = vipmesh_testkit::vip::connect(
            &c.lab.client,
            SocketAddr::new(c.lab.nodes[0].underlay, 9090),
        )
        .unwrap();
        let who = vipmesh_testkit::vip::greeting(&mut s).unwrap();
        *per_task
            .entry(c.lab.task(&who).addr.to_string())
            .or_default() += 1;
        held.push(s);
    }

    // Steady traffic through node1 while its agent is killed with SIGKILL and restarted.
    let before = c.dataplane(0);
    let plan_before = c.agents[0].get("/plan").unwrap();
    assert_eq!(plan_before, (200, String::new()), "{}", c.diag());
    let traffic = Traffic::start(&c.lab.client, &[c.url(0, 8080)], 5000);
    std::thread::sleep(Duration::from_millis(500));

    let metrics = c.agents[0].get("/metrics").unwrap().1;
    let conns = backend_conns(&metrics);
    for (addr, n) in &per_task {
        let active = conns
            .get(&(addr.clone(), "active".into()))
            .copied()
            .unwrap_or_default();
        assert!(
            active >= *n,
            "{addr}: {n} connections held, metrics say {active} active:\n{metrics}"
        );
    }
    assert!(
        metrics.contains(
            "vipmesh_service_connections{network=\"ingress\",service=\"vote\",state=\"active\"}"
        ),
        "{metrics}"
    );

    c.agents[0].restart();
    eventually(
        Duration::from_secs(600),
        "the restarted agent synced",
        || {
            c.agents[0]
                .metric("vipmesh_agent_syncs_total{kind=\"full\"}")
                .and_then(|v| {
                    if v >= 1.0 {
                        Ok(())
                    } else {
                        Err(format!("{v}"))
                    }
                })
        },
    );
    let plan_after = c.agents[0].get("/plan").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let log = traffic.stop();
    let failed: Vec<_> = log.iter().filter(|o| o.result.is_err()).collect();
    assert!(
        log.len() >= 5 && failed.is_empty(),
        "{} requests, failed: {failed:?}\n{}",
        log.len(),
        c.diag()
    );
    assert_eq!(
        plan_after,
        (200, String::new()),
        "the restarted agent's next plan\n{}",
        c.diag()
    );
    assert!(c.agents[0].proc.alive(), "{}", c.diag());
    // Marks, IPVS services and our rules: byte for byte what they were.
    assert_eq!(c.dataplane(0), before, "{}", c.diag());
    let (code, body) = c.agents[0].get("/healthz").unwrap();
    assert_eq!(code, 200, "{body}");

    // The connections held across the kill still work, and are still counted.
    for s in &mut held {
        vipmesh_testkit::vip::echo(s, "still there\n").unwrap();
    }
    let metrics = c.agents[0].get("/metrics").unwrap().1;
    let conns = backend_conns(&metrics);
    let inactive: u64 = conns
        .iter()
        .filter(|((_, st), _)| st == "inactive")
        .map(|(_, v)| v)
        .sum();
    assert!(
        inactive > 0,
        "the curl loop's closed connections: {metrics}"
    );
    for (addr, n) in &per_task {
        assert!(
            conns[&(addr.clone(), "active".into())] >= *n,
            "{addr} after the restart:\n{metrics}"
        );
    }
    eprintln!(
        "{} requests during the kill -9, 0 failed; held connections per backend {per_task:?}",
        log.len()
    );
    // Close one held connection by hand: the rest go with the lab.
    let mut last = held.pop().unwrap();
    last.write_all(b"bye\n").unwrap();
    let mut buf = [0u8; 4];
    let _ = last.read(&mut buf);
}

/// Waits until node `i`'s published port reaches exactly `tasks`.
fn serves(c: &ClusterLab, i: usize, tasks: &[&str], what: &str) {
    let want: BTreeSet<String> = tasks.iter().map(|t| t.to_string()).collect();
    eventually(
        Duration::from_secs(600),
        &format!("node{} serves {what}", i + 1),
        || match c.reached(i, 3 * tasks.len()) {
            Ok(got) if got == want => Ok(()),
            Ok(got) => Err(format!("{got:?}")),
            Err(e) => Err(e),
        },
    );
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel and etcd; run by cargo xtask test"]
fn three_agents_on_three_members_scale_up_and_lose_the_leader_without_a_failed_request() {
    needs();
    let mut c = ClusterLab::new(&bin(), 3, &[0, 1, 2], 3);
    let ctl = c.ctl.clone();
    c.etcd
        .wait_healthy(&ctl, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.etcd.logs()));
    apply_vote(&c, &["vote.1", "vote.2", "vote.3"]);
    for i in 0..3 {
        c.start_agent(i);
    }
    for i in 0..3 {
        serves(&c, i, &["vote.1", "vote.2", "vote.3"], "the three tasks");
    }

    // Under steady requests through every node: a new task on node3. The other nodes add it
    // to their IPVS only once node3 lists it as ready, so no request is refused meanwhile.
    let urls: Vec<String> = (0..3).map(|i| c.url(i, 8080)).collect();
    let traffic = Traffic::start(&c.lab.client, &urls, 100_000);
    let t4 = c.lab.add_task(2);
    c.lab.start_servers();
    apply_vote(&c, &["vote.1", "vote.2", "vote.3", &t4.name]);
    for i in 0..3 {
        serves(
            &c,
            i,
            &["vote.1", "vote.2", "vote.3", &t4.name],
            "four tasks",
        );
    }

    // The etcd leader killed: a change written through the two others reaches every node.
    let leader = within(Duration::from_secs(120), "the etcd leader", || {
        c.etcd.leader(&ctl, 0)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    c.etcd.kill9(leader);
    c.etcd
        .wait_healthy(&ctl, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.etcd.logs()));
    apply_vote(&c, &["vote.1", "vote.2", "vote.3"]);
    for i in 0..3 {
        serves(
            &c,
            i,
            &["vote.1", "vote.2", "vote.3"],
            "the three tasks again",
        );
    }
    let log = traffic.stop();
    let failed: Vec<_> = log.iter().filter(|o| o.result.is_err()).collect();
    assert!(
        log.len() >= 10 && failed.is_empty(),
        "{} requests, failed: {failed:?}\n{}",
        log.len(),
        c.diag()
    );
    for (i, a) in c.agents.iter_mut().enumerate() {
        assert!(a.proc.alive(), "agent {i}\n{}", c.diag());
        let (code, body) = a.get("/healthz").unwrap();
        assert_eq!(code, 200, "agent {i}: {body}\n{}", c.diag());
    }
    eprintln!("{} requests through three nodes, 0 failed", log.len());
}
