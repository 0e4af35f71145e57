//! The mesh end to end on the guest kernel (IPVS): real namespaces, real traffic, checked
//! against `ipvsadm` and `iptables-save` (or `nft list`: with `VIPMESH_FIREWALL=nftables`
//! every test runs on the nftables backend).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::firewall as fw;
use common::vip_net::network;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use vipmesh::dataplane::RealKernel;
use vipmesh::model::*;
use vipmesh::plan::now_secs;
use vipmesh::{Controller, ControllerConfig, Error, Report};
use vipmesh_testkit::vip::{self as lab, IpFamily, VipLab};

type Ctl = Controller<RealKernel>;

fn desired(lab: &VipLab, services: Vec<Service>) -> NodeState {
    NodeState::single(NetworkState::new(network(lab), services).unwrap()).unwrap()
}

fn vote(lab: &VipLab, tasks: &[&str]) -> Service {
    let addrs: Vec<IpAddr> = tasks.iter().map(|t| lab.task(t).addr).collect();
    Service::vip("vote", lab.host(9), &addrs).unwrap()
}

fn ctl() -> Ctl {
    Controller::real(ControllerConfig::default())
}

fn apply_at(c: &mut Ctl, d: &NodeState, now: u64) -> Report {
    c.set_desired(fw::on(d.clone()));
    c.sync_full(now)
        .unwrap_or_else(|e| panic!("apply failed: {e}"))
}

fn apply_ok(c: &mut Ctl, d: &NodeState) {
    let _ = apply_at(c, d, now_secs());
}

fn plan_empty(c: &mut Ctl) {
    let p = c.plan_now().unwrap();
    assert!(p.is_empty(), "{p}");
}

