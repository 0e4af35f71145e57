//! Behaviour of the dataplane over [`FakeMaps`].

use super::*;
use crate::{
    Backend, Egress, ForwardMode, MacAddr, Proto, Stats, addr_to_abi,
    maps::{MapLayer, TaskPortMap},
    testing::FakeMaps,
};
use vipmesh_maglev::TableSize;

fn be(addr: &str, ifindex: u32) -> Backend {
    Backend {
        addr: addr.parse().unwrap(),
        port: 80,
        weight: 1,
        egress: Egress {
            ifindex,
            src_mac: MacAddr::default(),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        },
    }
}

fn spec(port: u16, backends: Vec<Backend>) -> ServiceSpec {
    ServiceSpec {
        key: ServiceKey {
            addr: "10.0.0.1".parse().unwrap(),
            port,
            proto: Proto::Tcp,
        },
        mode: ForwardMode::Nat,
        backends,
        table_size: TableSize::new(251).unwrap(),
    }
}

fn dp() -> Dataplane<FakeMaps> {
    Dataplane::new(FakeMaps::default(), Config::default()).unwrap()
}

#[test]
fn ids_are_stable_and_retired_backends_invalidated() {
    let mut d = dp();
    let r1 = d
        .upsert_service(&spec(80, vec![be("10.1.0.2", 3), be("10.1.0.3", 4)]))
        .unwrap();
    assert_eq!(r1.id, 0);
    assert_eq!(r1.slots.values().sum::<u32>(), 251);
    let id2 = r1.backends[&("10.1.0.2".parse().unwrap(), 80)];
    let id3 = r1.backends[&("10.1.0.3".parse().unwrap(), 80)];
    assert_eq!(d.maps().tx_ports.len(), 2);
    // Replace .3 by .4: .2 keeps its id, .3 is invalidated, .4 gets a fresh id.
    let r2 = d
        .upsert_service(&spec(80, vec![be("10.1.0.2", 3), be("10.1.0.4", 4)]))
        .unwrap();
    assert_eq!(r2.id, 0);
    assert_eq!(r2.backends[&("10.1.0.2".parse().unwrap(), 80)], id2);
    assert_eq!(r2.removed, vec![id3]);
    assert_eq!(d.maps().backends[&id3].flags, 0);
    assert_eq!(d.maps().swaps[&0], 2, "one whole-table swap per update");
    assert!(!d.maps().tables[&0].contains(&id3));
    assert_eq!(d.maps().tx_ports.len(), 2, "egress slots reused");
    // A second service gets the next id; removal is idempotent.
    let r3 = d
        .upsert_service(&spec(81, vec![be("10.1.0.9", 3)]))
        .unwrap();
    assert_eq!(r3.id, 1);
    d.remove_service(&spec(81, vec![]).key).unwrap();
    d.remove_service(&spec(81, vec![]).key).unwrap();
    assert!(d.maps().tables[&1].is_empty());
    assert_eq!(d.services().count(), 1);
}

#[test]
fn filter_bitmaps_track_the_ports_and_addresses_in_use() {
    let mut d = dp();
    // Whether both filter bits of a key are set.
    let set = |d: &Dataplane<FakeMaps>, k: &ServiceKey| {
        abi::filter_bits(&k.to_abi())
            .iter()
            .all(|&(w, bit)| d.maps().filter_words.get(&w).copied().unwrap_or(0) & bit != 0)
    };
    let a80 = spec(80, vec![be("10.1.0.2", 3)]);
    let a81 = spec(81, vec![be("10.1.0.2", 3)]);
    let mut b80 = spec(80, vec![be("10.1.0.3", 3)]);
    b80.key.addr = "10.0.0.2".parse().unwrap();
    for s in [&a80, &a81, &b80] {
        d.upsert_service(s).unwrap();
    }
    assert!([&a80, &a81, &b80].iter().all(|s| set(&d, &s.key)));
    let [(pw, pbit), (aw, abit)] = abi::filter_bits(&a80.key.to_abi());
    assert_eq!((pw, pbit), (80 >> 5, 1 << (80 & 31)));
    assert!((abi::FILTER_ADDR_BASE..abi::FILTER_WORDS).contains(&aw) && abit != 0);
    // Bits stay while another service uses them and go with the last one.
    d.remove_service(&a80.key).unwrap();
    assert!(
        set(&d, &a80.key),
        "port 80 (b80) and 10.0.0.1 (a81) are still in use"
    );
    d.remove_service(&a81.key).unwrap();
    assert!(!set(&d, &a80.key) && !set(&d, &a81.key));
    assert!(d.maps().select(&b80.key.to_abi(), 7).is_some());
    d.remove_service(&b80.key).unwrap();
    assert!(d.maps().filter_words.values().all(|&w| w == 0));
    // v6 keys use the address half too; a restart rebuilds both halves from the services.
    let mut v6 = spec(65535, vec![be("10.1.0.2", 3)]);
    v6.key.addr = "fd00::1".parse().unwrap();
    v6.backends[0].addr = "fd01::2".parse().unwrap();
    d.upsert_service(&v6).unwrap();
    let mut maps = d.maps().clone();
    maps.filter_words.clear();
    let mut d2 = Dataplane::new(maps, Config::default()).unwrap();
    d2.restore().unwrap();
    assert!(set(&d2, &v6.key));
    assert_eq!(d2.maps().filter_words.get(&(65535 >> 5)), Some(&(1 << 31)));
}

