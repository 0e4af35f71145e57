//! Topology builders for privileged tests and demos: a fresh network namespace per test, and a
//! small topology builder. Both shell out to `ip` from iproute2
//! ([`ip-netns(8)`](https://man7.org/linux/man-pages/man8/ip-netns.8.html)) and delete what
//! they made on drop, also when the test panics.
//!
//! These helpers fail loudly: a setup step that fails panics with the command and its stderr,
//! since a test cannot go on without its topology.
//!
//! # Examples
//!
//! ```no_run
//! use vipmesh_testkit::{TestNetns, Topology};
//!
//! // A fresh namespace, entered on this thread until `t` drops.
//! let t = TestNetns::new();
//! assert!(t.sh("ip -o link").contains("lo"));
//!
//! // Two namespaces on a bridge that lives in its own "switch" namespace.
//! let mut topo = Topology::new("doc");
//! let sw = topo.bridge_ns("sw");
//! let a = topo.ns("a");
//! let b = topo.ns("b");
//! topo.attach(&sw, &a, "eth0", "10.0.0.1/24");
//! topo.attach(&sw, &b, "eth0", "10.0.0.2/24");
//! topo.sh(&a, "ping -c1 -W1 10.0.0.2");
//! ```

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use vipmesh_netns::{Netns, NetnsGuard};

use crate::{Requirement, require};

static SEQ: AtomicU32 = AtomicU32::new(0);

pub(crate) fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{n}", std::process::id())
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// Runs `sh -ec script` inside the named namespace `ns` (a multi-line script stops at its
/// first failing line) and returns its stdout; panics naming the namespace and the script,
/// with the output, when it fails.
pub fn sh_in(ns: &str, script: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-ec", script])
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip netns exec: {e}"));
    assert!(
        out.status.success(),
        "in {ns}: {script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ns_sh(ns: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "sh", "-c"]);
    c
}

fn add_netns(name: &str) {
    ip(&["netns", "add", name]);
    ip(&["-n", name, "link", "set", "lo", "up"]);
}

fn del_netns(name: &str) {
    // Best effort: this runs in Drop, possibly while unwinding.
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// A fresh, named network namespace (loopback up), entered on the calling thread.
///
/// Dropping it switches the thread back and deletes the namespace with everything in it.
/// It is `!Send`, like the [`NetnsGuard`] inside it.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
    netns: Netns,
    guard: Option<NetnsGuard>,
}

impl TestNetns {
    /// Creates and enters a fresh namespace named `vmt<pid>-<n>`.
    ///
    /// # Panics
    /// When the namespace cannot be created or entered (not root, no iproute2: see
    /// [`Requirement::Netns`]).
    pub fn new() -> TestNetns {
        require(&[Requirement::Netns]);
        let name = unique("vmt");
        add_netns(&name);
        let netns = Netns::named(&name).expect("open the new netns");
        let guard = netns.enter().expect("enter the new netns");
        TestNetns {
            name,
            netns,
            guard: Some(guard),
        }
    }

    /// The namespace's name under `/run/netns`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A handle on the namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Runs `sh -c cmd` inside the namespace and returns its stdout.
    ///
    /// # Panics
    /// When the command fails; the message has its stderr.
    pub fn sh(&self, cmd: &str) -> String {
        String::from_utf8_lossy(&run(ns_sh(&self.name).arg(cmd)).stdout).into_owned()
    }

    /// Runs `sh -c cmd` inside the namespace and returns its whole output, success or not.
    pub fn try_sh(&self, cmd: &str) -> Output {
        ns_sh(&self.name)
            .arg(cmd)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec: {e}"))
    }
}

impl Default for TestNetns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        drop(self.guard.take());
        del_netns(&self.name);
    }
}

/// A set of namespaces, bridges, veths and processes, all deleted on drop.
///
/// Nothing is created in the caller's own namespace: bridges live in a "switch" namespace.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    veth_seq: u32,
    dirs: Vec<PathBuf>,
}

