//! The typed model: one `inet` table per network, its chains, rules, named sets and maps.
//!
//! Constructors validate; a built value is valid, and a [`Table`] checks every cross reference
//! (a rule's map exists and has the key type the rule's key expression produces, a jump target
//! exists, NAT statements sit in NAT chains) when an object is added.
//!
//! Reference: [`nft(8)`](https://www.netfilter.org/projects/nftables/manpage.html), sections
//! *TABLES*, *CHAINS*, *SETS*, *MAPS*, *PAYLOAD EXPRESSION*, *STATEMENTS*.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::Error;

/// The comment every table we create carries; a table with our name but without it is
/// foreign and never touched.
pub const OWNER_COMMENT: &str = "vipmesh";

/// The prefix of our table names: `vipmesh-<network id>`.
pub const TABLE_PREFIX: &str = "vipmesh-";

/// The nft family of our tables. Always `inet`: one table holds the IPv4 and the IPv6 rules of
/// a network, so one transaction updates both (`inet` NAT chains need Linux 5.2).
pub const FAMILY: &str = "inet";

/// A short network id: 1–10 characters `[a-z0-9]`. The table is `vipmesh-<id>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetworkId(String);

impl NetworkId {
    /// Validates `id`.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `network id`) when empty, longer than 10, or not
    /// `[a-z0-9]`.
    pub fn new(id: &str) -> Result<NetworkId, Error> {
        if id.is_empty() || id.len() > 10 {
            return Err(Error::invalid("network id", id, "must be 1-10 characters"));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(Error::invalid("network id", id, "only [a-z0-9] allowed"));
        }
        Ok(NetworkId(id.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The table name, `vipmesh-<id>`.
    pub fn table_name(&self) -> String {
        format!("{TABLE_PREFIX}{}", self.0)
    }

    /// The id of a table name `vipmesh-<id>`, if it is one of ours by name.
    pub fn from_table_name(name: &str) -> Option<NetworkId> {
        name.strip_prefix(TABLE_PREFIX)
            .and_then(|id| NetworkId::new(id).ok())
    }
}

impl fmt::Display for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A chain, set or map name inside our table: `[a-z][a-z0-9_]{0,31}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// Validates `name`.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `name`).
    pub fn new(name: &str) -> Result<Name, Error> {
        let mut b = name.bytes();
        match b.next() {
            Some(c) if c.is_ascii_lowercase() => {}
            _ => return Err(Error::invalid("name", name, "must start with [a-z]")),
        }
        if name.len() > 32 {
            return Err(Error::invalid("name", name, "longer than 32 bytes"));
        }
        if !b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_') {
            return Err(Error::invalid("name", name, "only [a-z0-9_] allowed"));
        }
        // Keywords nft would parse differently in `add rule inet t <chain>` or `@<map>`.
        if matches!(name, "handle" | "position" | "index" | "comment") {
            return Err(Error::invalid("name", name, "is an nft keyword"));
        }
        Ok(Name(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An interface name for `iifname`/`oifname` (1–15 bytes, no quotes, `/`, `*` or whitespace).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfName(String);

impl IfName {
    /// Validates `name`.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `interface`).
    pub fn new(name: &str) -> Result<IfName, Error> {
        if name.is_empty() || name.len() > 15 {
            return Err(Error::invalid("interface", name, "must be 1-15 bytes"));
        }
        if name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '/' | '*' | '\\'))
        {
            return Err(Error::invalid(
                "interface",
                name,
                "no whitespace, quotes, '/', '*' or '\\'",
            ));
        }
        Ok(IfName(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

/// An IP protocol number (`inet_proto`), printed by name where nft prints a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Proto(pub u8);

const PROTO_NAMES: &[(u8, &str)] = &[
    (1, "icmp"),
    (6, "tcp"),
    (17, "udp"),
    (33, "dccp"),
    (47, "gre"),
    (58, "ipv6-icmp"),
    (132, "sctp"),
    (136, "udplite"),
];

impl Proto {
    /// TCP (6).
    pub const TCP: Proto = Proto(6);
    /// UDP (17).
    pub const UDP: Proto = Proto(17);
    /// SCTP (132).
    pub const SCTP: Proto = Proto(132);

    /// Parses a name (`tcp`) or a number (`6`).
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `protocol`).
    pub fn parse(s: &str) -> Result<Proto, Error> {
        if let Some((n, _)) = PROTO_NAMES.iter().find(|(_, name)| *name == s) {
            return Ok(Proto(*n));
        }
        s.parse::<u8>()
            .map(Proto)
            .map_err(|_| Error::invalid("protocol", s, "unknown protocol name"))
    }

    /// Whether `<proto> dport` exists (TCP, UDP, SCTP, UDP-Lite, DCCP).
    pub fn has_ports(self) -> bool {
        matches!(self.0, 6 | 17 | 33 | 132 | 136)
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match PROTO_NAMES.iter().find(|(n, _)| *n == self.0) {
            Some((_, name)) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

/// One component of a set/map key type, or of a concatenated map value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyPart {
    /// `ipv4_addr`.
    Ipv4Addr,
    /// `ipv6_addr`.
    Ipv6Addr,
    /// `inet_proto` (the L4 protocol number).
    InetProto,
    /// `inet_service` (a port).
    InetService,
    /// `mark`.
    Mark,
}

impl KeyPart {
    /// The nft type name.
    pub fn nft_name(self) -> &'static str {
        match self {
            KeyPart::Ipv4Addr => "ipv4_addr",
            KeyPart::Ipv6Addr => "ipv6_addr",
            KeyPart::InetProto => "inet_proto",
            KeyPart::InetService => "inet_service",
            KeyPart::Mark => "mark",
        }
    }

    /// Parses an nft type name.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `key type`).
    pub fn parse(s: &str) -> Result<KeyPart, Error> {
        Ok(match s {
            "ipv4_addr" => KeyPart::Ipv4Addr,
            "ipv6_addr" => KeyPart::Ipv6Addr,
            "inet_proto" => KeyPart::InetProto,
            "inet_service" => KeyPart::InetService,
            "mark" => KeyPart::Mark,
            _ => return Err(Error::invalid("key type", s, "unsupported type")),
        })
    }
}

/// A key type: one type or a concatenation (`ipv4_addr . inet_proto . inet_service`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyType(Vec<KeyPart>);

impl KeyType {
    /// A key type of 1–4 parts.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `key type`).
    pub fn new(parts: &[KeyPart]) -> Result<KeyType, Error> {
        if parts.is_empty() || parts.len() > 4 {
            return Err(Error::invalid(
                "key type",
                format!("{parts:?}"),
                "must have 1-4 parts",
            ));
        }
        Ok(KeyType(parts.to_vec()))
    }

    /// The parts.
    pub fn parts(&self) -> &[KeyPart] {
        &self.0
    }

    /// Parses `ipv4_addr . inet_service` (the form nft prints for concatenated map values).
    ///
    /// # Errors
    /// [`Error::InvalidValue`].
    pub fn parse(s: &str) -> Result<KeyType, Error> {
        let parts = s
            .split('.')
            .map(|p| KeyPart::parse(p.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        KeyType::new(&parts)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" . ")?;
            }
            f.write_str(p.nft_name())?;
        }
        Ok(())
    }
}

/// The value type of a map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ValueType {
    /// `mark`: for `meta mark set … map @m`.
    Mark,
    /// `verdict`: a verdict map (`… vmap @m`).
    Verdict,
    /// Data such as `ipv4_addr . inet_service`, for `dnat ip to … map @m`.
    Data(KeyType),
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueType::Mark => f.write_str("mark"),
            ValueType::Verdict => f.write_str("verdict"),
            ValueType::Data(k) => write!(f, "{k}"),
        }
    }
}

/// One component of a key (or of a data value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyValue {
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address.
    Ipv6(Ipv6Addr),
    /// A protocol.
    Proto(Proto),
    /// A port.
    Port(u16),
    /// A mark.
    Mark(u32),
}

impl KeyValue {
    /// The type of this value.
    pub fn part(&self) -> KeyPart {
        match self {
            KeyValue::Ipv4(_) => KeyPart::Ipv4Addr,
            KeyValue::Ipv6(_) => KeyPart::Ipv6Addr,
            KeyValue::Proto(_) => KeyPart::InetProto,
            KeyValue::Port(_) => KeyPart::InetService,
            KeyValue::Mark(_) => KeyPart::Mark,
        }
    }
}

impl From<IpAddr> for KeyValue {
    fn from(a: IpAddr) -> Self {
        match a {
            IpAddr::V4(a) => KeyValue::Ipv4(a),
            IpAddr::V6(a) => KeyValue::Ipv6(a),
        }
    }
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValue::Ipv4(a) => write!(f, "{a}"),
            KeyValue::Ipv6(a) => write!(f, "{a}"),
            KeyValue::Proto(p) => write!(f, "{p}"),
            KeyValue::Port(p) => write!(f, "{p}"),
            KeyValue::Mark(m) => write!(f, "{m:#x}"),
        }
    }
}

/// A set element or map key: one value or a concatenation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(Vec<KeyValue>);

impl Key {
    /// A key of 1–4 values.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `element key`).
    pub fn new(values: &[KeyValue]) -> Result<Key, Error> {
        if values.is_empty() || values.len() > 4 {
            return Err(Error::invalid(
                "element key",
                format!("{values:?}"),
                "must have 1-4 parts",
            ));
        }
        Ok(Key(values.to_vec()))
    }

    /// The values.
    pub fn values(&self) -> &[KeyValue] {
        &self.0
    }

    /// Whether the key has type `ty`.
    pub fn has_type(&self, ty: &KeyType) -> bool {
        self.0.len() == ty.0.len() && self.0.iter().zip(&ty.0).all(|(v, t)| v.part() == *t)
    }

    fn check(&self, field: &'static str, ty: &KeyType) -> Result<(), Error> {
        if self.has_type(ty) {
            Ok(())
        } else {
            Err(Error::invalid(
                field,
                self.to_string(),
                format!("expected type {ty}"),
            ))
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" . ")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// A verdict (in a rule or as a verdict-map value).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `return`.
    Return,
    /// `continue`.
    Continue,
    /// `jump <chain>`.
    Jump(Name),
    /// `goto <chain>`.
    Goto(Name),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Continue => f.write_str("continue"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

/// A map value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// A mark.
    Mark(u32),
    /// A verdict.
    Verdict(Verdict),
    /// Data (e.g. `172.18.0.2 . 8080` for DNAT).
    Data(Key),
}

impl Value {
    fn check(&self, ty: &ValueType) -> Result<(), Error> {
        let ok = match (self, ty) {
            (Value::Mark(_), ValueType::Mark) | (Value::Verdict(_), ValueType::Verdict) => true,
            (Value::Data(k), ValueType::Data(t)) => k.has_type(t),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(
                "element value",
                self.to_string(),
                format!("expected type {ty}"),
            ))
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Mark(m) => write!(f, "{m:#x}"),
            Value::Verdict(v) => write!(f, "{v}"),
            Value::Data(k) => write!(f, "{k}"),
        }
    }
}

/// A named set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    key: KeyType,
    elements: BTreeSet<Key>,
}

impl Set {
    /// An empty set of `key`s.
    pub fn new(key: KeyType) -> Set {
        Set {
            key,
            elements: BTreeSet::new(),
        }
    }

    /// The key type.
    pub fn key_type(&self) -> &KeyType {
        &self.key
    }

    /// The elements, sorted.
    pub fn elements(&self) -> &BTreeSet<Key> {
        &self.elements
    }

    /// Adds an element.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `element key`) when its type differs from the set's.
    pub fn insert(&mut self, key: Key) -> Result<(), Error> {
        key.check("element key", &self.key)?;
        self.elements.insert(key);
        Ok(())
    }

    /// Removes an element; true if it was there.
    pub fn remove(&mut self, key: &Key) -> bool {
        self.elements.remove(key)
    }
}

/// A named map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    key: KeyType,
    value: ValueType,
    elements: BTreeMap<Key, Value>,
}

impl Map {
    /// An empty map from `key` to `value`.
    pub fn new(key: KeyType, value: ValueType) -> Map {
        Map {
            key,
            value,
            elements: BTreeMap::new(),
        }
    }

    /// The key type.
    pub fn key_type(&self) -> &KeyType {
        &self.key
    }

    /// The value type.
    pub fn value_type(&self) -> &ValueType {
        &self.value
    }

    /// The elements, sorted by key.
    pub fn elements(&self) -> &BTreeMap<Key, Value> {
        &self.elements
    }

    /// Adds or replaces an element.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `element key` or `element value`) on a type mismatch.
    pub fn insert(&mut self, key: Key, value: Value) -> Result<(), Error> {
        key.check("element key", &self.key)?;
        value.check(&self.value)?;
        self.elements.insert(key, value);
        Ok(())
    }

    /// Removes an element; its value if it was there.
    pub fn remove(&mut self, key: &Key) -> Option<Value> {
        self.elements.remove(key)
    }
}

/// A base chain's hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// `prerouting`.
    Prerouting,
    /// `input`.
    Input,
    /// `forward`.
    Forward,
    /// `output`.
    Output,
    /// `postrouting`.
    Postrouting,
}

impl Hook {
    /// The nft name.
    pub fn nft_name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }

    /// Parses an nft hook name.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `hook`).
    pub fn parse(s: &str) -> Result<Hook, Error> {
        Ok(match s {
            "prerouting" => Hook::Prerouting,
            "input" => Hook::Input,
            "forward" => Hook::Forward,
            "output" => Hook::Output,
            "postrouting" => Hook::Postrouting,
            _ => return Err(Error::invalid("hook", s, "unknown hook")),
        })
    }
}

/// A base chain's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainType {
    /// `filter`.
    Filter,
    /// `nat` (consulted for the first packet of a connection only).
    Nat,
    /// `route` (output only: re-routes when the mark or addresses change).
    Route,
}

impl ChainType {
    /// The nft name.
    pub fn nft_name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Route => "route",
        }
    }

    /// Parses an nft chain type.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `chain type`).
    pub fn parse(s: &str) -> Result<ChainType, Error> {
        Ok(match s {
            "filter" => ChainType::Filter,
            "nat" => ChainType::Nat,
            "route" => ChainType::Route,
            _ => return Err(Error::invalid("chain type", s, "unknown chain type")),
        })
    }
}

/// A base chain's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
}

impl Policy {
    /// The nft name.
    pub fn nft_name(self) -> &'static str {
        match self {
            Policy::Accept => "accept",
            Policy::Drop => "drop",
        }
    }
}

/// A base chain's priority (lower runs first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(pub i32);

impl Priority {
    /// `raw` (-300).
    pub const RAW: Priority = Priority(-300);
    /// `mangle` (-150): where iptables' mangle table runs; before IPVS (LOCAL_IN, 98/100).
    pub const MANGLE: Priority = Priority(-150);
    /// `dstnat` (-100).
    pub const DSTNAT: Priority = Priority(-100);
    /// `filter` (0).
    pub const FILTER: Priority = Priority(0);
    /// `srcnat` (100).
    pub const SRCNAT: Priority = Priority(100);
}

/// What makes a chain a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    /// The chain type.
    pub kind: ChainType,
    /// The hook.
    pub hook: Hook,
    /// The priority.
    pub priority: Priority,
    /// The policy.
    pub policy: Policy,
}

impl BaseChain {
    /// Validates type/hook combinations the kernel refuses (`route` only on `output`; `nat`
    /// not on `forward`).
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `base chain`).
    pub fn new(
        kind: ChainType,
        hook: Hook,
        priority: Priority,
        policy: Policy,
    ) -> Result<BaseChain, Error> {
        let ok = match kind {
            ChainType::Filter => true,
            ChainType::Nat => hook != Hook::Forward,
            ChainType::Route => hook == Hook::Output,
        };
        if !ok {
            return Err(Error::invalid(
                "base chain",
                format!("type {} hook {}", kind.nft_name(), hook.nft_name()),
                "the kernel has no such chain type on this hook",
            ));
        }
        Ok(BaseChain {
            kind,
            hook,
            priority,
            policy,
        })
    }
}

/// An IP family for the address selectors and NAT statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// IPv4 (`ip`).
    V4,
    /// IPv6 (`ip6`).
    V6,
}

impl IpFamily {
    /// `ip` or `ip6`.
    pub fn nft_name(self) -> &'static str {
        match self {
            IpFamily::V4 => "ip",
            IpFamily::V6 => "ip6",
        }
    }

    /// The family of an address.
    pub fn of(addr: IpAddr) -> IpFamily {
        match addr {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }
}

/// One part of a lookup key expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Selector {
    /// `ip daddr`.
    Ip4Daddr,
    /// `ip6 daddr`.
    Ip6Daddr,
    /// `meta l4proto`.
    L4Proto,
    /// `th dport` (the transport header's destination port).
    ThDport,
    /// `meta mark`.
    MetaMark,
}

impl Selector {
    /// The type the selector yields.
    pub fn part(self) -> KeyPart {
        match self {
            Selector::Ip4Daddr => KeyPart::Ipv4Addr,
            Selector::Ip6Daddr => KeyPart::Ipv6Addr,
            Selector::L4Proto => KeyPart::InetProto,
            Selector::ThDport => KeyPart::InetService,
            Selector::MetaMark => KeyPart::Mark,
        }
    }

    /// The nft expression.
    pub fn nft_text(self) -> &'static str {
        match self {
            Selector::Ip4Daddr => "ip daddr",
            Selector::Ip6Daddr => "ip6 daddr",
            Selector::L4Proto => "meta l4proto",
            Selector::ThDport => "th dport",
            Selector::MetaMark => "meta mark",
        }
    }
}

/// A lookup key expression: one selector or a concatenation (`ip daddr . meta l4proto . th
/// dport`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyExpr(Vec<Selector>);

impl KeyExpr {
    /// A key expression of 1–4 selectors.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `key expression`).
    pub fn new(sel: &[Selector]) -> Result<KeyExpr, Error> {
        if sel.is_empty() || sel.len() > 4 {
            return Err(Error::invalid(
                "key expression",
                format!("{sel:?}"),
                "must have 1-4 selectors",
            ));
        }
        Ok(KeyExpr(sel.to_vec()))
    }

    /// The selectors.
    pub fn selectors(&self) -> &[Selector] {
        &self.0
    }

    /// The key type the expression yields.
    pub fn key_type(&self) -> KeyType {
        KeyType(self.0.iter().map(|s| s.part()).collect())
    }
}

impl fmt::Display for KeyExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" . ")?;
            }
            f.write_str(s.nft_text())?;
        }
        Ok(())
    }
}

