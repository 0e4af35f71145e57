//! Filling the slots: backends take turns claiming the first free slot of their permutation,
//! in round robin (equal weights) or in the weighted schedule's order.

use super::permutation::Cursor;
use super::schedule::{Turn, quotas, schedule};
use crate::Backend;
use std::collections::BinaryHeap;
use std::collections::binary_heap::PeekMut;

/// The largest table size for which [`Filler::claim`] tests four slots at a time: up to a
/// 256 KiB bitmap, which stays in a typical L2 cache. With a larger bitmap, the extra probes'
/// cache misses cost more than the shorter dependency chain saves (measured with 1000 backends:
/// about 20 % faster at 65 537 slots, 10 % at 2 million, 10 % slower at 4 million).
const WIDE_SCAN_MAX_SLOTS: u32 = 1 << 21;

/// The table being populated: the slots, and a bitmap of the ones taken.
///
/// The probe loop reads only the bitmap (`M / 8` bytes: 8 KiB for the default size, which fits
/// the L1 cache; allocated rounded up to a power of two) and writes a slot only when it claims
/// it.
struct Filler {
    m: u32,
    /// One bit per slot, set once taken. Its length is a power of two (`mask + 1` words), so
    /// indexing with `& mask` needs no bounds check.
    taken: Vec<u64>,
    mask: usize,
    /// Whether [`Filler::claim`] scans four slots at a time (see [`WIDE_SCAN_MAX_SLOTS`]).
    wide: bool,
    slots: Vec<u32>,
}

impl Filler {
    fn new(m: u32) -> Self {
        let words = (m as usize).div_ceil(64).next_power_of_two();
        Self {
            m,
            taken: vec![0; words],
            mask: words - 1,
            wide: m <= WIDE_SCAN_MAX_SLOTS,
            slots: vec![0; m as usize],
        }
    }

    /// Gives the first free slot of `cursor`'s permutation to `id`, and advances the cursor.
    ///
    /// The caller guarantees a free slot exists; since `m` is prime and `1 <= skip < m`, the
    /// permutation visits every slot, so the scan ends within `m` steps.
    ///
    /// After the first slot, the scan tests four slots of the permutation at a time (if `wide`):
    /// `c + skip`, `c + 2·skip`, `c + 3·skip` and `c + 4·skip` are computed independently (each
    /// needs one conditional subtraction), so the probes do not wait on one another, and the
    /// first free one of the four is taken.
    #[inline(always)]
    fn claim(&mut self, cursor: &mut Cursor, id: u32) {
        let m = self.m;
        // For `c < m` and `s < m`: `(c + s) mod m`, without a division.
        // Whether the sum wraps is a coin toss: a branch would be mispredicted half the time.
        let add = |c: u32, s: u32| {
            let c = c + s;
            std::hint::select_unpredictable(c >= m, c.wrapping_sub(m), c)
        };
        let mask = self.mask;
        let taken = &mut self.taken[..=mask];
        let bit = |taken: &[u64], c: u32| (taken[(c >> 6) as usize & mask] >> (c & 63)) & 1;
        let s1 = cursor.skip;
        let mut c = cursor.next;
        let free = if bit(taken, c) == 0 {
            c
        } else if !self.wide {
            loop {
                c = add(c, s1);
                if bit(taken, c) == 0 {
                    break c;
                }
            }
        } else {
            let s2 = add(s1, s1);
            let s3 = add(s2, s1);
            let s4 = add(s2, s2);
            let steps = [s1, s2, s3, s4];
            loop {
                let (c1, c2, c3, c4) = (add(c, s1), add(c, s2), add(c, s3), add(c, s4));
                let t = bit(taken, c1)
                    | bit(taken, c2) << 1
                    | bit(taken, c3) << 2
                    | bit(taken, c4) << 3;
                if t != 0b1111 {
                    break add(c, steps[(!t).trailing_zeros() as usize & 3]);
                }
                c = c4;
            }
        };
        taken[(free >> 6) as usize & mask] |= 1u64 << (free & 63);
        self.slots[free as usize] = id;
        cursor.next = add(free, s1);
    }
}

