//! Unit tests of the pure handler: query bytes in, response bytes out, no sockets.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Name, RData, RecordType};
use proptest::prelude::*;

use super::*;
use crate::DEFAULT_TTL;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 9);

fn t(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 10 + n)
}

fn table() -> DnsTable {
    DnsTable::builder("mesh.local.")
        .unwrap()
        .vip("vote", [IpAddr::from(VIP), IpAddr::from(VIP6)])
        .unwrap()
        .tasks("vote", [t(0), t(1), t(2)])
        .unwrap()
        .vip("v4only", [VIP])
        .unwrap()
        .dnsrr("web", [t(0), t(1)])
        .unwrap()
        .dnsrr("empty", Vec::<IpAddr>::new())
        .unwrap()
        .build()
}

/// A big dnsrr service, to exercise the size bound.
fn big_table(v4: usize, v6: usize) -> DnsTable {
    let mut addrs: Vec<IpAddr> = (0..v4)
        .map(|i| Ipv4Addr::from(0x0a01_0000 + u32::try_from(i).unwrap()).into())
        .collect();
    addrs.extend((0..v6).map(|i| {
        IpAddr::from(Ipv6Addr::from(
            0xfd00_0000_0000_0000_0000_0000_0000_0000u128 + i as u128,
        ))
    }));
    DnsTable::builder("mesh.local")
        .unwrap()
        .dnsrr("big", addrs)
        .unwrap()
        .build()
}

struct Q {
    name: String,
    qtype: RecordType,
    class: DNSClass,
    edns: Option<(u16, u8)>,
    op: OpCode,
    questions: usize,
}

fn q(name: &str, qtype: RecordType) -> Q {
    Q {
        name: name.to_owned(),
        qtype,
        class: DNSClass::IN,
        edns: None,
        op: OpCode::Query,
        questions: 1,
    }
}

impl Q {
    fn edns(mut self, size: u16) -> Q {
        self.edns = Some((size, 0));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, self.op);
        m.metadata.recursion_desired = true;
        for _ in 0..self.questions {
            let mut query = Query::query(Name::from_ascii(&self.name).unwrap(), self.qtype);
            query.set_query_class(self.class);
            m.add_query(query);
        }
        if let Some((size, version)) = self.edns {
            let mut e = Edns::new();
            e.set_max_payload(size).set_version(version);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }
}

fn ask_bytes(table: &DnsTable, query: &[u8], transport: Transport, seed: u64) -> (Message, usize) {
    let bytes = table
        .respond_seeded(query, transport, seed)
        .expect("a response");
    (
        Message::from_vec(&bytes).expect("the response parses"),
        bytes.len(),
    )
}

fn ask(table: &DnsTable, query: &Q) -> Message {
    ask_bytes(table, &query.bytes(), Transport::Udp, 7).0
}

fn addrs(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            other => panic!("unexpected record {other:?}"),
        })
        .collect()
}

#[test]
fn vip_answers_its_vip_authoritatively_without_recursion() {
    for name in ["vote.", "vote.mesh.local.", "VoTe.Mesh.LOCAL."] {
        let m = ask(&table(), &q(name, RecordType::A));
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(m.metadata.authoritative);
        assert!(m.metadata.recursion_desired, "RD is echoed");
        assert!(!m.metadata.recursion_available, "RA is 0");
        assert!(!m.metadata.truncation);
        assert_eq!(addrs(&m), [IpAddr::from(VIP)]);
        let rec = &m.answers[0];
        assert_eq!(rec.ttl, DEFAULT_TTL);
        assert_eq!(rec.dns_class, DNSClass::IN);
        // The owner keeps the case of the question (0x20 randomisation works).
        assert!(
            rec.name.eq_case(&Name::from_ascii(name).unwrap()),
            "{}",
            rec.name
        );
        assert_eq!(m.queries.len(), 1);
        assert!(
            m.queries[0]
                .name()
                .eq_case(&Name::from_ascii(name).unwrap())
        );
    }
}

#[test]
fn aaaa_answers_v6_vips_and_nodata_without_them() {
    let m = ask(&table(), &q("vote.", RecordType::AAAA));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addrs(&m), [IpAddr::from(VIP6)]);

    let m = ask(&table(), &q("v4only.mesh.local.", RecordType::AAAA));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(m.answers.is_empty());
    assert!(m.authorities.is_empty() && m.additionals.is_empty());
}

