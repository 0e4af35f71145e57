//! Privileged host tests: the server under abuse, in a fresh network namespace on
//! 127.0.0.11:53. A UDP flood (20 000 queries from 4 sockets, valid, truncated, out-of-zone and
//! garbage mixed) must never have more queries in flight than the cap, every datagram that
//! comes back must be a well-formed answer to what was asked, and afterwards the server must
//! still answer correctly; TCP connections beyond the cap are closed at once, idle ones after
//! the idle timeout. Run by `cargo xtask test` (`--ignored`).

// Test helpers fail loudly, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use vipmesh_dns::{DnsServer, DnsTable, Limits};
use vipmesh_testkit::{Requirement, TestNetns, require};

fn addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, 11), 53))
}

fn table() -> DnsTable {
    let big: Vec<Ipv4Addr> = (0..200u32)
        .map(|i| Ipv4Addr::from(0x0a01_0000 + i))
        .collect();
    DnsTable::builder("mesh.local.")
        .unwrap()
        .vip("vote", [Ipv4Addr::new(10, 0, 0, 9)])
        .unwrap()
        .dnsrr("big", big)
        .unwrap()
        .build()
}

/// A query for `name` of type `qtype` (RD, no EDNS).
fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let [hi, lo] = id.to_be_bytes();
    let mut q = vec![hi, lo, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// What the flood sends with id `id`, and what a reply to it must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `vote A`: NOERROR, one answer, 10.0.0.9.
    Vote,
    /// `big A` (200 tasks): NOERROR, TC, at most 512 bytes.
    Big,
    /// `example.com A`: REFUSED, no RA.
    Outside,
    /// A header followed by garbage: FORMERR, a bare header.
    Garbage,
}

fn kind_of(id: u16) -> Kind {
    match id % 4 {
        0 => Kind::Vote,
        1 => Kind::Big,
        2 => Kind::Outside,
        _ => Kind::Garbage,
    }
}

fn packet(id: u16) -> Vec<u8> {
    match kind_of(id) {
        Kind::Vote => query(id, "vote", 1),
        Kind::Big => query(id, "big", 1),
        Kind::Outside => query(id, "example.com", 1),
        Kind::Garbage => {
            let [hi, lo] = id.to_be_bytes();
            // QDCOUNT 1, then a label that runs past the end.
            vec![hi, lo, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0x3f, b'x', b'y']
        }
    }
}

/// Checks one reply against what its id asked; panics with the bytes otherwise.
fn check_reply(msg: &[u8]) -> u16 {
    assert!(msg.len() >= 12, "short reply {msg:?}");
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let rcode = msg[3] & 0x0f;
    assert_eq!(msg[2] & 0x80, 0x80, "QR set: {msg:?}");
    assert_eq!(msg[3] & 0x80, 0, "RA never set: {msg:?}");
    assert!(
        msg.len() <= 512,
        "no EDNS, at most 512 bytes: {} bytes",
        msg.len()
    );
    match kind_of(id) {
        Kind::Vote => {
            assert_eq!(rcode, 0, "{msg:?}");
            assert_eq!(msg[6..8], [0, 1], "one answer: {msg:?}");
            assert_eq!(msg[msg.len() - 4..], [10, 0, 0, 9]);
        }
        Kind::Big => {
            assert_eq!(rcode, 0, "{msg:?}");
            assert_eq!(msg[2] & 0x02, 0x02, "TC set: {msg:?}");
        }
        Kind::Outside => {
            assert_eq!(rcode, 5, "REFUSED: {msg:?}");
            assert_eq!(msg[6..8], [0, 0], "no answer: {msg:?}");
        }
        Kind::Garbage => {
            assert_eq!(rcode, 1, "FORMERR: {msg:?}");
            assert_eq!(msg.len(), 12, "bare header: {msg:?}");
        }
    }
    id
}

