//! The ingress overlay network (work in progress).
#![deny(missing_docs)]
