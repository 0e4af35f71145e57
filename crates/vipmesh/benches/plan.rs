//! `plan` over 10k services x 10 backends: a full plan from an empty kernel, the plan when one
//! backend changed (full observe-and-diff), and the per-service plan an incremental update
//! makes (`service_steps`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use vipmesh::model::*;
use vipmesh::plan::{DrainBook, Observed, ObservedDest, ObservedService, plan, service_steps};

fn state(n: usize, tweak: bool) -> DesiredState {
    let net = Network {
        name: "bench".into(),
        subnet: "10.0.0.0/8".parse().unwrap(),
        lb_netns: "lb".into(),
        lb_interface: "eth0".into(),
        lb_addr: "10.0.0.2".parse().unwrap(),
    };
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
    DesiredState::new(net, services, Options::default()).unwrap()
}

/// The kernel as it is after applying `d` (what observe would return).
fn applied(d: &DesiredState) -> Observed {
    let p = plan(d, &Observed::default(), &DrainBook::default(), 0).unwrap();
    let mut obs = Observed {
        kernel: (6, 1),
        ..Observed::default()
    };
    for s in &p.steps {
        obs.advance(s, d, &p.marks);
    }
    obs
}

fn bench(c: &mut Criterion) {
    let d = state(10_000, false);
    let d2 = state(10_000, true);
    let obs = applied(&d);
    let drains = DrainBook::default();
    let mut g = c.benchmark_group("plan_10k_services_x_10");
    g.sample_size(10);
    g.bench_function("full_from_empty", |b| {
        b.iter(|| plan(black_box(&d), &Observed::default(), &drains, 0).unwrap())
    });
    g.bench_function("one_changed_backend_full_diff", |b| {
        b.iter(|| {
            let p = plan(black_box(&d2), &obs, &drains, 0).unwrap();
            assert_eq!(p.steps.len(), 1);
            p
        })
    });
    let s = d2.service("svc5000").unwrap();
    let mark = *plan(&d2, &obs, &drains, 0)
        .unwrap()
        .marks
        .get("svc5000")
        .unwrap();
    let os = ObservedService {
        scheduler: "rr".into(),
        persistence: None,
        dests: s
            .backends
            .iter()
            .map(|b| {
                (
                    b.addr,
                    ObservedDest {
                        weight: 1,
                        active: 0,
                        inactive: 0,
                    },
                )
            })
            .collect(),
    };
    g.bench_function("one_changed_backend_incremental", |b| {
        b.iter(|| service_steps(black_box(s), mark, Some(&os), &drains, 0, 30))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
