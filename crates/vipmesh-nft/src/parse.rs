//! Parsing `nft -j list table inet vipmesh-<id>` (libnftables' JSON schema,
//! [`libnftables-json(5)`](https://www.netfilter.org/projects/nftables/manpage.html)) back to
//! the typed model.
//!
//! Written by hand over `serde_json::Value` rather than with the `nftables` crate's schema
//! types: nftables 0.6 fails to deserialize a whole listing when one map has a concatenated
//! value type as nft 1.0.6 prints it (`"map": "ipv4_addr . inet_service"`, our DNAT map), and
//! it has no field for table comments (our ownership mark). Anything we cannot type (a foreign
//! rule someone added to our table, an element with a timeout, an unknown expression) is kept
//! as text in [`Observed::unparsed`], which makes the planner rebuild the table. The parser
//! never panics (fuzz target `nft_json`); serde_json bounds nesting depth.

use std::net::IpAddr;

use serde_json::Value as J;

use crate::error::Error;
use crate::model::{
    BaseChain, ChainType, CtState, FAMILY, Hook, IfName, IpFamily, Key, KeyExpr, KeyPart, KeyType,
    KeyValue, Map, Match, Name, NetworkId, OWNER_COMMENT, Policy, Prefix, Priority, Proto,
    RejectWith, Rule, Selector, Set, Statement, Table, Value, ValueType, Verdict,
};

/// Whether a table with our name carries our ownership comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// The comment is `vipmesh`.
    Ours,
    /// Another comment: someone else's table.
    Foreign(String),
    /// The listing has no comment field (nft < 1.0.7 omits table comments in JSON, also when
    /// there is one): the caller checks the text listing ([`comment_from_text`]).
    Unknown,
}

/// Our table as listed by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// What could be typed.
    pub table: Table,
    /// Ownership, as far as the JSON tells.
    pub owner: Ownership,
    /// Objects that could not be typed (JSON text, with the reason).
    pub unparsed: Vec<String>,
}

