//! The namespace lab the guest tests and the demos share (feature `test-util`).
//!
//! One subnet on a bridge (in its own switch namespace): a load-balancer namespace, a client
//! namespace and N task namespaces. Tasks serve HTTP (busybox `httpd`, answering with their
//! name) on port 80 and a TCP greeter on port 9000 that sends the task name and then echoes,
//! which keeps a connection open for as long as the test wants.
//!
//! Setup failures panic with the failing command: a test cannot go on without its topology.
#![allow(clippy::panic, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use vipmesh_netns::Netns;
use vipmesh_netns::testing::Topology;

use crate::model::{Family, Network};

/// A task of the lab.
#[derive(Debug, Clone)]
pub struct Task {
    /// Its name (what it answers with).
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its address.
    pub addr: IpAddr,
}

/// The lab topology.
#[derive(Debug)]
pub struct VipLab {
    /// The namespaces and processes (deleted on drop).
    pub topo: Topology,
    /// The LB namespace.
    pub lb: String,
    /// The client namespace.
    pub client: String,
    /// The tasks.
    pub tasks: Vec<Task>,
    /// The network to hand to vipmesh.
    pub network: Network,
    www: Vec<PathBuf>,
}

/// Loads the kernel modules the lab and the mesh need (in the guest; a no-op where they are
/// built in or absent, the mesh then reports the missing feature itself).
pub fn load_modules() {
    let _ = std::process::Command::new("modprobe")
        .args([
            "-qa",
            "ip_vs",
            "ip_vs_rr",
            "ip_vs_wrr",
            "ip_vs_sh",
            "xt_ipvs",
            "xt_mark",
            "xt_comment",
            "ipt_REJECT",
            "ip6t_REJECT",
            "veth",
            "bridge",
        ])
        .status();
}

