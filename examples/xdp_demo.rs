//! XDP fast path demo: Maglev in XDP keeps the client's source address (moby#25526).
//!
//! Builds, in fresh network namespaces on this host, a client, a node and three tasks, then:
//!
//! 1. publishes `10.50.0.1:8080` through the XDP fast path in NAT mode and sends 30 requests
//!    (one TCP connection each): they spread over the tasks by Maglev, and every task reports
//!    the **client's** address;
//! 2. does the same in encap-DSR mode (IPIP to the task, VIP on its `lo`, published port 8080
//!    translated to 80 in the task, replies straight back);
//! 3. publishes the same service the way Swarm does (iptables DNAT + MASQUERADE): every task
//!    now reports the **node's** address.
//!
//! Exits 0 only if all of that holds. Needs root (namespaces, BPF).
//!
//! Run: `cargo run -p vipmesh-xdp --example xdp_demo`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::BTreeMap, net::Ipv4Addr, process::ExitCode};

use vipmesh_testkit::{
    Requirement, unmet,
    xdp_lab::{CLIENT_ADDR, DSR_VIP, Lab, NODE_ADDR, PUBLISHED},
};
use vipmesh_xdp::ForwardMode;

const REQUESTS: usize = 30;

/// Sends `REQUESTS` requests; returns per task the set of peer addresses it saw.
fn run(lab: &Lab, vip: Ipv4Addr) -> Result<BTreeMap<String, (usize, Vec<String>)>, String> {
    let mut out: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
    for _ in 0..REQUESTS {
        let (task, peer) = lab
            .who(vip, PUBLISHED)
            .map_err(|e| format!("request to {vip}:{PUBLISHED}: {e}"))?;
        let ip = peer
            .rsplit_once(':')
            .map(|(ip, _)| ip.to_owned())
            .unwrap_or(peer);
        let e = out.entry(task).or_default();
        e.0 += 1;
        if !e.1.contains(&ip) {
            e.1.push(ip);
        }
    }
    Ok(out)
}

fn show(title: &str, r: &BTreeMap<String, (usize, Vec<String>)>) {
    println!("\n== {title}");
    println!(
        "   {:<6} {:>8}   source address seen by the task",
        "task", "requests"
    );
    for (task, (n, ips)) in r {
        println!("   {task:<6} {n:>8}   {}", ips.join(", "));
    }
}

fn check(ok: &mut bool, cond: bool, what: &str) {
    println!("   [{}] {what}", if cond { "ok" } else { "FAIL" });
    *ok &= cond;
}

fn main() -> ExitCode {
    let why = unmet(&[Requirement::Netns]);
    if !why.is_empty() {
        eprintln!("xdp_demo cannot run here: {}", why.join("; "));
        return ExitCode::from(2);
    }
    if !vipmesh_xdp::object_available() {
        eprintln!("xdp_demo: the eBPF object was not built (is clang installed?)");
        return ExitCode::from(2);
    }
    let client = CLIENT_ADDR.to_string();
    let mut ok = true;
    println!(
        "client {CLIENT_ADDR} -> node {NODE_ADDR} -> tasks t1..t3 (10.51.<i>.2), each in its own netns"
    );

    // 1. XDP, NAT mode.
    let mut lab = Lab::new("xdemo", 3);
    let att = lab.start_xdp(ForwardMode::Nat);
    println!(
        "\nxdp_lb attached to n0 in {:?} mode",
        att.mode.expect("xdp mode")
    );
    match run(&lab, NODE_ADDR) {
        Ok(r) => {
            show(
                &format!(
                    "XDP fast path, NAT mode: {REQUESTS} connections to {NODE_ADDR}:{PUBLISHED}"
                ),
                &r,
            );
            check(
                &mut ok,
                r.len() == 3,
                "Maglev spread the connections over all 3 tasks",
            );
            check(
                &mut ok,
                r.values().all(|(_, ips)| ips == &vec![client.clone()]),
                "every task saw the real client address",
            );
        }
        Err(e) => check(&mut ok, false, &e),
    }
    if let Some(fp) = lab.fp.as_mut() {
        let key = lab_key(NODE_ADDR);
        if let Ok(s) = fp.dataplane().service_stats(&key) {
            println!(
                "   stats: {} packets, {} bytes, {} new flows",
                s.packets, s.bytes, s.new_flows
            );
        }
    }

    // 3. Swarm's way on the same topology: the fast path is detached first.
    lab.fp = None;
    lab.start_iptables();
    match run(&lab, NODE_ADDR) {
        Ok(r) => {
            show(
                &format!(
                    "iptables DNAT + MASQUERADE (Swarm's routing mesh): {REQUESTS} connections"
                ),
                &r,
            );
            check(&mut ok, r.len() >= 2, "spread over the tasks");
            let node_only = r.iter().all(|(task, (_, ips))| {
                let i = task.trim_start_matches('t');
                ips == &vec![format!("10.51.{i}.1")]
            });
            check(
                &mut ok,
                node_only,
                "every task saw the node's address instead of the client's",
            );
        }
        Err(e) => check(&mut ok, false, &e),
    }
    lab.stop_iptables();
    drop(lab);

    // 2. XDP, encap-DSR mode.
    let mut lab = Lab::new("xdemo", 3);
    lab.start_xdp(ForwardMode::Encap);
    match run(&lab, DSR_VIP) {
        Ok(r) => {
            show(
                &format!(
                    "XDP fast path, encap-DSR mode: {REQUESTS} connections to {DSR_VIP}:{PUBLISHED} (tasks listen on :80)"
                ),
                &r,
            );
            check(
                &mut ok,
                r.len() == 3,
                "Maglev spread the connections over all 3 tasks",
            );
            check(
                &mut ok,
                r.values().all(|(_, ips)| ips == &vec![client.clone()]),
                "every task saw the real client address",
            );
        }
        Err(e) => check(&mut ok, false, &e),
    }
    drop(lab);

    if ok {
        println!("\nxdp_demo: all checks passed");
        ExitCode::SUCCESS
    } else {
        println!("\nxdp_demo: some checks FAILED");
        ExitCode::FAILURE
    }
}

fn lab_key(addr: Ipv4Addr) -> vipmesh_xdp::ServiceKey {
    vipmesh_xdp::ServiceKey {
        addr: addr.into(),
        port: PUBLISHED,
        proto: vipmesh_xdp::Proto::Tcp,
    }
}
