//! Crash harness (guest kernel, IPVS): a process applying a large state is killed with
//! `SIGKILL` just before its k-th kernel write (the `failpoints` feature,
//! `VIPMESH_KILL_AT_STEP=k`), for kill points spread over the whole apply; a restarted
//! process (a fresh controller) then converges, and the namespace holds exactly the desired
//! VIP addresses, IPVS services, real servers and chains, plus the foreign objects
//! byte-identical, with nothing of ours orphaned.
//!
//! The crashing process is this test binary re-executed in "child" mode
//! (`VIPMESH_CRASH_CHILD=<state file>` selects it; see [`large_state_applies_and_a_restart_plans_nothing`]);
//! `examples/crash_apply.rs` is the same child as a stand-alone tool.
//!
//! Size: `VIPMESH_CRASH_TRIALS` (default 4, one per scenario; nightly 100) crash trials over
//! `VIPMESH_CRASH_SERVICES` VIP services (default 100, 3 real servers each, shared across
//! services: 505 kernel writes from empty). Results: `benches/crash/README.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use vipmesh::dataplane::RealKernel;
use vipmesh::model::NodeState;
use vipmesh::plan::now_secs;
use vipmesh::{Controller, ControllerConfig, Report};
use vipmesh_testkit::Topology;

type Ctl = Controller<RealKernel>;

/// Selects the child mode: the state file to apply.
const CHILD_ENV: &str = "VIPMESH_CRASH_CHILD";
/// The failpoint (see `vipmesh::apply::failpoint`).
const KILL_ENV: &str = "VIPMESH_KILL_AT_STEP";
/// The name of the child-mode test (re-executed with `--exact`).
const CHILD_TEST: &str = "large_state_applies_and_a_restart_plans_nothing";

const NET: &str = "crash";
const IFACE: &str = "lb0";
const LB_ADDR: &str = "10.64.0.2";
const FOREIGN_ADDR: &str = "10.64.250.250";
/// Backend addresses shared by the services (so a half-built IPVS service matches several).
const POOL: usize = 64;
const PER_SERVICE: usize = 3;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a count: {e}")),
        Err(_) => default,
    }
}

fn vip(i: usize) -> IpAddr {
    format!("10.64.{}.{}", 1 + i / 200, 10 + i % 200)
        .parse()
        .unwrap()
}

fn backend(j: usize) -> IpAddr {
    format!("10.64.100.{}", 1 + j % POOL).parse().unwrap()
}

/// One service of the generated states: name, VIP, backends.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Svc {
    name: String,
    vip: IpAddr,
    backends: Vec<IpAddr>,
}

/// State A: `n` services; B: the even ones of A (half removed), every fourth one with its
/// backends shifted by one (one real server in, one out), and `n / 10` new ones.
fn services(n: usize, b: bool) -> Vec<Svc> {
    let mut out = Vec::new();
    for i in 0..n {
        if b && i % 2 == 1 {
            continue;
        }
        let shift = usize::from(b && i % 4 == 0);
        out.push(Svc {
            name: format!("s{i:04}"),
            vip: vip(i),
            backends: (0..PER_SERVICE)
                .map(|j| backend(i * PER_SERVICE + j + shift))
                .collect(),
        });
    }
    if b {
        for i in n..n + n / 10 {
            out.push(Svc {
                name: format!("s{i:04}"),
                vip: vip(i),
                backends: (0..PER_SERVICE)
                    .map(|j| backend(i * PER_SERVICE + j))
                    .collect(),
            });
        }
    }
    out
}

/// The state file text (the format of the README).
fn state_json(netns: &str, svcs: &[Svc]) -> String {
    let services: Vec<serde_json::Value> = svcs
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "mode": {"vip": [s.vip.to_string()]},
                "backends": s.backends.iter().map(|b| serde_json::json!({"addr": b.to_string()})).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "networks": [{
            "id": NET, "lb_netns": netns, "lb_interface": IFACE,
            "subnets": [{"subnet": "10.64.0.0/16", "lb_addr": LB_ADDR}],
            "services": services,
        }]
    })
    .to_string()
}

