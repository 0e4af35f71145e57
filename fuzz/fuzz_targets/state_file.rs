//! The node state-file parser and validator never panic, and an accepted state's plan (against
//! empty namespaces) is deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vipmesh::model::NodeState;
use vipmesh::plan::{DrainBook, KernelVersion, NodeObserved, NsObserved, plan};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(state) = NodeState::from_json(text) {
        let mut seen = NodeObserved::default();
        for ns in state.namespace_names() {
            seen.namespaces
                .insert(ns, NsObserved::empty(KernelVersion { major: 6, minor: 1 }));
        }
        let a = plan(&state, &seen, &DrainBook::default(), 0);
        let b = plan(&state, &seen, &DrainBook::default(), 0);
        assert_eq!(a.map(|p| p.to_string()).ok(), b.map(|p| p.to_string()).ok());
    }
});
