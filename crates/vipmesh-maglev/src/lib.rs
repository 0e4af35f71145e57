//! A pure Maglev consistent-hashing lookup table with weights, a frozen hash key, and table deltas.
//!
//! Maglev (Eisenbud et al., *Maglev: A Fast and Reliable Software Network Load Balancer*,
//! NSDI 2016) maps every flow hash to a backend through a table of prime size `M`. It spreads
//! flows evenly, and when a backend comes or goes only about its own share of flows moves. The
//! XDP dataplane (`vipmesh-xdp`) writes the table into a BPF array map and picks a backend as
//! `table[hash(5-tuple) % M]`.
//!
//! This crate is pure: no I/O, no global state, no randomness. It provides
//!
//! - [`TableSize`]: a validated prime `M` (default 65537);
//! - [`Backend`]: a [`BackendKey`] (stable bytes that are hashed, e.g. address and port), a
//!   [`BackendId`] (the `u32` written into the slots) and a [`Weight`];
//! - [`MaglevTable::build`]: the table, identical for the same backends in any order, on any
//!   node, in any process, across vipmesh versions (the hash is frozen: [`OFFSET_KEY`]);
//! - [`MaglevTable::diff`]: the [`TableDelta`] of slots that change, for minimal map updates;
//! - [`Error`]: the one error type.
//!
//! # Guarantees
//!
//! - **Deterministic.** Backends are sorted by key before anything else; the hash is
//!   SipHash-2-4 with fixed keys, implemented in this crate and pinned by golden tests.
//! - **Proportional.** Every backend's slot count is within one slot of `M · weight / total`.
//!   With equal weights that is an imbalance of at most `1/⌊M/N⌋`: at most 1 % when
//!   `M > 100 · N` (65537 slots: up to 655 backends; [`TableSize::balanced_for`] finds a larger
//!   size).
//! - **Small disruption.** Removing one of `N` backends moves its own share (`1/N`) plus a
//!   little: at `M = 65537`, typically 0.25–0.9 % more (99th percentile 0.5 % for `N ≤ 20`,
//!   1.0 % for `N ≤ 655`). Maglev does not bound this by construction; rare configurations
//!   move a few percent more, mostly when two backends share a skip
//!   ([`BackendKey::permutation`]). The property tests give the exact figures.
//! - **Total.** Bad input is a typed [`Error`] naming the field and value; nothing panics.
//!   No backends, or only weight-0 ones, give the [empty table](MaglevTable#the-empty-table).
//!
//! # Using the table in a dataplane
//!
//! - Write [`MaglevTable::as_slice`] (`M` values of `u32`, each a caller-chosen [`BackendId`])
//!   into a BPF array map of `M` entries, or swap in a new inner map holding it.
//! - Pick the backend of a packet as `slots[flow_hash % M]` ([`MaglevTable::lookup`] is the
//!   reference). The flow hash is the dataplane's business; it only has to be the same for all
//!   packets of a flow.
//! - To update in place, write only the slots of [`MaglevTable::diff`]; to report disruption,
//!   use [`TableDelta::fraction`].
//! - An [empty table](MaglevTable#the-empty-table) has no slots: give the service the
//!   dataplane's "no backend" verdict instead of a map.
//! - [`MaglevTable::digest`] is the same on every node for the same backend keys, whatever ids
//!   each node chose: log it to check that nodes agree.
//!
//! # Examples
//!
//! ```
//! use std::net::SocketAddr;
//! use vipmesh_maglev::{Backend, BackendId, BackendKey, MaglevTable, TableSize, Weight};
//!
//! let addr = |s: &str| -> SocketAddr { s.parse().unwrap() };
//! let mut backends = vec![
//!     Backend::new(BackendId::new(0), BackendKey::from_socket_addr(addr("10.0.1.2:80")), Weight::new(1)),
//!     Backend::new(BackendId::new(1), BackendKey::from_socket_addr(addr("10.0.1.3:80")), Weight::new(1)),
//!     Backend::new(BackendId::new(2), BackendKey::from_socket_addr(addr("10.0.1.4:80")), Weight::new(2)),
//! ];
//! let old = MaglevTable::build(TableSize::DEFAULT, &backends)?;
//! let counts = old.slot_counts();
//! assert_eq!(counts[&BackendId::new(2)], 32769); // half of 65537, rounded up
//! assert_eq!(old.as_slice().len(), 65537); // what the dataplane's array map receives
//!
//! // Backend 1 leaves: only its slots and a few others change.
//! backends.remove(1);
//! let new = MaglevTable::build(TableSize::DEFAULT, &backends)?;
//! let delta = old.diff(&new)?;
//! assert!(delta.len() >= counts[&BackendId::new(1)] as usize);
//! assert!(delta.fraction() < 0.30);
//! for change in &delta {
//!     // write change.new into slot change.slot of the BPF map
//!     assert_ne!(change.new, Some(BackendId::new(1)));
//! }
//! # Ok::<(), vipmesh_maglev::Error>(())
//! ```
#![deny(missing_docs)]

mod backend;
mod delta;
mod error;
mod hash;
mod size;
mod table;

pub use backend::{Backend, BackendId, BackendKey, Weight};
pub use delta::{SlotChange, TableDelta};
pub use error::Error;
pub use hash::{OFFSET_KEY, SKIP_KEY};
pub use size::TableSize;
pub use table::{MaglevTable, Permutation};
