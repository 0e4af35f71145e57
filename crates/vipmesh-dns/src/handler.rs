//! The pure query handler: a parsed request and a table in, a response out. No sockets.
//!
//! The server ([`crate::DnsServer`]) and the byte-level entry points ([`DnsTable::respond`])
//! share [`reply`], so what the tests and the fuzzer exercise is what the server sends.

use std::fmt;
use std::iter;

use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, AAAA};
use hickory_server::proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder,
};
use hickory_server::server::Request;
use hickory_server::zone_handler::{MessageRequest, MessageResponseBuilder};

use crate::table::{DnsTable, Lookup, Order};

/// The UDP payload size every answer fits in when the query carries no EDNS OPT record
/// (RFC 1035 §4.2.1).
pub const MIN_UDP_PAYLOAD: u16 = 512;

/// The largest UDP payload the server ever sends, whatever size the query's EDNS record
/// advertises: 1232 bytes, the DNS Flag Day 2020 value that avoids IP fragmentation.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// The size of an OPT pseudo-record without options (RFC 6891 §6.1.2).
const OPT_LEN: usize = 11;
/// The size of a DNS header.
const HEADER_LEN: usize = 12;
/// An answer record without its owner name: type (2), class (2), TTL (4), RDLENGTH (2).
const RECORD_FIXED_LEN: usize = 10;
/// A compression pointer (RFC 1035 §4.1.4).
const POINTER_LEN: usize = 2;
/// hickory's encoder compresses at most this many names per message (a DoS guard in
/// `hickory_proto::rr::domain::name`); later owners are written out in full.
const COMPRESSED_NAMES: usize = 120;

/// The transport a query arrived on; it bounds the size of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP: at most [`MIN_UDP_PAYLOAD`] bytes, or what EDNS advertises capped at
    /// [`MAX_UDP_PAYLOAD`]; records that do not fit are left out and TC is set.
    Udp,
    /// TCP: up to 65535 bytes.
    Tcp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        })
    }
}

/// What to send back for one request: the header, the answer records and the OPT record.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) metadata: Metadata,
    pub(crate) answers: Vec<Record>,
    pub(crate) edns: Option<Edns>,
}

/// The largest message we may send for `req` over `transport`.
pub(crate) fn size_limit(req: &MessageRequest, transport: Transport) -> u16 {
    match transport {
        // `max_payload` is 512 without EDNS, and never below 512.
        Transport::Udp => req.max_payload().clamp(MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD),
        Transport::Tcp => u16::MAX,
    }
}

