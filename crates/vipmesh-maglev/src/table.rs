//! Building and querying a Maglev lookup table.

use crate::hash::{OFFSET_KEY, SKIP_KEY, SipHasher24, siphash24};
use crate::{Backend, BackendId, Error, TableDelta, TableSize};
use std::cmp::Ordering;
use std::collections::binary_heap::PeekMut;
use std::collections::{BTreeMap, BinaryHeap};

/// Key of [`MaglevTable::digest`], as the 16 ASCII bytes `vipmesh-mgdigest`. MUST NOT CHANGE.
const DIGEST_KEY: [u8; 16] = *b"vipmesh-mgdigest";

/// A Maglev lookup table: `M` slots, each holding the [`BackendId`] of one backend.
///
/// The dataplane hashes a packet's flow (its 5-tuple) to a `u32` `h` and sends it to the backend
/// in slot `h % M` ([`MaglevTable::lookup`]). Build a table with [`MaglevTable::build`]; write
/// [`MaglevTable::as_slice`] into a BPF array map whole, or only the slots a
/// [`TableDelta`] lists.
///
/// A table is immutable and always valid. Two tables built from the same backends (same keys,
/// weights and ids, in any order) are equal, on any node and in any process.
///
/// # The empty table
///
/// With no backend, or only backends of weight 0, [`MaglevTable::build`] succeeds and returns
/// an *empty* table: [`MaglevTable::is_empty`] is true, [`MaglevTable::as_slice`] is empty
/// (length 0, not `M`), and [`MaglevTable::lookup`] returns `None` for every hash. It keeps its
/// size, so it can be diffed against a full table of the same size (every slot then changes
/// from or to `None`). What a packet for a service without backends becomes is the dataplane's
/// decision (see `vipmesh-xdp`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MaglevTable {
    size: TableSize,
    /// Every backend given, sorted by key (weight 0 included).
    backends: Vec<Backend>,
    /// `size` ids, or none for the empty table.
    slots: Vec<u32>,
}

