//! Byte fixtures captured from ipvsadm 1.31 on Linux 6.1.0-56-amd64 (see
//! `tests/fixtures/README.md` for the command behind each file): every message must
//! round-trip bytes -> value -> the same bytes, and what vipmesh sends for the same
//! operation must be what ipvsadm sent.

use std::path::PathBuf;

use super::ipvs::{Cmd, CmdAttr, IpvsAttrs, IpvsNlMessage};
use super::wire::{Emit, NLMSG_ERROR, NlHeader};
use crate::backend::Op;
use crate::model::{DestEntry, Family, ServiceEntry};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(format!("{name}.bin"))).unwrap()
}

fn all() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "bin").then(|| {
                (
                    p.file_stem().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_fixture_round_trips() {
    let fixtures = all();
    assert!(fixtures.len() > 100, "fixtures missing: {}", fixtures.len());
    let mut n = 0;
    for (name, bytes) in &fixtures {
        let h = NlHeader::parse(bytes, 0).unwrap();
        assert_eq!(h.len as usize, bytes.len(), "{name}");
        if h.kind == NLMSG_ERROR {
            continue;
        }
        let m = IpvsNlMessage::parse(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.buffer_len(), bytes.len(), "{name}");
        assert_eq!(&m.to_bytes().unwrap(), bytes, "{name} does not round-trip");
        n += 1;
    }
    assert!(n > 60);
}

#[test]
fn acks_carry_the_errno() {
    let ack = |name: &str| crate::client::ack_errno(&fixture(name)[16..]);
    assert_eq!(ack("add_svc_tcp_4_ack"), 0);
    assert_eq!(ack("add_dest_dup_4_ack"), libc::EEXIST);
    assert_eq!(ack("del_dest_missing_4_ack"), libc::ENOENT);
}

fn service_of(m: &IpvsNlMessage) -> ServiceEntry {
    m.message
        .cmd_attrs()
        .iter()
        .find_map(|a| match a {
            CmdAttr::Service(_, s) => Some(ServiceEntry::from_attrs(s).unwrap()),
            _ => None,
        })
        .unwrap()
}

fn dest_of(m: &IpvsNlMessage, af: Family) -> DestEntry {
    m.message
        .cmd_attrs()
        .iter()
        .find_map(|a| match a {
            CmdAttr::Dest(_, d) => Some(DestEntry::from_attrs(af, d).unwrap()),
            _ => None,
        })
        .unwrap()
}

/// What we send for `ipvsadm -A`/`-E` is byte for byte what ipvsadm sends.
#[test]
fn our_service_requests_equal_ipvsadms() {
    for (name, cmd) in [
        ("add_svc_tcp_3_request", Cmd::NEW_SERVICE),
        ("add_svc_fwm_3_request", Cmd::NEW_SERVICE),
        ("add_svc_v6_3_request", Cmd::NEW_SERVICE),
        ("add_svc_persist_mask_3_request", Cmd::NEW_SERVICE),
        ("edit_svc_3_request", Cmd::SET_SERVICE),
    ] {
        let bytes = fixture(name);
        let m = IpvsNlMessage::parse(&bytes).unwrap();
        assert_eq!(m.message.cmd, cmd);
        let svc = service_of(&m).service;
        let op = if cmd == Cmd::NEW_SERVICE {
            Op::AddService(svc)
        } else {
            Op::UpdateService(svc)
        };
        let ours = IpvsNlMessage {
            header: m.header,
            message: op.to_message(),
        };
        assert_eq!(ours.to_bytes().unwrap(), bytes, "{name}");
    }
}

/// The dest nest we send equals ipvsadm's (ipvsadm also repeats the whole service in the
/// service nest of a dest command; we send only its key, which the kernel accepts).
#[test]
fn our_dest_requests_carry_ipvsadms_dest_nest() {
    for name in [
        "add_dest_masq_3_request",
        "add_dest_route_w0_3_request",
        "add_dest_tun_gue_3_request",
        "add_dest_v6_3_request",
        "edit_dest_3_request",
        "del_dest_3_request",
    ] {
        let m = IpvsNlMessage::parse(&fixture(name)).unwrap();
        let key = m
            .message
            .cmd_attrs()
            .iter()
            .find_map(|a| match a {
                CmdAttr::Service(_, s) => Some(crate::ServiceKey::from_attrs(s).unwrap()),
                _ => None,
            })
            .unwrap();
        let d = dest_of(&m, key.family()).dest;
        let op = match m.message.cmd {
            Cmd::NEW_DEST => Op::AddDest(key, d),
            Cmd::SET_DEST => Op::UpdateDest(key, d),
            _ => Op::DelDest(key, d.key),
        };
        let theirs = m
            .message
            .cmd_attrs()
            .iter()
            .find(|a| matches!(a, CmdAttr::Dest(..)))
            .cloned();
        let ours = op.to_message();
        let ours_dest = ours
            .cmd_attrs()
            .iter()
            .find(|a| matches!(a, CmdAttr::Dest(..)))
            .cloned();
        if m.message.cmd == Cmd::DEL_DEST {
            // ipvsadm sends the whole dest for -d too; the kernel reads only addr/port/af
            let CmdAttr::Dest(_, ours_attrs) = ours_dest.unwrap() else {
                unreachable!()
            };
            let CmdAttr::Dest(_, theirs_attrs) = theirs.unwrap() else {
                unreachable!()
            };
            assert!(
                ours_attrs.iter().all(|a| theirs_attrs.contains(a)),
                "{name}"
            );
        } else {
            assert_eq!(ours_dest, theirs, "{name}");
        }
    }
}

#[test]
fn decoded_fixtures_mean_what_ipvsadm_said() {
    let m = IpvsNlMessage::parse(&fixture("add_dest_masq_3_request")).unwrap();
    let d = dest_of(&m, Family::Inet).dest;
    assert_eq!(d.key.to_string(), "10.0.0.10:8080");
    assert_eq!(
        (d.weight.get(), d.upper_threshold, d.lower_threshold),
        (3, 100, 10)
    );
    let m = IpvsNlMessage::parse(&fixture("add_dest_tun_gue_3_request")).unwrap();
    let d = dest_of(&m, Family::Inet).dest;
    assert_eq!((d.tun_type, d.tun_port), (crate::TunnelType::Gue, 6080));
    let m = IpvsNlMessage::parse(&fixture("add_svc_v6_3_request")).unwrap();
    let s = service_of(&m).service;
    assert_eq!(s.key.to_string(), "UDP [2001:db8::1]:53");
    assert!(s.flags.contains(crate::ServiceFlags::SH_PORT));
    let m = IpvsNlMessage::parse(&fixture("add_svc_persist_mask_3_request")).unwrap();
    let s = service_of(&m).service;
    assert_eq!(
        s.netmask,
        crate::Netmask::V4("255.255.255.0".parse().unwrap())
    );
    assert_eq!(s.timeout, 60);
    // GET_INFO reply: version 1.2.1, 4096 buckets
    let m = IpvsNlMessage::parse(&fixture("list_1_reply")).unwrap();
    assert_eq!(m.message.cmd, Cmd::SET_INFO);
    let IpvsAttrs::Info(info) = &m.message.attrs else {
        panic!("not info")
    };
    assert_eq!(info.len(), 2);
}

/// Bad input: every truncation of a real dump reply is an error with an offset, never a
/// panic, and a corrupted length is reported where it is.
#[test]
fn truncated_and_garbage_replies_give_offsets() {
    let bytes = fixture("list_12_reply");
    for cut in 0..bytes.len() {
        let e = IpvsNlMessage::parse(&bytes[..cut]).unwrap_err();
        assert!(e.offset <= cut, "offset {} beyond cut {cut}", e.offset);
    }
    let mut bad = bytes.clone();
    // the dest nest starts at 20; its first attribute (ADDR) length at 24 -> 2
    bad[24] = 2;
    let e = IpvsNlMessage::parse(&bad).unwrap_err();
    assert_eq!(e.offset, 24);
    assert!(e.to_string().contains("offset 24"), "{e}");
    // a port attribute of the wrong size
    let mut bad = bytes.clone();
    // PORT attr header at 44: len 6 -> 8 would swallow the next header; make it 5
    bad[44] = 5;
    assert!(IpvsNlMessage::parse(&bad).is_err());
}

mod props {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use crate::backend::Op;
    use crate::codec::ipvs::{CmdAttr, IpvsNlMessage};
    use crate::codec::wire::{Emit, NlHeader};
    use crate::model::{
        DestEntry, FwdMethod, IpvsDest, IpvsService, Netmask, Protocol, Scheduler, ServiceEntry,
        ServiceFlags, ServiceKey, TunnelFlags, TunnelType,
    };

    fn addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        ]
    }

    fn service() -> impl Strategy<Value = IpvsService> {
        let key = prop_oneof![
            (
                prop_oneof![
                    Just(Protocol::Tcp),
                    Just(Protocol::Udp),
                    Just(Protocol::Sctp)
                ],
                addr(),
                1u16..
            )
                .prop_map(|(p, a, port)| ServiceKey::addr(p, a, port)),
            (any::<bool>(), 1u32..).prop_map(|(v6, m)| {
                let af = if v6 {
                    crate::Family::Inet6
                } else {
                    crate::Family::Inet
                };
                ServiceKey::fwmark(af, m).unwrap()
            }),
        ];
        (
            key,
            0usize..14,
            0u32..64,
            any::<u32>(),
            1u8..=128,
            any::<u32>(),
        )
            .prop_map(|(key, s, flags, timeout, plen, mask)| {
                let mut svc = IpvsService::new(key, Scheduler::ALL[s].clone()).unwrap();
                svc.flags = ServiceFlags::from_bits_retain(flags) - ServiceFlags::HASHED;
                svc.timeout = timeout;
                svc.netmask = match key.family() {
                    crate::Family::Inet => Netmask::V4(Ipv4Addr::from(mask)),
                    crate::Family::Inet6 => Netmask::V6(plen),
                };
                svc
            })
    }

    fn dest() -> impl Strategy<Value = IpvsDest> {
        (
            addr(),
            any::<u16>(),
            0u32..5,
            0u32..=i32::MAX as u32,
            any::<u32>(),
            any::<u32>(),
            0u8..3,
            any::<u16>(),
            0u16..4,
        )
            .prop_map(|(a, port, fwd, w, u, l, tt, tp, tf)| {
                let mut d = IpvsDest::new(a, port, FwdMethod::from_raw(fwd).unwrap())
                    .with_weight(w)
                    .unwrap();
                d.upper_threshold = u;
                d.lower_threshold = l;
                d.tun_type = TunnelType::from_raw(tt).unwrap();
                d.tun_port = tp;
                d.tun_flags = TunnelFlags::from_bits_retain(tf);
                d
            })
    }

    proptest! {
        /// model -> request -> bytes -> request -> model is the identity.
        #[test]
        fn requests_round_trip(svc in service(), d in dest()) {
            for op in [Op::AddService(svc.clone()), Op::AddDest(svc.key, d)] {
                let m = IpvsNlMessage { header: NlHeader { kind: 0x20, flags: 5, seq: 9, pid: 0, len: 0 }, message: op.to_message() };
                let bytes = m.to_bytes().unwrap();
                let back = IpvsNlMessage::parse(&bytes).unwrap();
                prop_assert_eq!(&back.message, &m.message);
                prop_assert_eq!(back.to_bytes().unwrap(), bytes);
                for a in back.message.cmd_attrs() {
                    match (a, &op) {
                        (CmdAttr::Service(_, s), Op::AddService(want)) => {
                            prop_assert_eq!(&ServiceEntry::from_attrs(s).unwrap().service, want);
                        }
                        (CmdAttr::Service(_, s), Op::AddDest(k, _)) => {
                            prop_assert_eq!(&ServiceKey::from_attrs(s).unwrap(), k);
                        }
                        (CmdAttr::Dest(_, x), Op::AddDest(k, want)) => {
                            prop_assert_eq!(&DestEntry::from_attrs(k.family(), x).unwrap().dest, want);
                        }
                        _ => {}
                    }
                }
            }
        }

        /// Arbitrary bytes never panic the parser, and errors point inside the input.
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(e) = IpvsNlMessage::parse(&data) {
                prop_assert!(e.offset <= data.len());
            }
        }
    }
}
