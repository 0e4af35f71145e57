//! [`OwnedRuleset`]: the complete desired content of our chains, per table, for one family.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::Error;
use crate::model::{BuiltinChain, ChainName, Comment, Family, Matches, Rule, Table, Target};

/// Where a jump rule goes in its built-in chain when it has to be added.
///
/// Position is only used when the jump is missing: an existing jump is never moved, so foreign
/// rules inserted in front of it later are left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JumpPosition {
    /// `-I CHAIN` (first rule): our chain sees packets before foreign rules.
    Prepend,
    /// `-A CHAIN` (last rule).
    Append,
}

/// A jump from a built-in chain into one of our chains, always tagged
/// `-m comment --comment vipmesh`. Ensured exactly once per apply.
///
/// Identity (`Eq`, `Ord`, `Hash`) is `(from, matches, to)`: `position` is only an insertion
/// hint, so a ruleset read back with [`Observed::to_ruleset`](crate::Observed::to_ruleset)
/// equals the one applied.
#[derive(Debug, Clone)]
pub struct Jump {
    /// The built-in chain the jump lives in.
    pub from: BuiltinChain,
    /// Extra matches (e.g. `-m addrtype --dst-type LOCAL`).
    pub matches: Matches,
    /// Our chain.
    pub to: ChainName,
    /// Where to add it when missing.
    pub position: JumpPosition,
}

impl Jump {
    fn key(&self) -> (BuiltinChain, &Matches, &ChainName) {
        (self.from, &self.matches, &self.to)
    }

    /// The rule as it appears in the built-in chain.
    pub fn rule(&self) -> Rule {
        Rule {
            matches: self.matches.clone(),
            target: Target::Jump(self.to.clone()),
            comment: Some(Comment::owner()),
        }
    }
}

impl PartialEq for Jump {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Jump {}

impl PartialOrd for Jump {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Jump {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl std::hash::Hash for Jump {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

/// Desired content of one table: our chains (in order) and the jumps into them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableRuleset {
    /// Our chains and their rules, in rule order.
    pub chains: BTreeMap<ChainName, Vec<Rule>>,
    /// Jumps from built-in chains.
    pub jumps: BTreeSet<Jump>,
}

impl TableRuleset {
    /// True when nothing is owned in this table.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.jumps.is_empty()
    }
}

/// The complete set of rules vipmesh wants in one network namespace, for one family.
///
/// Everything not in here that carries our prefix (chains) or our tag (jumps) is deleted by the
/// next apply; everything else is never touched.
///
/// # Examples
/// ```
/// use vipmesh_netfilter::*;
/// let mut rs = OwnedRuleset::new(Family::V4);
/// let chain = ChainName::new("VIPMESH-VIP").unwrap();
/// rs.add_rule(
///     Table::Mangle,
///     &chain,
///     Rule::new(Matches::new().destination("10.0.0.4".parse().unwrap()), Target::SetMark(Mark::new(0x103))),
/// ).unwrap();
/// rs.add_jump(Table::Mangle, Jump {
///     from: BuiltinChain::Input,
///     matches: Matches::new(),
///     to: chain.clone(),
///     position: JumpPosition::Prepend,
/// }).unwrap();
/// // DNAT does not belong in mangle: a typed error, nothing recorded.
/// let bad = Rule::new(Matches::new(), Target::Masquerade);
/// assert!(rs.add_rule(Table::Mangle, &chain, bad).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRuleset {
    family: Family,
    tables: BTreeMap<Table, TableRuleset>,
}

impl OwnedRuleset {
    /// An empty ruleset (applying it removes everything we own).
    pub fn new(family: Family) -> OwnedRuleset {
        OwnedRuleset {
            family,
            tables: BTreeMap::new(),
        }
    }

    /// The family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Per-table content (tables with nothing owned may be absent).
    pub fn tables(&self) -> &BTreeMap<Table, TableRuleset> {
        &self.tables
    }

