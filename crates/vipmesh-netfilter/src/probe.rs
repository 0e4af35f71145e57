//! The trial batch of a [`Plan`] (pure): what its rules need from the kernel, runnable in an
//! empty namespace.
//!
//! `iptables-restore` commits each table at its `COMMIT` line, so a batch whose second table
//! needs a kernel module that cannot be loaded (`-m ipvs` without `xt_ipvs`) fails after the
//! first table was committed. Running [`Plan::probe`] in a scratch namespace first
//! ([`crate::Applier::check`]) finds that before anything is written: the modules behind
//! matches and targets are global, the namespace is not.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{ChainName, Table};
use crate::plan::Plan;
use crate::save::tokenize;

/// One rule line that adds a rule (`-A`, `-I`, `-R`) as `(chain, arguments)`, the
/// arguments as written (quotes kept); `None` for any other line.
fn added_rule(line: &str) -> Option<(&str, &str)> {
    let (op, rest) = line.split_once(' ')?;
    if !matches!(op, "-A" | "-I" | "-R") {
        return None;
    }
    let (chain, args) = rest.split_once(' ').unwrap_or((rest, ""));
    // `-I CHAIN N …` and `-R CHAIN N …` carry a 1-based index.
    let args = match args.split_once(' ') {
        Some((n, tail)) if op != "-A" && n.bytes().all(|b| b.is_ascii_digit()) => tail,
        None if op != "-A" && !args.is_empty() && args.bytes().all(|b| b.is_ascii_digit()) => "",
        _ => args,
    };
    Some((chain, args))
}

/// The option arguments of `args` that name a kernel extension: `-m NAME`, `-p PROTO`,
/// `-j TARGET`/`-g CHAIN` (ours excluded: chains are not modules).
fn extension_tokens(args: &str) -> Vec<String> {
    let Ok(tokens) = tokenize(args, 0) else {
        // The batch was rendered by us and is re-parsed by iptables-restore anyway; a line
        // this cannot split is kept whole so the probe still covers it.
        return vec![args.to_owned()];
    };
    tokens
        .windows(2)
        .filter_map(|w| match w[0].as_str() {
            "-m" | "--match" => Some(format!("-m {}", w[1])),
            "-p" | "--protocol" => Some(format!("-p {}", w[1])),
            "-j" | "--jump" | "-g" | "--goto" if !w[1].starts_with(ChainName::PREFIX) => {
                Some(format!("-j {}", w[1]))
            }
            _ => None,
        })
        .collect()
}

impl Plan {
    /// Per table, the extensions the rules this batch adds use (`-m ipvs`, `-p tcp`,
    /// `-j MARK` …): what [`crate::Applier::check`] remembers as verified.
    ///
    /// # Examples
    /// ```
    /// use vipmesh_netfilter::*;
    /// let mut rs = OwnedRuleset::new(Family::V4);
    /// let c = ChainName::new("VIPMESH-X").unwrap();
    /// rs.add_rule(Table::Filter, &c, Rule::new(Matches::new(), Target::Accept)).unwrap();
    /// let p = plan(&rs, &Observed::empty(Family::V4)).unwrap();
    /// assert_eq!(p.extensions()[&Table::Filter].iter().collect::<Vec<_>>(), ["-j ACCEPT"]);
    /// ```
    pub fn extensions(&self) -> BTreeMap<Table, BTreeSet<String>> {
        self.tables
            .iter()
            .map(|(table, tp)| {
                let set = tp
                    .text
                    .lines()
                    .filter_map(added_rule)
                    .flat_map(|(_, args)| extension_tokens(args))
                    .collect();
                (*table, set)
            })
            .collect()
    }

