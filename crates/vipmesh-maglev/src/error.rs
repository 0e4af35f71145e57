//! The crate's one error type.

use crate::BackendId;

/// Everything that can go wrong building or comparing Maglev tables.
///
/// Each variant names the offending field and carries its value. Nothing in this crate panics on
/// bad input, and a failed call leaves nothing half-built: either a complete, valid value is
/// returned or an error is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The table size is not a prime number (Maglev's permutations need a prime size).
    #[error("invalid table_size {value}: not prime (use e.g. 65537, 16381, 4093, 1021 or 251)")]
    TableSizeNotPrime {
        /// The size given.
        value: u64,
    },
    /// The table size is outside the supported range.
    #[error("invalid table_size {value}: must lie in {min}..={max}")]
    TableSizeOutOfRange {
        /// The size given.
        value: u64,
        /// The smallest supported size ([`TableSize::MIN`](crate::TableSize::MIN)).
        min: u32,
        /// The largest supported size ([`TableSize::MAX`](crate::TableSize::MAX)).
        max: u32,
    },
    /// There are more backends with a non-zero weight than slots in the table.
    #[error(
        "invalid table_size {table_size}: smaller than the {backends} backends with a non-zero \
         weight (need table_size >= backends, and > 100 x backends for 1 % balance)"
    )]
    TableTooSmall {
        /// The table size.
        table_size: u32,
        /// The number of backends with a non-zero weight.
        backends: usize,
    },
    /// A backend key is empty.
    #[error("invalid backend key: empty (a key needs 1..={max} bytes)")]
    EmptyKey {
        /// The longest key allowed.
        max: usize,
    },
    /// A backend key is longer than [`BackendKey::MAX_LEN`](crate::BackendKey::MAX_LEN).
    #[error("invalid backend key: {len} bytes, longer than the {max} allowed")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// The longest key allowed.
        max: usize,
    },
    /// Two backends have the same key.
    #[error("invalid backends: key {key} appears twice (ids {first} and {second})")]
    DuplicateKey {
        /// The repeated key, in hex.
        key: String,
        /// The id of one backend with that key.
        first: BackendId,
        /// The id of the other.
        second: BackendId,
    },
    /// Two backends have the same id.
    #[error("invalid backends: id {id} appears twice")]
    DuplicateId {
        /// The repeated id.
        id: BackendId,
    },
    /// Two tables of different sizes cannot be compared slot by slot.
    #[error("cannot diff tables: old table_size {old} differs from new table_size {new}")]
    SizeMismatch {
        /// The old table's size.
        old: u32,
        /// The new table's size.
        new: u32,
    },
}
