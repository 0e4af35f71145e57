//! The cluster lab: the [`IngressLab`] mesh driven by real processes — an etcd cluster (Debian's
//! `etcd`, 3.4 or later) and one `vipmesh-agent agent` per node — as the agent's guest test and
//! `cargo xtask demo cluster` run it.
//!
//! etcd and the agents run in a control namespace of the lab (loopback only: member `i` listens
//! on `127.0.0.<i+1>`, clients on port `2379 + 10 i`, peers on `2380 + 10 i`; nothing leaves
//! the namespaces the lab created). Each agent programs its node's namespaces by name
//! (`--host-netns`, `--sandbox-netns`, `--overlay-netns` override the cluster's ingress config
//! on that node). The lab knows nothing of `vipmesh`: it runs the agent binary it is given and
//! writes the cluster file as JSON text.
//!
//! Every process the lab starts is SIGKILLed (that PID only) and reaped when its handle drops;
//! the data directories live under a temp dir of the topology, removed with it.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use vipmesh_testkit::cluster::ClusterLab;
//!
//! let mut c = ClusterLab::new("/usr/local/bin/vipmesh-agent", 2, &[0, 1], 3);
//! c.etcd.wait_healthy(&c.ctl, Duration::from_secs(300)).unwrap();
//! c.apply("vote", &[(8080, 80)], &["vote.1", "vote.2"], Duration::from_secs(300)).unwrap();
//! c.start_agent(0);
//! c.start_agent(1);
//! let who = c.curl(0).unwrap();
//! # let _ = who;
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ingress::{INGRESS_GATEWAY, INGRESS_SUBNET, IngressLab};
use crate::within;

/// `program` inside the named network namespace `ns`, in this process's mount namespace:
/// `nsenter --net` rather than `ip netns exec`, which gives the program a mount namespace of
/// its own, so that namespaces the program creates (bind mounts under /run/netns) would exist
/// for it alone. `nsenter` execs the program, so the child's PID is the program's.
pub fn in_ns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    c
}

/// A process we started, its stdout and stderr appended to a log file; SIGKILLed (only this
/// PID) and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `c` with stdin from /dev/null and its output appended to `log`.
    ///
    /// # Panics
    /// When the log cannot be opened or the program cannot be started.
    pub fn spawn(mut c: Command, log: PathBuf) -> Proc {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let child = c
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup the log"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {c:?}: {e}"));
        Proc {
            child: Some(child),
            log,
        }
    }

    /// Its PID, while it has not been killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kill -9 of this PID, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
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

/// One etcd member.
#[derive(Debug)]
pub struct EtcdMember {
    /// Its name (`m0`, …).
    pub name: String,
    /// Its client URL.
    pub client_url: String,
    /// Its peer URL.
    pub peer_url: String,
    /// The process (killed on drop).
    pub proc: Proc,
}

/// An etcd cluster of one or more members in one namespace.
#[derive(Debug)]
pub struct Etcd {
    /// The members, in order (a killed member stays listed, without a process).
    pub members: Vec<EtcdMember>,
}

impl Etcd {
    /// Starts `n` members in namespace `ns` (member `i` on `127.0.0.<i+1>`, client port
    /// `2379 + 10 i`, peer port `2380 + 10 i`), each with its data directory and log under
    /// `dir`. Does not wait: see [`Etcd::wait_healthy`].
    ///
    /// The election timeouts are generous (heartbeat 500 ms, election 5 s), so that an
    /// emulated guest's slowness does not look like a lost leader.
    ///
    /// # Panics
    /// When a member cannot be started.
    pub fn start(ns: &str, n: usize, dir: &Path) -> Etcd {
        let urls: Vec<(String, String)> = (0..n)
            .map(|i| {
                let host = format!("127.0.0.{}", i + 1);
                (
                    format!("http://{host}:{}", 2379 + 10 * i),
                    format!("http://{host}:{}", 2380 + 10 * i),
                )
            })
            .collect();
        let initial = urls
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}={peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let members = urls
            .into_iter()
            .enumerate()
            .map(|(i, (client_url, peer_url))| {
                let name = format!("m{i}");
                let mut c = in_ns(ns, "etcd");
                c.args(["--name", &name, "--data-dir"])
                    .arg(dir.join(format!("etcd-{name}")))
                    .args(["--listen-client-urls", &client_url])
                    .args(["--advertise-client-urls", &client_url])
                    .args(["--listen-peer-urls", &peer_url])
                    .args(["--initial-advertise-peer-urls", &peer_url])
                    .args(["--initial-cluster", &initial])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--heartbeat-interval", "500", "--election-timeout", "5000"]);
                let proc = Proc::spawn(c, dir.join(format!("etcd-{name}.log")));
                EtcdMember {
                    name,
                    client_url,
                    peer_url,
                    proc,
                }
            })
            .collect();
        Etcd { members }
    }

