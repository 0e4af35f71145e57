//! A watch batch of service changes on a large cluster: the whole snapshot assembled again
//! (`layout::assemble`, the baseline) against the batch applied service by service to the
//! previous state (`layout::apply_service_changes`), in one run.
//!
//! The snapshot: one network and N services (10 000 by default) of 10 backends each, as the
//! `scale` example writes them; batches of 1 and of 300 changed services (a burst of 1000
//! watch events became about 3 batches there).
//!
//! Run: `cargo bench -p vipmesh-agent --bench layout` (`LAYOUT_SERVICES=N` for another N).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use vipmesh_agent::layout;

#[path = "../tests/scale/mod.rs"]
mod scale;

/// Service `i` as its value's bytes.
fn svc(i: u32, generation: u32) -> Vec<u8> {
    scale::svc(i, generation).into_bytes()
}

fn services() -> u32 {
    std::env::var("LAYOUT_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn bench(c: &mut Criterion) {
    let n = services();
    let mut kvs: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    kvs.insert(
        layout::network_key("demo").into_bytes(),
        scale::net("lb-demo").into_bytes(),
    );
    for i in 0..n {
        kvs.insert(
            layout::service_key("demo", &format!("s{i}")).into_bytes(),
            svc(i, 0),
        );
    }
    let prev = layout::assemble("n1", &kvs);
    assert!(prev.issues.is_empty(), "{:?}", prev.issues);
    let mut g = c.benchmark_group(format!("{n} services x 10 backends"));
    g.sample_size(20);
    for changed in [1u32, 300] {
        let batch: Vec<(Vec<u8>, Vec<u8>)> = (0..changed)
            .map(|k| {
                let i = k * (n / changed).max(1);
                (
                    layout::service_key("demo", &format!("s{i}")).into_bytes(),
                    svc(i, 1),
                )
            })
            .collect();
        let mut after = kvs.clone();
        after.extend(batch.iter().cloned());
        let whole = layout::assemble("n1", &after).state;
        let by_service = layout::apply_service_changes(
            &prev.state,
            batch
                .iter()
                .map(|(k, v)| (k.as_slice(), Some(v.as_slice()))),
        )
        .expect("a batch of services");
        assert_eq!(by_service, whole, "both ways give one state");
        g.bench_function(format!("{changed} changed: whole assembly"), |b| {
            b.iter(|| layout::assemble("n1", &after))
        });
        g.bench_function(format!("{changed} changed: service by service"), |b| {
            b.iter_batched(
                || &prev.state,
                |p| {
                    layout::apply_service_changes(
                        p,
                        batch
                            .iter()
                            .map(|(k, v)| (k.as_slice(), Some(v.as_slice()))),
                    )
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
