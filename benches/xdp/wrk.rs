//! New connections per second through three paths, measured with `wrk` in namespaces on this
//! host, all in one run so the ratios share the same noise:
//!
//! - `direct`: client -> task 1 through the node's routing (no load balancer);
//! - `xdp`: the XDP fast path, NAT mode, Maglev over 2 tasks;
//! - `iptables`: Swarm's way, iptables DNAT (`statistic nth`) + MASQUERADE over 2 tasks.
//!
//! Every request is a new TCP connection (`Connection: close`; the task server closes anyway).
//! The task servers are the lab's (Rust, a thread per connection), not a forking httpd, so the
//! servers are not the bottleneck they were with busybox httpd (about 2.8k/s on every path).
//! Rounds are interleaved (direct, xdp, iptables, direct, ...) and each round gets fresh
//! namespaces, so conntrack state of one path never helps or hurts another.
//!
//! Environment: `ROUNDS` (default 3), `SECS` per run (default 5), `CONNS` (default 16).
//! Needs root and wrk. Run through `benches/xdp/compare.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;

use vipmesh_testkit::{
    Requirement, require,
    xdp_lab::{Lab, NODE_ADDR, PUBLISHED, TARGET},
};
use vipmesh_xdp::ForwardMode;

const HTTP_PUBLISHED: u16 = PUBLISHED;
const HTTP_TARGET: u16 = TARGET;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn lab_with_httpd() -> Lab {
    // The lab's task servers answer HTTP GETs (thread per connection, no fork).
    Lab::new("xw", 2)
}

fn wrk(lab: &Lab, addr: Ipv4Addr, port: u16, secs: u64, conns: u64) -> f64 {
    let out = lab.topo.sh(
        &lab.client,
        &format!("wrk -t1 -c{conns} -d{secs}s -H 'Connection: close' http://{addr}:{port}/ 2>&1"),
    );
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{out}"));
    let errors = out
        .lines()
        .find(|l| l.contains("Socket errors") || l.contains("Non-2xx"));
    if let Some(e) = errors {
        eprintln!("   wrk reported: {}", e.trim());
    }
    rps
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // cargo bench/test harness probes
    }
    // Fails (loudly, with the reason) rather than skipping when it cannot run here.
    require(&[Requirement::Netns, Requirement::Tool("wrk")]);
    let rounds = env("ROUNDS", 3);
    let secs = env("SECS", 5);
    let conns = env("CONNS", 16);
    let (mut direct, mut xdp, mut ipt) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        {
            let lab = lab_with_httpd();
            let addr = lab.tasks[0].addr;
            direct.push(wrk(&lab, addr, HTTP_TARGET, secs, conns));
        }
        {
            let mut lab = lab_with_httpd();
            lab.start_xdp(ForwardMode::Nat);
            xdp.push(wrk(&lab, NODE_ADDR, HTTP_PUBLISHED, secs, conns));
            let c = lab.fp.as_mut().unwrap().dataplane().counters().unwrap();
            eprintln!(
                "   xdp counters: flow_new={} flow_hit={} rev_hit={} rev_stale_syn={} drop_no_backend={}",
                c["flow_new"],
                c["flow_hit"],
                c["rev_hit"],
                c["rev_stale_syn"],
                c["drop_no_backend"]
            );
        }
        {
            let mut lab = lab_with_httpd();
            lab.start_iptables_ports(HTTP_PUBLISHED, HTTP_TARGET);
            ipt.push(wrk(&lab, NODE_ADDR, HTTP_PUBLISHED, secs, conns));
            lab.stop_iptables();
        }
        println!(
            "round {round}: direct {:.0}/s  xdp {:.0}/s  iptables {:.0}/s",
            direct[direct.len() - 1],
            xdp[xdp.len() - 1],
            ipt[ipt.len() - 1]
        );
    }
    let (dm, dlo, dhi) = stats(&direct);
    let (xm, xlo, xhi) = stats(&xdp);
    let (im, ilo, ihi) = stats(&ipt);
    println!(
        "\n== new connections/s (wrk -t1 -c{conns} -d{secs}s, Connection: close, {rounds} rounds)"
    );
    println!("   direct    median {dm:8.0}  range {dlo:.0}-{dhi:.0}");
    println!("   xdp NAT   median {xm:8.0}  range {xlo:.0}-{xhi:.0}");
    println!("   iptables  median {im:8.0}  range {ilo:.0}-{ihi:.0}");
    println!(
        "   xdp / iptables = {:.2}x (band {:.2}-{:.2})   goal >= 2x",
        xm / im,
        xlo / ihi,
        xhi / ilo
    );
    println!(
        "   xdp / direct   = {:.2}x (band {:.2}-{:.2})   goal >= 0.95x",
        xm / dm,
        xlo / dhi,
        xhi / dlo
    );
}
