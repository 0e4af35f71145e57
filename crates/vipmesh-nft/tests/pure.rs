//! Pure tests without privileges: a captured `nft -j` listing parses back to the table that
//! produced it, and `plan(desired, state after applying plan(desired, observed))` is empty.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::*;
use proptest::prelude::*;
use vipmesh_nft::*;

/// Captured with nft 1.0.6 on Linux 6.18: `nft -f tests/golden/create_full.nft` in a fresh
/// netns, then `nft -j list table inet vipmesh-ing`.
const FULL_JSON: &str = include_str!("fixtures/full_table.nft-1.0.6.json");

#[test]
fn captured_listing_parses_to_the_table_that_produced_it() {
    let obs = parse_table_json(FULL_JSON, &NetworkId::new("ing").unwrap()).unwrap();
    assert!(obs.unparsed.is_empty(), "{:?}", obs.unparsed);
    // nft 1.0.6 omits the table comment in JSON; the applier reads it from the text listing.
    assert_eq!(obs.owner, Ownership::Unknown);
    assert_eq!(obs.table, full_table("ing"));
    // Another network's id does not find the table.
    assert!(parse_table_json(FULL_JSON, &NetworkId::new("other").unwrap()).is_err());
}

#[test]
fn json_comment_field_decides_ownership_when_present() {
    let mine = FULL_JSON.replacen(
        "\"name\": \"vipmesh-ing\",",
        "\"name\": \"vipmesh-ing\", \"comment\": \"vipmesh\",",
        1,
    );
    let theirs = FULL_JSON.replacen(
        "\"name\": \"vipmesh-ing\",",
        "\"name\": \"vipmesh-ing\", \"comment\": \"k8s\",",
        1,
    );
    let id = NetworkId::new("ing").unwrap();
    assert_eq!(parse_table_json(&mine, &id).unwrap().owner, Ownership::Ours);
    assert_eq!(
        parse_table_json(&theirs, &id).unwrap().owner,
        Ownership::Foreign("k8s".into())
    );
}

#[test]
fn every_byte_prefix_of_a_real_listing_is_handled() {
    let id = NetworkId::new("ing").unwrap();
    for end in (0..FULL_JSON.len()).step_by(7) {
        if let Some(s) = FULL_JSON.get(..end) {
            let _ = parse_table_json(s, &id);
        }
    }
}

/// (host number, (tcp?, port) restriction, mark offset).
type VipSpec = (u8, Option<(bool, u16)>, u16);

#[derive(Debug, Clone)]
struct Config {
    vips: Vec<VipSpec>,
    hooks: (bool, bool, bool),
    ports: Vec<(bool, u16, u16)>,
    snat: bool,
}

fn config() -> impl Strategy<Value = Config> {
    (
        proptest::collection::vec(
            (
                0u8..40,
                proptest::option::of((any::<bool>(), 1u16..5)),
                1u16..9,
            ),
            0..30,
        ),
        (any::<bool>(), any::<bool>(), any::<bool>()),
        proptest::collection::vec((any::<bool>(), 1u16..6, 1u16..4), 0..6),
        any::<bool>(),
    )
        .prop_map(|(vips, hooks, ports, snat)| Config {
            vips,
            hooks,
            ports,
            snat,
        })
}

fn table(c: &Config) -> Table {
    let mut t = Table::new(NetworkId::new("p").unwrap());
    let mut hooks = vec![];
    if c.hooks.0 {
        hooks.push(Hook::Prerouting);
    }
    if c.hooks.1 {
        hooks.push(Hook::Input);
    }
    if c.hooks.2 || hooks.is_empty() {
        hooks.push(Hook::Output);
    }
    let vips: Vec<VipMark> = c
        .vips
        .iter()
        .map(|(h, port, mark)| VipMark {
            vip: if h % 2 == 0 {
                vip(u32::from(*h))
            } else {
                format!("fd00::{h}").parse().unwrap()
            },
            port: port.map(|(tcp, p)| (if tcp { Proto::TCP } else { Proto::UDP }, p)),
            mark: 0x100 + u32::from(*mark),
        })
        .collect();
    vip_marks(&mut t, &hooks, &vips).unwrap();
    let ports: Vec<PublishedDnat> = c
        .ports
        .iter()
        .map(|(tcp, p, h)| PublishedDnat {
            proto: if *tcp { Proto::TCP } else { Proto::UDP },
            port: 8000 + p,
            to: format!("172.18.0.{h}:80").parse().unwrap(),
        })
        .collect();
    publish_dnat(&mut t, &ports).unwrap();
    if c.snat {
        ipvs_snat(
            &mut t,
            &[IpvsSnat {
                first_mark: 0x100,
                last_mark: 0x1ff,
                subnet: "10.0.0.0/24".parse().unwrap(),
                to: "10.0.0.2".parse().unwrap(),
            }],
        )
        .unwrap();
    }
    t
}

fn ours(t: Table) -> Observed {
    Observed {
        table: t,
        owner: Ownership::Ours,
        unparsed: vec![],
    }
}

proptest! {
    #[test]
    fn planning_against_the_applied_state_is_empty(a in config(), b in config()) {
        let (ta, tb) = (table(&a), table(&b));
        // From nothing, and from another state.
        for current in [None, Some(ta.clone())] {
            let p = plan(&tb, current.clone().map(ours).as_ref()).unwrap();
            let after = p.apply_to(current.as_ref()).unwrap();
            prop_assert_eq!(&after, &tb);
            let again = plan(&tb, Some(&ours(after))).unwrap();
            prop_assert!(again.is_empty(), "left: {}", again);
        }
        // Same structure: only elements change, and the text has one line per element op
        // plus two lines (command and closing brace) per command.
        let p = plan(&tb, Some(&ours(ta.clone()))).unwrap();
        prop_assert_eq!(ta.structure() == tb.structure(), ta.same_structure(&tb));
        if ta.same_structure(&tb) {
            match &p {
                Plan::Nothing => prop_assert_eq!(&ta, &tb),
                Plan::Elements(ep) => {
                    let cmds = p.to_string().lines().filter(|l| l.ends_with('{')).count();
                    prop_assert_eq!(p.to_string().lines().count(), ep.len() + 2 * cmds);
                }
                other => prop_assert!(false, "expected an element plan, got {}", other),
            }
        } else {
            let is_rebuild = matches!(p, Plan::Rebuild { replace: true, .. });
            prop_assert!(is_rebuild);
        }
    }
}