fn node(netns: &str, svcs: &[Svc]) -> NodeState {
    NodeState::from_json(&state_json(netns, svcs)).unwrap()
}

fn sh(netns: &str, cmd: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "sh", "-c", cmd])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} in {netns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

/// The LB namespace and the foreign objects in it.
struct CrashLab {
    _topo: Topology,
    netns: String,
    dir: PathBuf,
    /// `ipvsadm -Sn` lines of the foreign services, as made.
    foreign_ipvs: BTreeSet<String>,
    /// Foreign rule and chain lines of `iptables-save`/`ip6tables-save`, as made.
    foreign_rules: Vec<String>,
}

impl CrashLab {
    fn new() -> CrashLab {
        vipmesh_testkit::vip::load_modules();
        let _ = Command::new("modprobe").args(["-q", "dummy"]).status();
        let mut topo = Topology::new("vc");
        let netns = topo.ns("lb");
        let dir = topo.temp_dir("states");
        let mut lab = CrashLab {
            _topo: topo,
            netns,
            dir,
            foreign_ipvs: BTreeSet::new(),
            foreign_rules: Vec::new(),
        };
        lab.populate();
        lab.foreign_ipvs = lab.ipvs_lines();
        lab.foreign_rules = lab.foreign_rule_lines();
        assert_eq!(lab.foreign_ipvs.len(), 4, "{:?}", lab.foreign_ipvs);
        lab
    }

    /// The interface, its address, and the foreign objects: an IPVS fwmark service outside
    /// our range and a TCP service, a mangle chain with a rule and a jump, filter and nat
    /// rules (both families), and a /32 of our subnet without our address protocol.
    fn populate(&self) {
        // One process per tool (process starts are what costs under emulation).
        let ns = &self.netns;
        sh(
            ns,
            &format!(
                "ip link add {IFACE} type dummy 2>/dev/null || ip link add {IFACE} type veth peer name {IFACE}p
                 ip -batch - <<END
link set lo up
link set {IFACE} up
addr add {LB_ADDR}/16 dev {IFACE}
addr add {FOREIGN_ADDR}/32 dev {IFACE}
END
                 ipvsadm -R <<END
-A -f 7 -s wlc
-a -f 7 -r 10.99.0.5:0 -m -w 3
-A -t 10.99.0.1:80 -s rr
-a -t 10.99.0.1:80 -r 10.99.0.6:8080 -m -w 1
END
                 iptables-restore --noflush <<END
*mangle
:FOREIGN-MARK - [0:0]
-A FOREIGN-MARK -d 10.99.0.1/32 -j MARK --set-mark 7
-A PREROUTING -j FOREIGN-MARK
-A INPUT -s 10.98.0.0/16 -j RETURN
COMMIT
*filter
-A INPUT -s 10.98.0.0/16 -j DROP
COMMIT
*nat
-A POSTROUTING -s 10.98.0.0/16 -j MASQUERADE
COMMIT
END
                 ip6tables-restore --noflush <<END
*mangle
-A INPUT -s fd98::/16 -j RETURN
COMMIT
*filter
-A INPUT -s fd98::/16 -j DROP
COMMIT
END"
            ),
        );
    }

    /// Deletes and re-creates the namespace under the same name, with the foreign objects
    /// (the checks after each trial compare them with those of the first one).
    fn reset(&self) {
        ip(&["netns", "del", &self.netns]);
        ip(&["netns", "add", &self.netns]);
        self.populate();
    }

    fn ipvs_lines(&self) -> BTreeSet<String> {
        sh(&self.netns, "ipvsadm -Sn")
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn rules_text(&self) -> String {
        sh(&self.netns, "iptables-save; ip6tables-save")
    }

    fn foreign_rule_lines(&self) -> Vec<String> {
        rule_lines(&self.rules_text(), false)
    }

    fn state_file(&self, name: &str, svcs: &[Svc]) -> PathBuf {
        let p = self.dir.join(format!("{name}.json"));
        std::fs::write(&p, state_json(&self.netns, svcs)).unwrap();
        p
    }

    /// Every address of the namespace except loopback and IPv6 link-local: (interface,
    /// address, prefix, ours).
    fn addresses(&self) -> BTreeSet<(String, IpAddr, u8, bool)> {
        let ns = vipmesh_netns::Netns::named(&self.netns).unwrap();
        let r = vipmesh_netns::rtnl::Rtnl::open(&ns).unwrap();
        let links: BTreeMap<u32, String> = r
            .links()
            .unwrap()
            .into_iter()
            .map(|l| (l.index, l.name))
            .collect();
        r.addresses()
            .unwrap()
            .into_iter()
            .filter(|a| !a.addr.is_loopback())
            .filter(|a| !matches!(a.addr, IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80))
            .map(|a| {
                (
                    links[&a.ifindex].clone(),
                    a.addr,
                    a.prefix_len,
                    a.proto == Some(vipmesh_netns::rtnl::VIPMESH_ADDR_PROTO),
                )
            })
            .collect()
    }
}

fn is_ours(line: &str) -> bool {
    line.to_ascii_lowercase().contains("vipmesh")
}

/// Rule lines of a save: ours (`VIPMESH` chains and `vipmesh`-tagged jumps) or the foreign
/// ones (rules and non-built-in chain declarations; counters stripped). Table headers and the
/// built-in chains' policy lines are left out: a table appears once anyone uses it.
fn rule_lines(save: &str, ours: bool) -> Vec<String> {
    let builtin = [
        ":INPUT ",
        ":OUTPUT ",
        ":FORWARD ",
        ":PREROUTING ",
        ":POSTROUTING ",
    ];
    save.lines()
        .filter(|l| l.starts_with("-A") || l.starts_with(':'))
        .filter(|l| !builtin.iter().any(|b| l.starts_with(b)))
        .filter(|l| is_ours(l) == ours)
        .map(|l| match l.find(" [") {
            Some(i) if l.starts_with(':') => l[..i].to_string(),
            _ => l.to_string(),
        })
        .collect()
}

/// What the kernel must hold of ours for a state, given the marks the controller chose.
fn expected_ipvs(svcs: &[Svc], marks: &BTreeMap<String, u32>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in svcs {
        let m = marks[&s.name];
        out.insert(format!("-A -f {m} -s rr"));
        for b in &s.backends {
            out.insert(format!("-a -f {m} -r {b}:0 -m -w 1"));
        }
    }
    out
}

/// The rule lines of a reference apply with its marks replaced by `marks` (the rules are
/// compared as a multiset: their order inside our chains carries no meaning, each matches
/// its own VIP).
fn expected_rules(
    reference: &[String],
    ref_marks: &BTreeMap<String, u32>,
    marks: &BTreeMap<String, u32>,
) -> Vec<String> {
    let mut out: Vec<String> = reference
        .iter()
        .map(|l| {
            for (svc, m) in ref_marks {
                if l.contains(&format!("svc={svc}\"")) || l.ends_with(&format!("svc={svc}")) {
                    return l.replace(
                        &format!("--set-xmark {m:#x}/"),
                        &format!("--set-xmark {:#x}/", marks[svc]),
                    );
                }
            }
            l.clone()
        })
        .collect();
    out.sort();
    out
}

fn marks_of(c: &Ctl) -> BTreeMap<String, u32> {
    c.marks()
        .get(NET)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.as_str().to_string(), *v))
                .collect()
        })
        .unwrap_or_default()
}

