//! Pure diffing: observed kernel state + desired [`OwnedRuleset`] → one
//! `iptables-restore --noflush` batch.
//!
//! Batch layout per changed table (the order matters):
//! 1. `:CHAIN - [0:0]` for every chain that is (re)written or deleted. Under `--noflush` a
//!    declaration creates a missing chain and flushes an existing one (`iptables-restore(8)`),
//!    and declaring all chains first lets rules jump to chains created in the same batch.
//! 2. `-R CHAIN n rule` for chains whose length is unchanged and where only a few rules differ.
//! 3. `-D BUILTIN <spec>` for stale or duplicated tagged jumps (deleting by the saved spec).
//! 4. `-A CHAIN rule` for rewritten chains.
//! 5. `-I BUILTIN …`/`-A BUILTIN …` for missing jumps.
//! 6. `-X CHAIN` for chains no longer wanted (now empty and unreferenced).
//!
//! Each table section ends in `COMMIT`, which the kernel applies atomically.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use crate::error::Error;
use crate::model::{BuiltinChain, ChainName, Comment, Family, Rule, Table};
use crate::ruleset::{Jump, JumpPosition, OwnedRuleset, TableRuleset};
use crate::save::{SaveDump, SaveRule};

/// A rule as read back from the kernel: its saved spec, and its typed form when it is one we
/// can express.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedRule {
    /// The spec exactly as `iptables-save` printed it (after `-A CHAIN`).
    pub spec: String,
    /// The typed rule, if understood.
    pub rule: Option<Rule>,
}

impl From<&SaveRule> for ObservedRule {
    fn from(r: &SaveRule) -> Self {
        ObservedRule {
            spec: r.spec.clone(),
            rule: r.typed(),
        }
    }
}

/// What we own in one table, as read back from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedTable {
    /// Every chain with our prefix, with its rules in order.
    pub chains: BTreeMap<String, Vec<ObservedRule>>,
    /// Every rule in a built-in chain that carries our tag, in order.
    pub jumps: Vec<(BuiltinChain, ObservedRule)>,
}

/// What we own in one netns for one family, as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The family.
    pub family: Family,
    /// Per table (absent tables hold nothing of ours).
    pub tables: BTreeMap<Table, ObservedTable>,
}

impl Observed {
    /// Nothing observed.
    pub fn empty(family: Family) -> Observed {
        Observed {
            family,
            tables: BTreeMap::new(),
        }
    }

    /// The state the kernel is in right after `rs` was applied (used by
    /// [`ObserveMode::Cached`](crate::ObserveMode::Cached)).
    pub fn from_ruleset(rs: &OwnedRuleset) -> Observed {
        let mut tables = BTreeMap::new();
        for (table, tr) in rs.tables() {
            let obs = |r: Rule| ObservedRule {
                spec: r.to_string(),
                rule: Some(r),
            };
            let ot = ObservedTable {
                chains: tr
                    .chains
                    .iter()
                    .map(|(c, rules)| (c.to_string(), rules.iter().cloned().map(obs).collect()))
                    .collect(),
                jumps: tr.jumps.iter().map(|j| (j.from, obs(j.rule()))).collect(),
            };
            tables.insert(*table, ot);
        }
        Observed {
            family: rs.family(),
            tables,
        }
    }

    /// Extract our chains and tagged jumps from a parsed dump. Foreign chains and rules are
    /// ignored; tables we do not model (`raw`, `security`) too.
    pub fn from_dump(family: Family, dump: &SaveDump) -> Observed {
        let mut tables = BTreeMap::new();
        for st in &dump.tables {
            let Some(table) = Table::from_name(&st.name) else {
                continue;
            };
            let mut ot = ObservedTable::default();
            for c in &st.chains {
                if ChainName::is_ours(&c.name) {
                    ot.chains.insert(c.name.clone(), Vec::new());
                }
            }
            for r in &st.rules {
                if let Some(rules) = ot.chains.get_mut(&r.chain) {
                    rules.push(r.into());
                } else if let Some(b) = BuiltinChain::from_name(&r.chain)
                    && is_tagged(&r.args)
                {
                    ot.jumps.push((b, r.into()));
                }
            }
            tables.insert(table, ot);
        }
        Observed { family, tables }
    }

