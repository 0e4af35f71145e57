//! Fuzzes the overlay's string parsers, `Mac` and `Subnet`: never panic, and what parses
//! round-trips through `Display`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vipmesh_overlay::{Mac, Subnet};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(m) = text.parse::<Mac>() {
        assert_eq!(
            m.to_string().parse::<Mac>().ok(),
            Some(m),
            "round trip of {m}"
        );
    }
    if let Ok(s) = text.parse::<Subnet>() {
        assert_eq!(
            s.to_string().parse::<Subnet>().ok(),
            Some(s),
            "round trip of {s}"
        );
        assert!(s.contains(s.addr()), "{s} contains its network address");
    }
});
