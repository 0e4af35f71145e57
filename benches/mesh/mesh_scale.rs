//! Scripted comparison (run in the guest, it needs IPVS): the cost of a one-backend change at
//! 100 and at 10k services (x 10 backends), in one run.
//!
//! For each size it builds the state in a fresh namespace of its own (a dummy `eth0`), applies
//! it, then changes one backend's weight R times with
//! - `apply_services` (incremental: reads back and writes only that service), and
//! - `apply` (full: observe everything, diff, apply),
//!
//! and prints the medians and the 10k/100 ratios. The goal is a ratio <= 2 for the
//! incremental path: the cost is O(changes), not O(services).
//!
//! `bash benches/mesh/run.sh` builds it and runs it in the guest.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use vipmesh::Mesh;
use vipmesh::model::*;

const R: usize = 5;

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

fn state(ns: &str, n: usize, weight: u32) -> DesiredState {
    let net = Network {
        name: "scale".into(),
        subnet: "10.0.0.0/8".parse().unwrap(),
        lb_netns: ns.into(),
        lb_interface: "eth0".into(),
        lb_addr: "10.0.0.2".parse().unwrap(),
    };
    let services = (0..n)
        .map(|i| {
            let vip = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
            let backends: Vec<IpAddr> = (0..10)
                .map(|j| IpAddr::from([10, 2 + j as u8, (i >> 8) as u8, i as u8]))
                .collect();
            let mut s = Service::vip(&format!("svc{i}"), vip, &backends).unwrap();
            if i == n / 2 {
                s.backends[3].weight = Weight::new(weight).unwrap();
            }
            s
        })
        .collect();
    DesiredState::new(net, services, Options::default()).unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run(n: usize) -> (Duration, Duration, Duration) {
    let ns = format!("vmscale{}-{n}", std::process::id());
    sh(&format!(
        "ip netns add {ns} && ip -n {ns} link add eth0 type dummy && ip -n {ns} addr add 10.0.0.2/8 dev eth0 && ip -n {ns} link set eth0 up"
    ));
    let mut mesh = Mesh::kernel(&state(&ns, n, 1).network().clone()).unwrap();
    let t = Instant::now();
    let r = mesh.apply(&state(&ns, n, 1)).unwrap();
    assert!(r.ok(), "{r}");
    let initial = t.elapsed();
    let mut inc = Vec::new();
    let mut full = Vec::new();
    for k in 0..R {
        let d = state(&ns, n, 2 + k as u32);
        let t = Instant::now();
        let r = mesh
            .apply_services(&d, &[&format!("svc{}", n / 2)], 0)
            .unwrap();
        inc.push(t.elapsed());
        assert_eq!(r.steps.len(), 1, "{r}");
        let d = state(&ns, n, 100 + k as u32);
        let t = Instant::now();
        let r = mesh.apply(&d).unwrap();
        full.push(t.elapsed());
        assert_eq!(r.steps.len(), 1, "{r}");
    }
    sh(&format!("ip netns del {ns}"));
    (initial, median(inc), median(full))
}

fn main() {
    let _ = Command::new("modprobe")
        .args([
            "-qa",
            "ip_vs",
            "ip_vs_rr",
            "xt_ipvs",
            "xt_mark",
            "ipt_REJECT",
        ])
        .status();
    println!(
        "one-backend change, median of {R}, {} kernel",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let small = run(100);
    let big = run(10_000);
    for (n, (init, inc, full)) in [(100, small), (10_000, big)] {
        println!(
            "{n:>6} services x 10: initial apply {:>9.1} ms | incremental change {:>8.2} ms | full apply of the change {:>9.1} ms",
            init.as_secs_f64() * 1e3,
            inc.as_secs_f64() * 1e3,
            full.as_secs_f64() * 1e3
        );
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "ratio 10k/100, incremental (apply_services): {:.2}  (goal <= 2)",
        ratio(big.1, small.1)
    );
    println!(
        "ratio 10k/100, full apply (observe+diff):    {:.2}",
        ratio(big.2, small.2)
    );
}
