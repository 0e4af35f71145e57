//! Service-discovery DNS: service names resolve to their VIP, or to shuffled task IPs (dnsrr).
//!
//! This is the mesh's equivalent of Docker's embedded DNS server (127.0.0.11 in each
//! container): an authoritative-only server, built on
//! [hickory-server](https://docs.rs/hickory-server), that answers A and AAAA queries for
//! service names from an immutable [`DnsTable`] and never recurses.
//!
//! - **Pure core**: [`DnsTable`] (validated names and addresses) and the handler behind
//!   [`DnsTable::respond`], which turns a query message into a response message without any
//!   socket. The server runs the very same code.
//! - **Thin shell**: [`DnsServer`] binds UDP and TCP inside a network namespace and serves the
//!   table; [`DnsServer::update`] swaps it atomically. Its serving loops bound what a flood can
//!   make it hold ([`Limits`]: UDP queries in flight, TCP connections, TCP idle time) and count
//!   what happened ([`DnsServer::stats`]).
//!
//! # What it answers
//!
//! For a zone `mesh.local.` (see [`DnsTable`] for the full table):
//!
//! | query                                   | response                                      |
//! |-----------------------------------------|-----------------------------------------------|
//! | A/AAAA `vote.` or `vote.mesh.local.`    | VIP mode: the VIP(s). dnsrr: the task IPs, in a new random order per query |
//! | A/AAAA `tasks.vote.`                    | the task IPs, shuffled (both modes)           |
//! | other types for a known name            | NOERROR, no record (NODATA)                   |
//! | unknown name in the zone, unknown bare name | NXDOMAIN                                  |
//! | any name outside the zone               | REFUSED; RA is always 0                       |
//! | class other than IN                     | REFUSED                                       |
//! | opcode other than QUERY                 | NOTIMP                                        |
//! | zero or several questions               | FORMERR                                       |
//! | EDNS version above 0                    | BADVERS                                       |
//! | undecodable message                     | FORMERR (bare header); dropped if shorter than a header |
//! | a response message                      | dropped                                       |
//!
//! Answers are authoritative (AA) except REFUSED; NXDOMAIN and NODATA carry no SOA, so
//! resolvers do not cache them. Every record has the table's TTL ([`DEFAULT_TTL`] = 5 s).
//!
//! # Size bound (no amplification)
//!
//! A UDP answer is at most 512 bytes, or `min(EDNS size, 1232)` bytes when the query has an
//! EDNS record ([`MIN_UDP_PAYLOAD`], [`MAX_UDP_PAYLOAD`]). Records that do not fit are left out
//! and TC is set (a shuffled subset, so the load still spreads), and the client retries over
//! TCP where the full set goes out. Only the question is echoed, never the query's other
//! sections, so errors are no larger than the question plus an 11-byte OPT record. See
//! [`DnsTable::respond`]. The largest answer/query size ratio is therefore 512/19 ≈ 26.9
//! without EDNS and 1232/30 ≈ 41.1 with it (a one-letter service name with many tasks);
//! queries that get no record (errors, other zones, ANY, zone transfers) get at most what they
//! sent. `tests/amplification.rs` checks both over a table of types, names and EDNS sizes.
//!
//! # Under a flood
//!
//! At most [`Limits::udp_in_flight`] UDP queries are answered at once; beyond, the server
//! stops reading and the kernel drops what overflows the socket buffer (no SERVFAIL, no
//! REFUSED: an error costs as much to send as an answer). At most [`Limits::tcp_connections`]
//! TCP connections are open; one more is closed at once, and a connection idle for
//! [`Limits::tcp_idle`] is closed.
//!
//! # Examples
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use vipmesh_dns::DnsTable;
//!
//! let tasks: [IpAddr; 2] = [Ipv4Addr::new(10, 0, 0, 10).into(), Ipv4Addr::new(10, 0, 0, 11).into()];
//! let table = DnsTable::builder("mesh.local.")?            // typed error on an invalid zone
//!     .vip("vote", [Ipv4Addr::new(10, 0, 0, 9)])?          // A vote. = 10.0.0.9
//!     .tasks("vote", tasks)?                              // A tasks.vote. = the tasks
//!     .dnsrr("web", tasks)?                               // A web. = the tasks, shuffled
//!     .build();
//! assert_eq!(table.len(), 2);
//! // Then: DnsServer::spawn(Some(&netns), "127.0.0.11:53".parse()?, table)?
//! # Ok::<(), vipmesh_dns::Error>(())
//! ```
#![deny(missing_docs)]

mod error;
mod handler;
mod server;
mod table;

pub use error::Error;
pub use handler::{MAX_UDP_PAYLOAD, MIN_UDP_PAYLOAD, Transport};
pub use server::{DnsServer, Limits, ServerStats, TCP_IDLE_TIMEOUT};
pub use table::{DEFAULT_TTL, DnsTable, DnsTableBuilder, ServiceName, TASKS_LABEL};
