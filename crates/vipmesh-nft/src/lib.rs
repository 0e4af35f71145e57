//! The nftables backend of vipmesh: one `inet` table per network (`vipmesh-<id>`), O(1)
//! classification with maps, and one atomic `nft -f` transaction per sync that touches only
//! the changed map elements.
#![deny(missing_docs)]

mod apply;
mod build;
mod error;
mod model;
mod parse;
mod plan;
mod render;

pub use apply::{Nft, ObserveMode, SyncReport, parse_version};
pub use build::{
    IpvsSnat, PortMark, PublishedDnat, TaskPort, VipMark, ingress_port_marks, ipvs_snat, names,
    publish_dnat, task_ingress, vip_marks,
};
pub use error::Error;
pub use model::{
    BaseChain, Chain, ChainType, CtState, FAMILY, Hook, IfName, IpFamily, Key, KeyExpr, KeyPart,
    KeyType, KeyValue, Map, Match, Name, NetworkId, OWNER_COMMENT, Policy, Prefix, Priority, Proto,
    Rule, Selector, Set, Statement, TABLE_PREFIX, Table, Value, ValueType, Verdict,
};
pub use parse::{Observed, Ownership, comment_from_text, parse_table_json};
pub use plan::{ElementChange, ElementPlan, Plan, plan, plan_teardown};
