//! The mesh state-file parser and validator never panic, and an accepted state's plan is
//! deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vipmesh::model::DesiredState;
use vipmesh::plan::{DrainBook, Observed, plan};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(state) = DesiredState::from_json(text) {
        let a = plan(&state, &Observed::default(), &DrainBook::default(), 0);
        let b = plan(&state, &Observed::default(), &DrainBook::default(), 0);
        assert_eq!(a.map(|p| p.to_string()).ok(), b.map(|p| p.to_string()).ok());
    }
});
