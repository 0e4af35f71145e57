//! A packet tracer over parsed `iptables-save` output (feature `test-util`).
//!
//! Tests assert behaviour ("a TCP packet from 10.0.0.7 to 10.0.0.9:80 leaves mangle INPUT with
//! mark 0x103") instead of comparing strings. The tracer evaluates our typed rules, follows
//! jumps and `RETURN`, and stops with an error at any foreign rule it would have to evaluate
//! (it never guesses).
//!
//! # Examples
//! ```
//! use vipmesh_netfilter::{BuiltinChain, Mark, Table, parse_save};
//! use vipmesh_netfilter::trace::{Packet, Tracer, Verdict};
//! let dump = parse_save("*mangle\n:INPUT ACCEPT [0:0]\n:VIPMESH-VIP - [0:0]\n\
//!     -A INPUT -m comment --comment vipmesh -j VIPMESH-VIP\n\
//!     -A VIPMESH-VIP -d 10.0.0.9/32 -j MARK --set-xmark 0x103/0xffffffff\nCOMMIT\n").unwrap();
//! let t = Tracer::new(dump).trace(Table::Mangle, BuiltinChain::Input,
//!     Packet::tcp("10.0.0.7".parse().unwrap(), "10.0.0.9".parse().unwrap(), 80)).unwrap();
//! assert_eq!(t.packet.mark, 0x103);
//! assert_eq!(t.verdict, Verdict::Policy("ACCEPT".into()));
//! ```

use std::net::IpAddr;

use crate::error::Error;
use crate::model::{
    AddrType, BuiltinChain, CtState, Matches, NatTo, Port, Protocol, RejectWith, Rule, Table,
    Target,
};
use crate::save::{SaveDump, SaveTable};

/// A packet as the tracer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Protocol.
    pub proto: Protocol,
    /// Source port (0 for port-less protocols).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Incoming interface, if any.
    pub in_iface: Option<String>,
    /// Outgoing interface, if any.
    pub out_iface: Option<String>,
    /// `skb->mark`.
    pub mark: u32,
    /// Conntrack state.
    pub ctstate: CtState,
    /// Whether the packet belongs to an IPVS connection (`-m ipvs --ipvs`).
    pub ipvs: bool,
}

impl Packet {
    /// A new TCP connection's first packet, from an ephemeral port.
    pub fn tcp(src: IpAddr, dst: IpAddr, dport: u16) -> Packet {
        Packet {
            src,
            dst,
            proto: Protocol::Tcp,
            sport: 40000,
            dport,
            in_iface: None,
            out_iface: None,
            mark: 0,
            ctstate: CtState::NEW,
            ipvs: false,
        }
    }
    /// Set the incoming interface.
    pub fn in_iface(mut self, i: &str) -> Packet {
        self.in_iface = Some(i.to_owned());
        self
    }
    /// Set the outgoing interface.
    pub fn out_iface(mut self, i: &str) -> Packet {
        self.out_iface = Some(i.to_owned());
        self
    }
    /// Mark the packet as part of an IPVS connection.
    pub fn ipvs(mut self) -> Packet {
        self.ipvs = true;
        self
    }
    /// Set the mark.
    pub fn mark(mut self, m: u32) -> Packet {
        self.mark = m;
        self
    }
}

/// How the packet leaves the traversal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fell off the end of the built-in chain: its policy applies (`ACCEPT`/`DROP`).
    Policy(String),
    /// `ACCEPT`.
    Accept,
    /// `DROP`.
    Drop,
    /// `REJECT`.
    Reject(RejectWith),
    /// `DNAT` to this destination.
    Dnat(NatTo),
    /// `SNAT` to this source.
    Snat(IpAddr),
    /// `MASQUERADE`.
    Masquerade,
    /// `REDIRECT` to this local port.
    Redirect(Port),
}

/// The result of a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The verdict.
    pub verdict: Verdict,
    /// The packet after the traversal (mark set, addresses rewritten by DNAT/SNAT/REDIRECT).
    pub packet: Packet,
    /// The rules that matched, as `CHAIN#index` (1-based), in order.
    pub path: Vec<String>,
}

/// Traces packets through a parsed dump.
#[derive(Debug, Clone)]
pub struct Tracer {
    dump: SaveDump,
    local: Vec<IpAddr>,
}

const MAX_DEPTH: usize = 32;

impl Tracer {
    /// A tracer over `dump`.
    pub fn new(dump: SaveDump) -> Tracer {
        Tracer {
            dump,
            local: Vec::new(),
        }
    }

    /// The namespace's local addresses (for `-m addrtype --dst-type LOCAL` and `REDIRECT`).
    pub fn local_addrs(mut self, addrs: impl IntoIterator<Item = IpAddr>) -> Tracer {
        self.local = addrs.into_iter().collect();
        self
    }

