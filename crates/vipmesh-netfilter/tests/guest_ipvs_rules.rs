//! Guest-kernel test: rules with `-m ipvs --ipvs` (the host kernel has no IPVS) apply,
//! read back to the same typed rules, and a second apply changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use vipmesh_netfilter::*;

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn ipvs_match_rules_are_idempotent() {
    require_privileged();
    // xt_ipvs: only the IPVS guest kernel has it.
    vipmesh_testkit::require(&[vipmesh_testkit::Requirement::Module("xt_ipvs")]);
    let ns = Ns::new("ipvs");
    let a = ns.applier();
    for rs in [ingress_sbox(true), vip_lb(10, true)] {
        assert!(a.apply(&rs).unwrap().changed);
        let s = ns.save();
        assert!(s.contains("-m ipvs --ipvs -j SNAT --to-source"), "{s}");
        let r = a.apply(&rs).unwrap();
        assert!(!r.changed, "second apply changed: {}", r.plan);
        assert_eq!(ns.save(), s);
        assert_eq!(a.observe_ruleset(Family::V4).unwrap(), rs);
    }
    a.teardown(Family::V4).unwrap();
    assert!(!ns.save().contains("VIPMESH"));
}