/// A fresh controller (a restarted process) converges to `svcs`: one full sync, and a second
/// one only to delete real servers the first set to weight 0 and found drained (removal is
/// two-phase: weight 0, then deleted once no connection is left). Returns the controller and
/// the first sync's report.
fn converge(netns: &str, svcs: &[Svc]) -> (Ctl, Report) {
    let mut c = Controller::real(ControllerConfig::default());
    c.set_desired(node(netns, svcs));
    let r = c
        .sync_full(now_secs())
        .unwrap_or_else(|e| panic!("apply failed: {e}"));
    if r.steps.iter().any(|s| s.step.contains("weight 0 drain")) {
        let r2 = c
            .sync_full(now_secs())
            .unwrap_or_else(|e| panic!("second apply failed: {e}"));
        for s in &r2.steps {
            assert!(
                s.step.contains("del-dest") && s.step.contains("[drained]"),
                "the second sync only deletes drained real servers:\n{r2}"
            );
        }
    }
    (c, r)
}

/// A reference apply: what the rules look like, which marks, how many kernel writes, and
/// at which write the netfilter batch runs.
#[derive(Debug, Clone)]
struct Reference {
    rules: Vec<String>,
    marks: BTreeMap<String, u32>,
    writes: usize,
    batch_at: usize,
}