#[test]
fn rev_vips_list_the_nat_services_of_each_backend() {
    let mut d = dp();
    let rk = |addr: &str| {
        ServiceKey {
            addr: addr.parse().unwrap(),
            port: 80,
            proto: Proto::Tcp,
        }
        .to_abi()
    };
    // Two NAT services share 10.1.0.2:80; the entry lists both, in service-key order.
    let r81 = d
        .upsert_service(&spec(81, vec![be("10.1.0.2", 3)]))
        .unwrap();
    let r80 = d
        .upsert_service(&spec(80, vec![be("10.1.0.2", 3), be("10.1.0.3", 3)]))
        .unwrap();
    let e = d.maps().rev_vips[&rk("10.1.0.2")];
    assert_eq!(e.n, 2);
    assert_eq!(
        (u16::from_be(e.v[0].vport), u16::from_be(e.v[1].vport)),
        (80, 81)
    );
    let b = |r: &ServiceReport, a: &str| r.backends[&(a.parse().unwrap(), 80)];
    assert_eq!(
        (e.v[0].backend, e.v[1].backend),
        (b(&r80, "10.1.0.2"), b(&r81, "10.1.0.2"))
    );
    assert_eq!(e.v[0].vip, addr_to_abi("10.0.0.1".parse().unwrap()));
    assert_eq!(d.maps().rev_vips[&rk("10.1.0.3")].n, 1);
    // A backend that leaves its last service leaves the map; one that leaves one of two
    // stays for the other.
    d.upsert_service(&spec(80, vec![be("10.1.0.9", 3)]))
        .unwrap();
    assert!(!d.maps().rev_vips.contains_key(&rk("10.1.0.3")));
    assert_eq!(d.maps().rev_vips[&rk("10.1.0.2")].n, 1);
    // Encap services have no reverse path.
    let mut enc = spec(82, vec![be("10.1.0.2", 3)]);
    enc.mode = ForwardMode::Encap;
    let mut d2 = Dataplane::new(
        FakeMaps::default(),
        Config {
            node_v4: Some("192.0.2.1".parse().unwrap()),
            ..Config::default()
        },
    )
    .unwrap();
    d2.upsert_service(&enc).unwrap();
    assert!(d2.maps().rev_vips.is_empty());
    // Switching 81 to encap drops it from the backend's entry; removing 80 empties it.
    let mut s81 = spec(81, vec![be("10.1.0.2", 3)]);
    d.upsert_service(&s81).unwrap();
    assert_eq!(d.maps().rev_vips[&rk("10.1.0.2")].n, 1);
    d.remove_service(&spec(80, vec![]).key).unwrap();
    assert_eq!(d.maps().rev_vips[&rk("10.1.0.2")].n, 1, "81 still uses it");
    s81.mode = ForwardMode::Encap;
    d.set_config(Config {
        node_v4: Some("192.0.2.1".parse().unwrap()),
        ..Config::default()
    })
    .unwrap();
    d.upsert_service(&s81).unwrap();
    assert!(d.maps().rev_vips.is_empty());
}

