//! The seed's ingress routing mesh demo, through the vipmesh controller: two nodes over a real
//! VXLAN, a LAN bridge and an external client; service `vote` published 8080 -> 80 (and UDP
//! 5353 -> 53), one task on each node. It shows what each node programs (the host's DNAT to
//! the sandbox, the sandbox's MARK and `ipvsadm -Ln`, the task's REDIRECT) and checks:
//! - `curl node1:8080` and `curl node2:8080` from the client alternate across both tasks;
//! - `curl node2:8080` from node1, `127.0.0.1:8080` and the node's own address from a node;
//! - the UDP port answered by tasks on both nodes;
//! - a scale to 3 tasks and back under steady traffic with 0 failed requests, the removed task
//!   draining (weight 0) first;
//! - a port that is not published, on a task's ingress address: dropped.
//!
//! Exits 0 only if all hold. Run it as root on a kernel with IPVS: `cargo xtask demo ingress`
//! does it in the guest.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

#[path = "../crates/vipmesh/tests/common/ingress_mesh.rs"]
mod ingress_mesh;

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ingress_mesh::{Mesh, curl, port};
use vipmesh::model::Protocol;
use vipmesh_testkit::ingress::udp_ask;

fn show(m: &Mesh, ns: &str, label: &str, cmd: &str) -> String {
    let out = m.lab.sh(ns, cmd);
    println!("[{label}]$ {cmd}\n{}", out.trim_end());
    out
}

fn vote(m: &mut Mesh, tasks: &[&str]) {
    m.services = vec![(
        "vote".into(),
        vec![port(Protocol::Tcp, 8080, 80), port(Protocol::Udp, 5353, 53)],
        tasks.iter().map(|t| t.to_string()).collect(),
    )];
}

