//! A tolerant parser for `iptables-save` output.
//!
//! Structure (`*table`, `:CHAIN POLICY [p:b]`, `-A CHAIN …`, `COMMIT`) is parsed strictly;
//! rule arguments are kept as tokens, so foreign rules with extensions we do not model parse
//! fine. [`parse_rule`] then turns the tokens of a rule into a typed [`Rule`] when (and only
//! when) every token is understood.
//!
//! Format reference: `iptables-save(8)`, `iptables-restore(8)` and `xtables_save_string()` in
//! iptables' `libxtables/xtables.c`.

use crate::error::Error;
use crate::model::{
    AddrMatch, ChainName, Comment, CtState, Iface, IfaceMatch, Mark, Matches, NatTo, PortRange,
    Protocol, RejectWith, Rule, Target,
};

/// One parsed `iptables-save` dump (possibly several tables).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaveDump {
    /// Tables in the order they appeared.
    pub tables: Vec<SaveTable>,
}

/// One `*table … COMMIT` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaveTable {
    /// Table name (`filter`, `nat`, `mangle`, `raw`, …).
    pub name: String,
    /// Chain declarations in order.
    pub chains: Vec<SaveChain>,
    /// Rules in order (all chains interleaved, as printed).
    pub rules: Vec<SaveRule>,
}

/// A `:NAME POLICY [packets:bytes]` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveChain {
    /// Chain name.
    pub name: String,
    /// `ACCEPT`/`DROP` for built-in chains, `-` for user chains.
    pub policy: String,
}

/// A `-A CHAIN args…` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveRule {
    /// The chain.
    pub chain: String,
    /// The unquoted argument tokens after `-A CHAIN`.
    pub args: Vec<String>,
    /// The arguments exactly as printed (still quoted), for `-D CHAIN <spec>`.
    pub spec: String,
    /// 1-based line number in the dump.
    pub line: usize,
}

impl SaveRule {
    /// The typed rule, if every token is understood.
    pub fn typed(&self) -> Option<Rule> {
        parse_rule(&self.args)
    }
}

impl SaveDump {
    /// The section of a table, if present.
    pub fn table(&self, name: &str) -> Option<&SaveTable> {
        self.tables.iter().find(|t| t.name == name)
    }
}

impl SaveTable {
    /// Rules of one chain, in order.
    pub fn chain_rules<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a SaveRule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }
}

/// Split a rule's argument string into tokens the way `iptables-restore` does: whitespace
/// separates, double quotes group, and a backslash escapes the next character.
///
/// # Errors
/// [`Error::Parse`] for an unterminated quote or a trailing backslash.
pub fn tokenize(s: &str, line: usize) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut in_quote = false;
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => match chars.next() {
                Some(n) => {
                    cur.push(n);
                    in_token = true;
                }
                None => {
                    return Err(Error::Parse {
                        line,
                        reason: "trailing backslash".into(),
                    });
                }
            },
            '"' => {
                in_quote = !in_quote;
                in_token = true;
            }
            c if c.is_whitespace() && !in_quote => {
                if in_token {
                    out.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            c => {
                cur.push(c);
                in_token = true;
            }
        }
    }
    if in_quote {
        return Err(Error::Parse {
            line,
            reason: "unterminated quote".into(),
        });
    }
    if in_token {
        out.push(cur);
    }
    Ok(out)
}

