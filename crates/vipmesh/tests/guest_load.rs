//! Load (guest kernel, IPVS): every backend of a service replaced one by one, through the
//! controller's incremental path, under steady HTTP traffic and with one long-lived TCP
//! connection held on a backend that drains. Counts are printed and kept in
//! `benches/crash/README.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use common::vip_net::network;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vipmesh::dataplane::RealKernel;
use vipmesh::model::*;
use vipmesh::plan::now_secs;
use vipmesh::{Controller, ControllerConfig};
use vipmesh_testkit::vip::{self as lab, IpFamily, VipLab};

type Ctl = Controller<RealKernel>;

/// The most requests the background client makes (bounded load).
const MAX_REQUESTS: usize = 600;
/// Requests started after each step before the next one.
const PER_STEP: usize = 40;

fn backends(lab: &VipLab, names: &[String]) -> Vec<Backend> {
    names
        .iter()
        .map(|t| Backend::new(lab.task(t).addr))
        .collect()
}

/// One request of the background client: the step it started in, and what it got.
type Logged = (usize, Result<String, String>);

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn a_rolling_replacement_under_traffic_loses_nothing_and_drains_the_held_connection() {
    let mut lab = VipLab::new(IpFamily::V4, "web", 8);
    lab.start_servers();
    let vip = lab.host(9);
    let old: Vec<String> = (1..=4).map(|i| format!("web.{i}")).collect();
    let new: Vec<String> = (5..=8).map(|i| format!("web.{i}")).collect();
    let addrs: Vec<IpAddr> = old.iter().map(|t| lab.task(t).addr).collect();
    let svc = Service::vip("web", vip, &addrs).unwrap();
    // A drain timeout longer than the test: the held connection keeps its draining backend
    // however slow the (emulated) guest is; the default 30 s could expire mid-test under load.
    let d = NodeState::new(
        vec![NetworkState::new(network(&lab), vec![svc]).unwrap()],
        NodeOptions {
            drain_timeout: std::time::Duration::from_secs(3600),
            ..NodeOptions::default()
        },
    )
    .unwrap();
    let mut m: Ctl = Controller::real(ControllerConfig::default());
    m.set_desired(d.clone());
    let r = m
        .sync_full(now_secs())
        .unwrap_or_else(|e| panic!("first apply: {e}"));
    assert!(r.ok(), "{r}");

    // The long-lived connection, on web.1 (the first backend replaced, so it drains longest).
    let mut held = None;
    for _ in 0..8 {
        let mut c = lab::connect(&lab.client, SocketAddr::new(vip, 9000)).unwrap();
        if lab::greeting(&mut c).unwrap() == "web.1" {
            held = Some(c);
            break;
        }
    }
    let mut held = held.expect("rr sends one of four connections to web.1");
    lab::echo(&mut held, "hello\n").unwrap();

    // The background client: HTTP requests through the VIP, each tagged with the step that
    // had completed when it started connecting.
    let stop = Arc::new(AtomicBool::new(false));
    let step = Arc::new(AtomicUsize::new(0));
    let log: Arc<Mutex<Vec<Logged>>> = Arc::default();
    let traffic = {
        let (stop, step, log) = (Arc::clone(&stop), Arc::clone(&step), Arc::clone(&log));
        let client = lab.client.clone();
        std::thread::spawn(move || {
            for _ in 0..MAX_REQUESTS {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let at = step.load(Ordering::SeqCst);
                let r = lab::http_get(&client, vip, 80).map_err(|e| e.to_string());
                log.lock().unwrap().push((at, r));
            }
        })
    };
    let started_in = |s: usize| -> usize {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at == s)
            .count()
    };
    let wait_for = |s: usize| {
        for _ in 0..600 {
            if started_in(s) >= PER_STEP {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the client made only {} requests in step {s}",
            started_in(s)
        );
    };
    wait_for(0);

    // Replace web.i by web.(i+4), one at a time.
    let mut current = old.clone();
    for i in 0..4 {
        current[i] = new[i].clone();
        m.set_backends("lab", "web", backends(&lab, &current))
            .unwrap();
        let (kind, r) = m
            .sync(now_secs())
            .unwrap_or_else(|e| panic!("step {}: {e}", i + 1));
        assert!(r.ok(), "{kind:?}: {r}");
        step.store(i + 1, Ordering::SeqCst);
        let ipvs = lab.sh(&lab.lb, "ipvsadm -Ln");
        let line = ipvs
            .lines()
            .find(|l| l.contains(&format!("{}:0", lab.task("web.1").addr)))
            .unwrap_or_else(|| panic!("web.1 stays while its connection lives: {ipvs}"))
            .to_string();
        assert_eq!(
            line.split_whitespace().nth(3),
            Some("0"),
            "web.1 drains at weight 0: {ipvs}"
        );
        lab::echo(&mut held, &format!("during step {}\n", i + 1))
            .unwrap_or_else(|e| panic!("the held connection broke at step {}: {e}", i + 1));
        wait_for(i + 1);
    }
    stop.store(true, Ordering::SeqCst);
    traffic.join().unwrap();
    lab::echo(&mut held, "last words\n").unwrap();
    drop(held);

    let log = log.lock().unwrap();
    let total = log.len();
    let failed: Vec<&Logged> = log.iter().filter(|(_, r)| r.is_err()).collect();
    let mut per_step: BTreeMap<usize, BTreeMap<String, usize>> = BTreeMap::new();
    for (at, r) in log.iter() {
        if let Ok(name) = r {
            *per_step
                .entry(*at)
                .or_default()
                .entry(name.clone())
                .or_default() += 1;
        }
    }
    println!(
        "rolling replacement: {total} requests, {} failed ({:.2} % ok); served per step: {per_step:?}",
        failed.len(),
        100.0 * (total - failed.len()) as f64 / total as f64
    );
    assert!(
        total >= 5 * PER_STEP,
        "the client made too few requests: {total}"
    );
    assert!(
        (total - failed.len()) * 1000 >= total * 999,
        "{} of {total} requests failed: {failed:?}",
        failed.len()
    );
    // No connection started after a step reached a backend that step removed; the ones it
    // added served.
    for (s, served) in &per_step {
        let names: BTreeSet<&str> = served.keys().map(String::as_str).collect();
        let removed: BTreeSet<&str> = old[..*s].iter().map(String::as_str).collect();
        assert!(
            names.is_disjoint(&removed),
            "step {s}: a new connection reached a draining backend: {served:?}"
        );
        let mut want: BTreeSet<&str> = new[..*s].iter().map(String::as_str).collect();
        want.extend(old[*s..].iter().map(String::as_str));
        assert!(names.is_superset(&want), "step {s}: served {served:?}");
        // A request started in step s may still be connecting when step s+1 adds its task.
        if let Some(next) = new.get(*s) {
            want.insert(next);
        }
        assert!(names.is_subset(&want), "step {s}: served {served:?}");
    }

    // Past the drain timeout the old backends are gone; only the new ones remain.
    let later = now_secs() + d.options().drain_timeout.as_secs() + 1;
    let (_, r) = m.sync(later).unwrap();
    assert!(r.ok(), "{r}");
    let ipvs = lab.sh(&lab.lb, "ipvsadm -Sn");
    for t in &old {
        assert!(
            !ipvs.contains(&format!("{}:0", lab.task(t).addr)),
            "{t} deleted: {ipvs}"
        );
    }
    for t in &new {
        assert!(
            ipvs.contains(&format!("-r {}:0 -m -w 1", lab.task(t).addr)),
            "{t} serves: {ipvs}"
        );
    }
}
