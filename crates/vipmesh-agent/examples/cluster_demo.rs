//! The cluster demo: the ingress mesh of two nodes driven by etcd and one `vipmesh-agent`
//! process per node, as a cluster runs it. In namespaces it creates (nothing outside them):
//!
//! 1. a 3-member etcd cluster in a control namespace (members on 127.0.0.1-3, own ports and
//!    data dirs under a temp dir);
//! 2. two node namespaces with the ingress mesh between them (VXLAN), each node's agent a
//!    process pointed at all three members;
//! 3. `vipmesh-agent cluster apply` of service `vote`, published on 8080, a task on each node;
//! 4. curl from a client namespace through node1 and node2: both answer, from both tasks;
//! 5. a scale to three tasks (`cluster apply` with one more): the new task answers;
//! 6. kill -9 of node1's agent (the PID this demo started) and a restart;
//! 7. kill -9 of the etcd leader; the agents go on, and a scale back to two tasks still
//!    reaches both kernels;
//!
//! while a background loop sends requests through both nodes from step 5 on. Its failures
//! are counted: there must be none, also during the scale-up (the node without the new task
//! adds it to its IPVS only once the task's node lists it as ready, after wiring it).
//!
//! It prints the IPVS tables and the requests per task, and exits 0 only if every check held,
//! 1 naming the failed check otherwise (2: it cannot run here). Everything it made
//! (namespaces, processes, temp dirs) goes also on failure, and is checked to be gone.
//! `CLUSTER_DEMO_LOGS=DIR` keeps the agents' and etcd members' logs there.
//!
//! Run as root on a kernel with IPVS, with the agent binary in `VIPMESH_AGENT_BIN` (or as the
//! first argument): `cargo xtask demo cluster` builds both and runs it in the guest.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    missing_docs
)]

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vipmesh_testkit::cluster::{ClusterLab, Traffic, in_ns};
use vipmesh_testkit::{Requirement, unmet, within};

/// Generous bounds: the guest is emulated, and etcd is slow there.
const CONVERGE: Duration = Duration::from_secs(600);
const APPLY: Duration = Duration::from_secs(300);

/// A failed check: its name and what was seen.
type Check<T> = Result<T, String>;

/// When the demo started (for the times it prints).
static T0: OnceLock<Instant> = OnceLock::new();

fn secs(at: Instant) -> f64 {
    at.duration_since(*T0.get_or_init(Instant::now))
        .as_secs_f64()
}

fn check(name: &str, r: Result<(), String>) -> Check<()> {
    let t = secs(Instant::now());
    match r {
        Ok(()) => {
            println!("  [{t:>6.1} s] check: {name}: ok");
            Ok(())
        }
        Err(e) => {
            println!("  [{t:>6.1} s] check: {name}: FAILED");
            Err(format!("{name}: {e}"))
        }
    }
}

fn expect(name: &str, cond: bool, seen: impl FnOnce() -> String) -> Check<()> {
    check(name, if cond { Ok(()) } else { Err(seen()) })
}

fn step(what: &str) {
    println!("\n== [{:>6.1} s] {what}", secs(Instant::now()));
}

/// `etcdctl --endpoints ENDPOINTS ARGS -w table` in the control namespace `ctl`: prints the
/// table, and the members it could not reach (etcdctl says so on stderr).
fn print_etcdctl(ctl: &str, endpoints: &str, args: &[&str]) {
    let Ok(o) = in_ns(ctl, "etcdctl")
        .args(["--endpoints", endpoints])
        .args(args)
        .args(["-w", "table"])
        .output()
    else {
        return;
    };
    println!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout).trim_end(),
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter(|l| l.contains("Failed to get the status"))
            .map(|l| format!("\n{l}"))
            .collect::<String>()
    );
}

/// An event line, with its time (to set beside the background requests' failures).
fn note(what: &str) {
    println!("  [{:>6.1} s] {what}", secs(Instant::now()));
}

/// The real servers of node `i`'s IPVS with a weight above 0 (draining ones are left out).
fn serving(c: &ClusterLab, i: usize) -> BTreeSet<String> {
    c.ipvs(i)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "  -> 10.255.1.1:0   Masq    1      0     0"
            (f.first() == Some(&"->") && f.len() >= 4 && f[3] != "0" && f[3] != "Weight")
                .then(|| f[1].trim_end_matches(":0").to_string())
        })
        .collect()
}

fn addrs(c: &ClusterLab, tasks: &[&str]) -> BTreeSet<String> {
    tasks
        .iter()
        .map(|t| c.lab.task(t).addr.to_string())
        .collect()
}