fn reference(lab: &CrashLab, svcs: &[Svc]) -> Reference {
    let (mut c, r) = converge(&lab.netns, svcs);
    let p = c.plan_now().unwrap();
    assert!(p.is_empty(), "{p}");
    let batch_at = r
        .steps
        .iter()
        .position(|s| s.step.starts_with("netfilter"))
        .expect("the apply has a netfilter batch")
        + 1;
    Reference {
        rules: rule_lines(&lab.rules_text(), true),
        marks: marks_of(&c),
        writes: r.steps.len(),
        batch_at,
    }
}

/// Checks the namespace holds exactly `svcs` (with the controller's marks) and the foreign
/// objects: any orphan (an address, IPVS line or rule of ours not desired) or missing object
/// fails.
fn assert_converged(lab: &CrashLab, c: &mut Ctl, svcs: &[Svc], reference: &Reference, what: &str) {
    let p = c.plan_now().unwrap();
    assert!(p.is_empty(), "{what}: plan after re-apply:\n{p}");
    let marks = marks_of(c);
    let names: BTreeSet<&str> = svcs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        marks.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        names,
        "{what}: marks"
    );
    let distinct: BTreeSet<u32> = marks.values().copied().collect();
    assert_eq!(distinct.len(), marks.len(), "{what}: marks are distinct");
    assert!(
        distinct.iter().all(|m| (0x100..=0x1ffff).contains(m)),
        "{what}: {distinct:?}"
    );

    // IPVS: exactly ours plus the foreign lines, byte-identical.
    let got = lab.ipvs_lines();
    let mut want = expected_ipvs(svcs, &marks);
    want.extend(lab.foreign_ipvs.iter().cloned());
    let orphans: Vec<&String> = got.difference(&want).collect();
    let missing: Vec<&String> = want.difference(&got).collect();
    assert!(
        orphans.is_empty() && missing.is_empty(),
        "{what}: IPVS orphans {orphans:?}, missing {missing:?}"
    );

    // Rules: ours as the reference (with these marks), foreign untouched and in order.
    let save = lab.rules_text();
    let mut ours = rule_lines(&save, true);
    ours.sort();
    let want = expected_rules(&reference.rules, &reference.marks, &marks);
    if ours != want {
        let extra: Vec<&String> = ours.iter().filter(|l| !want.contains(l)).collect();
        let lack: Vec<&String> = want.iter().filter(|l| !ours.contains(l)).collect();
        panic!("{what}: rules differ; extra {extra:?}, missing {lack:?}");
    }
    assert_eq!(
        rule_lines(&save, false),
        lab.foreign_rules,
        "{what}: foreign rules changed"
    );

    // Addresses: the LB address, the foreign /32, and exactly the desired VIPs, ours.
    let got = lab.addresses();
    let mut want: BTreeSet<(String, IpAddr, u8, bool)> = svcs
        .iter()
        .map(|s| (IFACE.to_string(), s.vip, 32, true))
        .collect();
    want.insert((IFACE.into(), LB_ADDR.parse().unwrap(), 16, false));
    want.insert((IFACE.into(), FOREIGN_ADDR.parse().unwrap(), 32, false));
    let orphans: Vec<_> = got.difference(&want).collect();
    let missing: Vec<_> = want.difference(&got).collect();
    assert!(
        orphans.is_empty() && missing.is_empty(),
        "{what}: address orphans {orphans:?}, missing {missing:?}"
    );
}