/// An address prefix (`10.0.0.0/24`; a host address has the full length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// Validates `addr/len` (host bits must be zero).
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `prefix`).
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, Error> {
        let (bits, max) = match addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, 32u8),
            IpAddr::V6(a) => (u128::from(a), 128u8),
        };
        if len > max {
            return Err(Error::invalid(
                "prefix",
                format!("{addr}/{len}"),
                "length too long",
            ));
        }
        let host = if len == 0 {
            u128::MAX
        } else {
            (1u128 << (128 - u32::from(len))).wrapping_sub(1)
        };
        if bits & host != 0 && len < 128 {
            return Err(Error::invalid(
                "prefix",
                format!("{addr}/{len}"),
                "host bits are set",
            ));
        }
        Ok(Prefix { addr, len })
    }

    /// A single host.
    pub fn host(addr: IpAddr) -> Prefix {
        let len = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        Prefix { addr, len }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether this is a host address.
    pub fn is_host(&self) -> bool {
        *self == Prefix::host(self.addr)
    }
}

impl std::str::FromStr for Prefix {
    type Err = Error;
    fn from_str(s: &str) -> Result<Prefix, Error> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| Error::invalid("prefix", s, "not an IP address"))?;
        match l {
            None => Ok(Prefix::host(addr)),
            Some(l) => {
                let len = l
                    .parse()
                    .map_err(|_| Error::invalid("prefix", s, "bad length"))?;
                Prefix::new(addr, len)
            }
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.len)
        }
    }
}

