//! An IPVS client over generic netlink: a pure codec, a typed model, a socket client and a Fake.
#![deny(missing_docs)]
