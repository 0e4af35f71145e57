//! The weighted schedule: each backend's slot count (its quota), and the order of the weight
//! groups' turns.

use super::fill::Group;
use std::cmp::Ordering;

/// The groups' turns in order, from [`schedule`].
#[derive(Debug)]
pub(super) struct Schedule {
    /// The turns, each as `(tick << b) | g` for a turn of group `g`, where
    /// `group_mask = 2^b - 1`. A group's turns come in order, so which one each is goes without
    /// saying.
    pub(super) turns: Vec<u32>,
    pub(super) group_mask: u32,
    /// The turns after `turns`, as `(g, k)`: group `g` has turns `k..` left.
    pub(super) beyond: Vec<(u32, u32)>,
}

/// Ticks per turn, about, with coarse ticks (see [`schedule`]).
const COARSE_TICKS_PER_TURN: u64 = 4;

/// Exact ticks are used if they take at most this many ticks per turn (see [`schedule`]).
const MAX_EXACT_TICKS_PER_TURN: u64 = 16;

/// Puts the groups' turns in order: turn `k` of the group of weight `w` falls at time `k / w`,
/// and turns at the same time go heavier first.
///
/// A priority queue of the groups would do, but its `O(log G)` per turn for `G` groups costs
/// more than filling the table when there are many distinct weights. This is a linear-time
/// sort instead:
///
/// 1. Time is counted in integer *ticks*: turn `k` of weight `w` falls at tick `⌊k · S / w⌋`,
///    with the weights divided by their greatest common divisor and an integer scale `S`
///    at least as large as each. So a later turn never has a smaller tick, and a group's turns
///    have increasing ticks, each found from the previous by adding `S / w` and carrying the
///    remainder (no division per turn).
///    - If `S` is the product of the two largest weights, different times have different
///      ticks (`k / w < k' / w'` means `k' / w' - k / w >= 1 / (w · w') >= 1 / S`): the ticks
///      are *exact*. They are used if that takes at most `MAX_EXACT_TICKS_PER_TURN` ticks per
///      turn (as with weights up to a few thousand).
///    - Otherwise the ticks are *coarse*: `S` is `COARSE_TICKS_PER_TURN` times the sum of the
///      group weights, for about that many ticks per turn.
/// 2. The turns are listed group by group, heaviest first, each packed with its tick in a
///    `u32`, and sorted by tick with a stable radix sort: so by time, and heaviest first at
///    equal ticks. With exact ticks, that is the order.
/// 3. With coarse ticks, the turns that share a tick are then sorted exactly: times compared
///    by cross-multiplication, then heavier first.
///
/// A group of weight `w` with two turns or more has a share `m · w / W` (`W` the total weight)
/// of at least one slot, so at most `2 · m · w / W` turns, all by time `2 · m / W`. Only ticks
/// up to there are sorted; later turns (the single turns of groups whose share was rounded up
/// from below one slot) are left to the priority queue in `fill::populate_weighted`, through
/// [`Schedule::beyond`]. So is every turn if a tick and a group number do not fit in
/// `max_bits` bits (at least 16 million ticks and groups together: only with tables of
/// millions of slots and many weights).
///
/// `scratch` must hold at least as many values as there are turns; its contents are lost.
pub(super) fn schedule(
    m: u32,
    total_weight: u64,
    groups: &[Group],
    scratch: &mut [u32],
    max_bits: u32,
) -> Schedule {
    // Fewer than 2^24 groups, weights below 2^32: the sums fit a u64.
    let turn_count: u64 = groups.iter().map(|g| u64::from(g.turns)).sum();
    let divisor = groups.iter().fold(0, |d, g| gcd(d, g.weight)).max(1);
    let weight = |g: &Group| g.weight / divisor;
    // One more than the tick of time `2 · m / W`: 25 + 64 + 32 bits at most.
    let reach_for = |scale: u64| {
        2 * u128::from(m) * u128::from(scale) * u128::from(divisor)
            / u128::from(total_weight.max(1))
            + 1
    };
    let mut largest = groups.iter().rev().map(weight);
    // Two weights below 2^32: the product fits a u64.
    let exact_scale = largest.next().unwrap_or(1) * largest.next().unwrap_or(1);
    let exact_reach = reach_for(exact_scale);
    let (scale, reach, exact) = if exact_reach <= u128::from(MAX_EXACT_TICKS_PER_TURN * turn_count)
    {
        (exact_scale, exact_reach as u64, true)
    } else {
        let scale = COARSE_TICKS_PER_TURN * groups.iter().map(weight).sum::<u64>();
        // Each group has more turns than its share `m · w / W` minus one, so
        // `m · S / W < COARSE_TICKS_PER_TURN · 2 · T` for `T` turns: this `min` changes
        // nothing, and the result fits a u64.
        let reach = reach_for(scale).min(u128::from(4 * COARSE_TICKS_PER_TURN * turn_count + 1));
        (scale, reach as u64, false)
    };
    let group_bits = u32::BITS - (groups.len().max(1) as u32 - 1).leading_zeros();
    let group_mask = (1u32 << group_bits) - 1;
    let tick_bits = u64::BITS - (reach - 1).leading_zeros();
    if group_bits + tick_bits > max_bits {
        return Schedule {
            turns: Vec::new(),
            group_mask,
            beyond: (0..groups.len() as u32).map(|g| (g, 1)).collect(),
        };
    }

    let mut turns: Vec<u32> = Vec::with_capacity(turn_count as usize);
    let mut beyond = Vec::new();
    for (g, group) in (0..groups.len() as u32).zip(groups).rev() {
        let w = weight(group);
        let (step, step_rem) = (scale / w, scale % w);
        // Turn 1 at tick `⌊S / w⌋`.
        let (mut tick, mut rem) = (step, step_rem);
        for k in 1..=group.turns {
            if tick >= reach {
                beyond.push((g, k));
                break;
            }
            // `tick < reach <= 2^tick_bits` and `g <= group_mask`: fits `max_bits <= 32` bits.
            turns.push((tick << group_bits) as u32 | g);
            // `tick + step` is below 2^28 + 2^64 - 2^33 (exact: `S <= (2^32 - 1)^2`), or
            // 2^32 + 2^58 (coarse): no overflow.
            tick += step;
            rem += step_rem;
            let carry = rem >= w;
            tick += u64::from(carry);
            rem -= if carry { w } else { 0 };
        }
    }
    radix_sort(&mut turns, scratch, group_bits, tick_bits);
    if !exact {
        sort_shared_ticks(
            &mut turns,
            group_bits,
            |g| weight(&groups[g as usize]),
            scale,
        );
    }
    Schedule {
        turns,
        group_mask,
        beyond,
    }
}