/// Connection tracking states for `ct state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtState {
    /// `new`.
    New,
    /// `established`.
    Established,
    /// `related`.
    Related,
    /// `invalid`.
    Invalid,
}

impl CtState {
    /// The nft name.
    pub fn nft_name(self) -> &'static str {
        match self {
            CtState::New => "new",
            CtState::Established => "established",
            CtState::Related => "related",
            CtState::Invalid => "invalid",
        }
    }

    /// Parses an nft state name.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `ct state`).
    pub fn parse(s: &str) -> Result<CtState, Error> {
        Ok(match s {
            "new" => CtState::New,
            "established" => CtState::Established,
            "related" => CtState::Related,
            "invalid" => CtState::Invalid,
            _ => return Err(Error::invalid("ct state", s, "unknown state")),
        })
    }
}

/// A match of the typed rule subset.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Match {
    /// `iifname "eth0"`.
    IifName(IfName),
    /// `oifname "eth0"`.
    OifName(IfName),
    /// `fib daddr type local`: the destination is a local address (iptables'
    /// `-m addrtype --dst-type LOCAL`).
    FibDaddrLocal,
    /// `fib saddr type local`: the source is a local address (iptables'
    /// `-m addrtype --src-type LOCAL`).
    FibSaddrLocal,
    /// `ip daddr 10.0.0.0/24` or `ip6 daddr fd00::/64`.
    Daddr(Prefix),
    /// `meta l4proto tcp`.
    L4Proto(Proto),
    /// `tcp dport 80` (the protocol must have ports).
    Dport {
        /// The protocol.
        proto: Proto,
        /// The port.
        port: u16,
    },
    /// `meta mark 0x100-0x1ff` (or one mark when `first == last`).
    Mark {
        /// First mark.
        first: u32,
        /// Last mark (inclusive).
        last: u32,
    },
    /// `ct state established,related` (non-empty, sorted).
    CtState(Vec<CtState>),
}