/// Parses `nft -j list tables inet`: the ids of the `inet` tables named `vipmesh-<id>`
/// (sorted, without duplicates; other tables are ignored).
///
/// # Errors
/// [`Error::Parse`] when the text is not JSON or has no `nftables` array.
///
/// # Examples
/// ```
/// use vipmesh_nft::*;
/// let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
///   {"table": {"family": "inet", "name": "vipmesh-web", "handle": 3}},
///   {"table": {"family": "inet", "name": "filter", "handle": 4}}]}"#;
/// assert_eq!(parse_table_names(json)?, vec![NetworkId::new("web")?]);
/// # Ok::<(), vipmesh_nft::Error>(())
/// ```
pub fn parse_table_names(json: &str) -> Result<Vec<NetworkId>, Error> {
    let doc: J = serde_json::from_str(json).map_err(|e| Error::parse("$", e.to_string()))?;
    let Some(objs) = doc.get("nftables").and_then(J::as_array) else {
        return Err(Error::parse("$", "no \"nftables\" array"));
    };
    let mut out: Vec<NetworkId> = objs
        .iter()
        .filter_map(|o| o.get("table"))
        .filter(|t| str_of(t, "family") == Some(FAMILY))
        .filter_map(|t| str_of(t, "name"))
        .filter_map(NetworkId::from_table_name)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Parses `nft -j list table inet vipmesh-<id>` output. Objects of other tables are ignored.
///
/// # Errors
/// [`Error::Parse`] when the text is not JSON, has no `nftables` array, or our table is not in
/// it.
///
/// # Examples
/// ```
/// use vipmesh_nft::*;
/// let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
///   {"table": {"family": "inet", "name": "vipmesh-web", "handle": 3}},
///   {"map": {"family": "inet", "name": "vip4", "table": "vipmesh-web", "type": "ipv4_addr",
///            "handle": 8, "map": "mark", "elem": [["10.0.0.11", 258]]}}]}"#;
/// let obs = parse_table_json(json, &NetworkId::new("web")?)?;
/// assert_eq!(obs.owner, Ownership::Unknown);
/// assert_eq!(obs.table.maps()[&Name::new("vip4")?].elements().len(), 1);
/// # Ok::<(), vipmesh_nft::Error>(())
/// ```
pub fn parse_table_json(json: &str, id: &NetworkId) -> Result<Observed, Error> {
    let doc: J = serde_json::from_str(json).map_err(|e| Error::parse("$", e.to_string()))?;
    let Some(objs) = doc.get("nftables").and_then(J::as_array) else {
        return Err(Error::parse("$", "no \"nftables\" array"));
    };
    let name = id.table_name();
    let mut obs = Observed {
        table: Table::new(id.clone()),
        owner: Ownership::Unknown,
        unparsed: Vec::new(),
    };
    let mut found = false;
    let mut objects: [Vec<(&str, &J, &J)>; 3] = Default::default();
    for (i, o) in objs.iter().enumerate() {
        let Some(map) = o.as_object() else {
            return Err(Error::parse(format!("nftables[{i}]"), "not an object"));
        };
        let Some((kind, body)) = map.iter().next() else {
            continue;
        };
        if kind == "metainfo" {
            continue;
        }
        let table_field = if kind == "table" { "name" } else { "table" };
        if str_of(body, "family") != Some(FAMILY) || str_of(body, table_field) != Some(&name) {
            continue;
        }
        if kind == "table" {
            found = true;
            obs.owner = match str_of(body, "comment") {
                Some(OWNER_COMMENT) => Ownership::Ours,
                Some(c) => Ownership::Foreign(c.to_owned()),
                None => Ownership::Unknown,
            };
            continue;
        }
        // nft lists sets and maps before chains, but a verdict map names chains: add chains
        // first, then sets and maps, then rules (each kind in listing order).
        let pass = match kind.as_str() {
            "chain" => 0,
            "set" | "map" => 1,
            _ => 2,
        };
        objects[pass].push((kind.as_str(), body, o));
    }
    for (kind, body, o) in objects.into_iter().flatten() {
        let res = match kind {
            "set" | "map" => parse_set(&mut obs.table, kind == "map", body),
            "chain" => parse_chain(&mut obs.table, body),
            "rule" => parse_rule(&mut obs.table, body),
            _ => Err(format!("unsupported object {kind}")),
        };
        if let Err(reason) = res {
            obs.unparsed.push(format!("{reason}: {o}"));
        }
    }
    if !found {
        return Err(Error::parse(
            "$.nftables",
            format!("table {FAMILY} {name} not listed"),
        ));
    }
    Ok(obs)
}

/// The table comment from `nft -t list table …` text (nft < 1.0.7 prints it only there).
pub fn comment_from_text(text: &str) -> Option<String> {
    let mut lines = text.lines();
    lines
        .next()?
        .trim_start()
        .starts_with("table ")
        .then_some(())?;
    for l in lines {
        let l = l.trim();
        if let Some(c) = l.strip_prefix("comment ") {
            return Some(c.trim().trim_matches('"').to_owned());
        }
        if l.starts_with("set ")
            || l.starts_with("map ")
            || l.starts_with("chain ")
            || l.starts_with("flags ")
            || l == "}"
        {
            // The table comment comes first; anything else means there is none.
            if !l.starts_with("flags ") {
                return None;
            }
        }
    }
    None
}

fn str_of<'a>(v: &'a J, k: &str) -> Option<&'a str> {
    v.get(k).and_then(J::as_str)
}

type R<T> = Result<T, String>;

fn name_of(v: &J, k: &str) -> R<Name> {
    let s = str_of(v, k).ok_or_else(|| format!("no {k}"))?;
    Name::new(s).map_err(|e| e.to_string())
}

fn only_fields(v: &J, allowed: &[&str]) -> R<()> {
    let Some(o) = v.as_object() else {
        return Err("not an object".into());
    };
    for k in o.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(format!("unsupported field {k}"));
        }
    }
    Ok(())
}

fn key_type(v: &J) -> R<KeyType> {
    match v {
        J::String(s) => KeyType::parse(s).map_err(|e| e.to_string()),
        J::Array(a) => {
            let parts = a
                .iter()
                .map(|p| {
                    p.as_str()
                        .ok_or_else(|| "type part is not a string".to_owned())
                        .and_then(|s| KeyPart::parse(s).map_err(|e| e.to_string()))
                })
                .collect::<R<Vec<_>>>()?;
            KeyType::new(&parts).map_err(|e| e.to_string())
        }
        _ => Err("bad type".into()),
    }
}

