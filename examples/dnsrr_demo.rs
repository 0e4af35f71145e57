//! The seed's DNS round-robin demo, through the vipmesh API.
//!
//! A service `web` in dnsrr mode has no VIP and no IPVS service: its name resolves to the
//! task addresses, shuffled per query. The demo serves the desired state's DNS table in the
//! client namespace on 127.0.0.11 (as Docker's embedded DNS), resolves `web` with `dig`
//! several times, and sends each request to the first address, as a client would. Exits 0
//! only when the answers are shuffled, complete, and the requests spread over the tasks.
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

fn main() -> ExitCode {
    let mut ok = true;
    let mut check = |what: &str, cond: bool| {
        println!("  check: {what}: {}", if cond { "ok" } else { "FAILED" });
        ok &= cond;
    };
    let mut lab = VipLab::new(IpFamily::V4, "web", 2);
    lab.start_servers();
    let tasks: Vec<IpAddr> = lab.tasks.iter().map(|t| t.addr).collect();
    let d = NodeState::single(
        NetworkState::new(network(&lab), vec![Service::dnsrr("web", &tasks).unwrap()]).unwrap(),
    )
    .unwrap();
    let mut mesh = Controller::real(ControllerConfig::default());
    mesh.set_desired(d.clone());
    let report = mesh.sync_full(vipmesh::plan::now_secs());
    match &report {
        Ok(r) => println!("== report\n{r}"),
        Err(e) => println!("== apply failed: {e}"),
    }
    check("apply succeeded", report.is_ok());
    let ipvs = lab.sh(&lab.lb, "ipvsadm -Ln");
    println!("[lb]$ ipvsadm -Ln\n{}", ipvs.trim_end());
    check("dnsrr programs no IPVS service", !ipvs.contains("FWM"));

    let table = vipmesh::dns::table(d.network("lab").unwrap(), "mesh.local.").unwrap();
    let client = vipmesh_netns::Netns::named(&lab.client).unwrap();
    let dns = vipmesh_dns::DnsServer::spawn(Some(&client), "127.0.0.11:53".parse().unwrap(), table)
        .expect("DNS server in the client namespace");
    let mut orders = BTreeSet::new();
    let mut served = Vec::new();
    for i in 1..=8 {
        let out = lab.sh(&lab.client, "dig +short @127.0.0.11 web");
        let ips: Vec<String> = out.lines().map(|l| l.trim().to_string()).collect();
        println!("[client]$ dig +short web   -> {}", ips.join(" "));
        check(
            "both task addresses in the answer",
            ips.iter().collect::<BTreeSet<_>>()
                == tasks
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<BTreeSet<_>>()
                    .iter()
                    .collect(),
        );
        orders.insert(ips.clone());
        let first = &ips[0];
        let r = lab.topo.try_sh(
            &lab.client,
            &format!("curl -s --max-time 5 http://{first}/"),
        );
        let body = String::from_utf8_lossy(&r.stdout).trim().to_string();
        println!("request {i} -> {first} -> {body}");
        served.push(body);
    }
    check("the order is shuffled between queries", orders.len() > 1);
    check(
        "requests by name spread over the tasks",
        served.iter().collect::<BTreeSet<_>>().len() == tasks.len(),
    );
    dns.shutdown().unwrap();
    if ok {
        println!("DNSRR DEMO: PASS");
        ExitCode::SUCCESS
    } else {
        println!("DNSRR DEMO: FAIL");
        ExitCode::FAILURE
    }
}