/// Parse `iptables-save` output. Never panics; foreign rules and tables are kept verbatim.
///
/// # Errors
/// [`Error::Parse`] for structural problems: a rule or chain outside a table, a nested table,
/// a missing `COMMIT`, an unknown line kind, or an unterminated quote.
///
/// # Examples
/// ```
/// let dump = vipmesh_netfilter::parse_save("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j DOCKER\nCOMMIT\n").unwrap();
/// assert_eq!(dump.tables[0].rules[0].args, ["-j", "DOCKER"]);
/// ```
pub fn parse_save(text: &str) -> Result<SaveDump, Error> {
    let mut dump = SaveDump::default();
    let mut cur: Option<SaveTable> = None;
    for (idx, raw) in text.lines().enumerate() {
        let line = idx.saturating_add(1);
        let l = raw.trim_end_matches('\r').trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some(name) = l.strip_prefix('*') {
            if cur.is_some() {
                return Err(Error::Parse {
                    line,
                    reason: "table started before COMMIT".into(),
                });
            }
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(Error::Parse {
                    line,
                    reason: "bad table name".into(),
                });
            }
            cur = Some(SaveTable {
                name: name.to_owned(),
                ..SaveTable::default()
            });
            continue;
        }
        if l == "COMMIT" {
            match cur.take() {
                Some(t) => dump.tables.push(t),
                None => {
                    return Err(Error::Parse {
                        line,
                        reason: "COMMIT outside a table".into(),
                    });
                }
            }
            continue;
        }
        let Some(table) = cur.as_mut() else {
            return Err(Error::Parse {
                line,
                reason: "content outside a table".into(),
            });
        };
        if let Some(decl) = l.strip_prefix(':') {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(policy)) = (parts.next(), parts.next()) else {
                return Err(Error::Parse {
                    line,
                    reason: "chain declaration needs a name and a policy".into(),
                });
            };
            table.chains.push(SaveChain {
                name: name.to_owned(),
                policy: policy.to_owned(),
            });
            continue;
        }
        // `[packets:bytes] -A …` when saved with -c.
        let body = if l.starts_with('[') {
            match l.find(']') {
                Some(end) => l.get(end.saturating_add(1)..).unwrap_or("").trim_start(),
                None => {
                    return Err(Error::Parse {
                        line,
                        reason: "unterminated counters".into(),
                    });
                }
            }
        } else {
            l
        };
        if let Some(rest) = body.strip_prefix("-A ") {
            let rest = rest.trim_start();
            let (chain, spec) = match rest.find(char::is_whitespace) {
                Some(i) => (
                    rest.get(..i).unwrap_or(""),
                    rest.get(i..).unwrap_or("").trim(),
                ),
                None => (rest, ""),
            };
            let args = tokenize(spec, line)?;
            table.rules.push(SaveRule {
                chain: chain.to_owned(),
                args,
                spec: spec.to_owned(),
                line,
            });
            continue;
        }
        return Err(Error::Parse {
            line,
            reason: format!("unrecognized line {l:?}"),
        });
    }
    if cur.is_some() {
        return Err(Error::Parse {
            line: text.lines().count(),
            reason: "missing COMMIT".into(),
        });
    }
    Ok(dump)
}