fn main() -> ExitCode {
    let unmet = vipmesh_testkit::unmet(&[
        vipmesh_testkit::Requirement::Root,
        vipmesh_testkit::Requirement::Ipvs,
        vipmesh_testkit::Requirement::Tool("curl"),
        vipmesh_testkit::Requirement::Tool("busybox"),
    ]);
    if !unmet.is_empty() {
        println!("INGRESS DEMO: CANNOT RUN HERE: {}", unmet.join("; "));
        return ExitCode::from(2);
    }
    let mut ok = true;
    let mut check = |what: &str, cond: bool| {
        println!("  check: {what}: {}", if cond { "ok" } else { "FAILED" });
        ok &= cond;
    };
    let mut m = Mesh::new(2, &[0, 1]);
    // Dual stack: the published port answers on the nodes' IPv6 addresses too.
    m.dual_stack = true;
    vote(&mut m, &["vote.1", "vote.2"]);
    let reports = m.apply();
    for (i, r) in reports.iter().enumerate() {
        println!("== node{} applied\n{r}", i + 1);
    }
    let client = m.lab.client.clone();
    let (n1, n2) = (m.node(0).to_string(), m.node(1).to_string());
    let (a1, a2) = (m.node_addr(0).to_string(), m.node_addr(1).to_string());

    let nft = std::env::var("VIPMESH_FIREWALL").is_ok_and(|v| v == "nftables");
    println!(
        "== what node1 programs ({})",
        if nft { "nftables" } else { "iptables" }
    );
    let sb1 = m.lab.nodes[0].sandbox_netns.clone();
    let t1 = m.lab.task("vote.1").clone();
    if nft {
        let host = show(&m, &n1, "node1", "nft list table inet vipmesh-ingress");
        check(
            "node1's DNAT map sends tcp 8080 to its ingress sandbox",
            host.contains("map publish_dnat4") && host.contains("tcp . 8080 : 172.18.0.2 . 8080"),
        );
        let sb = show(
            &m,
            &sb1,
            "ingress_sbox",
            "nft list table inet vipmesh-ingress",
        );
        check(
            "the sandbox's port map marks tcp 8080 with 0x20000",
            sb.contains("map ingress_port") && sb.contains("tcp . 8080 : 0x00020000"),
        );
        let task = show(
            &m,
            &t1.netns,
            "vote.1",
            "nft list table inet vipmesh-ingress",
        );
        check(
            "the task REDIRECTs 8080 to 80",
            task.contains("tcp dport 8080 redirect to :80"),
        );
    }
    let dnat = if nft {
        "--dport 8080 --to-destination 172.18.0.2:8080".to_string()
    } else {
        show(&m, &n1, "node1", "iptables -t nat -S VIPMESH-ingress-DNAT")
    };
    check(
        "node1 DNATs 8080 to its ingress sandbox",
        dnat.contains("--dport 8080") && dnat.contains("--to-destination 172.18.0.2:8080"),
    );
    let mark = if nft {
        "--dport 8080 MARK --set-xmark 0x20000".to_string()
    } else {
        show(
            &m,
            &sb1,
            "ingress_sbox",
            "iptables -t mangle -S VIPMESH-ingress-MARK",
        )
    };
    check(
        "the sandbox marks 8080",
        mark.contains("--dport 8080") && mark.contains("MARK --set-xmark 0x20000"),
    );
    let ipvs = show(&m, &sb1, "ingress_sbox", "ipvsadm -Ln");
    check(
        "ipvsadm shows FWM 131072 rr (IPv4 and IPv6) with both tasks as Masq in each",
        ipvs.contains("FWM  131072 rr")
            && ipvs.contains("FWM  131072 IPv6 rr")
            && ipvs.matches("Masq").count() == 4,
    );
    let rdr = if nft {
        "--to-ports 80".to_string()
    } else {
        show(
            &m,
            &t1.netns,
            "vote.1",
            "iptables -t nat -S VIPMESH-ingress-RDR",
        )
    };
    check(
        "the task REDIRECTs 8080 to 80",
        rdr.contains("--to-ports 80"),
    );

    let series = |m: &Mesh, from: &str, host: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|_| curl(&m.lab, from, &format!("http://{host}:8080/")).unwrap_or_else(|e| e))
            .collect()
    };
    let alternates = |got: &[String]| {
        got.windows(2).all(|w| w[0] != w[1])
            && got.iter().collect::<BTreeSet<_>>()
                == ["vote.1".to_string(), "vote.2".to_string()]
                    .iter()
                    .collect()
    };
    for (name, addr) in [("node1", &a1), ("node2", &a2)] {
        let got = series(&m, &client, addr, 6);
        println!("[client]$ curl {name}:8080 x6 -> {}", got.join(" "));
        check(
            &format!("curl {name}:8080 alternates across both nodes' tasks"),
            alternates(&got),
        );
    }
    for (name, i) in [("node1", 0), ("node2", 1)] {
        let v6 = format!("[{}]", m.lab.nodes[i].lan_v6);
        let got = series(&m, &client, &v6, 6);
        println!(
            "[client]$ curl -g {v6}:8080 x6 ({name}, IPv6) -> {}",
            got.join(" ")
        );
        check(
            &format!("curl {name}'s IPv6 address alternates across both nodes' tasks"),
            alternates(&got),
        );
    }
    let got = series(&m, &n1, &a2, 4);
    println!("[node1]$ curl node2:8080 x4 -> {}", got.join(" "));
    check(
        "curl node2:8080 from node1 (the seed's check)",
        alternates(&got),
    );
    let got = series(&m, &n1, "127.0.0.1", 4);
    println!("[node1]$ curl 127.0.0.1:8080 x4 -> {}", got.join(" "));
    check("curl 127.0.0.1:8080 on a node", alternates(&got));
    let got = series(&m, &n2, &a2, 4);
    println!("[node2]$ curl own address:8080 x4 -> {}", got.join(" "));
    check("curl of the node's own address", alternates(&got));
    let udp: BTreeSet<String> = (0..6)
        .filter_map(|_| udp_ask(&client, m.node_addr(0), 5353).ok())
        .collect();
    println!("[client]$ udp node1:5353 x6 -> {udp:?}");
    check(
        "the UDP port is answered by tasks on both nodes",
        udp.len() == 2,
    );

    println!("== scale to 3 tasks and back under steady traffic");
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<Result<String, String>>>> = Arc::default();
    let traffic = {
        let (stop, log) = (stop.clone(), log.clone());
        let (client, a1) = (client.clone(), a1.clone());
        let topo_client = client.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 2000 {
                n += 1;
                let out = std::process::Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &topo_client,
                        "curl",
                        "-s",
                        "--max-time",
                        "5",
                    ])
                    .arg(format!("http://{a1}:8080/"))
                    .output();
                let r = match out {
                    Ok(o) if o.status.success() => {
                        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
                    }
                    Ok(o) => Err(format!("exit {:?}", o.status.code())),
                    Err(e) => Err(e.to_string()),
                };
                log.lock().unwrap().push(r);
            }
            let _ = client;
        })
    };
    let wait_some = |n: usize| {
        let start = log.lock().unwrap().len();
        for _ in 0..400 {
            if log.lock().unwrap().len() >= start + n {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
    };
    wait_some(3);
    let t3 = m.lab.add_task(0);
    m.lab.start_servers();
    vote(&mut m, &["vote.1", "vote.2", &t3.name]);
    let _ = m.apply();
    wait_some(6);
    let seen3: BTreeSet<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| r.clone().ok())
        .collect();
    check("the third task serves", seen3.contains(&t3.name));
    vote(&mut m, &["vote.1", "vote.2"]);
    let _ = m.apply();
    let ipvs = show(&m, &sb1, "ingress_sbox", "ipvsadm -Ln");
    let line = ipvs
        .lines()
        .find(|l| l.contains(&format!("{}:0", t3.addr)))
        .map(str::to_string);
    check(
        "the removed task drains (weight 0) or is already gone when idle",
        line.as_deref()
            .is_none_or(|l| l.split_whitespace().nth(3) == Some("0")),
    );
    wait_some(6);
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    let log = log.lock().unwrap();
    let failed = log.iter().filter(|r| r.is_err()).count();
    println!("steady traffic: {} requests, {failed} failed", log.len());
    check(
        "0 failed requests while scaling",
        failed == 0 && log.len() >= 10,
    );

    let other = curl(&m.lab, &sb1, &format!("http://{}:9000/", t1.addr));
    println!(
        "[ingress_sbox]$ curl {}:9000 (not published) -> {other:?}",
        t1.addr
    );
    check(
        "a port that is not published is dropped at the task",
        other.is_err(),
    );

    if ok {
        println!("INGRESS DEMO: PASS");
        ExitCode::SUCCESS
    } else {
        println!("INGRESS DEMO: FAIL");
        ExitCode::FAILURE
    }
}
