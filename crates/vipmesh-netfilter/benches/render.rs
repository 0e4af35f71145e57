//! Render 10k VIP mark rules plus their SNAT rules, diff a one-rule change at 10k, and parse a
//! 10k-rule `iptables-save` dump. Run: `cargo bench -p vipmesh-netfilter --bench render`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{Criterion, criterion_group, criterion_main};
use vipmesh_netfilter::*;

const N: u32 = 10_000;

/// 10k VIPs (one MARK each in mangle) and one `-m ipvs` SNAT per /24 subnet of VIPs.
fn ruleset(n: u32, changed: Option<u32>) -> OwnedRuleset {
    let mut rs = OwnedRuleset::new(Family::V4);
    let vip = ChainName::new("VIPMESH-VIP").unwrap();
    let snat = ChainName::new("VIPMESH-SNAT").unwrap();
    for i in 0..n {
        let addr = Ipv4Addr::from(0x0a00_0000 + i);
        let mark = if Some(i) == changed {
            0xfff_ffff
        } else {
            0x100 + i
        };
        rs.add_rule(
            Table::Mangle,
            &vip,
            Rule::new(
                Matches::new().destination(Cidr::host(addr.into())),
                Target::SetMark(Mark::new(mark)),
            ),
        )
        .unwrap();
        if i % 256 == 0 {
            rs.add_rule(
                Table::Nat,
                &snat,
                Rule::new(
                    Matches::new()
                        .destination(Cidr::new(addr.into(), 24).unwrap())
                        .ipvs(),
                    Target::Snat(Ipv4Addr::from(0x0a00_0000 + i + 2).into()),
                ),
            )
            .unwrap();
        }
    }
    for (t, from, to) in [
        (Table::Mangle, BuiltinChain::Input, &vip),
        (Table::Nat, BuiltinChain::Postrouting, &snat),
    ] {
        rs.add_jump(
            t,
            Jump {
                from,
                matches: Matches::new(),
                to: to.clone(),
                position: JumpPosition::Prepend,
            },
        )
        .unwrap();
    }
    rs
}

/// The dump the kernel would give back after applying `rs` on an empty netns.
fn dump_of(rs: &OwnedRuleset) -> String {
    let mut s = String::new();
    for (t, tr) in rs.tables() {
        s.push_str(&format!("*{t}\n"));
        for c in tr.chains.keys() {
            s.push_str(&format!(":{c} - [0:0]\n"));
        }
        for j in &tr.jumps {
            s.push_str(&format!("-A {} {}\n", j.from, j.rule()));
        }
        for (c, rules) in &tr.chains {
            for r in rules {
                s.push_str(&format!("-A {c} {r}\n"));
            }
        }
        s.push_str("COMMIT\n");
    }
    s
}

fn benches(c: &mut Criterion) {
    let empty = Observed::empty(Family::V4);
    c.bench_function("build+validate 10k VIP marks + SNAT", |b| {
        b.iter(|| black_box(ruleset(N, None)))
    });
    let rs = ruleset(N, None);
    c.bench_function("render 10k VIP marks + SNAT (plan from empty)", |b| {
        b.iter(|| black_box(plan(black_box(&rs), &empty).unwrap().to_string()))
    });
    let text = dump_of(&rs);
    c.bench_function("parse iptables-save of 10k rules", |b| {
        b.iter(|| black_box(parse_save(black_box(&text)).unwrap()))
    });
    let obs = Observed::from_dump(Family::V4, &parse_save(&text).unwrap());
    let changed = ruleset(N, Some(5000));
    c.bench_function("plan 1 changed rule at 10k (diff only)", |b| {
        b.iter(|| black_box(plan(black_box(&changed), &obs).unwrap().to_string()))
    });
    c.bench_function("observe-side: 10k dump -> Observed (parse + type)", |b| {
        b.iter(|| {
            black_box(Observed::from_dump(
                Family::V4,
                &parse_save(black_box(&text)).unwrap(),
            ))
        })
    });
}

criterion_group!(name = g; config = Criterion::default().sample_size(20); targets = benches);
criterion_main!(g);
