//! The XDP namespace lab (feature `xdp`) for end-to-end tests, the demo and the benchmark: a client, a node and
//! tasks, each in its own network namespace, with a small line server in every task.
//!
//! ```text
//! client  c0 10.50.0.2/24 ── n0 10.50.0.1/24  node (ip_forward)  n<i> 10.51.<i>.1/24 ── eth0 10.51.<i>.2/24  task t<i>
//! ```
//!
//! The task server answers `who\n` with `task=t<i> peer=<ip>:<port>\n` (any number of times
//! on one connection), `big\n` with [`BIG_LEN`] deterministic bytes, then closes, and an HTTP
//! `GET` with the same line as a one-shot HTTP/1.1 response (for wrk).
//! Everything is deleted on drop (namespaces, servers), also on panic.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use vipmesh_netns::Netns;

use vipmesh_xdp::{
    AttachMode, Backend, Config, Egress, FastPath, ForwardMode, LoadOptions, MacAddr, Program,
    Proto, ServiceKey, ServiceSpec, TableSize,
};

use crate::Topology;

/// Size of the `big` answer: 4 MiB.
pub const BIG_LEN: usize = 4 << 20;
/// The node's uplink address (NAT mode publishes on it, like Swarm's ingress).
pub const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 1);
/// The client's address.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 2);
/// The VIP of encap mode (on every task's `lo`, not owned by the node).
pub const DSR_VIP: Ipv4Addr = Ipv4Addr::new(10, 50, 100, 1);
/// Published port.
pub const PUBLISHED: u16 = 8080;
/// Target port the tasks listen on.
pub const TARGET: u16 = 80;

/// The deterministic content of the `big` answer.
pub fn big_payload() -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..BIG_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One task.
#[derive(Debug, Clone)]
pub struct Task {
    /// `t1`, `t2`, ...
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its address.
    pub addr: Ipv4Addr,
    /// The node-side veth (`n1`, ...).
    pub node_if: String,
    /// Its ifindex in the node namespace.
    pub node_ifindex: u32,
    /// Its MAC.
    pub node_mac: MacAddr,
    /// The task's `eth0` MAC.
    pub task_mac: MacAddr,
}

/// The lab.
#[derive(Debug)]
pub struct Lab {
    /// The namespaces (dropped last).
    pub topo: Topology,
    /// Client namespace.
    pub client: String,
    /// Node namespace.
    pub node: String,
    /// Tasks.
    pub tasks: Vec<Task>,
    /// The loaded fast path, when [`Lab::start_xdp`] ran.
    pub fp: Option<FastPath>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

fn in_ns<T>(ns: &str, f: impl FnOnce() -> T) -> T {
    let netns = Netns::named(ns).expect("open netns");
    let _g = netns.enter().expect("enter netns");
    f()
}

fn serve(task: String, ns: String, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let netns = Netns::named(&ns).expect("open task netns");
        let _g = netns.enter().expect("enter task netns");
        let l = TcpListener::bind(("0.0.0.0", TARGET)).expect("bind task server");
        l.set_nonblocking(true).expect("nonblocking");
        tx.send(()).ok();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, peer)) => {
                    let task = task.clone();
                    std::thread::spawn(move || handle(s, peer, &task));
                }
                Err(_) => {
                    // Sleep until a connection is pending (or 100 ms, to notice `stop`).
                    use std::os::fd::AsFd as _;
                    vipmesh_xdp::sys::wait_readable(l.as_fd(), 100);
                }
            }
        }
    });
    rx.recv().expect("task server started");
    h
}

