//! Test helpers (feature `test-util`): a Fake of the map layer with kernel semantics, and a
//! packet builder/checker for `BPF_PROG_TEST_RUN` fixtures.

mod fake;
pub mod packet;

pub use fake::FakeMaps;
pub mod lab;