fn u64_of(v: &J) -> R<u64> {
    match v {
        J::Number(n) => n.as_u64().ok_or_else(|| format!("bad number {n}")),
        J::String(s) => s.parse().map_err(|_| format!("bad number {s:?}")),
        _ => Err(format!("not a number: {v}")),
    }
}

fn key_value(v: &J, part: KeyPart) -> R<KeyValue> {
    Ok(match part {
        KeyPart::Ipv4Addr => KeyValue::Ipv4(
            v.as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad ipv4_addr {v}"))?,
        ),
        KeyPart::Ipv6Addr => KeyValue::Ipv6(
            v.as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad ipv6_addr {v}"))?,
        ),
        KeyPart::InetProto => KeyValue::Proto(proto(v)?),
        KeyPart::InetService => {
            KeyValue::Port(u16::try_from(u64_of(v)?).map_err(|_| format!("bad port {v}"))?)
        }
        KeyPart::Mark => {
            KeyValue::Mark(u32::try_from(u64_of(v)?).map_err(|_| format!("bad mark {v}"))?)
        }
    })
}

fn proto(v: &J) -> R<Proto> {
    match v {
        J::String(s) => Proto::parse(s).map_err(|e| e.to_string()),
        J::Number(_) => u8::try_from(u64_of(v)?)
            .map(Proto)
            .map_err(|_| format!("bad protocol {v}")),
        _ => Err(format!("bad protocol {v}")),
    }
}

fn key(v: &J, ty: &KeyType) -> R<Key> {
    let parts = ty.parts();
    let vals: Vec<&J> = match v.get("concat").and_then(J::as_array) {
        Some(a) => a.iter().collect(),
        None => vec![v],
    };
    if vals.len() != parts.len() {
        return Err(format!("element {v} does not have type {ty}"));
    }
    let kv = vals
        .iter()
        .zip(parts)
        .map(|(v, p)| key_value(v, *p))
        .collect::<R<Vec<_>>>()?;
    Key::new(&kv).map_err(|e| e.to_string())
}

fn verdict(v: &J) -> R<Verdict> {
    let Some((k, body)) = v.as_object().and_then(|o| o.iter().next()) else {
        return Err(format!("bad verdict {v}"));
    };
    if v.as_object().is_some_and(|o| o.len() != 1) {
        return Err(format!("bad verdict {v}"));
    }
    Ok(match k.as_str() {
        "accept" => Verdict::Accept,
        "drop" => Verdict::Drop,
        "return" => Verdict::Return,
        "continue" => Verdict::Continue,
        "jump" => Verdict::Jump(name_of(body, "target")?),
        "goto" => Verdict::Goto(name_of(body, "target")?),
        _ => return Err(format!("bad verdict {v}")),
    })
}

fn value(v: &J, ty: &ValueType) -> R<Value> {
    Ok(match ty {
        ValueType::Mark => {
            Value::Mark(u32::try_from(u64_of(v)?).map_err(|_| format!("bad mark {v}"))?)
        }
        ValueType::Verdict => Value::Verdict(verdict(v)?),
        ValueType::Data(k) => Value::Data(key(v, k)?),
    })
}

fn parse_set(t: &mut Table, is_map: bool, body: &J) -> R<()> {
    only_fields(
        body,
        &["family", "name", "table", "type", "handle", "map", "elem"],
    )?;
    let name = name_of(body, "name")?;
    let kt = key_type(body.get("type").ok_or("no type")?)?;
    let empty = Vec::new();
    let elems = match body.get("elem") {
        None => &empty,
        Some(e) => e.as_array().ok_or("elem is not an array")?,
    };
    if !is_map {
        let mut s = Set::new(kt.clone());
        for e in elems {
            s.insert(key(e, &kt)?).map_err(|e| e.to_string())?;
        }
        return t.add_set(name, s).map_err(|e| e.to_string());
    }
    let vt = match body.get("map") {
        Some(J::String(s)) if s == "mark" => ValueType::Mark,
        Some(J::String(s)) if s == "verdict" => ValueType::Verdict,
        Some(v) => ValueType::Data(key_type(v)?),
        None => return Err("map without a value type".into()),
    };
    let mut m = Map::new(kt.clone(), vt.clone());
    for e in elems {
        let pair = e
            .as_array()
            .filter(|a| a.len() == 2)
            .ok_or_else(|| format!("bad map element {e}"))?;
        m.insert(key(&pair[0], &kt)?, value(&pair[1], &vt)?)
            .map_err(|e| e.to_string())?;
    }
    t.add_map(name, m).map_err(|e| e.to_string())
}