impl Topology {
    /// A new, empty topology. Namespace names become `<prefix><pid>-<n>-<name>`.
    ///
    /// # Panics
    /// When privileged tests cannot run here (see [`Requirement::Netns`]).
    pub fn new(prefix: &str) -> Topology {
        require(&[Requirement::Netns]);
        Topology {
            prefix: unique(prefix),
            namespaces: Vec::new(),
            children: Vec::new(),
            veth_seq: 0,
            dirs: Vec::new(),
        }
    }

    /// Creates a namespace (loopback up) and returns its full name.
    pub fn ns(&mut self, name: &str) -> String {
        let full = format!("{}-{name}", self.prefix);
        add_netns(&full);
        self.namespaces.push(full.clone());
        full
    }

    /// Creates a namespace holding an up bridge `br0`, and returns its full name.
    pub fn bridge_ns(&mut self, name: &str) -> String {
        let full = self.ns(name);
        ip(&["-n", &full, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &full, "link", "set", "br0", "up"]);
        full
    }

    /// Connects namespace `ns` to the bridge `br0` of `switch` with a veth whose end in `ns` is
    /// `ifname`, gives it `cidr` and brings it up. Returns the switch-side name.
    pub fn attach(&mut self, switch: &str, ns: &str, ifname: &str, cidr: &str) -> String {
        self.veth_seq += 1;
        let port = format!("p{}", self.veth_seq);
        ip(&[
            "link", "add", &port, "netns", switch, "type", "veth", "peer", "name", ifname, "netns",
            ns,
        ]);
        ip(&["-n", switch, "link", "set", &port, "master", "br0", "up"]);
        self.addr(ns, ifname, cidr);
        ip(&["-n", ns, "link", "set", ifname, "up"]);
        port
    }

    /// Creates a veth pair between two namespaces and brings both ends up.
    pub fn veth(&mut self, a: (&str, &str), b: (&str, &str)) {
        ip(&[
            "link", "add", a.1, "netns", a.0, "type", "veth", "peer", "name", b.1, "netns", b.0,
        ]);
        ip(&["-n", a.0, "link", "set", a.1, "up"]);
        ip(&["-n", b.0, "link", "set", b.1, "up"]);
    }

    /// Adds an address (`10.0.0.7/24`, `fd00::7/64`) to an interface in a namespace.
    pub fn addr(&mut self, ns: &str, ifname: &str, cidr: &str) {
        let mut args = vec!["-n", ns];
        if cidr.contains(':') {
            args.push("-6");
        }
        args.extend(["addr", "add", cidr, "dev", ifname]);
        if cidr.contains(':') {
            args.push("nodad");
        }
        ip(&args);
    }

    /// Runs `sh -c cmd` inside `ns` and returns its stdout.
    ///
    /// # Panics
    /// When the command fails; the message has its stderr.
    pub fn sh(&self, ns: &str, cmd: &str) -> String {
        String::from_utf8_lossy(&run(ns_sh(ns).arg(cmd)).stdout).into_owned()
    }

    /// Runs `sh -c cmd` inside `ns` and returns its whole output, success or not.
    pub fn try_sh(&self, ns: &str, cmd: &str) -> Output {
        ns_sh(ns)
            .arg(cmd)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec: {e}"))
    }

    /// Starts `cmd` in the background inside `ns`; it is killed when the topology drops.
    /// Returns its PID.
    pub fn spawn(&mut self, ns: &str, cmd: &str) -> u32 {
        let child = ns_sh(ns)
            .arg(format!("exec {cmd}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?} in {ns}: {e}"));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// A fresh directory `<tmp>/<prefix><pid>-<n>-<name>` (for a server's files); removed with
    /// everything in it when the topology drops. Namespaces share the file system, so any
    /// process of the topology can use it.
    ///
    /// # Panics
    /// When the directory cannot be created.
    pub fn temp_dir(&mut self, name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("{}-{name}", self.prefix));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        self.dirs.push(dir.clone());
        dir
    }

    /// The namespaces made so far, in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            del_netns(ns);
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
