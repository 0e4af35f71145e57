//! Fuzz the `iptables-save` parser: never panics, and every rule it types round-trips
//! through the renderer (render → tokenize → parse gives the same rule).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vipmesh_netfilter::{Family, Observed, OwnedRuleset, parse_rule, parse_save, plan, tokenize};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(dump) = parse_save(&text) else { return };
    for t in &dump.tables {
        for r in &t.rules {
            if let Some(rule) = r.typed() {
                let rendered = rule.to_string();
                let again = tokenize(&rendered, 1).ok().and_then(|a| parse_rule(&a));
                assert_eq!(again.as_ref(), Some(&rule), "round trip of {rendered:?}");
            }
        }
    }
    for family in [Family::V4, Family::V6] {
        let obs = Observed::from_dump(family, &dump);
        let _ = obs.to_ruleset();
        // Tearing down whatever was observed must always plan without panicking.
        let _ = plan(&OwnedRuleset::new(family), &obs).map(|p| p.to_string());
    }
});