fn handle(s: TcpStream, peer: SocketAddr, task: &str) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        match line.trim() {
            "who" => {
                // One write, one segment.
                if w.write_all(format!("task={task} peer={peer}\n").as_bytes())
                    .is_err()
                {
                    return;
                }
            }
            "big" => {
                let _ = w.write_all(&big_payload());
                return;
            }
            "put" => {
                // BIG_LEN bytes follow; answer whether they are big_payload().
                let mut got = vec![0u8; BIG_LEN];
                let ok = r.read_exact(&mut got).is_ok() && got == big_payload();
                let _ = w.write_all(if ok { b"ok\n" } else { b"bad\n" });
                return;
            }
            l if l.starts_with("GET ") => {
                // Minimal HTTP/1.x for wrk: skip the headers, answer, close.
                let mut h = String::new();
                while r.read_line(&mut h).map(|n| n > 0).unwrap_or(false) && h != "\r\n" {
                    h.clear();
                }
                let body = format!("task={task} peer={peer}\n");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = w.write_all(resp.as_bytes());
                return;
            }
            _ => return,
        }
        line.clear();
    }
}

impl Lab {
    /// Builds the namespaces, links, addresses and task servers for `n` tasks.
    pub fn new(prefix: &str, n: usize) -> Lab {
        let mut topo = Topology::new(prefix);
        let client = topo.ns("client");
        let node = topo.ns("node");
        topo.veth((&client, "c0"), (&node, "n0"));
        topo.addr(&client, "c0", "10.50.0.2/24");
        topo.addr(&node, "n0", "10.50.0.1/24");
        topo.sh(
            &client,
            "ip route add default via 10.50.0.1 && ethtool -K c0 tx off >/dev/null",
        );
        topo.sh(
            &node,
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0",
        );
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let mut servers = Vec::new();
        for i in 1..=n {
            let name = format!("t{i}");
            let ns = topo.ns(&name);
            let node_if = format!("n{i}");
            topo.veth((&node, &node_if), (&ns, "eth0"));
            topo.addr(&node, &node_if, &format!("10.51.{i}.1/24"));
            topo.addr(&ns, "eth0", &format!("10.51.{i}.2/24"));
            // Default MTU (1500) on the node-task links: encapsulated segments fit because the
            // fast path clamps the MSS of SYNs (Config::encap_mtu).
            topo.sh(
                &ns,
                "ip route add default via 10.51.IDX.1 && \
                 sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
                 net.ipv4.conf.eth0.rp_filter=0"
                    .replace("IDX", &i.to_string())
                    .as_str(),
            );
            let node_ifindex = topo
                .sh(&node, &format!("cat /sys/class/net/{node_if}/ifindex"))
                .trim()
                .parse()
                .expect("ifindex");
            let node_mac = topo
                .sh(&node, &format!("cat /sys/class/net/{node_if}/address"))
                .parse()
                .expect("mac");
            let task_mac = topo
                .sh(&ns, "cat /sys/class/net/eth0/address")
                .parse()
                .expect("mac");
            servers.push(serve(name.clone(), ns.clone(), stop.clone()));
            tasks.push(Task {
                name,
                ns,
                addr: Ipv4Addr::new(10, 51, i as u8, 2),
                node_if,
                node_ifindex,
                node_mac,
                task_mac,
            });
        }
        Lab {
            topo,
            client,
            node,
            tasks,
            fp: None,
            stop,
            servers,
        }
    }

    /// The service this lab publishes in `mode`, over `tasks` (indices into [`Lab::tasks`]).
    pub fn spec(&self, mode: ForwardMode, tasks: &[usize]) -> ServiceSpec {
        self.spec_ports(mode, tasks, PUBLISHED, TARGET)
    }

    /// Like [`Lab::spec`] with other ports.
    pub fn spec_ports(
        &self,
        mode: ForwardMode,
        tasks: &[usize],
        published: u16,
        target: u16,
    ) -> ServiceSpec {
        let (addr, port) = match mode {
            ForwardMode::Nat => (NODE_ADDR, target),
            ForwardMode::Encap => (DSR_VIP, 0),
        };
        ServiceSpec {
            key: ServiceKey {
                addr: IpAddr::V4(addr),
                port: published,
                proto: Proto::Tcp,
            },
            mode,
            backends: tasks
                .iter()
                .map(|&i| {
                    let t = &self.tasks[i];
                    Backend {
                        addr: IpAddr::V4(t.addr),
                        port,
                        weight: 1,
                        egress: Egress {
                            ifindex: t.node_ifindex,
                            src_mac: t.node_mac,
                            dst_mac: t.task_mac,
                        },
                    }
                })
                .collect(),
            table_size: TableSize::new(251).expect("prime"),
        }
    }

