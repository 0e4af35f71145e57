#![allow(clippy::unwrap_used, clippy::panic)]

use std::net::IpAddr;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn spec() -> OverlaySpec {
    let mut s = OverlaySpec::new("ingr", 4096, "1-ingress-n1");
    s.subnets.push(SubnetSpec {
        subnet: "10.255.0.0/16".parse().unwrap(),
        gateway: ip("10.255.0.1"),
    });
    s.nodes.insert("node1".into(), ip("192.168.50.11"));
    s.nodes.insert("node2".into(), ip("192.168.50.12"));
    s.local.push(LocalEndpoint {
        netns: "vote.1".into(),
        ifname: "eth0".into(),
        addr: ip("10.255.0.5"),
        mac: None,
        extra_addrs: Vec::new(),
    });
    for a in ["10.255.0.6", "10.255.0.3"] {
        s.remote.push(RemoteEndpoint {
            addr: ip(a),
            mac: None,
            extra_addrs: Vec::new(),
            node: "node2".into(),
        });
    }
    s
}

/// Plays a plan onto an observed state, as the kernel would (a pure model of `apply`).
fn simulate(o: &Observed, plan: &Plan, d: &Overlay) -> Observed {
    let mut o = o.clone();
    let link = |kind: &str| ObservedLink {
        index: 0,
        kind: Some(kind.into()),
        mtu: Some(1500),
        up: false,
        master: None,
        mac: None,
        vxlan: None,
    };
    let ep_of = |netns: &str, ifname: &str| {
        d.local()
            .iter()
            .find(|(_, e)| e.netns == netns && e.ifname == ifname)
            .map(|(v, _)| v.clone())
            .unwrap()
    };
    let mut tmp: Option<ObservedLink> = None;
    for s in &plan.steps {
        match s {
            Step::CreateNetns { .. } => o.overlay_netns = true,
            Step::DeleteNetns { .. } => o = Observed::default(),
            Step::CreateBridge { name, .. } => {
                o.links.insert(name.clone(), link("bridge"));
            }
            Step::CreateVxlan { vni, port, mtu, .. } => {
                let mut l = link("vxlan");
                l.mtu = Some(*mtu);
                l.vxlan = Some(vipmesh_netns::rtnl::VxlanInfo {
                    vni: *vni,
                    port: *port,
                    learning: false,
                    proxy: true,
                    l2miss: true,
                    l3miss: true,
                    dev: None,
                    local: None,
                });
                tmp = Some(l);
                o.node_tmp_vxlan = true;
            }
            Step::MoveVxlan { to, .. } => {
                o.links.insert(to.clone(), tmp.take().unwrap());
                o.node_tmp_vxlan = false;
            }
            Step::CreateVeth {
                name,
                peer,
                peer_netns,
                ..
            } => {
                o.links.insert(name.clone(), link("veth"));
                let v = ep_of(peer_netns, peer);
                o.endpoints.entry(v).or_default().link = Some(link("veth"));
            }
            Step::SetLink { ns, name, settings } => {
                let l = match ns {
                    Ns::Endpoint(n) => {
                        let v = ep_of(n, name);
                        o.endpoints.get_mut(&v).unwrap().link.as_mut().unwrap()
                    }
                    Ns::Overlay(_) => o.links.get_mut(name).unwrap(),
                    Ns::Node => panic!("no node links in the model"),
                };
                if let Some(m) = settings.mac {
                    l.mac = Some(m);
                }
                if let Some(m) = settings.mtu {
                    l.mtu = Some(m);
                }
                if let Some(m) = &settings.master {
                    l.master = Some(m.clone());
                }
                l.up |= settings.up;
            }
            Step::AddAddress {
                ns,
                dev,
                addr,
                prefix,
            } => match ns {
                Ns::Endpoint(n) => {
                    let v = ep_of(n, dev);
                    o.endpoints
                        .get_mut(&v)
                        .unwrap()
                        .addrs
                        .insert((*addr, *prefix));
                }
                _ => {
                    o.addrs
                        .entry(dev.clone())
                        .or_default()
                        .insert((*addr, *prefix));
                }
            },
            Step::DeleteAddress {
                dev, addr, prefix, ..
            } => {
                o.addrs.get_mut(dev).unwrap().remove(&(*addr, *prefix));
            }
            Step::DeleteLink { ns, name } => {
                if *ns == Ns::Node {
                    o.node_tmp_vxlan = false;
                } else {
                    o.links.remove(name);
                    if *name == d.spec().vxlan {
                        o.fdb.clear();
                        o.neigh.clear();
                    }
                }
            }
            Step::ReplaceFdb { mac, vtep, .. } => {
                o.fdb.retain(|(m, _)| m != mac);
                o.fdb.insert((*mac, *vtep));
            }
            Step::DeleteFdb { mac, vtep, .. } => {
                o.fdb.remove(&(*mac, *vtep));
            }
            Step::ReplaceNeigh { ip, mac, .. } => {
                o.neigh.insert(*ip, *mac);
            }
            Step::DeleteNeigh { ip, .. } => {
                o.neigh.remove(ip);
            }
        }
    }
    o
}

