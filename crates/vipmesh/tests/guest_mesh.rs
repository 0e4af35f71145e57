//! The mesh end to end on the guest kernel (IPVS): real namespaces, real traffic, checked
//! against `ipvsadm` and `iptables-save`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use vipmesh::model::*;
use vipmesh::plan::Step;
use vipmesh::{Error, KernelMesh, Mesh};
use vipmesh_testkit::vip::{self as lab, IpFamily, VipLab};

/// The lab's network for vipmesh, built from the lab's plain values.
fn network(lab: &VipLab) -> Network {
    Network::new(
        "lab",
        lab.subnet_cidr().parse().unwrap(),
        &lab.lb,
        &lab.lb_interface,
        lab.lb_addr,
    )
    .unwrap()
}

fn desired(lab: &VipLab, services: Vec<Service>) -> DesiredState {
    DesiredState::new(network(lab), services, Options::default()).unwrap()
}

fn vote(lab: &VipLab, tasks: &[&str]) -> Service {
    let addrs: Vec<IpAddr> = tasks.iter().map(|t| lab.task(t).addr).collect();
    Service::vip("vote", lab.host(9), &addrs).unwrap()
}

fn apply_ok(m: &mut KernelMesh, d: &DesiredState) -> vipmesh::Report {
    let r = m.apply(d).unwrap();
    assert!(r.ok(), "{r}");
    r
}

fn gets(lab: &VipLab, addr: IpAddr, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            lab.http_get(&lab.client, addr, 80)
                .unwrap_or_else(|e| panic!("request {i} to {addr} failed: {e}"))
        })
        .collect()
}

