//! The ingress routing mesh across nodes, on the guest kernel (IPVS, VXLAN): real namespaces,
//! real traffic over a real VXLAN between node namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::ingress_mesh::{Mesh, curl, port};
use vipmesh::ingress::PublishMode;
use vipmesh::model::Protocol;
use vipmesh_testkit::ingress::udp_ask;
use vipmesh_testkit::{Requirement, require};

fn needs() {
    require(&[
        Requirement::Root,
        Requirement::Ipvs,
        Requirement::Tool("curl"),
        Requirement::Tool("busybox"),
    ]);
}

fn names(got: &[String]) -> BTreeSet<&str> {
    got.iter().map(String::as_str).collect()
}

fn gets(m: &Mesh, from: &str, host: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            curl(&m.lab, from, &format!("http://{host}:8080/"))
                .unwrap_or_else(|e| panic!("request {i}: {e}\n{}", m.dump()))
        })
        .collect()
}

fn vote(m: &mut Mesh, tasks: &[&str]) {
    m.services = vec![(
        "vote".into(),
        vec![port(Protocol::Tcp, 8080, 80), port(Protocol::Udp, 5353, 53)],
        tasks.iter().map(|t| t.to_string()).collect(),
    )];
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn three_nodes_every_published_port_reaches_every_task() {
    needs();
    let mut m = Mesh::new(3, &[0, 1, 2]);
    vote(&mut m, &["vote.1", "vote.2", "vote.3"]);
    let _ = m.apply();
    let all: BTreeSet<&str> = ["vote.1", "vote.2", "vote.3"].into();
    for i in 0..3 {
        let got = gets(&m, &m.lab.client.clone(), &m.node_addr(i).to_string(), 6);
        assert_eq!(names(&got), all, "via node{}: {got:?}", i + 1);
    }
    // From a node itself: another node's port, localhost and its own address.
    let n1 = m.node(0).to_string();
    assert_eq!(names(&gets(&m, &n1, &m.node_addr(1).to_string(), 6)), all);
    assert_eq!(names(&gets(&m, &n1, "127.0.0.1", 6)), all);
    assert_eq!(names(&gets(&m, &n1, &m.node_addr(0).to_string(), 6)), all);
    // UDP, published 5353 -> target 53, answered by tasks on every node.
    let mut udp = BTreeSet::new();
    for _ in 0..9 {
        udp.insert(udp_ask(&m.lab.client, m.node_addr(1), 5353).unwrap());
    }
    assert_eq!(udp.len(), 3, "{udp:?}");
    // The seed's shapes.
    let ipvs = m.lab.sh(&m.lab.nodes[0].sandbox_netns, "ipvsadm -Ln");
    assert!(ipvs.contains("FWM  131072 rr"), "{ipvs}");
    // One fwmark service for the service's TCP and UDP ports, every task a Masq real server.
    assert_eq!(ipvs.matches("Masq").count(), 3, "{ipvs}");
    // The published port is reserved on every node: a local process cannot take it.
    let taken = m.lab.topo.try_sh(&n1, "busybox nc -l -p 8080 </dev/null");
    assert!(
        !taken.status.success() && String::from_utf8_lossy(&taken.stderr).contains("in use"),
        "{taken:?}"
    );
    // A port that is not published, on a task's ingress address: dropped.
    let t1 = m.lab.task("vote.1").addr;
    let other = curl(
        &m.lab,
        &m.lab.nodes[0].sandbox_netns.clone(),
        &format!("http://{t1}:9000/"),
    );
    assert!(other.is_err(), "port 9000 is not published: {other:?}");
    m.assert_converged();
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn tasks_come_and_go_and_the_port_keeps_working_everywhere() {
    needs();
    let mut m = Mesh::new(2, &[0, 1]);
    vote(&mut m, &["vote.1", "vote.2"]);
    let _ = m.apply();
    let client = m.lab.client.clone();
    // node1's last task goes: node1's published port still works (docker/for-linux#237).
    vote(&mut m, &["vote.2"]);
    let _ = m.apply();
    let got = gets(&m, &client, &m.node_addr(0).to_string(), 4);
    assert!(got.iter().all(|b| b == "vote.2"), "{got:?}");
    // Start-first update: the new task is added before the old one goes (docker/cli#2274).
    let t3 = m.lab.add_task(0);
    m.lab.start_servers();
    vote(&mut m, &["vote.2", &t3.name]);
    let _ = m.apply();
    vote(&mut m, &[&t3.name]);
    let _ = m.apply();
    for i in 0..2 {
        let got = gets(&m, &client, &m.node_addr(i).to_string(), 4);
        assert!(got.iter().all(|b| *b == t3.name), "{got:?}");
    }
    // service rm, then re-created on the same port (moby#26563).
    m.services.clear();
    let _ = m.apply();
    assert!(curl(&m.lab, &client, &format!("http://{}:8080/", m.node_addr(0))).is_err());
    vote(&mut m, &["vote.1", "vote.2"]);
    let _ = m.apply();
    let got = gets(&m, &client, &m.node_addr(1).to_string(), 4);
    assert_eq!(names(&got), ["vote.1", "vote.2"].into(), "{got:?}");
    m.assert_converged();
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn a_4mib_body_from_the_remote_node_arrives_intact_with_offloads_off() {
    needs();
    require(&[Requirement::Tool("ethtool")]);
    let mut m = Mesh::new(2, &[1]);
    vote(&mut m, &["vote.1"]);
    let _ = m.apply();
    // Offloads hide a wrong MTU (super-packets skip the checks): turn them off on every leg.
    for ns in [
        m.lab.nodes[0].sandbox_netns.clone(),
        m.lab.task("vote.1").netns.clone(),
    ] {
        m.lab.sh(
            &ns,
            "ethtool -K eth0 tso off gso off gro off >/dev/null 2>&1 || true",
        );
    }
    let url = format!("http://{}:8080/big.bin", m.node_addr(0));
    let out = m.lab.topo.try_sh(
        &m.lab.client.clone(),
        &format!("curl -s --max-time 60 {url} | md5sum"),
    );
    let local: Vec<u8> = (0..vipmesh_testkit::ingress::BIG)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let dir = std::env::temp_dir().join(format!("vipmesh-big-{}", std::process::id()));
    std::fs::write(&dir, local).unwrap();
    let expected = std::process::Command::new("md5sum")
        .arg(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&dir);
    let exp = String::from_utf8_lossy(&expected.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let got = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(got, exp, "4 MiB through the remote path");
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn foreign_rules_stay_and_teardown_leaves_nothing_of_ours() {
    needs();
    let mut m = Mesh::new(2, &[0, 1]);
    let n1 = m.node(0).to_string();
    // Docker-like foreign chains and a user's own DNAT, planted first.
    m.lab.sh(
        &n1,
        "iptables -t nat -N DOCKER-INGRESS && iptables -t nat -A DOCKER-INGRESS -j RETURN && \
         iptables -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER-INGRESS && \
         iptables -t nat -A PREROUTING -p tcp --dport 2222 -j DNAT --to-destination 192.168.50.99:22 && \
         iptables -P FORWARD DROP",
    );
    let foreign = |m: &Mesh| -> Vec<String> {
        m.lab
            .sh(&n1, "iptables-save")
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && !l.contains("VIPMESH")
                    && !l.starts_with(':')
                    && !l.contains("comment vipmesh")
            })
            .map(str::to_string)
            .collect()
    };
    let before = foreign(&m);
    vote(&mut m, &["vote.1", "vote.2"]);
    let _ = m.apply();
    let got = gets(&m, &m.lab.client.clone(), &m.node_addr(0).to_string(), 4);
    assert_eq!(
        names(&got),
        ["vote.1", "vote.2"].into(),
        "FORWARD policy DROP is handled"
    );
    assert_eq!(foreign(&m), before, "foreign rules untouched by apply");
    // Teardown: the ingress goes away entirely.
    for c in &mut m.ctls {
        c.set_desired(vipmesh::model::NodeState::new(vec![], Default::default()).unwrap());
        let _ = c.sync_full(vipmesh::plan::now_secs()).unwrap();
    }
    assert_eq!(foreign(&m), before, "foreign rules untouched by teardown");
    // The port reservation went with the ingress: a local process may bind 8080 again.
    let free = m
        .lab
        .topo
        .try_sh(&n1, "timeout 1 busybox nc -l -p 8080 </dev/null");
    assert_eq!(free.status.code(), Some(124), "{free:?}");
    let save = m.lab.sh(&n1, "iptables-save");
    assert!(!save.contains("VIPMESH"), "{save}");
    let links = m.lab.sh(&n1, "ip -o link");
    assert!(
        !links.contains("vm_gwbridge") && !links.contains("vmgw-sbox"),
        "{links}"
    );
    assert!(
        m.lab
            .sh(&m.lab.task("vote.1").netns.clone(), "iptables-save")
            .lines()
            .all(|l| !l.contains("VIPMESH"))
    );
}

/// Background HTTP requests through a node's published port until `stop`; the results.
fn steady_traffic(
    m: &Mesh,
    node: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Result<String, String>>> {
    let client = m.lab.client.clone();
    let url = format!("http://{}:8080/", m.node_addr(node));
    std::thread::spawn(move || {
        let mut log = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && log.len() < 2000 {
            let out = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &client,
                    "curl",
                    "-s",
                    "--max-time",
                    "5",
                    &url,
                ])
                .output();
            log.push(match out {
                Ok(o) if o.status.success() => {
                    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
                }
                Ok(o) => Err(format!("exit {:?}", o.status.code())),
                Err(e) => Err(e.to_string()),
            });
        }
        log
    })
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn a_restarted_controller_drops_no_request_and_reuses_marks() {
    needs();
    let mut m = Mesh::new(2, &[0, 1]);
    vote(&mut m, &["vote.1", "vote.2"]);
    let _ = m.apply();
    let sb = m.lab.nodes[0].sandbox_netns.clone();
    let ipvs_before = m.lab.sh(&sb, "ipvsadm -Sn");
    let mut conn = vipmesh_testkit::vip::connect(
        &m.lab.client,
        std::net::SocketAddr::new(m.node_addr(0), 8080),
    )
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = steady_traffic(&m, 0, stop.clone());
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Restart: node1's controller is replaced by a new one (a new process would do the same).
    m.ctls[0] = vipmesh::Controller::real(vipmesh::ControllerConfig::default());
    let reports = m.apply();
    assert!(
        !reports[0]
            .steps
            .iter()
            .any(|s| s.step.contains("add-service") || s.step.contains("del-service")),
        "{}",
        reports[0]
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let log = traffic.join().unwrap();
    let failed: Vec<_> = log.iter().filter(|r| r.is_err()).collect();
    assert!(
        log.len() >= 3 && failed.is_empty(),
        "{} requests, failed: {failed:?}",
        log.len()
    );
    assert_eq!(
        m.lab.sh(&sb, "ipvsadm -Sn"),
        ipvs_before,
        "marks and services reused"
    );
    // The connection opened before the restart still works (HTTP/1.0 on busybox: one request).
    use std::io::{Read, Write};
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    assert!(body.contains("vote."), "{body}");
    m.assert_converged();
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn a_long_lived_connection_survives_a_backend_added_and_another_drained() {
    needs();
    let mut m = Mesh::new(2, &[0, 1]);
    m.services = vec![(
        "vote".into(),
        vec![port(Protocol::Tcp, 9090, 9000)],
        vec!["vote.1".into(), "vote.2".into()],
    )];
    let _ = m.apply();
    let addr = std::net::SocketAddr::new(m.node_addr(0), 9090);
    // A long-lived greeter connection, and which task it landed on.
    let mut conn = vipmesh_testkit::vip::connect(&m.lab.client, addr).unwrap();
    let held = vipmesh_testkit::vip::greeting(&mut conn).unwrap();
    let other = if held == "vote.1" { "vote.2" } else { "vote.1" };
    vipmesh_testkit::vip::echo(&mut conn, "one\n").unwrap();
    // A third task joins; the other one is drained away.
    let t3 = m.lab.add_task(1);
    m.lab.start_servers();
    m.services[0].2 = vec![held.clone(), t3.name.clone(), other.to_string()];
    let _ = m.apply();
    vipmesh_testkit::vip::echo(&mut conn, "two\n").unwrap();
    m.services[0].2 = vec![held.clone(), t3.name.clone()];
    let _ = m.apply();
    vipmesh_testkit::vip::echo(&mut conn, "three\n").unwrap();
    // New connections never reach the drained task.
    for _ in 0..6 {
        let mut c = vipmesh_testkit::vip::connect(&m.lab.client, addr).unwrap();
        let who = vipmesh_testkit::vip::greeting(&mut c).unwrap();
        assert_ne!(who, other, "a new connection reached the drained task");
    }
    vipmesh_testkit::vip::echo(&mut conn, "four\n").unwrap();
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn a_dual_stack_ingress_answers_on_the_nodes_ipv6_addresses_too() {
    needs();
    let mut m = Mesh::new(2, &[0, 1]);
    m.dual_stack = true;
    vote(&mut m, &["vote.1", "vote.2"]);
    let _ = m.apply();
    let client = m.lab.client.clone();
    let all: BTreeSet<&str> = ["vote.1", "vote.2"].into();
    for i in 0..2 {
        let v6 = format!("[{}]", m.lab.nodes[i].lan_v6);
        let got = gets(&m, &client, &v6, 6);
        assert_eq!(names(&got), all, "via node{} over IPv6: {got:?}", i + 1);
        // IPv4 is unchanged.
        let got = gets(&m, &client, &m.node_addr(i).to_string(), 4);
        assert_eq!(names(&got), all, "via node{} over IPv4: {got:?}", i + 1);
    }
    // From node1: node2's IPv6 address and its own.
    let n1 = m.node(0).to_string();
    for host in [m.lab.nodes[1].lan_v6, m.lab.nodes[0].lan_v6] {
        let got = gets(&m, &n1, &format!("[{host}]"), 4);
        assert_eq!(names(&got), all, "from node1 to [{host}]: {got:?}");
    }
    // UDP over IPv6, answered by the tasks on both nodes.
    let mut udp = BTreeSet::new();
    for _ in 0..8 {
        udp.insert(udp_ask(&client, m.lab.nodes[1].lan_v6, 5353).unwrap());
    }
    assert_eq!(udp.len(), 2, "{udp:?}");
    // One mark, an IPv6 fwmark service beside the IPv4 one, the tasks' IPv6 addresses Masq.
    let ipvs = m.lab.sh(&m.lab.nodes[0].sandbox_netns, "ipvsadm -Ln");
    assert!(ipvs.contains("FWM  131072 IPv6 rr"), "{ipvs}");
    for t in ["vote.1", "vote.2"] {
        let a = m.lab.task(t).addr_v6;
        assert!(ipvs.contains(&format!("[{a}]:0")), "{a} in {ipvs}");
    }
    // The IPv6 port is reserved on the node too.
    let taken = m.lab.topo.try_sh(&n1, "busybox nc -l -p 8080 </dev/null");
    assert!(!taken.status.success(), "{taken:?}");
    m.assert_converged();
    // Back to IPv4 only: the IPv6 rules and service go, IPv4 keeps working.
    m.dual_stack = false;
    let _ = m.apply();
    let ipvs = m.lab.sh(&m.lab.nodes[0].sandbox_netns, "ipvsadm -Ln");
    assert!(!ipvs.contains("IPv6"), "{ipvs}");
    let rules6 = m.lab.sh(&n1, "ip6tables-save");
    assert!(!rules6.contains("VIPMESH-"), "{rules6}");
    let got = gets(&m, &client, &m.node_addr(1).to_string(), 4);
    assert_eq!(names(&got), all, "{got:?}");
    m.assert_converged();
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn a_host_mode_port_is_served_by_the_local_task_only() {
    needs();
    let mut m = Mesh::new(2, &[0, 1]);
    // Each task gets a leg into its node (Docker's gwbridge leg): the host-mode DNAT target.
    for (k, t) in ["vote.1", "vote.2"].iter().enumerate() {
        let task = m.lab.task(t).clone();
        let node = m.lab.nodes[task.node].netns.clone();
        let (hn, tn) = (format!("172.30.{k}.1"), format!("172.30.{k}.2"));
        m.lab.sh(
            &node,
            &format!(
                "ip link add hm{k} type veth peer name gw0 netns {tns} && \
                 ip addr add {hn}/30 dev hm{k} && ip link set hm{k} up",
                tns = task.netns
            ),
        );
        m.lab.sh(
            &task.netns,
            &format!(
                "ip addr add {tn}/30 dev gw0 && ip link set gw0 up && \
                 ip route replace default via {hn}"
            ),
        );
        m.host_addrs.insert(t.to_string(), tn.parse().unwrap());
    }
    let mut host = port(Protocol::Tcp, 8081, 80);
    host.mode = PublishMode::Host;
    m.services = vec![(
        "web".into(),
        vec![host],
        vec!["vote.1".into(), "vote.2".into()],
    )];
    let _ = m.apply();
    let client = m.lab.client.clone();
    for (i, want) in ["vote.1", "vote.2"].iter().enumerate() {
        let got = (0..4)
            .map(|_| {
                curl(&m.lab, &client, &format!("http://{}:8081/", m.node_addr(i)))
                    .unwrap_or_else(|e| panic!("{e}\n{}", m.dump()))
            })
            .collect::<Vec<_>>();
        assert!(got.iter().all(|b| b == want), "node{}: {got:?}", i + 1);
    }
    // No mesh: no fwmark service in the sandbox; the node DNATs straight to its task.
    let ipvs = m.lab.sh(&m.lab.nodes[0].sandbox_netns, "ipvsadm -Ln");
    assert!(!ipvs.contains("FWM"), "{ipvs}");
    let rules = common::firewall::dump(|c| m.lab.sh(m.node(0), c));
    if common::firewall::nft() {
        // The host's DNAT map: tcp . published → the task's host-mode address . target.
        assert!(rules.contains("tcp . 8081 : 172.30.0.2 . 80"), "{rules}");
    } else {
        assert!(
            rules.contains("--dport 8081") && rules.contains("--to-destination 172.30.0.2:80"),
            "{rules}"
        );
    }
    m.assert_converged();
}