impl MaglevTable {
    /// Builds the table of size `size` for `backends`.
    ///
    /// # Algorithm
    ///
    /// Maglev (Eisenbud et al., NSDI 2016, §3.4), with weights as the paper suggests ("altering
    /// the relative frequency of the backends' turns"):
    ///
    /// 1. Backends are sorted by key, so the input order never matters. Backends of weight 0
    ///    are left out; the `N` others take part.
    /// 2. Each backend's preference list is the permutation
    ///    `offset, offset + skip, offset + 2·skip, … (mod M)`, where
    ///    `offset = SipHash-2-4(OFFSET_KEY, key) mod M` and
    ///    `skip = SipHash-2-4(SKIP_KEY, key) mod (M − 1) + 1` (the frozen hash; see
    ///    [`OFFSET_KEY`](crate::OFFSET_KEY)). `M` prime makes every permutation visit every slot.
    /// 3. Each backend's slot count, its *quota*, is its exact share `M · w / W` (`W` the sum of
    ///    the weights) rounded by the largest-remainder method: everyone gets the floor, and
    ///    the slots left over go one each to the largest fractional parts (ties to the smaller
    ///    key). So a count is never a whole slot away from its exact share, and the quotas sum
    ///    to `M`.
    /// 4. Backends take turns; at each turn a backend claims the first free slot of its
    ///    permutation. The `k`-th turn of a backend of weight `w` falls at virtual time `k / w`
    ///    (stride scheduling: turns proportional to weight, evenly interleaved); turns at the
    ///    same time go to the larger weight first, then to the smaller key. A backend stops
    ///    when it reaches its quota.
    ///
    /// With equal weights, step 4 is the paper's round robin and the table is exactly the
    /// paper's Maglev table (a fast path computes it without the scheduler). With unequal
    /// weights, the turns are put in that order by a radix sort on an integer clock rather than
    /// taken from a priority queue, which is faster with many distinct weights.
    ///
    /// # Guarantees
    ///
    /// - Each backend's slot count differs from `M · w / W` by less than one slot. With equal
    ///   weights the counts are `⌊M/N⌋` or `⌈M/N⌉`, so the imbalance is at most
    ///   `1/⌊M/N⌋`, which is ≤ 1 % once `M > 100 · N`
    ///   ([`TableSize::is_balanced_for`]). A backend whose share is below one slot may get none.
    /// - Removing one of `N` equal backends moves its own `1/N` of the slots plus a little
    ///   more: at `M = 65537`, at most `1/N + 1 %` in about 99 % of random cases (see the crate
    ///   docs and `tests/properties.rs` for the measured distribution).
    ///
    /// Building costs `O(M log M)` probes, plus about `O(M)` to order the turns with unequal
    /// weights, and allocates `4 · M` bytes for the table (and up to as much again for the
    /// turns with unequal weights); at `M = 65537` and `N = 1000` it takes about 1.4 ms with
    /// equal weights and 2.2 ms with 1000 distinct weights (see the crate's benchmark).
    ///
    /// # Errors
    ///
    /// - [`Error::DuplicateKey`] if two backends share a key;
    /// - [`Error::DuplicateId`] if two backends share an id;
    /// - [`Error::TableTooSmall`] if more than `M` backends have a non-zero weight.
    ///
    /// No backends, or only backends of weight 0, is not an error: the result is the
    /// [empty table](MaglevTable#the-empty-table).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use vipmesh_maglev::{Backend, BackendId, MaglevTable, TableSize};
    ///
    /// let backends: Vec<Backend> = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
    ///     .iter()
    ///     .enumerate()
    ///     .map(|(i, a)| Backend::from_socket_addr(BackendId::new(i as u32), a.parse().unwrap()))
    ///     .collect();
    /// let table = MaglevTable::build(TableSize::DEFAULT, &backends)?;
    /// assert_eq!(table.as_slice().len(), 65537);
    /// // Every backend gets 21845 or 21846 slots.
    /// assert!(table.slot_counts().values().all(|&c| c == 21845 || c == 21846));
    /// // The dataplane's lookup: slot `hash % M`.
    /// let hash: u32 = 0xdead_beef;
    /// assert_eq!(table.lookup(hash).map(|id| id.get()), Some(table.as_slice()[(hash % 65537) as usize]));
    ///
    /// // The input order does not matter.
    /// let mut reversed = backends.clone();
    /// reversed.reverse();
    /// assert_eq!(MaglevTable::build(TableSize::DEFAULT, &reversed)?, table);
    /// # Ok::<(), vipmesh_maglev::Error>(())
    /// ```
    pub fn build(size: TableSize, backends: &[Backend]) -> Result<Self, Error> {
        let mut sorted = backends.to_vec();
        // Ties (duplicate keys, an error below) are ordered by id so the error is deterministic.
        sorted.sort_unstable_by(|a, b| a.key().cmp(b.key()).then(a.id().cmp(&b.id())));
        if let Some(pair) = sorted.windows(2).find(|p| p[0].key() == p[1].key()) {
            return Err(Error::DuplicateKey {
                key: pair[0].key().to_string(),
                first: pair[0].id(),
                second: pair[1].id(),
            });
        }
        let mut ids: Vec<BackendId> = sorted.iter().map(Backend::id).collect();
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|p| p[0] == p[1]) {
            return Err(Error::DuplicateId { id: pair[0] });
        }