    /// Convert to an [`OwnedRuleset`]. Rules we cannot express (e.g. a rogue rule inserted into
    /// one of our chains with an unknown extension) are left out, and so are chain names that
    /// carry our prefix but are not valid [`ChainName`]s.
    pub fn to_ruleset(&self) -> OwnedRuleset {
        let mut rs = OwnedRuleset::new(self.family);
        for (table, ot) in &self.tables {
            let mut tr = TableRuleset::default();
            for (name, rules) in &ot.chains {
                let Ok(cn) = ChainName::new(name.clone()) else {
                    continue;
                };
                tr.chains
                    .insert(cn, rules.iter().filter_map(|r| r.rule.clone()).collect());
            }
            for (from, r) in &ot.jumps {
                if let Some(Rule {
                    matches,
                    target: crate::model::Target::Jump(to),
                    ..
                }) = &r.rule
                {
                    tr.jumps.insert(Jump {
                        from: *from,
                        matches: matches.clone(),
                        to: to.clone(),
                        position: JumpPosition::Prepend,
                    });
                }
            }
            if !tr.is_empty() {
                rs.tables_mut().insert(*table, tr);
            }
        }
        rs
    }
}

fn is_tagged(args: &[String]) -> bool {
    args.windows(2)
        .any(|w| w[0] == "--comment" && w[1] == Comment::OWNER_TAG)
}

/// What the batch does to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TablePlan {
    /// Chains declared and (re)filled with `-A`.
    pub chains_written: Vec<String>,
    /// Rules replaced in place with `-R` (chain, 1-based index).
    pub rules_replaced: Vec<(String, usize)>,
    /// Chains flushed and deleted.
    pub chains_deleted: Vec<String>,
    /// Tagged jumps added.
    pub jumps_added: Vec<String>,
    /// Tagged jumps deleted (stale or duplicate).
    pub jumps_deleted: Vec<String>,
    /// The `iptables-restore` section for this table (from `*table` to `COMMIT`).
    pub text: String,
}

impl TablePlan {
    /// True if nothing changes in this table.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

/// The batch for one netns and family. Empty when the kernel already matches.
///
/// `Display` prints the exact `iptables-restore --noflush` input (used for golden tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The family.
    pub family: Family,
    /// Only tables that change.
    pub tables: BTreeMap<Table, TablePlan>,
}

impl Plan {
    /// True when nothing needs to change (no restore call is made).
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in self.tables.values() {
            f.write_str(&t.text)?;
        }
        Ok(())
    }
}

/// Replace rules in place (`-R`) instead of rewriting the chain when at most this fraction of
/// an equally long chain differs.
const REPLACE_MAX_DIVISOR: usize = 8;

/// Compute the batch that turns `observed` into `desired`.
///
/// # Errors
/// [`Error::InvalidRule`] if `desired` fails [`OwnedRuleset::validate`] (a jump to a chain not
/// declared in the same table), or if the families differ.
///
/// # Examples
/// ```
/// use vipmesh_netfilter::*;
/// let mut rs = OwnedRuleset::new(Family::V4);
/// let c = ChainName::new("VIPMESH-X").unwrap();
/// rs.add_rule(Table::Filter, &c, Rule::new(Matches::new(), Target::Accept)).unwrap();
/// let p = plan(&rs, &Observed::empty(Family::V4)).unwrap();
/// assert_eq!(p.to_string(), "*filter\n:VIPMESH-X - [0:0]\n-A VIPMESH-X -j ACCEPT\nCOMMIT\n");
/// ```
pub fn plan(desired: &OwnedRuleset, observed: &Observed) -> Result<Plan, Error> {
    desired.validate()?;
    if desired.family() != observed.family {
        return Err(Error::InvalidRule {
            family: desired.family(),
            table: Table::Filter,
            chain: String::new(),
            rule: String::new(),
            reason: format!("observed state is {}", observed.family),
        });
    }
    let mut tables = BTreeMap::new();
    let empty_obs = ObservedTable::default();
    for table in Table::ALL {
        let want = desired.table(table);
        let have = observed.tables.get(&table).unwrap_or(&empty_obs);
        let tp = plan_table(table, &want, have);
        if !tp.is_empty() {
            tables.insert(table, tp);
        }
    }
    Ok(Plan {
        family: desired.family(),
        tables,
    })
}