const FRESH: &str = "\
[root] ip netns add 1-ingress-n1; ip -n 1-ingress-n1 link set lo up
[1-ingress-n1] ip link add br0 type bridge
[1-ingress-n1] ip link set br0 mtu 1450 up
[1-ingress-n1] ip addr replace 10.255.0.1/16 dev br0 proto 0x56
[node] ip link add vx-001000-ingr mtu 1450 type vxlan id 4096 dstport 4789 nolearning proxy l2miss l3miss
[node] ip link set vx-001000-ingr netns 1-ingress-n1 name vxlan0
[1-ingress-n1] ip link set vxlan0 mtu 1450 master br0 up
[1-ingress-n1] ip link add vm-0aff0005 type veth peer name eth0 netns vote.1
[1-ingress-n1] ip link set vm-0aff0005 mtu 1450 master br0 up
[vote.1] ip link set eth0 address 02:42:0a:ff:00:05 mtu 1450 up
[vote.1] ip addr replace 10.255.0.5/16 dev eth0 proto 0x56
[1-ingress-n1] bridge fdb replace 02:42:0a:ff:00:03 dev vxlan0 dst 192.168.50.12 self permanent
[1-ingress-n1] ip neigh replace 10.255.0.3 lladdr 02:42:0a:ff:00:03 dev vxlan0 nud permanent
[1-ingress-n1] bridge fdb replace 02:42:0a:ff:00:06 dev vxlan0 dst 192.168.50.12 self permanent
[1-ingress-n1] ip neigh replace 10.255.0.6 lladdr 02:42:0a:ff:00:06 dev vxlan0 nud permanent
";

#[test]
fn fresh_node_plan_is_the_cli_recipe() {
    let d = Overlay::new(&spec()).unwrap();
    let p = plan(&d, &Observed::default());
    assert_eq!(p.to_string(), FRESH);
}

#[test]
fn applying_the_plan_converges() {
    let d = Overlay::new(&spec()).unwrap();
    let after = simulate(&Observed::default(), &plan(&d, &Observed::default()), &d);
    let again = plan(&d, &after);
    assert!(again.is_empty(), "{again}");
    assert_eq!(again.to_string(), "");
}

#[test]
fn one_more_remote_endpoint_is_one_fdb_and_one_neigh_step() {
    let d = Overlay::new(&spec()).unwrap();
    let now = simulate(&Observed::default(), &plan(&d, &Observed::default()), &d);
    let mut s = spec();
    s.remote.push(RemoteEndpoint {
        addr: ip("10.255.0.7"),
        mac: None,
        extra_addrs: Vec::new(),
        node: "node2".into(),
    });
    let d2 = Overlay::new(&s).unwrap();
    assert_eq!(
        plan(&d2, &now).to_string(),
        "\
[1-ingress-n1] bridge fdb replace 02:42:0a:ff:00:07 dev vxlan0 dst 192.168.50.12 self permanent
[1-ingress-n1] ip neigh replace 10.255.0.7 lladdr 02:42:0a:ff:00:07 dev vxlan0 nud permanent
"
    );
    // Removing one removes only its entries.
    let after = simulate(&now, &plan(&d2, &now), &d2);
    let mut s3 = spec();
    s3.remote.retain(|r| r.addr != ip("10.255.0.3"));
    let d3 = Overlay::new(&s3).unwrap();
    assert_eq!(
        plan(&d3, &after).to_string(),
        "\
[1-ingress-n1] ip neigh del 10.255.0.3 dev vxlan0
[1-ingress-n1] ip neigh del 10.255.0.7 dev vxlan0
[1-ingress-n1] bridge fdb del 02:42:0a:ff:00:03 dev vxlan0 dst 192.168.50.12 self
[1-ingress-n1] bridge fdb del 02:42:0a:ff:00:07 dev vxlan0 dst 192.168.50.12 self
"
    );
}