    /// The content of one table (empty if none).
    pub fn table(&self, t: Table) -> TableRuleset {
        self.tables.get(&t).cloned().unwrap_or_default()
    }

    /// Declare a chain (possibly empty). Adding a rule declares its chain implicitly.
    pub fn declare_chain(&mut self, table: Table, chain: &ChainName) {
        self.tables
            .entry(table)
            .or_default()
            .chains
            .entry(chain.clone())
            .or_default();
    }

    /// Append `rule` to our `chain` in `table`.
    ///
    /// # Errors
    /// [`Error::InvalidRule`] if the rule does not fit the family or table (see [`Rule`]'s
    /// invariants); the ruleset is unchanged then.
    pub fn add_rule(&mut self, table: Table, chain: &ChainName, rule: Rule) -> Result<(), Error> {
        rule.check(self.family, table)
            .map_err(|reason| Error::InvalidRule {
                family: self.family,
                table,
                chain: chain.to_string(),
                rule: rule.to_string(),
                reason,
            })?;
        self.tables
            .entry(table)
            .or_default()
            .chains
            .entry(chain.clone())
            .or_default()
            .push(rule);
        Ok(())
    }

    /// Ensure a tagged jump from a built-in chain into our chain.
    ///
    /// # Errors
    /// [`Error::InvalidRule`] if the built-in chain does not exist in `table` or the matches do
    /// not fit the family.
    pub fn add_jump(&mut self, table: Table, jump: Jump) -> Result<(), Error> {
        let rule = jump.rule();
        let err = |reason: String| Error::InvalidRule {
            family: self.family,
            table,
            chain: jump.from.to_string(),
            rule: rule.to_string(),
            reason,
        };
        if !table.has_builtin(jump.from) {
            return Err(err(format!("{} has no {} chain", table, jump.from)));
        }
        rule.check(self.family, table).map_err(err)?;
        let t = self.tables.entry(table).or_default();
        t.chains.entry(jump.to.clone()).or_default();
        t.jumps.insert(jump);
        Ok(())
    }

    /// Check that every jump target inside our chains is declared in the same table.
    ///
    /// # Errors
    /// [`Error::InvalidRule`] naming the first dangling jump.
    pub fn validate(&self) -> Result<(), Error> {
        for (table, t) in &self.tables {
            for (chain, rules) in &t.chains {
                for r in rules {
                    if let Target::Jump(to) = &r.target
                        && !t.chains.contains_key(to)
                    {
                        return Err(Error::InvalidRule {
                            family: self.family,
                            table: *table,
                            chain: chain.to_string(),
                            rule: r.to_string(),
                            reason: format!("jump to undeclared chain {to}"),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Append everything in `other` (e.g. VIP rules and ingress rules that share a netns):
    /// rules are appended to same-named chains, jumps are united.
    ///
    /// # Errors
    /// [`Error::InvalidRule`] if the families differ; `self` is unchanged then.
    pub fn merge(&mut self, other: &OwnedRuleset) -> Result<(), Error> {
        if other.family != self.family {
            return Err(Error::InvalidRule {
                family: self.family,
                table: Table::Filter,
                chain: String::new(),
                rule: String::new(),
                reason: format!("cannot merge an {} ruleset", other.family),
            });
        }
        for (table, t) in &other.tables {
            let mine = self.tables.entry(*table).or_default();
            for (c, rules) in &t.chains {
                mine.chains
                    .entry(c.clone())
                    .or_default()
                    .extend(rules.iter().cloned());
            }
            mine.jumps.extend(t.jumps.iter().cloned());
        }
        Ok(())
    }

    /// Total number of rules in our chains (jumps not counted).
    pub fn rule_count(&self) -> usize {
        self.tables
            .values()
            .flat_map(|t| t.chains.values())
            .map(Vec::len)
            .sum()
    }

    pub(crate) fn tables_mut(&mut self) -> &mut BTreeMap<Table, TableRuleset> {
        &mut self.tables
    }
}