    /// The trial batch: every rule this batch adds, appended (`-A`) to its chain, with each
    /// of our chains it names declared, per table; no deletions. It applies to an empty
    /// namespace exactly when the kernel can load everything the real batch needs, wherever
    /// the real batch inserts or replaces. Empty when the batch adds no rule.
    ///
    /// # Examples
    /// ```
    /// use vipmesh_netfilter::*;
    /// let mut rs = OwnedRuleset::new(Family::V4);
    /// let c = ChainName::new("VIPMESH-X").unwrap();
    /// rs.add_rule(Table::Filter, &c, Rule::new(Matches::new(), Target::Accept)).unwrap();
    /// rs.add_jump(Table::Filter, Jump { from: BuiltinChain::Input, matches: Matches::new(),
    ///     to: c, position: JumpPosition::Prepend }).unwrap();
    /// let p = plan(&rs, &Observed::empty(Family::V4)).unwrap();
    /// assert_eq!(
    ///     p.probe(),
    ///     "*filter\n:VIPMESH-X - [0:0]\n-A VIPMESH-X -j ACCEPT\n\
    ///      -A INPUT -m comment --comment vipmesh -j VIPMESH-X\nCOMMIT\n"
    /// );
    /// ```
    pub fn probe(&self) -> String {
        let mut out = String::new();
        for (table, tp) in &self.tables {
            let rules: Vec<(&str, &str)> = tp.text.lines().filter_map(added_rule).collect();
            if rules.is_empty() {
                continue;
            }
            let ours: BTreeSet<&str> = rules
                .iter()
                .flat_map(|(chain, args)| std::iter::once(*chain).chain(args.split_whitespace()))
                .filter(|w| w.starts_with(ChainName::PREFIX))
                .collect();
            out.push('*');
            out.push_str(table.as_str());
            out.push('\n');
            for c in ours {
                out.push(':');
                out.push_str(c);
                out.push_str(" - [0:0]\n");
            }
            for (chain, args) in rules {
                out.push_str("-A ");
                out.push_str(chain);
                if !args.is_empty() {
                    out.push(' ');
                    out.push_str(args);
                }
                out.push('\n');
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::Family;
    use crate::plan::TablePlan;

    fn plan_of(tables: &[(Table, &str)]) -> Plan {
        Plan {
            family: Family::V4,
            tables: tables
                .iter()
                .map(|(t, text)| {
                    (
                        *t,
                        TablePlan {
                            text: (*text).to_owned(),
                            ..TablePlan::default()
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn inserts_and_replacements_become_appends_and_deletions_go() {
        let p = plan_of(&[
            (
                Table::Nat,
                "*nat\n:VIPMESH-NAT - [0:0]\n-F VIPMESH-OLD\n-X VIPMESH-OLD\n\
                 -D POSTROUTING -m comment --comment vipmesh -j VIPMESH-OLD\n\
                 -I POSTROUTING 1 -m comment --comment vipmesh -j VIPMESH-NAT\n\
                 -R VIPMESH-SNAT 3 -m ipvs --vaddr 10.0.0.4/32 -j SNAT --to-source 10.0.0.2\n\
                 -A VIPMESH-NAT -m comment --comment \"vipmesh svc web\" -j VIPMESH-SNAT\n\
                 COMMIT\n",
            ),
            (Table::Filter, "*filter\n-X VIPMESH-GONE\nCOMMIT\n"),
        ]);
        assert_eq!(
            p.probe(),
            "*nat\n:VIPMESH-NAT - [0:0]\n:VIPMESH-SNAT - [0:0]\n\
             -A POSTROUTING -m comment --comment vipmesh -j VIPMESH-NAT\n\
             -A VIPMESH-SNAT -m ipvs --vaddr 10.0.0.4/32 -j SNAT --to-source 10.0.0.2\n\
             -A VIPMESH-NAT -m comment --comment \"vipmesh svc web\" -j VIPMESH-SNAT\n\
             COMMIT\n"
        );
        let ext = p.extensions();
        assert_eq!(
            ext[&Table::Nat]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["-j SNAT", "-m comment", "-m ipvs"]
        );
        assert!(ext[&Table::Filter].is_empty());
    }

    #[test]
    fn an_insert_without_index_and_a_bare_rule_are_kept() {
        let p = plan_of(&[(
            Table::Mangle,
            "*mangle\n-I PREROUTING -p tcp -j VIPMESH-M\n-A VIPMESH-M\n-I VIPMESH-M 2\nCOMMIT\n",
        )]);
        assert_eq!(
            p.probe(),
            "*mangle\n:VIPMESH-M - [0:0]\n-A PREROUTING -p tcp -j VIPMESH-M\n-A VIPMESH-M\n\
             -A VIPMESH-M\nCOMMIT\n"
        );
        assert_eq!(
            p.extensions()[&Table::Mangle]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["-p tcp"]
        );
    }

    #[test]
    fn a_plan_without_additions_probes_nothing() {
        assert_eq!(
            plan_of(&[(
                Table::Filter,
                "*filter\n-F VIPMESH-A\n-X VIPMESH-A\nCOMMIT\n"
            )])
            .probe(),
            ""
        );
    }
}
