//! A pure Maglev consistent-hashing lookup table with weights, a frozen hash key, and table deltas.
#![deny(missing_docs)]
