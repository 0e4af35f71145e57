//! Shared helpers for the integration tests: sample rulesets (the libnetwork rule sets, typed)
//! and a minimal network-namespace fixture for the privileged tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use vipmesh_netfilter::*;

pub fn cn(s: &str) -> ChainName {
    ChainName::new(s).unwrap()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn port(p: u16) -> Port {
    Port::new(p).unwrap()
}

/// A jump prepended to builtin chain `from`.
pub fn jump(from: BuiltinChain, to: &ChainName, matches: Matches) -> Jump {
    Jump {
        from,
        matches,
        to: to.clone(),
        position: JumpPosition::Prepend,
    }
}

/// Hooks the VIP chain on mangle INPUT, then SNATs what goes to `subnet` (only IPVS traffic
/// `with_ipvs`) to `to` from nat POSTROUTING, in that order.
fn vip_jump_and_snat(
    rs: &mut OwnedRuleset,
    vip: &ChainName,
    subnet: &str,
    to: &str,
    with_ipvs: bool,
) {
    rs.add_jump(
        Table::Mangle,
        jump(BuiltinChain::Input, vip, Matches::new()),
    )
    .unwrap();
    let snat = cn("VIPMESH-SNAT");
    let mut m = Matches::new().destination(subnet.parse().unwrap());
    if with_ipvs {
        m = m.ipvs();
    }
    rs.add_rule(Table::Nat, &snat, Rule::new(m, Target::Snat(ip(to))))
        .unwrap();
    rs.add_jump(
        Table::Nat,
        jump(BuiltinChain::Postrouting, &snat, Matches::new()),
    )
    .unwrap();
}

/// The load-balancer sandbox of one overlay network: VIP marks (mangle INPUT), the
/// `-m ipvs` SNAT (nat POSTROUTING), and fast failure for a VIP without backends (filter INPUT).
pub fn vip_lb(vips: u32, with_ipvs: bool) -> OwnedRuleset {
    let mut rs = OwnedRuleset::new(Family::V4);
    let vip = cn("VIPMESH-VIP");
    for i in 0..vips {
        let addr = Ipv4Addr::from(0x0a00_0000 + 0x0100 + 4 + i); // 10.0.1.4 …
        rs.add_rule(
            Table::Mangle,
            &vip,
            Rule::new(
                Matches::new().destination(Cidr::host(addr.into())),
                Target::SetMark(Mark::new(0x100 + i)),
            )
            .with_comment(Comment::new(format!("svc-{i} vip")).unwrap()),
        )
        .unwrap();
    }
    vip_jump_and_snat(&mut rs, &vip, "10.0.0.0/16", "10.0.0.2", with_ipvs);
    let rej = cn("VIPMESH-NOBACKEND");
    rs.add_rule(
        Table::Filter,
        &rej,
        Rule::new(
            Matches::new()
                .destination("10.0.1.250".parse().unwrap())
                .protocol(Protocol::Tcp),
            Target::Reject(RejectWith::TcpReset),
        )
        .with_comment(Comment::new("svc-dead: no backends").unwrap()),
    )
    .unwrap();
    rs.add_jump(
        Table::Filter,
        jump(BuiltinChain::Input, &rej, Matches::new()),
    )
    .unwrap();
    rs
}

/// Ingress, host side: DNAT of published port 30000 to the ingress sandbox, the filter
/// accepts, and the MASQUERADE for locally originated connections.
pub fn ingress_host() -> OwnedRuleset {
    let mut rs = OwnedRuleset::new(Family::V4);
    let ing = cn("VIPMESH-INGRESS");
    let tcp30000 = Matches::new()
        .protocol(Protocol::Tcp)
        .dport(port(30000).into());
    rs.add_rule(
        Table::Nat,
        &ing,
        Rule::new(
            tcp30000.clone(),
            Target::Dnat(NatTo {
                addr: ip("172.18.0.2"),
                port: Some(port(30000)),
            }),
        ),
    )
    .unwrap();
    rs.add_rule(Table::Nat, &ing, Rule::new(Matches::new(), Target::Return))
        .unwrap();
    let local = Matches::new().dst_type(AddrType::Local);
    rs.add_jump(
        Table::Nat,
        jump(BuiltinChain::Prerouting, &ing, local.clone()),
    )
    .unwrap();
    rs.add_jump(Table::Nat, jump(BuiltinChain::Output, &ing, local))
        .unwrap();
    let masq = cn("VIPMESH-INGRESS-MASQ");
    rs.add_rule(
        Table::Nat,
        &masq,
        Rule::new(
            Matches::new()
                .out_iface(Iface::new("docker_gwbridge").unwrap())
                .src_type(AddrType::Local),
            Target::Masquerade,
        ),
    )
    .unwrap();
    rs.add_jump(
        Table::Nat,
        jump(BuiltinChain::Postrouting, &masq, Matches::new()),
    )
    .unwrap();
    rs.add_rule(
        Table::Filter,
        &ing,
        Rule::new(
            Matches::new()
                .protocol(Protocol::Tcp)
                .sport(port(30000).into())
                .ctstate(CtState::ESTABLISHED | CtState::RELATED),
            Target::Accept,
        ),
    )
    .unwrap();
    rs.add_rule(Table::Filter, &ing, Rule::new(tcp30000, Target::Accept))
        .unwrap();
    rs.add_rule(
        Table::Filter,
        &ing,
        Rule::new(Matches::new(), Target::Return),
    )
    .unwrap();
    rs.add_jump(
        Table::Filter,
        jump(BuiltinChain::Forward, &ing, Matches::new()),
    )
    .unwrap();
    rs
}

/// Ingress sandbox: mark the published port, mark the VIP, SNAT IPVS traffic into the
/// ingress network.
pub fn ingress_sbox(with_ipvs: bool) -> OwnedRuleset {
    let mut rs = OwnedRuleset::new(Family::V4);
    let ing = cn("VIPMESH-INGRESS");
    rs.add_rule(
        Table::Mangle,
        &ing,
        Rule::new(
            Matches::new()
                .protocol(Protocol::Tcp)
                .dport(port(30000).into()),
            Target::SetMark(Mark::new(0x100)),
        ),
    )
    .unwrap();
    rs.add_jump(
        Table::Mangle,
        jump(BuiltinChain::Prerouting, &ing, Matches::new()),
    )
    .unwrap();
    let vip = cn("VIPMESH-VIP");
    rs.add_rule(
        Table::Mangle,
        &vip,
        Rule::new(
            Matches::new().destination("10.255.0.4".parse().unwrap()),
            Target::SetMark(Mark::new(0x100)),
        ),
    )
    .unwrap();
    vip_jump_and_snat(&mut rs, &vip, "10.255.0.0/16", "10.255.0.2", with_ipvs);
    rs
}

/// Ingress, task side: REDIRECT published→target and hide every other port on the ingress
/// address.
pub fn ingress_task() -> OwnedRuleset {
    let mut rs = OwnedRuleset::new(Family::V4);
    let task = "10.255.0.5".parse::<Cidr>().unwrap();
    let red = cn("VIPMESH-REDIRECT");
    rs.add_rule(
        Table::Nat,
        &red,
        Rule::new(
            Matches::new()
                .destination(task)
                .protocol(Protocol::Tcp)
                .dport(port(30000).into()),
            Target::Redirect(port(80)),
        ),
    )
    .unwrap();
    rs.add_jump(
        Table::Nat,
        jump(BuiltinChain::Prerouting, &red, Matches::new()),
    )
    .unwrap();
    let fin = cn("VIPMESH-TASK-IN");
    rs.add_rule(
        Table::Filter,
        &fin,
        Rule::new(
            Matches::new()
                .destination(task)
                .protocol(Protocol::Tcp)
                .dport(port(80).into())
                .ctstate(CtState::NEW | CtState::ESTABLISHED),
            Target::Accept,
        ),
    )
    .unwrap();
    let fout = cn("VIPMESH-TASK-OUT");
    rs.add_rule(
        Table::Filter,
        &fout,
        Rule::new(
            Matches::new()
                .source(task)
                .protocol(Protocol::Tcp)
                .sport(port(80).into())
                .ctstate(CtState::ESTABLISHED),
            Target::Accept,
        ),
    )
    .unwrap();
    for p in [Protocol::Sctp, Protocol::Udp, Protocol::Tcp] {
        rs.add_rule(
            Table::Filter,
            &fin,
            Rule::new(Matches::new().destination(task).protocol(p), Target::Drop),
        )
        .unwrap();
        rs.add_rule(
            Table::Filter,
            &fout,
            Rule::new(Matches::new().source(task).protocol(p), Target::Drop),
        )
        .unwrap();
    }
    rs.add_jump(
        Table::Filter,
        jump(BuiltinChain::Input, &fin, Matches::new()),
    )
    .unwrap();
    rs.add_jump(
        Table::Filter,
        jump(BuiltinChain::Output, &fout, Matches::new()),
    )
    .unwrap();
    rs
}

// ---------------------------------------------------------------------------------------------
// Privileged fixture.

/// Fails the calling test, with the reason, unless privileged tests can run here (root,
/// `ip netns`).
pub fn require_privileged() {
    vipmesh_testkit::require(&[vipmesh_testkit::Requirement::Netns]);
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh named network namespace (`ip netns add`), lo up; deleted on Drop, also on panic.
pub struct Ns {
    pub name: String,
    children: Vec<Child>,
}

impl Ns {
    pub fn new(tag: &str) -> Ns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("vmnf{}-{n}-{tag}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Ns {
            name,
            children: Vec::new(),
        };
        ns.sh("ip link set lo up");
        ns
    }

    pub fn target(&self) -> NetnsTarget {
        NetnsTarget::named(&self.name)
    }

    pub fn applier(&self) -> Applier {
        Applier::new(self.target())
    }

    pub fn try_sh(&self, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .unwrap()
    }

    /// Run `sh -c cmd` inside the namespace; panics with stderr on failure.
    pub fn sh(&self, cmd: &str) -> String {
        let out = self.try_sh(cmd);
        assert!(
            out.status.success(),
            "[{}] {cmd}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `iptables-save` without the timestamp comments.
    pub fn save(&self) -> String {
        strip_comments(&self.sh("iptables-save"))
    }

    /// Start a background process inside the namespace; killed on Drop.
    pub fn spawn(&mut self, cmd: &str) {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "sh",
                "-c",
                &format!("exec {cmd}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair between two namespaces, addressed and up.
pub fn veth(a: &Ns, a_if: &str, a_addr: &str, b: &Ns, b_if: &str, b_addr: &str) {
    run_ok(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]));
    a.sh(&format!(
        "ip addr add {a_addr} dev {a_if} && ip link set {a_if} up"
    ));
    b.sh(&format!(
        "ip addr add {b_addr} dev {b_if} && ip link set {b_if} up"
    ));
}

pub fn strip_comments(s: &str) -> String {
    s.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Lines of a save that do not mention our chains or tag: the foreign content.
pub fn foreign_only(save: &str) -> String {
    save.lines()
        .filter(|l| !l.contains("VIPMESH-"))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