fn same(obs: &ObservedRule, want: &Rule) -> bool {
    obs.rule.as_ref() == Some(want)
}

fn plan_table(table: Table, want: &TableRuleset, have: &ObservedTable) -> TablePlan {
    let mut tp = TablePlan::default();
    let mut declare: Vec<String> = Vec::new();
    let mut replace_lines = String::new();
    let mut append_lines = String::new();

    // Our chains.
    for (name, rules) in &want.chains {
        match have.chains.get(name.as_str()) {
            Some(obs) if obs.len() == rules.len() => {
                let diff: Vec<usize> = (0..rules.len())
                    .filter(|&i| !same(&obs[i], &rules[i]))
                    .collect();
                if diff.is_empty() {
                    continue;
                }
                if diff.len().saturating_mul(REPLACE_MAX_DIVISOR) <= rules.len() {
                    for i in diff {
                        let n = i.saturating_add(1);
                        let _ = writeln!(replace_lines, "-R {name} {n} {}", rules[i]);
                        tp.rules_replaced.push((name.to_string(), n));
                    }
                    continue;
                }
            }
            _ => {}
        }
        declare.push(name.to_string());
        tp.chains_written.push(name.to_string());
        for r in rules {
            let _ = writeln!(append_lines, "-A {name} {r}");
        }
    }
    for name in have.chains.keys() {
        let wanted = ChainName::new(name.clone()).is_ok_and(|c| want.chains.contains_key(&c));
        if !wanted {
            declare.push(name.clone());
            tp.chains_deleted.push(name.clone());
        }
    }
    declare.sort();

    // Jumps: each desired jump exactly once; every other tagged rule goes.
    let mut delete_lines = String::new();
    let mut add_lines = String::new();
    let mut matched = vec![false; have.jumps.len()];
    let mut prepends: Vec<&Jump> = Vec::new();
    for j in &want.jumps {
        let rule = j.rule();
        let found: Vec<usize> = have
            .jumps
            .iter()
            .enumerate()
            .filter(|(_, (from, o))| *from == j.from && same(o, &rule))
            .map(|(i, _)| i)
            .collect();
        // Exactly one: keep it where it is. Duplicates: `-D` by spec removes the first match
        // only, and deleting by index would race with foreign writers, so all copies are
        // deleted and the jump is added again, once, at its declared position.
        match found.as_slice() {
            [i] => matched[*i] = true,
            _ => match j.position {
                JumpPosition::Prepend => prepends.push(j),
                JumpPosition::Append => {
                    let _ = writeln!(add_lines, "-A {} {rule}", j.from);
                    tp.jumps_added.push(format!("{} {rule}", j.from));
                }
            },
        }
    }
    // `-I` puts each at the top, so insert in reverse to keep the declared order.
    for j in prepends.iter().rev() {
        let rule = j.rule();
        let _ = writeln!(add_lines, "-I {} {rule}", j.from);
        tp.jumps_added.push(format!("{} {rule}", j.from));
    }
    for (i, (from, o)) in have.jumps.iter().enumerate() {
        if !matched[i] {
            let _ = writeln!(delete_lines, "-D {from} {}", o.spec);
            tp.jumps_deleted.push(format!("{from} {}", o.spec));
        }
    }

    let mut delete_chains = String::new();
    for name in &tp.chains_deleted {
        let _ = writeln!(delete_chains, "-X {name}");
    }

    if declare.is_empty()
        && replace_lines.is_empty()
        && delete_lines.is_empty()
        && add_lines.is_empty()
    {
        return tp;
    }
    let mut text = String::with_capacity(
        append_lines.len() + replace_lines.len() + delete_lines.len() + add_lines.len() + 64,
    );
    let _ = writeln!(text, "*{table}");
    for d in &declare {
        let _ = writeln!(text, ":{d} - [0:0]");
    }
    text.push_str(&replace_lines);
    text.push_str(&delete_lines);
    text.push_str(&append_lines);
    text.push_str(&add_lines);
    text.push_str(&delete_chains);
    text.push_str("COMMIT\n");
    tp.text = text;
    tp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::save::parse_save;

    fn cn(s: &str) -> ChainName {
        ChainName::new(s).unwrap()
    }

    fn vip_ruleset(n: u32) -> OwnedRuleset {
        let mut rs = OwnedRuleset::new(Family::V4);
        let c = cn("VIPMESH-VIP");
        for i in 0..n {
            let vip = std::net::Ipv4Addr::from(0x0aff_0000 + 4 + i);
            rs.add_rule(
                Table::Mangle,
                &c,
                Rule::new(
                    Matches::new().destination(Cidr::host(vip.into())),
                    Target::SetMark(Mark::new(0x100 + i)),
                ),
            )
            .unwrap();
        }
        rs.add_jump(
            Table::Mangle,
            Jump {
                from: BuiltinChain::Input,
                matches: Matches::new(),
                to: c,
                position: JumpPosition::Prepend,
            },
        )
        .unwrap();
        rs
    }

    /// What iptables-save would print after applying `p` on top of an empty table.
    fn fake_kernel_after(rs: &OwnedRuleset) -> Observed {
        let mut text = String::new();
        for (t, tr) in rs.tables() {
            let _ = writeln!(text, "*{t}");
            for c in tr.chains.keys() {
                let _ = writeln!(text, ":{c} - [0:0]");
            }
            for j in &tr.jumps {
                let _ = writeln!(text, "-A {} {}", j.from, j.rule());
            }
            for (c, rules) in &tr.chains {
                for r in rules {
                    let _ = writeln!(text, "-A {c} {r}");
                }
            }
            text.push_str("COMMIT\n");
        }
        Observed::from_dump(rs.family(), &parse_save(&text).unwrap())
    }

    #[test]
    fn plan_of_applied_is_empty() {
        let rs = vip_ruleset(5);
        let obs = fake_kernel_after(&rs);
        assert!(plan(&rs, &obs).unwrap().is_empty());
        assert_eq!(obs.to_ruleset(), rs);
    }

    #[test]
    fn from_ruleset_is_the_applied_state() {
        let rs = vip_ruleset(7);
        assert!(plan(&rs, &Observed::from_ruleset(&rs)).unwrap().is_empty());
        assert_eq!(Observed::from_ruleset(&rs), fake_kernel_after(&rs));
    }

    #[test]
    fn one_changed_rule_uses_replace() {
        let rs = vip_ruleset(100);
        let obs = fake_kernel_after(&rs);
        let mut rs2 = rs.clone();
        let c = cn("VIPMESH-VIP");
        rs2.tables_mut()
            .get_mut(&Table::Mangle)
            .unwrap()
            .chains
            .get_mut(&c)
            .unwrap()[42]
            .target = Target::SetMark(Mark::new(0x999));
        let p = plan(&rs2, &obs).unwrap();
        assert_eq!(
            p.to_string(),
            "*mangle\n-R VIPMESH-VIP 43 -d 10.255.0.46/32 -j MARK --set-xmark 0x999/0xffffffff\nCOMMIT\n"
        );
    }

    #[test]
    fn duplicate_and_stale_jumps_are_deleted_and_old_chains_dropped() {
        let text = "*mangle\n:INPUT ACCEPT [0:0]\n:VIPMESH-VIP - [0:0]\n:VIPMESH-OLD - [0:0]\n\
            -A INPUT -m comment --comment vipmesh -j VIPMESH-VIP\n\
            -A INPUT -j FOREIGN\n\
            -A INPUT -m comment --comment vipmesh -j VIPMESH-VIP\n\
            -A INPUT -m comment --comment vipmesh -j VIPMESH-OLD\n\
            -A VIPMESH-OLD -j ACCEPT\nCOMMIT\n";
        let obs = Observed::from_dump(Family::V4, &parse_save(text).unwrap());
        let mut rs = OwnedRuleset::new(Family::V4);
        let c = cn("VIPMESH-VIP");
        rs.declare_chain(Table::Mangle, &c);
        rs.add_jump(
            Table::Mangle,
            Jump {
                from: BuiltinChain::Input,
                matches: Matches::new(),
                to: c,
                position: JumpPosition::Prepend,
            },
        )
        .unwrap();
        let p = plan(&rs, &obs).unwrap();
        assert_eq!(
            p.to_string(),
            "*mangle\n:VIPMESH-OLD - [0:0]\n\
             -D INPUT -m comment --comment vipmesh -j VIPMESH-VIP\n\
             -D INPUT -m comment --comment vipmesh -j VIPMESH-VIP\n\
             -D INPUT -m comment --comment vipmesh -j VIPMESH-OLD\n\
             -I INPUT -m comment --comment vipmesh -j VIPMESH-VIP\n\
             -X VIPMESH-OLD\nCOMMIT\n"
        );
    }

    #[test]
    fn dangling_jump_is_rejected() {
        let mut rs = OwnedRuleset::new(Family::V4);
        rs.add_rule(
            Table::Filter,
            &cn("VIPMESH-A"),
            Rule::new(Matches::new(), Target::Jump(cn("VIPMESH-B"))),
        )
        .unwrap();
        assert!(matches!(
            plan(&rs, &Observed::empty(Family::V4)),
            Err(Error::InvalidRule { .. })
        ));
    }

    #[test]
    fn empty_desired_on_empty_kernel_is_noop() {
        assert!(
            plan(&OwnedRuleset::new(Family::V6), &Observed::empty(Family::V6))
                .unwrap()
                .is_empty()
        );
    }
}