impl VipLab {
    /// Builds the lab for a family with `n` tasks named `<prefix>.1`…
    ///
    /// IPv4: subnet 10.0.0.0/24, LB .2, client .7, VIPs free from .9, tasks .10 up.
    /// IPv6: fd00:0:0:1::/64 with the same host numbers.
    pub fn new(family: Family, prefix: &str, n: usize) -> VipLab {
        load_modules();
        let mut topo = Topology::new("vl");
        let sw = topo.bridge_ns("sw");
        let lb = topo.ns("lb");
        let client = topo.ns("client");
        let (subnet, plen) = match family {
            Family::V4 => ("10.0.0.0/24", 24),
            Family::V6 => ("fd00:0:0:1::/64", 64),
        };
        let host = |h: u8| -> IpAddr {
            match family {
                Family::V4 => IpAddr::from([10, 0, 0, h]),
                Family::V6 => format!("fd00:0:0:1::{h:x}").parse().expect("v6 literal"),
            }
        };
        topo.attach(&sw, &lb, "eth0", &format!("{}/{plen}", host(2)));
        topo.attach(&sw, &client, "eth0", &format!("{}/{plen}", host(7)));
        let mut tasks = Vec::new();
        let mut www = Vec::new();
        for i in 0..n {
            let name = format!("{prefix}.{}", i + 1);
            let ns = topo.ns(&format!("t{}", i + 1));
            let addr = host(10 + i as u8);
            topo.attach(&sw, &ns, "eth0", &format!("{addr}/{plen}"));
            let dir = std::env::temp_dir().join(format!("vipmesh-lab-{}-{ns}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("www dir");
            std::fs::write(dir.join("index.html"), format!("{name}\n")).expect("index.html");
            www.push(dir);
            tasks.push(Task {
                name,
                netns: ns,
                addr,
            });
        }
        let network = Network {
            name: "lab".into(),
            subnet: subnet.parse().expect("subnet literal"),
            lb_netns: lb.clone(),
            lb_interface: "eth0".into(),
            lb_addr: host(2),
        };
        VipLab {
            topo,
            lb,
            client,
            tasks,
            network,
            www,
        }
    }

    /// An address of the lab's subnet with host number `h` (VIPs: 9, 20, …).
    pub fn host(&self, h: u8) -> IpAddr {
        match self.network.subnet.addr() {
            IpAddr::V4(_) => IpAddr::from([10, 0, 0, h]),
            IpAddr::V6(_) => format!("fd00:0:0:1::{h:x}").parse().expect("v6 literal"),
        }
    }

    /// Starts busybox httpd on port 80 in every task, and the greeter on port 9000; waits
    /// until each answers directly from the client.
    pub fn start_servers(&mut self) {
        for (t, dir) in self.tasks.clone().iter().zip(self.www.clone()) {
            self.topo.spawn(
                &t.netns,
                &format!("busybox httpd -f -p 80 -h {}", dir.display()),
            );
            spawn_greeter(
                &t.netns,
                &t.name,
                SocketAddr::new(unspecified(t.addr), 9000),
            );
        }
        for t in self.tasks.clone() {
            let mut ok = false;
            for _ in 0..100 {
                if self
                    .http_get(&self.client, t.addr, 80)
                    .is_ok_and(|b| b == t.name)
                {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(ok, "task {} never answered on {}:80", t.name, t.addr);
        }
    }

    /// One HTTP/1.0 GET from inside `ns` (see [`http_get`]).
    ///
    /// # Errors
    /// Connection or protocol errors (5 s timeout each way).
    pub fn http_get(&self, ns: &str, addr: IpAddr, port: u16) -> std::io::Result<String> {
        http_get(ns, addr, port)
    }

    /// Runs `sh -c cmd` in `ns`; returns stdout (panics on failure).
    pub fn sh(&self, ns: &str, cmd: &str) -> String {
        self.topo.sh(ns, cmd)
    }

    /// The task named `name`.
    pub fn task(&self, name: &str) -> &Task {
        self.tasks
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no task {name}"))
    }
}

impl Drop for VipLab {
    fn drop(&mut self) {
        for d in &self.www {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
        IpAddr::V6(_) => IpAddr::from([0u16; 8]),
    }
}

/// One HTTP/1.0 GET from inside `ns`; returns the body without its trailing newline.
///
/// # Errors
/// Connection or protocol errors (5 s timeout each way), or a status other than 200.
pub fn http_get(ns: &str, addr: IpAddr, port: u16) -> std::io::Result<String> {
    let mut s = connect(ns, SocketAddr::new(addr, port))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: vipmesh\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {buf:?}")))?;
    if !buf.starts_with("HTTP/1.") || !buf.contains(" 200 ") {
        return Err(std::io::Error::other(format!("HTTP error: {buf:?}")));
    }
    Ok(body.trim_end().to_string())
}

/// Connects to `addr` from inside the namespace `ns` (5 s timeouts).
///
/// # Errors
/// The namespace or the connection failed.
pub fn connect(ns: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let netns = Netns::named(ns).map_err(std::io::Error::other)?;
    let s = netns
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .map_err(std::io::Error::other)??;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// A TCP server in `ns`: sends `name\n` on accept, then echoes lines until the peer closes.
/// The listener lives until the process ends (its namespace's deletion closes nothing, so the
/// thread only ends with the process; tests are short-lived).
pub fn spawn_greeter(ns: &str, name: &str, addr: SocketAddr) {
    let netns = Netns::named(ns).expect("greeter netns");
    let listener = netns
        .run(|| TcpListener::bind(addr))
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("bind {addr} in {ns}: {e}"));
    let name = name.to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { break };
            let name = name.clone();
            std::thread::spawn(move || {
                if c.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Reads the greeting line of a greeter connection.
///
/// # Errors
/// I/O errors.
pub fn greeting(s: &mut TcpStream) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b)? == 1 && b[0] != b'\n' {
        out.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Sends `msg` and reads the same number of bytes back.
///
/// # Errors
/// I/O errors, or an echo that differs.
pub fn echo(s: &mut TcpStream, msg: &str) -> std::io::Result<()> {
    s.write_all(msg.as_bytes())?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    if back != msg.as_bytes() {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(())
}
