//! The difference between two tables of the same size.

use crate::{BackendId, TableSize};

/// One slot that differs between two tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotChange {
    /// The slot's index, `0..M`.
    pub slot: u32,
    /// The backend in the old table, `None` if the old table was empty.
    pub old: Option<BackendId>,
    /// The backend in the new table, `None` if the new table is empty.
    pub new: Option<BackendId>,
}

/// The slots that change from one table to another, in increasing slot order
/// (see [`MaglevTable::diff`](crate::MaglevTable::diff)).
///
/// A dataplane that updates its table in place writes `new` into each listed slot (as Katran
/// does); one that swaps whole tables can use [`TableDelta::len`] to report the disruption.
/// Note that writing slots one at a time exposes packets to a table that is part old, part new;
/// each slot is always one of the two, never torn.
///
/// # Examples
///
/// ```
/// use vipmesh_maglev::{Backend, BackendId, BackendKey, MaglevTable, TableSize, Weight};
///
/// let key = |s: &str| BackendKey::new(s.as_bytes()).unwrap();
/// let size = TableSize::new(251)?;
/// let old = MaglevTable::build(size, &[Backend::new(BackendId::new(1), key("a"), Weight::ONE)])?;
/// let new = MaglevTable::build(size, &[])?; // empty
/// let delta = old.diff(&new)?;
/// assert_eq!(delta.len(), 251);
/// assert!(delta.iter().all(|c| c.old == Some(BackendId::new(1)) && c.new.is_none()));
///
/// // Applying the changes to the old slots gives the new ones.
/// let other = MaglevTable::build(size, &[Backend::new(BackendId::new(2), key("b"), Weight::ONE)])?;
/// let mut slots = old.as_slice().to_vec();
/// for change in old.diff(&other)?.iter() {
///     slots[change.slot as usize] = change.new.map_or(0, |id| id.get());
/// }
/// assert_eq!(slots, other.as_slice());
/// # Ok::<(), vipmesh_maglev::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableDelta {
    size: TableSize,
    changes: Vec<SlotChange>,
}

impl TableDelta {
    /// The changes between two slot vectors of size `size`; an empty vector is `size` `None`s.
    pub(crate) fn between(size: TableSize, old: &[u32], new: &[u32]) -> Self {
        let m = size.get();
        let at = |slots: &[u32], i: u32| slots.get(i as usize).copied().map(BackendId::new);
        let changes = match (old.is_empty(), new.is_empty()) {
            (true, true) => Vec::new(),
            (false, false) => (0u32..)
                .zip(old.iter().zip(new))
                .filter(|(_, (o, n))| o != n)
                .map(|(slot, (&o, &n))| SlotChange {
                    slot,
                    old: Some(BackendId::new(o)),
                    new: Some(BackendId::new(n)),
                })
                .collect(),
            _ => (0..m)
                .map(|slot| SlotChange {
                    slot,
                    old: at(old, slot),
                    new: at(new, slot),
                })
                .collect(),
        };
        Self { size, changes }
    }

    /// The size of both tables.
    pub fn size(&self) -> TableSize {
        self.size
    }

    /// The changed slots, in increasing slot order.
    pub fn changes(&self) -> &[SlotChange] {
        &self.changes
    }

    /// The changed slots, by value.
    pub fn into_changes(self) -> Vec<SlotChange> {
        self.changes
    }

    /// Iterates over the changed slots.
    pub fn iter(&self) -> std::slice::Iter<'_, SlotChange> {
        self.changes.iter()
    }

    /// How many slots change.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether no slot changes.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The fraction of the table that changes, in `0.0..=1.0`: the share of flows that move.
    pub fn fraction(&self) -> f64 {
        self.changes.len() as f64 / f64::from(self.size.get())
    }
}

impl<'a> IntoIterator for &'a TableDelta {
    type Item = &'a SlotChange;
    type IntoIter = std::slice::Iter<'a, SlotChange>;
    fn into_iter(self) -> Self::IntoIter {
        self.changes.iter()
    }
}

impl IntoIterator for TableDelta {
    type Item = SlotChange;
    type IntoIter = std::vec::IntoIter<SlotChange>;
    fn into_iter(self) -> Self::IntoIter {
        self.changes.into_iter()
    }
}
