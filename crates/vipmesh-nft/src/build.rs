//! Builders for the mesh's objects, one pure function each. Each adds fixed-name chains and
//! maps to a [`Table`]; the number of rules never depends on the number of services, so a
//! service change is an element change (see [`crate::plan()`]).
//!
//! The names they use (chains and maps) are listed in [`names`].

use std::net::{IpAddr, SocketAddr};

use crate::error::Error;
use crate::model::{
    BaseChain, ChainType, Hook, IfName, IpFamily, Key, KeyExpr, KeyPart, KeyType, KeyValue, Map,
    Match, Name, Policy, Prefix, Priority, Proto, RejectWith, Rule, Selector, Statement, Table,
    Value, ValueType, Verdict,
};

/// The fixed chain and map names the builders use.
pub mod names {
    /// VIP (address only) → mark, IPv4.
    pub const VIP4: &str = "vip4";
    /// VIP . proto . port → mark, IPv4.
    pub const VIP4_PORT: &str = "vip4_port";
    /// VIP (address only) → mark, IPv6.
    pub const VIP6: &str = "vip6";
    /// VIP . proto . port → mark, IPv6.
    pub const VIP6_PORT: &str = "vip6_port";
    /// Published proto . port → mark (ingress sandbox).
    pub const INGRESS_PORT: &str = "ingress_port";
    /// Published proto . port → ingress sandbox address . port, IPv4.
    pub const PUBLISH_DNAT4: &str = "publish_dnat4";
    /// Published proto . port → ingress sandbox address . port, IPv6.
    pub const PUBLISH_DNAT6: &str = "publish_dnat6";
    /// The regular chain holding the DNAT lookups.
    pub const PUBLISH_CHAIN: &str = "publish_dnat";
    /// The SNAT chain of a load-balancing sandbox.
    pub const SNAT_CHAIN: &str = "ipvs_snat";
    /// The REDIRECT chain of a task.
    pub const TASK_REDIRECT: &str = "task_redirect";
    /// The filter chain of a task.
    pub const TASK_FILTER: &str = "task_filter";
    /// VIP (IPv4) → `jump vip_reject`, for VIPs whose service has no backends.
    pub const REJECT4: &str = "vip_reject4";
    /// VIP (IPv6) → `jump vip_reject`.
    pub const REJECT6: &str = "vip_reject6";
    /// The regular chain that rejects (TCP reset, else port unreachable).
    pub const REJECT_CHAIN: &str = "vip_reject";
    /// The masquerade chain of the host (local traffic to the gateway bridge).
    pub const PUBLISH_MASQ: &str = "publish_masq";
}

fn n(s: &str) -> Result<Name, Error> {
    Name::new(s)
}

fn kt(parts: &[KeyPart]) -> Result<KeyType, Error> {
    KeyType::new(parts)
}

fn ke(sel: &[Selector]) -> Result<KeyExpr, Error> {
    KeyExpr::new(sel)
}

/// A mark base chain per hook: `filter` at priority `mangle` for prerouting/input, `route`
/// for output (a new mark re-routes a local packet, like iptables' mangle OUTPUT).
fn mark_chain(t: &mut Table, prefix: &str, hook: Hook) -> Result<Name, Error> {
    let kind = if hook == Hook::Output {
        ChainType::Route
    } else {
        ChainType::Filter
    };
    let name = n(&format!("{prefix}_{}", hook.nft_name()))?;
    t.add_chain(
        name.clone(),
        Some(BaseChain::new(
            kind,
            hook,
            Priority::MANGLE,
            Policy::Accept,
        )?),
    )?;
    Ok(name)
}

/// One VIP's classification: traffic to `vip` (and, with `port`, only that protocol and
/// port) gets `mark`, the fwmark of its IPVS service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipMark {
    /// The virtual IP.
    pub vip: IpAddr,
    /// `Some((proto, port))` to restrict the VIP to one port; `None` for every port.
    pub port: Option<(Proto, u16)>,
    /// The fwmark (non-zero).
    pub mark: u32,
}

