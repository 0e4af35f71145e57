//! Scripted comparisons of the node controller at scale, run in the guest (it needs IPVS), all
//! in one run. For 100 and 10 000 services x 10 backends, each in a fresh namespace of its own
//! (a dummy `eth0`):
//! - **initial**: the first full sync from an empty namespace;
//! - **incremental**: one backend's weight changes through the reconciler
//!   (`set_backends` + `sync`): it reads back and writes only that service;
//! - **resync**: a full sync with nothing to change (observe everything once, plan, nothing to
//!   apply), against the previous controller's cost, which read the ruleset four times per
//!   family (`observe`, `matches`, `plan`, `execute`): emulated here as the same resync plus
//!   three more `iptables-save` and `ip6tables-save` runs in the same namespace;
//! - **cached one-rule change** (10k only): a full sync in `ObserveMode::Cached` that changes
//!   one mark rule, against Docker's way for that rule, `iptables -D` + `iptables -A` on the
//!   same 10k-rule chain.
//!
//! It prints medians of R runs and the ratios. `bash benches/mesh/run.sh` builds it and runs it
//! in the guest.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use vipmesh::model::*;
use vipmesh::plan::now_secs;
use vipmesh::{Controller, ControllerConfig, ObserveMode, SyncKind};

const R: usize = 5;

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

fn service(i: usize, weight: u32, port: Option<u16>) -> Service {
    let vip = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
    let backends: Vec<IpAddr> = (0..10)
        .map(|j| IpAddr::from([10, 2 + j as u8, (i >> 8) as u8, i as u8]))
        .collect();
    let mut s = Service::vip(&format!("svc{i}"), vip, &backends).unwrap();
    s.backends[3].weight = Weight::new(weight).unwrap();
    if let Some(p) = port {
        s.ports = vec![ServicePort::new(Protocol::Tcp, p).unwrap()];
    }
    s
}