    /// Loads the fast path, attaches it (XDP on `n0`, and per task: `tc_rev` on `n<i>` for
    /// NAT, `tc_decap`/`tc_egress` plus the VIP on `lo` for encap, `xdp_pass` on the task's
    /// `eth0` for NAPI, or GRO instead when `VIPMESH_LAB_NAPI_GRO` is set) and publishes the service over every task. Returns the XDP attachment.
    pub fn start_xdp(&mut self, mode: ForwardMode) -> vipmesh_xdp::Attachment {
        let config = Config {
            node_v4: Some(NODE_ADDR),
            ..Config::default()
        };
        let mut fp = FastPath::load(&LoadOptions {
            config,
            ..LoadOptions::default()
        })
        .expect("load");
        let att = in_ns(&self.node, || {
            let att = fp
                .attach("n0", Program::XdpLb, AttachMode::Auto)
                .expect("attach xdp_lb");
            if mode == ForwardMode::Nat {
                for t in &self.tasks {
                    fp.attach(&t.node_if, Program::TcRev, AttachMode::Auto)
                        .expect("attach tc_rev");
                }
            }
            att
        });
        for t in &self.tasks {
            if std::env::var("VIPMESH_LAB_NAPI_GRO").is_ok_and(|v| !v.is_empty()) {
                // NAPI for the redirect target through GRO instead of an XDP program.
                self.topo.sh(&t.ns, "ethtool -K eth0 gro on >/dev/null");
            }
            in_ns(&t.ns, || {
                if !std::env::var("VIPMESH_LAB_NAPI_GRO").is_ok_and(|v| !v.is_empty()) {
                    fp.attach("eth0", Program::XdpPass, AttachMode::Auto)
                        .expect("attach xdp_pass");
                }
                if mode == ForwardMode::Encap {
                    fp.attach("eth0", Program::TcDecap, AttachMode::Auto)
                        .expect("tc_decap");
                    fp.attach("eth0", Program::TcEgress, AttachMode::Auto)
                        .expect("tc_egress");
                }
            });
            if mode == ForwardMode::Encap {
                self.topo
                    .sh(&t.ns, &format!("ip addr add {DSR_VIP}/32 dev lo"));
            }
        }
        let all: Vec<usize> = (0..self.tasks.len()).collect();
        let spec = self.spec(mode, &all);
        self.fp = Some(fp);
        self.upsert(&spec).expect("upsert service");
        if mode == ForwardMode::Encap {
            let fp = self.fp.as_mut().expect("loaded");
            fp.dataplane()
                .set_task_port(spec.key, TARGET)
                .expect("task port");
        }
        att
    }

    /// Programs `spec` from inside the node namespace (egress ifindexes are resolved in the
    /// namespace of the calling thread).
    pub fn upsert(
        &mut self,
        spec: &ServiceSpec,
    ) -> Result<vipmesh_xdp::ServiceReport, vipmesh_xdp::Error> {
        let fp = self.fp.as_mut().expect("start_xdp first");
        in_ns(&self.node, || fp.dataplane().upsert_service(spec))
    }

    /// Publishes the same service the Swarm way instead: iptables DNAT (spread with
    /// `statistic --mode nth`) plus MASQUERADE on the node, in `VIPMESH-` chains.
    pub fn start_iptables(&mut self) {
        self.start_iptables_ports(PUBLISHED, TARGET);
    }

