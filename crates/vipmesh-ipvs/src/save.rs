//! ipvsadm's text formats, pure: the rule format of `ipvsadm -S`/`-R` (parse and print)
//! and the table of `ipvsadm -L -n` (with `--stats`, `--rate`, `--timeout`).
//!
//! See [ipvsadm(8)](https://man7.org/linux/man-pages/man8/ipvsadm.8.html). The output
//! matches ipvsadm 1.31 byte for byte (checked in the guest tests).
//!
//! # Examples
//! ```
//! use vipmesh_ipvs::save::parse_rules;
//! let ops = parse_rules("-A -f 259 -s rr\n-a -f 259 -r 10.0.0.10:0 -m -w 1\n")?;
//! assert_eq!(ops.len(), 2);
//! assert!(parse_rules("-A -f 0 -s rr").unwrap_err().to_string().starts_with("line 1:"));
//! # Ok::<(), vipmesh_ipvs::Error>(())
//! ```

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use crate::Error;
use crate::backend::Op;
use crate::model::{
    DestEntry, DestKey, Family, FwdMethod, Info, IpvsDest, IpvsService, Netmask, Protocol,
    Scheduler, ServiceEntry, ServiceFlags, ServiceKey, SockAddr, Stats, Timeouts, TunnelFlags,
    TunnelType, Weight,
};

/// ipvsadm's default scheduler.
const DEFAULT_SCHED: &str = "wlc";
/// ipvsadm's default persistence timeout.
const DEFAULT_PERSISTENCE: u32 = 300;

fn perr(line: usize, message: impl Into<String>) -> Error {
    Error::Parse {
        line,
        message: message.into(),
    }
}

