//! Golden plan texts (`BLESS=1 cargo test -p vipmesh-nft --test golden` rewrites them).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use vipmesh_nft::*;
use vipmesh_testkit::golden;

fn path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn ours(t: &Table) -> Observed {
    Observed {
        table: t.clone(),
        owner: Ownership::Ours,
        unparsed: vec![],
    }
}

#[test]
fn create_full_table() {
    golden(
        path("create_full.nft"),
        &plan(&full_table("ing"), None).unwrap().to_string(),
    );
}

#[test]
fn replace_when_structure_differs() {
    let old = lb_table("lb1", &vips(2));
    let mut new = Table::new(NetworkId::new("lb1").unwrap());
    vip_marks(&mut new, &[Hook::Input], &vips(2)).unwrap();
    let p = plan(&new, Some(&ours(&old))).unwrap();
    assert!(matches!(p, Plan::Rebuild { replace: true, .. }));
    golden(path("replace_lb.nft"), &p.to_string());
}

#[test]
fn one_changed_vip_is_two_element_lines() {
    let before = vips(6);
    let mut after = before.clone();
    after[1].mark = 0x999; // changed value: delete + add
    after.remove(4); // removed (vip4 map)
    after.push(VipMark {
        vip: "10.1.0.1".parse().unwrap(),
        port: Some((Proto::UDP, 53)),
        mark: 0x777,
    });
    let p = plan(
        &lb_table("lb1", &after),
        Some(&ours(&lb_table("lb1", &before))),
    )
    .unwrap();
    let Plan::Elements(ep) = &p else {
        panic!("{p:?}")
    };
    assert_eq!(ep.len(), 4);
    golden(path("elements_lb.nft"), &p.to_string());
}

#[test]
fn equal_is_empty_and_teardown_deletes_only_our_table() {
    let t = full_table("ing");
    assert_eq!(plan(&t, Some(&ours(&t))).unwrap().to_string(), "");
    assert_eq!(
        plan_teardown(Some(&ours(&t))).unwrap().to_string(),
        "delete table inet vipmesh-ing\n"
    );
    assert!(plan_teardown(None).unwrap().is_empty());
    let foreign = Observed {
        owner: Ownership::Foreign("x".into()),
        ..ours(&t)
    };
    assert!(matches!(
        plan(&t, Some(&foreign)),
        Err(Error::ForeignTable { .. })
    ));
    assert!(matches!(
        plan_teardown(Some(&foreign)),
        Err(Error::ForeignTable { .. })
    ));
    let unparsed = Observed {
        unparsed: vec!["x".into()],
        ..ours(&t)
    };
    assert!(matches!(
        plan(&t, Some(&unparsed)).unwrap(),
        Plan::Rebuild { replace: true, .. }
    ));
}
