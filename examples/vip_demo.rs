//! The seed's VIP demo, through the vipmesh API.
//!
//! Builds a client, an LB namespace and three tasks on one subnet, applies a VIP service
//! `vote` (10.0.0.9, fwmark 0x103 as in the seed) and prints what the kernel now does:
//! the mangle rules and `ipvsadm -Ln` of the LB namespace, the DNS answer for `vote`, and
//! requests from the client alternating between the tasks. Then it removes one task and
//! shows the drain. Exits 0 only when all of that holds.
//!
//! Run it as root on a kernel with IPVS: `cargo xtask demo vip` does it in the guest.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

#[path = "../crates/vipmesh/tests/common/vip_net.rs"]
mod vip_net;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::ExitCode;
use vip_net::network;

use vipmesh::model::*;
use vipmesh::{Controller, ControllerConfig};
use vipmesh_testkit::vip::{IpFamily, VipLab};

fn show(lab: &VipLab, ns: &str, label: &str, cmd: &str) -> String {
    let out = lab.sh(ns, cmd);
    println!("[{label}]$ {cmd}\n{}", out.trim_end());
    out
}

fn main() -> ExitCode {
    let mut ok = true;
    let mut check = |what: &str, cond: bool| {
        println!("  check: {what}: {}", if cond { "ok" } else { "FAILED" });
        ok &= cond;
    };
    // `cargo xtask demo vip --firewall nftables` runs the demo on the nftables backend.
    let firewall: Firewall = std::env::var("VIPMESH_FIREWALL")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.parse().unwrap())
        .unwrap_or_default();
    println!("== firewall backend: {firewall}");
    let mut lab = VipLab::new(IpFamily::V4, "vote", 3);
    lab.start_servers();
    let tasks: Vec<IpAddr> = lab.tasks.iter().map(|t| t.addr).collect();
    let vip = lab.host(9);
    let marks = FwmarkRange::new(0x103, 0x1ffff).unwrap();
    let desired = |tasks: &[IpAddr]| {
        let net = network(&lab).with_fwmarks(marks);
        NodeState::new(
            vec![NetworkState::new(net, vec![Service::vip("vote", vip, tasks).unwrap()]).unwrap()],
            NodeOptions {
                firewall,
                ..NodeOptions::default()
            },
        )
        .unwrap()
    };
    let d = desired(&tasks);
    let mut mesh = Controller::real(ControllerConfig::default());
    mesh.set_desired(d.clone());
    let plan = mesh.plan_now().unwrap();
    println!("== plan\n{plan}");
    let report = mesh.sync_full(vipmesh::plan::now_secs());
    match &report {
        Ok(r) => println!("== report\n{r}"),
        Err(e) => println!("== apply failed: {e}"),
    }
    check("apply succeeded", report.is_ok());

    println!("== the LB namespace");
    if firewall == Firewall::Nftables {
        let t = show(&lab, &lab.lb, "lb", "nft list table inet vipmesh-lab");
        check(
            "map vip4 maps 10.0.0.9 to mark 0x103",
            t.contains("map vip4 {") && t.contains("10.0.0.9 : 0x00000103"),
        );
        check(
            "one lookup rule per map, and the SNAT by mark range instead of -m ipvs",
            t.contains("meta mark set ip daddr map @vip4")
                && t.contains(
                    "meta mark 0x00000103-0x0001ffff ip daddr 10.0.0.0/24 snat ip to 10.0.0.2",
                ),
        );
        let ipt = show(
            &lab,
            &lab.lb,
            "lb",
            "iptables-save | grep -c VIPMESH || true",
        );
        check("no VIPMESH iptables chain", ipt.trim() == "0");
    } else {
        let mangle = show(
            &lab,
            &lab.lb,
            "lb",
            "iptables -t mangle -nvL VIPMESH-lab-MARK",
        );
        check(
            "mangle shows MARK set 0x103 for 10.0.0.9",
            mangle.contains("MARK set 0x103") && mangle.contains("10.0.0.9"),
        );
    }
    let ipvs = show(&lab, &lab.lb, "lb", "ipvsadm -Ln");
    check(
        "ipvsadm shows FWM 259 rr",
        ipvs.lines().any(|l| l.starts_with("FWM  259 rr")),
    );
    check(
        "every task is a Masq real server of weight 1",
        lab.tasks.iter().all(|t| {
            ipvs.lines().any(|l| {
                l.contains(&format!("-> {}:0", t.addr))
                    && l.contains("Masq")
                    && l.split_whitespace().nth(3) == Some("1")
            })
        }),
    );

    println!("== service discovery");
    let table = vipmesh::dns::table(d.network("lab").unwrap(), "mesh.local.").unwrap();
    let client = vipmesh_netns::Netns::named(&lab.client).unwrap();
    let dns = vipmesh_dns::DnsServer::spawn(Some(&client), "127.0.0.11:53".parse().unwrap(), table)
        .expect("DNS server in the client namespace");
    let answer = show(&lab, &lab.client, "client", "dig +short @127.0.0.11 vote");
    check("dig vote gives the VIP", answer.trim() == "10.0.0.9");

    println!("== curl http://vote/ from the client (vote = {vip})");
    let mut got = Vec::new();
    for i in 1..=6 {
        let out = lab
            .topo
            .try_sh(&lab.client, &format!("curl -s --max-time 5 http://{vip}/"));
        let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!(
            "request {i} -> {}",
            if out.status.success() { &body } else { "ERROR" }
        );
        got.push(body);
    }
    check("requests alternate", got.windows(2).all(|w| w[0] != w[1]));
    check(
        "every task served",
        got.iter().collect::<BTreeSet<_>>().len() == lab.tasks.len(),
    );

    println!("== remove vote.3: it drains (weight 0), the others serve");
    let d2 = desired(&tasks[..2]);
    mesh.set_desired(d2);
    println!("{}", mesh.plan_now().unwrap());
    let report = mesh.sync_full(vipmesh::plan::now_secs());
    check("apply succeeded", report.is_ok());
    let ipvs = show(&lab, &lab.lb, "lb", "ipvsadm -Ln");
    let drained = ipvs
        .lines()
        .find(|l| l.contains(&format!("-> {}:0", tasks[2])))
        .map(|l| l.split_whitespace().nth(3) == Some("0"));
    check(
        "vote.3 is draining (weight 0) or already gone when idle",
        drained.unwrap_or(true),
    );
    let mut after = Vec::new();
    for i in 1..=4 {
        let out = lab
            .topo
            .try_sh(&lab.client, &format!("curl -s --max-time 5 http://{vip}/"));
        let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!(
            "request {i} -> {}",
            if out.status.success() { &body } else { "ERROR" }
        );
        after.push((out.status.success(), body));
    }
    check(
        "no error, and never vote.3",
        after.iter().all(|(s, b)| *s && b != "vote.3"),
    );
    let again = mesh.plan_now().unwrap();
    check(
        "a re-plan changes nothing but finishing the drain",
        again.namespaces.values().all(|n| {
            n.sysctls.is_empty()
                && n.addresses.is_empty()
                && n.ipvs.is_empty()
                && n.rules.is_empty()
                && n.ipvs_removals
                    .iter()
                    .all(|s| matches!(s.change, vipmesh::plan::IpvsChange::DelDest { .. }))
        }),
    );
    dns.shutdown().unwrap();
    if ok {
        println!("VIP DEMO: PASS");
        ExitCode::SUCCESS
    } else {
        println!("VIP DEMO: FAIL");
        ExitCode::FAILURE
    }
}
