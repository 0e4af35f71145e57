//! Maglev table build and diff times.
//!
//! Goal (issue 7): building the default table (M = 65537) for N = 1000 backends takes ≤ 5 ms.
//! Run with `cargo bench -p vipmesh-maglev --bench maglev`.
//!
//! The `*_cpu` groups measure the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`)
//! instead of wall time, so that figures taken on a busy, shared machine stay meaningful.

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use vipmesh_maglev::{Backend, BackendId, BackendKey, MaglevTable, TableSize, Weight};

/// How the benchmark's backends are weighted.
#[derive(Debug, Clone, Copy)]
enum Weights {
    /// All 1: the paper's round robin.
    Equal,
    /// 1, 2, 3, 4, 1, 2, …: four weight groups.
    Cycling,
    /// 1, 2, …, n: every backend its own group (the scheduler's worst case).
    Distinct,
}

/// `n` backends 10.x.y.z:8080 with ids 0..n.
fn backends(n: u32, weights: Weights) -> Vec<Backend> {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::from(0x0a00_0000 + i + 1);
            let w = match weights {
                Weights::Equal => 1,
                Weights::Cycling => i % 4 + 1,
                Weights::Distinct => i + 1,
            };
            Backend::new(
                BackendId::new(i),
                BackendKey::from_socket_addr(SocketAddr::from((ip, 8080))),
                Weight::new(w),
            )
        })
        .collect()
}

mod sys {
    /// The calling thread's CPU time in nanoseconds ([clock_gettime(2)]).
    ///
    /// [clock_gettime(2)]: https://man7.org/linux/man-pages/man2/clock_gettime.2.html
    pub fn thread_cpu_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        if rc != 0 {
            return 0;
        }
        (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
    }
}

/// Criterion measurement: CPU time of the benchmark thread.
struct ThreadCpuTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        sys::thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        sys::thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

/// Formats nanoseconds of CPU time.
struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical < 1e3 {
            (1.0, "ns cpu")
        } else if typical < 1e6 {
            (1e-3, "µs cpu")
        } else {
            (1e-6, "ms cpu")
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }
    fn scale_throughputs(&self, typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let per = match *t {
            Throughput::Elements(n) | Throughput::ElementsAndBytes { elements: n, .. } => n,
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) => n,
            Throughput::Bits(n) => n,
        } as f64;
        // elements per CPU second
        values.iter_mut().for_each(|v| *v = per * 1e9 / *v);
        let _ = typical;
        "elem/cpu-s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn build_cpu(c: &mut Criterion<ThreadCpuTime>) {
    let mut group = c.benchmark_group("build_m65537_cpu");
    for n in [10u32, 100, 1000] {
        for weights in [Weights::Equal, Weights::Cycling, Weights::Distinct] {
            let input = backends(n, weights);
            let name = format!("{weights:?}").to_lowercase();
            group.bench_with_input(BenchmarkId::new(&name, n), &input, |b, input| {
                b.iter(|| MaglevTable::build(TableSize::DEFAULT, black_box(input)))
            });
        }
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build_m65537");
    group.throughput(Throughput::Elements(u64::from(TableSize::DEFAULT.get())));
    for n in [10u32, 100, 1000] {
        for weights in [Weights::Equal, Weights::Cycling, Weights::Distinct] {
            let input = backends(n, weights);
            let name = format!("{weights:?}").to_lowercase();
            group.bench_with_input(BenchmarkId::new(&name, n), &input, |b, input| {
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
    let input = backends(1000, Weights::Equal);
    group.bench_function(BenchmarkId::new("equal", format!("n1000_m{size}")), |b| {
        b.iter(|| MaglevTable::build(size, black_box(&input)))
    });
    group.finish();
}

fn diff(c: &mut Criterion) {
    let all = backends(1000, Weights::Equal);
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
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = build_cpu
}
criterion_main!(benches, cpu);