impl Match {
    /// A `dport` match.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `protocol`) for a protocol without ports.
    pub fn dport(proto: Proto, port: u16) -> Result<Match, Error> {
        if !proto.has_ports() {
            return Err(Error::invalid(
                "protocol",
                proto.to_string(),
                "has no ports",
            ));
        }
        Ok(Match::Dport { proto, port })
    }

    /// A mark range match.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `mark range`) when `first > last`.
    pub fn mark_range(first: u32, last: u32) -> Result<Match, Error> {
        if first > last {
            return Err(Error::invalid(
                "mark range",
                format!("{first:#x}-{last:#x}"),
                "first is after last",
            ));
        }
        Ok(Match::Mark { first, last })
    }

    /// A `ct state` match.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] (field `ct state`) when empty.
    pub fn ct_state(states: &[CtState]) -> Result<Match, Error> {
        let mut v = states.to_vec();
        v.sort();
        v.dedup();
        if v.is_empty() {
            return Err(Error::invalid("ct state", "", "no states"));
        }
        Ok(Match::CtState(v))
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::IifName(i) => write!(f, "iifname {i}"),
            Match::OifName(i) => write!(f, "oifname {i}"),
            Match::FibDaddrLocal => f.write_str("fib daddr type local"),
            Match::FibSaddrLocal => f.write_str("fib saddr type local"),
            Match::Daddr(p) => write!(f, "{} daddr {p}", IpFamily::of(p.addr()).nft_name()),
            Match::L4Proto(p) => write!(f, "meta l4proto {p}"),
            Match::Dport { proto, port } => write!(f, "{proto} dport {port}"),
            Match::Mark { first, last } if first == last => write!(f, "meta mark {first:#x}"),
            Match::Mark { first, last } => write!(f, "meta mark {first:#x}-{last:#x}"),
            Match::CtState(s) => {
                f.write_str("ct state ")?;
                for (i, s) in s.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(s.nft_name())?;
                }
                Ok(())
            }
        }
    }
}

