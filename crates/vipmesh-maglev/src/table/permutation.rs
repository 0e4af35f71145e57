//! A backend's permutation of the slots ([`Permutation`]), and the cursor that walks it while
//! the table fills.

use crate::TableSize;
use crate::hash::{OFFSET_KEY, SKIP_KEY, siphash24};

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
pub(super) struct Cursor {
    pub(super) next: u32,
    pub(super) skip: u32,
}

impl Cursor {
    pub(super) fn new(m: u32, key: &[u8]) -> Self {
        // `populate` is only called with the size of a valid table.
        let p = Permutation::new(TableSize::new_unchecked(m), key);
        Self {
            next: p.offset,
            skip: p.skip,
        }
    }
}