/// Parse the argument tokens of one rule into a typed [`Rule`]; `None` when any token is not
/// part of our model (a foreign rule), when a value is invalid, or when a match repeats.
pub fn parse_rule(args: &[String]) -> Option<Rule> {
    let mut m = Matches::new();
    let mut comment = None;
    let mut target = None;
    let mut it = args.iter().map(String::as_str).peekable();
    let mut negate = false;
    let mut module: Option<&str> = None;
    while let Some(tok) = it.next() {
        if tok == "!" {
            if negate {
                return None;
            }
            negate = true;
            continue;
        }
        let neg = std::mem::replace(&mut negate, false);
        match tok {
            "-s" | "--source" | "-d" | "--destination" => {
                let cidr = it.next()?.parse().ok()?;
                let slot = if tok.starts_with("-s") || tok == "--source" {
                    &mut m.source
                } else {
                    &mut m.destination
                };
                if slot.replace(AddrMatch { cidr, negated: neg }).is_some() {
                    return None;
                }
            }
            "-i" | "--in-interface" | "-o" | "--out-interface" => {
                let iface = Iface::new(it.next()?).ok()?;
                let slot = if tok == "-i" || tok == "--in-interface" {
                    &mut m.in_iface
                } else {
                    &mut m.out_iface
                };
                if slot
                    .replace(IfaceMatch {
                        iface,
                        negated: neg,
                    })
                    .is_some()
                {
                    return None;
                }
            }
            "-p" | "--protocol" if !neg => {
                if m.protocol
                    .replace(it.next()?.parse::<Protocol>().ok()?)
                    .is_some()
                {
                    return None;
                }
            }
            "-m" | "--match" if !neg => {
                let name = it.next()?;
                if !matches!(
                    name,
                    "tcp" | "udp" | "sctp" | "addrtype" | "ipvs" | "conntrack" | "mark" | "comment"
                ) {
                    return None;
                }
                module = Some(name);
            }
            "--sport" | "--source-port" | "--dport" | "--destination-port" if !neg => {
                if !matches!(module, None | Some("tcp" | "udp" | "sctp")) {
                    return None;
                }
                let p: PortRange = it.next()?.parse().ok()?;
                let slot = if tok.starts_with("--s") {
                    &mut m.sport
                } else {
                    &mut m.dport
                };
                if slot.replace(p).is_some() {
                    return None;
                }
            }
            "--src-type" | "--dst-type" if !neg && module == Some("addrtype") => {
                let t = it.next()?.parse().ok()?;
                let slot = if tok == "--src-type" {
                    &mut m.src_type
                } else {
                    &mut m.dst_type
                };
                if slot.replace(t).is_some() {
                    return None;
                }
            }
            "--ipvs" if !neg && module == Some("ipvs") => {
                if std::mem::replace(&mut m.ipvs, true) {
                    return None;
                }
            }
            "--ctstate" if !neg && module == Some("conntrack") => {
                if m.ctstate
                    .replace(it.next()?.parse::<CtState>().ok()?)
                    .is_some()
                {
                    return None;
                }
            }
            "--mark" if !neg && module == Some("mark") => {
                if m.mark.replace(it.next()?.parse::<Mark>().ok()?).is_some() {
                    return None;
                }
            }
            "--comment" if !neg && module == Some("comment") => {
                if comment.replace(Comment::new(it.next()?).ok()?).is_some() {
                    return None;
                }
            }
            "-j" | "--jump" if !neg => {
                if target.is_some() {
                    return None;
                }
                target = Some(parse_target(it.next()?, &mut it)?);
                module = None;
            }
            _ => return None,
        }
    }
    if negate {
        return None;
    }
    // Ports need a protocol, as in the kernel.
    if (m.sport.is_some() || m.dport.is_some()) && !m.protocol.is_some_and(Protocol::has_ports) {
        return None;
    }
    Some(Rule {
        matches: m,
        target: target?,
        comment,
    })
}