#[test]
fn dnsrr_answers_every_task_in_both_orders() {
    let table = table();
    let query = q("web.", RecordType::A).bytes();
    let mut orders = BTreeSet::new();
    for seed in 0..64 {
        let (m, _) = ask_bytes(&table, &query, Transport::Udp, seed);
        let got = addrs(&m);
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, [IpAddr::from(t(0)), IpAddr::from(t(1))]);
        orders.insert(got);
    }
    assert_eq!(orders.len(), 2, "both orders appear: {orders:?}");
    // The same seed gives the same order.
    assert_eq!(
        table.respond_seeded(&query, Transport::Udp, 3),
        table.respond_seeded(&query, Transport::Udp, 3)
    );
}

#[test]
fn shuffle_reaches_every_permutation_of_three() {
    let mut seen = BTreeSet::new();
    for seed in 0..600 {
        let mut v = [1, 2, 3];
        shuffle(&mut v, seed);
        seen.insert(v);
    }
    assert_eq!(seen.len(), 6);
    // Degenerate lengths are fine.
    shuffle::<u8>(&mut [], 1);
    shuffle(&mut [1], 1);
}

#[test]
fn tasks_name_answers_task_ips_in_vip_mode() {
    let m = ask(&table(), &q("tasks.vote.mesh.local.", RecordType::A));
    let mut got = addrs(&m);
    got.sort();
    assert_eq!(got, [t(0), t(1), t(2)].map(IpAddr::from));
    let m = ask(&table(), &q("tasks.vote.", RecordType::A));
    assert_eq!(m.answers.len(), 3);
}

#[test]
fn unknown_names_are_nxdomain_and_foreign_names_refused() {
    for name in [
        "nope.",
        "nope.mesh.local.",
        "a.vote.mesh.local.",
        "tasks.nope.mesh.local.",
    ] {
        let m = ask(&table(), &q(name, RecordType::A));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(m.metadata.authoritative, "{name}");
        assert!(m.answers.is_empty());
    }
    for name in [
        "example.com.",
        "vote.example.com.",
        ".",
        "mesh.local.example.",
    ] {
        let m = ask(&table(), &q(name, RecordType::A));
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{name}");
        assert!(!m.metadata.authoritative, "{name}");
        assert!(!m.metadata.recursion_available);
        assert!(m.answers.is_empty());
    }
}

#[test]
fn other_types_and_empty_services_are_nodata() {
    for (name, qtype) in [
        ("vote.", RecordType::MX),
        ("vote.", RecordType::TXT),
        ("web.", RecordType::ANY),
        ("web.", RecordType::SRV),
        ("empty.", RecordType::A),
        ("empty.mesh.local.", RecordType::AAAA),
        ("mesh.local.", RecordType::A),
        ("mesh.local.", RecordType::SOA),
        ("tasks.mesh.local.", RecordType::A),
    ] {
        let m = ask(&table(), &q(name, qtype));
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{name} {qtype}"
        );
        assert!(m.metadata.authoritative);
        assert!(m.answers.is_empty(), "{name} {qtype}");
    }
}

#[test]
fn non_in_class_is_refused() {
    let mut query = q("vote.", RecordType::TXT);
    query.class = DNSClass::CH;
    let m = ask(&table(), &query);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn other_opcodes_are_notimp() {
    let mut query = q("vote.", RecordType::A);
    query.op = OpCode::Status;
    let m = ask(&table(), &query);
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
    assert_eq!(m.metadata.op_code, OpCode::Status);
}

#[test]
fn question_count_other_than_one_is_formerr() {
    for n in [0, 2, 5] {
        let mut query = q("vote.", RecordType::A);
        query.questions = n;
        let bytes = query.bytes();
        let (m, len) = ask_bytes(&table(), &bytes, Transport::Udp, 0);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr, "{n}");
        assert!(m.answers.is_empty());
        assert!(len <= bytes.len(), "FORMERR no larger than the query");
    }
}

#[test]
fn edns_is_answered_with_opt_and_bad_versions_with_badvers() {
    let m = ask(&table(), &q("vote.", RecordType::A).edns(4096));
    let e = m.edns.as_ref().expect("OPT in the response");
    assert_eq!(e.max_payload(), MAX_UDP_PAYLOAD);
    assert_eq!(e.version(), 0);
    assert_eq!(addrs(&m), [IpAddr::from(VIP)]);

    let m = ask(&table(), &q("nope.", RecordType::A).edns(1232));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.edns.is_some(), "errors carry OPT too");

    let mut query = q("vote.", RecordType::A);
    query.edns = Some((1232, 1));
    let m = ask(&table(), &query);
    // BADVERS and BADSIG share code 16; hickory decodes 16 as BADSIG.
    assert_eq!(u16::from(m.metadata.response_code), 16, "BADVERS");
    assert!(m.answers.is_empty());
    assert!(m.edns.is_some());
}

