//! The table's fingerprint ([`MaglevTable::digest`]): the same on every node. MUST NOT CHANGE.

use super::MaglevTable;
use crate::Backend;
use crate::hash::SipHasher24;

/// Key of [`MaglevTable::digest`], as the 16 ASCII bytes `vipmesh-mgdigest`. MUST NOT CHANGE.
const DIGEST_KEY: [u8; 16] = *b"vipmesh-mgdigest";
impl MaglevTable {
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

#[cfg(test)]
mod tests {
    use super::super::tests::b;
    use crate::{MaglevTable, TableSize};

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
}