#[test]
fn a_dual_stack_endpoint_has_one_mac_one_fdb_entry_and_a_neighbour_per_address() {
    let mut s = spec();
    s.mtu = 1450;
    s.subnets.push(SubnetSpec {
        subnet: "fd00:255::/64".parse().unwrap(),
        gateway: ip("fd00:255::1"),
    });
    s.local[0].extra_addrs.push(ip("fd00:255::5"));
    s.remote[0].extra_addrs.push(ip("fd00:255::6"));
    let d = Overlay::new(&s).unwrap();
    let p = plan(&d, &Observed::default()).to_string();
    assert!(
        p.contains("[vote.1] ip addr replace fd00:255::5/64 dev eth0"),
        "{p}"
    );
    assert!(
        p.contains("ip neigh replace fd00:255::6 lladdr 02:42:0a:ff:00:06 dev vxlan0"),
        "{p}"
    );
    assert_eq!(
        p.matches("bridge fdb replace 02:42:0a:ff:00:06").count(),
        1,
        "{p}"
    );
    let after = simulate(&Observed::default(), &plan(&d, &Observed::default()), &d);
    assert!(plan(&d, &after).is_empty());
    // An extra address outside every subnet, or taken twice, is refused by name.
    let mut bad = s.clone();
    bad.remote[1].extra_addrs.push(ip("fd00:999::1"));
    assert!(
        err(&bad).contains("remote[1].extra_addrs[0]"),
        "{}",
        err(&bad)
    );
    let mut dup = s.clone();
    dup.remote[1].extra_addrs.push(ip("fd00:255::5"));
    assert!(err(&dup).contains("fd00:255::5"), "{}", err(&dup));
}

#[test]
fn an_endpoint_moving_nodes_replaces_its_fdb_entry_only() {
    let d = Overlay::new(&spec()).unwrap();
    let now = simulate(&Observed::default(), &plan(&d, &Observed::default()), &d);
    let mut s = spec();
    s.nodes.insert("node3".into(), ip("192.168.50.13"));
    s.remote[0].node = "node3".into();
    let d2 = Overlay::new(&s).unwrap();
    assert_eq!(
        plan(&d2, &now).to_string(),
        "[1-ingress-n1] bridge fdb replace 02:42:0a:ff:00:06 dev vxlan0 dst 192.168.50.13 self permanent\n"
    );
}

#[test]
fn a_wrong_vxlan_is_recreated_and_its_entries_reprogrammed() {
    let d = Overlay::new(&spec()).unwrap();
    let mut now = simulate(&Observed::default(), &plan(&d, &Observed::default()), &d);
    now.links
        .get_mut("vxlan0")
        .unwrap()
        .vxlan
        .as_mut()
        .unwrap()
        .port = 8472;
    let p = plan(&d, &now).to_string();
    assert!(
        p.starts_with("[1-ingress-n1] ip link del vxlan0\n[node] ip link add vx-001000-ingr"),
        "{p}"
    );
    assert_eq!(p.matches("bridge fdb replace").count(), 2, "{p}");
    let after = simulate(&now, &plan(&d, &now), &d);
    assert!(plan(&d, &after).is_empty());
}

#[test]
fn a_leftover_temporary_vxlan_is_deleted_first() {
    let d = Overlay::new(&spec()).unwrap();
    let o = Observed {
        overlay_netns: true,
        node_tmp_vxlan: true,
        ..Observed::default()
    };
    let p = plan(&d, &o).to_string();
    assert!(
        p.contains("[node] ip link del vx-001000-ingr\n[node] ip link add vx-001000-ingr"),
        "{p}"
    );
}

