//! Test support for vipmesh (work in progress).
#![deny(missing_docs)]