/// How a `reject` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectWith {
    /// A TCP reset (TCP packets only: match `meta l4proto tcp` first).
    TcpReset,
    /// ICMP or ICMPv6 port unreachable, by the packet's family (`icmpx`).
    PortUnreachable,
}

/// The statement that ends a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Statement {
    /// `meta mark set <key> map @<map>` (map value type `mark`).
    SetMark {
        /// The lookup key.
        key: KeyExpr,
        /// The map.
        map: Name,
    },
    /// `dnat ip to <key> map @<map>` (map value `ipv4_addr . inet_service`, or the v6 form).
    DnatMap {
        /// `ip` or `ip6`.
        family: IpFamily,
        /// The lookup key.
        key: KeyExpr,
        /// The map.
        map: Name,
    },
    /// `snat ip to <addr>`.
    Snat(IpAddr),
    /// `redirect to :<port>`.
    Redirect(u16),
    /// `masquerade` (the source becomes the outgoing interface's address).
    Masquerade,
    /// `reject with …` (terminal).
    Reject(RejectWith),
    /// `<key> vmap @<map>` (map value type `verdict`).
    Vmap {
        /// The lookup key.
        key: KeyExpr,
        /// The map.
        map: Name,
    },
    /// A verdict.
    Verdict(Verdict),
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Statement::SetMark { key, map } => write!(f, "meta mark set {key} map @{map}"),
            Statement::DnatMap { family, key, map } => {
                write!(f, "dnat {} to {key} map @{map}", family.nft_name())
            }
            Statement::Snat(a) => write!(f, "snat {} to {a}", IpFamily::of(*a).nft_name()),
            Statement::Redirect(p) => write!(f, "redirect to :{p}"),
            Statement::Masquerade => f.write_str("masquerade"),
            Statement::Reject(RejectWith::TcpReset) => f.write_str("reject with tcp reset"),
            Statement::Reject(RejectWith::PortUnreachable) => {
                f.write_str("reject with icmpx port-unreachable")
            }
            Statement::Vmap { key, map } => write!(f, "{key} vmap @{map}"),
            Statement::Verdict(v) => write!(f, "{v}"),
        }
    }
}

/// A rule: matches (all must hold) and one statement.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// The matches, in order.
    pub matches: Vec<Match>,
    /// The statement.
    pub stmt: Statement,
}

impl Rule {
    /// A rule.
    pub fn new(matches: Vec<Match>, stmt: Statement) -> Rule {
        Rule { matches, stmt }
    }

