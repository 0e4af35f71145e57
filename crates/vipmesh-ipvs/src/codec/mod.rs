//! The pure wire format: generic-netlink framing ([`wire`]) and IPVS messages and
//! attributes ([`ipvs`]). No sockets here.
//!
//! # Why hand-written framing
//! `netlink-packet-core`/`-generic` would give us the header types, but IPVS needs
//! exactly three things they make harder: (1) byte-exact round trips of every attribute,
//! including unknown ones and the `NLA_F_NESTED` bit, which we keep per nest;
//! (2) a parse error that carries the byte offset into the reply, which the issue's
//! bad-input cases ask for; (3) no allocation per message when a 110 000-operation batch
//! is framed back to back into one send buffer. The framing is ~400 lines with a
//! bounds-checked [`wire::Writer`] and a checked attribute iterator, and it is fuzzed.
//! The socket itself is `netlink-sys`.

pub mod ipvs;
pub mod wire;

pub use ipvs::{
    Cmd, CmdAttr, DestAttr, InfoAttr, IpvsAttrs, IpvsMessage, IpvsNlMessage, NestFlag, StatsAttr,
    SvcAttr,
};
pub use wire::{DecodeError, DecodeErrorKind, Emit, EncodeError, NlHeader, Writer};

#[cfg(test)]
mod fixture_tests;