/// Decides the response to `req`. `None` means "send nothing" (the message is a response).
///
/// `seed` drives the shuffle of task IPs; the server draws a fresh one per query.
pub(crate) fn reply(
    table: &DnsTable,
    req: &MessageRequest,
    transport: Transport,
    seed: u64,
) -> Option<Reply> {
    if req.metadata.message_type == MessageType::Response {
        // Never answer a response: that is how two servers get into a reflection loop.
        return None;
    }
    let limit = size_limit(req, transport);
    let mut metadata = Metadata::response_from_request(&req.metadata);
    let edns = req.edns.as_ref().map(|_| {
        let mut e = Edns::new();
        // The OPT record we send advertises what we accept; hickory's UDP encoder also
        // uses it as the size bound of the message, so it is the negotiated limit.
        e.set_max_payload(limit.min(MAX_UDP_PAYLOAD))
            .set_version(0)
            .set_dnssec_ok(false);
        e
    });
    let done = |mut metadata: Metadata, code| {
        metadata.response_code = code;
        Some(Reply {
            metadata,
            answers: Vec::new(),
            edns: edns.clone(),
        })
    };
    if req.version() > 0 {
        return done(metadata, ResponseCode::BADVERS);
    }
    if req.metadata.op_code != OpCode::Query {
        return done(metadata, ResponseCode::NotImp);
    }
    let [query] = req.queries.queries() else {
        return done(metadata, ResponseCode::FormErr);
    };
    if query.query_class() != DNSClass::IN {
        return done(metadata, ResponseCode::Refused);
    }
    let name = query.original().name();
    let labels: Vec<&[u8]> = name.iter().collect();
    let lookup = table.lookup(&labels);
    // Everything but REFUSED is our authority: the zone, and bare service names.
    metadata.authoritative = lookup != Lookup::Refused;
    let (addrs, order) = match lookup {
        Lookup::Refused => return done(metadata, ResponseCode::Refused),
        Lookup::NxDomain => return done(metadata, ResponseCode::NXDomain),
        Lookup::NoData => return done(metadata, ResponseCode::NoError),
        Lookup::Found(addrs, order) => (addrs, order),
    };
    // Room left for answers once the header, the echoed question and our OPT are counted.
    let budget = usize::from(limit)
        .saturating_sub(HEADER_LEN)
        .saturating_sub(req.queries.as_bytes().len())
        .saturating_sub(if edns.is_some() { OPT_LEN } else { 0 });
    let ttl = table.ttl();
    let name_len = labels.iter().map(|l| l.len() + 1).sum::<usize>() + 1;
    let answers: Vec<Record> = match query.query_type() {
        RecordType::A => {
            let fits = answers_that_fit(budget, name_len, 4, addrs.v4.len());
            metadata.truncation = addrs.v4.len() > fits;
            arrange(&addrs.v4, order, seed)
                .take(fits)
                .map(|a| Record::from_rdata(name.clone(), ttl, RData::A(A(a))))
                .collect()
        }
        RecordType::AAAA => {
            let fits = answers_that_fit(budget, name_len, 16, addrs.v6.len());
            metadata.truncation = addrs.v6.len() > fits;
            arrange(&addrs.v6, order, seed)
                .take(fits)
                .map(|a| Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(a))))
                .collect()
        }
        _ => Vec::new(),
    };
    // TC (RFC 2181 §9) says the answer set is incomplete: resolvers retry over TCP.
    Some(Reply {
        metadata,
        answers,
        edns,
    })
}

/// How many answer records of `rdata_len` bytes for an owner of `name_len` wire bytes fit in
/// `budget` bytes, as hickory's encoder lays them out: the first owner is written in full (the
/// question is not a compression target there), the next ones are pointers to it, and after
/// [`COMPRESSED_NAMES`] names compression stops.
pub(crate) fn answers_that_fit(
    budget: usize,
    name_len: usize,
    rdata_len: usize,
    available: usize,
) -> usize {
    let mut used = 0usize;
    for n in 0..available {
        let owner = if n == 0 || n >= COMPRESSED_NAMES {
            name_len
        } else {
            POINTER_LEN
        };
        used += owner + RECORD_FIXED_LEN + rdata_len;
        if used > budget {
            return n;
        }
    }
    available
}

/// The addresses of one family in answer order: as configured, or a fresh permutation.
fn arrange<T: Copy>(addrs: &[T], order: Order, seed: u64) -> impl Iterator<Item = T> + use<T> {
    let mut v = addrs.to_vec();
    if order == Order::Shuffled {
        shuffle(&mut v, seed);
    }
    v.into_iter()
}

/// Fisher–Yates driven by SplitMix64: uniform enough for spreading load, deterministic in tests.
pub(crate) fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut state = seed;
    for i in (1..v.len()).rev() {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // Lemire's multiply-shift: an index in 0..=i without division.
        let bound = u64::try_from(i + 1).unwrap_or(u64::MAX);
        let j = ((u128::from(z) * u128::from(bound)) >> 64) as usize;
        v.swap(i, j.min(i));
    }
}

/// Encodes `reply` for `req` the way the server does (same builder, same size bound).
fn encode(req: &MessageRequest, reply: &Reply, transport: Transport) -> Vec<u8> {
    let limit = match (transport, &reply.edns) {
        (Transport::Udp, Some(e)) => e.max_payload(),
        (Transport::Udp, None) => MIN_UDP_PAYLOAD,
        (Transport::Tcp, _) => u16::MAX,
    };
    let response = MessageResponseBuilder::new(&req.queries, reply.edns.as_ref()).build(
        reply.metadata,
        reply.answers.iter(),
        iter::empty(),
        iter::empty(),
        iter::empty(),
    );
    let mut bytes = Vec::with_capacity(usize::from(MIN_UDP_PAYLOAD));
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(limit);
    match response.destructive_emit(&mut encoder) {
        Ok(_) => bytes,
        Err(error) => {
            // As hickory's server: a bare SERVFAIL header.
            tracing::warn!(%error, "cannot encode DNS response");
            let mut metadata = reply.metadata;
            metadata.response_code = ResponseCode::ServFail;
            header_only(metadata)
        }
    }
}