/// Reads every reply already queued on `sock` (non-blocking), checking each.
fn drain(sock: &UdpSocket, seen: &mut BTreeMap<u16, u32>) -> usize {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    loop {
        match sock.recv(&mut buf) {
            Ok(len) => {
                *seen.entry(check_reply(&buf[..len])).or_default() += 1;
                n += 1;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// One blocking `vote A` query on a fresh socket: the server still answers, and correctly.
fn still_answers(id: u16) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(addr()).unwrap();
    // The bound only keeps a broken server from hanging the test.
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send(&query(id, "vote", 1)).unwrap();
    let mut buf = [0u8; 512];
    let len = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no answer after the flood: {e}"));
    assert_eq!(check_reply(&buf[..len]), id);
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn a_udp_flood_never_exceeds_the_in_flight_cap_and_the_server_keeps_answering() {
    require(&[Requirement::Netns]);
    let t = TestNetns::new();
    let cap = 8;
    let limits = Limits {
        udp_in_flight: cap,
        ..Limits::default()
    };
    let server = DnsServer::spawn_with_limits(Some(t.netns()), addr(), table(), limits).unwrap();

    // The test thread is inside the namespace (TestNetns entered it), so these sockets are too.
    const SOCKETS: u16 = 4;
    const PER_SOCKET: u16 = 5000;
    let socks: Vec<UdpSocket> = (0..SOCKETS)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.connect(addr()).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let mut seen = BTreeMap::new();
    let mut replies = 0usize;
    let mut sent = 0usize;
    // Round robin over the sockets, in bursts of 64 per socket, reading replies between bursts.
    for burst in 0..PER_SOCKET / 64 + 1 {
        for (s, sock) in socks.iter().enumerate() {
            for k in 0..64u16 {
                let n = burst * 64 + k;
                if n >= PER_SOCKET {
                    break;
                }
                let id = u16::try_from(s).unwrap() * PER_SOCKET + n;
                match sock.send(&packet(id)) {
                    Ok(_) => sent += 1,
                    // Our own send buffer is full: the flood outruns the server; go on.
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("send: {e}"),
                }
            }
            replies += drain(sock, &mut seen);
        }
    }
    // Collect the stragglers: stop once nothing came for 300 ms (bounded to 10 s in all).
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(300)
        && started.elapsed() < Duration::from_secs(10)
    {
        let got: usize = socks.iter().map(|s| drain(s, &mut seen)).sum();
        if got > 0 {
            replies += got;
            quiet_since = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    let stats = server.stats();
    eprintln!(
        "flood: sent {sent}, replies {replies}, server {stats:?}, cap {cap} (the kernel dropped \
         what overflowed the socket buffer)"
    );
    assert!(sent >= 10_000, "the flood was not sent: {sent}");
    assert!(replies > 0, "no reply at all");
    assert!(seen.values().all(|&n| n == 1), "a query was answered twice");
    assert!(stats.udp_received as usize <= sent, "{stats:?}");
    assert!(stats.udp_answered as usize >= replies, "{stats:?}");
    // The cap held: never more than `cap` queries in flight, even under the flood.
    assert!(stats.udp_in_flight_peak >= 1, "{stats:?}");
    assert!(
        stats.udp_in_flight_peak <= cap as u64,
        "in flight peaked at {} over a cap of {cap}",
        stats.udp_in_flight_peak
    );

    // And it still answers, correctly, over UDP and TCP.
    still_answers(0);
    let out = t.sh("dig @127.0.0.11 +tries=1 +time=5 +tcp +short vote");
    assert_eq!(out.trim(), "10.0.0.9");
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn tcp_connections_beyond_the_cap_are_closed_and_idle_ones_time_out() {
    require(&[Requirement::Netns, Requirement::Tool("dig")]);
    let t = TestNetns::new();
    let cap = 4;
    let limits = Limits {
        tcp_connections: cap,
        tcp_idle: Duration::from_secs(3),
        ..Limits::default()
    };
    let server = DnsServer::spawn_with_limits(Some(t.netns()), addr(), table(), limits).unwrap();

    // Twelve connections that never send a query.
    const CONNECTIONS: u64 = 12;
    let mut conns: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| TcpStream::connect(addr()).unwrap())
        .collect();
    // Every one of them is closed by the server: beyond the cap at once, the others when
    // idle. The 10 s read bound only keeps a broken server from hanging the test.
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        match c.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("the server sent {n} bytes unasked"),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("connection not closed by the server: {e}"),
        }
    }
    let stats = server.stats();
    eprintln!("tcp: {stats:?}");
    assert!(stats.tcp_connections_peak <= cap as u64, "{stats:?}");
    assert_eq!(stats.tcp_connections_peak, cap as u64, "{stats:?}");
    assert_eq!(
        stats.tcp_accepted + stats.tcp_rejected,
        CONNECTIONS,
        "{stats:?}"
    );
    assert_eq!(stats.tcp_rejected, CONNECTIONS - cap as u64, "{stats:?}");
    assert_eq!(stats.tcp_idle_closed, cap as u64, "{stats:?}");

    // A half-sent query (length prefix, one byte) is closed by the idle timeout as well.
    let mut slow = TcpStream::connect(addr()).unwrap();
    std::io::Write::write_all(&mut slow, &[0, 30, 0x12]).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(slow.read(&mut buf), Ok(0)),
        "a stalled query must be closed"
    );
    assert_eq!(server.stats().tcp_idle_closed, cap as u64 + 1);

    // The slots are free again: TCP queries are answered, several on one connection.
    let out = t.sh("dig @127.0.0.11 +tries=1 +time=5 +tcp +keepopen +short vote big");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"10.0.0.9"), "{out}");
    assert_eq!(lines.len(), 1 + 200, "all 200 tasks over TCP: {out}");
    assert_eq!(server.stats().tcp_connections_peak, cap as u64);
}
