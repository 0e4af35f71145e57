//! The firewall backends against each other on the guest kernel (IPVS): switching a node from
//! iptables to nftables and back under traffic, a mixed host whose foreign iptables chains and
//! foreign nft table stay byte-identical, and bad input on nftables (`nft` missing or too old,
//! a foreign table with our table's name).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::firewall as fw;
use common::vip_net::network;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use vipmesh::dataplane::RealKernel;
use vipmesh::model::*;
use vipmesh::plan::now_secs;
use vipmesh::{Controller, ControllerConfig, Error};
use vipmesh_testkit::vip::{IpFamily, VipLab};

type Ctl = Controller<RealKernel>;

fn state(lab: &VipLab, firewall: Firewall) -> NodeState {
    let addrs: Vec<IpAddr> = lab.tasks.iter().map(|t| t.addr).collect();
    let vote = Service::vip("vote", lab.host(9), &addrs).unwrap();
    fw::with(
        NodeState::single(NetworkState::new(network(lab), vec![vote]).unwrap()).unwrap(),
        firewall,
    )
}

fn sync(c: &mut Ctl, d: NodeState) {
    c.set_desired(d);
    let r = c
        .sync_full(now_secs())
        .unwrap_or_else(|e| panic!("apply failed: {e}"));
    assert!(r.ok(), "{r}");
    let p = c.plan_now().unwrap();
    assert!(p.is_empty(), "{p}");
}

fn our_iptables(lab: &VipLab) -> Vec<String> {
    lab.sh(&lab.lb, "iptables-save")
        .lines()
        .filter(|l| l.contains("VIPMESH") || l.contains("comment vipmesh"))
        .map(str::to_string)
        .collect()
}

fn our_tables(lab: &VipLab) -> String {
    lab.sh(&lab.lb, "nft list tables | grep vipmesh- || true")
}

/// Requests in a loop from the client until stopped; each result is tagged with the phase
/// (the number of switches done when it started).
fn traffic(
    lab: &VipLab,
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<(usize, Result<String, String>)>> {
    let client = lab.client.clone();
    let vip = lab.host(9);
    std::thread::spawn(move || {
        let mut log = Vec::new();
        while !stop.load(Ordering::SeqCst) && log.len() < 5000 {
            let p = phase.load(Ordering::SeqCst);
            let r = vipmesh_testkit::vip::http_get(&client, vip, 80).map_err(|e| e.to_string());
            log.push((p, r));
        }
        log
    })
}

/// iptables → nftables → iptables on one node under steady traffic: every phase serves, the
/// marks and IPVS services are kept (no service recreated), and each switch leaves only the
/// new backend's objects.
#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn migration_iptables_nftables_iptables_under_traffic() {
    let mut lab = VipLab::new(IpFamily::V4, "vote", 2);
    lab.start_servers();
    let mut c: Ctl = Controller::real(ControllerConfig::default());
    sync(&mut c, state(&lab, Firewall::Iptables));
    let ipvs = lab.sh(&lab.lb, "ipvsadm -Sn");
    let marks = c.marks().clone();
    assert!(!our_iptables(&lab).is_empty());

    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicUsize::new(0));
    let t = traffic(&lab, stop.clone(), phase.clone());
    let wait_requests =
        |n: usize| std::thread::sleep(std::time::Duration::from_millis(300 * n as u64));
    wait_requests(3);
    sync(&mut c, state(&lab, Firewall::Nftables));
    phase.store(1, Ordering::SeqCst);
    assert!(our_iptables(&lab).is_empty(), "{:?}", our_iptables(&lab));
    assert!(our_tables(&lab).contains("vipmesh-lab"));
    wait_requests(3);
    sync(&mut c, state(&lab, Firewall::Iptables));
    phase.store(2, Ordering::SeqCst);
    assert!(!our_iptables(&lab).is_empty());
    assert!(our_tables(&lab).trim().is_empty(), "{}", our_tables(&lab));
    wait_requests(3);
    stop.store(true, Ordering::SeqCst);
    let log = t.join().unwrap();

    for p in 0..3 {
        let (ok, failed): (Vec<_>, Vec<_>) = log
            .iter()
            .filter(|(ph, _)| *ph == p)
            .partition(|(_, r)| r.is_ok());
        eprintln!(
            "phase {p} ({}): {} requests served, {} failed {:?}",
            ["iptables", "nftables", "iptables again"][p],
            ok.len(),
            failed.len(),
            failed
        );
        assert!(!ok.is_empty(), "phase {p} served nothing");
        assert!(failed.is_empty(), "phase {p}: {failed:?}");
    }
    assert_eq!(
        lab.sh(&lab.lb, "ipvsadm -Sn"),
        ipvs,
        "no IPVS service recreated"
    );
    assert_eq!(c.marks(), &marks);
}