/// Fills a table of size `m` for `active` (sorted by key, all weights non-zero,
/// `1 <= active.len() <= m`), and returns the backends' ids per slot.
pub(super) fn populate(m: u32, active: &[&Backend]) -> Vec<u32> {
    let first = active[0].weight();
    if active.iter().all(|b| b.weight() == first) {
        populate_round_robin(m, active)
    } else {
        let weights: Vec<u32> = active.iter().map(|b| b.weight().get()).collect();
        populate_weighted(m, active, &quotas(m, &weights))
    }
}

fn cursors(m: u32, active: &[&Backend]) -> Vec<Cursor> {
    active
        .iter()
        .map(|b| Cursor::new(m, b.key().as_bytes()))
        .collect()
}

/// Equal weights: the paper's round robin, one turn each in key order until the table is full.
fn populate_round_robin(m: u32, active: &[&Backend]) -> Vec<u32> {
    // Each backend's cursor and id, side by side.
    let mut backends: Vec<(Cursor, u32)> = cursors(m, active)
        .into_iter()
        .zip(active)
        .map(|(cursor, b)| (cursor, b.id().get()))
        .collect();
    let mut filler = Filler::new(m);
    let mut left = m;
    'fill: loop {
        for (cursor, id) in &mut backends {
            filler.claim(cursor, *id);
            left -= 1;
            if left == 0 {
                break 'fill;
            }
        }
    }
    filler.slots
}

/// Weighted: turns at virtual times `k / weight`, each backend stopping at its quota. `quotas`
/// sums to `m`.
///
/// Backends of equal weight have the same turn times, so they form one *group* that takes its
/// turns together, in key order; [`schedule`] puts the groups' turns in order.
fn populate_weighted(m: u32, active: &[&Backend], quotas: &[u32]) -> Vec<u32> {
    populate_scheduled(m, active, quotas, u32::BITS)
}

/// [`populate_weighted`], with [`schedule`]'s `max_bits` (which tests set to 0 to check the
/// priority queue alone).
fn populate_scheduled(m: u32, active: &[&Backend], quotas: &[u32], max_bits: u32) -> Vec<u32> {
    let (mut members, groups) = weight_groups(m, active, quotas);
    let total_weight: u64 = active.iter().map(|b| u64::from(b.weight().get())).sum();
    let mut filler = Filler::new(m);
    // The claims below write every slot, so the slots can serve as the sort's scratch space.
    let schedule = schedule(m, total_weight, &groups, &mut filler.slots, max_bits);

    // The hot loop. A group of one takes every turn (its turns are its quota), so it needs no
    // count of its turns, and its member is kept here, one load away from the turn. Larger
    // groups (`None` here) count their turns in `next`.
    let mut solo: Vec<Option<Member>> = groups
        .iter()
        .map(|g| (g.end - g.first == 1).then(|| members[g.first as usize]))
        .collect();
    let mut next: Vec<u32> = vec![1; groups.len()];
    for &turn in &schedule.turns {
        let g = (turn & schedule.group_mask) as usize;
        if let Some(member) = &mut solo[g] {
            filler.claim(&mut member.cursor, member.id);
        } else {
            let k = next[g];
            next[g] = k + 1;
            take_turn(&mut members, &groups[g], k, &mut filler);
        }
    }
    for (group, solo) in groups.iter().zip(&solo) {
        if let Some(member) = solo {
            members[group.first as usize] = *member;
        }
    }

    // The turns after the sorted ones, in the same order, from a priority queue.
    let mut heap: BinaryHeap<Turn> = schedule
        .beyond
        .iter()
        .map(|&(g, k)| Turn {
            k: u64::from(k),
            weight: groups[g as usize].weight,
            owner: g,
        })
        .collect();
    while let Some(mut turn) = heap.peek_mut() {
        let group = &groups[turn.owner as usize];
        // `turn.k` is at most the group's turns, below 2^24.
        take_turn(&mut members, group, turn.k as u32, &mut filler);
        if turn.k < u64::from(group.turns) {
            // Re-sifts the entry when `turn` drops: one sift instead of a pop and a push.
            turn.k += 1;
        } else {
            PeekMut::pop(turn);
        }
    }
    filler.slots
}

