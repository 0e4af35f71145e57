//! Fuzzes the DNS query handler: any bytes, over UDP and TCP, against a table with VIP, dnsrr
//! and a large dnsrr service. It must never panic, and what it sends must be a DNS message
//! within the transport's size bound (the amplification bound of `DnsTable::respond`).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use vipmesh_dns::{DnsTable, MAX_UDP_PAYLOAD, MIN_UDP_PAYLOAD, Transport};

static TABLE: LazyLock<DnsTable> = LazyLock::new(|| {
    let big: Vec<IpAddr> = (0..300u32)
        .map(|i| IpAddr::from(Ipv4Addr::from(0x0a01_0000 + i)))
        .chain((0..100u128).map(|i| IpAddr::from(Ipv6Addr::from(0xfd00_u128 << 112 | i))))
        .collect();
    DnsTable::builder("mesh.local.")
        .and_then(|b| b.vip("vote", [Ipv4Addr::new(10, 0, 0, 9)]))
        .and_then(|b| b.tasks("vote", [Ipv4Addr::new(10, 0, 0, 10)]))
        .and_then(|b| {
            b.dnsrr(
                "web",
                [Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 11)],
            )
        })
        .and_then(|b| b.dnsrr("big", big))
        .map(|b| b.build())
        .unwrap_or_else(|e| panic!("fixture table: {e}"))
});

fuzz_target!(|data: &[u8]| {
    let seed = data
        .iter()
        .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(*b));
    for transport in [Transport::Udp, Transport::Tcp] {
        let Some(out) = TABLE.respond_seeded(data, transport, seed) else {
            continue;
        };
        assert!(out.len() >= 12, "shorter than a header");
        assert_eq!(out[..2], data[..2], "the id is echoed");
        assert_eq!(out[2] & 0x80, 0x80, "QR is set");
        if transport == Transport::Udp {
            assert!(out.len() <= usize::from(MAX_UDP_PAYLOAD), "UDP bound");
            // No OPT record in the query (ARCOUNT 0): the classic 512-byte bound holds.
            if data.get(10..12) == Some(&[0, 0]) {
                assert!(out.len() <= usize::from(MIN_UDP_PAYLOAD), "512-byte bound");
            }
        }
    }
});