fn state(ns: &str, n: usize, changed: Option<Service>) -> NodeState {
    let net = Network::new(
        "scale",
        "10.0.0.0/8".parse().unwrap(),
        ns,
        "eth0",
        "10.0.0.2".parse().unwrap(),
    )
    .unwrap();
    let mut services: Vec<Service> = (0..n).map(|i| service(i, 1, None)).collect();
    if let Some(c) = changed {
        services[n / 2] = c;
    }
    NodeState::single(NetworkState::new(net, services).unwrap()).unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Run {
    initial: Duration,
    incremental: Duration,
    resync: Duration,
    legacy_resync: Duration,
    cached_one_rule: Option<(Duration, Duration)>,
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

fn run(n: usize) -> Run {
    let ns = format!("vmscale{}-{n}", std::process::id());
    sh(&format!(
        "ip netns add {ns} && ip -n {ns} link add eth0 type dummy && ip -n {ns} addr add 10.0.0.2/8 dev eth0 && ip -n {ns} link set eth0 up"
    ));
    let mut c = Controller::real(ControllerConfig::default());
    c.set_desired(state(&ns, n, None));
    let (r, initial) = timed(|| c.sync_full(now_secs()));
    let _ = r.unwrap();
    let mut inc = Vec::new();
    let mut resync = Vec::new();
    let mut legacy = Vec::new();
    // MESH_SCALE_ONLY_CACHED=1 skips to the cached one-rule comparison (a shorter rerun).
    let rounds = if std::env::var_os("MESH_SCALE_ONLY_CACHED").is_some() {
        0
    } else {
        R
    };
    for k in 0..rounds {
        let s = service(n / 2, 2 + k as u32, None);
        c.set_backends("scale", &s.name.to_string(), s.backends.clone())
            .unwrap();
        let ((kind, r), t) = timed(|| c.sync(now_secs()).unwrap());
        assert_eq!(kind, SyncKind::Incremental);
        assert_eq!(r.steps.len(), 1, "{r}");
        inc.push(t);
        let (r, t) = timed(|| c.sync_full(now_secs()).unwrap());
        assert!(r.steps.is_empty(), "{r}");
        resync.push(t);
        let (r, t) = timed(|| {
            let r = c.sync_full(now_secs()).unwrap();
            for _ in 0..3 {
                sh(&format!("ip netns exec {ns} iptables-save >/dev/null"));
                sh(&format!("ip netns exec {ns} ip6tables-save >/dev/null"));
            }
            r
        });
        assert!(r.steps.is_empty(), "{r}");
        legacy.push(t);
    }
    let cached_one_rule = (n >= 10_000).then(|| {
        let mut cc = Controller::real(ControllerConfig {
            observe: ObserveMode::Cached,
            ..ControllerConfig::default()
        });
        cc.set_desired(state(&ns, n, None));
        let _ = cc.sync_full(now_secs()).unwrap();
        let mut ours = Vec::new();
        let mut docker = Vec::new();
        let chain = "VIPMESH-scale-MARK";
        for k in 0..R {
            let port = 1000 + k as u16;
            cc.set_desired(state(&ns, n, Some(service(n / 2, 1, Some(port)))));
            let (r, t) = timed(|| cc.sync_full(now_secs()).unwrap());
            assert!(r.steps.iter().any(|s| s.step.contains("netfilter")), "{r}");
            ours.push(t);
            // Docker's way for one rule: delete it and append its replacement (the rule as
            // the kernel lists it, so the delete matches exactly).
            let i = n / 2;
            let out = Command::new("ip")
                .args([
                    "netns", "exec", &ns, "iptables", "-t", "mangle", "-S", chain,
                ])
                .output()
                .unwrap();
            let listed = String::from_utf8_lossy(&out.stdout);
            let old = listed
                .lines()
                .find(|l| l.contains(&format!("svc=svc{i}\"")))
                .unwrap_or_else(|| panic!("no rule of svc{i}:\n{listed}"))
                .replacen(&format!("-A {chain} "), "", 1);
            assert!(
                old.contains(&format!("--dport {port} ")),
                "the cached sync did not write the change: {old}"
            );
            let new = old.replace(
                &format!("--dport {port}"),
                &format!("--dport {}", port + 100),
            );
            let ((), t) = timed(|| {
                sh(&format!(
                    "ip netns exec {ns} iptables -t mangle -D {chain} {old}"
                ));
                sh(&format!(
                    "ip netns exec {ns} iptables -t mangle -A {chain} {new}"
                ));
            });
            docker.push(t);
            // Put the kernel back to what the controller believes, through the controller.
            cc.request_full_sync();
            let _ = cc.sync_full(now_secs()).unwrap();
        }
        (median(ours), median(docker))
    });
    sh(&format!("ip netns del {ns}"));
    Run {
        initial,
        incremental: median(inc),
        resync: median(resync),
        legacy_resync: median(legacy),
        cached_one_rule,
    }
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
        "node controller at scale, median of {R}, {} kernel",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let only_cached = std::env::var_os("MESH_SCALE_ONLY_CACHED").is_some();
    let small = if only_cached { run(10) } else { run(100) };
    println!("(small run done)");
    let big = run(10_000);
    for (n, r) in [(100, &small), (10_000, &big)] {
        println!(
            "{n:>6} services x 10: initial {:>9.1} ms | incremental change {:>8.2} ms | resync (no change) {:>9.1} ms | previous controller's resync (3 more saves per family) {:>9.1} ms",
            ms(r.initial),
            ms(r.incremental),
            ms(r.resync),
            ms(r.legacy_resync)
        );
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "ratio 10k/100, incremental change through the reconciler: {:.2}  (goal <= 1.5)",
        ratio(big.incremental, small.incremental)
    );
    println!(
        "ratio at 10k, resync / previous controller's resync: {:.2}  (goal <= 0.5)",
        ratio(big.resync, big.legacy_resync)
    );
    if let Some((ours, docker)) = big.cached_one_rule {
        println!(
            "one changed rule at 10k, cached full sync {:.1} ms vs iptables -D + -A {:.1} ms: {:.2}x faster  (goal >= 1.5x)",
            ms(ours),
            ms(docker),
            ratio(docker, ours)
        );
    }
}
