//! The agent as separate processes on a real kernel (the guest's: IPVS, VXLAN): etcd 3.4 and
//! one `vipmesh-agent agent` process per node, the ingress mesh between two node namespaces
//! of `vipmesh_testkit::ingress`, real traffic from a client namespace.
//!
//! etcd and the agents run in a control namespace of the lab (loopback only: the guest's own
//! loopback is down, and the test talks to nothing outside namespaces it created); each agent
//! programs its node's namespaces by name (`--host-netns`, `--sandbox-netns`,
//! `--overlay-netns` override the cluster's ingress config on that node).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vipmesh_testkit::ingress::{INGRESS_GATEWAY, INGRESS_SUBNET, IngressLab};
use vipmesh_testkit::{Requirement, eventually, require};

/// The agent binary: cargo's, or `VIPMESH_AGENT_BIN` (a copy, so that a rebuild during a
/// long guest run cannot swap it).
fn bin() -> String {
    std::env::var("VIPMESH_AGENT_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_vipmesh-agent").into())
}
const ETCD: &str = "http://127.0.0.1:2379";
/// The agents' log filter (their logs are printed when the test fails).
const LOG: &str = "info,vipmesh_agent=debug";

fn needs() {
    require(&[
        Requirement::Root,
        Requirement::Ipvs,
        Requirement::Tool("curl"),
        Requirement::Tool("busybox"),
        Requirement::Tool("etcd"),
        Requirement::Tool("ipvsadm"),
    ]);
}

/// `cmd args…` inside network namespace `ns`, in this process's mount namespace:
/// `nsenter --net` rather than `ip netns exec`, which gives the program a mount namespace
/// of its own, so that namespaces the agent creates (bind mounts under /run/netns) would
/// exist for it alone.
fn in_ns(ns: &str, cmd: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(cmd);
    c
}

/// A process we started; SIGKILLed (only this PID) and reaped on drop.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut c: Command, log: PathBuf) -> Proc {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = c
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {c:?}: {e}"));
        Proc {
            child: Some(child),
            log,
        }
    }

    /// kill -9 of this PID (`nsenter` execs the program, so it is the program's).
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One node's agent: its command line (to restart it the same way) and its metrics port.
struct Agent {
    proc: Proc,
    args: Vec<String>,
    ctl: String,
    metrics: SocketAddr,
}

impl Agent {
    fn start(ctl: &str, args: Vec<String>, metrics: SocketAddr, log: PathBuf) -> Agent {
        let mut c = in_ns(ctl, &bin());
        c.args(&args).env("RUST_LOG", LOG);
        Agent {
            proc: Proc::spawn(c, log),
            args,
            ctl: ctl.to_string(),
            metrics,
        }
    }