/// A fake kernel that executes `iptables-restore --noflush` batches with the kernel's
/// semantics (declaration flushes, `-D` by spec removes the first match, `-R` by index, `-X`
/// refuses non-empty or referenced chains), to prove that plans converge from any state.
#[cfg(test)]
mod fake_kernel {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::model::*;
    use crate::save::{parse_rule, parse_save, tokenize};

    #[derive(Debug, Clone, Default, PartialEq)]
    struct Fake {
        /// table -> chain -> rules (canonical spec). Built-in chains are always present.
        tables: BTreeMap<&'static str, BTreeMap<String, Vec<String>>>,
    }

    const BUILTINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

    fn canon(spec: &str) -> String {
        let toks = tokenize(spec, 1).unwrap();
        parse_rule(&toks).map_or_else(|| toks.join(" "), |r| r.to_string())
    }

    impl Fake {
        fn new() -> Fake {
            let mut f = Fake::default();
            for t in Table::ALL {
                let chains = f.tables.entry(t.as_str()).or_default();
                for b in BUILTINS {
                    if BuiltinChain::from_name(b).is_some_and(|b| t.has_builtin(b)) {
                        chains.insert(b.to_owned(), Vec::new());
                    }
                }
            }
            f
        }

        fn exec(&mut self, batch: &str) -> Result<(), String> {
            let mut table: Option<&'static str> = None;
            let mut work = self.clone();
            for l in batch.lines() {
                if let Some(t) = l.strip_prefix('*') {
                    table = Table::from_name(t).map(Table::as_str);
                    continue;
                }
                if l == "COMMIT" {
                    table = None;
                    continue;
                }
                let t = table.ok_or("no table")?;
                let chains = work.tables.get_mut(t).ok_or("table")?;
                if let Some(d) = l.strip_prefix(':') {
                    let name = d.split_whitespace().next().ok_or("decl")?;
                    chains.entry(name.to_owned()).or_default().clear();
                    continue;
                }
                let (op, rest) = l.split_once(' ').ok_or("op")?;
                let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
                match op {
                    "-A" | "-I" => {
                        if let Some(target) = spec.rsplit("-j ").next() {
                            let target = target.split_whitespace().next().unwrap_or("");
                            if target.starts_with("VIPMESH-") && !chains.contains_key(target) {
                                return Err(format!("jump to missing chain {target}"));
                            }
                        }
                        let rules = chains.get_mut(chain).ok_or(format!("no chain {chain}"))?;
                        if op == "-A" {
                            rules.push(canon(spec))
                        } else {
                            rules.insert(0, canon(spec))
                        }
                    }
                    "-D" => {
                        let rules = chains.get_mut(chain).ok_or("no chain")?;
                        let c = canon(spec);
                        let i = rules
                            .iter()
                            .position(|r| *r == c)
                            .ok_or(format!("-D: no rule {c}"))?;
                        rules.remove(i);
                    }
                    "-R" => {
                        let (n, spec) = spec.split_once(' ').ok_or("-R")?;
                        let n: usize = n
                            .parse()
                            .map_err(|_e: std::num::ParseIntError| "-R index")?;
                        let rules = chains.get_mut(chain).ok_or("no chain")?;
                        let slot = rules
                            .get_mut(n.checked_sub(1).ok_or("-R 0")?)
                            .ok_or("-R range")?;
                        *slot = canon(spec);
                    }
                    "-X" => {
                        if !chains.get(chain).ok_or("-X missing")?.is_empty() {
                            return Err(format!("-X {chain}: not empty"));
                        }
                        let jump = format!("-j {chain}");
                        if chains.values().flatten().any(|r| r.ends_with(&jump)) {
                            return Err(format!("-X {chain}: referenced"));
                        }
                        chains.remove(chain);
                    }
                    _ => return Err(format!("unknown {l}")),
                }
            }
            *self = work;
            Ok(())
        }

