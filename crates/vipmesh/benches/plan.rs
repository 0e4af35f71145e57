//! `plan` over 10k services x 10 backends: a full plan from an empty namespace, the plan when
//! one backend changed (full diff against the observation), and the per-service plan an
//! incremental sync makes (`plan_services`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use vipmesh::model::*;
use vipmesh::plan::{DrainBook, KernelVersion, NodeObserved, NsObserved, plan, plan_services};

fn state(n: usize, tweak: bool) -> NodeState {
    let net = Network::new(
        "bench",
        "10.0.0.0/8".parse().unwrap(),
        "lb",
        "eth0",
        "10.0.0.2".parse().unwrap(),
    )
    .unwrap();
    let services = (0..n)
        .map(|i| {
            let vip = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
            let backends: Vec<IpAddr> = (0..10)
                .map(|j| IpAddr::from([10, 2 + j as u8, (i >> 8) as u8, i as u8]))
                .collect();
            let mut s = Service::vip(&format!("svc{i}"), vip, &backends).unwrap();
            if tweak && i == n / 2 {
                s.backends[3].weight = Weight::new(7).unwrap();
            }
            s
        })
        .collect();
    NodeState::single(NetworkState::new(net, services).unwrap()).unwrap()
}

fn empty() -> NodeObserved {
    let mut o = NodeObserved::default();
    o.namespaces.insert(
        "lb".into(),
        NsObserved::empty(KernelVersion { major: 6, minor: 1 }),
    );
    o
}

/// The kernel as it is after applying `d` (what observe would return).
fn applied(d: &NodeState) -> NodeObserved {
    let p = plan(d, &empty(), &DrainBook::default(), 0).unwrap();
    let mut obs = empty();
    let ns = obs.namespaces.get_mut("lb").unwrap();
    let np = &p.namespaces["lb"];
    for s in np.ipvs.iter().chain(&np.ipvs_removals) {
        vipmesh::apply::advance_ipvs(ns, s);
    }
    for r in &np.rules {
        vipmesh::apply::advance_rules(ns, r);
    }
    for a in &np.addresses {
        if let vipmesh::plan::AddrChange::Add {
            interface, addr, ..
        } = a
        {
            ns.addresses.insert(
                *addr,
                vipmesh::plan::ObservedAddr {
                    interface: interface.clone(),
                    prefix: 32,
                    owned: true,
                },
            );
        }
    }
    for s in &np.sysctls {
        ns.sysctls.insert(s.key.clone(), s.value.clone());
    }
    obs
}

fn bench(c: &mut Criterion) {
    let d = state(10_000, false);
    let d2 = state(10_000, true);
    let obs = applied(&d);
    let drains = DrainBook::default();
    assert!(plan(&d, &obs, &drains, 0).unwrap().is_empty());
    let mut g = c.benchmark_group("plan_10k_services_x_10");
    g.sample_size(10);
    g.bench_function("full_from_empty", |b| {
        b.iter(|| plan(black_box(&d), &empty(), &drains, 0).unwrap())
    });
    g.bench_function("one_changed_backend_full_diff", |b| {
        b.iter(|| {
            let p = plan(black_box(&d2), &obs, &drains, 0).unwrap();
            assert_eq!(p.len(), 1);
            p
        })
    });
    let marks = plan(&d2, &obs, &drains, 0).unwrap().marks;
    let set: BTreeSet<(NetworkId, ServiceName)> = [(
        NetworkId::new("bench").unwrap(),
        ServiceName::new("svc5000").unwrap(),
    )]
    .into();
    g.bench_function("one_changed_backend_incremental", |b| {
        b.iter(|| {
            let p = plan_services(black_box(&d2), &obs, &marks, &set, &drains, 0);
            assert_eq!(p.len(), 1);
            p
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