/// Where an apply starts, what the crashing process applies, what the restarted one does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    /// From empty: crash applying A, restart with A.
    FreshA,
    /// From A: crash applying B (half of A removed), restart with B.
    AToB,
    /// From A: crash applying B, restart with A (the state changed back meanwhile).
    AToBBack,
    /// From empty: crash applying A, restart with B.
    FreshAThenB,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Scenario::FreshA,
        Scenario::AToB,
        Scenario::AToBBack,
        Scenario::FreshAThenB,
    ];
    fn starts_from_a(self) -> bool {
        matches!(self, Scenario::AToB | Scenario::AToBBack)
    }
    fn crash_applies_b(self) -> bool {
        self.starts_from_a()
    }
    fn restart_with_b(self) -> bool {
        matches!(self, Scenario::AToB | Scenario::FreshAThenB)
    }
}

/// A tiny fixed-seed generator (xorshift64*), for the random kill points.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

/// Kill points over an apply of `writes` writes, most telling first: the netfilter batch,
/// the middle, the first and the last write, the write after the batch (the IPVS removals),
/// then 2, 3, 5, 8, 13… and random ones (fixed seed).
/// The list starts `rotate` places further on (each scenario starts with another point).
fn kill_points(writes: usize, batch_at: usize, rotate: usize, rng: &mut Rng) -> Vec<usize> {
    let mut pts = vec![batch_at, writes / 2, 1, writes, batch_at + 1];
    let n = pts.len();
    pts.rotate_left(rotate % n);
    let (mut a, mut b) = (2, 3);
    while a <= writes {
        pts.push(a);
        (a, b) = (b, a + b);
    }
    for _ in 0..40 {
        pts.push(1 + rng.below(writes));
    }
    let mut seen = BTreeSet::new();
    pts.retain(|p| *p >= 1 && *p <= writes && seen.insert(*p));
    pts
}

/// The child: applies the state file named by `CHILD_ENV` and exits (unless the failpoint
/// kills it first).
fn child(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut c = Controller::real(ControllerConfig::default());
    c.set_desired(NodeState::from_json(&text).unwrap());
    let r = c
        .sync_full(now_secs())
        .unwrap_or_else(|e| panic!("child apply failed: {e}"));
    println!(
        "crash child: applied {} writes without being killed",
        r.steps.len()
    );
}