/// The greatest common divisor (`gcd(0, b) = b`).
fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Sorts `values` stably by bits `low..low + bits`, with `scratch` (at least as long) as the
/// second buffer: a least significant digit radix sort, in passes of at most 11 bits.
fn radix_sort(values: &mut [u32], scratch: &mut [u32], low: u32, bits: u32) {
    const MAX_DIGIT_BITS: u32 = 11;
    let passes = bits.div_ceil(MAX_DIGIT_BITS);
    if passes == 0 {
        return;
    }
    let digit_bits = bits.div_ceil(passes);
    let scratch = &mut scratch[..values.len()];
    let mut counts = vec![0u32; 1 << digit_bits];
    for pass in 0..passes {
        let shift = low + pass * digit_bits;
        if pass % 2 == 0 {
            radix_pass(values, scratch, &mut counts, shift);
        } else {
            radix_pass(scratch, values, &mut counts, shift);
        }
    }
    if passes % 2 == 1 {
        values.copy_from_slice(scratch);
    }
}

/// One pass of [`radix_sort`]: `to` gets `from` sorted stably by the digit at `shift`, of
/// `log2(counts.len())` bits.
fn radix_pass(from: &[u32], to: &mut [u32], counts: &mut [u32], shift: u32) {
    let mask = counts.len() - 1;
    let digit = |v: u32| (v >> shift) as usize & mask;
    counts.fill(0);
    for &v in from {
        counts[digit(v)] += 1;
    }
    // Each digit's first position.
    let mut start = 0;
    for c in counts.iter_mut() {
        (*c, start) = (start, start + *c);
    }
    for &v in from {
        let c = &mut counts[digit(v)];
        to[*c as usize] = v;
        *c += 1;
    }
}

