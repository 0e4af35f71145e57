//! The pure derivation and planner, without a kernel.

use std::net::IpAddr;

use vipmesh_xdp::{ForwardMode, MacAddr, Program, Proto, ServiceKey};

use super::*;
use crate::error::Error;
use crate::ingress::Ingress;

fn ingress(node: &str) -> Ingress {
    let json = format!(
        r#"{{
        "node": "{node}",
        "nodes": [
            {{"name": "n1", "underlay": "192.0.2.1", "sandbox_addr": "10.255.0.2"}},
            {{"name": "n2", "underlay": "192.0.2.2", "sandbox_addr": "10.255.0.3"}}
        ],
        "subnet": "10.255.0.0/16",
        "gateway": "10.255.0.1",
        "vni": 4096,
        "host_netns": "{node}",
        "services": [{{
            "name": "vote",
            "ports": [
                {{"protocol": "tcp", "published": 8080, "target": 80}},
                {{"protocol": "udp", "published": 5353, "target": 53}}
            ],
            "tasks": [
                {{"addr": "10.255.1.2", "node": "n1", "netns": "t1"}},
                {{"addr": "10.255.2.2", "node": "n2", "netns": "t2"}},
                {{"addr": "10.255.1.3", "node": "n1", "netns": "t3"}}
            ]
        }}]
    }}"#
    );
    serde_json::from_str(&json).unwrap()
}