/// Re-executes this binary in child mode with the failpoint at `k`; returns how it ended.
fn run_child(state: &Path, k: usize) -> std::process::ExitStatus {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--ignored", "--exact", CHILD_TEST, "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_ENV, state)
        .env(KILL_ENV, k.to_string())
        .output()
        .unwrap();
    if out.status.signal().is_none() {
        println!(
            "child output:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status
}

/// In child mode (`VIPMESH_CRASH_CHILD` set) this is the crashing process. Otherwise: a large
/// state applies in one sync, a second controller (a restart) plans nothing, and the
/// namespace holds exactly the state and the foreign objects.
#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn large_state_applies_and_a_restart_plans_nothing() {
    if let Some(p) = std::env::var_os(CHILD_ENV) {
        return child(Path::new(&p));
    }
    let n = env_usize("VIPMESH_CRASH_SERVICES", 100);
    let lab = CrashLab::new();
    let a = services(n, false);
    let refa = reference(&lab, &a);
    assert_eq!(refa.marks.len(), n);
    // A restart: the first sync changes nothing.
    let mut again = Controller::real(ControllerConfig::default());
    again.set_desired(node(&lab.netns, &a));
    let r = again.sync_full(now_secs()).unwrap();
    assert!(r.steps.is_empty(), "{r}");
    assert_converged(&lab, &mut again, &a, &refa, "restart");
    println!(
        "{n} services x {PER_SERVICE} real servers: {} kernel writes, batch at {}",
        refa.writes, refa.batch_at
    );
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn a_kill_at_any_write_converges_after_restart_with_no_orphans() {
    assert!(
        std::env::var_os(KILL_ENV).is_none(),
        "{KILL_ENV} would kill the test itself"
    );
    let started = Instant::now();
    let n = env_usize("VIPMESH_CRASH_SERVICES", 100);
    let trials = env_usize("VIPMESH_CRASH_TRIALS", 4);
    let lab = CrashLab::new();
    let a = services(n, false);
    let b = services(n, true);
    // References: empty -> A, then A -> B (the writes each crashing apply makes).
    let t = Instant::now();
    let refa = reference(&lab, &a);
    let t_a = t.elapsed();
    let refb = reference(&lab, &b);
    println!(
        "references: empty->A {:.1} s, A->B {:.1} s (each: apply, drain sync, plan, save)",
        t_a.as_secs_f64(),
        (t.elapsed() - t_a).as_secs_f64()
    );
    lab.reset();
    let state_a = lab.state_file("a", &a);
    let state_b = lab.state_file("b", &b);
    println!(
        "crash harness: {n} services x {PER_SERVICE}; empty->A {} writes (batch at {}), A->B {} writes (batch at {})",
        refa.writes, refa.batch_at, refb.writes, refb.batch_at
    );

    let mut rng = Rng(0x5eed_c0de_cafe_f00d);
    let mut queues: Vec<(Scenario, std::collections::VecDeque<usize>)> = Scenario::ALL
        .iter()
        .enumerate()
        .map(|(j, &s)| {
            let r = if s.crash_applies_b() { &refb } else { &refa };
            (s, kill_points(r.writes, r.batch_at, j, &mut rng).into())
        })
        .collect();
    let mut plan = Vec::new();
    while plan.len() < trials && queues.iter().any(|(_, q)| !q.is_empty()) {
        for (s, q) in &mut queues {
            if plan.len() < trials
                && let Some(k) = q.pop_front()
            {
                plan.push((*s, k));
            }
        }
    }
    // Random points beyond the listed ones, for large trial counts.
    while plan.len() < trials {
        let s = Scenario::ALL[plan.len() % 4];
        let r = if s.crash_applies_b() { &refb } else { &refa };
        plan.push((s, 1 + rng.below(r.writes)));
    }

    let mut left_behind = 0usize;
    let mut distinct = BTreeSet::new();
    for (i, (s, k)) in plan.iter().copied().enumerate() {
        let what = format!("trial {i} {s:?} killed at write {k}");
        let t0 = Instant::now();
        if i > 0 {
            lab.reset();
        }
        let t_reset = t0.elapsed();
        if s.starts_from_a() {
            let (mut c, _) = converge(&lab.netns, &a);
            assert!(c.plan_now().unwrap().is_empty());
        }
        let (ipvs0, addrs0) = (lab.ipvs_lines(), lab.addresses());
        let t_start = t0.elapsed();
        let st = run_child(
            if s.crash_applies_b() {
                &state_b
            } else {
                &state_a
            },
            k,
        );
        let t_child = t0.elapsed();
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{what}: child ended {st}");
        left_behind += lab.ipvs_lines().symmetric_difference(&ipvs0).count()
            + lab.addresses().symmetric_difference(&addrs0).count();
        distinct.insert((s, k));
        // The restarted process.
        let (svcs, r) = if s.restart_with_b() {
            (&b, &refb)
        } else {
            (&a, &refa)
        };
        let (mut c, _) = converge(&lab.netns, svcs);
        let t_conv = t0.elapsed();
        assert_converged(&lab, &mut c, svcs, r, &what);
        println!(
            "{what}: converged (reset {:.1} s, start {:.1} s, child {:.1} s, restart {:.1} s, checks {:.1} s)",
            t_reset.as_secs_f64(),
            (t_start - t_reset).as_secs_f64(),
            (t_child - t_start).as_secs_f64(),
            (t_conv - t_child).as_secs_f64(),
            (t0.elapsed() - t_conv).as_secs_f64()
        );
    }
    println!(
        "crash harness: {} trials ({} distinct kill points over 4 scenarios), 0 orphans, 0 missing; \
         the crashes left {left_behind} IPVS lines/addresses changed before the restarts; {:.1} s",
        plan.len(),
        distinct.len(),
        started.elapsed().as_secs_f64()
    );
}