    fn restart(&mut self) {
        self.proc.kill9();
        let mut c = in_ns(&self.ctl, &bin());
        c.args(&self.args).env("RUST_LOG", LOG);
        let log = self.proc.log.clone();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"\n===== restarted =====\n")
            .unwrap();
        self.proc = Proc::spawn(c, log);
    }

    /// GET `path` from the agent's metrics listener: (status code, body).
    fn get(&self, path: &str) -> Result<(u16, String), String> {
        let out = in_ns(&self.ctl, "curl")
            .args([
                "-s",
                "--max-time",
                "120",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                &format!("http://{}{path}", self.metrics),
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "curl {path}: {:?} {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        Ok((code.trim().parse().unwrap_or(0), body.to_string()))
    }

    /// The value of the metric line starting with `series` (labels included).
    fn metric(&self, series: &str) -> Result<f64, String> {
        let (code, body) = self.get("/metrics")?;
        if code != 200 {
            return Err(format!("/metrics {code}: {body}"));
        }
        body.lines()
            .find_map(|l| l.strip_prefix(series).map(str::trim))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {series} in:\n{body}"))
    }
}

/// The whole mesh under test.
struct Cluster {
    lab: IngressLab,
    ctl: String,
    agents: Vec<Agent>,
    _etcd: Proc,
    dir: PathBuf,
}

impl Cluster {
    fn new(nodes: usize, tasks_on: &[usize]) -> Cluster {
        let mut lab = IngressLab::new(nodes, tasks_on);
        lab.start_servers();
        let ctl = lab.topo.ns("ctl");
        let dir = lab.topo.temp_dir("agent");
        let etcd = {
            let mut c = in_ns(&ctl, "etcd");
            c.args(["--name", "m0", "--data-dir"])
                .arg(dir.join("etcd-data"))
                .args([
                    "--listen-client-urls",
                    ETCD,
                    "--advertise-client-urls",
                    ETCD,
                ])
                .args([
                    "--listen-peer-urls",
                    "http://127.0.0.1:2380",
                    "--initial-advertise-peer-urls",
                    "http://127.0.0.1:2380",
                    "--initial-cluster",
                    "m0=http://127.0.0.1:2380",
                ]);
            Proc::spawn(c, dir.join("etcd.log"))
        };
        let cl = Cluster {
            lab,
            ctl,
            agents: Vec::new(),
            _etcd: etcd,
            dir,
        };
        eventually(Duration::from_secs(300), "etcd answers", || {
            cl.cli(&["cluster", "get", "--etcd", ETCD, "--etcd-timeout", "60"])
                .map(|_| ())
        });
        cl
    }

    /// Runs `vipmesh-agent ARGS` in the control namespace; stdout, or the whole output.
    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = in_ns(&self.ctl, &bin()).args(args).output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "vipmesh-agent {args:?}: {:?}\n{}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `cluster apply` of the service `vote` (8080 -> 80, 9090 -> 9000) with these tasks.
    fn apply_vote(&self, tasks: &[&str]) {
        let tasks: Vec<String> = tasks
            .iter()
            .map(|t| {
                let t = self.lab.task(t);
                format!(
                    r#"{{"addr": "{}", "node": "{}", "netns": "{}"}}"#,
                    t.addr, self.lab.nodes[t.node].name, t.netns
                )
            })
            .collect();
        let file = format!(
            r#"{{"ingress": {{
                "host_netns": "/proc/1/ns/net", "subnet": "{INGRESS_SUBNET}",
                "gateway": "{INGRESS_GATEWAY}", "vni": 4096, "mtu": 1450,
                "services": [{{"name": "vote",
                    "ports": [{{"protocol": "tcp", "published": 8080, "target": 80}},
                              {{"protocol": "tcp", "published": 9090, "target": 9000}}],
                    "tasks": [{}]}}]}}}}"#,
            tasks.join(", ")
        );
        let path = self.dir.join("cluster.json");
        std::fs::write(&path, file).unwrap();
        // Retried: the emulated guest is slow, and an apply that timed out after its
        // transaction went through writes nothing the second time.
        let out = eventually(Duration::from_secs(300), "cluster apply", || {
            self.cli(&[
                "cluster",
                "apply",
                "--etcd",
                ETCD,
                "--etcd-timeout",
                "60",
                "--state",
                path.to_str().unwrap(),
            ])
        });
        assert!(out.starts_with("applied at revision"), "{out}");
    }

    /// Starts node `i`'s agent (metrics on 127.0.0.1:9101 + i).
    fn start_agent(&mut self, i: usize) {
        let n = &self.lab.nodes[i];
        let metrics: SocketAddr = format!("127.0.0.1:{}", 9101 + i).parse().unwrap();
        let args: Vec<String> = [
            "agent",
            "--node",
            &n.name,
            "--etcd",
            ETCD,
            "--underlay",
            &n.underlay.to_string(),
            "--sandbox-addr",
            &n.sandbox_addr.to_string(),
            "--host-netns",
            &n.netns,
            "--sandbox-netns",
            &n.sandbox_netns,
            "--overlay-netns",
            &n.overlay_netns,
            "--metrics",
            &metrics.to_string(),
            // The emulated guest, shared with other guests, can take tens of seconds per
            // request and a minute per sync: generous deadlines, so that slowness is not
            // mistaken for a lost node.
            "--etcd-timeout",
            "60",
            "--lease-ttl",
            "120",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = self.dir.join(format!("agent-{}.log", n.name));
        let a = Agent::start(&self.ctl, args, metrics, log);
        self.agents.push(a);
    }

    fn node_addr(&self, i: usize) -> IpAddr {
        self.lab.nodes[i].underlay
    }

    fn sandbox(&self, i: usize) -> String {
        self.lab.nodes[i].sandbox_netns.clone()
    }

    /// One HTTP request from the client to node `i`'s published port 8080.
    fn curl(&self, i: usize) -> Result<String, String> {
        let url = format!("http://{}:8080/", self.node_addr(i));
        let out = self
            .lab
            .topo
            .try_sh(&self.lab.client, &format!("curl -s --max-time 30 {url}"));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!("curl {url}: exit {:?}", out.status.code()))
        }
    }

    /// The task names `n` requests through node `i` reached.
    fn reached(&self, i: usize, n: usize) -> Result<BTreeSet<String>, String> {
        (0..n).map(|_| self.curl(i)).collect()
    }

    /// Everything worth reading when an assertion fails.
    fn diag(&self) -> String {
        let mut out = String::new();
        for (i, a) in self.agents.iter().enumerate() {
            out.push_str(&format!("--- agent {i} log\n{}\n", a.proc.log()));
        }
        for (i, n) in self.lab.nodes.iter().enumerate() {
            for (ns, cmd) in [
                (&n.sandbox_netns, "ipvsadm -Ln; iptables-save"),
                (&n.netns, "iptables-save -t nat"),
            ] {
                let o = self.lab.topo.try_sh(ns, cmd);
                out.push_str(&format!(
                    "--- node {i} [{ns}] {cmd}\n{}{}\n",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
        }
        out
    }

    /// What node `i`'s kernel holds of the mesh: IPVS (with the fwmarks) and our rules in its
    /// host and sandbox namespaces and its local tasks.
    fn dataplane(&self, i: usize) -> String {
        let n = &self.lab.nodes[i];
        let ours = |ns: &str| -> String {
            self.lab
                .sh(ns, "iptables-save")
                .lines()
                .filter(|l| l.contains("VIPMESH") || l.contains("comment vipmesh"))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let mut s = format!("ipvs:\n{}", self.lab.sh(&n.sandbox_netns, "ipvsadm -Sn"));
        s.push_str(&format!(
            "host:\n{}sandbox:\n{}",
            ours(&n.netns),
            ours(&n.sandbox_netns)
        ));
        for t in self.lab.tasks.iter().filter(|t| t.node == i) {
            s.push_str(&format!("task {}:\n{}", t.name, ours(&t.netns)));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diag());
        }
        // The agents before the lab's namespaces go (the lab's drop deletes them).
        for a in &mut self.agents {
            a.proc.kill9();
        }
        self._etcd.kill9();
    }
}

/// Background HTTP requests through node `node`'s published port until `stop`.
fn steady_traffic(
    c: &Cluster,
    node: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Result<String, String>>> {
    let client = c.lab.client.clone();
    let url = format!("http://{}:8080/", c.node_addr(node));
    std::thread::spawn(move || {
        let mut log = Vec::new();
        while !stop.load(Ordering::Relaxed) && log.len() < 5000 {
            let out = in_ns(&client, "curl")
                .args(["-s", "--max-time", "30", &url])
                .output();
            log.push(match out {
                Ok(o) if o.status.success() => {
                    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
                }
                Ok(o) => Err(format!("exit {:?}", o.status.code())),
                Err(e) => Err(e.to_string()),
            });
        }
        log
    })
}

/// Parses `vipmesh_backend_connections{…backend="ADDR",state="STATE"} N` lines.
fn backend_conns(metrics: &str) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("vipmesh_backend_connections{"))
    {
        let label = |name: &str| -> String {
            let k = format!("{name}=\"");
            let rest = &l[l.find(&k).unwrap() + k.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        };
        let v: u64 = l.rsplit(' ').next().unwrap().parse().unwrap();
        out.insert((label("backend"), label("state")), v);
    }
    out
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel and etcd; run by cargo xtask test"]
fn agents_as_processes_serve_the_mesh_and_a_kill_9_drops_nothing() {
    needs();
    let mut c = Cluster::new(2, &[0, 1]);
    c.apply_vote(&["vote.1", "vote.2"]);
    c.start_agent(0);
    c.start_agent(1);

    // Both nodes' published port reaches both tasks, through the agents alone.
    let both: BTreeSet<String> = ["vote.1".into(), "vote.2".into()].into();
    for i in 0..2 {
        eventually(
            Duration::from_secs(600),
            &format!("node{} serves both tasks", i + 1),
            || match c.reached(i, 6) {
                Ok(got) if got == both => Ok(()),
                Ok(got) => Err(format!("{got:?}")),
                Err(e) => Err(e),
            },
        );
    }
    for (i, a) in c.agents.iter().enumerate() {
        let (code, body) = a.get("/healthz").unwrap();
        assert_eq!(code, 200, "agent {i}: {body}\n{}", c.diag());
    }

    // A task change written to etcd reaches both nodes' kernels.
    let t3 = c.lab.add_task(1);
    c.lab.start_servers();
    c.apply_vote(&["vote.1", "vote.2", &t3.name]);
    for i in 0..2 {
        let sb = c.sandbox(i);
        eventually(
            Duration::from_secs(300),
            &format!("{} in node{}'s IPVS", t3.addr, i + 1),
            || {
                let o = c.lab.topo.try_sh(&sb, "ipvsadm -Ln");
                let t = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                if t.contains(&format!("{}:0", t3.addr)) {
                    Ok(())
                } else {
                    Err(t)
                }
            },
        );
    }
    let all: BTreeSet<String> = ["vote.1".into(), "vote.2".into(), t3.name.clone()].into();
    for i in 0..2 {
        eventually(
            Duration::from_secs(300),
            &format!("node{} serves all three tasks", i + 1),
            || match c.reached(i, 9) {
                Ok(got) if got == all => Ok(()),
                Ok(got) => Err(format!("{got:?}")),
                Err(e) => Err(e),
            },
        );
    }

    // Connections the test holds open through node1 (greeter, 9090 -> 9000): node1's agent
    // reports them per backend, from its sandbox's IPVS.
    let mut held = Vec::new();
    let mut per_task: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..6 {
        let mut s =
            vipmesh_testkit::vip::connect(&c.lab.client, SocketAddr::new(c.node_addr(0), 9090))
                .unwrap();
        let who = vipmesh_testkit::vip::greeting(&mut s).unwrap();
        *per_task
            .entry(c.lab.task(&who).addr.to_string())
            .or_default() += 1;
        held.push(s);
    }

    // Steady traffic through node1 while its agent is killed with SIGKILL and restarted.
    let before = c.dataplane(0);
    let plan_before = c.agents[0].get("/plan").unwrap();
    assert_eq!(plan_before, (200, String::new()), "{}", c.diag());
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = steady_traffic(&c, 0, stop.clone());
    std::thread::sleep(Duration::from_millis(500));

    let metrics = c.agents[0].get("/metrics").unwrap().1;
    let conns = backend_conns(&metrics);
    for (addr, n) in &per_task {
        let active = conns
            .get(&(addr.clone(), "active".into()))
            .copied()
            .unwrap_or_default();
        assert!(
            active >= *n,
            "{addr}: {n} connections held, metrics say {active} active:\n{metrics}"
        );
    }
    assert!(
        metrics.contains(
            "vipmesh_service_connections{network=\"ingress\",service=\"vote\",state=\"active\"}"
        ),
        "{metrics}"
    );

    c.agents[0].proc.kill9();
    std::thread::sleep(Duration::from_secs(1));
    c.agents[0].restart();
    eventually(
        Duration::from_secs(600),
        "the restarted agent synced",
        || {
            c.agents[0]
                .metric("vipmesh_agent_syncs_total{kind=\"full\"}")
                .and_then(|v| {
                    if v >= 1.0 {
                        Ok(())
                    } else {
                        Err(format!("{v}"))
                    }
                })
        },
    );
    let plan_after = c.agents[0].get("/plan").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let log = traffic.join().unwrap();
    let failed: Vec<_> = log.iter().filter(|r| r.is_err()).collect();
    assert!(
        log.len() >= 5 && failed.is_empty(),
        "{} requests, failed: {failed:?}\n{}",
        log.len(),
        c.diag()
    );
    assert_eq!(
        plan_after,
        (200, String::new()),
        "the restarted agent's next plan\n{}",
        c.diag()
    );
    assert!(c.agents[0].proc.alive(), "{}", c.diag());
    // Marks, IPVS services and our rules: byte for byte what they were.
    assert_eq!(c.dataplane(0), before, "{}", c.diag());
    let (code, body) = c.agents[0].get("/healthz").unwrap();
    assert_eq!(code, 200, "{body}");

    // The connections held across the kill still work, and are still counted.
    for s in &mut held {
        vipmesh_testkit::vip::echo(s, "still there\n").unwrap();
    }
    let metrics = c.agents[0].get("/metrics").unwrap().1;
    let conns = backend_conns(&metrics);
    let inactive: u64 = conns
        .iter()
        .filter(|((_, st), _)| st == "inactive")
        .map(|(_, v)| v)
        .sum();
    assert!(
        inactive > 0,
        "the curl loop's closed connections: {metrics}"
    );
    for (addr, n) in &per_task {
        assert!(
            conns[&(addr.clone(), "active".into())] >= *n,
            "{addr} after the restart:\n{metrics}"
        );
    }
    eprintln!(
        "{} requests during the kill -9, 0 failed; held connections per backend {per_task:?}",
        log.len()
    );
    // Close one held connection by hand: the rest go with the lab.
    let mut last = held.pop().unwrap();
    last.write_all(b"bye\n").unwrap();
    let mut buf = [0u8; 4];
    let _ = last.read(&mut buf);
}
