//! Planning (pure): desired table vs observed table → the nft script of one transaction.
//!
//! - Equal → [`Plan::Nothing`] (empty text).
//! - Only set/map elements differ → [`Plan::Elements`]: `delete element` of the removed and
//!   changed keys, then `add element` of the new and changed ones (nft has no replace; both
//!   commands are in one transaction, so no packet sees the key missing).
//! - Anything else differs (a chain, a rule, a map's type, an object we could not type) →
//!   [`Plan::Rebuild`]: `add table; delete table; table … { … }` in one transaction, so the
//!   table is replaced atomically. When the table is absent, only the definition is sent, so
//!   a table we did not observe as ours is never deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::error::Error;
use crate::model::{FAMILY, Key, Name, Table, Value};
use crate::parse::{Observed, Ownership};
use crate::render::element_command;

/// The element changes of one set or map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElementChange {
    /// Keys to delete (removed, or changed value).
    pub delete: BTreeSet<Key>,
    /// Elements to add (new, or changed value); `None` values for sets.
    pub add: BTreeMap<Key, Option<Value>>,
}

/// A partial sync: element changes per set/map of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementPlan {
    /// The table name.
    pub table: String,
    /// Changes per set/map (only non-empty ones).
    pub changes: BTreeMap<Name, ElementChange>,
}

impl ElementPlan {
    /// Number of element operations (deletes + adds).
    pub fn len(&self) -> usize {
        self.changes
            .values()
            .map(|c| c.delete.len() + c.add.len())
            .sum()
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one sync sends to the kernel. `Display` is exactly the `nft -f` script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The kernel already matches.
    Nothing,
    /// Only elements differ.
    Elements(ElementPlan),
    /// Create (`replace: false`) or atomically replace (`replace: true`) the whole table.
    Rebuild {
        /// The desired table.
        table: Box<Table>,
        /// Whether an old table of ours is deleted in the same transaction.
        replace: bool,
    },
    /// Delete our table (teardown).
    Delete {
        /// The table name.
        table: String,
    },
}

impl Plan {
    /// Whether the plan sends nothing.
    pub fn is_empty(&self) -> bool {
        matches!(self, Plan::Nothing)
    }

