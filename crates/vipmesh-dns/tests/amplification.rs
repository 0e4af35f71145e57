//! No amplification: over a table of query types, names and EDNS sizes, the largest
//! answer/query size ratio over UDP stays under the bound the size limits imply, and every
//! query that gets no record (errors, other zones, ANY, zone transfers) gets an answer no
//! larger than itself. The measured ratio is reported in the crate README.

// Tests fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use vipmesh_dns::{DnsTable, MAX_UDP_PAYLOAD, MIN_UDP_PAYLOAD, Transport};

const HEADER: usize = 12;
const QTYPE_QCLASS: usize = 4;
const OPT: usize = 11;

/// The smallest query that can name a service: a one-letter single label (3 wire bytes).
const SMALLEST_NAME: usize = 3;

/// The documented bounds (crate docs, README): a UDP answer is at most 512 bytes without EDNS
/// and 1232 with it, and the smallest query that can reach a record is 19 bytes (30 with an
/// OPT record), so no answer is more than 512/19 ≈ 26.9 times its query without EDNS and
/// 1232/30 ≈ 41.1 times with it.
fn bound(edns: bool) -> f64 {
    let (answer, query) = if edns {
        (MAX_UDP_PAYLOAD, HEADER + SMALLEST_NAME + QTYPE_QCLASS + OPT)
    } else {
        (MIN_UDP_PAYLOAD, HEADER + SMALLEST_NAME + QTYPE_QCLASS)
    };
    f64::from(answer) / query as f64
}

fn table() -> DnsTable {
    let v4 = |n: u32| -> Vec<IpAddr> {
        (0..n)
            .map(|i| Ipv4Addr::from(0x0a01_0000 + i).into())
            .collect()
    };
    let v6 = |n: u128| -> Vec<IpAddr> {
        (0..n)
            .map(|i| Ipv6Addr::from(0xfd00_u128 << 112 | i).into())
            .collect()
    };
    let mut both = v4(300);
    both.extend(v6(300));
    DnsTable::builder("mesh.local.")
        .unwrap()
        .vip("vote", [Ipv4Addr::new(10, 0, 0, 9)])
        .unwrap()
        .tasks("vote", v4(50))
        .unwrap()
        .dnsrr("b", both.clone())
        .unwrap()
        .dnsrr("web", v4(3))
        .unwrap()
        .dnsrr("a-much-longer-service-name-for-the-table", both)
        .unwrap()
        .build()
}

/// A query for `name`/`qtype`, with an OPT record advertising `edns` bytes when given.
fn query(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let arcount = u8::from(edns.is_some());
    let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, arcount];
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    if let Some(size) = edns {
        // Root owner, type OPT (41), class = UDP size, TTL 0 (version 0), RDLENGTH 0.
        q.push(0);
        q.extend_from_slice(&41u16.to_be_bytes());
        q.extend_from_slice(&size.to_be_bytes());
        q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    q
}

/// Query types: the two answered, and the ones amplification attacks use.
const TYPES: &[(&str, u16)] = &[
    ("A", 1),
    ("AAAA", 28),
    ("ANY", 255),
    ("TXT", 16),
    ("MX", 15),
    ("NS", 2),
    ("SOA", 6),
    ("SRV", 33),
    ("PTR", 12),
    ("CNAME", 5),
    ("DNSKEY", 48),
    ("RRSIG", 46),
    ("AXFR", 252),
    ("IXFR", 251),
    ("HINFO", 13),
];

const NAMES: &[&str] = &[
    "b",
    "b.mesh.local",
    "tasks.b",
    "vote",
    "tasks.vote",
    "web.mesh.local",
    "a-much-longer-service-name-for-the-table",
    "mesh.local",
    "nope",
    "x.y.mesh.local",
    "example.com",
    "com",
    "",
];

const EDNS: &[Option<u16>] = &[None, Some(512), Some(1232), Some(4096), Some(65535)];

#[test]
fn the_largest_answer_to_query_ratio_stays_under_the_documented_bound() {
    let t = table();
    // The worst ratio without EDNS [0] and with it [1].
    let mut worst: [Option<(f64, String)>; 2] = [None, None];
    let mut rows = 0;
    for &(tname, qtype) in TYPES {
        for &name in NAMES {
            for &edns in EDNS {
                let q = query(name, qtype, edns);
                let a = t
                    .respond_seeded(&q, Transport::Udp, 7)
                    .unwrap_or_else(|| panic!("no answer to {name} {tname}"));
                rows += 1;
                let ratio = a.len() as f64 / q.len() as f64;
                let answers = u16::from_be_bytes([a[6], a[7]]);
                let what = format!(
                    "{name:?} {tname} edns={edns:?}: {} -> {} bytes, {answers} records",
                    q.len(),
                    a.len()
                );
                assert!(ratio <= bound(edns.is_some()), "{what}: ratio {ratio:.2}");
                assert_eq!(a[3] & 0x80, 0, "RA is never set: {what}");
                if answers == 0 {
                    // Errors, other zones, NODATA (ANY, zone transfers, ...): the question
                    // and our OPT record at most, never more than was sent.
                    assert!(a.len() <= q.len(), "{what}");
                } else {
                    assert!(matches!(qtype, 1 | 28), "only A/AAAA carry records: {what}");
                }
                let w = &mut worst[usize::from(edns.is_some())];
                if w.as_ref().is_none_or(|(r, _)| ratio > *r) {
                    *w = Some((ratio, what));
                }
            }
        }
    }
    for (edns, w) in worst.iter().enumerate() {
        let (ratio, what) = w.as_ref().unwrap();
        let bound = bound(edns == 1);
        eprintln!(
            "{rows} queries; largest answer/query ratio {} EDNS: {ratio:.2} (bound {bound:.1}): {what}",
            if edns == 1 { "with" } else { "without" }
        );
        // The worst case is the one the bound describes: a one-letter name with many tasks.
        assert!(what.starts_with("\"b\""), "{what}");
    }
}

#[test]
fn over_tcp_answers_are_complete_but_errors_stay_small() {
    let t = table();
    for &(tname, qtype) in TYPES {
        for &name in ["example.com", "nope", "mesh.local"].iter() {
            let q = query(name, qtype, None);
            let a = t.respond_seeded(&q, Transport::Tcp, 7).unwrap();
            assert!(a.len() <= q.len(), "{name} {tname}: {} bytes", a.len());
        }
    }
    // All 600 records of `b` over TCP (300 A); no TC.
    let a = t
        .respond_seeded(&query("b", 1, None), Transport::Tcp, 7)
        .unwrap();
    assert_eq!(u16::from_be_bytes([a[6], a[7]]), 300);
    assert_eq!(a[2] & 0x02, 0);
}
