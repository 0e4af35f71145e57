//! Test helpers (feature `test-util`): a Fake of the map layer with kernel semantics, for the
//! logic tests of [`Dataplane`](crate::Dataplane) here and in the layers above. It stays in
//! the library (unlike the namespace lab and the packet builders, which live in
//! `vipmesh-testkit`) because it implements this crate's `Maps` trait and the unit tests of
//! `dataplane` need it.

mod fake;

pub use fake::FakeMaps;