    /// Like [`Lab::start_iptables`] with other ports.
    pub fn start_iptables_ports(&mut self, published: u16, target: u16) {
        let n = self.tasks.len();
        let mut rules = String::from(
            "iptables -w -t nat -N VIPMESH-LAB-DNAT && iptables -w -t nat -N VIPMESH-LAB-SNAT && \
             iptables -w -t nat -A PREROUTING -m comment --comment vipmesh -j VIPMESH-LAB-DNAT && \
             iptables -w -t nat -A POSTROUTING -m comment --comment vipmesh -j VIPMESH-LAB-SNAT",
        );
        for (i, t) in self.tasks.iter().enumerate() {
            let every = n - i;
            rules.push_str(&format!(
                " && iptables -w -t nat -A VIPMESH-LAB-DNAT -d {NODE_ADDR} -p tcp --dport {published} \
                 -m statistic --mode nth --every {every} --packet 0 -j DNAT --to-destination {}:{target}",
                t.addr
            ));
        }
        rules.push_str(" && iptables -w -t nat -A VIPMESH-LAB-SNAT -d 10.51.0.0/16 -j MASQUERADE");
        self.topo.sh(&self.node, &rules);
    }

    /// Removes what [`Lab::start_iptables`] added.
    pub fn stop_iptables(&mut self) {
        self.topo.sh(
            &self.node,
            "iptables -w -t nat -D PREROUTING -m comment --comment vipmesh -j VIPMESH-LAB-DNAT; \
             iptables -w -t nat -D POSTROUTING -m comment --comment vipmesh -j VIPMESH-LAB-SNAT; \
             iptables -w -t nat -F VIPMESH-LAB-DNAT; iptables -w -t nat -X VIPMESH-LAB-DNAT; \
             iptables -w -t nat -F VIPMESH-LAB-SNAT; iptables -w -t nat -X VIPMESH-LAB-SNAT; true",
        );
    }

    /// Connects from the client namespace.
    pub fn connect(&self, addr: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
        in_ns(&self.client, || {
            let s = TcpStream::connect_timeout(
                &SocketAddr::from((addr, port)),
                Duration::from_secs(5),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.set_write_timeout(Some(Duration::from_secs(10)))?;
            Ok(s)
        })
    }

    /// Asks `who` on an open connection: returns (task name, peer the task saw).
    pub fn who_on(s: &mut TcpStream) -> std::io::Result<(String, String)> {
        s.write_all(b"who\n")?;
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while s.read(&mut byte)? == 1 && byte[0] != b'\n' {
            buf.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&buf).into_owned();
        let mut task = String::new();
        let mut peer = String::new();
        for part in line.split_whitespace() {
            if let Some(t) = part.strip_prefix("task=") {
                task = t.to_owned();
            }
            if let Some(p) = part.strip_prefix("peer=") {
                peer = p.to_owned();
            }
        }
        if task.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, line));
        }
        Ok((task, peer))
    }

    /// One connection, one `who`.
    pub fn who(&self, addr: Ipv4Addr, port: u16) -> std::io::Result<(String, String)> {
        let mut s = self.connect(addr, port)?;
        Lab::who_on(&mut s)
    }

    /// Downloads the `big` answer.
    pub fn big(&self, addr: Ipv4Addr, port: u16) -> std::io::Result<Vec<u8>> {
        let mut s = self.connect(addr, port)?;
        s.write_all(b"big\n")?;
        let mut out = Vec::with_capacity(BIG_LEN);
        s.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Sends `big_payload()` (4 MiB) to `addr:port` from the client; `Ok(true)` when the task
    /// received it intact. Full-size segments from the client: in encap mode they only fit the
    /// task link's MTU once the MSS is clamped.
    pub fn upload(&self, addr: Ipv4Addr, port: u16) -> std::io::Result<bool> {
        let mut s = self.connect(addr, port)?;
        s.write_all(b"put\n")?;
        s.write_all(&big_payload())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out == b"ok\n")
    }

    /// Runs `sh -c cmd` in `ns`.
    pub fn sh(&self, ns: &str, cmd: &str) -> String {
        self.topo.sh(ns, cmd)
    }
}

/// md5 of bytes, via `md5sum` (coreutils).
pub fn md5(data: &[u8]) -> String {
    use std::process::{Command, Stdio};
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run md5sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("write md5sum");
    let out = child.wait_with_output().expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned()
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.fp = None;
        self.stop.store(true, Ordering::Relaxed);
        for h in self.servers.drain(..) {
            let _ = h.join();
        }
    }
}