fn assert_alternates(got: &[String], names: &[&str]) {
    for w in got.windows(2) {
        assert_ne!(w[0], w[1], "rr must alternate: {got:?}");
    }
    let seen: BTreeSet<&str> = got.iter().map(String::as_str).collect();
    let want: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(seen, want, "{got:?}");
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn vip_path_balances_and_shows_the_seed_shapes() {
    let mut lab = VipLab::new(IpFamily::V4, "vote", 2);
    lab.start_servers();
    let d = desired(&lab, vec![vote(&lab, &["vote.1", "vote.2"])]);
    let mut m = Mesh::kernel(&network(&lab)).unwrap();
    apply_ok(&mut m, &d);
    let got = gets(&lab, lab.host(9), 6);
    assert_alternates(&got, &["vote.1", "vote.2"]);

    let ipvs = lab.sh(&lab.lb, "ipvsadm -Ln");
    assert!(ipvs.lines().any(|l| l.starts_with("FWM  256 rr")), "{ipvs}");
    for t in &lab.tasks {
        assert!(
            ipvs.lines().any(|l| l.contains(&format!("-> {}:0", t.addr))
                && l.contains("Masq")
                && l.split_whitespace().nth(3) == Some("1")),
            "{ipvs}"
        );
    }
    let mangle = lab.sh(&lab.lb, "iptables -t mangle -nvL VIPMESH-MARK");
    assert!(
        mangle.contains("MARK set 0x100") && mangle.contains("10.0.0.9"),
        "{mangle}"
    );
    let nat = lab.sh(&lab.lb, "iptables-save -t nat");
    assert!(
        nat.contains("-A VIPMESH-SNAT -d 10.0.0.0/24 -m ipvs --ipvs -j SNAT --to-source 10.0.0.2"),
        "{nat}"
    );
    assert_eq!(
        lab.sh(&lab.lb, "sysctl -n net.ipv4.vs.conntrack").trim(),
        "1"
    );
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn reapply_is_a_no_op_and_a_restart_keeps_marks_and_connections() {
    let mut lab = VipLab::new(IpFamily::V4, "vote", 2);
    lab.start_servers();
    let mut api = Service::vip("api", lab.host(20), &[lab.task("vote.2").addr]).unwrap();
    api.scheduler = Scheduler::new("wrr").unwrap();
    let d = desired(&lab, vec![vote(&lab, &["vote.1", "vote.2"]), api]);
    let mut m = Mesh::kernel(&network(&lab)).unwrap();
    apply_ok(&mut m, &d);
    let ipvs1 = lab.sh(&lab.lb, "ipvsadm -Sn");
    let rules1 = lab.sh(&lab.lb, "iptables-save | grep -v '^#'");

    // A long-lived connection through the VIP.
    let mut conn = lab::connect(&lab.client, SocketAddr::new(lab.host(9), 9000)).unwrap();
    let first = lab::greeting(&mut conn).unwrap();
    assert!(first.starts_with("vote."), "{first}");
    lab::echo(&mut conn, "before restart\n").unwrap();

    // Re-apply: nothing to do, nothing changes.
    let r = m.apply(&d).unwrap();
    assert!(r.steps.is_empty(), "{r}");

    // "Restart": a new controller, services listed in another order.
    drop(m);
    let mut services: Vec<Service> = d.services().cloned().collect();
    services.reverse();
    let d2 = desired(&lab, services);
    let mut m2 = Mesh::kernel(&network(&lab)).unwrap();
    let (p, _) = m2.plan(&d2).unwrap();
    assert!(p.is_empty(), "{p}");
    assert!(m2.apply(&d2).unwrap().steps.is_empty());
    assert_eq!(
        lab.sh(&lab.lb, "ipvsadm -Sn"),
        ipvs1,
        "no service recreated"
    );
    assert_eq!(lab.sh(&lab.lb, "iptables-save | grep -v '^#'"), rules1);
    lab::echo(&mut conn, "after restart\n").unwrap();
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn drain_keeps_an_established_connection_and_sends_new_ones_elsewhere() {
    let mut lab = VipLab::new(IpFamily::V4, "vote", 2);
    lab.start_servers();
    let d = desired(&lab, vec![vote(&lab, &["vote.1", "vote.2"])]);
    let mut m = Mesh::kernel(&network(&lab)).unwrap();
    apply_ok(&mut m, &d);
    // Find a connection that landed on vote.2.
    let mut held = None;
    for _ in 0..4 {
        let mut c = lab::connect(&lab.client, SocketAddr::new(lab.host(9), 9000)).unwrap();
        if lab::greeting(&mut c).unwrap() == "vote.2" {
            held = Some(c);
            break;
        }
    }
    let mut held = held.expect("rr sends one of four connections to vote.2");

    let d1 = desired(&lab, vec![vote(&lab, &["vote.1"])]);
    let r = apply_ok(&mut m, &d1);
    assert!(
        r.steps
            .iter()
            .any(|s| matches!(s.step, Step::UpdateDest { weight: 0, .. })),
        "{r}"
    );
    let ipvs = lab.sh(&lab.lb, "ipvsadm -Ln");
    let line = ipvs
        .lines()
        .find(|l| l.contains("10.0.0.11:0"))
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        line.split_whitespace().nth(3),
        Some("0"),
        "weight 0 while draining: {ipvs}"
    );
    assert_ne!(
        line.split_whitespace().nth(4),
        Some("0"),
        "its connection is active: {ipvs}"
    );
    // The established connection still works; new ones all go to vote.1.
    lab::echo(&mut held, "still here\n").unwrap();
    assert!(gets(&lab, lab.host(9), 4).iter().all(|b| b == "vote.1"));
    // Still busy: a plan now keeps it.
    let (p, _) = m.plan(&d1).unwrap();
    assert!(p.is_empty(), "{p}");
    // Past the drain timeout it is deleted even though the connection lives.
    let later = vipmesh::plan::now_secs() + d1.options().drain_timeout.as_secs() + 1;
    let r = m.apply_at(&d1, later).unwrap();
    assert!(
        r.ok()
            && r.steps
                .iter()
                .any(|s| matches!(s.step, Step::DelDest { .. })),
        "{r}"
    );
    assert!(!lab.sh(&lab.lb, "ipvsadm -Ln").contains("10.0.0.11:0"));
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn backends_come_and_go_under_traffic_without_errors() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let mut lab = VipLab::new(IpFamily::V4, "vote", 3);
    lab.start_servers();
    let mut m = Mesh::kernel(&network(&lab)).unwrap();
    apply_ok(&mut m, &desired(&lab, vec![vote(&lab, &["vote.1"])]));
    // A client keeps sending requests through the VIP while the backends change. The gate lets
    // the checks below take the VIP alone: rr is one rotation shared by every client, so a
    // background request between two checked ones would skip a backend.
    let stop = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Mutex::new(()));
    let log: Arc<Mutex<Vec<Result<String, String>>>> = Arc::default();
    let traffic = {
        let (stop, log, gate) = (Arc::clone(&stop), Arc::clone(&log), Arc::clone(&gate));
        let client = lab.client.clone();
        let vip = lab.host(9);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = {
                    let _turn = gate.lock().unwrap();
                    lab::http_get(&client, vip, 80).map_err(|e| e.to_string())
                };
                log.lock().unwrap().push(r);
            }
        })
    };
    let steps: [&[&str]; 4] = [
        &["vote.1", "vote.2"],
        &["vote.1", "vote.2", "vote.3"],
        &["vote.3"],
        &["vote.2", "vote.3"],
    ];
    for names in steps {
        let before = log.lock().unwrap().len();
        apply_ok(&mut m, &desired(&lab, vec![vote(&lab, names)]));
        // Let some requests through on this set (bounded wait, no timing assertion).
        for _ in 0..200 {
            if log.lock().unwrap().len() >= before + 3 * names.len() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let got = {
            let _alone = gate.lock().unwrap();
            gets(&lab, lab.host(9), 2 * names.len())
        };
        let seen: BTreeSet<&str> = got.iter().map(String::as_str).collect();
        assert_eq!(
            seen,
            names.iter().copied().collect(),
            "after applying {names:?}: {got:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    let log = log.lock().unwrap();
    let errors: Vec<&String> = log.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        log.len() >= 12,
        "the background client made too few requests: {}",
        log.len()
    );
    assert!(
        errors.is_empty(),
        "{} of {} requests failed: {errors:?}",
        errors.len(),
        log.len()
    );
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn a_vip_without_backends_is_rejected_at_once() {
    let mut lab = VipLab::new(IpFamily::V4, "vote", 1);
    lab.start_servers();
    let empty = Service::vip("empty", lab.host(9), &[]).unwrap();
    let mut m = Mesh::kernel(&network(&lab)).unwrap();
    apply_ok(&mut m, &desired(&lab, vec![empty]));
    // A TCP reset, not a timeout: connect fails with ECONNREFUSED.
    let err = lab::connect(&lab.client, SocketAddr::new(lab.host(9), 80)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // With a backend the same VIP works, and the reject rule is gone.
    let back = Service::vip("empty", lab.host(9), &[lab.task("vote.1").addr]).unwrap();
    apply_ok(&mut m, &desired(&lab, vec![back]));
    assert_eq!(
        lab.http_get(&lab.client, lab.host(9), 80).unwrap(),
        "vote.1"
    );
    assert!(
        !lab.sh(&lab.lb, "iptables-save -t filter")
            .contains("-j REJECT")
    );
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn an_ipv6_vip_balances() {
    let mut lab = VipLab::new(IpFamily::V6, "vote", 2);
    lab.start_servers();
    let d = desired(&lab, vec![vote(&lab, &["vote.1", "vote.2"])]);
    let mut m = Mesh::kernel(&network(&lab)).unwrap();
    apply_ok(&mut m, &d);
    let got = gets(&lab, lab.host(9), 4);
    assert_alternates(&got, &["vote.1", "vote.2"]);
    let ipvs = lab.sh(&lab.lb, "ipvsadm -Ln");
    assert!(ipvs.contains("FWM  256 IPv6 rr"), "{ipvs}");
    assert!(m.plan(&d).unwrap().0.is_empty());
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn dnsrr_names_resolve_to_shuffled_tasks_and_spread_requests() {
    let mut lab = VipLab::new(IpFamily::V4, "web", 2);
    lab.start_servers();
    let addrs: Vec<IpAddr> = lab.tasks.iter().map(|t| t.addr).collect();
    let d = desired(
        &lab,
        vec![
            Service::dnsrr("web", &addrs).unwrap(),
            Service::vip("vote", lab.host(9), &addrs).unwrap(),
        ],
    );
    let mut m = Mesh::kernel(&network(&lab)).unwrap();
    apply_ok(&mut m, &d);
    let table = vipmesh::dns::table(&d, "mesh.local.").unwrap();
    let client = vipmesh_netns::Netns::named(&lab.client).unwrap();
    let dns = vipmesh_dns::DnsServer::spawn(Some(&client), "127.0.0.11:53".parse().unwrap(), table)
        .unwrap();
    let vip = lab.sh(&lab.client, "dig +short @127.0.0.11 vote");
    assert_eq!(vip.trim(), "10.0.0.9");
    let mut firsts = BTreeSet::new();
    let mut served = BTreeSet::new();
    for _ in 0..30 {
        let out = lab.sh(&lab.client, "dig +short @127.0.0.11 web");
        let ips: Vec<IpAddr> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
        assert_eq!(
            ips.iter().collect::<BTreeSet<_>>(),
            addrs.iter().collect(),
            "{out}"
        );
        firsts.insert(ips[0]);
        served.insert(lab.http_get(&lab.client, ips[0], 80).unwrap());
    }
    assert_eq!(firsts.len(), 2, "the order is shuffled per query");
    assert_eq!(
        served.len(),
        2,
        "requests by name spread over the tasks: {served:?}"
    );
    dns.shutdown().unwrap();
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn bad_input_changes_nothing_in_the_kernel() {
    let lab = VipLab::new(IpFamily::V4, "vote", 1);
    let mut m = Mesh::kernel(&network(&lab)).unwrap();
    let opts = Options {
        fwmark_first: 0x100,
        fwmark_last: 0x100,
        ..Options::default()
    };
    let a = Service::vip("a", lab.host(9), &[]).unwrap();
    let b = Service::vip("b", lab.host(19), &[]).unwrap();
    let d = DesiredState::new(network(&lab), vec![a, b], opts).unwrap();
    assert!(matches!(m.apply(&d), Err(Error::FwmarkExhausted { .. })));
    assert_eq!(lab.sh(&lab.lb, "ipvsadm -Sn"), "");
    assert!(!lab.sh(&lab.lb, "iptables-save").contains("VIPMESH"));
    let mut missing = network(&lab);
    missing.lb_netns = "vipmesh-missing".into();
    assert!(matches!(
        Mesh::kernel(&missing),
        Err(Error::MissingNamespace { .. })
    ));
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn the_per_client_layout_balances_from_the_clients_own_namespace() {
    let mut lab = VipLab::new(IpFamily::V4, "vote", 2);
    lab.start_servers();
    // The rules live in the client: lb_netns/lb_interface/lb_addr name the client itself.
    let mut net = network(&lab);
    net.lb_netns = lab.client.clone();
    net.lb_addr = lab.host(7);
    let opts = Options {
        layout: Layout::PerClient,
        ..Options::default()
    };
    let d = DesiredState::new(net.clone(), vec![vote(&lab, &["vote.1", "vote.2"])], opts).unwrap();
    let mut m = Mesh::kernel(&net).unwrap();
    apply_ok(&mut m, &d);
    let got = gets(&lab, lab.host(9), 4);
    assert_alternates(&got, &["vote.1", "vote.2"]);
    let rules = lab.sh(&lab.client, "iptables-save");
    assert!(
        rules.contains("-A OUTPUT -m comment --comment vipmesh -j VIPMESH-MARK"),
        "{rules}"
    );
    assert!(!rules.contains("SNAT"), "no SNAT per client: {rules}");
    assert!(
        !lab.sh(&lab.client, "ip -o addr").contains("10.0.0.9"),
        "no VIP address"
    );
    assert!(lab.sh(&lab.client, "ipvsadm -Ln").contains("FWM  256 rr"));
    assert!(
        lab.sh(&lab.lb, "ipvsadm -Sn").is_empty(),
        "nothing in the LB namespace"
    );
    assert!(m.plan(&d).unwrap().0.is_empty());
}
