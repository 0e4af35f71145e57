//! Golden tables: the exact output of the frozen hash and algorithm. MUST NOT CHANGE.
//!
//! If one of these fails, the tables this crate builds changed: every node running an older
//! version would send the same flows to different backends. Do not update the constants unless
//! that break is intended (and announced); the failure message prints the new values.

// Test code: helpers outside #[test] fns may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::Command;
use vipmesh_maglev::{Backend, BackendId, BackendKey, MaglevTable, Permutation, TableSize, Weight};

/// 10.0.0.1:80 … 10.0.0.5:80 with ids 1..=5, weight 1.
fn five_backends() -> Vec<Backend> {
    (1u32..=5)
        .map(|i| {
            let addr: SocketAddr = format!("10.0.0.{i}:80").parse().unwrap();
            Backend::from_socket_addr(BackendId::new(i), addr)
        })
        .collect()
}

/// Keys "a", "b", "c" with ids 0, 1, 2 and weights 1, 2, 3.
fn weighted_backends() -> Vec<Backend> {
    ["a", "b", "c"]
        .iter()
        .zip(0u32..)
        .map(|(k, i)| {
            Backend::new(
                BackendId::new(i),
                BackendKey::new(k.as_bytes()).unwrap(),
                Weight::new(i + 1),
            )
        })
        .collect()
}

#[test]
fn golden_permutation() {
    let key = BackendKey::from_socket_addr("10.0.0.1:80".parse().unwrap());
    assert_eq!(
        key.permutation(TableSize::DEFAULT),
        Permutation {
            offset: GOLDEN_PERM.0,
            skip: GOLDEN_PERM.1
        }
    );
}

const GOLDEN_PERM: (u32, u32) = (1621, 20680);
const GOLDEN_FIVE_FIRST: [u32; 16] = [5, 3, 4, 1, 1, 2, 2, 2, 1, 3, 1, 2, 2, 2, 3, 5];
const GOLDEN_FIVE_DIGEST: u64 = 0xc217_13f8_1ade_280c;
const GOLDEN_WEIGHTED_FIRST: [u32; 32] = [
    0, 2, 2, 2, 1, 1, 2, 0, 0, 2, 1, 2, 2, 2, 0, 2, 1, 0, 1, 1, 2, 1, 0, 2, 2, 2, 1, 2, 1, 1, 1, 2,
];
const GOLDEN_WEIGHTED_DIGEST: u64 = 0xef06_8328_0339_96a9;

#[test]
fn golden_equal_weights() {
    let table = MaglevTable::build(TableSize::DEFAULT, &five_backends()).unwrap();
    let first: Vec<u32> = table.as_slice()[..16].to_vec();
    assert_eq!(
        (first.as_slice(), table.digest()),
        (&GOLDEN_FIVE_FIRST[..], GOLDEN_FIVE_DIGEST),
        "the equal-weight golden table changed: first slots {first:?}, digest {:#018x}",
        table.digest()
    );
    let counts: Vec<u32> = table.slot_counts().into_values().collect();
    assert_eq!(counts, vec![13108, 13108, 13107, 13107, 13107]);
}

#[test]
fn golden_weighted() {
    let size = TableSize::new(251).unwrap();
    let table = MaglevTable::build(size, &weighted_backends()).unwrap();
    let first: Vec<u32> = table.as_slice()[..32].to_vec();
    assert_eq!(
        (first.as_slice(), table.digest()),
        (&GOLDEN_WEIGHTED_FIRST[..], GOLDEN_WEIGHTED_DIGEST),
        "the weighted golden table changed: first slots {first:?}, digest {:#018x}",
        table.digest()
    );
    // 251 · (1, 2, 3) / 6 = 41.83, 83.67, 125.5: largest remainders get the two extra slots.
    let counts: Vec<u32> = table.slot_counts().into_values().collect();
    assert_eq!(counts, vec![42, 84, 125]);
}

/// The environment variable that makes `child_prints_its_table` print instead of skipping.
const CHILD: &str = "VIPMESH_MAGLEV_GOLDEN_CHILD";

/// Runs in the child process: builds the five-backend table from a reversed input and prints it.
#[test]
fn child_prints_its_table() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let mut input = five_backends();
    input.reverse();
    let table = MaglevTable::build(TableSize::DEFAULT, &input).unwrap();
    println!("MAGLEV-DIGEST {:016x}", table.digest());
    println!("MAGLEV-SUM {}", checksum(table.as_slice()));
}

/// A position-weighted checksum of every slot, independent of the crate's own hash.
fn checksum(slots: &[u32]) -> u64 {
    slots.iter().zip(1u64..).fold(0u64, |acc, (&id, pos)| {
        acc.wrapping_mul(1_000_003)
            .wrapping_add(u64::from(id) * pos)
    })
}

/// A second process (this test binary, run again) builds the same table: nothing depends on
/// per-process state such as hash-map seeds or addresses.
#[test]
fn a_second_process_builds_the_same_table() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "--exact",
            "child_prints_its_table",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "child failed: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |tag: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.find(tag).map(|at| &l[at + tag.len()..]))
            .unwrap_or_else(|| panic!("no {tag} in child output:\n{stdout}"))
            .trim()
            .to_string()
    };
    let table = MaglevTable::build(TableSize::DEFAULT, &five_backends()).unwrap();
    assert_eq!(line("MAGLEV-DIGEST "), format!("{:016x}", table.digest()));
    assert_eq!(line("MAGLEV-SUM "), checksum(table.as_slice()).to_string());
    assert_eq!(table.digest(), GOLDEN_FIVE_DIGEST);
}