    /// Every member's client URL (the killed ones too, as a client configured once has them).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// GET or POST (with a JSON body) `path` of member `i`'s client URL, from `ns`.
    fn request(
        &self,
        ns: &str,
        i: usize,
        path: &str,
        post: Option<&str>,
    ) -> Result<String, String> {
        let url = format!("{}{path}", self.members[i].client_url);
        let mut c = in_ns(ns, "curl");
        c.args(["-s", "--max-time", "60"]);
        if let Some(body) = post {
            c.args(["-X", "POST", "-d", body]);
        }
        let out = c.arg(&url).output().map_err(|e| format!("curl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("curl {url}: exit {:?}", out.status.code()))
        }
    }

    /// Whether member `i` reports itself healthy (`/health`: it has a leader and a quorum
    /// read succeeds).
    ///
    /// # Errors
    /// Its answer, or why there was none.
    pub fn healthy(&self, ns: &str, i: usize) -> Result<(), String> {
        let body = self.request(ns, i, "/health", None)?;
        if body.replace(' ', "").contains("\"health\":\"true\"") {
            Ok(())
        } else {
            Err(format!("{}: {body}", self.members[i].name))
        }
    }

    /// Waits (bounded) until every member that still runs is healthy.
    ///
    /// # Errors
    /// The first member not healthy when the bound ran out, with its answer.
    pub fn wait_healthy(&mut self, ns: &str, timeout: Duration) -> Result<(), String> {
        let live: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].proc.alive())
            .collect();
        if live.is_empty() {
            return Err("no etcd member runs".into());
        }
        within(timeout, "every running etcd member healthy", || {
            live.iter().try_for_each(|i| self.healthy(ns, *i))
        })
    }

    /// The index of the member that is the raft leader, asked from member `via`
    /// (`/v3/maintenance/status`: its own id and the leader's).
    ///
    /// # Errors
    /// No answer, or an answer without both ids.
    pub fn leader(&self, ns: &str, via: usize) -> Result<usize, String> {
        let field = |body: &str, key: &str| -> Option<String> {
            let k = format!("\"{key}\":\"");
            let rest = &body[body.find(&k)? + k.len()..];
            Some(rest[..rest.find('"')?].to_string())
        };
        let status = |i: usize| -> Result<(String, String), String> {
            let body = self.request(ns, i, "/v3/maintenance/status", Some("{}"))?;
            match (field(&body, "member_id"), field(&body, "leader")) {
                (Some(id), Some(leader)) => Ok((id, leader)),
                _ => Err(format!(
                    "{}: no member_id/leader in {body}",
                    self.members[i].name
                )),
            }
        };
        let (_, leader) = status(via)?;
        for i in 0..self.members.len() {
            if let Ok((id, _)) = status(i)
                && id == leader
            {
                return Ok(i);
            }
        }
        Err(format!("no member has the leader's id {leader}"))
    }

    /// kill -9 of member `i`'s PID (returns it, `None` if it was not running).
    pub fn kill9(&mut self, i: usize) -> Option<u32> {
        let pid = self.members[i].proc.pid();
        self.members[i].proc.kill9();
        pid
    }

    /// Every member's log.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- etcd {} log\n{}\n", m.name, m.proc.log()))
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.proc.kill9();
        }
    }
}

/// One node's agent process: its command line (to restart it the same way) and its metrics
/// listener.
#[derive(Debug)]
pub struct AgentProc {
    /// The process (killed on drop).
    pub proc: Proc,
    bin: String,
    args: Vec<String>,
    ns: String,
    log_filter: String,
    /// Where it serves /metrics, /healthz and /plan (in the control namespace).
    pub metrics: SocketAddr,
}

impl AgentProc {
    fn command(&self) -> Command {
        let mut c = in_ns(&self.ns, &self.bin);
        c.args(&self.args).env("RUST_LOG", &self.log_filter);
        c
    }