    /// Trace `pkt` through `table`'s built-in `chain`.
    ///
    /// # Errors
    /// [`Error::Trace`] if the table or chain is missing, a foreign rule would have to be
    /// evaluated, or jumps nest too deep.
    pub fn trace(&self, table: Table, chain: BuiltinChain, pkt: Packet) -> Result<Trace, Error> {
        let st = self
            .dump
            .table(table.as_str())
            .ok_or_else(|| trace_err(chain.as_str(), "", "table not in dump"))?;
        let policy = st
            .chains
            .iter()
            .find(|c| c.name == chain.as_str())
            .map(|c| c.policy.clone())
            .unwrap_or_else(|| "ACCEPT".to_owned());
        let mut t = Trace {
            verdict: Verdict::Policy(policy),
            packet: pkt,
            path: Vec::new(),
        };
        if let Some(v) = self.walk(st, chain.as_str(), &mut t, 0)? {
            t.verdict = v;
        }
        Ok(t)
    }

    /// Walk one chain; `Some(verdict)` on a terminal target, `None` on RETURN/fall-through.
    fn walk(
        &self,
        st: &SaveTable,
        chain: &str,
        t: &mut Trace,
        depth: usize,
    ) -> Result<Option<Verdict>, Error> {
        if depth > MAX_DEPTH {
            return Err(trace_err(chain, "", "jumps nest too deep"));
        }
        for (i, r) in st.chain_rules(chain).enumerate() {
            let rule: Rule = r
                .typed()
                .ok_or_else(|| trace_err(chain, &r.spec, "foreign rule"))?;
            if !self.matches(&rule.matches, &t.packet) {
                continue;
            }
            t.path.push(format!("{chain}#{}", i.saturating_add(1)));
            let p = &mut t.packet;
            match rule.target {
                Target::Accept => return Ok(Some(Verdict::Accept)),
                Target::Drop => return Ok(Some(Verdict::Drop)),
                Target::Reject(w) => return Ok(Some(Verdict::Reject(w))),
                Target::Return => return Ok(None),
                Target::Jump(c) => {
                    if let Some(v) = self.walk(st, c.as_str(), t, depth.saturating_add(1))? {
                        return Ok(Some(v));
                    }
                }
                Target::SetMark(m) => p.mark = (p.mark & !m.mask) ^ m.value,
                Target::Dnat(to) => {
                    p.dst = to.addr;
                    if let Some(port) = to.port {
                        p.dport = port.get();
                    }
                    return Ok(Some(Verdict::Dnat(to)));
                }
                Target::Snat(a) => {
                    p.src = a;
                    return Ok(Some(Verdict::Snat(a)));
                }
                Target::Masquerade => return Ok(Some(Verdict::Masquerade)),
                Target::Redirect(port) => {
                    p.dport = port.get();
                    return Ok(Some(Verdict::Redirect(port)));
                }
            }
        }
        Ok(None)
    }

    fn matches(&self, m: &Matches, p: &Packet) -> bool {
        let addr = |a: &Option<crate::model::AddrMatch>, ip: IpAddr| {
            a.as_ref().is_none_or(|a| a.cidr.contains(ip) != a.negated)
        };
        let iface = |i: &Option<crate::model::IfaceMatch>, dev: &Option<String>| {
            i.as_ref()
                .is_none_or(|i| dev.as_deref().is_some_and(|d| i.iface.matches(d)) != i.negated)
        };
        let typ = |t: Option<AddrType>, ip: IpAddr| {
            t.is_none_or(|t| match t {
                AddrType::Local => self.local.contains(&ip),
                AddrType::Multicast => ip.is_multicast(),
                AddrType::Broadcast => matches!(ip, IpAddr::V4(a) if a.is_broadcast()),
                AddrType::Unicast => {
                    !ip.is_multicast() && !matches!(ip, IpAddr::V4(a) if a.is_broadcast())
                }
            })
        };
        addr(&m.source, p.src)
            && addr(&m.destination, p.dst)
            && iface(&m.in_iface, &p.in_iface)
            && iface(&m.out_iface, &p.out_iface)
            && m.protocol.is_none_or(|x| x == p.proto)
            && m.sport.is_none_or(|r| r.contains(p.sport))
            && m.dport.is_none_or(|r| r.contains(p.dport))
            && typ(m.src_type, p.src)
            && typ(m.dst_type, p.dst)
            && (!m.ipvs || p.ipvs)
            && m.ctstate.is_none_or(|s| s.intersects(p.ctstate))
            && m.mark.is_none_or(|mk| p.mark & mk.mask == mk.value)
    }
}

fn trace_err(chain: &str, spec: &str, reason: &str) -> Error {
    Error::Trace {
        chain: chain.to_owned(),
        spec: spec.to_owned(),
        reason: reason.to_owned(),
    }
}
