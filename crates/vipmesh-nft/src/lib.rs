//! The nftables backend of vipmesh: one `inet` table per network (`vipmesh-<id>`), O(1)
//! classification with maps, and one atomic `nft -f` transaction per sync that touches only
//! the changed map elements.
//!
//! iptables classifies VIPs with a linear chain (one rule per VIP, evaluated in order), and
//! with the nft-based iptables every save/restore fetches the whole ruleset. Here a VIP is a
//! map element: `meta mark set ip daddr . meta l4proto . th dport map @vip4_port` is one hash
//! lookup whatever the number of services (the kernel picks a hash set for exact keys:
//! [`net/netfilter/nft_set_hash.c`](https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/net/netfilter/nft_set_hash.c),
//! looked up by [`nft_lookup.c`](https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/net/netfilter/nft_lookup.c)),
//! and a changed service is `delete element` + `add element` of its key (kube-proxy's
//! nftables mode, KEP-3866, does the same).
//!
//! # The flow
//! 1. Build a [`Table`] with the builders, one pure function per mesh object:
//!    [`vip_marks`] (VIP → fwmark), [`ingress_port_marks`] (published port → fwmark in the
//!    ingress sandbox), [`publish_dnat`] (host DNAT of published ports to the ingress sandbox),
//!    [`ipvs_snat`] (the reply path of IPVS, see below), [`vip_reject`] (VIPs without
//!    backends: TCP reset / port unreachable, through verdict maps), [`local_masquerade`]
//!    (local traffic to the gateway bridge) and [`task_ingress`] (REDIRECT / ACCEPT / DROP in
//!    a task). The node controller (`vipmesh`, `options.firewall = "nftables"`) builds its
//!    tables with them; [`Nft::list_tables`] finds our tables of a namespace. Values are validated when built; every cross reference (a
//!    rule's map and its key type, jump targets, NAT statements in NAT chains) when added.
//! 2. [`Nft::sync`] lists our table (`nft -j list table inet vipmesh-<id>`), parses it
//!    ([`parse_table_json`]), plans ([`plan()`], pure) and runs the plan's text as **one**
//!    `nft -f -` transaction inside the namespace. [`ObserveMode::Cached`] plans against the
//!    last applied table instead (no listing; a failed transaction drops the cache).
//! 3. [`Nft::teardown`] deletes our table and nothing else.
//!
//! # Plans
//! [`Plan`]'s `Display` is exactly the script: empty when the kernel matches; `delete element`
//! / `add element` of just the changed keys when only elements differ; otherwise
//! `add table; delete table; table inet vipmesh-<id> { … }` followed by the rules, which
//! replaces the table atomically. nft transactions are all-or-nothing
//! ([`nf_tables_api.c`](https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/net/netfilter/nf_tables_api.c),
//! commit/abort), so a failed sync changes nothing; every element is on its own line, so the
//! error ([`Error::TransactionFailed`]) names the element the kernel refused.
//!
//! # The SNAT without `-m ipvs`
//! nft has no equivalent of iptables' `-m ipvs --ipvs` (which is why Docker refuses its
//! nftables backend in Swarm mode, moby#50467). The fwmark we set survives IPVS: it is set in
//! a `mangle`-priority chain before IPVS's LOCAL_IN hook, IPVS does not clear it, and only
//! traffic our maps classified carries a mark in our range. So
//! `meta mark 0x100-0x1ff ip daddr 10.0.0.0/24 snat ip to 10.0.0.2` in a nat postrouting
//! chain selects exactly the connections IPVS forwarded (with `net.ipv4.vs.conntrack=1`, as
//! Docker sets it). The guest test `tests/guest_nft.rs` proves the reply path (requests
//! alternate between two backends and are answered; without the rule they are not) and that
//! non-IPVS traffic keeps its source.
//!
//! # The kernel contract
//! - We own tables named `vipmesh-<id>` (family `inet`) that carry `comment "vipmesh"`. A
//!   table with our name but without the comment is foreign: [`Error::ForeignTable`], never
//!   written or deleted. nft 1.0.6 omits table comments from JSON listings, so ownership is
//!   then read from `nft -t list table` (terse text, no elements).
//! - Nothing outside our table is touched: other tables, iptables rules (nft- or
//!   legacy-based) stay byte-identical (host test `tests/host_nft.rs`).
//!
//! # What is written by hand, and why
//! - Rendering: nft's native syntax, not JSON. It is what `nft -f` parses fastest, the error
//!   locations it reports point into it (we put each element on its own line), and the
//!   golden plan texts are readable.
//! - Parsing: over `serde_json::Value`, not the `nftables` crate's schema (0.6): its
//!   deserializer rejects a whole listing when a map has a concatenated value type as nft
//!   1.0.6 prints it (`"map": "ipv4_addr . inet_service"`, our DNAT map), and it has no table
//!   comment. Anything we cannot type is kept as [`Observed::unparsed`] and makes the planner
//!   rebuild the table. The parser never panics (fuzz target `nft_json`).
//! - Running: by default the `nft` binary (as the `nftables` crate's helpers do), spawned
//!   from a thread inside the namespace ([`vipmesh_netns::Netns::run`]). [`Runner::Library`]
//!   loads libnftables (`dlopen`, no link-time dependency) and keeps one context per
//!   namespace, whose netlink socket is opened inside it: a one-element update then costs
//!   ~2–3 ms at 10 000 services instead of ~12–16 ms, most of which is starting `nft`
//!   (`benches/nft/README.md`). No Rust crate wraps libnftables; the `sys` module is the only
//!   `unsafe` code.
//!
//! Requirements: nftables ≥ 1.0 ([`Error::NftTooOld`] names the version found), a kernel with
//! nf_tables and, for NAT in `inet` tables, Linux ≥ 5.2. Modules the builders use:
//! `nft_chain_nat`, `nft_nat`, `nft_fib_inet`, `nft_redir` (named in
//! [`Error::KernelUnsupported`] when the kernel refuses a line).
//!
//! Reference: [`nft(8)`](https://www.netfilter.org/projects/nftables/manpage.html),
//! [`libnftables-json(5)`](https://www.netfilter.org/projects/nftables/manpage.html).
//!
//! # Examples
//! ```
//! use vipmesh_nft::*;
//! // A load-balancing sandbox: two VIPs classified on input and output, and the SNAT.
//! let mut t = Table::new(NetworkId::new("web")?);
//! vip_marks(&mut t, &[Hook::Input, Hook::Output], &[
//!     VipMark { vip: "10.0.0.9".parse()?, port: None, mark: 0x100 },
//!     VipMark { vip: "10.0.0.20".parse()?, port: Some((Proto::TCP, 443)), mark: 0x101 },
//! ])?;
//! ipvs_snat(&mut t, &[IpvsSnat { first_mark: 0x100, last_mark: 0x1ff,
//!     subnet: "10.0.0.0/24".parse()?, to: "10.0.0.2".parse()? }])?;
//! let script = plan(&t, None)?.to_string();
//! assert!(script.contains("add rule inet vipmesh-web vip_input meta mark set ip daddr map @vip4"));
//! assert!(script.contains("meta mark 0x100-0x1ff ip daddr 10.0.0.0/24 snat ip to 10.0.0.2"));
//! // In a namespace: `Nft::new(Arc::new(Netns::named("lb-web")?)).sync(&t)?`.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod apply;
mod build;
mod error;
mod model;
mod parse;
mod plan;
mod render;
mod sys;

pub use apply::{Nft, ObserveMode, Runner, SyncReport, parse_version};
pub use build::{
    IpvsSnat, PortMark, PublishedDnat, TaskPort, VipMark, ingress_port_marks, ipvs_snat,
    local_masquerade, names, publish_dnat, task_ingress, vip_marks, vip_reject,
};
pub use error::Error;
pub use model::{
    BaseChain, Chain, ChainType, CtState, FAMILY, Hook, IfName, IpFamily, Key, KeyExpr, KeyPart,
    KeyType, KeyValue, Map, Match, Name, NetworkId, OWNER_COMMENT, Policy, Prefix, Priority, Proto,
    RejectWith, Rule, Selector, Set, Statement, TABLE_PREFIX, Table, Value, ValueType, Verdict,
};
pub use parse::{Observed, Ownership, comment_from_text, parse_table_json, parse_table_names};
pub use plan::{ElementChange, ElementPlan, Plan, plan, plan_teardown};