/// VIP marks: maps `vip4`/`vip6` (address → mark) and `vip4_port`/`vip6_port`
/// (address . proto . port → mark), and for each hook a base chain `vip_<hook>` with one
/// lookup rule per map: classification is one hash lookup per map, whatever the number of
/// VIPs. The address-only rule runs first, so a port-specific entry wins over it.
///
/// # Errors
/// [`Error::InvalidValue`] for a zero mark, a port on a protocol without ports, or a
/// `Forward`/`Postrouting` hook; [`Error::InvalidTable`] when the names are taken.
pub fn vip_marks(t: &mut Table, hooks: &[Hook], vips: &[VipMark]) -> Result<(), Error> {
    for h in hooks {
        if matches!(h, Hook::Forward | Hook::Postrouting) {
            return Err(Error::invalid(
                "hook",
                h.nft_name(),
                "VIP marks must be set before IPVS (prerouting, input or output)",
            ));
        }
    }
    use KeyPart::*;
    let maps = [
        (names::VIP4, kt(&[Ipv4Addr])?, ke(&[Selector::Ip4Daddr])?),
        (
            names::VIP4_PORT,
            kt(&[Ipv4Addr, InetProto, InetService])?,
            ke(&[Selector::Ip4Daddr, Selector::L4Proto, Selector::ThDport])?,
        ),
        (names::VIP6, kt(&[Ipv6Addr])?, ke(&[Selector::Ip6Daddr])?),
        (
            names::VIP6_PORT,
            kt(&[Ipv6Addr, InetProto, InetService])?,
            ke(&[Selector::Ip6Daddr, Selector::L4Proto, Selector::ThDport])?,
        ),
    ];
    for (name, key, _) in &maps {
        t.add_map(n(name)?, Map::new(key.clone(), ValueType::Mark))?;
    }
    for v in vips {
        if v.mark == 0 {
            return Err(Error::invalid(
                "mark",
                format!("{} -> 0", v.vip),
                "must be non-zero",
            ));
        }
        let (map, key) = match (v.vip, v.port) {
            (IpAddr::V4(_), None) => (names::VIP4, vec![KeyValue::from(v.vip)]),
            (IpAddr::V6(_), None) => (names::VIP6, vec![KeyValue::from(v.vip)]),
            (a, Some((proto, port))) => {
                if !proto.has_ports() {
                    return Err(Error::invalid(
                        "protocol",
                        proto.to_string(),
                        "has no ports",
                    ));
                }
                let map = if a.is_ipv4() {
                    names::VIP4_PORT
                } else {
                    names::VIP6_PORT
                };
                (
                    map,
                    vec![
                        KeyValue::from(a),
                        KeyValue::Proto(proto),
                        KeyValue::Port(port),
                    ],
                )
            }
        };
        t.insert_element(&n(map)?, Key::new(&key)?, Some(Value::Mark(v.mark)))?;
    }
    for h in hooks {
        let chain = mark_chain(t, "vip", *h)?;
        for (name, _, key) in &maps {
            t.add_rule(
                &chain,
                Rule::new(
                    vec![],
                    Statement::SetMark {
                        key: key.clone(),
                        map: n(name)?,
                    },
                ),
            )?;
        }
    }
    Ok(())
}

/// A published port's classification in the ingress sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMark {
    /// The protocol.
    pub proto: Proto,
    /// The published port.
    pub port: u16,
    /// The fwmark of the service's IPVS service.
    pub mark: u32,
}

