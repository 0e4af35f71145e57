//! The typed rule model: tables, chains, matches, targets.
//!
//! Every value type has a validating constructor; a built value is valid. Cross-field rules
//! (family, table, `--dport` needs `-p tcp|udp|sctp`) are checked by
//! [`OwnedRuleset`](crate::OwnedRuleset) when a rule is added.
//!
//! One submodule per concern: the names iptables knows (`names`: families, tables, chains),
//! addresses, ports, protocols and interfaces (`addrs`), the match part of a rule and its
//! values (`matches`), targets (`target`), and the rule with its cross-field checks (`rule`).
//! Everything is re-exported here.

mod addrs;
mod matches;
mod names;
mod rule;
mod target;

pub use addrs::{Cidr, Iface, Port, PortRange, Protocol};
pub use matches::{AddrMatch, AddrType, Comment, CtState, IfaceMatch, Mark, Matches};
pub use names::{BuiltinChain, Chain, ChainName, Family, Table};
pub use rule::Rule;
pub use target::{NatTo, RejectWith, Target};