    /// kill -9 of its PID (returns it), then the same command again, its log appended to the
    /// same file after a marker line.
    ///
    /// # Panics
    /// When it cannot be started again.
    pub fn restart(&mut self) -> Option<u32> {
        let pid = self.proc.pid();
        self.proc.kill9();
        let log = self.proc.log_path().to_path_buf();
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&log) {
            let _ = f.write_all(b"\n===== restarted =====\n");
        }
        self.proc = Proc::spawn(self.command(), log);
        pid
    }

    /// GET `path` from its metrics listener: (status code, body).
    ///
    /// # Errors
    /// When curl fails (no answer within 120 s, refused).
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        let out = in_ns(&self.ns, "curl")
            .args(["-s", "--max-time", "120", "-o", "-", "-w", "\n%{http_code}"])
            .arg(format!("http://{}{path}", self.metrics))
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
    ///
    /// # Errors
    /// No answer, not 200, or no such line.
    pub fn metric(&self, series: &str) -> Result<f64, String> {
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

/// The whole cluster lab: the mesh, the control namespace, etcd and the agents.
#[derive(Debug)]
pub struct ClusterLab {
    /// The ingress-mesh lab (nodes, tasks, the client).
    pub lab: IngressLab,
    /// The control namespace (etcd, the agents, the CLI).
    pub ctl: String,
    /// The agents started so far, by start order.
    pub agents: Vec<AgentProc>,
    /// The etcd cluster.
    pub etcd: Etcd,
    /// The lab's temp dir (etcd data, logs, cluster files).
    pub dir: PathBuf,
    bin: String,
}

/// The agents' log filter (their logs are in [`ClusterLab::diag`]).
pub const AGENT_LOG: &str = "info,vipmesh_agent=debug";

impl ClusterLab {
    /// `nodes` nodes, one task (servers started) on each node index in `tasks_on`, and an
    /// etcd cluster of `members` members started (not yet awaited: [`Etcd::wait_healthy`]);
    /// `bin` is the `vipmesh-agent` executable.
    ///
    /// # Panics
    /// When the topology or a member cannot be set up.
    pub fn new(bin: &str, nodes: usize, tasks_on: &[usize], members: usize) -> ClusterLab {
        let mut lab = IngressLab::new(nodes, tasks_on);
        lab.start_servers();
        let ctl = lab.topo.ns("ctl");
        let dir = lab.topo.temp_dir("cluster");
        let etcd = Etcd::start(&ctl, members, &dir);
        ClusterLab {
            lab,
            ctl,
            agents: Vec::new(),
            etcd,
            dir,
            bin: bin.to_string(),
        }
    }

    /// The etcd endpoints, comma-separated (as `--etcd` takes them).
    pub fn endpoints(&self) -> String {
        self.etcd.endpoints().join(",")
    }

    /// Runs `vipmesh-agent ARGS` in the control namespace; stdout, or the whole output.
    ///
    /// # Errors
    /// It could not run or exited non-zero (the message has its status and output).
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = in_ns(&self.ctl, &self.bin)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bin))?;
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

    /// `cluster apply` of one published service `name` (`(published, target)` TCP ports) with
    /// the lab's tasks named `tasks`, retried until it succeeds or `timeout` runs out (the
    /// emulated guest is slow, and an apply that timed out after its transaction went through
    /// writes nothing the second time). Returns its output (`applied at revision N`).
    ///
    /// # Errors
    /// The last failure when `timeout` ran out.
    ///
    /// # Panics
    /// On a task name the lab does not have, or when the file cannot be written.
    pub fn apply(
        &self,
        name: &str,
        ports: &[(u16, u16)],
        tasks: &[&str],
        timeout: Duration,
    ) -> Result<String, String> {
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
        let ports: Vec<String> = ports
            .iter()
            .map(|(p, t)| format!(r#"{{"protocol": "tcp", "published": {p}, "target": {t}}}"#))
            .collect();
        let file = format!(
            r#"{{"ingress": {{
                "host_netns": "/proc/1/ns/net", "subnet": "{INGRESS_SUBNET}",
                "gateway": "{INGRESS_GATEWAY}", "vni": 4096, "mtu": 1450,
                "services": [{{"name": "{name}", "ports": [{}], "tasks": [{}]}}]}}}}"#,
            ports.join(", "),
            tasks.join(", ")
        );
        let path = self.dir.join("cluster.json");
        std::fs::write(&path, file)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        let endpoints = self.endpoints();
        let path = path.to_string_lossy().into_owned();
        let out = within(timeout, "cluster apply", || {
            self.cli(&[
                "cluster",
                "apply",
                "--etcd",
                &endpoints,
                "--etcd-timeout",
                "60",
                "--state",
                &path,
            ])
        })?;
        if out.starts_with("applied at revision") {
            Ok(out)
        } else {
            Err(format!("cluster apply printed: {out}"))
        }
    }

    /// Starts node `i`'s agent (metrics on `127.0.0.1:<9101 + i>`) against every etcd member.
    /// Generous deadlines (60 s per etcd request, a lease of 120 s): the emulated guest,
    /// shared with other guests, can take tens of seconds per request and a minute per sync,
    /// and slowness must not be mistaken for a lost node.
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn start_agent(&mut self, i: usize) {
        let n = &self.lab.nodes[i];
        let metrics = SocketAddr::from(([127, 0, 0, 1], 9101 + i as u16));
        let args: Vec<String> = [
            "agent",
            "--node",
            &n.name,
            "--etcd",
            &self.endpoints(),
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
            "--etcd-timeout",
            "60",
            "--lease-ttl",
            "120",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = self.dir.join(format!("agent-{}.log", n.name));
        let mut a = AgentProc {
            proc: Proc {
                child: None,
                log: log.clone(),
            },
            bin: self.bin.clone(),
            args,
            ns: self.ctl.clone(),
            log_filter: AGENT_LOG.into(),
            metrics,
        };
        a.proc = Proc::spawn(a.command(), log);
        self.agents.push(a);
    }

    /// The URL of the published `port` on node `i`.
    pub fn url(&self, i: usize, port: u16) -> String {
        format!("http://{}:{port}/", self.lab.nodes[i].underlay)
    }

    /// One HTTP request from the client to node `i`'s published port 8080: the task's name.
    ///
    /// # Errors
    /// curl failed (30 s per request).
    pub fn curl(&self, i: usize) -> Result<String, String> {
        request(&self.lab.client, &self.url(i, 8080))
    }

    /// The task names `n` requests through node `i` reached.
    ///
    /// # Errors
    /// The first failed request.
    pub fn reached(
        &self,
        i: usize,
        n: usize,
    ) -> Result<std::collections::BTreeSet<String>, String> {
        (0..n).map(|_| self.curl(i)).collect()
    }

    /// `ipvsadm -Ln` in node `i`'s ingress sandbox (the output, or the error).
    pub fn ipvs(&self, i: usize) -> String {
        let o = self
            .lab
            .topo
            .try_sh(&self.lab.nodes[i].sandbox_netns, "ipvsadm -Ln");
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    /// Everything worth reading when a check fails: the agents' logs, each node's IPVS and
    /// rules.
    pub fn diag(&self) -> String {
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
    pub fn dataplane(&self, i: usize) -> String {
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

impl Drop for ClusterLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diag());
        }
        // The agents and etcd before the lab's namespaces go (the lab's drop deletes them).
        for a in &mut self.agents {
            a.proc.kill9();
        }
        for m in &mut self.etcd.members {
            m.proc.kill9();
        }
    }
}

