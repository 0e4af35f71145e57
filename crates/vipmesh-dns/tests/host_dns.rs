//! Privileged host tests: the server runs in a fresh network namespace on 127.0.0.11:53 (as
//! Docker's embedded DNS) and is queried with the real `dig`, and with raw UDP for malformed
//! packets. Run by `cargo xtask test` (`--ignored`); each test makes and deletes its own netns.

// Test helpers fail loudly, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use vipmesh_dns::{DnsServer, DnsTable, Error};
use vipmesh_testkit::{Requirement, TestNetns, require};

const DNS: &str = "127.0.0.11";

/// Fails the calling test, with the reason, when it cannot run here.
fn require_dns() {
    require(&[Requirement::Netns, Requirement::Tool("dig")]);
}

fn addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, 11), 53))
}

fn table() -> DnsTable {
    DnsTable::builder("mesh.local.")
        .unwrap()
        .vip(
            "vote",
            [
                IpAddr::from(Ipv4Addr::new(10, 0, 0, 9)),
                IpAddr::from("fd00::9".parse::<Ipv6Addr>().unwrap()),
            ],
        )
        .unwrap()
        .tasks(
            "vote",
            [Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 11)],
        )
        .unwrap()
        .dnsrr(
            "web",
            [Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 11)],
        )
        .unwrap()
        .build()
}

