//! Fuzz the `nft -j list table` parser (and the `list tables` one): never panics; whatever it types is a valid table whose
//! plan against itself is empty, renders, and survives a plan from nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vipmesh_nft::{
    NetworkId, Observed, Ownership, parse_table_json, parse_table_names, plan, plan_teardown,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(ids) = parse_table_names(&text) {
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    }
    let Ok(id) = NetworkId::new("fz") else { return };
    let Ok(obs) = parse_table_json(&text, &id) else {
        return;
    };
    let _ = obs.table.to_string();
    let ours = Observed {
        owner: Ownership::Ours,
        ..obs.clone()
    };
    let p = plan(&obs.table, Some(&ours)).expect("ours plans");
    if obs.unparsed.is_empty() {
        assert!(p.is_empty(), "a parsed table differs from itself: {p}");
    }
    let _ = plan(&obs.table, None).map(|p| p.to_string());
    let _ = plan_teardown(Some(&obs)).map(|p| p.to_string());
});
