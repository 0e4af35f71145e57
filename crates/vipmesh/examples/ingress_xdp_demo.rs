//! `cargo xtask demo ingress-xdp`: the XDP ingress mesh on the host kernel (no IPVS), in
//! namespaces it creates: a LAN bridge, an external client, two nodes, a task on each.
//!
//! It shows requests through node1 and node2 spread by Maglev over the tasks on both nodes,
//! each task printing the real client address; the same flow (fixed source port) landing on the
//! same task whichever node it enters; and beside it the classic DNAT + MASQUERADE path on a
//! node, where the task sees the node's address. Each node is driven by its node controller
//! from a state file whose ingress has an `xdp` object (`vipmesh plan` shows the steps).
//! Exits 0 only if all hold. Needs root.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

#[path = "../tests/xdp_mesh_lab/lab.rs"]
mod lab;

use std::collections::BTreeMap;

use lab::*;

fn check(ok: bool, what: &str, failures: &mut Vec<String>) {
    println!("  [{}] {what}", if ok { "ok" } else { "FAIL" });
    if !ok {
        failures.push(what.to_owned());
    }
}

fn main() {
    let mut failures = Vec::new();
    let lab = lab(&[0, 1]);
    println!("lab: client {CLIENT}, node1 192.0.2.1, node2 192.0.2.2 on a LAN bridge;");
    println!("     task t1 on node1 (10.255.1.10), task t2 on node2 (10.255.2.11)");
    println!("service vote: tcp 8080 -> 80, udp 5353 -> 53, published on every node\n");
    // Each node's controller, from its state file (the ingress with its `xdp` object), as
    // `vipmesh apply` runs it.
    let mut ctls = Vec::new();
    for node in 0..2 {
        let st = vipmesh::model::NodeState::with_ingress(
            vec![],
            Some(ingress_xdp(&lab, node, &[0, 1])),
            vipmesh::model::NodeOptions::default(),
        )
        .unwrap();
        let file = serde_json::to_string_pretty(&st.to_file()).unwrap();
        if node == 0 {
            let x = file.find("\"xdp\"").unwrap_or(0);
            println!(
                "--- node1's state file, its ingress.xdp ---\n  {}…",
                &file[x..].lines().take(12).collect::<Vec<_>>().join("\n  ")
            );
        }
        let mut c = vipmesh::Controller::real(vipmesh::ControllerConfig::default());
        c.set_desired(vipmesh::model::NodeState::from_json(&file).unwrap());
        println!(
            "--- vipmesh plan on node{} ---\n{}",
            node + 1,
            c.plan_now().unwrap()
        );
        let r = c.sync_full(vipmesh::plan::now_secs()).unwrap();
        println!("  applied: {} steps", r.steps.len());
        check(
            c.plan_now().unwrap().is_empty(),
            &format!("node{}: applying twice changes nothing", node + 1),
            &mut failures,
        );
        ctls.push(c);
    }

    println!("--- 12 TCP requests through each node ---");
    for (node, addr) in [(1, "192.0.2.1"), (2, "192.0.2.2")] {
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        let mut all_client = true;
        for _ in 0..12 {
            let r = client(&lab, &format!("who {addr} 8080"));
            println!("  via node{node}: {r}");
            let (task, c) = who(&r);
            all_client &= c == CLIENT;
            *per.entry(task).or_default() += 1;
        }
        check(
            per.len() == 2,
            &format!("via node{node}: Maglev spreads over tasks on both nodes {per:?}"),
            &mut failures,
        );
        check(
            all_client,
            &format!("via node{node}: every task saw the client's address {CLIENT}"),
            &mut failures,
        );
    }
    println!("--- UDP through each node ---");
    for (node, addr) in [(1, "192.0.2.1"), (2, "192.0.2.2")] {
        let r = client(&lab, &format!("uwho {addr} 5353"));
        println!("  via node{node}: {r}");
        check(
            who(&r).1 == CLIENT,
            &format!("UDP via node{node}: the task saw {CLIENT}"),
            &mut failures,
        );
    }
    println!("--- one flow (source port 43210) through node1, then node2 ---");
    let a = client(&lab, "who 192.0.2.1 8080 43210");
    let b = client(&lab, "who 192.0.2.2 8080 43210");
    println!("  via node1: {a}\n  via node2: {b}");
    check(
        who(&a).0 == who(&b).0,
        "the same flow lands on the same task via either node",
        &mut failures,
    );

    println!("--- beside it: DNAT + MASQUERADE on node1 (port 9090 -> t1:80), the usual way ---");
    let n1 = &lab.nodes[0];
    lab.topo.sh(
        n1,
        "iptables -t nat -A PREROUTING -p tcp --dport 9090 -j DNAT --to-destination 10.255.1.10:80 \
         && iptables -t nat -A POSTROUTING -o h-t1 -j MASQUERADE",
    );
    let r = client(&lab, "who 192.0.2.1 9090");
    println!("  via node1:9090: {r}");
    check(
        who(&r).1 != CLIENT && !who(&r).1.is_empty(),
        &format!("with DNAT + MASQUERADE the task sees {} instead", who(&r).1),
        &mut failures,
    );

    // An empty state tears each node's mesh down (programs, pins, task addresses).
    for mut c in ctls {
        c.set_desired(
            vipmesh::model::NodeState::new(vec![], vipmesh::model::NodeOptions::default()).unwrap(),
        );
        let _ = c.sync_full(vipmesh::plan::now_secs()).unwrap();
    }
    if failures.is_empty() {
        println!("\ningress-xdp demo: PASS");
    } else {
        println!("\ningress-xdp demo: FAIL ({})", failures.join("; "));
        std::process::exit(1);
    }
}