        fn save(&self) -> String {
            let mut s = String::new();
            for (t, chains) in &self.tables {
                s.push_str(&format!("*{t}\n"));
                let order = |n: &String| BUILTINS.iter().position(|b| b == n).unwrap_or(99);
                let mut names: Vec<&String> = chains.keys().collect();
                names.sort_by_key(|n| (order(n), (*n).clone()));
                for n in &names {
                    let policy = if order(n) < 99 { "ACCEPT" } else { "-" };
                    s.push_str(&format!(":{n} {policy} [0:0]\n"));
                }
                for n in &names {
                    for r in &chains[*n] {
                        s.push_str(&format!("-A {n} {r}\n"));
                    }
                }
                s.push_str("COMMIT\n");
            }
            s
        }

        fn observe(&self) -> Observed {
            Observed::from_dump(Family::V4, &parse_save(&self.save()).unwrap())
        }

        fn foreign(&self) -> String {
            self.save()
                .lines()
                .filter(|l| !l.contains("VIPMESH-"))
                .collect::<Vec<_>>()
                .join("\n")
        }
    }

    const CHAINS: [&str; 3] = ["VIPMESH-A", "VIPMESH-B", "VIPMESH-C"];

    fn rule_strategy() -> impl Strategy<Value = (usize, usize, u8)> {
        (0..CHAINS.len(), 0..6usize, any::<u8>())
    }