/// Waits until both nodes' IPVS serve exactly `tasks`, then until requests through each node
/// reach exactly those tasks.
fn converged(c: &ClusterLab, tasks: &[&str], what: &str) -> Check<()> {
    let want_addrs = addrs(c, tasks);
    let want: BTreeSet<String> = tasks.iter().map(|t| t.to_string()).collect();
    for i in 0..c.lab.nodes.len() {
        check(
            &format!("node{}'s IPVS serves {what}", i + 1),
            within(CONVERGE, "the real servers", || {
                let got = serving(c, i);
                if got == want_addrs {
                    Ok(())
                } else {
                    Err(format!("{got:?}\n{}", c.ipvs(i)))
                }
            })
            .map_err(|e| format!("{e}\n{}", c.diag())),
        )?;
        check(
            &format!("curl node{}:8080 reaches {what}", i + 1),
            within(CONVERGE, "the tasks answering", || {
                match c.reached(i, 3 * tasks.len()) {
                    Ok(got) if got == want => Ok(()),
                    Ok(got) => Err(format!("{got:?}")),
                    Err(e) => Err(e),
                }
            }),
        )?;
    }
    Ok(())
}

fn healthy_agents(c: &ClusterLab, what: &str) -> Check<()> {
    for (i, a) in c.agents.iter().enumerate() {
        check(
            &format!("node{}'s agent {what}", i + 1),
            within(CONVERGE, "/healthz 200 and /plan empty", || {
                let (code, body) = a.get("/healthz")?;
                if code != 200 {
                    return Err(format!("/healthz {code}: {body}"));
                }
                let plan = a.get("/plan")?;
                if plan == (200, String::new()) {
                    Ok(())
                } else {
                    Err(format!("/plan {plan:?}"))
                }
            }),
        )?;
    }
    Ok(())
}

fn show_ipvs(c: &ClusterLab) {
    for i in 0..c.lab.nodes.len() {
        println!(
            "[node{} ingress sandbox]$ ipvsadm -Ln\n{}",
            i + 1,
            c.ipvs(i).trim_end()
        );
    }
}

/// What the demo made, recorded as it goes, checked to be gone after the lab dropped.
#[derive(Default)]
struct Made {
    namespaces: Vec<String>,
    dirs: Vec<PathBuf>,
    /// (PID, program) of every etcd member and agent process started.
    pids: Vec<(u32, &'static str)>,
}

impl Made {
    fn record(&mut self, c: &ClusterLab) {
        self.namespaces = c.lab.topo.namespaces().to_vec();
        self.dirs = vec![c.dir.clone()];
        let procs = c
            .etcd
            .members
            .iter()
            .map(|m| (m.proc.pid(), "etcd"))
            .chain(c.agents.iter().map(|a| (a.proc.pid(), "vipmesh-agent")));
        for (pid, prog) in procs {
            if let Some(pid) = pid
                && !self.pids.contains(&(pid, prog))
            {
                self.pids.push((pid, prog));
            }
        }
    }

    /// What is left of it.
    fn left(&self) -> Vec<String> {
        let mut left = Vec::new();
        for ns in &self.namespaces {
            if Path::new("/run/netns").join(ns).exists() {
                left.push(format!("namespace {ns}"));
            }
        }
        for d in &self.dirs {
            if d.exists() {
                left.push(format!("directory {}", d.display()));
            }
        }
        for (pid, prog) in &self.pids {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(prog) {
                left.push(format!("process {pid} ({prog})"));
            }
        }
        left
    }
}

/// With `CLUSTER_DEMO_LOGS=DIR`, copies the agents' and etcd members' logs there (the lab's
/// temp dir goes with it).
fn keep_logs(c: &ClusterLab) {
    let Some(dir) = std::env::var_os("CLUSTER_DEMO_LOGS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(entries) = std::fs::read_dir(&c.dir) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let _ = std::fs::copy(e.path(), dir.join(e.file_name()));
            }
        }
    }
    let _ = std::fs::write(dir.join("diag.txt"), c.diag());
}

fn run(bin: &str, made: &mut Made) -> Check<()> {
    step("1. a 3-member etcd cluster in a control namespace");
    let mut c = ClusterLab::new(bin, 2, &[0, 1], 3);
    made.record(&c);
    let r = scenario(&mut c, made);
    keep_logs(&c);
    if r.is_err() {
        eprintln!("{}", c.diag());
    }
    println!(
        "\n  cleaning up: {} namespaces, {} etcd and agent processes, {}",
        made.namespaces.len(),
        made.pids.len(),
        c.dir.display()
    );
    r
}