fn parse_target<'a>(
    name: &str,
    it: &mut std::iter::Peekable<impl Iterator<Item = &'a str>>,
) -> Option<Target> {
    let mut opt = |flag: &str| -> Option<&'a str> {
        if it.peek() == Some(&flag) {
            it.next();
            it.next()
        } else {
            None
        }
    };
    Some(match name {
        "ACCEPT" => Target::Accept,
        "DROP" => Target::Drop,
        "RETURN" => Target::Return,
        "MASQUERADE" => Target::Masquerade,
        "REJECT" => match opt("--reject-with") {
            None => return None,
            Some("tcp-reset") => Target::Reject(RejectWith::TcpReset),
            Some("icmp-port-unreachable") => Target::Reject(RejectWith::IcmpPortUnreachable),
            Some("icmp6-port-unreachable") => Target::Reject(RejectWith::Icmp6PortUnreachable),
            Some(_) => return None,
        },
        "MARK" => {
            if let Some(v) = opt("--set-xmark") {
                Target::SetMark(v.parse().ok()?)
            } else {
                // `--set-mark v[/m]` is xmark `v/(m|v)`, see libxt_MARK.c.
                let v: Mark = opt("--set-mark")?.parse().ok()?;
                Target::SetMark(Mark::masked(v.value, v.mask | v.value))
            }
        }
        "DNAT" => Target::Dnat(opt("--to-destination")?.parse::<NatTo>().ok()?),
        "SNAT" => Target::Snat(opt("--to-source")?.parse().ok()?),
        "REDIRECT" => Target::Redirect(opt("--to-ports")?.parse().ok()?),
        other => Target::Jump(ChainName::new(other).ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables) on Mon Nov 23 01:26:48 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [12:345]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
:VIPMESH-F - [0:0]
-A INPUT -m comment --comment vipmesh -j VIPMESH-F
-A INPUT -m set --match-set foo src -j DOCKER-USER
-A VIPMESH-F -p tcp -j REJECT --reject-with tcp-reset
-A VIPMESH-F -m comment --comment "semi;colon $x `y` \'q\'" -j DROP
-A VIPMESH-F -m comment --comment "a\\b" -j DROP
-A VIPMESH-F -p sctp -m sctp --dport 5 -j DROP
COMMIT
# Completed on Mon Nov 23 01:26:48 2026
*nat
:PREROUTING ACCEPT [0:0]
[3:180] -A PREROUTING -d 10.0.0.0/16 -m ipvs --ipvs -j SNAT --to-source 10.0.0.2
-A PREROUTING -p tcp -m addrtype --dst-type LOCAL -m conntrack --ctstate INVALID,NEW,RELATED,ESTABLISHED -j DNAT --to-destination 1.2.3.4:80
COMMIT
"#;

    #[test]
    fn parses_structure_and_foreign_rules() {
        let d = parse_save(SAMPLE).unwrap();
        assert_eq!(d.tables.len(), 2);
        let f = d.table("filter").unwrap();
        assert_eq!(f.chains.len(), 5);
        assert_eq!(f.rules.len(), 6);
        assert!(f.rules[1].typed().is_none(), "ipset match is foreign");
        assert_eq!(f.rules[3].args[3], "semi;colon $x `y` 'q'");
        assert!(f.rules[3].typed().is_none(), "quote in comment is not ours");
        assert_eq!(f.rules[4].args[3], "a\\b");
        let r = f.rules[5].typed().unwrap();
        assert_eq!(r.to_string(), "-p sctp -m sctp --dport 5 -j DROP");
        let n = d.table("nat").unwrap();
        assert_eq!(
            n.rules[0].typed().unwrap().to_string(),
            "-d 10.0.0.0/16 -m ipvs --ipvs -j SNAT --to-source 10.0.0.2"
        );
        assert_eq!(
            n.rules[1].typed().unwrap().to_string(),
            "-p tcp -m addrtype --dst-type LOCAL -m conntrack --ctstate INVALID,NEW,RELATED,ESTABLISHED -j DNAT --to-destination 1.2.3.4:80"
        );
    }

    #[test]
    fn structural_errors() {
        assert!(parse_save("-A INPUT -j ACCEPT\n").is_err());
        assert!(parse_save("*filter\n-A INPUT -j ACCEPT\n").is_err());
        assert!(parse_save("*filter\n*nat\nCOMMIT\n").is_err());
        assert!(parse_save("*filter\n-A INPUT -m comment --comment \"x\nCOMMIT\n").is_err());
        assert!(parse_save("*filter\nbogus\nCOMMIT\n").is_err());
        assert!(parse_save("").unwrap().tables.is_empty());
    }

    #[test]
    fn set_mark_is_normalized() {
        let a = parse_rule(&tokenize("-j MARK --set-mark 0x103", 1).unwrap()).unwrap();
        let b = parse_rule(&tokenize("-j MARK --set-xmark 0x103/0xffffffff", 1).unwrap()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn rejects_malformed_typed_rules() {
        for s in [
            "--dport 80 -j ACCEPT",
            "-d 10.0.0.0/33 -j ACCEPT",
            "-p tcp -m tcp --dport 0 -j ACCEPT",
            "-j ACCEPT -j DROP",
            "! ! -s 1.2.3.4 -j ACCEPT",
            "-j DOCKER",
            "-s 1.2.3.4",
        ] {
            assert!(parse_rule(&tokenize(s, 1).unwrap()).is_none(), "{s}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC*") {
            let _ = parse_save(&s);
        }
        #[test]
        fn parser_never_panics_structured(lines in proptest::collection::vec("(\\*[a-z]{1,5}|:[A-Z]{1,4} -|COMMIT|-A [A-Z]{1,3}( [-!a-z0-9\"\\\\/.: ]{0,12}){0,6}|\\[[0-9:]{0,4}\\] -A X -j Y)", 0..12)) {
            let text = lines.join("\n");
            if let Ok(d) = parse_save(&text) {
                for t in &d.tables { for r in &t.rules { let _ = r.typed(); } }
            }
        }
    }
}
