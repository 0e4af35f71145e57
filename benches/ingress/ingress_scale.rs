//! Scripted comparisons of the ingress mesh at scale, run in the guest (IPVS), in one run:
//! - **program a node from empty**: N published services x 3 tasks (on another node, so each
//!   is a real server and a remote overlay endpoint) through one node's controller, against the
//!   CLI reference's way (`shared/tools/ingress-demo-cli.sh`: one `iptables`, `ipvsadm`,
//!   `bridge` or `ip` process per rule), measured on a subset of S services in the same run and
//!   scaled to N;
//! - **one task change**: one task (on another node) of one service replaced, at 10 and at N
//!   services, through the reconciler (`set_desired` + `sync`: the incremental path, which
//!   touches that service's real servers and the task's overlay entries only).
//!
//! `bash benches/ingress/run.sh` builds it and runs it in the guest.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

#[path = "../../crates/vipmesh/tests/common/ingress_mesh.rs"]
mod ingress_mesh;

use std::process::Command;
use std::time::{Duration, Instant};

use std::net::{IpAddr, Ipv4Addr};

use ingress_mesh::{Mesh, port};
use vipmesh::ingress::{IngressService, IngressTask};
use vipmesh::model::{NodeOptions, NodeState, Protocol, Scheduler, ServiceName, Weight};
use vipmesh::plan::now_secs;

const S: usize = 10;

fn sh(ns: &str, cmd: &str) {
    let st = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", cmd])
        .status()
        .unwrap();
    assert!(st.success(), "{cmd}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The address of task `k` (on node2: no namespace needed on node1).
fn task_addr(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 255, 16 + (k >> 8) as u8, k as u8))
}

/// `n` published services with 3 tasks each, all on node2; `shift` replaces one task of the
/// first service.
fn services(n: usize, shift: bool) -> Vec<IngressService> {
    (0..n)
        .map(|i| IngressService {
            name: ServiceName::new(&format!("s{i}")).unwrap(),
            ports: vec![port(Protocol::Tcp, 10_000 + i as u16, 80)],
            scheduler: Scheduler::rr(),
            tasks: (0..3)
                .map(|j| {
                    let k = if shift && i == 0 && j == 0 {
                        3 * n
                    } else {
                        3 * i + j
                    };
                    IngressTask {
                        addr: task_addr(k),
                        node: "node2".into(),
                        netns: None,
                        interface: None,
                        host_addr: None,
                        weight: Weight::default(),
                        addr_v6: None,
                        host_addr_v6: None,
                        host_veth: None,
                    }
                })
                .collect(),
        })
        .collect()
}

/// One task of service 0 replaced through the reconciler's incremental path, back and forth:
/// the median of 7.
fn change(m: &mut Mesh, n: usize) -> Duration {
    let mut times: Vec<Duration> = (0..7)
        .map(|i| {
            let mut ing = m.spec(0);
            ing.services = services(n, i % 2 == 0);
            let st = NodeState::with_ingress(vec![], Some(ing), NodeOptions::default()).unwrap();
            let t = Instant::now();
            m.ctls[0].set_desired(st);
            let (kind, r) = m.ctls[0].sync(now_secs()).unwrap();
            let d = t.elapsed();
            assert!(r.ok(), "{r}");
            assert_eq!(kind, vipmesh::SyncKind::Incremental);
            d
        })
        .collect();
    times.sort();
    times[3]
}

/// Controllers without a periodic resync during the run (the guest is slow: a resync would
/// fall due between the changes and turn them into full syncs).
fn quiet(m: &mut Mesh) {
    for c in &mut m.ctls {
        *c = vipmesh::Controller::real(vipmesh::ControllerConfig {
            resync_interval: Duration::from_secs(24 * 3600),
            ..vipmesh::ControllerConfig::default()
        });
    }
}

fn program(m: &mut Mesh, n: usize, shift: bool) -> Duration {
    let mut ing = m.spec(0);
    ing.services = services(n, shift);
    let st = NodeState::with_ingress(vec![], Some(ing), NodeOptions::default()).unwrap();
    m.ctls[0].set_desired(st);
    let t = Instant::now();
    let r = m.ctls[0].sync_full(now_secs()).unwrap();
    let d = t.elapsed();
    assert!(r.ok(), "{r}");
    d
}