fn scenario(c: &mut ClusterLab, made: &mut Made) -> Check<()> {
    let ctl = c.ctl.clone();
    for m in &c.etcd.members {
        println!(
            "  {} pid {} client {} peer {}",
            m.name,
            m.proc.pid().unwrap_or_default(),
            m.client_url,
            m.peer_url
        );
    }
    check(
        "all three etcd members healthy",
        c.etcd
            .wait_healthy(&ctl, CONVERGE)
            .map_err(|e| format!("{e}\n{}", c.etcd.logs())),
    )?;
    print_etcdctl(&ctl, &c.endpoints(), &["member", "list"]);

    step("2-3. agents on node1 and node2; cluster apply of vote (8080 -> 80), 2 tasks");
    let out = c
        .apply("vote", &[(8080, 80)], &["vote.1", "vote.2"], APPLY)
        .map_err(|e| format!("cluster apply of 2 tasks: {e}"))?;
    println!(
        "  $ vipmesh-agent cluster apply --etcd {} --state cluster.json\n  {}",
        c.endpoints(),
        out.trim()
    );
    c.start_agent(0);
    c.start_agent(1);
    made.record(c);
    for (i, a) in c.agents.iter().enumerate() {
        println!(
            "  node{} agent pid {} (metrics {})",
            i + 1,
            a.proc.pid().unwrap_or_default(),
            a.metrics
        );
    }

    step("4. the published port through node1 and node2");
    converged(
        c,
        &["vote.1", "vote.2"],
        "vote.1 and vote.2 (one task per node)",
    )?;
    healthy_agents(c, "is healthy and converged")?;
    show_ipvs(c);

    println!("\n  background requests through node1 and node2 from now on");
    let traffic = Traffic::start(&c.lab.client, &[c.url(0, 8080), c.url(1, 8080)], 100_000);

    step("5. scale to 3 tasks (a new task on node2)");
    let scale_up = Instant::now();
    let t3 = c.lab.add_task(1);
    c.lab.start_servers();
    let out3 = c
        .apply(
            "vote",
            &[(8080, 80)],
            &["vote.1", "vote.2", &t3.name],
            APPLY,
        )
        .map_err(|e| format!("cluster apply of 3 tasks: {e}"))?;
    note(out3.trim());
    converged(c, &["vote.1", "vote.2", &t3.name], "all three tasks")?;
    let scale_up = scale_up..Instant::now();
    println!("  requests so far {:?} (total, failed)", traffic.counts());

    step("6. kill -9 of node1's agent, then a restart");
    let before = c.dataplane(0);
    let pid = c.agents[0].restart();
    made.record(c);
    note(&format!(
        "killed pid {}, restarted as pid {}",
        pid.unwrap_or_default(),
        c.agents[0].proc.pid().unwrap_or_default()
    ));
    check(
        "the restarted agent synced",
        within(CONVERGE, "a full sync of the new process", || {
            let v = c.agents[0].metric("vipmesh_agent_syncs_total{kind=\"full\"}")?;
            if v >= 1.0 {
                Ok(())
            } else {
                Err(format!("{v}"))
            }
        }),
    )?;
    healthy_agents(c, "is healthy and converged after the restart")?;
    let after = c.dataplane(0);
    expect(
        "node1's dataplane unchanged by the restart (IPVS, marks, rules)",
        after == before,
        || format!("before:\n{before}\nafter:\n{after}"),
    )?;
    println!("  requests so far {:?} (total, failed)", traffic.counts());

    step("7. kill -9 of the etcd leader; scale back to 2 tasks");
    let leader = within(APPLY, "the etcd leader", || c.etcd.leader(&ctl, 2))?;
    let pid = c.etcd.kill9(leader);
    note(&format!(
        "killed {} (the leader), pid {}",
        c.etcd.members[leader].name,
        pid.unwrap_or_default()
    ));
    check(
        "the two other etcd members healthy (a new leader)",
        c.etcd
            .wait_healthy(&ctl, CONVERGE)
            .map_err(|e| format!("{e}\n{}", c.etcd.logs())),
    )?;
    print_etcdctl(&ctl, &c.endpoints(), &["endpoint", "status"]);
    let out = c
        .apply("vote", &[(8080, 80)], &["vote.1", "vote.2"], APPLY)
        .map_err(|e| format!("cluster apply with a member down: {e}"))?;
    note(out.trim());
    converged(
        c,
        &["vote.1", "vote.2"],
        &format!("vote.1 and vote.2 again ({} left)", t3.name),
    )?;
    healthy_agents(c, "is healthy and converged with a member down")?;
    for (i, a) in c.agents.iter_mut().enumerate() {
        check(
            &format!("node{}'s agent process still runs", i + 1),
            if a.proc.alive() {
                Ok(())
            } else {
                Err("gone".into())
            },
        )?;
    }

    step("8. what it shows");
    let log = traffic.stop();
    show_ipvs(c);
    let mut per_task: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_node: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for o in &log {
        let n = per_node.entry(o.url.clone()).or_default();
        n.0 += 1;
        match &o.result {
            Ok(task) => *per_task.entry(task.clone()).or_default() += 1,
            Err(_) => n.1 += 1,
        }
    }
    // (in the scale-up window, failure)
    let (window, failed): (Vec<_>, Vec<_>) = log
        .iter()
        .filter_map(|o| {
            o.result.as_ref().err().map(|e| {
                (
                    scale_up.contains(&o.at),
                    format!("at {:.1} s: {e}", secs(o.at)),
                )
            })
        })
        .partition(|(w, _)| *w);
    let window: Vec<String> = window.into_iter().map(|(_, e)| e).collect();
    let later: Vec<String> = failed.into_iter().map(|(_, e)| e).collect();
    println!(
        "  background requests: {} sent, {} failed",
        log.len(),
        window.len() + later.len()
    );
    println!(
        "    during the scale-up ({:.1}-{:.1} s): {} failed {window:?}",
        secs(scale_up.start),
        secs(scale_up.end),
        window.len()
    );
    println!(
        "    during the agent kill -9, the etcd leader kill -9 and the scale-down: {} failed",
        later.len()
    );
    for (url, (n, f)) in &per_node {
        println!("    through {url}: {n} ({f} failed)");
    }
    for (task, n) in &per_task {
        println!("    answered by {task}: {n}");
    }
    expect(
        "no background request failed across the scale-up, the agent kill -9, the etcd leader kill -9 and the scale-down",
        window.is_empty() && later.is_empty() && log.len() >= 10,
        || format!("{} requests, failed: {window:?} {later:?}", log.len()),
    )?;
    expect(
        "the background requests reached every task",
        ["vote.1", "vote.2", t3.name.as_str()]
            .iter()
            .all(|t| per_task.contains_key(*t)),
        || format!("{per_task:?}"),
    )?;
    Ok(())
}