        let active: Vec<&Backend> = sorted.iter().filter(|b| !b.weight().is_zero()).collect();
        let m = size.get();
        if active.len() > m as usize {
            return Err(Error::TableTooSmall {
                table_size: m,
                backends: active.len(),
            });
        }
        let slots = if active.is_empty() {
            Vec::new()
        } else {
            populate(m, &active)
        };
        Ok(Self {
            size,
            backends: sorted,
            slots,
        })
    }

    /// [`MaglevTable::build`] with [`TableSize::DEFAULT`] (65537 slots).
    ///
    /// # Errors
    ///
    /// As [`MaglevTable::build`].
    pub fn build_default(backends: &[Backend]) -> Result<Self, Error> {
        Self::build(TableSize::DEFAULT, backends)
    }

    /// The table's size `M`.
    pub fn size(&self) -> TableSize {
        self.size
    }

    /// Whether the table has no backend (see [the empty table](MaglevTable#the-empty-table)).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slots: `M` backend ids (as written to the dataplane), or none for the empty table.
    ///
    /// Slot `i` holds the [`BackendId::get`] of the backend that packets hashing to `i` go to.
    pub fn as_slice(&self) -> &[u32] {
        &self.slots
    }

    /// The slots, by value (see [`MaglevTable::as_slice`]).
    pub fn into_vec(self) -> Vec<u32> {
        self.slots
    }

    /// The backend in slot `slot`, or `None` if `slot >= M` or the table is empty.
    pub fn get(&self, slot: u32) -> Option<BackendId> {
        self.slots.get(slot as usize).copied().map(BackendId::new)
    }

    /// The slot a flow hash selects: `hash % M`. The dataplane must compute the same.
    pub fn slot_for_hash(&self, hash: u32) -> u32 {
        hash % self.size.get()
    }

    /// The backend for a flow hash: the one in slot `hash % M`, or `None` if the table is empty.
    pub fn lookup(&self, hash: u32) -> Option<BackendId> {
        self.get(self.slot_for_hash(hash))
    }

    /// Every backend given to [`MaglevTable::build`], sorted by key (weight 0 included).
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// How many slots each backend holds, for every backend given (0 for weight 0).
    pub fn slot_counts(&self) -> BTreeMap<BackendId, u32> {
        let mut counts: BTreeMap<BackendId, u32> =
            self.backends.iter().map(|b| (b.id(), 0)).collect();
        for &id in &self.slots {
            if let Some(c) = counts.get_mut(&BackendId::new(id)) {
                *c += 1;
            }
        }
        counts
    }

    /// A 64-bit fingerprint of the table that is the same on every node, whatever ids the
    /// nodes chose. MUST NOT CHANGE.
    ///
    /// It covers the size, the keys of the backends with a non-zero weight, and which key each
    /// slot holds; not the ids. It is SipHash-2-4 under the ASCII key `vipmesh-mgdigest` of:
    /// `M` (u32), the number `n` of backends with non-zero weight (u32), each such key in key
    /// order as its length (u32) and bytes, then for each slot the position of its backend in
    /// that order (u32); every u32 little-endian.
    pub fn digest(&self) -> u64 {
        let active: Vec<&Backend> = self
            .backends
            .iter()
            .filter(|b| !b.weight().is_zero())
            .collect();
        let mut h = SipHasher24::new(&DIGEST_KEY);
        h.write_u32(self.size.get());
        h.write_u32(active.len() as u32);
        for b in &active {
            let key = b.key().as_bytes();
            h.write_u32(key.len() as u32);
            h.write(key);
        }
        let positions = Positions::new(&active);
        let mut bytes = Vec::with_capacity(self.slots.len() * 4);
        for &id in &self.slots {
            bytes.extend_from_slice(&positions.of(id).to_le_bytes());
        }
        h.write(&bytes);
        h.finish()
    }

    /// The slots that differ from `self` (the old table) to `new`: what a dataplane must write
    /// to turn one into the other.
    ///
    /// An [empty table](MaglevTable#the-empty-table) counts as `M` slots of `None`.
    ///
    /// # Errors
    ///
    /// [`Error::SizeMismatch`] if the tables' sizes differ (replace the table whole then).
    ///
    /// # Examples
    ///
    /// ```
    /// use vipmesh_maglev::{Backend, BackendId, BackendKey, MaglevTable, TableSize, Weight};
    ///
    /// let backend = |i: u32| {
    ///     Backend::new(BackendId::new(i), BackendKey::new(format!("task-{i}")).unwrap(), Weight::ONE)
    /// };
    /// let size = TableSize::new(1021)?;
    /// let old = MaglevTable::build(size, &[backend(1), backend(2), backend(3)])?;
    /// let new = MaglevTable::build(size, &[backend(1), backend(2)])?;
    /// let delta = old.diff(&new)?;
    /// // Every slot of backend 3 moves, and (almost) nothing else.
    /// assert!(delta.changes().iter().all(|c| c.new != Some(BackendId::new(3))));
    /// assert!(delta.len() >= old.slot_counts()[&BackendId::new(3)] as usize);
    /// assert!(old.diff(&old)?.is_empty());
    /// # Ok::<(), vipmesh_maglev::Error>(())
    /// ```
    pub fn diff(&self, new: &MaglevTable) -> Result<TableDelta, Error> {
        if self.size != new.size {
            return Err(Error::SizeMismatch {
                old: self.size.get(),
                new: new.size.get(),
            });
        }
        Ok(TableDelta::between(self.size, &self.slots, &new.slots))
    }
}