/// The CLI reference's way for the first `S` services of `m`, on node2's namespaces (node2 is
/// not programmed by the controller here): one process per rule.
fn cli_way(m: &Mesh, n: usize) -> Duration {
    let n2 = &m.lab.nodes[1];
    let t = Instant::now();
    sh(
        &n2.netns,
        "iptables -t nat -N DOCKER-INGRESS; iptables -N DOCKER-INGRESS; true",
    );
    sh(
        &n2.sandbox_netns,
        "ip link add eth0 type dummy 2>/dev/null; ip link set eth0 up; ip link add vxlan0 type vxlan id 4096 dstport 4789 2>/dev/null; ip link set vxlan0 up; true",
    );
    for (i, svc) in services(n, false).iter().take(S).enumerate() {
        let p = svc.ports[0].published;
        let mark = 0x100 + i;
        sh(
            &n2.netns,
            &format!(
                "iptables -t nat -I DOCKER-INGRESS -p tcp --dport {p} -j DNAT --to-destination 172.18.0.2:{p}"
            ),
        );
        sh(
            &n2.netns,
            &format!("iptables -I DOCKER-INGRESS -p tcp --dport {p} -j ACCEPT"),
        );
        sh(
            &n2.netns,
            &format!(
                "iptables -I DOCKER-INGRESS -p tcp --sport {p} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
            ),
        );
        sh(
            &n2.sandbox_netns,
            &format!(
                "iptables -t mangle -A PREROUTING -p tcp --dport {p} -j MARK --set-mark {mark}"
            ),
        );
        sh(&n2.sandbox_netns, &format!("ipvsadm -A -f {mark} -s rr"));
        for t in &svc.tasks {
            let a = t.addr;
            let o = match a {
                std::net::IpAddr::V4(v) => v.octets(),
                std::net::IpAddr::V6(_) => unreachable!(),
            };
            let mac = format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
            sh(
                &n2.sandbox_netns,
                &format!("ipvsadm -a -f {mark} -r {a}:0 -m -w 1"),
            );
            sh(
                &n2.sandbox_netns,
                &format!("bridge fdb add {mac} dev vxlan0 dst 192.168.50.11 self permanent"),
            );
            sh(
                &n2.sandbox_netns,
                &format!("ip neigh add {a} lladdr {mac} dev vxlan0 nud permanent"),
            );
        }
    }
    t.elapsed()
}

fn main() {
    let _ = Command::new("modprobe")
        .args(["-qa", "ip_vs", "ip_vs_rr", "xt_ipvs", "xt_mark", "vxlan"])
        .status();
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    println!(
        "ingress at scale, {} kernel, N = {n}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let mut big = Mesh::new(2, &[]);
    quiet(&mut big);
    let ours = program(&mut big, n, false);
    // INGRESS_ONLY_CHANGE=1: the task-change comparison only (the CLI way is the slow part).
    let only_change = std::env::var_os("INGRESS_ONLY_CHANGE").is_some();
    let cli = if only_change {
        Duration::ZERO
    } else {
        cli_way(&big, n)
    };
    let cli_scaled = cli.as_secs_f64() * n as f64 / S as f64;
    println!(
        "program {n} services x 3 tasks from empty: vipmesh {:.0} ms | CLI way {:.0} ms for {S} services, scaled to {n}: {:.0} ms | ratio {:.0}x (goal >= 100x)",
        ms(ours),
        ms(cli),
        cli_scaled * 1e3,
        cli_scaled / ours.as_secs_f64()
    );
    let big_change = change(&mut big, n);
    drop(big);
    let mut small = Mesh::new(2, &[]);
    quiet(&mut small);
    let _ = program(&mut small, 10, false);
    let small_change = change(&mut small, 10);
    println!(
        "one task change (incremental): {:.2} ms at {n} services, {:.2} ms at 10: ratio {:.2} (goal <= 2)",
        ms(big_change),
        ms(small_change),
        big_change.as_secs_f64() / small_change.as_secs_f64()
    );
}
