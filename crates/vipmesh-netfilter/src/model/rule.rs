//! One rule ([`Rule`]): matches, a target, a comment, and the cross-field checks of a rule
//! placed in a family and table.

use super::{Comment, Family, Matches, Protocol, RejectWith, Table, Target};

/// One rule: matches, a target, and an optional comment (`-m comment`).
///
/// # Examples
/// ```
/// use vipmesh_netfilter::{Rule, Matches, Target, Mark};
/// let r = Rule::new(Matches::new().destination("10.0.0.4".parse().unwrap()), Target::SetMark(Mark::new(0x103)));
/// assert_eq!(r.to_string(), "-d 10.0.0.4/32 -j MARK --set-xmark 0x103/0xffffffff");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// The matches.
    pub matches: Matches,
    /// The target.
    pub target: Target,
    /// The comment, rendered as the last match (where `iptables-nft` prints it).
    pub comment: Option<Comment>,
}

impl Rule {
    /// A rule without a comment.
    pub fn new(matches: Matches, target: Target) -> Rule {
        Rule {
            matches,
            target,
            comment: None,
        }
    }
    /// Set the comment.
    pub fn with_comment(mut self, c: Comment) -> Rule {
        self.comment = Some(c);
        self
    }

    /// Check the cross-field invariants of a rule placed in `family`/`table`.
    pub(crate) fn check(&self, family: Family, table: Table) -> Result<(), String> {
        let m = &self.matches;
        for (what, a) in [("-s", &m.source), ("-d", &m.destination)] {
            if let Some(a) = a
                && a.cidr.family() != family
            {
                return Err(format!("{what} {} is not {family}", a.cidr));
            }
        }
        let ports_ok = m.protocol.is_some_and(Protocol::has_ports);
        if (m.sport.is_some() || m.dport.is_some()) && !ports_ok {
            return Err("--sport/--dport need -p tcp, udp or sctp".into());
        }
        match m.protocol {
            Some(Protocol::Icmp) if family == Family::V6 => {
                return Err("icmp in an ipv6 rule".into());
            }
            Some(Protocol::Icmpv6) if family == Family::V4 => {
                return Err("icmpv6 in an ipv4 rule".into());
            }
            _ => {}
        }
        let table_ok = |ok: &[Table], what: &str| {
            if ok.contains(&table) {
                Ok(())
            } else {
                Err(format!("{what} is not valid in the {table} table"))
            }
        };
        match &self.target {
            Target::Accept | Target::Drop | Target::Return | Target::Jump(_) => Ok(()),
            Target::Reject(w) => {
                table_ok(&[Table::Filter], "REJECT")?;
                match (w, family) {
                    (RejectWith::TcpReset, _) if m.protocol != Some(Protocol::Tcp) => {
                        Err("--reject-with tcp-reset needs -p tcp".into())
                    }
                    (RejectWith::IcmpPortUnreachable, Family::V6) => {
                        Err("icmp-port-unreachable in ipv6".into())
                    }
                    (RejectWith::Icmp6PortUnreachable, Family::V4) => {
                        Err("icmp6-port-unreachable in ipv4".into())
                    }
                    _ => Ok(()),
                }
            }
            Target::SetMark(_) => table_ok(&[Table::Mangle], "MARK"),
            Target::Dnat(to) => {
                table_ok(&[Table::Nat], "DNAT")?;
                if Family::of(to.addr) != family {
                    return Err(format!("DNAT to {to} is not {family}"));
                }
                if to.port.is_some() && !ports_ok {
                    return Err("DNAT to a port needs -p tcp, udp or sctp".into());
                }
                Ok(())
            }
            Target::Snat(a) => {
                table_ok(&[Table::Nat], "SNAT")?;
                if Family::of(*a) != family {
                    return Err(format!("SNAT to {a} is not {family}"));
                }
                Ok(())
            }
            Target::Masquerade => table_ok(&[Table::Nat], "MASQUERADE"),
            Target::Redirect(_) => {
                table_ok(&[Table::Nat], "REDIRECT")?;
                if !ports_ok {
                    return Err("REDIRECT --to-ports needs -p tcp, udp or sctp".into());
                }
                Ok(())
            }
        }
    }
}