/// A host with foreign iptables chains (Docker-like) and a foreign nft table: both stay
/// byte-identical through apply, resync, a backend switch and teardown, on nftables.
#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn a_mixed_host_keeps_foreign_iptables_and_nft_byte_identical() {
    let mut lab = VipLab::new(IpFamily::V4, "vote", 2);
    lab.start_servers();
    fw::load_nft_modules();
    lab.sh(
        &lab.lb,
        "iptables -N DOCKER && iptables -N DOCKER-USER && iptables -A DOCKER-USER -j RETURN && \
         iptables -A FORWARD -j DOCKER-USER && iptables -A FORWARD -o docker0 -j DOCKER && \
         iptables -t nat -N DOCKER && iptables -t nat -A DOCKER -i docker0 -j RETURN && \
         iptables -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER && \
         iptables -t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE && \
         iptables -t mangle -A PREROUTING -p udp --dport 4789 -j MARK --set-mark 0x7",
    );
    lab.sh(
        &lab.lb,
        "printf 'table inet user {\\n chain input {\\n  type filter hook input priority 10; policy accept;\\n  tcp dport 22 counter accept\\n }\\n set blocked {\\n  type ipv4_addr\\n  elements = { 192.0.2.1 }\\n }\\n}\\n' | nft -f -",
    );
    let foreign = |lab: &VipLab| -> (Vec<String>, String) {
        let ipt = lab
            .sh(&lab.lb, "iptables-save")
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && !l.starts_with(':')
                    && !l.contains("VIPMESH")
                    && !l.contains("comment vipmesh")
            })
            .map(str::to_string)
            .collect();
        (ipt, lab.sh(&lab.lb, "nft list table inet user"))
    };
    let before = foreign(&lab);
    let mut c: Ctl = Controller::real(ControllerConfig::default());
    sync(&mut c, state(&lab, Firewall::Nftables));
    assert_eq!(foreign(&lab), before, "apply");
    assert!(lab.http_get(&lab.client, lab.host(9), 80).is_ok());
    let r = c.sync_full(now_secs()).unwrap();
    assert!(r.steps.is_empty(), "resync: {r}");
    assert_eq!(foreign(&lab), before, "resync");
    sync(&mut c, state(&lab, Firewall::Iptables));
    sync(&mut c, state(&lab, Firewall::Nftables));
    assert_eq!(foreign(&lab), before, "switches");
    assert!(lab.http_get(&lab.client, lab.host(9), 80).is_ok());
    // Teardown: the network leaves the node; our table goes, nothing else.
    sync(
        &mut c,
        fw::with(
            NodeState::new(vec![], NodeOptions::default()).unwrap(),
            Firewall::Nftables,
        ),
    );
    assert_eq!(foreign(&lab), before, "teardown");
    assert!(our_iptables(&lab).is_empty());
    assert!(our_tables(&lab).trim().is_empty(), "{}", our_tables(&lab));
    assert_eq!(lab.sh(&lab.lb, "ipvsadm -Sn"), "");
}

fn first_nft_error(e: Error) -> String {
    match e {
        Error::StepsFailed { report, .. } => report
            .first_error()
            .map(|e| vipmesh::apply::chain(Some(e)))
            .unwrap_or_default(),
        e => vipmesh::apply::chain(Some(&e)),
    }
}

/// `nft` missing or older than 1.0 on nftables: a typed error naming it, nothing written; on
/// iptables a missing `nft` is no obstacle.
#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn nft_missing_or_too_old_is_a_typed_error_before_any_write() {
    let lab = VipLab::new(IpFamily::V4, "vote", 1);
    let dir = std::env::temp_dir().join(format!("vipmesh-nft-old-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let old = dir.join("nft");
    std::fs::write(&old, "#!/bin/sh\necho 'nftables v0.9.8 (E.D.S.)'\n").unwrap();
    std::process::Command::new("chmod")
        .args(["+x", &old.to_string_lossy()])
        .status()
        .unwrap();
    for (tool, want) in [
        (
            dir.join("missing").to_string_lossy().into_owned(),
            "not found",
        ),
        (old.to_string_lossy().into_owned(), "version 0.9.8"),
    ] {
        // SAFETY (test): the guest runs this binary with one test thread.
        unsafe { std::env::set_var("VIPMESH_NFT", &tool) };
        let mut c: Ctl = Controller::real(ControllerConfig::default());
        c.set_desired(state(&lab, Firewall::Nftables));
        let e = first_nft_error(c.sync_full(now_secs()).unwrap_err());
        assert!(e.contains(want) && e.contains(&tool), "{e}");
        assert_eq!(lab.sh(&lab.lb, "ipvsadm -Sn"), "", "nothing written");
        assert!(our_iptables(&lab).is_empty());
        // On iptables the same node works.
        let mut c: Ctl = Controller::real(ControllerConfig::default());
        sync(&mut c, state(&lab, Firewall::Iptables));
        sync(
            &mut c,
            NodeState::new(vec![], NodeOptions::default()).unwrap(),
        );
        assert!(our_iptables(&lab).is_empty());
        unsafe { std::env::remove_var("VIPMESH_NFT") };
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A table with our name that is not ours: refused on nftables (nothing applied), left alone
/// on iptables, never deleted.
#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn a_foreign_table_with_our_name_is_refused_and_kept() {
    let mut lab = VipLab::new(IpFamily::V4, "vote", 1);
    lab.start_servers();
    fw::load_nft_modules();
    lab.sh(
        &lab.lb,
        "nft add table inet vipmesh-lab '{ comment \"someone else\"; }' && nft add chain inet vipmesh-lab c",
    );
    let table = lab.sh(&lab.lb, "nft list table inet vipmesh-lab");
    let mut c: Ctl = Controller::real(ControllerConfig::default());
    c.set_desired(state(&lab, Firewall::Nftables));
    let e = first_nft_error(c.sync_full(now_secs()).unwrap_err());
    assert!(e.contains("vipmesh-lab") && e.contains("not ours"), "{e}");
    assert_eq!(lab.sh(&lab.lb, "nft list table inet vipmesh-lab"), table);
    assert_eq!(lab.sh(&lab.lb, "ipvsadm -Sn"), "", "nothing applied");
    let mut c: Ctl = Controller::real(ControllerConfig::default());
    sync(&mut c, state(&lab, Firewall::Iptables));
    assert_eq!(lab.sh(&lab.lb, "nft list table inet vipmesh-lab"), table);
    assert!(lab.http_get(&lab.client, lab.host(9), 80).is_ok());
}