fn parse_chain(t: &mut Table, body: &J) -> R<()> {
    only_fields(
        body,
        &[
            "family", "table", "name", "handle", "type", "hook", "prio", "policy",
        ],
    )?;
    let name = name_of(body, "name")?;
    let base = match body.get("hook") {
        None => None,
        Some(h) => {
            let hook = Hook::parse(h.as_str().ok_or("bad hook")?).map_err(|e| e.to_string())?;
            let kind = ChainType::parse(str_of(body, "type").ok_or("no type")?)
                .map_err(|e| e.to_string())?;
            let prio = body
                .get("prio")
                .and_then(J::as_i64)
                .and_then(|p| i32::try_from(p).ok())
                .ok_or("bad prio")?;
            let policy = match str_of(body, "policy") {
                Some("accept") | None => Policy::Accept,
                Some("drop") => Policy::Drop,
                Some(p) => return Err(format!("bad policy {p}")),
            };
            Some(BaseChain::new(kind, hook, Priority(prio), policy).map_err(|e| e.to_string())?)
        }
    };
    t.add_chain(name, base).map_err(|e| e.to_string())
}

fn parse_rule(t: &mut Table, body: &J) -> R<()> {
    only_fields(body, &["family", "table", "chain", "handle", "expr"])?;
    let chain = name_of(body, "chain")?;
    let exprs = body
        .get("expr")
        .and_then(J::as_array)
        .ok_or("no expr array")?;
    let Some((last, matches)) = exprs.split_last() else {
        return Err("empty rule".into());
    };
    let matches = matches.iter().map(parse_match).collect::<R<Vec<_>>>()?;
    let stmt = parse_statement(last)?;
    t.add_rule(&chain, Rule::new(matches, stmt))
        .map_err(|e| e.to_string())
}

fn meta_key(v: &J) -> Option<&str> {
    v.get("meta").and_then(|m| str_of(m, "key"))
}

fn payload(v: &J) -> Option<(&str, &str)> {
    let p = v.get("payload")?;
    Some((str_of(p, "protocol")?, str_of(p, "field")?))
}

fn selector(v: &J) -> R<Selector> {
    if let Some(k) = meta_key(v) {
        return match k {
            "l4proto" => Ok(Selector::L4Proto),
            "mark" => Ok(Selector::MetaMark),
            _ => Err(format!("unsupported selector {v}")),
        };
    }
    match payload(v) {
        Some(("ip", "daddr")) => Ok(Selector::Ip4Daddr),
        Some(("ip6", "daddr")) => Ok(Selector::Ip6Daddr),
        Some(("th", "dport")) => Ok(Selector::ThDport),
        _ => Err(format!("unsupported selector {v}")),
    }
}

fn key_expr(v: &J) -> R<KeyExpr> {
    let sel = match v.get("concat").and_then(J::as_array) {
        Some(a) => a.iter().map(selector).collect::<R<Vec<_>>>()?,
        None => vec![selector(v)?],
    };
    KeyExpr::new(&sel).map_err(|e| e.to_string())
}

fn map_lookup(v: &J) -> R<(KeyExpr, Name)> {
    let m = v
        .get("map")
        .ok_or_else(|| format!("not a map lookup: {v}"))?;
    let k = key_expr(m.get("key").ok_or("map without key")?)?;
    let data = str_of(m, "data").ok_or("map data is not a name")?;
    let name = data.strip_prefix('@').ok_or("anonymous map")?;
    Ok((k, Name::new(name).map_err(|e| e.to_string())?))
}

fn u32_of(v: &J) -> R<u32> {
    u32::try_from(u64_of(v)?).map_err(|_| format!("out of range: {v}"))
}

