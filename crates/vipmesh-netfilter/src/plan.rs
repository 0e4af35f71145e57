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