fn has_step(r: &Report, needle: &str) -> bool {
    r.steps.iter().any(|s| s.step.contains(needle))
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
    let mut m = ctl();
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
    if fw::nft() {
        let t = lab.sh(&lab.lb, "nft list table inet vipmesh-lab");
        assert!(t.contains("10.0.0.9 : 0x00000100"), "{t}");
        assert!(
            t.contains("meta mark 0x00000100-0x0001ffff ip daddr 10.0.0.0/24 snat ip to 10.0.0.2"),
            "{t}"
        );
        assert!(!lab.sh(&lab.lb, "iptables-save").contains("VIPMESH"));
    } else {
        let mangle = lab.sh(&lab.lb, "iptables -t mangle -nvL VIPMESH-lab-MARK");
        assert!(
            mangle.contains("MARK set 0x100") && mangle.contains("10.0.0.9"),
            "{mangle}"
        );
        let nat = lab.sh(&lab.lb, "iptables-save -t nat");
        assert!(
            nat.contains(
                "-A VIPMESH-lab-SNAT -d 10.0.0.0/24 -m ipvs --ipvs -j SNAT --to-source 10.0.0.2"
            ),
            "{nat}"
        );
    }
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
    let mut m = ctl();
    apply_ok(&mut m, &d);
    let ipvs1 = lab.sh(&lab.lb, "ipvsadm -Sn");
    let rules1 = fw::dump(|c| lab.sh(&lab.lb, c));

    // A long-lived connection through the VIP.
    let mut conn = lab::connect(&lab.client, SocketAddr::new(lab.host(9), 9000)).unwrap();
    let first = lab::greeting(&mut conn).unwrap();
    assert!(first.starts_with("vote."), "{first}");
    lab::echo(&mut conn, "before restart\n").unwrap();

    // Re-apply: nothing to do, nothing changes.
    let r = apply_at(&mut m, &d, now_secs());
    assert!(r.steps.is_empty(), "{r}");

    // "Restart": a new controller, services listed in another order.
    drop(m);
    let mut services: Vec<Service> = d.network("lab").unwrap().services().cloned().collect();
    services.reverse();
    let d2 = desired(&lab, services);
    let mut m2 = ctl();
    m2.set_desired(fw::on(d2.clone()));
    plan_empty(&mut m2);
    assert!(apply_at(&mut m2, &d2, now_secs()).steps.is_empty());
    assert_eq!(
        lab.sh(&lab.lb, "ipvsadm -Sn"),
        ipvs1,
        "no service recreated"
    );
    assert_eq!(fw::dump(|c| lab.sh(&lab.lb, c)), rules1);
    lab::echo(&mut conn, "after restart\n").unwrap();
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn drain_keeps_an_established_connection_and_sends_new_ones_elsewhere() {
    let mut lab = VipLab::new(IpFamily::V4, "vote", 2);
    lab.start_servers();
    let d = desired(&lab, vec![vote(&lab, &["vote.1", "vote.2"])]);
    let mut m = ctl();
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
    let r = apply_at(&mut m, &d1, now_secs());
    assert!(has_step(&r, "weight 0 drain"), "{r}");
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
    plan_empty(&mut m);
    assert!(m.next_deadline().is_some(), "a drain is pending");
    // Past the drain timeout it is deleted even though the connection lives.
    let later = now_secs() + d1.options().drain_timeout.as_secs() + 1;
    let r = apply_at(&mut m, &d1, later);
    assert!(has_step(&r, "del-dest"), "{r}");
    assert!(!lab.sh(&lab.lb, "ipvsadm -Ln").contains("10.0.0.11:0"));
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn backends_come_and_go_under_traffic_without_errors() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let mut lab = VipLab::new(IpFamily::V4, "vote", 3);
    lab.start_servers();
    let mut m = ctl();
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
        // Tasks come and go through the reconciler's incremental path.
        let backends = names
            .iter()
            .map(|t| Backend::new(lab.task(t).addr))
            .collect();
        m.set_backends("lab", "vote", backends).unwrap();
        let (kind, r) = m.sync(now_secs()).unwrap();
        assert!(r.ok(), "{kind:?}: {r}");
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
    let mut m = ctl();
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
    let rules = fw::dump(|c| lab.sh(&lab.lb, c));
    assert!(
        !rules.contains("-j REJECT") && !rules.contains(": jump vip_reject"),
        "{rules}"
    );
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn an_ipv6_vip_balances() {
    let mut lab = VipLab::new(IpFamily::V6, "vote", 2);
    lab.start_servers();
    let d = desired(&lab, vec![vote(&lab, &["vote.1", "vote.2"])]);
    let mut m = ctl();
    apply_ok(&mut m, &d);
    let got = gets(&lab, lab.host(9), 4);
    assert_alternates(&got, &["vote.1", "vote.2"]);
    let ipvs = lab.sh(&lab.lb, "ipvsadm -Ln");
    assert!(ipvs.contains("FWM  256 IPv6 rr"), "{ipvs}");
    plan_empty(&mut m);
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
    let mut m = ctl();
    apply_ok(&mut m, &d);
    let table = vipmesh::dns::table(d.network("lab").unwrap(), "mesh.local.").unwrap();
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
    let mut m = ctl();
    let net = network(&lab).with_fwmarks(FwmarkRange::new(0x100, 0x100).unwrap());
    let a = Service::vip("a", lab.host(9), &[]).unwrap();
    let b = Service::vip("b", lab.host(19), &[]).unwrap();
    // Two balanced services, one mark: refused by the model, before any controller sees it.
    match NetworkState::new(net, vec![a, b]) {
        Err(Error::Invalid {
            field: "network.fwmarks",
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(lab.sh(&lab.lb, "ipvsadm -Sn"), "");
    let rules = fw::dump(|c| lab.sh(&lab.lb, c));
    assert!(
        !rules.contains("VIPMESH") && !rules.contains("vipmesh-"),
        "{rules}"
    );
    let mut missing = network(&lab);
    missing.lb_netns = "vipmesh-missing".into();
    m.set_desired(fw::on(
        NodeState::single(NetworkState::new(missing, vec![]).unwrap()).unwrap(),
    ));
    match m.sync_full(now_secs()) {
        Err(Error::StepsFailed { report, .. }) => assert!(
            matches!(report.first_error(), Some(Error::MissingNamespace { netns }) if netns == "vipmesh-missing"),
            "{report}"
        ),
        other => panic!("{other:?}"),
    }
}

fn per_client_net(lab: &VipLab, id: &str, first: u32) -> Network {
    // The rules live in the client: lb_netns/lb_interface/lb_addr name the client itself.
    let mut net = network(lab)
        .with_layout(Layout::PerClient)
        .with_fwmarks(FwmarkRange::new(first, first + 0xff).unwrap());
    net.id = NetworkId::new(id).unwrap();
    net.lb_netns = lab.client.clone();
    net.subnets[0].lb_addr = lab.host(7);
    net
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn the_per_client_layout_balances_from_the_clients_own_namespace() {
    let mut lab = VipLab::new(IpFamily::V4, "vote", 2);
    lab.start_servers();
    let net = per_client_net(&lab, "lab", 0x100);
    let d =
        NodeState::single(NetworkState::new(net, vec![vote(&lab, &["vote.1", "vote.2"])]).unwrap())
            .unwrap();
    let mut m = ctl();
    apply_ok(&mut m, &d);
    let got = gets(&lab, lab.host(9), 4);
    assert_alternates(&got, &["vote.1", "vote.2"]);
    if fw::nft() {
        let t = lab.sh(&lab.client, "nft list table inet vipmesh-lab");
        assert!(t.contains("type route hook output"), "{t}");
        assert!(!t.contains("snat"), "no SNAT per client: {t}");
    } else {
        let rules = lab.sh(&lab.client, "iptables-save");
        assert!(
            rules.contains("-A OUTPUT -m comment --comment vipmesh -j VIPMESH-lab-MARK"),
            "{rules}"
        );
        assert!(!rules.contains("SNAT"), "no SNAT per client: {rules}");
    }
    assert!(
        !lab.sh(&lab.client, "ip -o addr").contains("10.0.0.9"),
        "no VIP address"
    );
    assert!(lab.sh(&lab.client, "ipvsadm -Ln").contains("FWM  256 rr"));
    assert!(
        lab.sh(&lab.lb, "ipvsadm -Sn").is_empty(),
        "nothing in the LB namespace"
    );
    plan_empty(&mut m);
}

/// A container on two networks (per-client layout): each network owns its chains and marks.
#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn two_networks_in_one_namespace_never_touch_each_other() {
    let mut lab = VipLab::new(IpFamily::V4, "vote", 3);
    lab.start_servers();
    let a = |tasks: &[&str]| {
        NetworkState::new(per_client_net(&lab, "a", 0x100), vec![vote(&lab, tasks)]).unwrap()
    };
    let b = |services: Vec<Service>| {
        NetworkState::new(per_client_net(&lab, "b", 0x200), services).unwrap()
    };
    let web = |tasks: &[&str]| {
        let addrs: Vec<IpAddr> = tasks.iter().map(|t| lab.task(t).addr).collect();
        Service::vip("web", lab.host(20), &addrs).unwrap()
    };
    let node = |nets| NodeState::new(nets, NodeOptions::default()).unwrap();
    let mut m = ctl();
    apply_ok(&mut m, &node(vec![a(&["vote.1", "vote.2"])]));
    let a_state = |lab: &VipLab| {
        let rules: Vec<String> = if fw::nft() {
            lab.sh(&lab.client, "nft list table inet vipmesh-a")
                .lines()
                .map(str::to_string)
                .collect()
        } else {
            lab.sh(&lab.client, "iptables-save")
                .lines()
                .filter(|l| l.contains("VIPMESH-a-"))
                .map(str::to_string)
                .collect()
        };
        let ipvs: Vec<String> = lab
            .sh(&lab.client, "ipvsadm -Sn")
            .lines()
            .filter(|l| l.contains("-f 256"))
            .map(str::to_string)
            .collect();
        (rules, ipvs)
    };
    let before = a_state(&lab);
    assert!(!before.0.is_empty() && !before.1.is_empty(), "{before:?}");
    apply_ok(
        &mut m,
        &node(vec![a(&["vote.1", "vote.2"]), b(vec![web(&["vote.3"])])]),
    );
    apply_ok(
        &mut m,
        &node(vec![
            a(&["vote.1", "vote.2"]),
            b(vec![web(&["vote.2", "vote.3"])]),
        ]),
    );
    assert_eq!(a_state(&lab), before, "B's applies left A identical");
    let ipvs = lab.sh(&lab.client, "ipvsadm -Sn");
    assert!(ipvs.contains("-f 512"), "B's service: {ipvs}");
    assert_alternates(&gets(&lab, lab.host(9), 4), &["vote.1", "vote.2"]);
    assert_alternates(&gets(&lab, lab.host(20), 4), &["vote.2", "vote.3"]);
    // Every service of B removed: A byte-identical, B's marks and rules gone.
    apply_ok(&mut m, &node(vec![a(&["vote.1", "vote.2"]), b(vec![])]));
    assert_eq!(a_state(&lab), before);
    assert!(!lab.sh(&lab.client, "ipvsadm -Sn").contains("-f 512"));
    plan_empty(&mut m);
}

/// One network with a v4 and a v6 subnet: the service answers on both VIPs.
#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn dual_stack_serves_both_vips() {
    let mut lab = VipLab::new(IpFamily::V4, "vote", 2);
    let six = |h: u32| -> IpAddr { format!("fd00:0:0:1::{h:x}").parse().unwrap() };
    for (ns, h) in [(lab.lb.clone(), 2), (lab.client.clone(), 7)]
        .into_iter()
        .chain(
            lab.tasks
                .iter()
                .enumerate()
                .map(|(i, t)| (t.netns.clone(), 10 + i as u32)),
        )
    {
        lab.sh(&ns, &format!("ip -6 addr add {}/64 dev eth0 nodad", six(h)));
    }
    lab.start_servers();
    let net = network(&lab).with_subnet("fd00:0:0:1::/64".parse().unwrap(), six(2));
    let mut backends: Vec<IpAddr> = lab.tasks.iter().map(|t| t.addr).collect();
    backends.extend([six(10), six(11)]);
    let svc = Service::vips("vote", &[lab.host(9), six(9)], &backends).unwrap();
    let d = NodeState::single(NetworkState::new(net, vec![svc]).unwrap()).unwrap();
    let mut m = ctl();
    apply_ok(&mut m, &d);
    assert_alternates(&gets(&lab, lab.host(9), 4), &["vote.1", "vote.2"]);
    assert_alternates(&gets(&lab, six(9), 4), &["vote.1", "vote.2"]);
    let ipvs = lab.sh(&lab.lb, "ipvsadm -Ln");
    assert!(
        ipvs.contains("FWM  256 rr") && ipvs.contains("FWM  256 IPv6 rr"),
        "{ipvs}"
    );
    plan_empty(&mut m);
}

/// The LB namespace deleted and re-created under the same name while the controller runs:
/// the next sync programs the new namespace fully instead of splitting objects.
#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn a_recreated_lb_namespace_is_reprogrammed() {
    let mut lab = VipLab::new(IpFamily::V4, "vote", 2);
    lab.start_servers();
    let d = desired(&lab, vec![vote(&lab, &["vote.1", "vote.2"])]);
    let mut m = ctl();
    apply_ok(&mut m, &d);
    // Re-create the LB namespace with the same name and the same wiring (the lab's switch).
    let lb = lab.lb.clone();
    for args in [["netns", "del", lb.as_str()], ["netns", "add", lb.as_str()]] {
        let st = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    }
    lab.sh(&lb, "ip link set lo up");
    let sw = lab.topo.namespaces()[0].clone();
    lab.topo.attach(
        &sw,
        &lb,
        "eth0",
        &format!("{}/{}", lab.lb_addr, lab.subnet.1),
    );
    assert!(lab.sh(&lb, "ipvsadm -Sn").is_empty(), "a fresh namespace");
    let r = m.sync_full(now_secs()).unwrap();
    assert!(has_step(&r, "add-service"), "{r}");
    assert_alternates(&gets(&lab, lab.host(9), 4), &["vote.1", "vote.2"]);
    plan_empty(&mut m);
}

/// Someone flushes our mark chain: the marks come back from the IPVS services, no service is
/// recreated, and a connection opened before keeps working.
#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn a_flushed_mark_chain_recreates_no_ipvs_service() {
    let mut lab = VipLab::new(IpFamily::V4, "vote", 2);
    lab.start_servers();
    let d = desired(&lab, vec![vote(&lab, &["vote.1", "vote.2"])]);
    let mut m = ctl();
    apply_ok(&mut m, &d);
    let mut conn = lab::connect(&lab.client, SocketAddr::new(lab.host(9), 9000)).unwrap();
    lab::greeting(&mut conn).unwrap();
    if fw::nft() {
        lab.sh(&lab.lb, "nft flush map inet vipmesh-lab vip4");
    } else {
        lab.sh(&lab.lb, "iptables -t mangle -F VIPMESH-lab-MARK");
    }
    let mut m2 = ctl();
    let r = apply_at(&mut m2, &d, now_secs());
    assert!(
        !has_step(&r, "add-service") && !has_step(&r, "del-service"),
        "{r}"
    );
    assert!(
        has_step(&r, fw::step_word()),
        "the rules are rewritten: {r}"
    );
    let marks = if fw::nft() {
        lab.sh(&lab.lb, "nft list map inet vipmesh-lab vip4")
    } else {
        lab.sh(&lab.lb, "iptables -t mangle -S VIPMESH-lab-MARK")
    };
    assert!(
        marks.contains("0x100") || marks.contains("0x00000100"),
        "{marks}"
    );
    lab::echo(&mut conn, "still here\n").unwrap();
    plan_empty(&mut m2);
}