fn parse_match(v: &J) -> R<Match> {
    let m = v
        .get("match")
        .ok_or_else(|| format!("unsupported statement {v}"))?;
    let op = str_of(m, "op").ok_or("no op")?;
    let left = m.get("left").ok_or("no left")?;
    let right = m.get("right").ok_or("no right")?;
    if let Some(ct) = left.get("ct") {
        if str_of(ct, "key") != Some("state") || !matches!(op, "in" | "==") {
            return Err(format!("unsupported ct match {v}"));
        }
        let names: Vec<&J> = match right {
            J::Array(a) => a.iter().collect(),
            one => vec![one],
        };
        let states = names
            .iter()
            .map(|s| {
                s.as_str()
                    .ok_or_else(|| "bad ct state".to_owned())
                    .and_then(|s| CtState::parse(s).map_err(|e| e.to_string()))
            })
            .collect::<R<Vec<_>>>()?;
        return Match::ct_state(&states).map_err(|e| e.to_string());
    }
    if op != "==" {
        return Err(format!("unsupported operator {op}"));
    }
    if let Some(f) = left.get("fib") {
        let flags = f.get("flags").and_then(J::as_array);
        let daddr_only = flags.is_some_and(|a| a.len() == 1 && a[0].as_str() == Some("daddr"));
        if str_of(f, "result") == Some("type") && daddr_only && right.as_str() == Some("local") {
            return Ok(Match::FibDaddrLocal);
        }
        let saddr_only = flags.is_some_and(|a| a.len() == 1 && a[0].as_str() == Some("saddr"));
        if str_of(f, "result") == Some("type") && saddr_only && right.as_str() == Some("local") {
            return Ok(Match::FibSaddrLocal);
        }
        return Err(format!("unsupported fib match {v}"));
    }
    if let Some(k) = meta_key(left) {
        return match k {
            "iifname" | "oifname" => {
                let n = right.as_str().ok_or("interface is not a string")?;
                let n = IfName::new(n).map_err(|e| e.to_string())?;
                Ok(if k == "iifname" {
                    Match::IifName(n)
                } else {
                    Match::OifName(n)
                })
            }
            "l4proto" => Ok(Match::L4Proto(proto(right)?)),
            "mark" => {
                let (a, b) = match right.get("range").and_then(J::as_array) {
                    Some(r) if r.len() == 2 => (u32_of(&r[0])?, u32_of(&r[1])?),
                    Some(_) => return Err("bad mark range".into()),
                    None => {
                        let m = u32_of(right)?;
                        (m, m)
                    }
                };
                Match::mark_range(a, b).map_err(|e| e.to_string())
            }
            _ => Err(format!("unsupported meta match {v}")),
        };
    }
    match payload(left) {
        Some((fam @ ("ip" | "ip6"), "daddr")) => {
            let p = match right {
                J::String(s) => s.parse::<Prefix>().map_err(|e| e.to_string())?,
                J::Object(_) => {
                    let p = right.get("prefix").ok_or("bad address")?;
                    let a: IpAddr = str_of(p, "addr")
                        .and_then(|s| s.parse().ok())
                        .ok_or("bad prefix address")?;
                    let l = p
                        .get("len")
                        .and_then(J::as_u64)
                        .and_then(|l| u8::try_from(l).ok())
                        .ok_or("bad prefix length")?;
                    Prefix::new(a, l).map_err(|e| e.to_string())?
                }
                _ => return Err(format!("bad address {right}")),
            };
            let want = if fam == "ip" {
                IpFamily::V4
            } else {
                IpFamily::V6
            };
            if IpFamily::of(p.addr()) != want {
                return Err(format!("address family mismatch {v}"));
            }
            Ok(Match::Daddr(p))
        }
        Some((p, "dport")) if p != "th" => {
            let proto = Proto::parse(p).map_err(|e| e.to_string())?;
            let port = u16::try_from(u64_of(right)?).map_err(|_| "bad port".to_owned())?;
            Match::dport(proto, port).map_err(|e| e.to_string())
        }
        _ => Err(format!("unsupported match {v}")),
    }
}

fn nat_family(body: &J) -> R<Option<IpFamily>> {
    match str_of(body, "family") {
        Some("ip") => Ok(Some(IpFamily::V4)),
        Some("ip6") => Ok(Some(IpFamily::V6)),
        None => Ok(None),
        Some(f) => Err(format!("bad nat family {f}")),
    }
}