/// Ingress published ports: map `ingress_port` (proto . port → mark) and a base chain
/// `ingress_prerouting` with one lookup rule.
///
/// # Errors
/// As [`vip_marks`].
pub fn ingress_port_marks(t: &mut Table, ports: &[PortMark]) -> Result<(), Error> {
    let map = n(names::INGRESS_PORT)?;
    t.add_map(
        map.clone(),
        Map::new(
            kt(&[KeyPart::InetProto, KeyPart::InetService])?,
            ValueType::Mark,
        ),
    )?;
    for p in ports {
        if p.mark == 0 || !p.proto.has_ports() {
            return Err(Error::invalid(
                "published port",
                format!("{}/{} -> {:#x}", p.port, p.proto, p.mark),
                "needs a protocol with ports and a non-zero mark",
            ));
        }
        t.insert_element(
            &map,
            Key::new(&[KeyValue::Proto(p.proto), KeyValue::Port(p.port)])?,
            Some(Value::Mark(p.mark)),
        )?;
    }
    let chain = mark_chain(t, "ingress", Hook::Prerouting)?;
    t.add_rule(
        &chain,
        Rule::new(
            vec![],
            Statement::SetMark {
                key: ke(&[Selector::L4Proto, Selector::ThDport])?,
                map,
            },
        ),
    )
}

/// A published port on the host, forwarded to the ingress sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedDnat {
    /// The protocol.
    pub proto: Proto,
    /// The published port.
    pub port: u16,
    /// The ingress sandbox's address and port.
    pub to: SocketAddr,
}

/// Host DNAT of published ports to the ingress sandbox: maps `publish_dnat4`/`publish_dnat6`
/// (proto . port → addr . port), a regular chain `publish_dnat` with one `dnat` lookup per
/// family, and base chains `publish_prerouting`/`publish_output` (nat, dstnat) that jump to it
/// for local destinations (`fib daddr type local`, iptables' `-m addrtype --dst-type LOCAL`).
///
/// # Errors
/// As [`vip_marks`].
pub fn publish_dnat(t: &mut Table, ports: &[PublishedDnat]) -> Result<(), Error> {
    use KeyPart::*;
    let m4 = n(names::PUBLISH_DNAT4)?;
    let m6 = n(names::PUBLISH_DNAT6)?;
    let key = kt(&[InetProto, InetService])?;
    t.add_map(
        m4.clone(),
        Map::new(key.clone(), ValueType::Data(kt(&[Ipv4Addr, InetService])?)),
    )?;
    t.add_map(
        m6.clone(),
        Map::new(key, ValueType::Data(kt(&[Ipv6Addr, InetService])?)),
    )?;
    for p in ports {
        if !p.proto.has_ports() {
            return Err(Error::invalid(
                "protocol",
                p.proto.to_string(),
                "has no ports",
            ));
        }
        let map = if p.to.is_ipv4() { &m4 } else { &m6 };
        t.insert_element(
            map,
            Key::new(&[KeyValue::Proto(p.proto), KeyValue::Port(p.port)])?,
            Some(Value::Data(Key::new(&[
                KeyValue::from(p.to.ip()),
                KeyValue::Port(p.to.port()),
            ])?)),
        )?;
    }
    let chain = n(names::PUBLISH_CHAIN)?;
    t.add_chain(chain.clone(), None)?;
    for (family, map) in [(IpFamily::V4, m4), (IpFamily::V6, m6)] {
        t.add_rule(
            &chain,
            Rule::new(
                vec![],
                Statement::DnatMap {
                    family,
                    key: ke(&[Selector::L4Proto, Selector::ThDport])?,
                    map,
                },
            ),
        )?;
    }
    for hook in [Hook::Prerouting, Hook::Output] {
        let base = n(&format!("publish_{}", hook.nft_name()))?;
        t.add_chain(
            base.clone(),
            Some(BaseChain::new(
                ChainType::Nat,
                hook,
                Priority::DSTNAT,
                Policy::Accept,
            )?),
        )?;
        t.add_rule(
            &base,
            Rule::new(
                vec![Match::FibDaddrLocal],
                Statement::Verdict(Verdict::Jump(chain.clone())),
            ),
        )?;
    }
    Ok(())
}

