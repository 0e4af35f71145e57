//! Fuzzes the DNS table's text inputs: a zone and service names from arbitrary bytes
//! (`DnsTable::builder`, `ServiceName::new`, the builder's vip/dnsrr/tasks). Nothing may
//! panic; every name the builder accepts must then answer with its addresses, under the zone
//! and bare, in any letter case, and an accepted zone must be REFUSED nowhere inside it.
#![no_main]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use vipmesh_dns::{DnsTable, ServiceName, Transport};

/// A query (RD, no EDNS) for the dotted `name`, type A; `None` when a label cannot be encoded.
fn query(name: &str) -> Option<Vec<u8>> {
    if name.trim_end_matches('.').len() > 253 {
        return None;
    }
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(u8::try_from(label.len()).ok().filter(|n| *n <= 63)?);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]);
    Some(q)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let zone = parts.next().unwrap_or_default();
    let Ok(mut builder) = DnsTable::builder(zone) else {
        // Names are still parsed on their own.
        for p in parts {
            let _ = ServiceName::new(p);
        }
        return;
    };
    // Lowercase name -> (dnsrr?, the address its A query must answer with).
    let mut accepted: BTreeMap<String, (bool, Ipv4Addr)> = BTreeMap::new();
    for (i, name) in parts.take(16).enumerate() {
        let ip = Ipv4Addr::new(10, 0, 0, u8::try_from(i + 1).unwrap_or(255));
        let step = match i % 3 {
            0 => builder.clone().vip(name, [ip]),
            1 => builder.clone().dnsrr(name, [IpAddr::from(ip)]),
            // `tasks` for an undeclared name must be a typed error, for a declared one fine.
            _ => builder.clone().tasks(name, [ip]),
        };
        let valid = ServiceName::new(name).is_ok();
        match step {
            Ok(b) => {
                assert!(valid, "the builder took an invalid name {name:?}");
                let key = name.to_ascii_lowercase();
                match i % 3 {
                    0 => drop(accepted.insert(key, (false, ip))),
                    1 => drop(accepted.insert(key, (true, ip))),
                    // A VIP-mode service still answers its VIP; a dnsrr one its new tasks.
                    _ => {
                        let entry = accepted.get_mut(&key);
                        assert!(entry.is_some(), "tasks() took an undeclared {name:?}");
                        if let Some((true, addr)) = entry {
                            *addr = ip;
                        }
                    }
                }
                builder = b;
            }
            Err(_) => {}
        }
    }
    let table = builder.build();
    let zone = table.zone().to_owned();
    for (name, (_, ip)) in &accepted {
        for qname in [format!("{name}.{zone}"), name.to_ascii_uppercase()] {
            let Some(q) = query(&qname) else { continue };
            let a = table
                .respond_seeded(&q, Transport::Tcp, 1)
                .unwrap_or_else(|| panic!("no answer for {qname:?}"));
            assert_eq!(a[3] & 0x0f, 0, "NOERROR for {qname:?}: {a:?}");
            assert_eq!(a[6..8], [0, 1], "one answer for {qname:?}: {a:?}");
            assert_eq!(a[a.len() - 4..], ip.octets(), "{qname:?}");
        }
    }
    if let Some(q) = query(&format!("nope-not-a-service-0.{zone}")) {
        let a = table.respond_seeded(&q, Transport::Udp, 1).unwrap_or_default();
        assert_ne!(a.get(3).map(|b| b & 0x0f), Some(5), "REFUSED inside the zone: {a:?}");
    }
});