/// Sorts each run of turns that share a tick (see [`schedule`]) exactly: by time, then heavier
/// first. `weight` gives a group's (reduced) weight; `scale` is at least every weight.
fn sort_shared_ticks(turns: &mut [u32], group_bits: u32, weight: impl Fn(u32) -> u64, scale: u64) {
    let group_mask = (1u32 << group_bits) - 1;
    // A turn's time `k / w`: its `k` is the one with `⌊k · S / w⌋ = tick`, which is
    // `⌈tick · w / S⌉` since `S >= w`. `tick < 2^32` and `w < 2^32`: the product fits a u64.
    let time = |turn: u32| {
        let g = turn & group_mask;
        let w = weight(g);
        ((u64::from(turn >> group_bits) * w).div_ceil(scale), w, g)
    };
    // Earlier first, then heavier (a larger group number) first. `k < 2^24` and `w < 2^32`, so
    // the products fit a u64.
    let order = |a: &u32, b: &u32| {
        let ((ka, wa, ga), (kb, wb, gb)) = (time(*a), time(*b));
        (ka * wb).cmp(&(kb * wa)).then(gb.cmp(&ga))
    };
    for run in turns.chunk_by_mut(|a, b| a >> group_bits == b >> group_bits) {
        if run.len() > 1 {
            run.sort_unstable_by(order);
        }
    }
}

/// Each backend's slot count: its share `m · w / W`, rounded by the largest remainder (ties to
/// the lower position). The result sums to `m`.
pub(super) fn quotas(m: u32, weights: &[u32]) -> Vec<u32> {
    // `m < 2^24` and fewer than 2^24 weights below 2^32: every product and sum fits a u64.
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let mut quotas = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    for &w in weights {
        let share = u64::from(m) * u64::from(w);
        // `share / total <= m`, so it fits a u32.
        quotas.push((share / total) as u32);
        remainders.push(share % total);
    }
    let given: u64 = quotas.iter().map(|&q| u64::from(q)).sum();
    let extra = (u64::from(m) - given) as usize;
    // The `extra` largest remainders, ties to the lower position, in any order.
    let mut order: Vec<usize> = (0..weights.len()).collect();
    let largest_first = |&a: &usize, &b: &usize| remainders[b].cmp(&remainders[a]).then(a.cmp(&b));
    if extra < order.len() {
        order.select_nth_unstable_by(extra, largest_first);
    }
    for &i in order.iter().take(extra) {
        quotas[i] += 1;
    }
    quotas
}

/// A weight group's next turn, at virtual time `k / weight`. The heap pops the earliest; at
/// equal times, the heavier group (groups are numbered by increasing weight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Turn {
    pub(super) k: u64,
    pub(super) weight: u64,
    pub(super) owner: u32,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        // self.k / self.weight vs other.k / other.weight, cross-multiplied: k < 2^24 and
        // weight < 2^32, so the products fit a u64. Earlier is greater (BinaryHeap is a max-heap).
        let mine = self.k * other.weight;
        let theirs = other.k * self.weight;
        theirs.cmp(&mine).then(self.owner.cmp(&other.owner))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_are_exact_shares() {
        assert_eq!(quotas(7, &[1, 1, 1]), vec![3, 2, 2]);
        assert_eq!(quotas(65537, &[1000, 1, 1]), vec![65406, 66, 65]);
        assert_eq!(quotas(11, &[u32::MAX, 1]), vec![11, 0]);
        assert_eq!(quotas(5, &[1; 5]), vec![1; 5]);
    }
}