fn main() -> ExitCode {
    let t0 = *T0.get_or_init(Instant::now);
    let missing = unmet(&[
        Requirement::Root,
        Requirement::Ipvs,
        Requirement::Tool("curl"),
        Requirement::Tool("busybox"),
        Requirement::Tool("etcd"),
        Requirement::Tool("ipvsadm"),
        Requirement::Tool("nsenter"),
    ]);
    if !missing.is_empty() {
        println!("CLUSTER DEMO: CANNOT RUN HERE: {}", missing.join("; "));
        return ExitCode::from(2);
    }
    let Some(bin) = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("VIPMESH_AGENT_BIN").ok())
    else {
        println!(
            "CLUSTER DEMO: CANNOT RUN HERE: give the vipmesh-agent binary (argument or VIPMESH_AGENT_BIN)"
        );
        return ExitCode::from(2);
    };
    // A setup step of the lab panics with its reason; the lab is dropped (cleaned up) while
    // unwinding, and the panic is reported as the failed check.
    let mut made = Made::default();
    let r =
        std::panic::catch_unwind(AssertUnwindSafe(|| run(&bin, &mut made))).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Err(format!("lab setup: {msg}"))
        });
    // The lab has dropped: nothing it made may be left.
    let left = made.left();
    let r = r.and_then(|()| {
        check(
            "everything cleaned up (namespaces, processes, temp dir)",
            if left.is_empty() {
                Ok(())
            } else {
                Err(left.join(", "))
            },
        )
    });
    if r.is_err() && !left.is_empty() {
        println!("  left behind: {}", left.join(", "));
    }
    let secs = t0.elapsed().as_secs_f64();
    match r {
        Ok(()) => {
            println!("\nCLUSTER DEMO: PASS (every check held, {secs:.0} s)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("\nCLUSTER DEMO: FAILED ({secs:.0} s): {e}");
            ExitCode::FAILURE
        }
    }
}