    /// Kernel modules this rule needs beyond `nf_tables` itself (for error messages when the
    /// kernel refuses a rule with EOPNOTSUPP). See `net/netfilter/nft_*.c` in the kernel.
    pub fn modules(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        for x in &self.matches {
            match x {
                Match::FibDaddrLocal | Match::FibSaddrLocal => m.push("nft_fib_inet"),
                Match::CtState(_) => m.push("nft_ct"),
                _ => {}
            }
        }
        match &self.stmt {
            Statement::DnatMap { .. } | Statement::Snat(_) => m.push("nft_nat"),
            Statement::Masquerade => m.push("nft_masq"),
            Statement::Reject(_) => m.push("nft_reject_inet"),
            Statement::Redirect(_) => m.push("nft_redir"),
            _ => {}
        }
        m.sort_unstable();
        m.dedup();
        if m.is_empty() {
            m.push("nf_tables");
        }
        m
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.matches {
            write!(f, "{m} ")?;
        }
        write!(f, "{}", self.stmt)
    }
}

/// A chain: a base chain (with a hook) or a regular one, and its rules in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// `Some` for a base chain.
    pub base: Option<BaseChain>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

/// One `vipmesh-<id>` table of family `inet`: its sets, maps and chains.
///
/// # Examples
/// ```
/// use vipmesh_nft::*;
/// let mut t = Table::new(NetworkId::new("web")?);
/// let key = KeyType::new(&[KeyPart::Ipv4Addr])?;
/// t.add_map(Name::new("vips")?, Map::new(key, ValueType::Mark))?;
/// t.insert_element(&Name::new("vips")?, Key::new(&[KeyValue::Ipv4("10.0.0.9".parse()?)])?,
///     Some(Value::Mark(0x100)))?;
/// let chain = Name::new("mark_in")?;
/// t.add_chain(chain.clone(), Some(BaseChain::new(ChainType::Filter, Hook::Input,
///     Priority::MANGLE, Policy::Accept)?))?;
/// t.add_rule(&chain, Rule::new(vec![], Statement::SetMark {
///     key: KeyExpr::new(&[Selector::Ip4Daddr])?, map: Name::new("vips")? }))?;
/// assert!(t.to_string().contains("add rule inet vipmesh-web mark_in meta mark set ip daddr map @vips"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    id: NetworkId,
    sets: BTreeMap<Name, Set>,
    maps: BTreeMap<Name, Map>,
    chains: BTreeMap<Name, Chain>,
}

impl Table {
    /// An empty table `vipmesh-<id>`.
    pub fn new(id: NetworkId) -> Table {
        Table {
            id,
            sets: BTreeMap::new(),
            maps: BTreeMap::new(),
            chains: BTreeMap::new(),
        }
    }

    /// The network id.
    pub fn id(&self) -> &NetworkId {
        &self.id
    }

    /// The table name, `vipmesh-<id>`.
    pub fn name(&self) -> String {
        self.id.table_name()
    }

    /// The sets.
    pub fn sets(&self) -> &BTreeMap<Name, Set> {
        &self.sets
    }

    /// The maps.
    pub fn maps(&self) -> &BTreeMap<Name, Map> {
        &self.maps
    }

    /// The chains.
    pub fn chains(&self) -> &BTreeMap<Name, Chain> {
        &self.chains
    }

    fn err(&self, object: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidTable {
            table: self.name(),
            object: object.into(),
            reason: reason.into(),
        }
    }

    fn check_new_set_name(&self, name: &Name) -> Result<(), Error> {
        if self.sets.contains_key(name) || self.maps.contains_key(name) {
            return Err(self.err(format!("set/map {name}"), "name already used"));
        }
        Ok(())
    }

    /// Adds a named set.
    ///
    /// # Errors
    /// [`Error::InvalidTable`] if a set or map of that name exists.
    pub fn add_set(&mut self, name: Name, set: Set) -> Result<(), Error> {
        self.check_new_set_name(&name)?;
        self.sets.insert(name, set);
        Ok(())
    }

    /// Adds a named map. A verdict map's jump/goto targets must exist as chains.
    ///
    /// # Errors
    /// [`Error::InvalidTable`] if a set or map of that name exists, or a verdict names a
    /// missing chain.
    pub fn add_map(&mut self, name: Name, map: Map) -> Result<(), Error> {
        self.check_new_set_name(&name)?;
        for v in map.elements.values() {
            self.check_verdict_value(&name, v)?;
        }
        self.maps.insert(name, map);
        Ok(())
    }

    fn check_verdict_value(&self, map: &Name, v: &Value) -> Result<(), Error> {
        if let Value::Verdict(Verdict::Jump(c) | Verdict::Goto(c)) = v
            && !self.chains.contains_key(c)
        {
            return Err(self.err(
                format!("map {map}"),
                format!("verdict names missing chain {c}"),
            ));
        }
        Ok(())
    }

    /// Adds an empty chain.
    ///
    /// # Errors
    /// [`Error::InvalidTable`] if it exists.
    pub fn add_chain(&mut self, name: Name, base: Option<BaseChain>) -> Result<(), Error> {
        if self.chains.contains_key(&name) {
            return Err(self.err(format!("chain {name}"), "already exists"));
        }
        self.chains.insert(
            name,
            Chain {
                base,
                rules: Vec::new(),
            },
        );
        Ok(())
    }