/// `group` takes its turn `k`: each member does if its quota allows (the quotas in a group
/// differ by at most one, so this skips members only on the group's last turn).
#[inline(always)]
fn take_turn(members: &mut [Member], group: &Group, k: u32, filler: &mut Filler) {
    for member in &mut members[group.first as usize..group.end as usize] {
        if member.quota >= k {
            filler.claim(&mut member.cursor, member.id);
        }
    }
}

/// A backend taking part in the weighted schedule.
#[derive(Debug, Clone, Copy)]
struct Member {
    cursor: Cursor,
    id: u32,
    quota: u32,
}

/// A weight group: the backends of one weight.
#[derive(Debug, Clone, Copy)]
pub(super) struct Group {
    /// The members' weight.
    pub(super) weight: u64,
    /// The group's members are `members[first..end]`, in key order.
    first: u32,
    end: u32,
    /// The number of turns: the members' largest quota.
    pub(super) turns: u32,
}

/// The members with a non-zero quota, grouped by weight (groups in increasing weight, members
/// in key order), and the groups.
fn weight_groups(m: u32, active: &[&Backend], quotas: &[u32]) -> (Vec<Member>, Vec<Group>) {
    let mut order: Vec<(u32, u32)> = (0u32..)
        .zip(quotas)
        .filter(|&(_, &q)| q > 0)
        .map(|(pos, _)| (active[pos as usize].weight().get(), pos))
        .collect();
    order.sort_unstable();
    let mut members = Vec::with_capacity(order.len());
    let mut groups: Vec<Group> = Vec::new();
    for (i, &(w, pos)) in (0u32..).zip(&order) {
        let b = active[pos as usize];
        let quota = quotas[pos as usize];
        members.push(Member {
            cursor: Cursor::new(m, b.key().as_bytes()),
            id: b.id().get(),
            quota,
        });
        match groups.last_mut() {
            Some(g) if g.weight == u64::from(w) => {
                g.end = i + 1;
                g.turns = g.turns.max(quota);
            }
            _ => groups.push(Group {
                weight: u64::from(w),
                first: i,
                end: i + 1,
                turns: quota,
            }),
        }
    }
    (members, groups)
}

#[cfg(test)]
mod tests {
    use super::super::tests::b;
    use super::*;
    use crate::TableSize;
    use proptest::strategy::Strategy;

    #[test]
    fn weighted_path_equals_round_robin_for_equal_weights() {
        let m = 1021;
        let backends: Vec<Backend> = (0..37).map(|i| b(i, &format!("k{i}"), 5)).collect();
        let mut active: Vec<&Backend> = backends.iter().collect();
        active.sort_by(|x, y| x.key().cmp(y.key()));
        let round_robin = populate_round_robin(m, &active);
        let weighted = populate_weighted(m, &active, &quotas(m, &[5; 37]));
        assert_eq!(weighted, round_robin);
    }

    /// The weighted schedule as specified, written plainly: every turn of every backend at
    /// `k / weight`, ties to the larger weight, then the lower position. `populate_weighted`
    /// groups equal weights and sorts the groups' turns by tick; it must agree.
    fn reference_weighted(m: u32, active: &[&Backend], quotas: &[u32]) -> Vec<u32> {
        let mut cursors = cursors(m, active);
        let mut filler = Filler::new(m);
        // Every turn of every backend, sorted by (time, larger weight, smaller position).
        let mut turns: Vec<(u64, u64, usize)> = Vec::new();
        for (i, b) in active.iter().enumerate() {
            let w = u64::from(b.weight().get());
            turns.extend((1..=u64::from(quotas[i])).map(|k| (k, w, i)));
        }
        turns.sort_by(|a, b| {
            (a.0 * b.1)
                .cmp(&(b.0 * a.1))
                .then(b.1.cmp(&a.1))
                .then(a.2.cmp(&b.2))
        });
        for (_, _, i) in turns {
            filler.claim(&mut cursors[i], active[i].id().get());
        }
        filler.slots
    }