#[test]
fn teardown_removes_ours_and_keeps_the_namespace_with_a_foreign_link() {
    let d = Overlay::new(&spec()).unwrap();
    let mut now = simulate(&Observed::default(), &plan(&d, &Observed::default()), &d);
    let lo = ObservedLink {
        index: 1,
        kind: None,
        mtu: Some(65536),
        up: true,
        master: None,
        mac: None,
        vxlan: None,
    };
    now.links.insert("lo".into(), lo.clone());
    assert_eq!(
        plan_teardown(&d, &now).to_string(),
        "\
[1-ingress-n1] ip link del vm-0aff0005
[1-ingress-n1] ip link del vxlan0
[1-ingress-n1] ip link del br0
[root] ip netns del 1-ingress-n1
"
    );
    now.links.insert("foreign0".into(), lo);
    let p = plan_teardown(&d, &now).to_string();
    assert!(!p.contains("netns del") && !p.contains("foreign0"), "{p}");
}

#[test]
fn a_gateway_no_longer_desired_is_removed_from_the_bridge() {
    let d = Overlay::new(&spec()).unwrap();
    let mut now = simulate(&Observed::default(), &plan(&d, &Observed::default()), &d);
    let br = now.addrs.get_mut("br0").unwrap();
    br.insert((ip("10.254.0.1"), 16));
    br.insert((ip("fe80::1"), 64));
    assert_eq!(
        plan(&d, &now).to_string(),
        "[1-ingress-n1] ip addr del 10.254.0.1/16 dev br0\n"
    );
}

#[test]
fn a_stale_veth_of_ours_is_deleted() {
    let d = Overlay::new(&spec()).unwrap();
    let mut now = simulate(&Observed::default(), &plan(&d, &Observed::default()), &d);
    let stale = now.links["vm-0aff0005"].clone();
    now.links.insert("vm-0aff0009".into(), stale);
    assert_eq!(
        plan(&d, &now).to_string(),
        "[1-ingress-n1] ip link del vm-0aff0009\n"
    );
}

#[test]
fn macs_are_derived_from_the_ip() {
    assert_eq!(mac_for(ip("10.255.0.6")).to_string(), "02:42:0a:ff:00:06");
    assert_eq!(
        mac_for(ip("fd00::a:b0c:d")).to_string(),
        "02:42:0b:0c:00:0d"
    );
    assert_eq!(veth_name_for(ip("10.255.0.5")), "vm-0aff0005");
    assert_eq!(overlay_mtu_for(1500, false), 1450);
    assert_eq!(overlay_mtu_for(1500, true), 1430);
}

fn err(s: &OverlaySpec) -> String {
    let e = Overlay::new(s).unwrap_err();
    assert!(e.is_validation());
    e.to_string()
}

#[test]
fn validation_names_field_and_value() {
    let mut s = spec();
    s.vni = 0;
    assert!(matches!(
        Overlay::new(&s),
        Err(Error::InvalidVni { value: 0 })
    ));
    s.vni = 1 << 24;
    assert_eq!(err(&s), "vni: 16777216 is outside 1..=16777215");
    s.vni = (1 << 24) - 1;
    assert!(Overlay::new(&s).is_ok());

    let mut s = spec();
    s.mtu = 67;
    assert!(err(&s).starts_with("mtu: 67 is outside 68..=65485"));
    s.mtu = 65486;
    assert!(err(&s).starts_with("mtu: 65486"));
    s.mtu = 1279;
    s.subnets.push(SubnetSpec {
        subnet: "fd00:255::/64".parse().unwrap(),
        gateway: ip("fd00:255::1"),
    });
    assert!(matches!(
        Overlay::new(&s),
        Err(Error::InvalidMtu {
            value: 1279,
            min: 1280,
            ..
        })
    ));
    s.mtu = 1280;
    assert!(Overlay::new(&s).is_ok());

    let mut s = spec();
    s.remote[1].addr = ip("10.255.0.5");
    assert_eq!(
        err(&s),
        "remote[1] (10.255.0.5 on node2): address 10.255.0.5 is already used by local[0] (10.255.0.5 in vote.1)"
    );
    let mut s = spec();
    s.remote[1].mac = Some("02:42:0a:ff:00:06".parse().unwrap());
    assert!(
        matches!(Overlay::new(&s), Err(Error::DuplicateMac { .. })),
        "{}",
        err(&s)
    );
    assert!(err(&s).contains("02:42:0a:ff:00:06"));

    let mut s = spec();
    s.remote[0].node = "node9".into();
    assert_eq!(
        err(&s),
        "remote[0] (10.255.0.6 on node9): node \"node9\" has no underlay address"
    );
    let mut s = spec();
    s.nodes.insert("node3".into(), ip("192.168.50.12"));
    assert_eq!(
        err(&s),
        "nodes \"node2\" and \"node3\" have the same underlay address 192.168.50.12"
    );
    let mut s = spec();
    s.local[0].addr = ip("10.1.0.5");
    assert_eq!(err(&s), "local[0].addr: 10.1.0.5 is in no overlay subnet");
    let mut s = spec();
    s.local[0].ifname = "a-very-long-interface".into();
    assert!(err(&s).starts_with("local[0].ifname: invalid value \"a-very-long-interface\""));
    let mut s = spec();
    s.subnets[0].gateway = ip("10.254.0.1");
    assert_eq!(
        err(&s),
        "subnets[0].gateway: 10.254.0.1 is in no overlay subnet"
    );
    assert!("10.255.0.1/16".parse::<Subnet>().is_err(), "host bits set");
    let mut s = spec();
    s.network_id = "TOO-LONG".into();
    assert!(err(&s).starts_with("network_id: invalid value \"TOO-LONG\""));
}

