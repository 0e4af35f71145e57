//! Codec throughput: encoding requests, decoding replies, and parsing a whole dump of
//! 10 000 services x 10 destinations framed as the kernel frames it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vipmesh_ipvs::codec::{
    Cmd, CmdAttr, DestAttr, Emit, IpvsMessage, IpvsNlMessage, NestFlag, NlHeader, SvcAttr, wire,
};
use vipmesh_ipvs::{
    DestEntry, Family, FwdMethod, IpvsDest, IpvsService, Op, Scheduler, ServiceEntry, ServiceKey,
    Stats,
};

fn svc_key(i: u32) -> ServiceKey {
    ServiceKey::fwmark(Family::Inet, 0x100 + i).unwrap()
}

fn dest(i: u32, j: u32) -> IpvsDest {
    let ip = Ipv4Addr::from(0x0a00_0000 + i * 16 + j);
    IpvsDest::new(IpAddr::V4(ip), 0, FwdMethod::Masq)
}

/// A dump reply as the kernel sends it: one NEW_SERVICE or NEW_DEST message per entry,
/// with 32- and 64-bit stats nests, packed into 32 KiB receive buffers.
fn kernel_dump(services: u32, dests: u32) -> Vec<Vec<u8>> {
    let stats = Stats {
        conns: 1,
        inpkts: 2,
        outpkts: 3,
        inbytes: 4,
        outbytes: 5,
        ..Stats::default()
    };
    let mut msgs = Vec::new();
    for i in 0..services {
        let mut a: Vec<SvcAttr> = vec![SvcAttr::Af(2), SvcAttr::Fwmark(0x100 + i)];
        a.extend([
            SvcAttr::SchedName(b"rr\0".to_vec()),
            SvcAttr::Flags {
                flags: 2,
                mask: u32::MAX,
            },
            SvcAttr::Timeout(0),
            SvcAttr::Netmask([255; 4]),
            SvcAttr::Stats(NestFlag::Clear, stats.to_attrs64()),
            SvcAttr::Stats64(NestFlag::Clear, stats.to_attrs64()),
        ]);
        msgs.push(IpvsMessage::new(
            Cmd::NEW_SERVICE,
            vec![CmdAttr::Service(NestFlag::Clear, a)],
        ));
        for j in 0..dests {
            let d = dest(i, j);
            let ip = match d.key.addr {
                IpAddr::V4(v4) => v4.octets(),
                IpAddr::V6(_) => unreachable!(),
            };
            let mut addr = ip.to_vec();
            addr.resize(16, 0);
            let a = vec![
                DestAttr::Addr(addr),
                DestAttr::Port(0),
                DestAttr::FwdMethod(0),
                DestAttr::Weight(1),
                DestAttr::TunType(0),
                DestAttr::TunPort(0),
                DestAttr::TunFlags(0),
                DestAttr::UThresh(0),
                DestAttr::LThresh(0),
                DestAttr::ActiveConns(3),
                DestAttr::InactConns(4),
                DestAttr::PersistConns(0),
                DestAttr::AddrFamily(2),
                DestAttr::Stats(NestFlag::Clear, stats.to_attrs64()),
                DestAttr::Stats64(NestFlag::Clear, stats.to_attrs64()),
            ];
            msgs.push(IpvsMessage::new(
                Cmd::NEW_DEST,
                vec![CmdAttr::Dest(NestFlag::Clear, a)],
            ));
        }
    }
    let mut bufs = vec![Vec::new()];
    for (seq, m) in msgs.into_iter().enumerate() {
        let bytes = IpvsNlMessage {
            header: NlHeader {
                len: 0,
                kind: 0x20,
                flags: 2,
                seq: seq as u32,
                pid: 1,
            },
            message: m,
        }
        .to_bytes()
        .unwrap();
        if bufs.last().unwrap().len() + bytes.len() > 32 * 1024 {
            bufs.push(Vec::new());
        }
        bufs.last_mut().unwrap().extend_from_slice(&bytes);
    }
    bufs
}

fn parse_dump(bufs: &[Vec<u8>]) -> (usize, usize) {
    let (mut s, mut d) = (0, 0);
    for b in bufs {
        for m in wire::messages(b) {
            let (_, body, off) = m.unwrap();
            let msg = IpvsMessage::parse(body, off).unwrap();
            for a in msg.cmd_attrs() {
                match a {
                    CmdAttr::Service(_, x) => {
                        black_box(ServiceEntry::from_attrs(x).unwrap());
                        s += 1;
                    }
                    CmdAttr::Dest(_, x) => {
                        black_box(DestEntry::from_attrs(Family::Inet, x).unwrap());
                        d += 1;
                    }
                    _ => {}
                }
            }
        }
    }
    (s, d)
}

fn bench(c: &mut Criterion) {
    let ops: Vec<Op> = (0..1000)
        .map(|i| Op::AddDest(svc_key(i), dest(i, 1)))
        .chain(
            (0..1000).map(|i| Op::AddService(IpvsService::new(svc_key(i), Scheduler::RR).unwrap())),
        )
        .collect();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(ops.len() as u64));
    g.bench_function("ops_to_netlink_2000", |b| {
        let mut buf = vec![0u8; 256];
        b.iter(|| {
            let mut total = 0;
            for op in &ops {
                let m = op.to_message();
                let n = m.buffer_len();
                if buf.len() < n {
                    buf.resize(n, 0);
                }
                total += m.emit_into(&mut buf).unwrap();
            }
            black_box(total)
        })
    });
    g.finish();

    let one = kernel_dump(1, 1);
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(one[0].len() as u64));
    g.bench_function("service_plus_dest_reply", |b| {
        b.iter(|| black_box(parse_dump(&one)))
    });
    g.finish();

    let big = kernel_dump(10_000, 10);
    let bytes: usize = big.iter().map(Vec::len).sum();
    assert_eq!(parse_dump(&big), (10_000, 100_000));
    let mut g = c.benchmark_group("dump");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("parse_10k_services_x_10_dests", |b| {
        b.iter(|| black_box(parse_dump(&big)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
