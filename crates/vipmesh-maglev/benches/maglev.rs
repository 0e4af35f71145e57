//! Maglev table build and diff times.
//!
//! Goal (issue 7): building the default table (M = 65537) for N = 1000 backends takes ≤ 5 ms.
//! Run with `cargo bench -p vipmesh-maglev`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use vipmesh_maglev::{Backend, BackendId, BackendKey, MaglevTable, TableSize, Weight};

/// `n` backends 10.x.y.z:8080 with ids 0..n; weight 1, or 1..=4 cycling when `weighted`.
fn backends(n: u32, weighted: bool) -> Vec<Backend> {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::from(0x0a00_0000 + i + 1);
            let w = if weighted { i % 4 + 1 } else { 1 };
            Backend::new(
                BackendId::new(i),
                BackendKey::from_socket_addr(SocketAddr::from((ip, 8080))),
                Weight::new(w),
            )
        })
        .collect()
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build_m65537");
    group.throughput(Throughput::Elements(u64::from(TableSize::DEFAULT.get())));
    for n in [10u32, 100, 1000] {
        for weighted in [false, true] {
            let input = backends(n, weighted);
            let name = if weighted { "weighted" } else { "equal" };
            group.bench_with_input(BenchmarkId::new(name, n), &input, |b, input| {
                b.iter(|| MaglevTable::build(TableSize::DEFAULT, black_box(input)))
            });
        }
    }
    group.finish();
}

fn build_large(c: &mut Criterion) {
    let mut group = c.benchmark_group("build_balanced");
    group.sample_size(20);
    // N = 1000 at the size that keeps the 1 % balance guarantee (100 003 slots).
    let size = TableSize::balanced_for(1000).unwrap_or(TableSize::DEFAULT);
    let input = backends(1000, false);
    group.bench_function(BenchmarkId::new("equal", format!("n1000_m{size}")), |b| {
        b.iter(|| MaglevTable::build(size, black_box(&input)))
    });
    group.finish();
}

fn diff(c: &mut Criterion) {
    let all = backends(1000, false);
    let (Ok(old), Ok(new)) = (
        MaglevTable::build(TableSize::DEFAULT, &all),
        MaglevTable::build(TableSize::DEFAULT, &all[1..]),
    ) else {
        return;
    };
    c.bench_function("diff_m65537_n1000_remove1", |b| {
        b.iter(|| black_box(&old).diff(black_box(&new)))
    });
    c.bench_function("digest_m65537_n1000", |b| {
        b.iter(|| black_box(&old).digest())
    });
}

criterion_group!(benches, build, build_large, diff);
criterion_main!(benches);