#[test]
fn a_fifth_nat_service_on_one_backend_is_refused_before_any_write() {
    let mut d = dp();
    for port in 80..84 {
        d.upsert_service(&spec(port, vec![be("10.1.0.2", 3)]))
            .unwrap();
    }
    let before = d.maps().clone();
    let err = d
        .upsert_service(&spec(84, vec![be("10.1.0.2", 3)]))
        .unwrap_err();
    match &err {
        Error::InvalidConfig { field, value, .. } => {
            assert_eq!(*field, "backends");
            assert!(
                value.contains("10.1.0.2:80") && value.contains("10.0.0.1:84"),
                "{value}"
            );
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        format!("{:?}", d.maps()),
        format!("{before:?}"),
        "nothing written"
    );
    assert_eq!(d.services().count(), 4);
}

#[test]
fn service_stats_sum_its_backends_and_keep_retired_ones() {
    let mut d = dp();
    let bkey = |id: u32| id | 0x8000_0000;
    let s = |packets: u64| Stats {
        packets,
        bytes: packets * 100,
        new_flows: 1,
    };
    let ip = |a: &str| (a.parse::<IpAddr>().unwrap(), 80);
    let sp = spec(80, vec![be("10.1.0.2", 3), be("10.1.0.3", 3)]);
    let r = d.upsert_service(&sp).unwrap();
    let (b2, b3) = (r.backends[&ip("10.1.0.2")], r.backends[&ip("10.1.0.3")]);
    // The fast path counts per backend only.
    d.maps_mut().stats.insert(bkey(b2), s(4));
    d.maps_mut().stats.insert(bkey(b3), s(6));
    let total = Stats {
        packets: 10,
        bytes: 1000,
        new_flows: 2,
    };
    assert_eq!(d.service_stats(&sp.key).unwrap(), total);
    // Retiring a backend keeps its counts in the service's totals.
    d.upsert_service(&spec(80, vec![be("10.1.0.2", 3)]))
        .unwrap();
    assert_eq!(d.service_stats(&sp.key).unwrap(), total);
    assert_eq!(d.maps().service_stats(r.id).unwrap(), s(6));
    d.maps_mut().stats.insert(bkey(b2), s(5));
    assert_eq!(d.service_stats(&sp.key).unwrap().packets, 11);
}

#[test]
fn reused_ids_start_with_zeroed_statistics() {
    let mut d = dp();
    let bkey = |id: u32| id | 0x8000_0000;
    let r = d
        .upsert_service(&spec(80, vec![be("10.1.0.2", 3)]))
        .unwrap();
    let bid = r.backends[&("10.1.0.2".parse().unwrap(), 80)];
    let busy = Stats {
        packets: 9,
        bytes: 900,
        new_flows: 3,
    };
    d.maps_mut().stats.insert(r.id, busy);
    d.maps_mut().stats.insert(bkey(bid), busy);
    // Re-applying keeps the counts of what stays.
    d.upsert_service(&spec(80, vec![be("10.1.0.2", 3)]))
        .unwrap();
    assert_eq!(d.maps().service_stats(r.id).unwrap(), busy);
    assert_eq!(d.maps().backend_stats(bid).unwrap(), busy);
    // A new service and backend that take the freed ids do not inherit them.
    d.remove_service(&spec(80, vec![]).key).unwrap();
    let r2 = d
        .upsert_service(&spec(81, vec![be("10.1.0.9", 3)]))
        .unwrap();
    assert_eq!(
        (r2.id, r2.backends[&("10.1.0.9".parse().unwrap(), 80)]),
        (r.id, bid)
    );
    assert_eq!(d.maps().service_stats(r.id).unwrap(), Stats::default());
    assert_eq!(d.maps().backend_stats(bid).unwrap(), Stats::default());
}

#[test]
fn generations_follow_assignments_not_ids() {
    let mut d = dp();
    let ip = |s: &str| (s.parse::<IpAddr>().unwrap(), 80);
    let r1 = d
        .upsert_service(&spec(80, vec![be("10.1.0.2", 3), be("10.1.0.3", 4)]))
        .unwrap();
    let gen_of = |d: &Dataplane<FakeMaps>, id: u32| d.maps().backends[&id].generation;
    let (id2, id3) = (r1.backends[&ip("10.1.0.2")], r1.backends[&ip("10.1.0.3")]);
    let (g2, g3) = (gen_of(&d, id2), gen_of(&d, id3));
    assert!(g2 != 0 && g3 != 0 && g2 != g3);
    // Re-applying keeps every generation: live flows stay valid.
    d.upsert_service(&spec(80, vec![be("10.1.0.2", 3), be("10.1.0.3", 4)]))
        .unwrap();
    assert_eq!((gen_of(&d, id2), gen_of(&d, id3)), (g2, g3));
    // .3 leaves; its id goes to another service's backend with a fresh generation, so
    // flows that remember (id3, g3) cannot follow it.
    d.upsert_service(&spec(80, vec![be("10.1.0.2", 3)]))
        .unwrap();
    let r = d
        .upsert_service(&spec(81, vec![be("10.1.0.9", 3)]))
        .unwrap();
    assert_eq!(r.backends[&ip("10.1.0.9")], id3, "the id is reused");
    let g9 = gen_of(&d, id3);
    assert!(g9 != g3 && g9 != g2);
    // The mode travels with the backend entry (the hit path reads it there).
    assert_eq!(d.maps().backends[&id2].mode, abi::MODE_NAT);
    // After a restart the next generation is above every one in the maps.
    let mut d2 = Dataplane::new(d.maps().clone(), Config::default()).unwrap();
    d2.restore().unwrap();
    let r = d2
        .upsert_service(&spec(82, vec![be("10.1.0.7", 3)]))
        .unwrap();
    let g7 = gen_of(&d2, r.backends[&ip("10.1.0.7")]);
    assert!(g7 > g9 && g7 > g2, "{g7} after {g2}, {g9}");
}

#[test]
fn restore_keeps_ids_whatever_the_order() {
    let mut d = dp();
    let a = spec(80, vec![be("10.1.0.2", 3), be("10.1.0.3", 4)]);
    let b = spec(81, vec![be("10.1.0.9", 3)]);
    let ra = d.upsert_service(&a).unwrap();
    let rb = d.upsert_service(&b).unwrap();
    // A new process over the same (pinned) maps, applying in the other order.
    let mut d2 = Dataplane::new(d.maps().clone(), Config::default()).unwrap();
    assert_eq!(d2.restore().unwrap(), 2);
    let rb2 = d2.upsert_service(&b).unwrap();
    let ra2 = d2.upsert_service(&a).unwrap();
    assert_eq!((ra2.id, rb2.id), (ra.id, rb.id));
    assert_eq!(ra2.backends, ra.backends);
    assert_eq!(rb2.backends, rb.backends);
    assert!(ra2.removed.is_empty());
    // Without restore, the ids would have been handed out again from 0.
    let mut d3 = Dataplane::new(d.maps().clone(), Config::default()).unwrap();
    assert_ne!(d3.upsert_service(&b).unwrap().id, rb.id);
}

#[test]
fn zero_backends_selects_nothing() {
    let mut d = dp();
    let s = spec(80, vec![]);
    d.upsert_service(&s).unwrap();
    for h in [0, 1, 99, u32::MAX] {
        assert_eq!(d.maps().select(&s.key.to_abi(), h), None);
    }
}

#[test]
fn invalid_specs_write_nothing() {
    let mut d = dp();
    let before = format!("{:?}", d.maps());
    let mut v6 = be("fd00::2", 3);
    v6.port = 80;
    let cases = [
        spec(80, vec![v6]),
        spec(80, vec![be("10.1.0.2", 3), be("10.1.0.2", 3)]),
        spec(0, vec![be("10.1.0.2", 3)]),
        spec(80, vec![be("10.1.0.2", 0)]),
        spec(
            80,
            vec![Backend {
                port: 0,
                ..be("10.1.0.2", 3)
            }],
        ),
        ServiceSpec {
            mode: ForwardMode::Encap,
            ..spec(80, vec![be("10.1.0.2", 3)])
        },
        ServiceSpec {
            table_size: TableSize::new(2).unwrap(),
            ..spec(
                80,
                vec![be("10.1.0.2", 3), be("10.1.0.3", 3), be("10.1.0.4", 3)],
            )
        },
    ];
    for c in &cases {
        let e = d.upsert_service(c).unwrap_err();
        assert!(
            matches!(e, Error::InvalidConfig { .. } | Error::Table { .. }),
            "{e}"
        );
        assert_eq!(format!("{:?}", d.maps()), before, "{e}: nothing written");
    }
}

#[test]
fn capacity_errors_are_map_full() {
    let mut d = dp();
    let many: Vec<Backend> = (0..=abi::MAX_TX_PORTS)
        .map(|i| be(&format!("10.2.{}.{}", i / 250, i % 250 + 1), i + 1))
        .collect();
    let mut s = spec(80, many);
    s.table_size = TableSize::new(65537).unwrap();
    assert!(matches!(
        d.upsert_service(&s),
        Err(Error::MapFull {
            map: "tx_ports",
            ..
        })
    ));
    assert!(d.maps().backends.is_empty(), "nothing written");
}

#[test]
fn task_ports_are_written_both_ways_and_removed() {
    let mut d = dp();
    let key = ServiceKey {
        addr: "10.50.100.1".parse().unwrap(),
        port: 8080,
        proto: Proto::Tcp,
    };
    d.set_task_port(key, 80).unwrap();
    assert_eq!(
        d.maps().task_ports[&(TaskPortMap::Ingress, key.to_abi())],
        80
    );
    let tkey = ServiceKey { port: 80, ..key };
    assert_eq!(
        d.maps().task_ports[&(TaskPortMap::Egress, tkey.to_abi())],
        8080
    );
    d.set_task_port(key, 8080).unwrap();
    assert!(
        !d.maps()
            .task_ports
            .contains_key(&(TaskPortMap::Ingress, key.to_abi()))
    );
    // The old target's egress entry goes; the new one stays (it marks VIP:target as a VIP
    // flow whose SYN-ACK MSS is clamped), translating to the same port.
    assert!(
        !d.maps()
            .task_ports
            .contains_key(&(TaskPortMap::Egress, tkey.to_abi()))
    );
    assert_eq!(
        d.maps().task_ports[&(TaskPortMap::Egress, key.to_abi())],
        8080
    );
    // After a restart the target is known again: moving it to 9090 drops the 8080 entry.
    let mut d2 = Dataplane::new(d.maps().clone(), Config::default()).unwrap();
    d2.restore().unwrap();
    d2.set_task_port(key, 9090).unwrap();
    let egress: Vec<u16> = d2
        .maps()
        .task_ports
        .keys()
        .filter(|(m, _)| *m == TaskPortMap::Egress)
        .map(|(_, k)| u16::from_be(k.port))
        .collect();
    assert_eq!(egress, vec![9090]);
}

#[test]
fn per_backend_modes_nat_local_and_encap_remote_survive_a_restore() {
    let mut d = Dataplane::new(
        FakeMaps::default(),
        Config {
            node_v4: Some("192.0.2.1".parse().unwrap()),
            ..Config::default()
        },
    )
    .unwrap();
    let s = spec(8080, vec![be("10.1.0.2", 3), be("10.2.0.2", 1)]);
    let remote: std::net::IpAddr = "10.2.0.2".parse().unwrap();
    let modes = BTreeMap::from([((remote, 80), ForwardMode::Encap)]);
    let r = d.upsert_service_modes(&s, &modes).unwrap();
    let local_id = r.backends[&("10.1.0.2".parse().unwrap(), 80)];
    let remote_id = r.backends[&(remote, 80)];
    assert_eq!(d.maps().backends[&local_id].mode, abi::MODE_NAT);
    assert_eq!(d.maps().backends[&remote_id].mode, abi::MODE_ENCAP);
    assert_eq!(u16::from_be(d.maps().backends[&remote_id].port), 80);
    // Only the NAT backend has a reverse-path entry.
    let rk = |a: &str| {
        ServiceKey {
            addr: a.parse().unwrap(),
            port: 80,
            proto: Proto::Tcp,
        }
        .to_abi()
    };
    assert!(d.maps().rev_vips.contains_key(&rk("10.1.0.2")));
    assert!(!d.maps().rev_vips.contains_key(&rk("10.2.0.2")));
    // A restarted process reads the modes and the ports back: same ids, same modes.
    let mut d2 = Dataplane::new(d.maps().clone(), d.config).unwrap();
    d2.restore().unwrap();
    assert_eq!(d2.backend_modes(&s.key), d.backend_modes(&s.key));
    let r2 = d2.upsert_service_modes(&s, &modes).unwrap();
    assert_eq!(r2.backends, r.backends);
    assert!(r2.removed.is_empty());
    // Encap without the node's address is refused, naming the field.
    let mut d3 = dp();
    assert!(matches!(
        d3.upsert_service_modes(&s, &modes),
        Err(Error::InvalidConfig {
            field: "config.node_v4/node_v6",
            ..
        })
    ));
}
