//! The names iptables knows: the address family (which tool), tables, built-in chains,
//! and the chains we own.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::error::Error;

/// Address family: selects `iptables-restore` or `ip6tables-restore`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 (`iptables`).
    V4,
    /// IPv6 (`ip6tables`).
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    /// Tool prefix: `iptables` or `ip6tables`.
    pub fn tool_prefix(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

impl From<vipmesh_types::Family> for Family {
    fn from(f: vipmesh_types::Family) -> Family {
        match f {
            vipmesh_types::Family::V4 => Family::V4,
            vipmesh_types::Family::V6 => Family::V6,
        }
    }
}

impl From<Family> for vipmesh_types::Family {
    fn from(f: Family) -> vipmesh_types::Family {
        match f {
            Family::V4 => vipmesh_types::Family::V4,
            Family::V6 => vipmesh_types::Family::V6,
        }
    }
}

/// An iptables table we program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `filter`.
    Filter,
    /// `nat`.
    Nat,
    /// `mangle`.
    Mangle,
}

impl Table {
    /// All tables, in render order.
    pub const ALL: [Table; 3] = [Table::Filter, Table::Nat, Table::Mangle];

    /// The table's name as iptables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
            Table::Mangle => "mangle",
        }
    }

    /// Parse a table name; `None` for tables we do not model (`raw`, `security`).
    pub fn from_name(s: &str) -> Option<Table> {
        match s {
            "filter" => Some(Table::Filter),
            "nat" => Some(Table::Nat),
            "mangle" => Some(Table::Mangle),
            _ => None,
        }
    }

    /// Whether the built-in chain exists in this table.
    pub fn has_builtin(self, chain: BuiltinChain) -> bool {
        use BuiltinChain::*;
        match self {
            Table::Filter => matches!(chain, Input | Forward | Output),
            Table::Nat => matches!(chain, Prerouting | Input | Output | Postrouting),
            Table::Mangle => true,
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A built-in chain (netfilter hook).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BuiltinChain {
    /// `PREROUTING`.
    Prerouting,
    /// `INPUT`.
    Input,
    /// `FORWARD`.
    Forward,
    /// `OUTPUT`.
    Output,
    /// `POSTROUTING`.
    Postrouting,
}

impl BuiltinChain {
    /// The chain's name.
    pub fn as_str(self) -> &'static str {
        match self {
            BuiltinChain::Prerouting => "PREROUTING",
            BuiltinChain::Input => "INPUT",
            BuiltinChain::Forward => "FORWARD",
            BuiltinChain::Output => "OUTPUT",
            BuiltinChain::Postrouting => "POSTROUTING",
        }
    }
    /// Parse a built-in chain name.
    pub fn from_name(s: &str) -> Option<BuiltinChain> {
        Some(match s {
            "PREROUTING" => BuiltinChain::Prerouting,
            "INPUT" => BuiltinChain::Input,
            "FORWARD" => BuiltinChain::Forward,
            "OUTPUT" => BuiltinChain::Output,
            "POSTROUTING" => BuiltinChain::Postrouting,
            _ => return None,
        })
    }
}

impl fmt::Display for BuiltinChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of a chain we own: `VIPMESH-` followed by `[A-Za-z0-9_.-]`, at most 28 bytes
/// (the kernel's `XT_EXTENSION_MAXNAMELEN` is 29 including the NUL).
///
/// # Examples
/// ```
/// use vipmesh_netfilter::ChainName;
/// assert!(ChainName::new("VIPMESH-VIP").is_ok());
/// assert!(ChainName::new("DOCKER-INGRESS").is_err());
/// assert!(ChainName::new("VIPMESH-THIS-NAME-IS-FAR-TOO-LONG").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChainName(String);

impl ChainName {
    /// Our prefix.
    pub const PREFIX: &'static str = "VIPMESH-";
    /// Maximum length in bytes.
    pub const MAX_LEN: usize = 28;

    /// Validate a chain name.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] with field `"chain name"` if the prefix is missing, the name is
    /// longer than 28 bytes, has nothing after the prefix, or contains a character outside
    /// `[A-Za-z0-9_.-]`.
    pub fn new(name: impl Into<String>) -> Result<ChainName, Error> {
        let name = name.into();
        if !name.starts_with(Self::PREFIX) {
            return Err(Error::invalid(
                "chain name",
                name,
                "must start with VIPMESH-",
            ));
        }
        if name.len() > Self::MAX_LEN {
            return Err(Error::invalid("chain name", name, "longer than 28 bytes"));
        }
        if name.len() == Self::PREFIX.len() {
            return Err(Error::invalid(
                "chain name",
                name,
                "nothing after the VIPMESH- prefix",
            ));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(Error::invalid(
                "chain name",
                name,
                "only [A-Za-z0-9_.-] allowed",
            ));
        }
        Ok(ChainName(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a (possibly foreign) chain name carries our prefix, i.e. is ours to delete.
    pub fn is_ours(name: &str) -> bool {
        name.starts_with(Self::PREFIX)
    }
}

impl fmt::Display for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ChainName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        ChainName::new(s)
    }
}

/// A chain: built-in or ours.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Chain {
    /// A built-in chain; we only ever add tagged jump rules to these.
    Builtin(BuiltinChain),
    /// A chain we own.
    Owned(ChainName),
}

impl Chain {
    /// Name as iptables spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Chain::Builtin(b) => b.as_str(),
            Chain::Owned(n) => n.as_str(),
        }
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_convert_both_ways_at_the_edge() {
        for (shared, nf, tool) in [
            (vipmesh_types::Family::V4, Family::V4, "iptables"),
            (vipmesh_types::Family::V6, Family::V6, "ip6tables"),
        ] {
            assert_eq!(Family::from(shared), nf);
            assert_eq!(vipmesh_types::Family::from(nf), shared);
            assert_eq!(Family::from(shared).tool_prefix(), tool);
            assert_eq!(nf.to_string(), shared.to_string());
        }
    }
}