/// Maps backend ids to their positions in key order, for [`MaglevTable::digest`].
enum Positions {
    /// Indexed by id, when the ids are small (the usual case).
    Dense(Vec<u32>),
    /// `(id, position)` sorted by id.
    Sparse(Vec<(u32, u32)>),
}

impl Positions {
    /// Ids below this use the dense map (4 MiB at most).
    const DENSE_LIMIT: u32 = 1 << 20;

    fn new(active: &[&Backend]) -> Self {
        let max = active.iter().map(|b| b.id().get()).max().unwrap_or(0);
        if max < Self::DENSE_LIMIT {
            let mut dense = vec![u32::MAX; max as usize + 1];
            for (b, pos) in active.iter().zip(0u32..) {
                dense[b.id().get() as usize] = pos;
            }
            Self::Dense(dense)
        } else {
            let mut sparse: Vec<(u32, u32)> = active
                .iter()
                .zip(0u32..)
                .map(|(b, pos)| (b.id().get(), pos))
                .collect();
            sparse.sort_unstable();
            Self::Sparse(sparse)
        }
    }

    /// The position of `id`; every slot holds an active backend's id, so the `u32::MAX`
    /// fallback is never used.
    fn of(&self, id: u32) -> u32 {
        match self {
            Self::Dense(dense) => dense.get(id as usize).copied().unwrap_or(u32::MAX),
            Self::Sparse(sparse) => sparse
                .binary_search_by_key(&id, |&(id, _)| id)
                .map_or(u32::MAX, |i| sparse[i].1),
        }
    }
}

/// A backend's preference list in a table of size `M`: slots `offset`, `offset + skip`,
/// `offset + 2·skip`, … (mod `M`). See [`BackendKey::permutation`](crate::BackendKey::permutation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Permutation {
    /// The first slot: `SipHash-2-4(OFFSET_KEY, key) mod M`.
    pub offset: u32,
    /// The stride, in `1..M`: `SipHash-2-4(SKIP_KEY, key) mod (M − 1) + 1`.
    pub skip: u32,
}

impl Permutation {
    pub(crate) fn new(size: TableSize, key: &[u8]) -> Self {
        let m64 = u64::from(size.get());
        // `m >= 2`; both results are below `m`, so they fit a u32.
        let offset = siphash24(&OFFSET_KEY, key) % m64;
        let skip = siphash24(&SKIP_KEY, key) % (m64 - 1) + 1;
        Self {
            offset: offset as u32,
            skip: skip as u32,
        }
    }
}

/// Where one backend's permutation looks next, and its stride.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    next: u32,
    skip: u32,
}

