//! Typed iptables rules rendered to iptables-restore text, applied atomically, owning only
//! VIPMESH- chains.
//!
//! # The flow
//! 1. Build an [`OwnedRuleset`]: the whole desired content of our chains (prefix `VIPMESH-`)
//!    per table, plus the jumps into them from built-in chains. Values are validated when they
//!    are built ([`Cidr`], [`Port`], [`ChainName`], [`Comment`] …), rules when they are added.
//! 2. [`Applier::apply`] observes the namespace with `iptables-save`, computes a [`Plan`]
//!    (pure, see [`plan()`]), runs it as **one** `iptables-restore -w --noflush` batch inside the
//!    namespace, reads back and verifies. A second apply of the same ruleset runs no restore.
//! 3. [`Applier::teardown`] removes our chains and tagged jumps and nothing else.
//!
//! # Cost and knobs (measured on the host, nft backend, 10 000 rules in one chain)
//! Every `iptables-save`/`iptables-restore` call on the nft backend fetches the whole ruleset
//! (~0.1–0.3 s at 10k rules). A default apply is observe + restore + read-back.
//! [`Verify::Skip`] drops the read-back; [`ObserveMode::Cached`] plans against the last applied
//! state (a failed partial batch falls back to a full sync; call [`Applier::invalidate`]
//! periodically so tampering gets repaired). Building a batch is cheap in comparison: ~3 µs per
//! rule to render and to parse.
//!
//! # Placement rules the model enforces
//! `MARK` only in mangle; `DNAT`/`SNAT`/`MASQUERADE`/`REDIRECT` only in nat; `REJECT` only in
//! filter; ports and `REDIRECT`/port-`DNAT` need `-p tcp|udp|sctp`; `tcp-reset` needs `-p tcp`;
//! addresses must match the ruleset's [`Family`]. Hook restrictions (e.g. `DNAT` only from
//! PREROUTING/OUTPUT) are left to the kernel, whose refusal comes back as
//! [`Error::RestoreFailed`] with the failing line, and the table section is not committed.
//!
//! # The kernel contract
//! - We own chains whose name starts with `VIPMESH-` (≤ 28 bytes), and the rules in built-in
//!   chains tagged `-m comment --comment vipmesh`. Everything else is foreign and is never
//!   flushed, deleted, or rewritten.
//! - Each table section of a batch is committed atomically by the kernel.
//!
//! # Examples
//! ```
//! use vipmesh_netfilter::*;
//! // The VIP rules of a load-balancer sandbox (libnetwork's configureFWMark, typed).
//! let mut rs = OwnedRuleset::new(Family::V4);
//! let vip = ChainName::new("VIPMESH-VIP")?;
//! rs.add_rule(Table::Mangle, &vip, Rule::new(
//!     Matches::new().destination("10.0.1.4".parse()?),
//!     Target::SetMark(Mark::new(0x103)),
//! ).with_comment(Comment::new("svc web")?))?;
//! rs.add_jump(Table::Mangle, Jump {
//!     from: BuiltinChain::Input, matches: Matches::new(), to: vip, position: JumpPosition::Prepend,
//! })?;
//! let snat = ChainName::new("VIPMESH-SNAT")?;
//! rs.add_rule(Table::Nat, &snat, Rule::new(
//!     Matches::new().destination("10.0.1.0/24".parse()?).ipvs(),
//!     Target::Snat("10.0.1.2".parse().unwrap()),
//! ))?;
//! rs.add_jump(Table::Nat, Jump {
//!     from: BuiltinChain::Postrouting, matches: Matches::new(), to: snat, position: JumpPosition::Prepend,
//! })?;
//! let batch = plan(&rs, &Observed::empty(Family::V4))?;
//! assert!(batch.to_string().contains("-A VIPMESH-VIP -d 10.0.1.4/32 -m comment --comment \"svc web\" -j MARK --set-xmark 0x103/0xffffffff"));
//! # Ok::<(), vipmesh_netfilter::Error>(())
//! ```
#![deny(missing_docs)]

mod apply;
mod error;
mod model;
mod plan;
mod probe;
mod render;
mod ruleset;
mod save;
#[cfg(feature = "test-util")]
pub mod trace;

pub use apply::{
    Applier, ApplyReport, Backend, BackendChoice, NetnsTarget, ObserveMode, Tools, Verify, apply,
    observe, teardown,
};
pub use error::{Error, extension_module};
pub use model::{
    AddrMatch, AddrType, BuiltinChain, Chain, ChainName, Cidr, Comment, CtState, Family, Iface,
    IfaceMatch, Mark, Matches, NatTo, Port, PortRange, Protocol, RejectWith, Rule, Table, Target,
};
pub use plan::{Observed, ObservedRule, ObservedTable, Plan, TablePlan, plan};
pub use ruleset::{Jump, JumpPosition, OwnedRuleset, TableRuleset};
pub use save::{SaveChain, SaveDump, SaveRule, SaveTable, parse_rule, parse_save, tokenize};