/// VIPs without backends are rejected at once (a TCP reset, else ICMP port unreachable)
/// instead of timing out, as iptables' `VIPMESH-<id>-REJECT` does: verdict maps
/// `vip_reject4`/`vip_reject6` (VIP → `jump vip_reject`), a regular chain `vip_reject`, and
/// for each hook a base chain `reject_<hook>` (filter priority, after the mark chains and
/// before IPVS) with one lookup per family.
///
/// # Errors
/// [`Error::InvalidValue`] for a `Forward`/`Postrouting` hook; [`Error::InvalidTable`] when
/// the names are taken.
pub fn vip_reject(t: &mut Table, hooks: &[Hook], vips: &[IpAddr]) -> Result<(), Error> {
    for h in hooks {
        if matches!(h, Hook::Forward | Hook::Postrouting) {
            return Err(Error::invalid(
                "hook",
                h.nft_name(),
                "VIP rejects run before IPVS (prerouting, input or output)",
            ));
        }
    }
    let chain = n(names::REJECT_CHAIN)?;
    t.add_chain(chain.clone(), None)?;
    t.add_rule(
        &chain,
        Rule::new(
            vec![Match::L4Proto(Proto::TCP)],
            Statement::Reject(RejectWith::TcpReset),
        ),
    )?;
    t.add_rule(
        &chain,
        Rule::new(vec![], Statement::Reject(RejectWith::PortUnreachable)),
    )?;
    let maps = [
        (names::REJECT4, KeyPart::Ipv4Addr, Selector::Ip4Daddr),
        (names::REJECT6, KeyPart::Ipv6Addr, Selector::Ip6Daddr),
    ];
    for (name, part, _) in &maps {
        t.add_map(n(name)?, Map::new(kt(&[*part])?, ValueType::Verdict))?;
    }
    for v in vips {
        let map = if v.is_ipv4() {
            names::REJECT4
        } else {
            names::REJECT6
        };
        t.insert_element(
            &n(map)?,
            Key::new(&[KeyValue::from(*v)])?,
            Some(Value::Verdict(Verdict::Jump(chain.clone()))),
        )?;
    }
    for h in hooks {
        let base = n(&format!("reject_{}", h.nft_name()))?;
        t.add_chain(
            base.clone(),
            Some(BaseChain::new(
                ChainType::Filter,
                *h,
                Priority::FILTER,
                Policy::Accept,
            )?),
        )?;
        for (name, _, sel) in &maps {
            t.add_rule(
                &base,
                Rule::new(
                    vec![],
                    Statement::Vmap {
                        key: ke(&[*sel])?,
                        map: n(name)?,
                    },
                ),
            )?;
        }
    }
    Ok(())
}

/// Local traffic leaving through `oif` (the gateway bridge) is masqueraded: a chain
/// `publish_masq` (nat postrouting, srcnat) with `oifname <oif> fib saddr type local
/// masquerade`, iptables' `-o <oif> -m addrtype --src-type LOCAL -j MASQUERADE`, so a published
/// port reached at `127.0.0.1` works once DNATed to the sandbox.
///
/// # Errors
/// [`Error::InvalidTable`] when the name is taken.
pub fn local_masquerade(t: &mut Table, oif: &IfName) -> Result<(), Error> {
    let chain = n(names::PUBLISH_MASQ)?;
    t.add_chain(
        chain.clone(),
        Some(BaseChain::new(
            ChainType::Nat,
            Hook::Postrouting,
            Priority::SRCNAT,
            Policy::Accept,
        )?),
    )?;
    t.add_rule(
        &chain,
        Rule::new(
            vec![Match::OifName(oif.clone()), Match::FibSaddrLocal],
            Statement::Masquerade,
        ),
    )
}

