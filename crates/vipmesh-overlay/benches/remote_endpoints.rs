//! Programming remote endpoints: the crate (rtnetlink, one socket) against one `bridge fdb
//! add` + one `ip neigh add` process per endpoint (what a CLI-driven setup does), in one run.
//!
//! Needs root: it builds a node namespace with an underlay veth and an overlay namespace
//! (deleted at the end). The CLI side is measured on `CLI_SAMPLE` endpoints and scaled to N.
//!
//! Run: `cargo bench -p vipmesh-overlay --bench remote_endpoints [-- N]` (N = 1000 by default).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    missing_docs
)]

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use vipmesh_netns::Netns;
use vipmesh_overlay::{Overlay, OverlaySpec, RemoteEndpoint, SubnetSpec, mac_for, sync, teardown};

const CLI_SAMPLE: usize = 50;

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.0 {
            if std::path::Path::new("/run/netns").join(n).exists() {
                let _ = Command::new("ip").args(["netns", "del", n]).status();
            }
        }
    }
}

fn remote_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0aff_0000u32 + 10 + i as u32))
}

fn spec(ov: &str, n: usize) -> OverlaySpec {
    let mut s = OverlaySpec::new("bnch", 4097, ov);
    s.subnets.push(SubnetSpec {
        subnet: "10.255.0.0/16".parse().unwrap(),
        gateway: "10.255.0.1".parse().unwrap(),
    });
    s.nodes
        .insert("node2".into(), "192.168.78.12".parse().unwrap());
    s.nodes
        .insert("node3".into(), "192.168.78.13".parse().unwrap());
    s.remote = (0..n)
        .map(|i| RemoteEndpoint {
            addr: remote_ip(i),
            mac: None,
            extra_addrs: Vec::new(),
            node: if i % 2 == 0 { "node2" } else { "node3" }.into(),
        })
        .collect();
    s
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    assert!(is_root(), "this benchmark needs root (network namespaces)");
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let p = format!("vmovb{}-", std::process::id());
    let (node_name, ov) = (format!("{p}node"), format!("{p}ov"));
    let _cleanup = Cleanup(vec![ov.clone(), node_name.clone()]);
    sh(&format!(
        "ip netns add {node_name} && ip -n {node_name} link set lo up && \
         ip -n {node_name} link add eth0 type veth peer name eth1 && \
         ip -n {node_name} addr add 192.168.78.11/24 dev eth0 && \
         ip -n {node_name} link set eth0 up && ip -n {node_name} link set eth1 up"
    ));
    let node = Netns::named(&node_name).unwrap();

    // The overlay itself (bridge, vxlan), no endpoints yet.
    sync(&node, &Overlay::new(&spec(&ov, 0)).unwrap()).unwrap();

    // Crate: N remote endpoints in one sync (observe + plan + 2N netlink requests).
    let full = Overlay::new(&spec(&ov, n)).unwrap();
    let t = Instant::now();
    let plan = sync(&node, &full).unwrap();
    let crate_add = t.elapsed();
    assert_eq!(plan.steps.len(), 2 * n);
    // One more endpoint, incrementally (observe dumps N entries, then 2 requests).
    let more = Overlay::new(&spec(&ov, n + 1)).unwrap();
    let t = Instant::now();
    let plan = sync(&node, &more).unwrap();
    let crate_one = t.elapsed();
    assert_eq!(plan.steps.len(), 2);
    // And removing all of them.
    let none = Overlay::new(&spec(&ov, 0)).unwrap();
    let t = Instant::now();
    let plan = sync(&node, &none).unwrap();
    let crate_del = t.elapsed();
    assert_eq!(plan.steps.len(), 2 * (n + 1));

    // CLI: one `bridge fdb add` and one `ip neigh add` process per endpoint, on a sample.
    let t = Instant::now();
    for i in 0..CLI_SAMPLE {
        let ip = remote_ip(i);
        let mac = mac_for(ip);
        let vtep = if i % 2 == 0 {
            "192.168.78.12"
        } else {
            "192.168.78.13"
        };
        sh(&format!(
            "bridge -n {ov} fdb add {mac} dev vxlan0 dst {vtep} self permanent"
        ));
        sh(&format!(
            "ip -n {ov} neigh add {ip} lladdr {mac} dev vxlan0 nud permanent"
        ));
    }
    let cli_sample = t.elapsed();
    let cli_per = cli_sample / CLI_SAMPLE as u32;
    let cli_n = cli_per * n as u32;
    teardown(&node, &none).unwrap();

    println!("remote endpoints: N = {n}; CLI measured on {CLI_SAMPLE} and scaled");
    println!(
        "  crate  add {n:>5}: {:>9.1} ms  ({:.1} us per endpoint)",
        ms(crate_add),
        ms(crate_add) * 1e3 / n as f64
    );
    println!(
        "  CLI    add {n:>5}: {:>9.1} ms  ({:.1} us per endpoint, 2 processes each)",
        ms(cli_n),
        ms(cli_per) * 1e3
    );
    println!(
        "  ratio CLI / crate (add {n}): {:.1}x",
        cli_n.as_secs_f64() / crate_add.as_secs_f64()
    );
    println!(
        "  crate  add 1 more (with a dump of {n}): {:.2} ms; CLI: {:.2} ms; ratio {:.1}x",
        ms(crate_one),
        ms(cli_per),
        cli_per.as_secs_f64() / crate_one.as_secs_f64()
    );
    println!("  crate  remove {}: {:.1} ms", n + 1, ms(crate_del));
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                == Some("0")
        })
        .unwrap_or(false)
}