    /// The table as it is after this plan ran on `current` (pure; what the kernel holds after
    /// a successful transaction).
    pub fn apply_to(&self, current: Option<&Table>) -> Option<Table> {
        match self {
            Plan::Nothing => current.cloned(),
            Plan::Elements(ep) => {
                let mut t = current?.clone();
                for (name, ch) in &ep.changes {
                    for k in &ch.delete {
                        t.remove_element(name, k);
                    }
                    for (k, v) in &ch.add {
                        // Checked against the same types when planned; cannot fail.
                        let _ = t.insert_element(name, k.clone(), v.clone());
                    }
                }
                Some(t)
            }
            Plan::Rebuild { table, .. } => Some((**table).clone()),
            Plan::Delete { .. } => None,
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Plan::Nothing => Ok(()),
            Plan::Elements(ep) => {
                let mut s = String::new();
                for (name, ch) in &ep.changes {
                    if !ch.delete.is_empty() {
                        element_command(
                            &mut s,
                            "delete",
                            &ep.table,
                            name,
                            ch.delete.iter().map(|k| (k, None)),
                        );
                    }
                }
                for (name, ch) in &ep.changes {
                    if !ch.add.is_empty() {
                        element_command(
                            &mut s,
                            "add",
                            &ep.table,
                            name,
                            ch.add.iter().map(|(k, v)| (k, v.as_ref())),
                        );
                    }
                }
                f.write_str(&s)
            }
            Plan::Rebuild { table, replace } => {
                if *replace {
                    let n = table.name();
                    writeln!(f, "add table {FAMILY} {n}")?;
                    writeln!(f, "delete table {FAMILY} {n}")?;
                }
                write!(f, "{table}")
            }
            Plan::Delete { table } => writeln!(f, "delete table {FAMILY} {table}"),
        }
    }
}

fn element_diff(desired: &Table, observed: &Table) -> ElementPlan {
    let mut changes = BTreeMap::new();
    for (name, ds) in desired.sets() {
        let empty = BTreeSet::new();
        let os = observed.sets().get(name).map_or(&empty, |s| s.elements());
        let ch = ElementChange {
            delete: os.difference(ds.elements()).cloned().collect(),
            add: ds
                .elements()
                .difference(os)
                .map(|k| (k.clone(), None))
                .collect(),
        };
        if !ch.delete.is_empty() || !ch.add.is_empty() {
            changes.insert(name.clone(), ch);
        }
    }
    for (name, dm) in desired.maps() {
        let empty = BTreeMap::new();
        let om = observed.maps().get(name).map_or(&empty, |m| m.elements());
        let mut ch = ElementChange::default();
        for (k, v) in om {
            if dm.elements().get(k) != Some(v) {
                ch.delete.insert(k.clone());
            }
        }
        for (k, v) in dm.elements() {
            if om.get(k) != Some(v) {
                ch.add.insert(k.clone(), Some(v.clone()));
            }
        }
        if !ch.delete.is_empty() || !ch.add.is_empty() {
            changes.insert(name.clone(), ch);
        }
    }
    ElementPlan {
        table: desired.name(),
        changes,
    }
}

/// The plan that makes the kernel's table equal `desired`.
///
/// `current` is the parsed listing of our table (`None` when it does not exist). Its
/// ownership must be [`Ownership::Ours`].
///
/// # Errors
/// [`Error::ForeignTable`] when `current` is not ours (or its ownership is unknown);
/// [`Error::InvalidTable`] when `current` is another network's table.
///
/// # Examples
/// ```
/// use vipmesh_nft::*;
/// let mut t = Table::new(NetworkId::new("web")?);
/// vip_marks(&mut t, &[Hook::Input], &[VipMark { vip: "10.0.0.9".parse()?, port: None, mark: 0x100 }])?;
/// let first = plan(&t, None)?;                     // create the table
/// let observed = Observed { table: first.apply_to(None).unwrap(), owner: Ownership::Ours, unparsed: vec![] };
/// assert!(plan(&t, Some(&observed))?.is_empty());  // nothing left to do
/// let mut t2 = Table::new(NetworkId::new("web")?);
/// vip_marks(&mut t2, &[Hook::Input], &[VipMark { vip: "10.0.0.9".parse()?, port: None, mark: 0x101 }])?;
/// assert_eq!(plan(&t2, Some(&observed))?.to_string(),
///     "delete element inet vipmesh-web vip4 {\n\t10.0.0.9\n}\nadd element inet vipmesh-web vip4 {\n\t10.0.0.9 : 0x101\n}\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn plan(desired: &Table, current: Option<&Observed>) -> Result<Plan, Error> {
    let Some(cur) = current else {
        return Ok(Plan::Rebuild {
            table: Box::new(desired.clone()),
            replace: false,
        });
    };
    if cur.table.id() != desired.id() {
        return Err(Error::InvalidTable {
            table: desired.name(),
            object: cur.table.name(),
            reason: "observed a different table".into(),
        });
    }
    if cur.owner != Ownership::Ours {
        return Err(Error::ForeignTable {
            family: FAMILY,
            table: desired.name(),
            netns: "(plan)".into(),
        });
    }
    if !cur.unparsed.is_empty() || !cur.table.same_structure(desired) {
        return Ok(Plan::Rebuild {
            table: Box::new(desired.clone()),
            replace: true,
        });
    }
    let ep = element_diff(desired, &cur.table);
    Ok(if ep.is_empty() {
        Plan::Nothing
    } else {
        Plan::Elements(ep)
    })
}

/// The plan that deletes our table (nothing when it is absent).
///
/// # Errors
/// [`Error::ForeignTable`] when the table is not ours.
pub fn plan_teardown(current: Option<&Observed>) -> Result<Plan, Error> {
    match current {
        None => Ok(Plan::Nothing),
        Some(c) if c.owner == Ownership::Ours => Ok(Plan::Delete {
            table: c.table.name(),
        }),
        Some(c) => Err(Error::ForeignTable {
            family: FAMILY,
            table: c.table.name(),
            netns: "(plan)".into(),
        }),
    }
}