/// The reply path of a load-balancing sandbox: traffic IPVS forwards to a backend in `subnet`
/// leaves with the source `to`, so replies come back through IPVS.
///
/// iptables does this with `-m ipvs --ipvs`, which nft lacks (moby#50467). The nft
/// equivalent: our fwmark survives IPVS (it is set on the skb before IPVS's LOCAL_IN hook and
/// IPVS does not clear it), and only traffic classified by our maps carries a mark in our
/// range. So `meta mark <first>-<last> ip daddr <subnet> snat ip to <to>` in a nat
/// postrouting chain selects exactly the IPVS-forwarded connections (the nat chain sees the
/// connection's first packet; conntrack, which IPVS updates with `net.ipv4.vs.conntrack=1`,
/// does the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpvsSnat {
    /// The first mark of our range.
    pub first_mark: u32,
    /// The last mark of our range (inclusive).
    pub last_mark: u32,
    /// The backends' subnet.
    pub subnet: Prefix,
    /// The sandbox's own address in `subnet`.
    pub to: IpAddr,
}

/// The SNAT chain `ipvs_snat` (nat postrouting, srcnat) with one rule per entry.
///
/// # Errors
/// [`Error::InvalidValue`] for an empty mark range, a zero first mark, or an address whose
/// family differs from the subnet's.
pub fn ipvs_snat(t: &mut Table, entries: &[IpvsSnat]) -> Result<(), Error> {
    let chain = n(names::SNAT_CHAIN)?;
    t.add_chain(
        chain.clone(),
        Some(BaseChain::new(
            ChainType::Nat,
            Hook::Postrouting,
            Priority::SRCNAT,
            Policy::Accept,
        )?),
    )?;
    for e in entries {
        if e.first_mark == 0 {
            return Err(Error::invalid("mark range", "0", "marks start at 1"));
        }
        if e.subnet.addr().is_ipv4() != e.to.is_ipv4() {
            return Err(Error::invalid(
                "snat address",
                e.to.to_string(),
                format!("family differs from subnet {}", e.subnet),
            ));
        }
        t.add_rule(
            &chain,
            Rule::new(
                vec![
                    Match::mark_range(e.first_mark, e.last_mark)?,
                    Match::Daddr(e.subnet),
                ],
                Statement::Snat(e.to),
            ),
        )?;
    }
    Ok(())
}

/// One published port as a task sees it: traffic to `published` is redirected to `target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskPort {
    /// The protocol.
    pub proto: Proto,
    /// The published port.
    pub published: u16,
    /// The port the task listens on.
    pub target: u16,
}