proptest::proptest! {
    /// plan(x, apply(plan(x, y))) is empty for any set of remote endpoints applied on top of
    /// any other set.
    #[test]
    fn remote_sets_converge(a in proptest::collection::btree_set(2u8..250, 0..20),
                            b in proptest::collection::btree_set(2u8..250, 0..20)) {
        let with = |set: &std::collections::BTreeSet<u8>| {
            let mut s = spec();
            s.remote = set
                .iter()
                .filter(|x| **x != 5)
                .map(|x| RemoteEndpoint {
                    addr: IpAddr::from([10, 255, 1, *x]),
                    mac: None,
                    extra_addrs: Vec::new(),
                    node: if x % 2 == 0 { "node1".into() } else { "node2".into() },
                })
                .collect();
            Overlay::new(&s).unwrap()
        };
        let (da, db) = (with(&a), with(&b));
        let sa = simulate(&Observed::default(), &plan(&da, &Observed::default()), &da);
        let pb = plan(&db, &sa);
        // Only remote-endpoint steps change between the two.
        for st in &pb.steps {
            let ok = matches!(st, Step::ReplaceFdb { .. } | Step::DeleteFdb { .. }
                | Step::ReplaceNeigh { .. } | Step::DeleteNeigh { .. });
            proptest::prop_assert!(ok, "{}", st);
        }
        let sb = simulate(&sa, &pb, &db);
        proptest::prop_assert!(plan(&db, &sb).is_empty());
    }
}

proptest::proptest! {
    /// The string parsers never panic, and what parses round-trips (as the fuzz target checks).
    #[test]
    fn parsers_round_trip(text in "[0-9a-f:./]{0,45}") {
        if let Ok(m) = text.parse::<Mac>() {
            proptest::prop_assert_eq!(m.to_string().parse::<Mac>().ok(), Some(m));
        }
        if let Ok(s) = text.parse::<Subnet>() {
            proptest::prop_assert_eq!(s.to_string().parse::<Subnet>().ok(), Some(s));
            proptest::prop_assert!(s.contains(s.addr()));
        }
    }

    #[test]
    fn subnets_contain_exactly_their_range(a in proptest::prelude::any::<u32>(), p in 0u8..=32, x in proptest::prelude::any::<u32>()) {
        let mask = if p == 0 { 0 } else { u32::MAX << (32 - u32::from(p)) };
        let s = Subnet::new(IpAddr::from(std::net::Ipv4Addr::from(a & mask)), p).unwrap();
        proptest::prop_assert_eq!(s.contains(IpAddr::from(std::net::Ipv4Addr::from(x))), x & mask == a & mask);
        proptest::prop_assert!(Subnet::new(IpAddr::from(std::net::Ipv4Addr::from(a)), p).is_some() == (a & mask == a));
    }
}
