//! Shared helpers for the privileged host tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;

use vipmesh_testkit::packet::{self, Spec};
use vipmesh_xdp::{
    Backend, Config, Egress, FastPath, ForwardMode, LoadOptions, MacAddr, Proto, ServiceKey,
    ServiceSpec, TableSize,
};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const EGRESS_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xe1];
pub const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb1];

/// Fails the calling test (with the reason) when privileged XDP tests cannot run here.
pub fn require_xdp() {
    vipmesh_testkit::require(&[vipmesh_testkit::Requirement::Netns]);
    if !vipmesh_xdp::object_available() {
        panic!(
            "the eBPF object was not built (clang missing?) but this machine must run XDP tests"
        );
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn load(config: Config, flow_entries: u32) -> FastPath {
    FastPath::load(&LoadOptions {
        config,
        flow_entries,
        ..LoadOptions::default()
    })
    .unwrap()
}

pub fn config() -> Config {
    Config {
        node_v4: Some("192.0.2.1".parse().unwrap()),
        node_v6: Some("fd00:ff::1".parse().unwrap()),
        ..Config::default()
    }
}

pub fn egress(ifindex: u32) -> Egress {
    Egress {
        ifindex,
        src_mac: MacAddr(EGRESS_MAC),
        dst_mac: MacAddr(BACKEND_MAC),
    }
}

pub fn service(
    vip: &str,
    port: u16,
    proto: Proto,
    mode: ForwardMode,
    backends: &[(&str, u16)],
) -> ServiceSpec {
    ServiceSpec {
        key: ServiceKey {
            addr: ip(vip),
            port,
            proto,
        },
        mode,
        backends: backends
            .iter()
            .map(|(a, p)| Backend {
                addr: ip(a),
                port: *p,
                weight: 1,
                egress: egress(1),
            })
            .collect(),
        table_size: TableSize::new(251).unwrap(),
    }
}

pub fn pkt(src: &str, sport: u16, dst: &str, dport: u16, proto: Proto, flags: u8) -> Vec<u8> {
    packet::build(&Spec {
        flags,
        payload: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        ..spec_of(src, sport, dst, dport, proto)
    })
}

/// The spec of a client → node frame: no flags, no payload.
pub fn spec_of(src: &str, sport: u16, dst: &str, dport: u16, proto: Proto) -> Spec {
    Spec {
        dmac: NODE_MAC,
        smac: CLIENT_MAC,
        src: ip(src),
        dst: ip(dst),
        proto,
        sport,
        dport,
        flags: 0,
        payload: Vec::new(),
    }
}