/// The size of the `i`-th answer (0-based) as hickory encodes it, for an owner of `name_len`
/// wire bytes: the first owner in full, pointers up to 120 names, then full names again.
fn record_len(i: usize, name_len: usize, rdata: usize) -> usize {
    let owner = if i == 0 || i >= 120 { name_len } else { 2 };
    owner + 10 + rdata
}

#[test]
fn record_sizes_match_the_encoder() {
    // The budget arithmetic relies on this layout; the encoder must agree exactly.
    for (v4, v6) in [(1, 0), (3, 0), (0, 1), (0, 4), (150, 0)] {
        let table = big_table(v4, v6);
        for (qtype, n, rdata) in [(RecordType::A, v4, 4), (RecordType::AAAA, v6, 16)] {
            // "BIG.mesh.local." is 16 bytes on the wire, "big." 5.
            for (query, name_len) in [
                (q("BIG.mesh.local.", qtype), 16),
                (q("big.", qtype).edns(1232), 5),
            ] {
                let bytes = query.bytes();
                let (m, len) = ask_bytes(&table, &bytes, Transport::Tcp, 1);
                assert_eq!(m.answers.len(), n);
                let want: usize = bytes.len()
                    + (0..n)
                        .map(|i| record_len(i, name_len, rdata))
                        .sum::<usize>();
                assert_eq!(len, want, "{qtype} x{n}");
                assert_eq!(
                    answers_that_fit(len - bytes.len(), name_len, rdata, n + 5),
                    n,
                    "the model agrees"
                );
            }
        }
    }
}

#[test]
fn udp_answers_fit_512_bytes_and_set_tc() {
    let table = big_table(100, 100);
    for (qtype, rdata) in [(RecordType::A, 4), (RecordType::AAAA, 16)] {
        let query = q("big.mesh.local.", qtype).bytes();
        let (m, len) = ask_bytes(&table, &query, Transport::Udp, 5);
        assert!(len <= 512, "{len}");
        assert!(m.metadata.truncation, "TC set");
        // As many records as fit: the next one would not.
        assert!(m.answers.len() >= 15, "{}", m.answers.len());
        assert!(len + record_len(1, 16, rdata) > 512, "{len}");
        // A shuffled subset, without duplicates.
        let set: BTreeSet<_> = addrs(&m).into_iter().collect();
        assert_eq!(set.len(), m.answers.len());
    }
}

#[test]
fn edns_raises_the_udp_bound_up_to_1232_only() {
    let table = big_table(200, 0);
    for (advertised, bound) in [
        (0u16, 512usize),
        (600, 600),
        (1232, 1232),
        (4096, 1232),
        (65535, 1232),
    ] {
        let query = q("big.", RecordType::A).edns(advertised).bytes();
        let (m, len) = ask_bytes(&table, &query, Transport::Udp, 9);
        assert!(len <= bound, "{advertised}: {len} > {bound}");
        assert!(
            len + record_len(1, 5, 4) > bound,
            "{advertised}: as many as fit"
        );
        assert!(m.metadata.truncation);
        assert!(m.edns.is_some(), "the OPT record is never the one dropped");
    }
}

#[test]
fn tcp_answers_everything() {
    let table = big_table(200, 0);
    let query = q("big.", RecordType::A).bytes();
    let (m, len) = ask_bytes(&table, &query, Transport::Tcp, 9);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 200);
    assert_eq!(
        len,
        query.len() + (0..200).map(|i| record_len(i, 5, 4)).sum::<usize>()
    );
    let set: BTreeSet<_> = addrs(&m).into_iter().collect();
    assert_eq!(set.len(), 200);
}

#[test]
fn responses_and_short_messages_are_dropped() {
    let table = table();
    assert_eq!(table.respond(&[], Transport::Udp), None);
    assert_eq!(table.respond(&[0; 11], Transport::Udp), None);
    let mut response = q("vote.", RecordType::A).bytes();
    response[2] |= 0x80; // QR = 1
    assert_eq!(table.respond(&response, Transport::Udp), None);
}