/// Parses `addr:port`, `[v6]:port`, `addr` or `[v6]` (port `None`).
fn parse_addr_port(s: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (a, tail) = rest.split_once(']')?;
        let addr: IpAddr = IpAddr::V6(a.parse().ok()?);
        return match tail {
            "" => Some((addr, None)),
            t => Some((addr, Some(t.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match s.rsplit_once(':') {
        Some((a, p)) if !a.contains(':') => {
            Some((IpAddr::V4(a.parse().ok()?), Some(p.parse().ok()?)))
        }
        _ => Some((s.parse().ok()?, None)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    AddService,
    EditService,
    DelService,
    AddDest,
    EditDest,
    DelDest,
    Clear,
}

/// Parses the `ipvsadm -S` / `ipvsadm -R` rule format into operations, in order.
/// Blank lines and `#` comments are skipped. Parsing is all or nothing: on the first bad
/// line the error names its (1-based) number and nothing is returned.
///
/// Supported: `-A -E -D -a -e -d -C` (and their long forms), `-t -u --sctp-service -f
/// -6 -s -p [timeout] -M -b -o --pe -r -m -g -i -w -x -y --tun-type --tun-port
/// --tun-nocsum --tun-csum --tun-remcsum`, with ipvsadm's defaults (scheduler `wlc`,
/// persistence 300 s, weight 1, direct routing, the service's port for a real server
/// without one).
///
/// # Errors
/// [`Error::Parse`] with the line number and what was wrong.
pub fn parse_rules(text: &str) -> Result<Vec<Op>, Error> {
    Ok(parse_rules_with_lines(text)?
        .into_iter()
        .map(|(_, op)| op)
        .collect())
}

/// As [`parse_rules`], with each operation's 1-based line number (to report kernel
/// errors against the input).
///
/// # Errors
/// [`Error::Parse`] with the line number and what was wrong.
pub fn parse_rules_with_lines(text: &str) -> Result<Vec<(usize, Op)>, Error> {
    let mut ops = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        ops.push((line, parse_line(line, l)?));
    }
    Ok(ops)
}

#[derive(Default)]
struct Args<'a> {
    cmd: Option<Command>,
    proto_addr: Option<(Option<Protocol>, &'a str)>,
    fwmark: Option<&'a str>,
    v6: bool,
    sched: Option<&'a str>,
    persistent: Option<Option<&'a str>>,
    netmask: Option<&'a str>,
    sched_flags: Option<&'a str>,
    ops: bool,
    pe: Option<&'a str>,
    real: Option<&'a str>,
    fwd: Option<FwdMethod>,
    weight: Option<&'a str>,
    upper: Option<&'a str>,
    lower: Option<&'a str>,
    tun_type: Option<&'a str>,
    tun_port: Option<&'a str>,
    tun_flags: Option<TunnelFlags>,
}

fn parse_line(line: usize, l: &str) -> Result<Op, Error> {
    let toks: Vec<&str> = l.split_whitespace().collect();
    let mut a = Args::default();
    let mut i = 0;
    let value = |i: &mut usize, opt: &str| -> Result<&str, Error> {
        *i += 1;
        toks.get(*i)
            .copied()
            .ok_or_else(|| perr(line, format!("option {opt} needs a value")))
    };
    while let Some(&t) = toks.get(i) {
        let set_cmd = |a: &mut Args<'_>, c: Command| -> Result<(), Error> {
            if a.cmd.replace(c).is_some() {
                return Err(perr(line, "more than one command on the line"));
            }
            Ok(())
        };
        match t {
            "-A" | "--add-service" => set_cmd(&mut a, Command::AddService)?,
            "-E" | "--edit-service" => set_cmd(&mut a, Command::EditService)?,
            "-D" | "--delete-service" => set_cmd(&mut a, Command::DelService)?,
            "-a" | "--add-server" => set_cmd(&mut a, Command::AddDest)?,
            "-e" | "--edit-server" => set_cmd(&mut a, Command::EditDest)?,
            "-d" | "--delete-server" => set_cmd(&mut a, Command::DelDest)?,
            "-C" | "--clear" => set_cmd(&mut a, Command::Clear)?,
            "-t" | "--tcp-service" => a.proto_addr = Some((Some(Protocol::Tcp), value(&mut i, t)?)),
            "-u" | "--udp-service" => a.proto_addr = Some((Some(Protocol::Udp), value(&mut i, t)?)),
            "--sctp-service" => a.proto_addr = Some((Some(Protocol::Sctp), value(&mut i, t)?)),
            "-f" | "--fwmark-service" => a.fwmark = Some(value(&mut i, t)?),
            "-6" | "--ipv6" => a.v6 = true,
            "-s" | "--scheduler" => a.sched = Some(value(&mut i, t)?),
            "-p" | "--persistent" => {
                // optional value: a following token that is not an option
                match toks.get(i + 1) {
                    Some(v) if !v.starts_with('-') => {
                        i += 1;
                        a.persistent = Some(Some(v));
                    }
                    _ => a.persistent = Some(None),
                }
            }
            "-M" | "--netmask" => a.netmask = Some(value(&mut i, t)?),
            "-b" | "--sched-flags" => a.sched_flags = Some(value(&mut i, t)?),
            "-o" | "--ops" => a.ops = true,
            "--pe" => a.pe = Some(value(&mut i, t)?),
            "-r" | "--real-server" => a.real = Some(value(&mut i, t)?),
            "-m" | "--masquerading" => a.fwd = Some(FwdMethod::Masq),
            "-g" | "--gatewaying" => a.fwd = Some(FwdMethod::DirectRoute),
            "-i" | "--ipip" => a.fwd = Some(FwdMethod::Tunnel),
            "-w" | "--weight" => a.weight = Some(value(&mut i, t)?),
            "-x" | "--u-threshold" => a.upper = Some(value(&mut i, t)?),
            "-y" | "--l-threshold" => a.lower = Some(value(&mut i, t)?),
            "--tun-type" => a.tun_type = Some(value(&mut i, t)?),
            "--tun-port" => a.tun_port = Some(value(&mut i, t)?),
            "--tun-nocsum" => a.tun_flags = Some(TunnelFlags::empty()),
            "--tun-csum" => a.tun_flags = Some(TunnelFlags::CSUM),
            "--tun-remcsum" => a.tun_flags = Some(TunnelFlags::REMCSUM),
            other => return Err(perr(line, format!("unknown option {other:?}"))),
        }
        i += 1;
    }
    let cmd = a
        .cmd
        .ok_or_else(|| perr(line, "no command (-A, -E, -D, -a, -e, -d or -C)"))?;
    if cmd == Command::Clear {
        return Ok(Op::Flush);
    }
    let at = |e: Error| match e {
        Error::Invalid {
            field,
            value,
            reason,
        } => perr(line, format!("invalid {field} {value:?}: {reason}")),
        other => perr(line, other.to_string()),
    };
    let num = |opt: &str, v: &str| -> Result<u32, Error> {
        v.parse::<u32>()
            .map_err(|e| perr(line, format!("{opt} {v:?}: {e}")))
    };
    let key = match (a.proto_addr, a.fwmark) {
        (Some((Some(proto), s)), None) => {
            let (addr, port) = parse_addr_port(s)
                .ok_or_else(|| perr(line, format!("bad service address {s:?}")))?;
            ServiceKey::addr(proto, addr, port.unwrap_or(0))
        }
        (None, Some(m)) => {
            let af = if a.v6 { Family::Inet6 } else { Family::Inet };
            ServiceKey::fwmark(af, num("-f", m)?).map_err(at)?
        }
        (Some(_), Some(_)) => return Err(perr(line, "both an address and a fwmark service")),
        _ => return Err(perr(line, "no service (-t, -u, --sctp-service or -f)")),
    };
    match cmd {
        Command::DelService => Ok(Op::DelService(key)),
        Command::AddService | Command::EditService => {
            let sched = Scheduler::new(a.sched.unwrap_or(DEFAULT_SCHED)).map_err(at)?;
            let mut svc = IpvsService {
                key,
                scheduler: sched,
                flags: ServiceFlags::empty(),
                timeout: 0,
                netmask: Netmask::host(key.family()),
                pe_name: a.pe.map(str::to_owned),
            };
            if let Some(p) = a.persistent {
                svc.flags |= ServiceFlags::PERSISTENT;
                svc.timeout = match p {
                    Some(v) => num("-p", v)?,
                    None => DEFAULT_PERSISTENCE,
                };
            }
            if let Some(m) = a.netmask {
                svc.netmask = match key.family() {
                    Family::Inet => Netmask::V4(
                        m.parse::<Ipv4Addr>()
                            .map_err(|e| perr(line, format!("-M {m:?}: {e}")))?,
                    ),
                    Family::Inet6 => Netmask::V6(
                        m.parse::<u8>()
                            .ok()
                            .filter(|p| (1..=128).contains(p))
                            .ok_or_else(|| perr(line, format!("-M {m:?}: prefix 1..=128")))?,
                    ),
                };
            }
            if a.ops {
                svc.flags |= ServiceFlags::ONEPACKET;
            }
            if let Some(f) = a.sched_flags {
                for name in f.split(',') {
                    svc.flags |= match name {
                        "sh-fallback" | "mh-fallback" | "flag-1" => ServiceFlags::SCHED1,
                        "sh-port" | "mh-port" | "flag-2" => ServiceFlags::SCHED2,
                        "flag-3" => ServiceFlags::SCHED3,
                        other => {
                            return Err(perr(line, format!("unknown scheduler flag {other:?}")));
                        }
                    };
                }
            }
            svc.validate().map_err(at)?;
            Ok(if cmd == Command::AddService {
                Op::AddService(svc)
            } else {
                Op::UpdateService(svc)
            })
        }
        Command::AddDest | Command::EditDest | Command::DelDest => {
            let r = a.real.ok_or_else(|| perr(line, "no real server (-r)"))?;
            let (addr, port) =
                parse_addr_port(r).ok_or_else(|| perr(line, format!("bad real server {r:?}")))?;
            let port = port.unwrap_or(match key {
                ServiceKey::Addr { port, .. } => port,
                ServiceKey::Fwmark { .. } => 0,
            });
            let dk = DestKey { addr, port };
            if cmd == Command::DelDest {
                return Ok(Op::DelDest(key, dk));
            }
            let fwd = a.fwd.unwrap_or(FwdMethod::DirectRoute);
            // ipvsadm: tunnel and direct routing cannot map ports, so the real server's
            // port becomes the service's (not for fwmark services)
            let port = match key {
                ServiceKey::Addr { port: svc_port, .. }
                    if matches!(fwd, FwdMethod::Tunnel | FwdMethod::DirectRoute) =>
                {
                    svc_port
                }
                _ => port,
            };
            let mut d = IpvsDest::new(addr, port, fwd);
            if let Some(w) = a.weight {
                d.weight = Weight::new(num("-w", w)?).map_err(at)?;
            }
            if let Some(v) = a.upper {
                d.upper_threshold = num("-x", v)?;
            }
            if let Some(v) = a.lower {
                d.lower_threshold = num("-y", v)?;
            }
            if let Some(t) = a.tun_type {
                d.tun_type = match t {
                    "ipip" => TunnelType::Ipip,
                    "gue" => TunnelType::Gue,
                    "gre" => TunnelType::Gre,
                    other => return Err(perr(line, format!("unknown tunnel type {other:?}"))),
                };
            }
            if let Some(p) = a.tun_port {
                d.tun_port = p
                    .parse()
                    .map_err(|e| perr(line, format!("--tun-port {p:?}: {e}")))?;
            }
            if let Some(f) = a.tun_flags {
                d.tun_flags = f;
            }
            d.validate_for(&key).map_err(at)?;
            Ok(if cmd == Command::AddDest {
                Op::AddDest(key, d)
            } else {
                Op::UpdateDest(key, d)
            })
        }
        Command::Clear => Ok(Op::Flush),
    }
}

/// ipvsadm's comparison of two 32-bit words: `ntohl(a) - ntohl(b)` as a C `int`
/// (it wraps, so 192.0.0.0 sorts before 10.0.0.0; we reproduce that).
fn cmp_u32(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

fn addr_words(a: &IpAddr) -> [u32; 4] {
    let b = crate::model::addr_bytes(a);
    let w = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

fn cmp_addr(af_first: Family, a: &IpAddr, b: &IpAddr) -> i32 {
    let (x, y) = (addr_words(a), addr_words(b));
    match af_first {
        Family::Inet => cmp_u32(x[0], y[0]),
        Family::Inet6 => {
            let mut r = 0;
            for i in 0..4 {
                r = cmp_u32(x[i], y[i]);
                if r != 0 {
                    break;
                }
            }
            r
        }
    }
}

/// `ipvs_cmp_services` of libipvs (ipvsadm 1.31).
fn cmp_services(a: &IpvsService, b: &IpvsService) -> i32 {
    let parts = |s: &IpvsService| match s.key {
        ServiceKey::Addr {
            protocol,
            addr,
            port,
        } => (0u32, crate::model::protocol_raw(protocol), addr, port),
        ServiceKey::Fwmark { mark, .. } => (mark.get(), 0, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
    };
    let (fa, pa, aa, qa) = parts(a);
    let (fb, pb, ab, qb) = parts(b);
    let (afa, afb) = (a.key.family(), b.key.family());
    let r = cmp_u32(fa, fb);
    if r != 0 {
        return r;
    }
    let r = i32::from(afa.raw()) - i32::from(afb.raw());
    if r != 0 {
        return r;
    }
    let r = i32::from(pa) - i32::from(pb);
    if r != 0 {
        return r;
    }
    let r = cmp_addr(afa, &aa, &ab);
    if r != 0 {
        return r;
    }
    i32::from(qa) - i32::from(qb)
}

/// `ipvs_cmp_dests` of libipvs (ipvsadm 1.31).
fn cmp_dests(a: &DestEntry, b: &DestEntry) -> i32 {
    let (ka, kb) = (a.dest.key, b.dest.key);
    let r = cmp_addr(Family::of(&ka.addr), &ka.addr, &kb.addr);
    if r != 0 {
        return r;
    }
    i32::from(ka.port) - i32::from(kb.port)
}

/// glibc 2.36's `qsort` (a top-down merge sort), so that ipvsadm's comparators, which
/// are not total orders, give ipvsadm's order. Never panics.
fn msort<T: Copy>(v: &mut [T], cmp: &impl Fn(&T, &T) -> i32) {
    let n = v.len();
    if n <= 1 {
        return;
    }
    let n1 = n / 2;
    let (left, right) = v.split_at_mut(n1);
    msort(left, cmp);
    msort(right, cmp);
    let mut out = Vec::with_capacity(n);
    let (mut i, mut j) = (0, 0);
    while let (Some(l), Some(r)) = (left.get(i), right.get(j)) {
        if cmp(l, r) <= 0 {
            out.push(*l);
            i += 1;
        } else {
            out.push(*r);
            j += 1;
        }
    }
    out.extend_from_slice(left.get(i..).unwrap_or_default());
    out.extend_from_slice(right.get(j..).unwrap_or_default());
    v.copy_from_slice(&out);
}

/// The table in the order ipvsadm prints it (services sorted by fwmark, family,
/// protocol, address, port; destinations by address and port).
pub fn ipvsadm_order(
    table: &[(ServiceEntry, Vec<DestEntry>)],
) -> Vec<(&ServiceEntry, Vec<&DestEntry>)> {
    let mut idx: Vec<usize> = (0..table.len()).collect();
    let svc = |i: &usize| table.get(*i).map(|t| &t.0.service);
    msort(&mut idx, &|a, b| match (svc(a), svc(b)) {
        (Some(x), Some(y)) => cmp_services(x, y),
        _ => 0,
    });
    idx.iter()
        .filter_map(|i| table.get(*i))
        .map(|(s, d)| {
            let mut ds: Vec<&DestEntry> = d.iter().collect();
            msort(&mut ds, &|a: &&DestEntry, b: &&DestEntry| cmp_dests(a, b));
            (s, ds)
        })
        .collect()
}

fn svc_switch(key: &ServiceKey) -> String {
    match key {
        ServiceKey::Addr {
            protocol,
            addr,
            port,
        } => {
            let sw = match protocol {
                Protocol::Tcp => "-t",
                Protocol::Udp => "-u",
                Protocol::Sctp => "--sctp-service",
            };
            format!("{sw} {}", SockAddr(*addr, *port))
        }
        ServiceKey::Fwmark {
            af: Family::Inet,
            mark,
        } => format!("-f {}", mark.get()),
        ServiceKey::Fwmark {
            af: Family::Inet6,
            mark,
        } => format!("-f {} -6", mark.get()),
    }
}

fn sched_flag_names(sched: &Scheduler, flags: ServiceFlags) -> String {
    let (one, two, three) = match sched.as_str() {
        "sh" => ("sh-fallback", "sh-port", None),
        "mh" => ("mh-fallback", "mh-port", None),
        _ => ("flag-1", "flag-2", Some("flag-3")),
    };
    let mut v = Vec::new();
    if flags.contains(ServiceFlags::SCHED1) {
        v.push(one);
    }
    if flags.contains(ServiceFlags::SCHED2) {
        v.push(two);
    }
    if let Some(three) = three
        && flags.contains(ServiceFlags::SCHED3)
    {
        v.push(three);
    }
    v.join(",")
}

fn fwd_switch(f: FwdMethod) -> &'static str {
    match f {
        FwdMethod::Masq => "-m",
        FwdMethod::Tunnel => "-i",
        FwdMethod::DirectRoute | FwdMethod::Local | FwdMethod::Bypass => "-g",
    }
}

/// Renders services and destinations in the `ipvsadm -S -n` format, in ipvsadm's order.
pub fn render_rules(table: &[(ServiceEntry, Vec<DestEntry>)]) -> String {
    let mut out = String::new();
    for (s, dests) in ipvsadm_order(table) {
        let svc = &s.service;
        let sw = svc_switch(&svc.key);
        let _ = write!(out, "-A {sw} -s {}", svc.scheduler);
        if svc.flags.contains(ServiceFlags::PERSISTENT) {
            let _ = write!(out, " -p {}", svc.timeout);
            match svc.netmask {
                Netmask::V4(m) if m != Ipv4Addr::BROADCAST => {
                    let _ = write!(out, " -M {m}");
                }
                Netmask::V6(p) if p != 128 => {
                    let _ = write!(out, " -M {p}");
                }
                _ => {}
            }
        }
        if let Some(pe) = &svc.pe_name {
            let _ = write!(out, " --pe {pe}");
        }
        if svc.flags.contains(ServiceFlags::ONEPACKET) {
            let _ = write!(out, " -o");
        }
        if svc
            .flags
            .intersects(ServiceFlags::SCHED1 | ServiceFlags::SCHED2 | ServiceFlags::SCHED3)
        {
            let _ = write!(out, " -b {}", sched_flag_names(&svc.scheduler, svc.flags));
        }
        out.push('\n');
        for d in dests {
            let d = &d.dest;
            let _ = write!(
                out,
                "-a {sw} -r {} {} -w {}",
                SockAddr(d.key.addr, d.key.port),
                fwd_switch(d.fwd),
                d.weight.get()
            );
            // ipvsadm -S does not print thresholds (-x/-y)
            if d.fwd == FwdMethod::Tunnel {
                render_tunnel(&mut out, d);
            }
            out.push('\n');
        }
    }
    out
}

fn render_tunnel(out: &mut String, d: &IpvsDest) {
    match d.tun_type {
        TunnelType::Ipip => {
            let _ = write!(out, " --tun-type ipip");
        }
        TunnelType::Gue => {
            let _ = write!(out, " --tun-type gue --tun-port {}", d.tun_port);
            render_tun_flags(out, d.tun_flags);
        }
        TunnelType::Gre => {
            let _ = write!(out, " --tun-type gre");
            render_tun_flags(out, d.tun_flags);
        }
    }
}

fn render_tun_flags(out: &mut String, f: TunnelFlags) {
    if f.contains(TunnelFlags::REMCSUM) {
        let _ = write!(out, " --tun-remcsum");
    } else if f.contains(TunnelFlags::CSUM) {
        let _ = write!(out, " --tun-csum");
    } else {
        let _ = write!(out, " --tun-nocsum");
    }
}

/// Which `ipvsadm -L -n` view to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListView {
    /// `ipvsadm -Ln`.
    Table,
    /// `ipvsadm -Ln --stats`.
    Stats,
    /// `ipvsadm -Ln --rate`.
    Rate,
}

/// ipvsadm's "K/M/G" scaling for wide counters (`print_largenum`, non-`--exact`).
fn largenum(n: u64) -> String {
    let s = n.to_string();
    if s.len() <= 8 {
        return format!("{n:>8}");
    }
    // ipvsadm: while the number does not fit, divide by 1000 and use the next unit
    let units = ['K', 'M', 'G', 'T', 'P', 'E'];
    let mut v = n;
    for u in units {
        v /= 1000;
        let t = v.to_string();
        if t.len() <= 7 {
            return format!("{t:>7}{u}");
        }
    }
    format!("{n:>8}")
}

fn service_head(svc: &IpvsService) -> String {
    match svc.key {
        ServiceKey::Addr {
            protocol,
            addr,
            port,
        } => {
            let p = match protocol {
                Protocol::Tcp => "TCP",
                Protocol::Udp => "UDP",
                Protocol::Sctp => "SCTP",
            };
            format!("{p:<4} {}", SockAddr(addr, port))
        }
        ServiceKey::Fwmark {
            af: Family::Inet,
            mark,
        } => format!("FWM  {}", mark.get()),
        ServiceKey::Fwmark {
            af: Family::Inet6,
            mark,
        } => format!("FWM  {} IPv6", mark.get()),
    }
}

/// Renders the `ipvsadm -L -n` family of tables.
pub fn render_list(
    info: &Info,
    table: &[(ServiceEntry, Vec<DestEntry>)],
    view: ListView,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "IP Virtual Server version {} (size={})",
        info.version_string(),
        info.conn_tab_size
    );
    match view {
        ListView::Table => {
            out.push_str("Prot LocalAddress:Port Scheduler Flags\n");
            out.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n");
        }
        ListView::Stats => {
            out.push_str(
                "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n",
            );
            out.push_str("  -> RemoteAddress:Port\n");
        }
        ListView::Rate => {
            out.push_str(
                "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n",
            );
            out.push_str("  -> RemoteAddress:Port\n");
        }
    }
    for (s, dests) in ipvsadm_order(table) {
        let svc = &s.service;
        let head = service_head(svc);
        match view {
            ListView::Table => {
                let _ = write!(out, "{head} {}", svc.scheduler);
                if svc
                    .flags
                    .intersects(ServiceFlags::SCHED1 | ServiceFlags::SCHED2 | ServiceFlags::SCHED3)
                {
                    let _ = write!(out, " ({})", sched_flag_names(&svc.scheduler, svc.flags));
                }
                if svc.flags.contains(ServiceFlags::PERSISTENT) {
                    let _ = write!(out, " persistent {}", svc.timeout);
                    match svc.netmask {
                        Netmask::V4(m) if m != Ipv4Addr::BROADCAST => {
                            let _ = write!(out, " mask {m}");
                        }
                        Netmask::V6(p) if p != 128 => {
                            let _ = write!(out, " mask {p}");
                        }
                        _ => {}
                    }
                }
                if let Some(pe) = &svc.pe_name {
                    let _ = write!(out, " pe {pe}");
                }
                if svc.flags.contains(ServiceFlags::ONEPACKET) {
                    let _ = write!(out, " ops");
                }
                out.push('\n');
            }
            ListView::Stats | ListView::Rate => {
                let _ = writeln!(out, "{head:<33}{}", stats_cols(&s.stats, view));
            }
        }
        for d in dests {
            let addr = SockAddr(d.dest.key.addr, d.dest.key.port).to_string();
            match view {
                ListView::Table => {
                    let _ = writeln!(
                        out,
                        "  -> {addr:<28} {:<7} {:<6} {:<10} {:<10}",
                        d.dest.fwd.ipvsadm_name(),
                        d.dest.weight.get(),
                        d.active_conns,
                        d.inactive_conns
                    );
                }
                ListView::Stats | ListView::Rate => {
                    let _ = writeln!(out, "  -> {addr:<28}{}", stats_cols(&d.stats, view));
                }
            }
        }
    }
    out
}

fn stats_cols(s: &Stats, view: ListView) -> String {
    let vals = match view {
        ListView::Rate => [s.cps, s.inpps, s.outpps, s.inbps, s.outbps],
        _ => [s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes],
    };
    vals.iter().map(|v| format!(" {}", largenum(*v))).collect()
}

/// Renders `ipvsadm -L --timeout`.
pub fn render_timeouts(t: &Timeouts) -> String {
    format!(
        "Timeout (tcp tcpfin udp): {} {} {}\n",
        t.tcp, t.tcp_fin, t.udp
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(ops: &[Op]) -> Vec<(ServiceEntry, Vec<DestEntry>)> {
        let mut t: Vec<(ServiceEntry, Vec<DestEntry>)> = Vec::new();
        for op in ops {
            match op {
                Op::AddService(s) => t.push((
                    ServiceEntry {
                        service: s.clone(),
                        hashed: true,
                        stats: Stats::default(),
                    },
                    vec![],
                )),
                Op::AddDest(k, d) => {
                    if let Some(e) = t.iter_mut().find(|e| e.0.service.key == *k) {
                        e.1.push(DestEntry {
                            dest: *d,
                            active_conns: 0,
                            inactive_conns: 0,
                            persistent_conns: 0,
                            stats: Stats::default(),
                        });
                    }
                }
                _ => {}
            }
        }
        t
    }

    /// What `ipvsadm -Sn` printed in the guest (ipvsadm 1.31, 6.1.0-56) re-parses and
    /// re-renders to the same text.
    #[test]
    fn save_format_round_trips() {
        let text = include_str!("../tests/fixtures/ipvsadm_save.txt");
        // ipvsadm prints sh's flag-3 as an empty `-b `, which it cannot read back
        let ops = parse_rules(&text.replace("-s sh -b \n", "-s sh -b flag-3\n")).unwrap();
        assert_eq!(render_rules(&entries(&ops)), text);
    }

    #[test]
    fn list_format_matches_ipvsadm() {
        let text = include_str!("../tests/fixtures/ipvsadm_save.txt");
        // ipvsadm prints sh's flag-3 as an empty `-b `, which it cannot read back
        let ops = parse_rules(&text.replace("-s sh -b \n", "-s sh -b flag-3\n")).unwrap();
        let info = Info {
            version: 0x010201,
            conn_tab_size: 4096,
        };
        let want = include_str!("../tests/fixtures/ipvsadm_list.txt");
        assert_eq!(render_list(&info, &entries(&ops), ListView::Table), want);
    }

    #[test]
    fn stats_format_matches_ipvsadm() {
        let text = include_str!("../tests/fixtures/ipvsadm_save.txt");
        let ops = parse_rules(&text.replace("-s sh -b \n", "-s sh -b flag-3\n")).unwrap();
        let info = Info {
            version: 0x010201,
            conn_tab_size: 4096,
        };
        let want = include_str!("../tests/fixtures/ipvsadm_list_stats.txt");
        assert_eq!(render_list(&info, &entries(&ops), ListView::Stats), want);
    }

    #[test]
    fn parse_errors_name_the_line() {
        for (text, line, needle) in [
            ("-A -f 259 -s rr\n-A -f 0 -s rr\n", 2, "fwmark"),
            ("\n\n-A -t 10.0.0.1:0 -s rr", 3, "port"),
            (
                "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -w 4294967295",
                2,
                "weight",
            ),
            (
                "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -w 2147483648",
                2,
                "weight",
            ),
            ("-A -t 10.0.0.1:80 -s r-r", 1, "scheduler"),
            ("-A -t 10.0.0.1:80 -Q", 1, "unknown option"),
            ("-A -t [2001:db8::1:80 -s rr", 1, "bad service address"),
            ("# comment\n-a -t 10.0.0.1:80", 2, "real server"),
            ("-A -u [2001:db8::1]:53 -s rr -p 10 -M 129", 1, "-M"),
            ("-A -f 1 -s rr\n-a -f 1 -r [2001:db8::1]:0 -m", 2, "addr"),
        ] {
            let e = parse_rules(text).unwrap_err();
            let Error::Parse { line: l, message } = &e else {
                panic!("{e:?}")
            };
            assert_eq!(*l, line, "{text:?}: {e}");
            assert!(message.contains(needle), "{text:?}: {message}");
        }
    }

    #[test]
    fn defaults_follow_ipvsadm() {
        let ops = parse_rules("-A -t 10.0.0.1:80 -p\n-a -t 10.0.0.1:80 -r 10.0.0.2\n").unwrap();
        let Op::AddService(s) = &ops[0] else { panic!() };
        assert_eq!((s.scheduler.as_str(), s.timeout), ("wlc", 300));
        let Op::AddDest(_, d) = &ops[1] else { panic!() };
        assert_eq!(
            (d.key.port, d.fwd, d.weight.get()),
            (80, FwdMethod::DirectRoute, 1)
        );
    }

    /// ipvsadm compares addresses with a wrapping `int` subtraction, so 192.168.0.1
    /// (0xc0a80001 - 0x0a000001 < 0 as int) sorts before 10.0.0.1; fwmark services last.
    #[test]
    fn order_is_ipvsadms() {
        let text = "-A -f 7 -s rr\n-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.3:80 -m -w 1\n\
                    -a -t 10.0.0.1:80 -r 10.0.0.2:80 -m -w 1\n-A -t 192.168.0.1:80 -s rr\n-A -u 10.0.0.1:80 -s rr\n";
        let out = render_rules(&entries(&parse_rules(text).unwrap()));
        assert_eq!(
            out,
            "-A -t 192.168.0.1:80 -s rr\n-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -m -w 1\n\
             -a -t 10.0.0.1:80 -r 10.0.0.3:80 -m -w 1\n-A -u 10.0.0.1:80 -s rr\n-A -f 7 -s rr\n"
        );
    }

    #[test]
    fn direct_routing_and_tunnels_take_the_service_port() {
        let ops = parse_rules("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2:8080 -g\n-a -t 10.0.0.1:80 -r 10.0.0.3:8080 -m\n").unwrap();
        let Op::AddDest(_, g) = &ops[1] else { panic!() };
        let Op::AddDest(_, m) = &ops[2] else { panic!() };
        assert_eq!((g.key.port, m.key.port), (80, 8080));
    }

    #[test]
    fn largenum_scales_like_ipvsadm() {
        assert_eq!(largenum(12_345_678), "12345678");
        assert_eq!(largenum(123_456_789), " 123456K");
    }
}