    fn make_rule(kind: usize, x: u8) -> Rule {
        let d = Cidr::host(std::net::Ipv4Addr::new(10, 0, 0, x).into());
        match kind {
            0 => Rule::new(
                Matches::new().destination(d),
                Target::SetMark(Mark::new(u32::from(x))),
            ),
            1 => Rule::new(Matches::new().destination(d), Target::Return),
            2 => Rule::new(
                Matches::new()
                    .protocol(Protocol::Tcp)
                    .dport(Port::new(u16::from(x) + 1).unwrap().into()),
                Target::Accept,
            ),
            3 => Rule::new(Matches::new().source(d), Target::Drop)
                .with_comment(Comment::new(format!("svc {x}")).unwrap()),
            4 => Rule::new(Matches::new().mark(Mark::new(u32::from(x))), Target::Accept),
            _ => Rule::new(
                Matches::new().destination(d).ctstate(CtState::NEW),
                Target::Return,
            ),
        }
    }

    fn desired(rules: &[(usize, usize, u8)], jumps: &[(usize, usize)]) -> OwnedRuleset {
        let mut rs = OwnedRuleset::new(Family::V4);
        for (c, k, x) in rules {
            rs.add_rule(
                Table::Mangle,
                &ChainName::new(CHAINS[*c]).unwrap(),
                make_rule(*k, *x),
            )
            .unwrap();
        }
        let from = [
            BuiltinChain::Prerouting,
            BuiltinChain::Input,
            BuiltinChain::Output,
        ];
        for (f, c) in jumps {
            let position = if f % 2 == 0 {
                JumpPosition::Prepend
            } else {
                JumpPosition::Append
            };
            rs.add_jump(
                Table::Mangle,
                Jump {
                    from: from[f % 3],
                    matches: Matches::new(),
                    to: ChainName::new(CHAINS[*c]).unwrap(),
                    position,
                },
            )
            .unwrap();
        }
        rs
    }

