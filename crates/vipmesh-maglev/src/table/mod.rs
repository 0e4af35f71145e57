//! Building and querying a Maglev lookup table.
//!
//! [`MaglevTable`] and its accessors live here; the parts of a build are submodules: each
//! backend's permutation (`permutation`), filling the slots (`fill`), the weighted turn order
//! and the quotas (`schedule`), and the frozen fingerprint (`digest`).

use crate::{Backend, BackendId, Error, TableDelta, TableSize};
use std::collections::BTreeMap;

mod digest;
mod fill;
mod permutation;
mod schedule;

use fill::populate;
pub use permutation::Permutation;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendKey, Weight};

    pub(super) fn b(id: u32, key: &str, w: u32) -> Backend {
        Backend::new(
            BackendId::new(id),
            BackendKey::new(key.as_bytes()).unwrap(),
            Weight::new(w),
        )
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