    /// Appends a rule to `chain`, after checking its references.
    ///
    /// # Errors
    /// [`Error::InvalidTable`]: the chain or a referenced map/chain is missing, a key
    /// expression's type differs from its map's key type, a map has the wrong value type, or
    /// a NAT statement sits in a base chain that is not a NAT chain on a fitting hook.
    pub fn add_rule(&mut self, chain: &Name, rule: Rule) -> Result<(), Error> {
        let obj = format!("rule in {chain}: {rule}");
        let Some(c) = self.chains.get(chain) else {
            return Err(self.err(obj, "no such chain"));
        };
        let lookup = |key: &KeyExpr, map: &Name, want: &dyn Fn(&ValueType) -> bool| {
            let Some(m) = self.maps.get(map) else {
                return Err(self.err(obj.clone(), format!("no map {map}")));
            };
            if m.key != key.key_type() {
                return Err(self.err(
                    obj.clone(),
                    format!(
                        "key {key} has type {}, map {map} has {}",
                        key.key_type(),
                        m.key
                    ),
                ));
            }
            if !want(&m.value) {
                return Err(self.err(obj.clone(), format!("map {map} has value type {}", m.value)));
            }
            Ok(())
        };
        let nat_hooks: &[Hook] = match &rule.stmt {
            Statement::SetMark { key, map } => {
                lookup(key, map, &|v| *v == ValueType::Mark)?;
                &[]
            }
            Statement::Vmap { key, map } => {
                lookup(key, map, &|v| *v == ValueType::Verdict)?;
                &[]
            }
            Statement::DnatMap { family, key, map } => {
                let fam = *family;
                lookup(key, map, &|v| match v {
                    ValueType::Data(k) => {
                        let addr = match fam {
                            IpFamily::V4 => KeyPart::Ipv4Addr,
                            IpFamily::V6 => KeyPart::Ipv6Addr,
                        };
                        k.parts() == [addr] || k.parts() == [addr, KeyPart::InetService]
                    }
                    _ => false,
                })?;
                &[Hook::Prerouting, Hook::Output]
            }
            Statement::Redirect(_) => &[Hook::Prerouting, Hook::Output],
            Statement::Snat(_) => &[Hook::Postrouting, Hook::Input],
            Statement::Masquerade => &[Hook::Postrouting],
            Statement::Reject(_) => &[],
            Statement::Verdict(Verdict::Jump(t) | Verdict::Goto(t)) => {
                if !self.chains.contains_key(t) {
                    return Err(self.err(obj, format!("no chain {t}")));
                }
                if t == chain {
                    return Err(self.err(obj, "a chain cannot jump to itself"));
                }
                &[]
            }
            Statement::Verdict(_) => &[],
        };
        if let (false, Some(b)) = (nat_hooks.is_empty(), c.base)
            && (b.kind != ChainType::Nat || !nat_hooks.contains(&b.hook))
        {
            return Err(self.err(
                obj,
                format!(
                    "needs a nat chain on {}",
                    nat_hooks
                        .iter()
                        .map(|h| h.nft_name())
                        .collect::<Vec<_>>()
                        .join("/")
                ),
            ));
        }
        if let Some(c) = self.chains.get_mut(chain) {
            c.rules.push(rule);
        }
        Ok(())
    }

    /// Adds (or replaces) an element of a set (`value: None`) or a map (`Some`).
    ///
    /// # Errors
    /// [`Error::InvalidTable`] for a missing set/map or a set/map mismatch,
    /// [`Error::InvalidValue`] for a type mismatch.
    pub fn insert_element(
        &mut self,
        name: &Name,
        key: Key,
        value: Option<Value>,
    ) -> Result<(), Error> {
        match value {
            None => match self.sets.get_mut(name) {
                Some(s) => s.insert(key),
                None => Err(self.err(format!("set {name}"), "no such set")),
            },
            Some(v) => {
                self.check_verdict_value(name, &v)?;
                match self.maps.get_mut(name) {
                    Some(m) => m.insert(key, v),
                    None => Err(self.err(format!("map {name}"), "no such map")),
                }
            }
        }
    }

    /// Removes an element of a set or map; true if it was there.
    pub fn remove_element(&mut self, name: &Name, key: &Key) -> bool {
        if let Some(s) = self.sets.get_mut(name) {
            return s.remove(key);
        }
        self.maps
            .get_mut(name)
            .is_some_and(|m| m.remove(key).is_some())
    }

    /// The same table with every set and map emptied (its structure).
    pub fn structure(&self) -> Table {
        let mut t = self.clone();
        for s in t.sets.values_mut() {
            s.elements.clear();
        }
        for m in t.maps.values_mut() {
            m.elements.clear();
        }
        t
    }

    /// Whether `other` has the same structure (chains, rules, set and map types), ignoring
    /// elements; [`Table::structure`] without the copies.
    pub fn same_structure(&self, other: &Table) -> bool {
        self.id == other.id
            && self.chains == other.chains
            && self.sets.len() == other.sets.len()
            && self.maps.len() == other.maps.len()
            && self
                .sets
                .iter()
                .zip(&other.sets)
                .all(|((a, x), (b, y))| a == b && x.key == y.key)
            && self
                .maps
                .iter()
                .zip(&other.maps)
                .all(|((a, x), (b, y))| a == b && x.key == y.key && x.value == y.value)
    }