/// Task-side rules on the ingress interface `iface`: `task_redirect` (nat prerouting) redirects
/// each published port to its target port; `task_filter` (filter input) accepts the target
/// ports and drops every other TCP, UDP and SCTP packet arriving on `iface` (libnetwork's
/// `redirector`, typed).
///
/// # Errors
/// [`Error::InvalidValue`] for a protocol without ports.
pub fn task_ingress(t: &mut Table, iface: &IfName, ports: &[TaskPort]) -> Result<(), Error> {
    let redirect = n(names::TASK_REDIRECT)?;
    let filter = n(names::TASK_FILTER)?;
    t.add_chain(
        redirect.clone(),
        Some(BaseChain::new(
            ChainType::Nat,
            Hook::Prerouting,
            Priority::DSTNAT,
            Policy::Accept,
        )?),
    )?;
    t.add_chain(
        filter.clone(),
        Some(BaseChain::new(
            ChainType::Filter,
            Hook::Input,
            Priority::FILTER,
            Policy::Accept,
        )?),
    )?;
    let mut ports = ports.to_vec();
    ports.sort_by_key(|p| (p.proto, p.published, p.target));
    ports.dedup();
    for p in &ports {
        if p.published != p.target {
            t.add_rule(
                &redirect,
                Rule::new(
                    vec![
                        Match::IifName(iface.clone()),
                        Match::dport(p.proto, p.published)?,
                    ],
                    Statement::Redirect(p.target),
                ),
            )?;
        }
    }
    let mut targets: Vec<(Proto, u16)> = ports.iter().map(|p| (p.proto, p.target)).collect();
    targets.sort();
    targets.dedup();
    for (proto, port) in targets {
        t.add_rule(
            &filter,
            Rule::new(
                vec![Match::IifName(iface.clone()), Match::dport(proto, port)?],
                Statement::Verdict(Verdict::Accept),
            ),
        )?;
    }
    for proto in [Proto::TCP, Proto::UDP, Proto::SCTP] {
        t.add_rule(
            &filter,
            Rule::new(
                vec![Match::IifName(iface.clone()), Match::L4Proto(proto)],
                Statement::Verdict(Verdict::Drop),
            ),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::NetworkId;

    fn t() -> Table {
        Table::new(NetworkId::new("b").unwrap())
    }

    #[test]
    fn bad_inputs_are_typed_errors_naming_the_field_and_value() {
        let vip = |mark, port| VipMark {
            vip: "10.0.0.9".parse().unwrap(),
            port,
            mark,
        };
        let e = vip_marks(&mut t(), &[Hook::Input], &[vip(0, None)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("mark") && e.contains("10.0.0.9"), "{e}");
        let e = vip_marks(&mut t(), &[Hook::Forward], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("hook") && e.contains("forward"), "{e}");
        let e = vip_marks(&mut t(), &[Hook::Input], &[vip(1, Some((Proto(1), 5)))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("protocol") && e.contains("icmp"), "{e}");
        let e = ingress_port_marks(
            &mut t(),
            &[PortMark {
                proto: Proto::TCP,
                port: 80,
                mark: 0,
            }],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("published port") && e.contains("80/tcp"), "{e}");
        let e = ipvs_snat(
            &mut t(),
            &[IpvsSnat {
                first_mark: 1,
                last_mark: 2,
                subnet: "10.0.0.0/24".parse().unwrap(),
                to: "fd00::2".parse().unwrap(),
            }],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("snat address") && e.contains("fd00::2"), "{e}");
        let e = ipvs_snat(
            &mut t(),
            &[IpvsSnat {
                first_mark: 3,
                last_mark: 2,
                subnet: "10.0.0.0/24".parse().unwrap(),
                to: "10.0.0.2".parse().unwrap(),
            }],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("mark range") && e.contains("0x3-0x2"), "{e}");
        // Two builders that want the same names: an InvalidTable error, not a silent merge.
        let mut both = t();
        vip_marks(&mut both, &[Hook::Input], &[]).unwrap();
        let e = vip_marks(&mut both, &[Hook::Output], &[]).unwrap_err();
        assert!(matches!(e, Error::InvalidTable { .. }), "{e}");
    }

    #[test]
    fn rule_count_does_not_depend_on_the_number_of_services() {
        let rules = |n: u32| {
            let mut t = t();
            let vips: Vec<VipMark> = (0..n)
                .map(|i| VipMark {
                    vip: std::net::IpAddr::from([10, 1, (i >> 8) as u8, i as u8]),
                    port: None,
                    mark: 0x100 + i,
                })
                .collect();
            vip_marks(&mut t, &[Hook::Input, Hook::Output], &vips).unwrap();
            (
                t.chains().values().map(|c| c.rules.len()).sum::<usize>(),
                t.element_count(),
            )
        };
        assert_eq!(rules(1), (8, 1));
        assert_eq!(rules(1000), (8, 1000));
    }

    #[test]
    fn task_rules_redirect_accept_and_drop() {
        let mut table = t();
        task_ingress(
            &mut table,
            &IfName::new("eth1").unwrap(),
            &[
                TaskPort {
                    proto: Proto::TCP,
                    published: 8080,
                    target: 80,
                },
                TaskPort {
                    proto: Proto::TCP,
                    published: 80,
                    target: 80,
                },
            ],
        )
        .unwrap();
        let text = table.to_string();
        assert!(text.contains("task_redirect iifname \"eth1\" tcp dport 8080 redirect to :80\n"));
        assert!(!text.contains("dport 80 redirect"), "{text}");
        assert_eq!(text.matches("tcp dport 80 accept").count(), 1, "{text}");
        assert!(text.contains("iifname \"eth1\" meta l4proto sctp drop"));
    }
}