    /// The quotas as specified, written plainly: floors, then one more for the largest
    /// remainders, ties to the lower position.
    fn reference_quotas(m: u32, weights: &[u32]) -> Vec<u32> {
        let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
        let share = |w: u32| u128::from(m) * u128::from(w);
        let mut quotas: Vec<u32> = weights.iter().map(|&w| (share(w) / total) as u32).collect();
        let extra = m as usize - quotas.iter().map(|&q| q as usize).sum::<usize>();
        let mut order: Vec<usize> = (0..weights.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(share(weights[i]) % total), i));
        for &i in &order[..extra] {
            quotas[i] += 1;
        }
        quotas
    }

    /// Checks the weighted table for `weights` (backends `r0`, `r1`, …) against the reference,
    /// with the sorted schedule and with the priority queue alone.
    fn check_weighted(m: u32, weights: &[u32]) -> Result<(), proptest::test_runner::TestCaseError> {
        let backends: Vec<Backend> = (0u32..)
            .zip(weights)
            .map(|(i, &w)| b(i, &format!("r{i}"), w))
            .collect();
        let mut active: Vec<&Backend> = backends.iter().collect();
        active.sort_by(|x, y| x.key().cmp(y.key()));
        let w: Vec<u32> = active.iter().map(|b| b.weight().get()).collect();
        let q = quotas(m, &w);
        proptest::prop_assert_eq!(&q, &reference_quotas(m, &w));
        proptest::prop_assert_eq!(q.iter().map(|&x| u64::from(x)).sum::<u64>(), u64::from(m));
        let expected = reference_weighted(m, &active, &q);
        proptest::prop_assert_eq!(&populate_weighted(m, &active, &q), &expected);
        proptest::prop_assert_eq!(&populate_scheduled(m, &active, &q, 0), &expected);
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn grouped_schedule_matches_reference(
            weights in proptest::prop_oneof![
                // Exact ticks, many groups of several backends.
                proptest::collection::vec(1u32..6, 1..40),
                // Exact or coarse ticks, mostly one backend per group.
                proptest::collection::vec(1u32..1000, 1..40),
                // A common divisor.
                proptest::collection::vec((1u32..6).prop_map(|w| w * 1000), 1..40),
                // Coarse ticks.
                proptest::collection::vec(1u32.., 1..40),
                proptest::collection::vec(
                    proptest::sample::select(vec![1u32, 7, 65_537, 999_983, 1_000_003]),
                    1..40,
                ),
            ],
            m in proptest::sample::select(vec![41u32, 251, 1021]),
        ) {
            proptest::prop_assume!(weights.len() <= m as usize);
            check_weighted(m, &weights)?;
        }
    }

    #[test]
    fn weighted_schedules_at_the_default_size() {
        let m = TableSize::DEFAULT.get();
        // Exact ticks (the benchmark's worst case), several backends per weight, coarse ticks,
        // and weights whose shares are below one slot (the priority queue's part).
        let distinct: Vec<u32> = (1..=1000).collect();
        let cycling: Vec<u32> = (0..1000).map(|i| i % 4 + 1).collect();
        let coarse: Vec<u32> = (0..300)
            .map(|i| 1_000_000_007u32.wrapping_mul(i + 1) | 1)
            .collect();
        let mut tiny = vec![1u32; 200];
        tiny.extend([100_000_000, 99_999_989, 1_000_000]);
        for weights in [distinct, cycling, coarse, tiny] {
            check_weighted(m, &weights).unwrap();
        }
    }

    #[test]
    fn narrow_and_wide_scans_agree() {
        let m = 65537;
        let backends: Vec<Backend> = (0..100).map(|i| b(i, &format!("n{i}"), 1)).collect();
        let active: Vec<&Backend> = backends.iter().collect();
        let fill = |wide: bool| {
            let mut cursors = cursors(m, &active);
            let mut filler = Filler::new(m);
            filler.wide = wide;
            for (i, _) in (0..m).zip((0..cursors.len()).cycle()) {
                let j = i as usize % cursors.len();
                filler.claim(&mut cursors[j], j as u32);
            }
            filler.slots
        };
        assert_eq!(fill(true), fill(false));
    }
}