fn cfg() -> XdpMeshConfig {
    let mut c = XdpMeshConfig::new("up0");
    for t in ["t1", "t2", "t3"] {
        c.host_veths.insert(t.into(), format!("h-{t}"));
    }
    c.pin_root = Some("/sys/fs/bpf/test".into());
    c
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn key(addr: &str, port: u16, proto: Proto) -> ServiceKey {
    ServiceKey {
        addr: ip(addr),
        port,
        proto,
    }
}

/// What the kernel of node `n` would show: every interface present, the neighbour known.
fn observed(d: &XdpDesired) -> XdpObserved {
    let mut o = XdpObserved::default();
    let mut idx = 10;
    let mut add = |o: &mut XdpObserved, ns: &str, name: &str| {
        idx += 1;
        o.links.insert(
            (ns.into(), name.into()),
            LinkFacts {
                ifindex: idx,
                mac: MacAddr([2, 0, 0, 0, 0, u8::try_from(idx).unwrap()]),
            },
        );
    };
    add(&mut o, &d.host_netns, &d.uplink);
    for (ns, t) in &d.tasks {
        add(&mut o, &d.host_netns, &t.host_veth);
        add(&mut o, ns, &t.interface);
    }
    // A fresh namespace's values, before our writes.
    for (ns, t) in &d.tasks {
        for k in d.task_sysctls.keys() {
            o.sysctls.insert((ns.clone(), k.clone()), "0".into());
        }
        let rp = format!("net.ipv4.conf.{}.rp_filter", t.host_veth);
        o.sysctls.insert((d.host_netns.clone(), rp), "0".into());
    }
    o.neighbours
        .insert(ip("192.0.2.1"), MacAddr([2, 1, 1, 1, 1, 1]));
    o.neighbours
        .insert(ip("192.0.2.2"), MacAddr([2, 2, 2, 2, 2, 2]));
    o
}

/// The observation after applying `p` (what the kernel would then hold).
fn after(d: &XdpDesired, mut o: XdpObserved, p: &XdpPlan) -> XdpObserved {
    for s in &p.steps {
        match s {
            XdpStep::Load { .. } => o.loaded = true,
            XdpStep::SetSysctl { netns, key, value } => {
                let at = (netns.clone(), key.clone());
                if let Some(previous) = o.sysctls.get(&at)
                    && previous != value
                    && !o.saved_sysctls.contains_key(&at)
                {
                    let saved = SavedSysctl {
                        netns: netns.clone(),
                        key: key.clone(),
                        previous: previous.clone(),
                        ours: value.clone(),
                    };
                    o.saved_sysctls.insert(at.clone(), saved);
                }
                o.sysctls.insert(at, value.clone());
            }
            XdpStep::RestoreSysctl { saved } => {
                let at = (saved.netns.clone(), saved.key.clone());
                if o.sysctls.get(&at) == Some(&saved.ours) {
                    o.sysctls.insert(at.clone(), saved.previous.clone());
                }
                o.saved_sysctls.remove(&at);
            }
            XdpStep::UpsertService { spec, modes } => {
                o.services.insert(spec.key, (spec.clone(), modes.clone()));
            }
            XdpStep::RemoveService { key } => {
                o.services.remove(key);
            }
            XdpStep::SetTaskPort { vip, target } => {
                o.task_ports.insert(*vip, *target);
            }
            XdpStep::RemoveTaskPort { vip } => {
                o.task_ports.remove(vip);
            }
            XdpStep::AddTaskAddr { netns, addr } => {
                o.task_addrs.entry(netns.clone()).or_default().insert(*addr);
            }
            XdpStep::RemoveTaskAddr { netns, addr } => {
                if let Some(s) = o.task_addrs.get_mut(netns) {
                    s.remove(addr);
                    if s.is_empty() {
                        o.task_addrs.remove(netns);
                    }
                }
            }
            XdpStep::Attach { at, .. } => {
                o.attached.insert(at.clone());
                o.pinned.remove(at);
            }
            XdpStep::Detach { at } => {
                o.attached.remove(at);
            }
            XdpStep::Unpin { path } => {
                o.stale_pins.remove(path);
            }
        }
    }
    let _ = d;
    o
}

#[test]
fn every_node_lists_every_task_in_the_same_order_local_nat_remote_encap() {
    let d1 = derive(&ingress("n1"), &cfg()).unwrap();
    let d2 = derive(&ingress("n2"), &cfg()).unwrap();
    let k1 = key("192.0.2.1", 8080, Proto::Tcp);
    let k2 = key("192.0.2.2", 8080, Proto::Tcp);
    let s1 = &d1.services[&k1];
    let s2 = &d2.services[&k2];
    let addrs = |s: &DesiredService| {
        s.backends
            .iter()
            .map(|b| (b.addr, b.port))
            .collect::<Vec<_>>()
    };
    assert_eq!(addrs(s1), addrs(s2), "canonical order on both nodes");
    assert_eq!(
        addrs(s1),
        vec![
            (ip("10.255.1.2"), 80),
            (ip("10.255.1.3"), 80),
            (ip("10.255.2.2"), 80)
        ]
    );
    let modes = |s: &DesiredService| s.backends.iter().map(|b| b.mode).collect::<Vec<_>>();
    assert_eq!(
        modes(s1),
        [ForwardMode::Nat, ForwardMode::Nat, ForwardMode::Encap]
    );
    assert_eq!(
        modes(s2),
        [ForwardMode::Encap, ForwardMode::Encap, ForwardMode::Nat]
    );
    // The task side: the other node's address on lo and its port translation.
    let t1 = &d1.tasks["t1"];
    assert_eq!(
        t1.lo_addrs.iter().copied().collect::<Vec<_>>(),
        [ip("192.0.2.2")]
    );
    assert_eq!(t1.ports[&key("192.0.2.2", 8080, Proto::Tcp)], 80);
    assert_eq!(t1.ports[&key("192.0.2.2", 5353, Proto::Udp)], 53);
    assert_eq!(d1.config.node_v4, Some("192.0.2.1".parse().unwrap()));
    assert!(!d2.tasks.contains_key("t1"));
}

#[test]
fn plan_is_ordered_applying_it_twice_plans_nothing() {
    let d = derive(&ingress("n1"), &cfg()).unwrap();
    let o = observed(&d);
    let p = plan(&d, &o).unwrap();
    let text = p.to_string();
    assert!(text.starts_with("xdp: load xdp programs"), "{text}");
    // The uplink is attached last, after every task side.
    let last = p
        .steps
        .iter()
        .rposition(|s| matches!(s, XdpStep::Attach { .. }))
        .unwrap();
    assert!(matches!(&p.steps[last], XdpStep::Attach { at, .. } if at.program == Program::XdpLb));
    assert!(
        text.contains("10.255.2.2:80 encap ifindex 11 -> 02:02:02:02:02:02"),
        "{text}"
    );
    assert!(text.contains("10.255.1.2:80 nat"), "{text}");
    assert!(text.contains("add 192.0.2.2 on lo in t1"), "{text}");
    assert!(
        text.contains("sysctl net.ipv4.conf.all.arp_ignore=1 in t1"),
        "{text}"
    );
    let o2 = after(&d, o, &p);
    let p2 = plan(&d, &o2).unwrap();
    assert!(p2.is_empty(), "{p2}");
    assert_eq!(p2.to_string(), "");
}

#[test]
fn restart_adopts_pinned_links_and_a_gone_task_is_cleaned_up() {
    let d = derive(&ingress("n1"), &cfg()).unwrap();
    let o = observed(&d);
    let done = after(&d, o.clone(), &plan(&d, &o).unwrap());
    // A new process: maps restored on load, links pinned but not held.
    let mut restarted = done.clone();
    restarted.loaded = false;
    restarted.pinned = std::mem::take(&mut restarted.attached);
    let p = plan(&d, &restarted).unwrap();
    assert!(matches!(p.steps[0], XdpStep::Load { .. }));
    assert!(
        p.steps.iter().all(|s| match s {
            XdpStep::Attach { adopt, .. } => *adopt,
            XdpStep::Load { .. } => true,
            _ => false,
        }),
        "{p}"
    );
    // Task t3 goes: its service backend, lo addresses and attachments go with it.
    let mut ing = ingress("n1");
    ing.services[0]
        .tasks
        .retain(|t| t.netns.as_deref() != Some("t3"));
    let d3 = derive(&ing, &cfg()).unwrap();
    let p3 = plan(&d3, &done).unwrap();
    let text = p3.to_string();
    assert!(
        text.contains("upsert tcp/192.0.2.1:8080 (2 backends)"),
        "{text}"
    );
    assert!(text.contains("detach tc_decap on eth0 in t3"), "{text}");
    assert!(text.contains("remove 192.0.2.2 from lo in t3"), "{text}");
    assert!(
        !text.contains("remove task port"),
        "t1 still needs them: {text}"
    );
    // The values our writes replaced in t3 (and on its host veth) are put back, once.
    for want in [
        "restore sysctl net.ipv4.conf.all.arp_ignore=0 in t3 (if still 1)",
        "restore sysctl net.ipv4.conf.all.arp_announce=0 in t3 (if still 2)",
        "restore sysctl net.ipv4.conf.h-t3.rp_filter=0 in n1 (if still 2)",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    assert!(!text.contains("in t1 (if still"), "t1 stays: {text}");
    let gone = after(&d3, done, &p3);
    assert_eq!(
        gone.sysctls
            .get(&("t3".into(), "net.ipv4.conf.all.arp_ignore".into())),
        Some(&"0".to_string())
    );
    let again = plan(&d3, &gone).unwrap();
    assert!(again.is_empty(), "{again}");
}

#[test]
fn bad_input_is_typed_and_names_the_field() {
    let field = |r: Result<XdpDesired, Error>| match r {
        Err(Error::Invalid { field, value, .. }) => (field, value),
        other => panic!("{other:?}"),
    };
    // MTU leaving no room for IPIP.
    let mut c = cfg();
    c.underlay_mtu = 1299;
    assert_eq!(
        field(derive(&ingress("n1"), &c)),
        ("xdp.underlay_mtu", "1299".into())
    );
    // A remote node without a usable underlay address.
    let mut ing = ingress("n1");
    ing.nodes[1].underlay = ip("0.0.0.0");
    assert_eq!(field(derive(&ing, &cfg())).0, "nodes.underlay");
    // A local task without a node-side veth.
    let mut c = cfg();
    c.host_veths.remove("t3");
    assert_eq!(
        field(derive(&ingress("n1"), &c)),
        ("xdp.host_veths", "t3".into())
    );
    // Five published ports NAT-ing to one task address:port (rev_vips holds 4).
    let mut ing = ingress("n1");
    let p = ing.services[0].ports[0];
    ing.services[0].ports = (0..5)
        .map(|i| crate::ingress::PublishedPort {
            published: crate::model::Port::new(9000 + i).unwrap(),
            ..p
        })
        .collect();
    assert_eq!(field(derive(&ing, &cfg())).0, "services.ports");
    // SCTP.
    let mut ing = ingress("n1");
    ing.services[0].ports[0].protocol = crate::model::Protocol::Sctp;
    assert_eq!(field(derive(&ing, &cfg())).0, "services.ports.protocol");
    // A task namespace without its veth, at plan time (before any write).
    let d = derive(&ingress("n1"), &cfg()).unwrap();
    let mut o = observed(&d);
    o.links.remove(&("t3".to_owned(), "eth0".to_owned()));
    assert!(matches!(
        plan(&d, &o),
        Err(Error::MissingTaskInterface { netns, interface }) if netns == "t3" && interface == "eth0"
    ));
    // A remote node whose MAC is unknown.
    let mut o = observed(&d);
    o.neighbours.clear();
    assert!(matches!(
        plan(&d, &o),
        Err(Error::Invalid {
            field: "nodes.underlay",
            ..
        })
    ));
}

#[test]
fn ports_left_to_ipvs_and_host_mode_are_not_programmed() {
    let mut c = cfg();
    c.ports
        .insert((crate::model::Protocol::Udp, 5353), PortDataplane::Ipvs);
    let d = derive(&ingress("n1"), &c).unwrap();
    assert_eq!(
        d.services.keys().copied().collect::<Vec<_>>(),
        [key("192.0.2.1", 8080, Proto::Tcp)]
    );
}

#[test]
fn ipv6_underlays_add_v6_services_and_task_sides() {
    let mut ing = ingress("n1");
    ing.subnet_v6 = Some("fd00:255::/64".parse().unwrap());
    ing.gateway_v6 = Some(ip("fd00:255::1"));
    for (i, n) in ing.nodes.iter_mut().enumerate() {
        n.sandbox_addr_v6 = Some(format!("fd00:255::{}", i + 2).parse().unwrap());
    }
    for (i, t) in ing.services[0].tasks.iter_mut().enumerate() {
        t.addr_v6 = Some(format!("fd00:255::{}", i + 10).parse().unwrap());
    }
    let mut c = cfg();
    c.underlay_v6
        .insert("n1".into(), "fd00:2::1".parse().unwrap());
    c.underlay_v6
        .insert("n2".into(), "fd00:2::2".parse().unwrap());
    let d = derive(&ing, &c).unwrap();
    let k6 = key("fd00:2::1", 8080, Proto::Tcp);
    let s = &d.services[&k6];
    let modes: Vec<_> = s.backends.iter().map(|b| (b.addr, b.mode)).collect();
    assert_eq!(
        modes,
        [
            (ip("fd00:255::10"), ForwardMode::Nat),
            (ip("fd00:255::11"), ForwardMode::Encap),
            (ip("fd00:255::12"), ForwardMode::Nat)
        ]
    );
    assert!(d.services.contains_key(&key("192.0.2.1", 8080, Proto::Tcp)));
    let t1 = &d.tasks["t1"];
    assert!(t1.lo_addrs.contains(&ip("fd00:2::2")) && t1.lo_addrs.contains(&ip("192.0.2.2")));
    assert_eq!(t1.ports[&key("fd00:2::2", 8080, Proto::Tcp)], 80);
    assert_eq!(d.config.node_v6, Some("fd00:2::1".parse().unwrap()));
    assert_eq!(d.host_sysctls["net.ipv6.conf.all.forwarding"], "1");
    // A remote node with v6 tasks but no v6 underlay.
    c.underlay_v6.remove("n2");
    match derive(&ing, &c) {
        Err(Error::Invalid { field, value, .. }) => {
            assert_eq!((field, value.as_str()), ("xdp.underlay_v6", "n2"));
        }
        other => panic!("{other:?}"),
    }
    // An MTU with room for IPIP but not for IPv6-in-IPv6.
    let mut c = cfg();
    c.underlay_v6
        .insert("n1".into(), "fd00:2::1".parse().unwrap());
    c.underlay_mtu = 1310;
    assert!(matches!(
        derive(&ing, &c),
        Err(Error::Invalid {
            field: "xdp.underlay_mtu",
            ..
        })
    ));
}

#[test]
fn the_sysctl_record_round_trips_and_a_corrupt_one_is_an_error_naming_it() {
    use super::apply::{read_record, write_record};
    let dir = std::env::temp_dir().join(format!("vipmesh-record-test-{}", std::process::id()));
    let path = dir.join("sysctls.json");
    assert!(
        read_record(&path, "n1").unwrap().is_empty(),
        "absent is empty"
    );
    let saved = SavedSysctl {
        netns: "t1".into(),
        key: "net.ipv4.conf.all.arp_ignore".into(),
        previous: "0".into(),
        ours: "1".into(),
    };
    let record = std::collections::BTreeMap::from([(
        (saved.netns.clone(), saved.key.clone()),
        saved.clone(),
    )]);
    write_record(&path, &record, "n1").unwrap();
    assert_eq!(read_record(&path, "n1").unwrap(), record);
    std::fs::write(&path, "[{\"netns\": \"t1\"").unwrap();
    let e = read_record(&path, "n1").unwrap_err().to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    write_record(&path, &std::collections::BTreeMap::new(), "n1").unwrap();
    assert!(!path.exists(), "an empty record removes the file");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_state_files_xdp_options_split_the_ports_and_bad_ones_are_refused() {
    use crate::model::{NodeOptions, NodeState};
    let with = |x: serde_json::Value| {
        let mut ing = ingress("n1");
        ing.xdp = Some(serde_json::from_value(x).unwrap());
        ing
    };
    let veths = serde_json::json!({"t1": "h-t1", "t3": "h-t3"});
    // Every port on XDP: no IPVS part at all (no sandbox, overlay or IPVS on this node).
    let all = with(serde_json::json!({"uplink": "up0", "host_veths": veths}));
    assert_eq!(all.ipvs_part(), None);
    let st = NodeState::with_ingress(vec![], Some(all), NodeOptions::default()).unwrap();
    assert!(st.ipvs_ingress().is_none() && st.namespace_names().is_empty());
    assert_eq!(st.xdp().unwrap().services.len(), 2, "tcp/8080 and udp/5353");
    // UDP left to IPVS: the IPVS part keeps it alone, XDP serves TCP only.
    let split = with(serde_json::json!({"uplink": "up0", "host_veths": veths,
        "ports": [{"protocol": "udp", "published": 5353, "dataplane": "ipvs"}]}));
    let part = split.ipvs_part().unwrap();
    assert_eq!(part.services[0].ports.len(), 1);
    assert_eq!(part.services[0].ports[0].published.get(), 5353);
    assert!(part.xdp.is_none());
    let st = NodeState::with_ingress(vec![], Some(split), NodeOptions::default()).unwrap();
    assert_eq!(st.xdp().unwrap().services.len(), 1);
    assert!(st.ipvs_ingress().is_some());
    // Bad options: the field and the value named, before anything is written.
    for (x, field) in [
        (
            serde_json::json!({"uplink": "up0 bad", "host_veths": veths}),
            "ingress.xdp.uplink",
        ),
        (
            serde_json::json!({"uplink": "up0", "host_veths": veths,
                "ports": [{"protocol": "tcp", "published": 9999, "dataplane": "ipvs"}]}),
            "ingress.xdp.ports",
        ),
        (
            serde_json::json!({"uplink": "up0", "host_veths": veths, "underlay_mtu": 1200}),
            "xdp.underlay_mtu",
        ),
        (serde_json::json!({"uplink": "up0"}), "xdp.host_veths"),
    ] {
        match NodeState::with_ingress(vec![], Some(with(x.clone())), NodeOptions::default()) {
            Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field, "{x}"),
            other => panic!("{x}: {other:?}"),
        }
    }
    // Unknown fields are refused, as everywhere in the state file.
    let e = serde_json::from_value::<crate::ingress::IngressXdp>(
        serde_json::json!({"uplink": "up0", "uplnk": "x"}),
    )
    .unwrap_err();
    assert!(e.to_string().contains("uplnk"), "{e}");
}