    fn tamper(f: &mut Fake, op: usize, x: u8) {
        let m = f.tables.get_mut("mangle").unwrap();
        let c = CHAINS[usize::from(x) % CHAINS.len()].to_owned();
        match op {
            0 => {
                if let Some(r) = m.get_mut(&c)
                    && !r.is_empty()
                {
                    let i = usize::from(x) % r.len();
                    r.remove(i);
                }
            }
            1 => {
                if let Some(r) = m.get_mut(&c) {
                    r.insert(0, "-j ACCEPT".into());
                }
            }
            2 => m
                .get_mut("INPUT")
                .unwrap()
                .push(format!("-m comment --comment vipmesh -j {c}")),
            3 => m
                .get_mut("INPUT")
                .unwrap()
                .push(format!("-d 10.9.9.{x}/32 -j ACCEPT")),
            4 => {
                m.entry("DOCKER-X".into())
                    .or_default()
                    .push("-p udp -j RETURN".into());
            }
            5 => {
                m.entry(c).or_default();
            }
            _ => m
                .get_mut("PREROUTING")
                .unwrap()
                .insert(0, "-m set --match-set foo src -j ACCEPT".into()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn plans_converge_from_any_state_and_spare_foreign_rules(
            first in (proptest::collection::vec(rule_strategy(), 0..12), proptest::collection::vec((0..6usize, 0..3usize), 0..4)),
            tampering in proptest::collection::vec((0..7usize, any::<u8>()), 0..6),
            second in (proptest::collection::vec(rule_strategy(), 0..12), proptest::collection::vec((0..6usize, 0..3usize), 0..4)),
        ) {
            let mut k = Fake::new();
            let d1 = desired(&first.0, &first.1);
            k.exec(&plan(&d1, &k.observe()).unwrap().to_string()).unwrap();
            prop_assert!(plan(&d1, &k.observe()).unwrap().is_empty());
            for (op, x) in &tampering {
                tamper(&mut k, *op, *x);
            }
            let foreign = k.foreign();
            let d2 = desired(&second.0, &second.1);
            let p = plan(&d2, &k.observe()).unwrap();
            k.exec(&p.to_string()).map_err(|e| TestCaseError::fail(format!("{e}\n{p}")))?;
            let again = plan(&d2, &k.observe()).unwrap();
            prop_assert!(again.is_empty(), "not converged:\n{}\nafter\n{}", again, p);
            prop_assert_eq!(k.foreign(), foreign.clone());
            prop_assert_eq!(k.observe().to_ruleset(), d2.clone());
            // Teardown leaves only the foreign content.
            k.exec(&plan(&OwnedRuleset::new(Family::V4), &k.observe()).unwrap().to_string()).unwrap();
            prop_assert_eq!(k.foreign(), foreign);
            prop_assert!(!k.save().contains("VIPMESH"));
        }
    }
}