    /// Total number of set and map elements.
    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum::<usize>()
            + self.maps.values().map(|m| m.elements.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn network_id_is_validated() {
        assert!(NetworkId::new("ab12").is_ok());
        for bad in ["", "Abc", "a-b", "abcdefghijk", "a b"] {
            let e = NetworkId::new(bad).unwrap_err().to_string();
            assert!(e.contains("network id"), "{e}");
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert_eq!(NetworkId::new("x1").unwrap().table_name(), "vipmesh-x1");
        assert_eq!(
            NetworkId::from_table_name("vipmesh-x1").unwrap().as_str(),
            "x1"
        );
        assert!(NetworkId::from_table_name("filter").is_none());
    }

    #[test]
    fn names_and_interfaces_are_validated() {
        assert!(Name::new("vip4_port").is_ok());
        for bad in ["", "1a", "A", "a-b", "handle", &"a".repeat(33)] {
            assert!(Name::new(bad).is_err(), "{bad}");
        }
        assert!(IfName::new("eth0").is_ok());
        for bad in ["", "a\"b", "a b", "abcdefghijklmnop", "a/b", "e*"] {
            let e = IfName::new(bad).unwrap_err().to_string();
            assert!(e.contains("interface"), "{e}");
        }
    }

    #[test]
    fn prefixes_and_protocols() {
        assert_eq!(
            "10.0.0.0/24".parse::<Prefix>().unwrap().to_string(),
            "10.0.0.0/24"
        );
        assert_eq!(
            "10.0.0.9".parse::<Prefix>().unwrap().to_string(),
            "10.0.0.9"
        );
        assert_eq!(
            "10.0.0.9/32".parse::<Prefix>().unwrap().to_string(),
            "10.0.0.9"
        );
        assert_eq!(
            "fd00::/64".parse::<Prefix>().unwrap().to_string(),
            "fd00::/64"
        );
        assert!("10.0.0.1/24".parse::<Prefix>().is_err());
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert!("0.0.0.0/0".parse::<Prefix>().is_ok());
        assert!("::/0".parse::<Prefix>().is_ok());
        assert_eq!(Proto::parse("tcp").unwrap(), Proto::TCP);
        assert_eq!(Proto::parse("99").unwrap().to_string(), "99");
        assert!(Proto::parse("tcpx").is_err());
        assert!(Match::dport(Proto(1), 1).is_err());
        assert!(Match::mark_range(2, 1).is_err());
        assert!(Match::ct_state(&[]).is_err());
    }

    #[test]
    fn key_types_are_checked() {
        let kt = KeyType::new(&[KeyPart::Ipv4Addr, KeyPart::InetService]).unwrap();
        assert_eq!(kt.to_string(), "ipv4_addr . inet_service");
        assert_eq!(KeyType::parse("ipv4_addr . inet_service").unwrap(), kt);
        assert!(KeyType::new(&[]).is_err());
        let mut m = Map::new(kt.clone(), ValueType::Mark);
        let k = Key::new(&[KeyValue::Ipv4(Ipv4Addr::LOCALHOST), KeyValue::Port(80)]).unwrap();
        m.insert(k.clone(), Value::Mark(1)).unwrap();
        let e = m
            .insert(Key::new(&[KeyValue::Port(80)]).unwrap(), Value::Mark(1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("element key") && e.contains("ipv4_addr . inet_service"),
            "{e}"
        );
        let e = m
            .insert(k, Value::Verdict(Verdict::Accept))
            .unwrap_err()
            .to_string();
        assert!(e.contains("element value \"accept\""), "{e}");
    }

    #[test]
    fn rules_are_checked_against_maps_and_chains() {
        let mut t = Table::new(NetworkId::new("t").unwrap());
        let m = Name::new("m").unwrap();
        t.add_map(
            m.clone(),
            Map::new(KeyType::new(&[KeyPart::Ipv4Addr]).unwrap(), ValueType::Mark),
        )
        .unwrap();
        assert!(
            t.add_map(
                m.clone(),
                Map::new(KeyType::new(&[KeyPart::Mark]).unwrap(), ValueType::Mark)
            )
            .is_err()
        );
        let c = Name::new("c").unwrap();
        t.add_chain(
            c.clone(),
            Some(
                BaseChain::new(
                    ChainType::Filter,
                    Hook::Input,
                    Priority::MANGLE,
                    Policy::Accept,
                )
                .unwrap(),
            ),
        )
        .unwrap();
        let wrong = Rule::new(
            vec![],
            Statement::SetMark {
                key: KeyExpr::new(&[Selector::Ip6Daddr]).unwrap(),
                map: m.clone(),
            },
        );
        let e = t.add_rule(&c, wrong).unwrap_err().to_string();
        assert!(e.contains("ipv6_addr") && e.contains("ipv4_addr"), "{e}");
        let snat = Rule::new(vec![], Statement::Snat("10.0.0.2".parse().unwrap()));
        assert!(
            t.add_rule(&c, snat)
                .unwrap_err()
                .to_string()
                .contains("nat chain")
        );
        let jump = Rule::new(
            vec![],
            Statement::Verdict(Verdict::Jump(Name::new("nope").unwrap())),
        );
        assert!(t.add_rule(&c, jump).is_err());
        assert!(
            BaseChain::new(
                ChainType::Route,
                Hook::Input,
                Priority::MANGLE,
                Policy::Accept
            )
            .is_err()
        );
        assert!(
            t.insert_element(
                &Name::new("zz").unwrap(),
                Key::new(&[KeyValue::Mark(1)]).unwrap(),
                None
            )
            .is_err()
        );
    }
}