impl Cursor {
    fn new(m: u32, key: &[u8]) -> Self {
        // `populate` is only called with the size of a valid table.
        let p = Permutation::new(TableSize::new_unchecked(m), key);
        Self {
            next: p.offset,
            skip: p.skip,
        }
    }
}

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
fn populate(m: u32, active: &[&Backend]) -> Vec<u32> {
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
struct Group {
    /// The members' weight.
    weight: u64,
    /// The group's members are `members[first..end]`, in key order.
    first: u32,
    end: u32,
    /// The number of turns: the members' largest quota.
    turns: u32,
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

/// The groups' turns in order, from [`schedule`].
#[derive(Debug)]
struct Schedule {
    /// The turns, each as `(tick << b) | g` for a turn of group `g`, where
    /// `group_mask = 2^b - 1`. A group's turns come in order, so which one each is goes without
    /// saying.
    turns: Vec<u32>,
    group_mask: u32,
    /// The turns after `turns`, as `(g, k)`: group `g` has turns `k..` left.
    beyond: Vec<(u32, u32)>,
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
/// from below one slot) are left to the priority queue in [`populate_weighted`], through
/// [`Schedule::beyond`]. So is every turn if a tick and a group number do not fit in
/// `max_bits` bits (at least 16 million ticks and groups together: only with tables of
/// millions of slots and many weights).
///
/// `scratch` must hold at least as many values as there are turns; its contents are lost.
fn schedule(
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
fn quotas(m: u32, weights: &[u32]) -> Vec<u32> {
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
struct Turn {
    k: u64,
    weight: u64,
    owner: u32,
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
    use crate::{BackendKey, Weight};
    use proptest::strategy::Strategy;

    fn b(id: u32, key: &str, w: u32) -> Backend {
        Backend::new(
            BackendId::new(id),
            BackendKey::new(key.as_bytes()).unwrap(),
            Weight::new(w),
        )
    }

    #[test]
    fn quotas_are_exact_shares() {
        assert_eq!(quotas(7, &[1, 1, 1]), vec![3, 2, 2]);
        assert_eq!(quotas(65537, &[1000, 1, 1]), vec![65406, 66, 65]);
        assert_eq!(quotas(11, &[u32::MAX, 1]), vec![11, 0]);
        assert_eq!(quotas(5, &[1; 5]), vec![1; 5]);
    }

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

    #[test]
    fn tiny_tables() {
        let two = TableSize::new(2).unwrap();
        let t = MaglevTable::build(two, &[b(9, "a", 1), b(8, "b", 1)]).unwrap();
        let mut s = t.as_slice().to_vec();
        s.sort();
        assert_eq!(s, vec![8, 9]);
        let t = MaglevTable::build(two, &[b(9, "a", 1)]).unwrap();
        assert_eq!(t.as_slice(), &[9, 9]);
        assert_eq!(
            MaglevTable::build(two, &[b(1, "a", 1), b(2, "b", 1), b(3, "c", 1)]),
            Err(Error::TableTooSmall {
                table_size: 2,
                backends: 3
            })
        );
        // Weight 0 backends do not count against the size.
        assert!(MaglevTable::build(two, &[b(1, "a", 1), b(2, "b", 1), b(3, "c", 0)]).is_ok());
        // M == N: every backend of equal weight gets exactly one slot.
        let five = TableSize::new(5).unwrap();
        let all: Vec<Backend> = (0..5).map(|i| b(i, &format!("x{i}"), 7)).collect();
        let t = MaglevTable::build(five, &all).unwrap();
        let mut s = t.as_slice().to_vec();
        s.sort();
        assert_eq!(s, vec![0, 1, 2, 3, 4]);
        // Weights 1..=5 over 5 slots: shares 1/3, 2/3, 1, 4/3, 5/3 round to 0, 1, 1, 1, 2.
        let all: Vec<Backend> = (0..5).map(|i| b(i, &format!("x{i}"), i + 1)).collect();
        let t = MaglevTable::build(five, &all).unwrap();
        let mut s = t.as_slice().to_vec();
        s.sort();
        assert_eq!(s, vec![1, 2, 3, 4, 4]);
    }

    #[test]
    fn empty_tables() {
        let size = TableSize::new(251).unwrap();
        for backends in [vec![], vec![b(1, "a", 0), b(2, "b", 0)]] {
            let t = MaglevTable::build(size, &backends).unwrap();
            assert!(t.is_empty());
            assert_eq!(t.as_slice(), &[] as &[u32]);
            assert_eq!(t.lookup(0), None);
            assert_eq!(t.lookup(u32::MAX), None);
            assert_eq!(t.size(), size);
            assert!(t.slot_counts().values().all(|&c| c == 0));
        }
    }

    #[test]
    fn duplicates_are_rejected() {
        let size = TableSize::DEFAULT;
        assert_eq!(
            MaglevTable::build(size, &[b(7, "same", 1), b(3, "same", 0)]),
            Err(Error::DuplicateKey {
                key: "73616d65".into(),
                first: BackendId::new(3),
                second: BackendId::new(7)
            })
        );
        assert_eq!(
            MaglevTable::build(size, &[b(7, "a", 1), b(7, "b", 1)]),
            Err(Error::DuplicateId {
                id: BackendId::new(7)
            })
        );
        let e = MaglevTable::build(size, &[b(7, "a", 1), b(7, "b", 1)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("id 7"), "{e}");
    }

    #[test]
    fn weight_zero_is_the_same_as_absent() {
        let size = TableSize::new(4093).unwrap();
        let with = [b(1, "a", 3), b(2, "b", 0), b(3, "c", 1)];
        let without = [b(1, "a", 3), b(3, "c", 1)];
        let t1 = MaglevTable::build(size, &with).unwrap();
        let t2 = MaglevTable::build(size, &without).unwrap();
        assert_eq!(t1.as_slice(), t2.as_slice());
        assert_eq!(t1.digest(), t2.digest());
        assert_eq!(t1.slot_counts()[&BackendId::new(2)], 0);
    }

    #[test]
    fn ids_do_not_change_the_shape_or_digest() {
        let size = TableSize::new(4093).unwrap();
        let t1 = MaglevTable::build(size, &[b(1, "a", 2), b(2, "b", 1)]).unwrap();
        let t2 = MaglevTable::build(size, &[b(20, "a", 2), b(10, "b", 1)]).unwrap();
        let mapped: Vec<u32> = t1
            .as_slice()
            .iter()
            .map(|&id| if id == 1 { 20 } else { 10 })
            .collect();
        assert_eq!(mapped, t2.as_slice());
        assert_eq!(t1.digest(), t2.digest());
        let t3 = MaglevTable::build(size, &[b(1, "a", 1), b(2, "b", 2)]).unwrap();
        assert_ne!(t1.digest(), t3.digest());
    }

    #[test]
    fn diff_needs_equal_sizes() {
        let a = MaglevTable::build(TableSize::new(251).unwrap(), &[b(1, "a", 1)]).unwrap();
        let c = MaglevTable::build(TableSize::new(257).unwrap(), &[b(1, "a", 1)]).unwrap();
        assert_eq!(a.diff(&c), Err(Error::SizeMismatch { old: 251, new: 257 }));
        let e = a.diff(&c).unwrap_err().to_string();
        assert!(
            e.contains("251") && e.contains("257") && e.contains("table_size"),
            "{e}"
        );
        let empty = MaglevTable::build(TableSize::new(251).unwrap(), &[]).unwrap();
        assert_eq!(empty.diff(&empty).map(|d| d.len()), Ok(0));
        assert_eq!(empty.diff(&a).map(|d| d.len()), Ok(251));
    }

    #[test]
    fn digest_ignores_ids_even_when_sparse() {
        let size = TableSize::new(1021).unwrap();
        let small = [b(0, "a", 1), b(1, "b", 3), b(2, "c", 0)];
        let large = [b(u32::MAX, "a", 1), b(1 << 20, "b", 3), b(7, "c", 0)];
        let t1 = MaglevTable::build(size, &small).unwrap();
        let t2 = MaglevTable::build(size, &large).unwrap();
        assert_eq!(t1.digest(), t2.digest());
        let empty = MaglevTable::build(size, &[]).unwrap();
        assert_ne!(empty.digest(), t1.digest());
        assert_ne!(
            empty.digest(),
            MaglevTable::build(TableSize::new(251).unwrap(), &[])
                .unwrap()
                .digest()
        );
    }

    #[test]
    fn accessors() {
        let size = TableSize::new(251).unwrap();
        let t = MaglevTable::build(size, &[b(4, "z", 1), b(5, "y", 1)]).unwrap();
        assert_eq!(t.backends()[0].key().as_bytes(), b"y");
        assert_eq!(t.get(251), None);
        assert_eq!(t.get(0).map(BackendId::get), Some(t.as_slice()[0]));
        assert_eq!(t.slot_for_hash(252), 1);
        assert_eq!(t.lookup(252), t.get(1));
        assert_eq!(
            MaglevTable::build_default(&[]).unwrap().size(),
            TableSize::DEFAULT
        );
        assert_eq!(t.clone().into_vec(), t.as_slice());
    }
}
