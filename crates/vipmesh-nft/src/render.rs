//! Rendering the typed model as `nft -f` input (nft's native syntax, see
//! [`nft(8)`](https://www.netfilter.org/projects/nftables/manpage.html)).
//!
//! Every set/map element is rendered on a line of its own, so that nft's error location
//! (`/dev/stdin:LINE:COL`) names the element the kernel rejected.

use std::fmt::{self, Write as _};

use crate::model::{FAMILY, Key, Name, OWNER_COMMENT, Table, Value};

/// Writes `{ e1,\n\te2 }` with one element per line.
fn write_elements<'a>(
    f: &mut impl fmt::Write,
    indent: &str,
    elems: impl Iterator<Item = (&'a Key, Option<&'a Value>)>,
) -> fmt::Result {
    let mut first = true;
    for (k, v) in elems {
        if !first {
            f.write_str(",")?;
        }
        first = false;
        write!(f, "\n{indent}{k}")?;
        if let Some(v) = v {
            write!(f, " : {v}")?;
        }
    }
    Ok(())
}

/// `add element inet <table> <name> { … }` (or `delete element`, values omitted).
pub(crate) fn element_command<'a>(
    out: &mut String,
    op: &str,
    table: &str,
    name: &Name,
    elems: impl Iterator<Item = (&'a Key, Option<&'a Value>)>,
) {
    let _ = write!(out, "{op} element {FAMILY} {table} {name} {{");
    let _ = write_elements(out, "\t", elems);
    out.push_str("\n}\n");
}

impl fmt::Display for Table {
    /// The whole table as one `nft -f` fragment: the table with its comment, chains (empty),
    /// sets and maps with their elements, then one `add rule` line per rule. Chains come
    /// first so that verdict maps and jumps can name them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        writeln!(f, "table {FAMILY} {name} {{")?;
        writeln!(f, "\tcomment \"{OWNER_COMMENT}\"")?;
        for (cn, c) in self.chains() {
            writeln!(f, "\tchain {cn} {{")?;
            if let Some(b) = c.base {
                writeln!(
                    f,
                    "\t\ttype {} hook {} priority {}; policy {};",
                    b.kind.nft_name(),
                    b.hook.nft_name(),
                    b.priority.0,
                    b.policy.nft_name()
                )?;
            }
            writeln!(f, "\t}}")?;
        }
        for (sn, s) in self.sets() {
            writeln!(f, "\tset {sn} {{")?;
            writeln!(f, "\t\ttype {}", s.key_type())?;
            if !s.elements().is_empty() {
                f.write_str("\t\telements = {")?;
                write_elements(f, "\t\t\t", s.elements().iter().map(|k| (k, None)))?;
                f.write_str("\n\t\t}\n")?;
            }
            writeln!(f, "\t}}")?;
        }
        for (mn, m) in self.maps() {
            writeln!(f, "\tmap {mn} {{")?;
            writeln!(f, "\t\ttype {} : {}", m.key_type(), m.value_type())?;
            if !m.elements().is_empty() {
                f.write_str("\t\telements = {")?;
                write_elements(f, "\t\t\t", m.elements().iter().map(|(k, v)| (k, Some(v))))?;
                f.write_str("\n\t\t}\n")?;
            }
            writeln!(f, "\t}}")?;
        }
        writeln!(f, "}}")?;
        for (cn, c) in self.chains() {
            for r in &c.rules {
                writeln!(f, "add rule {FAMILY} {name} {cn} {r}")?;
            }
        }
        Ok(())
    }
}