fn header_only(metadata: Metadata) -> Vec<u8> {
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    let mut bytes = Vec::with_capacity(HEADER_LEN);
    let mut encoder = BinEncoder::new(&mut bytes);
    match header.emit(&mut encoder) {
        Ok(()) => bytes,
        Err(_) => Vec::new(),
    }
}

/// The byte-level handler behind [`DnsTable::respond`]: the same steps as hickory's server loop
/// (drop what has no header, FORMERR what does not parse) and then [`reply`].
pub(crate) fn respond_bytes(
    table: &DnsTable,
    query: &[u8],
    transport: Transport,
    seed: u64,
) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(query)).ok()?;
    let src = ([127, 0, 0, 1], 53).into();
    let protocol = match transport {
        Transport::Udp => hickory_server::net::xfer::Protocol::Udp,
        Transport::Tcp => hickory_server::net::xfer::Protocol::Tcp,
    };
    let request = match Request::from_bytes(query.to_vec(), src, protocol) {
        Ok(r) => r,
        Err(error) => {
            tracing::debug!(%error, "malformed DNS query");
            let mut metadata = Metadata::response_from_request(&header.metadata);
            metadata.response_code = ResponseCode::FormErr;
            return Some(header_only(metadata));
        }
    };
    let r = reply(table, &request, transport, seed)?;
    Some(encode(&request, &r, transport))
}

impl DnsTable {
    /// Answers one DNS message given as bytes, as the server would over `transport`;
    /// `None` when the server sends nothing (shorter than a header, or a response message).
    ///
    /// Task IPs are shuffled with a fresh random seed; see [`respond_seeded`](Self::respond_seeded)
    /// for a reproducible order.
    ///
    /// # Size bound
    ///
    /// Over UDP, the answer is at most 512 bytes when the query has no EDNS record, and at most
    /// `min(advertised, 1232)` when it has one. Records that do not fit are left out and TC is
    /// set, so the client retries over TCP. Errors (REFUSED, NXDOMAIN, FORMERR, ...) carry no
    /// record: they are at most the question plus 11 bytes of OPT, and FORMERR is a bare 12-byte
    /// header. So the amplification factor of a query of `n` bytes is at most `512 / n` without
    /// EDNS and `1232 / n` with it, and only names the table serves can reach it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::Ipv4Addr;
    /// use vipmesh_dns::{DnsTable, Transport};
    ///
    /// let table = DnsTable::builder("mesh.local")?
    ///     .vip("vote", [Ipv4Addr::new(10, 0, 0, 9)])?
    ///     .build();
    /// // `dig vote A +noedns`: id 0x1234, RD, one question.
    /// let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    /// query.extend_from_slice(b"\x04vote\x00\x00\x01\x00\x01");
    /// let answer = table.respond(&query, Transport::Udp).unwrap();
    /// assert_eq!(answer[..2], [0x12, 0x34]);
    /// assert_eq!(answer[3] & 0x0f, 0, "NOERROR");
    /// assert_eq!(answer[7], 1, "one answer");
    /// assert_eq!(answer[answer.len() - 4..], [10, 0, 0, 9]);
    /// # Ok::<(), vipmesh_dns::Error>(())
    /// ```
    pub fn respond(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        self.respond_seeded(query, transport, rand::random())
    }

    /// [`respond`](Self::respond) with the shuffle of task IPs driven by `seed`.
    pub fn respond_seeded(&self, query: &[u8], transport: Transport, seed: u64) -> Option<Vec<u8>> {
        respond_bytes(self, query, transport, seed)
    }
}

#[cfg(test)]
mod tests;