fn parse_statement(v: &J) -> R<Statement> {
    let Some(o) = v.as_object() else {
        return Err(format!("bad statement {v}"));
    };
    if o.len() != 1 {
        return Err(format!("bad statement {v}"));
    }
    let Some((k, body)) = o.iter().next() else {
        return Err(format!("bad statement {v}"));
    };
    match k.as_str() {
        "mangle" => {
            only_fields(body, &["key", "value"])?;
            if body.get("key").and_then(meta_key) != Some("mark") {
                return Err(format!("unsupported mangle {v}"));
            }
            let (key, map) = map_lookup(body.get("value").ok_or("no value")?)?;
            Ok(Statement::SetMark { key, map })
        }
        "dnat" => {
            only_fields(body, &["family", "addr"])?;
            let family = nat_family(body)?.ok_or("dnat without family")?;
            let (key, map) = map_lookup(body.get("addr").ok_or("no addr")?)?;
            Ok(Statement::DnatMap { family, key, map })
        }
        "snat" => {
            only_fields(body, &["family", "addr"])?;
            let a: IpAddr = str_of(body, "addr")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("unsupported snat {v}"))?;
            if let Some(f) = nat_family(body)?
                && f != IpFamily::of(a)
            {
                return Err(format!("snat family mismatch {v}"));
            }
            Ok(Statement::Snat(a))
        }
        "redirect" => {
            only_fields(body, &["port"])?;
            let p = body.get("port").ok_or("redirect without port")?;
            Ok(Statement::Redirect(
                u16::try_from(u64_of(p)?).map_err(|_| "bad port".to_owned())?,
            ))
        }
        "reject" => {
            only_fields(body, &["type", "expr"])?;
            match (str_of(body, "type"), str_of(body, "expr")) {
                (Some("tcp reset"), None) => Ok(Statement::Reject(RejectWith::TcpReset)),
                (Some("icmpx"), Some("port-unreachable")) => {
                    Ok(Statement::Reject(RejectWith::PortUnreachable))
                }
                _ => Err(format!("unsupported reject {v}")),
            }
        }
        "masquerade" => {
            if !(body.is_null() || body.as_object().is_some_and(|o| o.is_empty())) {
                return Err(format!("unsupported masquerade {v}"));
            }
            Ok(Statement::Masquerade)
        }
        "vmap" => {
            only_fields(body, &["key", "data"])?;
            let key = key_expr(body.get("key").ok_or("no key")?)?;
            let data = str_of(body, "data").and_then(|d| d.strip_prefix('@'));
            let map = Name::new(data.ok_or("anonymous vmap")?).map_err(|e| e.to_string())?;
            Ok(Statement::Vmap { key, map })
        }
        _ => Ok(Statement::Verdict(verdict(v)?)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn text_comment() {
        assert_eq!(
            comment_from_text("table inet vipmesh-a {\n\tcomment \"vipmesh\"\n\tchain c {\n"),
            Some("vipmesh".into())
        );
        assert_eq!(
            comment_from_text("table inet vipmesh-a {\n\tchain c {\n\t\tcomment \"vipmesh\"\n"),
            None
        );
        assert_eq!(comment_from_text(""), None);
        assert_eq!(comment_from_text("table inet x {\n}\n"), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let id = NetworkId::new("a").unwrap();
        for s in [
            "",
            "{",
            "[]",
            "{\"nftables\": 3}",
            "{\"nftables\": [1]}",
            "{\"nftables\": []}",
        ] {
            assert!(parse_table_json(s, &id).is_err(), "{s}");
        }
    }

    #[test]
    fn unknown_objects_are_kept_as_unparsed() {
        let id = NetworkId::new("a").unwrap();
        let j = r#"{"nftables": [{"table": {"family": "inet", "name": "vipmesh-a", "comment": "vipmesh"}},
          {"chain": {"family": "inet", "table": "vipmesh-a", "name": "c", "handle": 1}},
          {"rule": {"family": "inet", "table": "vipmesh-a", "chain": "c", "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]}},
          {"rule": {"family": "inet", "table": "vipmesh-a", "chain": "c", "expr": [{"drop": null}]}},
          {"rule": {"family": "ip", "table": "other", "chain": "c", "expr": [{"drop": null}]}}]}"#;
        let o = parse_table_json(j, &id).unwrap();
        assert_eq!(o.owner, Ownership::Ours);
        assert_eq!(o.unparsed.len(), 1, "{:?}", o.unparsed);
        assert!(o.unparsed[0].contains("counter"));
        assert_eq!(o.table.chains()[&Name::new("c").unwrap()].rules.len(), 1);
    }

    #[test]
    fn the_masquerade_rule_round_trips() {
        // `nft -j list table inet vipmesh-ingress` (nft 1.0.6, Linux 6.18) after loading what
        // `local_masquerade` renders.
        let id = NetworkId::new("ingress").unwrap();
        let j = r#"{"nftables": [{"table": {"family": "inet", "name": "vipmesh-ingress", "handle": 1}},
          {"chain": {"family": "inet", "table": "vipmesh-ingress", "name": "publish_masq", "handle": 4, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
          {"rule": {"family": "inet", "table": "vipmesh-ingress", "chain": "publish_masq", "handle": 9, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "vm_gwbridge"}}, {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["saddr"]}}, "right": "local"}}, {"masquerade": null}]}}]}"#;
        let o = parse_table_json(j, &id).unwrap();
        assert!(o.unparsed.is_empty(), "{:?}", o.unparsed);
        let mut want = Table::new(id);
        crate::build::local_masquerade(&mut want, &IfName::new("vm_gwbridge").unwrap()).unwrap();
        assert_eq!(o.table, want);
    }

    #[test]
    fn table_names_are_ours_by_name_only() {
        let j = r#"{"nftables": [{"table": {"family": "inet", "name": "vipmesh-b"}},
          {"table": {"family": "ip", "name": "vipmesh-c"}}, {"table": {"family": "inet", "name": "vipmesh-a"}},
          {"table": {"family": "inet", "name": "nat"}}, {"table": {"family": "inet", "name": "vipmesh-BAD"}}]}"#;
        let ids = parse_table_names(j).unwrap();
        assert_eq!(
            ids,
            vec![NetworkId::new("a").unwrap(), NetworkId::new("b").unwrap()]
        );
        assert!(parse_table_names("[").is_err());
        assert!(parse_table_names("{}").is_err());
    }

    #[test]
    fn the_reject_chain_and_verdict_map_round_trip() {
        // `nft -j list table` (nft 1.0.6, Linux 6.18) of a reject chain and a verdict map.
        let id = NetworkId::new("r").unwrap();
        let j = r#"{"nftables": [{"table": {"family": "inet", "name": "vipmesh-r", "handle": 1}},
          {"map": {"family": "inet", "name": "vip_reject4", "table": "vipmesh-r", "type": "ipv4_addr", "handle": 3, "map": "verdict", "elem": [["10.0.0.40", {"jump": {"target": "vip_reject"}}]]}},
          {"map": {"family": "inet", "name": "vip_reject6", "table": "vipmesh-r", "type": "ipv6_addr", "handle": 4, "map": "verdict"}},
          {"chain": {"family": "inet", "table": "vipmesh-r", "name": "vip_reject", "handle": 1}},
          {"chain": {"family": "inet", "table": "vipmesh-r", "name": "reject_input", "handle": 2, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
          {"rule": {"family": "inet", "table": "vipmesh-r", "chain": "vip_reject", "handle": 5, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"reject": {"type": "tcp reset"}}]}},
          {"rule": {"family": "inet", "table": "vipmesh-r", "chain": "vip_reject", "handle": 6, "expr": [{"reject": {"type": "icmpx", "expr": "port-unreachable"}}]}},
          {"rule": {"family": "inet", "table": "vipmesh-r", "chain": "reject_input", "handle": 7, "expr": [{"vmap": {"key": {"payload": {"protocol": "ip", "field": "daddr"}}, "data": "@vip_reject4"}}]}},
          {"rule": {"family": "inet", "table": "vipmesh-r", "chain": "reject_input", "handle": 8, "expr": [{"vmap": {"key": {"payload": {"protocol": "ip6", "field": "daddr"}}, "data": "@vip_reject6"}}]}}]}"#;
        let o = parse_table_json(j, &id).unwrap();
        assert!(o.unparsed.is_empty(), "{:?}", o.unparsed);
        let mut want = Table::new(id);
        crate::build::vip_reject(&mut want, &[Hook::Input], &["10.0.0.40".parse().unwrap()])
            .unwrap();
        assert_eq!(o.table, want);
    }
}