#[test]
fn undecodable_messages_get_a_bare_formerr() {
    let table = table();
    let good = q("vote.", RecordType::A).bytes();
    // Header says one question, the question is cut short.
    for cut in 13..good.len() {
        let bytes = table
            .respond(&good[..cut], Transport::Udp)
            .expect("FORMERR");
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::FormErr,
            "cut at {cut}"
        );
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(bytes.len(), 12, "a bare header");
    }
    // A compression loop in the question name.
    let mut looped = good[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let m = Message::from_vec(&table.respond(&looped, Transport::Udp).unwrap()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
}

#[test]
fn answers_a_real_dig_query() {
    // Captured from `dig @127.0.0.11 vote` (DiG 9.18.49-1~deb12u3-Debian) with a UDP listener in
    // a netns: id 0x953c, RD+AD, one question, OPT (1232 bytes) with a COOKIE option.
    let capture: &[u8] = &[
        0x95, 0x3c, 0x01, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x04, 0x76, 0x6f,
        0x74, 0x65, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x29, 0x04, 0xd0, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x0c, 0x00, 0x0a, 0x00, 0x08, 0xb4, 0xd2, 0x95, 0x6b, 0xa9, 0x1f, 0xb2, 0x3f,
    ];
    let (m, len) = ask_bytes(&table(), capture, Transport::Udp, 0);
    assert_eq!(m.metadata.id, 0x953c);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addrs(&m), [IpAddr::from(VIP)]);
    let e = m.edns.expect("OPT echoed");
    assert_eq!(e.max_payload(), 1232);
    // Question (22) + OPT without the cookie (11) + one A record with its owner in full (20).
    assert_eq!(len, 12 + 10 + 11 + 20);
}

fn arb_qtype() -> impl Strategy<Value = RecordType> {
    prop_oneof![
        4 => Just(RecordType::A),
        4 => Just(RecordType::AAAA),
        1 => Just(RecordType::ANY),
        1 => Just(RecordType::MX),
        1 => any::<u16>().prop_map(RecordType::from),
    ]
}

fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("big.".to_owned()),
        Just("BIG.mesh.local.".to_owned()),
        Just("tasks.big.mesh.local.".to_owned()),
        Just("nope.".to_owned()),
        Just("mesh.local.".to_owned()),
        "[a-z]{1,20}(\\.[a-z]{1,20}){0,3}\\.".prop_map(|s| s),
        // Long names push the question size up.
        "[a-z]{50,63}\\.[a-z]{50,63}\\.[a-z]{50,63}\\.mesh\\.local\\.".prop_map(|s| s),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the bytes, the handler returns (maybe nothing) and never panics; what it
    /// returns is a DNS message within the transport's bound.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let table = table();
        for transport in [Transport::Udp, Transport::Tcp] {
            if let Some(out) = table.respond_seeded(&bytes, transport, 1) {
                prop_assert!(out.len() >= 12);
                if transport == Transport::Udp {
                    prop_assert!(out.len() <= usize::from(MAX_UDP_PAYLOAD));
                }
                prop_assert!(Message::from_vec(&out).is_ok());
            }
        }
    }

    /// Valid queries with a few bytes flipped reach the deeper decoding paths.
    #[test]
    fn mutated_queries_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        edns in any::<bool>(),
    ) {
        let mut query = q("tasks.vote.mesh.local.", RecordType::A);
        if edns { query = query.edns(1232); }
        let mut bytes = query.bytes();
        for (at, b) in flips {
            let i = at % bytes.len();
            bytes[i] ^= b;
        }
        if let Some(out) = table().respond_seeded(&bytes, Transport::Udp, 1) {
            prop_assert!(out.len() <= usize::from(MAX_UDP_PAYLOAD));
        }
    }

    /// The amplification bound: over UDP, at most 512 bytes without EDNS and at most
    /// min(advertised, 1232) with it; TC exactly when records were left out; the records are
    /// distinct members of the service's set.
    #[test]
    fn udp_answers_stay_within_the_bound(
        v4 in 0usize..150,
        v6 in 0usize..60,
        name in arb_name(),
        qtype in arb_qtype(),
        edns in proptest::option::of(any::<u16>()),
        seed in any::<u64>(),
    ) {
        let table = big_table(v4, v6);
        let mut query = q(&name, qtype);
        query.edns = edns.map(|s| (s, 0));
        let bytes = query.bytes();
        let (m, len) = ask_bytes(&table, &bytes, Transport::Udp, seed);
        let bound = match edns {
            None => 512,
            Some(s) => usize::from(s.clamp(512, 1232)),
        };
        prop_assert!(len <= bound, "{} > {}", len, bound);
        let full = match (m.metadata.response_code, qtype) {
            (ResponseCode::NoError, RecordType::A) if m.metadata.authoritative
                && name.to_ascii_lowercase().contains("big.") => v4,
            (ResponseCode::NoError, RecordType::AAAA) if m.metadata.authoritative
                && name.to_ascii_lowercase().contains("big.") => v6,
            _ => 0,
        };
        prop_assert_eq!(m.metadata.truncation, m.answers.len() < full);
        prop_assert!(m.answers.len() <= full);
        let set: BTreeSet<_> = addrs(&m).into_iter().collect();
        prop_assert_eq!(set.len(), m.answers.len());
        if m.answers.is_empty() {
            // Errors and NODATA: only the question (and OPT) are echoed.
            prop_assert!(len <= bytes.len());
        }
    }
}
