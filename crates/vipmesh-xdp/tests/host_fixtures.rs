//! Packet fixtures through `BPF_PROG_TEST_RUN` on the host kernel, in the style of Katran's:
//! an input frame, the expected verdict and the expected output (checksums verified).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use vipmesh_testkit::{
    TestNetns,
    packet::{self, ACK, FIN, PSH, RST, SYN},
};
use vipmesh_xdp::{
    ForwardMode::{Encap, Nat},
    Program, Proto,
    Proto::{Tcp, Udp},
    ServiceKey, abi, addr_to_abi,
    verdict::*,
};

/// The MSS option's value, walking the options as a TCP stack does (EOL ends, NOP is one byte,
/// anything malformed ends the walk).
fn mss_of(opts: &[u8]) -> Option<u16> {
    let mut i = 0;
    while let Some(&kind) = opts.get(i) {
        match kind {
            0 => return None,
            1 => i += 1,
            _ => {
                let len = usize::from(*opts.get(i + 1)?);
                if kind == 2 && len == 4 {
                    return Some(u16::from_be_bytes([*opts.get(i + 2)?, *opts.get(i + 3)?]));
                }
                if len < 2 {
                    return None;
                }
                i += len;
            }
        }
    }
    None
}

fn flow_key(src: &str, sport: u16, dst: &str, dport: u16, proto: Proto) -> abi::FlowKey {
    let s = ip(src);
    abi::FlowKey {
        src: addr_to_abi(s),
        dst: addr_to_abi(ip(dst)),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto: proto.number(),
        family: if s.is_ipv4() { 4 } else { 6 },
        pad: 0,
    }
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn nat_v4_v6_tcp_udp_rewrites_and_keeps_checksums_valid() {
    require_xdp();
    let _ns = TestNetns::new();
    let mut fp = load(config(), 1024);
    for (vip, client, backend) in [
        ("10.0.0.1", "10.9.0.7", "10.1.0.2"),
        ("fd00::1", "fd09::7", "fd01::2"),
    ] {
        for proto in [Tcp, Udp] {
            fp.dataplane()
                .upsert_service(&service(vip, 80, proto, Nat, &[(backend, 8080)]))
                .unwrap();
            let input = pkt(client, 40000, vip, 80, proto, SYN);
            let out = fp.test_run(Program::XdpLb, &input, 1).unwrap();
            assert_eq!(out.verdict, XDP_REDIRECT, "{vip} {proto:?}");
            let p = packet::check(&out.data).unwrap_or_else(|e| panic!("{vip} {proto:?}: {e}"));
            assert_eq!(p.dst, ip(backend));
            assert_eq!(p.dport, 8080);
            assert_eq!(p.src, ip(client), "NAT keeps the client address");
            assert_eq!(p.sport, 40000);
            assert_eq!((p.smac, p.dmac), (EGRESS_MAC, BACKEND_MAC));
            assert_eq!(p.payload, b"GET / HTTP/1.0\r\n\r\n");
            assert_eq!(out.data.len(), input.len());
        }
    }
    let c = fp.dataplane().counters().unwrap();
    assert_eq!(c["redirect_nat"], 4);
    assert_eq!(c["flow_new"], 4);
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn encap_v4_v6_tcp_udp_wraps_towards_the_backend() {
    require_xdp();
    let _ns = TestNetns::new();
    let mut fp = load(config(), 1024);
    for (vip, client, backend, node) in [
        ("10.0.0.1", "10.9.0.7", "10.1.0.2", "192.0.2.1"),
        ("fd00::1", "fd09::7", "fd01::2", "fd00:ff::1"),
    ] {
        for proto in [Tcp, Udp] {
            fp.dataplane()
                .upsert_service(&service(vip, 8080, proto, Encap, &[(backend, 0)]))
                .unwrap();
            let input = pkt(client, 40000, vip, 8080, proto, SYN);
            let out = fp.test_run(Program::XdpLb, &input, 1).unwrap();
            assert_eq!(out.verdict, XDP_REDIRECT);
            let p = packet::check(&out.data).unwrap_or_else(|e| panic!("{vip} {proto:?}: {e}"));
            assert_eq!(p.outer, Some((ip(node), ip(backend))));
            assert_eq!(
                (p.src, p.sport, p.dst, p.dport),
                (ip(client), 40000, ip(vip), 8080)
            );
            assert_eq!((p.smac, p.dmac), (EGRESS_MAC, BACKEND_MAC));
            let hdr = if ip(vip).is_ipv4() { 20 } else { 40 };
            assert_eq!(out.data.len(), input.len() + hdr);
            assert_eq!(
                &out.data[14 + hdr..],
                &input[14..],
                "inner packet untouched"
            );
        }
    }
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn not_ours_and_malformed_pass_untouched() {
    require_xdp();
    let _ns = TestNetns::new();
    let mut fp = load(config(), 1024);
    fp.dataplane()
        .upsert_service(&service("10.0.0.1", 80, Tcp, Nat, &[("10.1.0.2", 8080)]))
        .unwrap();
    let good = pkt("10.9.0.7", 40000, "10.0.0.1", 80, Tcp, SYN);
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "other port",
            pkt("10.9.0.7", 40000, "10.0.0.1", 81, Tcp, SYN),
            "pass_not_ours",
        ),
        (
            "other proto (UDP)",
            pkt("10.9.0.7", 40000, "10.0.0.1", 80, Udp, 0),
            "pass_not_ours",
        ),
        (
            "other address",
            pkt("10.9.0.7", 40000, "10.0.0.2", 80, Tcp, SYN),
            "pass_not_ours",
        ),
        (
            "v6 miss",
            pkt("fd09::7", 40000, "fd00::1", 80, Tcp, SYN),
            "pass_not_ours",
        ),
    ];
    // Fragment: MF set.
    let mut frag = good.clone();
    frag[20] = 0x20;
    cases.push(("v4 fragment (MF)", frag, "pass_fragment"));
    let mut frag2 = good.clone();
    frag2[21] = 0x10; // offset 16 * 8
    cases.push(("v4 fragment (offset)", frag2, "pass_fragment"));
    // ICMP (protocol 1).
    let mut icmp = good.clone();
    icmp[23] = 1;
    cases.push(("icmp", icmp, "pass_proto"));
    // Bad IHL (4) and IHL with options (6).
    let mut ihl = good.clone();
    ihl[14] = 0x44;
    cases.push(("ihl 4", ihl, "pass_malformed"));
    let mut opts = good.clone();
    opts[14] = 0x46;
    cases.push(("ihl 6 (options)", opts, "pass_options"));
    // Truncated at every layer.
    cases.push(("eth only", good[..14].to_vec(), "pass_malformed"));
    // (Frames shorter than an Ethernet header never reach XDP: test-run refuses them with
    // EINVAL, as drivers do.)
    cases.push(("ip truncated", good[..30].to_vec(), "pass_malformed"));
    cases.push(("tcp truncated", good[..40].to_vec(), "pass_malformed"));
    // TCP data offset < 5.
    let mut doff = good.clone();
    doff[46] = 0x40;
    cases.push(("tcp doff 4", doff, "pass_malformed"));
    // Not IP (ARP).
    let mut arp = good.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    cases.push(("arp", arp, "pass_not_ip"));
    // IPv6 extension headers: hop-by-hop (0), routing (43), fragment (44), dest opts (60).
    let v6 = pkt("fd09::7", 40000, "fd00::1", 80, Tcp, SYN);
    for (nh, counter) in [
        (0u8, "pass_options"),
        (43, "pass_options"),
        (44, "pass_fragment"),
        (60, "pass_options"),
    ] {
        let mut e = v6.clone();
        e[20] = nh;
        cases.push(("v6 ext header", e, counter));
    }
    cases.push(("v6 truncated", v6[..50].to_vec(), "pass_malformed"));
    for (name, input, counter) in cases {
        let before = fp.dataplane().counters().unwrap()[counter];
        let out = fp.test_run(Program::XdpLb, &input, 1).unwrap();
        assert_eq!(out.verdict, XDP_PASS, "{name}");
        assert_eq!(
            out.data, input,
            "{name}: PASS must leave the frame untouched"
        );
        let after = fp.dataplane().counters().unwrap()[counter];
        assert_eq!(after, before + 1, "{name}: counter {counter}");
    }
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn service_without_backends_drops() {
    require_xdp();
    let _ns = TestNetns::new();
    let mut fp = load(config(), 1024);
    fp.dataplane()
        .upsert_service(&service("10.0.0.1", 80, Tcp, Nat, &[]))
        .unwrap();
    let out = fp
        .test_run(
            Program::XdpLb,
            &pkt("10.9.0.7", 40000, "10.0.0.1", 80, Tcp, SYN),
            1,
        )
        .unwrap();
    assert_eq!(out.verdict, XDP_DROP);
    // Backends appear: forwarded. They go again: dropped again.
    fp.dataplane()
        .upsert_service(&service("10.0.0.1", 80, Tcp, Nat, &[("10.1.0.2", 8080)]))
        .unwrap();
    let out = fp
        .test_run(
            Program::XdpLb,
            &pkt("10.9.0.7", 40001, "10.0.0.1", 80, Tcp, SYN),
            1,
        )
        .unwrap();
    assert_eq!(out.verdict, XDP_REDIRECT);
    fp.dataplane()
        .upsert_service(&service("10.0.0.1", 80, Tcp, Nat, &[]))
        .unwrap();
    let out = fp
        .test_run(
            Program::XdpLb,
            &pkt("10.9.0.7", 40002, "10.0.0.1", 80, Tcp, SYN),
            1,
        )
        .unwrap();
    assert_eq!(out.verdict, XDP_DROP);
    assert_eq!(fp.dataplane().counters().unwrap()["drop_no_backend"], 2);
    // Removing the service: not ours any more.
    let key = ServiceKey {
        addr: ip("10.0.0.1"),
        port: 80,
        proto: Tcp,
    };
    fp.dataplane().remove_service(&key).unwrap();
    fp.dataplane().remove_service(&key).unwrap();
    let out = fp
        .test_run(
            Program::XdpLb,
            &pkt("10.9.0.7", 40003, "10.0.0.1", 80, Tcp, SYN),
            1,
        )
        .unwrap();
    assert_eq!(out.verdict, XDP_PASS);
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn reverse_path_restores_vip_and_expires_on_fin_and_rst() {
    require_xdp();
    let _ns = TestNetns::new();
    let mut fp = load(config(), 1024);
    for (vip, client, backend) in [
        ("10.0.0.1", "10.9.0.7", "10.1.0.2"),
        ("fd00::1", "fd09::7", "fd01::2"),
    ] {
        for proto in [Tcp, Udp] {
            fp.dataplane()
                .upsert_service(&service(vip, 80, proto, Nat, &[(backend, 8080)]))
                .unwrap();
            let syn = if proto == Tcp { SYN } else { 0 };
            let fwd = fp
                .test_run(Program::XdpLb, &pkt(client, 40000, vip, 80, proto, syn), 1)
                .unwrap();
            assert_eq!(fwd.verdict, XDP_REDIRECT);
            // The backend answers (SYN-ACK) towards the client's real address.
            let mut reply = pkt(
                backend,
                8080,
                client,
                40000,
                proto,
                if proto == Tcp { SYN | ACK } else { 0 },
            );
            reply[0..6].copy_from_slice(&EGRESS_MAC);
            reply[6..12].copy_from_slice(&BACKEND_MAC);
            let out = fp.test_run(Program::TcRev, &reply, 1).unwrap();
            assert_eq!(out.verdict, TC_ACT_REDIRECT, "{vip} {proto:?}");
            let p = packet::check(&out.data).unwrap_or_else(|e| panic!("{vip} {proto:?}: {e}"));
            assert_eq!((p.src, p.sport), (ip(vip), 80), "reply comes from the VIP");
            assert_eq!((p.dst, p.dport), (ip(client), 40000));
            assert_eq!((p.dmac, p.smac), (CLIENT_MAC, NODE_MAC));
            // Traffic the LB did not translate passes tc_rev untouched.
            let other = pkt(backend, 8080, client, 40001, proto, ACK);
            let out = fp.test_run(Program::TcRev, &other, 1).unwrap();
            assert_eq!((out.verdict, out.data), (TC_ACT_OK, other));
        }
    }

    // TCP lifecycle on v4: FIN marks closing, a new SYN on the tuple is a new flow, RST removes.
    let (vip, client, backend) = ("10.0.0.1", "10.9.0.7", "10.1.0.2");
    let fk = flow_key(client, 40000, vip, 80, Tcp);
    let est = fp
        .test_run(Program::XdpLb, &pkt(client, 40000, vip, 80, Tcp, ACK), 1)
        .unwrap();
    assert_eq!(est.verdict, XDP_REDIRECT);
    let data = pkt(backend, 8080, client, 40000, Tcp, ACK | PSH);
    assert_eq!(
        fp.test_run(Program::TcRev, &data, 1).unwrap().verdict,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        fp.dataplane().maps().flow(&fk).unwrap().unwrap().state,
        abi::ST_ESTABLISHED
    );
    let flags =
        |fp: &mut vipmesh_xdp::FastPath| fp.dataplane().maps().flow(&fk).unwrap().map(|f| f.flags);
    assert_eq!(flags(&mut fp), Some(abi::FLOW_REPLIED));
    // A stale SYN-ACK (a direct, non-balanced connection reusing the tuple) is not rewritten
    // and drops the flow.
    let stale = pkt(backend, 8080, client, 40000, Tcp, SYN | ACK);
    let out = fp.test_run(Program::TcRev, &stale, 1).unwrap();
    assert_eq!((out.verdict, &out.data), (TC_ACT_OK, &stale));
    assert_eq!(flags(&mut fp), None);
    assert_eq!(fp.dataplane().counters().unwrap()["rev_stale_syn"], 1);
    // A new SYN re-creates the flow, and its SYN-ACK goes back through the VIP.
    assert_eq!(
        fp.test_run(Program::XdpLb, &pkt(client, 40000, vip, 80, Tcp, SYN), 1)
            .unwrap()
            .verdict,
        XDP_REDIRECT
    );
    assert_eq!(flags(&mut fp), Some(0));
    let out = fp.test_run(Program::TcRev, &stale, 1).unwrap();
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(packet::check(&out.data).unwrap().src, ip(vip));
    // The client starting over on an answered flow (SYN on the same tuple) expects a SYN-ACK
    // again: it is not taken for stale.
    let ack = pkt(backend, 8080, client, 40000, Tcp, ACK);
    assert_eq!(
        fp.test_run(Program::TcRev, &ack, 1).unwrap().verdict,
        TC_ACT_REDIRECT
    );
    assert_eq!(flags(&mut fp), Some(abi::FLOW_REPLIED));
    fp.test_run(Program::XdpLb, &pkt(client, 40000, vip, 80, Tcp, SYN), 1)
        .unwrap();
    assert_eq!(flags(&mut fp), Some(0));
    assert_eq!(
        fp.test_run(Program::TcRev, &stale, 1).unwrap().verdict,
        TC_ACT_REDIRECT
    );
    assert_eq!(fp.dataplane().counters().unwrap()["rev_stale_syn"], 1);
    // Client FIN: closing.
    let out = fp
        .test_run(
            Program::XdpLb,
            &pkt(client, 40000, vip, 80, Tcp, FIN | ACK),
            1,
        )
        .unwrap();
    assert_eq!(out.verdict, XDP_REDIRECT);
    assert_eq!(
        fp.dataplane().maps().flow(&fk).unwrap().unwrap().state,
        abi::ST_CLOSING
    );
    let new_before = fp.dataplane().counters().unwrap()["flow_new"];
    // A new SYN on a closing tuple is a new flow (fresh Maglev choice, fresh entry).
    fp.test_run(Program::XdpLb, &pkt(client, 40000, vip, 80, Tcp, SYN), 1)
        .unwrap();
    assert_eq!(
        fp.dataplane().counters().unwrap()["flow_new"],
        new_before + 1
    );
    assert_eq!(
        fp.dataplane().maps().flow(&fk).unwrap().unwrap().state,
        abi::ST_NEW
    );
    // Backend FIN marks the flow closing (one state for both directions).
    fp.test_run(
        Program::TcRev,
        &pkt(backend, 8080, client, 40000, Tcp, FIN | ACK),
        1,
    )
    .unwrap();
    assert_eq!(
        fp.dataplane().maps().flow(&fk).unwrap().unwrap().state,
        abi::ST_CLOSING
    );
    // Backend RST: rewritten, then the flow is gone.
    let out = fp
        .test_run(
            Program::TcRev,
            &pkt(backend, 8080, client, 40000, Tcp, RST),
            1,
        )
        .unwrap();
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert!(fp.dataplane().maps().flow(&fk).unwrap().is_none());
    // Client RST removes the forward entry.
    fp.test_run(Program::XdpLb, &pkt(client, 40000, vip, 80, Tcp, SYN), 1)
        .unwrap();
    assert!(fp.dataplane().maps().flow(&fk).unwrap().is_some());
    fp.test_run(Program::XdpLb, &pkt(client, 40000, vip, 80, Tcp, RST), 1)
        .unwrap();
    assert!(fp.dataplane().maps().flow(&fk).unwrap().is_none());
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn idle_timeout_expires_flows() {
    require_xdp();
    let _ns = TestNetns::new();
    let cfg = vipmesh_xdp::Config {
        tcp_idle: std::time::Duration::from_millis(1),
        ..config()
    };
    let mut fp = load(cfg, 1024);
    fp.dataplane()
        .upsert_service(&service("10.0.0.1", 80, Tcp, Nat, &[("10.1.0.2", 8080)]))
        .unwrap();
    fp.test_run(
        Program::XdpLb,
        &pkt("10.9.0.7", 40000, "10.0.0.1", 80, Tcp, SYN),
        1,
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let reply = pkt("10.1.0.2", 8080, "10.9.0.7", 40000, Tcp, SYN | ACK);
    let out = fp.test_run(Program::TcRev, &reply, 1).unwrap();
    assert_eq!(
        (out.verdict, &out.data),
        (TC_ACT_OK, &reply),
        "expired reverse entry is not used"
    );
    fp.test_run(
        Program::XdpLb,
        &pkt("10.9.0.7", 40000, "10.0.0.1", 80, Tcp, ACK),
        1,
    )
    .unwrap();
    let c = fp.dataplane().counters().unwrap();
    assert_eq!((c["rev_expired"], c["flow_expired"]), (1, 1));
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn decap_and_port_translation_on_the_task_side() {
    require_xdp();
    let _ns = TestNetns::new();
    let mut fp = load(config(), 1024);
    for (vip, client, backend) in [
        ("10.0.0.1", "10.9.0.7", "10.1.0.2"),
        ("fd00::1", "fd09::7", "fd01::2"),
    ] {
        for proto in [Tcp, Udp] {
            let key = ServiceKey {
                addr: ip(vip),
                port: 8080,
                proto,
            };
            fp.dataplane()
                .upsert_service(&service(vip, 8080, proto, Encap, &[(backend, 0)]))
                .unwrap();
            fp.dataplane().set_task_port(key, 80).unwrap();
            let input = pkt(client, 40000, vip, 8080, proto, SYN);
            let enc = fp.test_run(Program::XdpLb, &input, 1).unwrap();
            assert_eq!(enc.verdict, XDP_REDIRECT);
            let out = fp.test_run(Program::TcDecap, &enc.data, 1).unwrap();
            assert_eq!(out.verdict, TC_ACT_OK);
            let p = packet::check(&out.data).unwrap_or_else(|e| panic!("{vip} {proto:?}: {e}"));
            assert_eq!(p.outer, None, "decapsulated");
            assert_eq!(
                (p.src, p.sport, p.dst, p.dport),
                (ip(client), 40000, ip(vip), 80)
            );
            assert_eq!(out.data.len(), input.len());
            // The task replies from VIP:80; tc_egress makes it VIP:8080.
            let reply = pkt(vip, 80, client, 40000, proto, SYN | ACK);
            let out = fp.test_run(Program::TcEgress, &reply, 1).unwrap();
            assert_eq!(out.verdict, TC_ACT_OK);
            let p = packet::check(&out.data).unwrap();
            assert_eq!((p.src, p.sport), (ip(vip), 8080));
            // Without a translation the port is left alone.
            fp.dataplane().set_task_port(key, 8080).unwrap();
            let out = fp.test_run(Program::TcDecap, &enc.data, 1).unwrap();
            let p = packet::check(&out.data).unwrap();
            assert_eq!(p.dport, 8080);
        }
    }
    // Non-encapsulated, unrelated traffic passes tc_decap untouched.
    let other = pkt("10.9.0.7", 1, "10.1.0.2", 22, Tcp, SYN);
    let out = fp.test_run(Program::TcDecap, &other, 1).unwrap();
    assert_eq!((out.verdict, out.data), (TC_ACT_OK, other));
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn flows_stick_to_their_backend_across_table_swaps() {
    require_xdp();
    let _ns = TestNetns::new();
    let mut fp = load(config(), 4096);
    let b = [("10.1.0.2", 8080), ("10.1.0.3", 8080), ("10.1.0.4", 8080)];
    fp.dataplane()
        .upsert_service(&service("10.0.0.1", 80, Tcp, Nat, &b))
        .unwrap();
    let mut placed = Vec::new();
    for port in 10000..10300u16 {
        let out = fp
            .test_run(
                Program::XdpLb,
                &pkt("10.9.0.7", port, "10.0.0.1", 80, Tcp, SYN),
                1,
            )
            .unwrap();
        placed.push(packet::check(&out.data).unwrap().dst);
    }
    for a in b {
        let n = placed.iter().filter(|d| **d == ip(a.0)).count();
        assert!(n > 50, "Maglev spreads flows: {a:?} got {n} of 300");
    }
    // Replace 10.1.0.4 by 10.1.0.5: established flows stay where they are, unless their
    // backend is gone.
    fp.dataplane()
        .upsert_service(&service(
            "10.0.0.1",
            80,
            Tcp,
            Nat,
            &[b[0], b[1], ("10.1.0.5", 8080)],
        ))
        .unwrap();
    for (i, port) in (10000..10300u16).enumerate() {
        let out = fp
            .test_run(
                Program::XdpLb,
                &pkt("10.9.0.7", port, "10.0.0.1", 80, Tcp, ACK),
                1,
            )
            .unwrap();
        let now = packet::check(&out.data).unwrap().dst;
        if placed[i] == ip("10.1.0.4") {
            assert_ne!(now, ip("10.1.0.4"), "flows of the removed backend move");
        } else {
            assert_eq!(now, placed[i], "flow {port} stays on its backend");
        }
    }
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn replies_of_a_backend_shared_by_two_vips_leave_as_the_right_vip() {
    require_xdp();
    let _ns = TestNetns::new();
    let mut fp = load(config(), 1024);
    let backend = ("10.1.0.2", 8080);
    for vip in ["10.0.0.1", "10.0.0.2"] {
        fp.dataplane()
            .upsert_service(&service(vip, 80, Tcp, Nat, &[backend]))
            .unwrap();
    }
    // Two flows on one backend address and port, one per VIP. (The same client port towards
    // both would be one connection to the backend: the backend's own stack could not tell them
    // apart, so neither can the reverse path. Kernel NAT avoids it by rewriting the source
    // port; a source-preserving fast path cannot.)
    let flows = [("10.0.0.1", 40000), ("10.0.0.2", 40001)];
    for (vip, sport) in flows {
        let out = fp
            .test_run(
                Program::XdpLb,
                &pkt("10.9.0.7", sport, vip, 80, Tcp, SYN),
                1,
            )
            .unwrap();
        assert_eq!(packet::check(&out.data).unwrap().dst, ip(backend.0));
    }
    for (vip, sport) in flows {
        let reply = pkt(backend.0, backend.1, "10.9.0.7", sport, Tcp, SYN | ACK);
        let out = fp.test_run(Program::TcRev, &reply, 1).unwrap();
        assert_eq!(out.verdict, TC_ACT_REDIRECT, "{vip} {sport}");
        let p = packet::check(&out.data).unwrap();
        assert_eq!((p.src, p.sport, p.dport), (ip(vip), 80, sport));
    }
    // A minimal frame (v4 UDP, no payload: 42 bytes, which veth does not pad) is rewritten
    // too, not dropped for being short.
    fp.dataplane()
        .upsert_service(&service("10.0.0.1", 53, Udp, Nat, &[(backend.0, 5353)]))
        .unwrap();
    let q = packet::build(&packet::Spec {
        payload: Vec::new(),
        ..spec_of("10.9.0.7", 40000, "10.0.0.1", 53, Udp)
    });
    assert_eq!(q.len(), 42);
    assert_eq!(
        fp.test_run(Program::XdpLb, &q, 1).unwrap().verdict,
        XDP_REDIRECT
    );
    let r = packet::build(&packet::Spec {
        payload: Vec::new(),
        ..spec_of(backend.0, 5353, "10.9.0.7", 40000, Udp)
    });
    let out = fp.test_run(Program::TcRev, &r, 1).unwrap();
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let p = packet::check(&out.data).unwrap();
    assert_eq!((p.src, p.sport, p.payload.len()), (ip("10.0.0.1"), 53, 0));
    // A reply no flow asked for passes untouched.
    let other = pkt(backend.0, backend.1, "10.9.0.7", 40002, Tcp, SYN | ACK);
    let out = fp.test_run(Program::TcRev, &other, 1).unwrap();
    assert_eq!((out.verdict, out.data), (TC_ACT_OK, other));
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn encap_clamps_the_mss_of_syns_to_fit_the_encap_mtu() {
    require_xdp();
    let _ns = TestNetns::new();
    let mut fp = load(config(), 1024); // encap_mtu 1500: v4 MSS <= 1440, v6 MSS <= 1400
    let mut clamped = 0;
    for (vip, client, backend, max) in [
        ("10.0.0.1", "10.9.0.7", "10.1.0.2", 1440u16),
        ("fd00::1", "fd09::7", "fd01::2", 1400),
    ] {
        fp.dataplane()
            .upsert_service(&service(vip, 8080, Tcp, Encap, &[(backend, 0)]))
            .unwrap();
        let mss = packet::mss_option;
        // (options in, MSS expected out): first option; after a NOP (odd offset, the checksum
        // sees the field across two words); after SACK-permitted and a timestamp; already small
        // enough; no MSS at all; a malformed option before it (left alone).
        let ts = [8u8, 10, 0, 0, 0, 1, 0, 0, 0, 0];
        let cases: Vec<(Vec<u8>, Option<u16>)> = vec![
            (mss(1460).to_vec(), Some(max)),
            ([&[1u8][..], &mss(65495)].concat(), Some(max)),
            ([&[4u8, 2][..], &ts, &mss(9000)].concat(), Some(max)),
            (mss(1200).to_vec(), Some(1200)),
            ([4u8, 2].to_vec(), None),
            ([&[3u8, 0][..], &mss(9000)].concat(), None),
        ];
        for (sport, (opts, want)) in (40000u16..).zip(cases) {
            for flags in [SYN, SYN | ACK] {
                let mut sp = spec_of(client, sport, vip, 8080, Tcp);
                sp.flags = flags;
                let input = packet::build_with_tcp_options(&sp, &opts);
                let out = fp.test_run(Program::XdpLb, &input, 1).unwrap();
                assert_eq!(out.verdict, XDP_REDIRECT);
                // check() verifies the inner TCP checksum after the rewrite.
                let p = packet::check(&out.data).unwrap_or_else(|e| panic!("{vip} {opts:?}: {e}"));
                assert_eq!(mss_of(&p.tcp_options), want, "{vip} {opts:?} {flags:#x}");
                if mss_of(&opts) == want {
                    assert_eq!(&out.data[out.data.len() - input.len() + 14..], &input[14..]);
                } else {
                    clamped += 1;
                }
            }
        }
        // Task side: the SYN-ACK from VIP:target (which sets the size of the client's segments,
        // the ones the node encapsulates) is clamped by tc_egress, with or without a port
        // translation.
        for target in [80u16, 8080] {
            let key = ServiceKey {
                addr: ip(vip),
                port: 8080,
                proto: Tcp,
            };
            fp.dataplane().set_task_port(key, target).unwrap();
            let mut sp = spec_of(vip, target, client, 40000, Tcp);
            sp.flags = SYN | ACK;
            let synack = packet::build_with_tcp_options(&sp, &[&[1u8][..], &mss(1460)].concat());
            let out = fp.test_run(Program::TcEgress, &synack, 1).unwrap();
            assert_eq!(out.verdict, TC_ACT_OK);
            let p = packet::check(&out.data).unwrap_or_else(|e| panic!("{vip} {target}: {e}"));
            assert_eq!((p.sport, mss_of(&p.tcp_options)), (8080, Some(max)));
            clamped += 1;
        }
        // Data segments and NAT services are never touched.
        let mut sp = spec_of(client, 41000, vip, 8080, Tcp);
        sp.flags = ACK;
        let data = packet::build_with_tcp_options(&sp, &mss(9000));
        let out = fp.test_run(Program::XdpLb, &data, 1).unwrap();
        let hdr = if ip(vip).is_ipv4() { 20 } else { 40 };
        assert_eq!(&out.data[14 + hdr..], &data[14..]);
    }
    fp.dataplane()
        .upsert_service(&service("10.0.0.3", 80, Tcp, Nat, &[("10.1.0.2", 8080)]))
        .unwrap();
    let mut sp = spec_of("10.9.0.7", 42000, "10.0.0.3", 80, Tcp);
    sp.flags = SYN;
    let syn = packet::build_with_tcp_options(&sp, &packet::mss_option(9000));
    let out = fp.test_run(Program::XdpLb, &syn, 1).unwrap();
    assert_eq!(
        packet::check(&out.data).unwrap().tcp_options,
        packet::mss_option(9000)
    );
    assert_eq!(
        fp.dataplane().counters().unwrap()["mss_clamped"],
        clamped as u64
    );
    assert_eq!(
        clamped, 16,
        "(3 cases x 2 flag sets + 2 task-side) x 2 families"
    );
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn a_flow_never_follows_a_reused_backend_id() {
    require_xdp();
    let _ns = TestNetns::new();
    let mut fp = load(config(), 1024);
    let a = fp
        .dataplane()
        .upsert_service(&service("10.0.0.1", 80, Tcp, Nat, &[("10.1.0.2", 8080)]))
        .unwrap();
    let syn = pkt("10.9.0.7", 40000, "10.0.0.1", 80, Tcp, SYN);
    let out = fp.test_run(Program::XdpLb, &syn, 1).unwrap();
    assert_eq!(packet::check(&out.data).unwrap().dst, ip("10.1.0.2"));
    // The flow entry exists and the hit path would take it without a service lookup.
    let fk = flow_key("10.9.0.7", 40000, "10.0.0.1", 80, Tcp);
    let flow = fp.dataplane().maps().flow(&fk).unwrap().unwrap();
    // Service A goes; service B's backend takes the freed backend id.
    fp.dataplane()
        .remove_service(&ServiceKey {
            addr: ip("10.0.0.1"),
            port: 80,
            proto: Tcp,
        })
        .unwrap();
    let b = fp
        .dataplane()
        .upsert_service(&service("10.0.0.2", 80, Tcp, Nat, &[("10.1.0.9", 8080)]))
        .unwrap();
    let reused = b.backends[&(ip("10.1.0.9"), 8080)];
    assert_eq!(reused, a.backends[&(ip("10.1.0.2"), 8080)]);
    // The reused ids (service and backend) start with zeroed statistics.
    let bkey = ServiceKey {
        addr: ip("10.0.0.2"),
        port: 80,
        proto: Tcp,
    };
    assert_eq!(b.id, a.id, "the service id is reused too");
    assert_eq!(fp.dataplane().service_stats(&bkey).unwrap().packets, 0);
    let per_backend = fp.dataplane().backend_stats(&bkey).unwrap();
    assert_eq!(per_backend[&(ip("10.1.0.9"), 8080)].packets, 0);
    assert_eq!(
        flow.backend, reused,
        "the stale flow points at the reused id"
    );
    // Its next packet is not forwarded to service B's backend: the generation differs, the
    // service lookup misses, and the packet goes to the stack untouched.
    let ack = pkt("10.9.0.7", 40000, "10.0.0.1", 80, Tcp, ACK);
    let out = fp.test_run(Program::XdpLb, &ack, 1).unwrap();
    assert_eq!((out.verdict, &out.data), (XDP_PASS, &ack));
    // The same VIP back with the backend at a new id: the flow is re-created, not followed.
    fp.dataplane()
        .upsert_service(&service("10.0.0.1", 80, Tcp, Nat, &[("10.1.0.2", 8080)]))
        .unwrap();
    let out = fp.test_run(Program::XdpLb, &ack, 1).unwrap();
    assert_eq!(packet::check(&out.data).unwrap().dst, ip("10.1.0.2"));
    let c = fp.dataplane().counters().unwrap();
    assert_eq!(
        (c["flow_hit"], c["flow_expired"], c["pass_not_ours"]),
        (0, 1, 1)
    );
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn lru_pressure_keeps_forwarding_and_counts_evictions() {
    require_xdp();
    let _ns = TestNetns::new();
    let mut fp = load(config(), 64);
    fp.dataplane()
        .upsert_service(&service(
            "10.0.0.1",
            80,
            Tcp,
            Nat,
            &[("10.1.0.2", 8080), ("10.1.0.3", 8080)],
        ))
        .unwrap();
    for port in 20000..21000u16 {
        let out = fp
            .test_run(
                Program::XdpLb,
                &pkt("10.9.0.7", port, "10.0.0.1", 80, Tcp, SYN),
                1,
            )
            .unwrap();
        assert_eq!(out.verdict, XDP_REDIRECT);
    }
    let n = fp.dataplane().maps().flow_count();
    assert!(n <= 64 + 2 * 64, "LRU holds about its capacity, has {n}");
    // The oldest flows were evicted: their next (mid-stream) packet is counted and still
    // forwarded by Maglev.
    for port in 20000..20010u16 {
        let out = fp
            .test_run(
                Program::XdpLb,
                &pkt("10.9.0.7", port, "10.0.0.1", 80, Tcp, ACK),
                1,
            )
            .unwrap();
        assert_eq!(out.verdict, XDP_REDIRECT);
    }
    let c = fp.dataplane().counters().unwrap();
    assert_eq!(c["flow_miss_midstream"], 10);
    assert_eq!(c["flow_insert_fail"], 0);
}
