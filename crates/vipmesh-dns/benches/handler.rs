//! Handler throughput: answers per second of the pure handler (parse, lookup, shuffle, encode),
//! for a VIP answer, a 10-task dnsrr answer, a truncated 200-task answer, and NXDOMAIN.

// A benchmark fails loudly on a broken fixture, like a test.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vipmesh_dns::{DnsTable, Transport};

/// A query for `name` (type A, RD, no EDNS) in wire format.
fn query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn table() -> DnsTable {
    let tasks = |n: u32, base: u32| -> Vec<IpAddr> {
        (0..n).map(|i| Ipv4Addr::from(base + i).into()).collect()
    };
    let mut b = DnsTable::builder("mesh.local.").unwrap();
    // A realistic table: 1000 services besides the ones queried.
    for i in 0..1000u32 {
        b = b
            .vip(&format!("svc{i}"), [Ipv4Addr::from(0x0a10_0000 + i)])
            .unwrap();
    }
    b.vip("vote", [Ipv4Addr::new(10, 0, 0, 9)])
        .unwrap()
        .dnsrr("web", tasks(10, 0x0a00_0100))
        .unwrap()
        .dnsrr("big", tasks(200, 0x0a00_1000))
        .unwrap()
        .build()
}

fn bench(c: &mut Criterion) {
    let table = table();
    let mut g = c.benchmark_group("respond");
    g.throughput(Throughput::Elements(1));
    for (id, name) in [
        ("vip", "vote.mesh.local."),
        ("dnsrr_10", "web."),
        ("dnsrr_200_truncated", "big."),
        ("nxdomain", "nope.mesh.local."),
    ] {
        let q = query(name);
        assert!(table.respond(&q, Transport::Udp).is_some());
        g.bench_function(id, |b| {
            b.iter(|| table.respond(black_box(&q), Transport::Udp));
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
