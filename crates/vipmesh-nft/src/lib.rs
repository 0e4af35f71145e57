//! The nftables backend (work in progress).
#![deny(missing_docs)]