/// One HTTP request with curl from namespace `ns` (30 s at most): the body, trimmed.
///
/// # Errors
/// curl could not run or failed (its exit status).
pub fn request(ns: &str, url: &str) -> Result<String, String> {
    let out = in_ns(ns, "curl")
        .args(["-s", "--max-time", "30", url])
        .output()
        .map_err(|e| format!("curl {url}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("curl {url}: exit {:?}", out.status.code()))
    }
}

/// One request of [`Traffic`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it was sent.
    pub at: Instant,
    /// Where to.
    pub url: String,
    /// The body (the task's name), or why it failed.
    pub result: Result<String, String>,
}

/// Steady background HTTP requests from one namespace, round robin over some URLs, one at a
/// time, until stopped; every result is kept.
#[derive(Debug)]
pub struct Traffic {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Outcome>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    /// Starts requests from `ns` to `urls` in turn (at most `limit` of them).
    pub fn start(ns: &str, urls: &[String], limit: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ns, urls) = (ns.to_string(), urls.to_vec());
        let thread = {
            let (stop, log) = (stop.clone(), log.clone());
            std::thread::spawn(move || {
                for url in urls.iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let at = Instant::now();
                    let result = request(&ns, url);
                    let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                    l.push(Outcome {
                        at,
                        url: url.clone(),
                        result,
                    });
                    if l.len() >= limit {
                        break;
                    }
                }
            })
        };
        Traffic {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// (requests so far, failed so far).
    pub fn counts(&self) -> (usize, usize) {
        let l = self.log.lock().unwrap_or_else(|p| p.into_inner());
        (l.len(), l.iter().filter(|o| o.result.is_err()).count())
    }

    /// Stops after the request under way; every request, in order.
    pub fn stop(mut self) -> Vec<Outcome> {
        self.halt();
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.halt();
    }
}
