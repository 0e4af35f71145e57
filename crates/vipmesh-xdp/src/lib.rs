//! The XDP fast path: loads, attaches and drives the vipmesh eBPF programs with aya.
#![deny(missing_docs)]
