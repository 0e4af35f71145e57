//! Rendering a [`Rule`] to the argument string `iptables-save` prints for it.
//!
//! The order is the canonical one of `iptables-save` (nft backend, 1.8.x): `-s -d -i -o -p`,
//! the protocol match, then the other matches, the comment last, then `-j`. Rendering into the
//! same form the kernel reports makes golden files readable and diffs obvious.

use std::fmt::{self, Write as _};

use crate::model::{Comment, Mark, Rule, Target};

/// Write `s` as one iptables-restore token. Comments are validated (no quotes, no backslashes,
/// no control characters), so wrapping in double quotes is enough to make them one inert token.
fn quote(f: &mut impl fmt::Write, c: &Comment) -> fmt::Result {
    if c.as_str().bytes().all(|b| b.is_ascii_alphanumeric()) {
        f.write_str(c.as_str())
    } else {
        write!(f, "\"{}\"", c.as_str())
    }
}

fn neg(f: &mut impl fmt::Write, negated: bool) -> fmt::Result {
    if negated { f.write_str("! ") } else { Ok(()) }
}

fn mark(f: &mut impl fmt::Write, m: &Mark, always_mask: bool) -> fmt::Result {
    if m.mask == u32::MAX && !always_mask {
        write!(f, "{:#x}", m.value)
    } else {
        write!(f, "{:#x}/{:#x}", m.value, m.mask)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::with_capacity(96);
        let m = &self.matches;
        let w = &mut out;
        let sep = |w: &mut String| {
            if !w.is_empty() {
                w.push(' ');
            }
        };
        if let Some(a) = &m.source {
            sep(w);
            neg(w, a.negated)?;
            write!(w, "-s {}", a.cidr)?;
        }
        if let Some(a) = &m.destination {
            sep(w);
            neg(w, a.negated)?;
            write!(w, "-d {}", a.cidr)?;
        }
        if let Some(i) = &m.in_iface {
            sep(w);
            neg(w, i.negated)?;
            write!(w, "-i {}", i.iface)?;
        }
        if let Some(i) = &m.out_iface {
            sep(w);
            neg(w, i.negated)?;
            write!(w, "-o {}", i.iface)?;
        }
        if let Some(p) = m.protocol {
            sep(w);
            write!(w, "-p {p}")?;
            if m.sport.is_some() || m.dport.is_some() {
                write!(w, " -m {p}")?;
                if let Some(s) = m.sport {
                    write!(w, " --sport {s}")?;
                }
                if let Some(d) = m.dport {
                    write!(w, " --dport {d}")?;
                }
            }
        }
        if m.src_type.is_some() || m.dst_type.is_some() {
            sep(w);
            w.push_str("-m addrtype");
            if let Some(t) = m.src_type {
                write!(w, " --src-type {}", t.as_str())?;
            }
            if let Some(t) = m.dst_type {
                write!(w, " --dst-type {}", t.as_str())?;
            }
        }
        if m.ipvs {
            sep(w);
            w.push_str("-m ipvs --ipvs");
        }
        if let Some(s) = m.ctstate {
            sep(w);
            write!(w, "-m conntrack --ctstate {s}")?;
        }
        if let Some(mk) = &m.mark {
            sep(w);
            w.push_str("-m mark --mark ");
            mark(w, mk, false)?;
        }
        if let Some(c) = &self.comment {
            sep(w);
            w.push_str("-m comment --comment ");
            quote(w, c)?;
        }
        sep(w);
        match &self.target {
            Target::Accept => w.push_str("-j ACCEPT"),
            Target::Drop => w.push_str("-j DROP"),
            Target::Return => w.push_str("-j RETURN"),
            Target::Reject(r) => write!(w, "-j REJECT --reject-with {}", r.as_str())?,
            Target::Jump(c) => write!(w, "-j {c}")?,
            Target::SetMark(mk) => {
                w.push_str("-j MARK --set-xmark ");
                mark(w, mk, true)?;
            }
            Target::Dnat(to) => write!(w, "-j DNAT --to-destination {to}")?,
            Target::Snat(a) => write!(w, "-j SNAT --to-source {a}")?,
            Target::Masquerade => w.push_str("-j MASQUERADE"),
            Target::Redirect(p) => write!(w, "-j REDIRECT --to-ports {p}")?,
        }
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use crate::model::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn renders_in_iptables_save_order() {
        let r = Rule::new(
            Matches::new()
                .protocol(Protocol::Tcp)
                .dport(Port::new(80).unwrap().into())
                .destination(c("10.0.0.1"))
                .dst_type(AddrType::Local),
            Target::SetMark(Mark::new(0x103)),
        )
        .with_comment(Comment::new("hello world").unwrap());
        assert_eq!(
            r.to_string(),
            "-d 10.0.0.1/32 -p tcp -m tcp --dport 80 -m addrtype --dst-type LOCAL \
             -m comment --comment \"hello world\" -j MARK --set-xmark 0x103/0xffffffff"
        );
    }

    #[test]
    fn renders_targets() {
        let t = |t: Target| Rule::new(Matches::new(), t).to_string();
        assert_eq!(t(Target::Masquerade), "-j MASQUERADE");
        assert_eq!(
            t(Target::Dnat(NatTo {
                addr: "fd00::2".parse().unwrap(),
                port: Some(Port::new(80).unwrap())
            })),
            "-j DNAT --to-destination [fd00::2]:80"
        );
        assert_eq!(
            t(Target::Reject(RejectWith::TcpReset)),
            "-j REJECT --reject-with tcp-reset"
        );
        assert_eq!(
            t(Target::Redirect(Port::new(80).unwrap())),
            "-j REDIRECT --to-ports 80"
        );
        assert_eq!(
            t(Target::SetMark(Mark::masked(0x10, 0xff))),
            "-j MARK --set-xmark 0x10/0xff"
        );
        let m = Rule::new(
            Matches::new()
                .mark(Mark::new(5))
                .not_source(c("10.0.0.0/8"))
                .ctstate(CtState::ESTABLISHED | CtState::NEW),
            Target::Accept,
        );
        assert_eq!(
            m.to_string(),
            "! -s 10.0.0.0/8 -m conntrack --ctstate NEW,ESTABLISHED -m mark --mark 0x5 -j ACCEPT"
        );
    }
}