/// Runs `dig @127.0.0.11 <args>` inside the test namespace and returns its stdout.
fn dig(t: &TestNetns, args: &str) -> String {
    let out = t.try_sh(&format!("dig @{DNS} +tries=1 +time=5 {args}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `status:` of dig's header line.
fn status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig output:\n{out}"))
}

/// The header flags dig prints (`qr aa rd`).
fn flags(out: &str) -> BTreeSet<&str> {
    out.split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or_else(|| panic!("no flags in dig output:\n{out}"))
        .split_whitespace()
        .collect()
}

fn msg_size(out: &str) -> usize {
    out.split("MSG SIZE  rcvd: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no MSG SIZE in dig output:\n{out}"))
}

fn lines(out: &str) -> Vec<String> {
    out.lines().map(str::to_owned).collect()
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn answers_a_aaaa_nodata_nxdomain_refused_like_docker() {
    require_dns();
    let t = TestNetns::new();
    let server = DnsServer::spawn(Some(t.netns()), addr(), table()).unwrap();

    // The seed's transcript: `dig vote` in VIP mode gives the VIP.
    assert_eq!(lines(&dig(&t, "vote +short")), ["10.0.0.9"]);
    assert_eq!(lines(&dig(&t, "VOTE.Mesh.Local +short")), ["10.0.0.9"]);
    assert_eq!(lines(&dig(&t, "vote.mesh.local AAAA +short")), ["fd00::9"]);
    assert_eq!(lines(&dig(&t, "vote +tcp +short")), ["10.0.0.9"]);

    let out = dig(&t, "vote");
    assert_eq!(status(&out), "NOERROR");
    let f = flags(&out);
    assert!(
        f.contains("aa") && f.contains("rd") && !f.contains("ra"),
        "{out}"
    );
    assert!(out.contains("ANSWER: 1,"), "{out}");

    // Other types for a known name: NODATA.
    let out = dig(&t, "vote MX");
    assert_eq!(status(&out), "NOERROR");
    assert!(out.contains("ANSWER: 0,"), "{out}");

    for name in ["nope", "nope.mesh.local", "x.vote.mesh.local"] {
        let out = dig(&t, name);
        assert_eq!(status(&out), "NXDOMAIN", "{name}: {out}");
        assert!(flags(&out).contains("aa"), "{out}");
    }
    for name in ["example.com", "vote.example.com"] {
        let out = dig(&t, name);
        assert_eq!(status(&out), "REFUSED", "{name}: {out}");
        assert!(!flags(&out).contains("ra"), "{out}");
        assert!(out.contains("ANSWER: 0,"), "{out}");
    }
    // A class other than IN.
    assert_eq!(status(&dig(&t, "-c CH version.bind TXT")), "REFUSED");

    server.shutdown().unwrap();
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn dnsrr_answers_both_tasks_in_both_orders() {
    require_dns();
    let t = TestNetns::new();
    let _server = DnsServer::spawn(Some(t.netns()), addr(), table()).unwrap();

    // 50 queries in one dig run; each answer is two lines.
    let out = dig(&t, &format!("+short {}", vec!["web"; 50].join(" ")));
    let lines = lines(&out);
    assert_eq!(lines.len(), 100, "{out}");
    let mut orders = BTreeSet::new();
    for pair in lines.chunks(2) {
        let set: BTreeSet<_> = pair.iter().map(String::as_str).collect();
        assert_eq!(set, BTreeSet::from(["10.0.0.10", "10.0.0.11"]), "{out}");
        orders.insert(pair.to_vec());
    }
    // Each order has probability 1/2 per query: both appear unless something is wrong
    // (the chance that 50 fair shuffles agree is 2^-49).
    assert_eq!(orders.len(), 2, "{out}");

    // tasks.<vip service> gives the task IPs too.
    let out = dig(&t, "tasks.vote +short");
    let got: BTreeSet<_> = out.lines().collect();
    assert_eq!(got, BTreeSet::from(["10.0.0.10", "10.0.0.11"]), "{out}");
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn big_answers_truncate_over_udp_and_complete_over_tcp() {
    require_dns();
    let t = TestNetns::new();
    let tasks: Vec<Ipv4Addr> = (0..100u32)
        .map(|i| Ipv4Addr::from(0x0a01_0000 + i))
        .collect();
    let table = DnsTable::builder("mesh.local")
        .unwrap()
        .dnsrr("big", tasks)
        .unwrap()
        .build();
    let _server = DnsServer::spawn(Some(t.netns()), addr(), table).unwrap();

    // No EDNS: at most 512 bytes, TC set, a partial answer (+ignore keeps dig on UDP).
    let out = dig(&t, "big +noedns +ignore");
    assert!(flags(&out).contains("tc"), "{out}");
    assert!(msg_size(&out) <= 512, "{out}");
    // EDNS 4096 advertised: still at most 1232 bytes.
    let out = dig(&t, "big +bufsize=4096 +ignore");
    assert!(flags(&out).contains("tc"), "{out}");
    assert!(msg_size(&out) <= 1232, "{out}");
    assert!(msg_size(&out) > 512, "{out}");
    // Over TCP, all 100; and plain dig retries over TCP on TC and gets all 100 too.
    let out = dig(&t, "big +tcp +short");
    assert_eq!(out.lines().collect::<BTreeSet<_>>().len(), 100, "{out}");
    let out = dig(&t, "big +short");
    assert_eq!(out.lines().collect::<BTreeSet<_>>().len(), 100, "{out}");
}

/// Reads datagrams until the answer to `id` arrives; every other datagram must be a FORMERR.
fn recv_answer(sock: &UdpSocket, id: u16) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    loop {
        // The 5 s read bound only keeps a broken server from hanging the test.
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no answer to query {id:#06x}: {e}"));
        let msg = &buf[..n];
        assert!(n >= 12, "short datagram {msg:?}");
        if u16::from_be_bytes([msg[0], msg[1]]) == id {
            return msg.to_vec();
        }
        assert_eq!(
            msg[3] & 0x0f,
            1,
            "a malformed packet may only get FORMERR: {msg:?}"
        );
    }
}

fn a_query(id: u16, name: &str) -> Vec<u8> {
    let [hi, lo] = id.to_be_bytes();
    let mut q = vec![hi, lo, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn malformed_packets_get_formerr_or_nothing_and_the_server_keeps_answering() {
    require_dns();
    let t = TestNetns::new();
    let _server = DnsServer::spawn(Some(t.netns()), addr(), table()).unwrap();
    // The test thread is inside the namespace (TestNetns entered it), so this socket is too.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    // A header whose question is cut inside a label: FORMERR with the same id, bare header.
    sock.send(&[0x66, 0x01, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0x3f, b'a'])
        .unwrap();
    let r = recv_answer(&sock, 0x6601);
    assert_eq!(r[3] & 0x0f, 1, "FORMERR: {r:?}");
    assert_eq!(r[2] & 0x80, 0x80, "QR set");
    assert_eq!(r.len(), 12);

    // Garbage of every size, in batches (a flood would only overflow the socket buffer), each
    // followed by a valid query that must still be answered.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for batch in 0..15u16 {
        for len in 0..20usize {
            let len = len * 15 + usize::from(batch);
            let mut pkt = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                pkt.push(x as u8);
            }
            // Keep the ids clear of the probes' (0x42xx).
            if let Some(b) = pkt.first_mut() {
                *b = 0;
            }
            sock.send(&pkt).unwrap();
        }
        let probe = 0x4200 + batch;
        sock.send(&a_query(probe, "vote")).unwrap();
        let r = recv_answer(&sock, probe);
        assert_eq!(r[3] & 0x0f, 0, "NOERROR: {r:?}");
        assert_eq!(r[r.len() - 4..], [10, 0, 0, 9]);
    }
    // A compression loop, and a response message (never answered).
    sock.send(&[
        0x00, 0x07, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
    ])
    .unwrap();
    let mut response = a_query(0x0008, "vote");
    response[2] |= 0x80;
    sock.send(&response).unwrap();
    sock.send(&a_query(0x4343, "vote")).unwrap();
    let r = recv_answer(&sock, 0x4343);
    assert_eq!(r[r.len() - 4..], [10, 0, 0, 9]);
    // And dig agrees.
    assert_eq!(lines(&dig(&t, "vote +short")), ["10.0.0.9"]);
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn update_swaps_the_table_without_restart() {
    require_dns();
    let t = TestNetns::new();
    let server = DnsServer::spawn(Some(t.netns()), addr(), table()).unwrap();
    assert_eq!(lines(&dig(&t, "vote +short")), ["10.0.0.9"]);
    let next = DnsTable::builder("mesh.local")
        .unwrap()
        .vip("vote", [Ipv4Addr::new(10, 0, 0, 99)])
        .unwrap()
        .build();
    server.update(next.clone());
    assert_eq!(*server.table(), next);
    assert_eq!(lines(&dig(&t, "vote +short")), ["10.0.0.99"]);
    assert_eq!(status(&dig(&t, "web")), "NXDOMAIN");
    server.shutdown().unwrap();
    // After shutdown the port is closed: dig gets no answer.
    let out = t.try_sh(&format!("dig @{DNS} +tries=1 +time=1 vote"));
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn bind_errors_are_typed() {
    require_dns();
    let t = TestNetns::new();
    let _server = DnsServer::spawn(Some(t.netns()), addr(), table()).unwrap();

    let err = DnsServer::spawn(Some(t.netns()), addr(), table()).unwrap_err();
    assert!(err.is_addr_in_use(), "{err:?}");
    assert!(
        matches!(err, Error::Bind { addr: a, .. } if a == addr()),
        "{err:?}"
    );

    let err =
        DnsServer::spawn(Some(t.netns()), "10.9.9.9:53".parse().unwrap(), table()).unwrap_err();
    assert!(err.is_addr_not_available(), "{err:?}");

    let err = DnsServer::spawn_in_named("vipmesh-dns-no-such-netns", addr(), table()).unwrap_err();
    assert!(err.is_netns_not_found(), "{err:?}");

    // Port 0: the kernel picks one port for UDP and TCP alike.
    let server =
        DnsServer::spawn(Some(t.netns()), "127.0.0.12:0".parse().unwrap(), table()).unwrap();
    let port = server.local_addr().port();
    assert_ne!(port, 0);
    for proto in ["+notcp", "+tcp"] {
        let out = t.sh(&format!(
            "dig @127.0.0.12 -p {port} +tries=1 +time=5 {proto} +short vote"
        ));
        assert_eq!(lines(&out), ["10.0.0.9"], "{proto}");
    }
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn serves_in_the_given_namespace_only() {
    require_dns();
    // The test thread ends up in `other`; the server must still bind in `served`.
    let served = TestNetns::new();
    let other = TestNetns::new();
    let _server = DnsServer::spawn(Some(served.netns()), addr(), table()).unwrap();
    assert_eq!(lines(&dig(&served, "vote +short")), ["10.0.0.9"]);
    let out = other.try_sh(&format!("dig @{DNS} +tries=1 +time=1 vote"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "answered in the wrong netns: {stdout}"
    );
    assert!(!stdout.contains("10.0.0.9"), "{stdout}");

    // IPv6 loopback in the served namespace works too.
    let v6 = DnsServer::spawn(Some(served.netns()), "[::1]:53".parse().unwrap(), table()).unwrap();
    let out = served.sh("dig @::1 +tries=1 +time=5 +short vote.mesh.local AAAA");
    assert_eq!(lines(&out), ["fd00::9"]);
    drop(v6);
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn spawn_and_drop_from_async_code() {
    require_dns();
    let t = TestNetns::new();
    // A caller inside a tokio runtime (as a runtime's agent would be): the server's own
    // runtime must neither nest nor be dropped in there.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = DnsServer::spawn(Some(t.netns()), addr(), table()).unwrap();
        assert_eq!(lines(&dig(&t, "vote +short")), ["10.0.0.9"]);
        drop(server);
        let err =
            DnsServer::spawn(Some(t.netns()), "10.9.9.9:53".parse().unwrap(), table()).unwrap_err();
        assert!(err.is_addr_not_available(), "{err:?}");
    });
}
