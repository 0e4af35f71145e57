//! The VIP namespace lab the mesh's guest tests and demos share.
//!
//! One subnet on a bridge (in its own switch namespace): a load-balancer namespace, a client
//! namespace and N task namespaces. Tasks serve HTTP (busybox `httpd`, answering with their
//! name) on port 80 and a TCP greeter on port 9000 that sends the task name and then echoes,
//! which keeps a connection open for as long as the test wants.
//!
//! The lab knows nothing of `vipmesh` (this crate must not depend on it): it hands out plain
//! values ([`VipLab::lb`], [`VipLab::lb_interface`], [`VipLab::lb_addr`], [`VipLab::subnet`])
//! from which the caller builds its `vipmesh::model::Network`.
//!
//! Setup failures panic with the failing command: a test cannot go on without its topology.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use vipmesh_netns::Netns;

use crate::{Topology, eventually};

/// The address family of a lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    /// IPv4: subnet 10.0.0.0/24.
    V4,
    /// IPv6: subnet fd00:0:0:1::/64.
    V6,
}

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
    /// The LB namespace's interface on the subnet (`eth0`).
    pub lb_interface: String,
    /// The LB namespace's address on the subnet (host number 2).
    pub lb_addr: IpAddr,
    /// The subnet: network address and prefix length (`10.0.0.0`, 24).
    pub subnet: (IpAddr, u8),
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
    pub fn new(family: IpFamily, prefix: &str, n: usize) -> VipLab {
        let subnet = match family {
            IpFamily::V4 => (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 24),
            IpFamily::V6 => (IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 0)), 64),
        };
        VipLab::with_subnet(subnet, prefix, n)
    }

    /// Builds the lab on `subnet` (network address, prefix length) with `n` tasks named
    /// `<prefix>.1`…; the host numbers are those of [`VipLab::new`].
    ///
    /// # Panics
    /// When the subnet is too small for the host numbers, or a setup step fails.
    pub fn with_subnet(subnet: (IpAddr, u8), prefix: &str, n: usize) -> VipLab {
        load_modules();
        let plen = subnet.1;
        let host = |h: u32| host_in(subnet, h);
        let mut topo = Topology::new("vl");
        let sw = topo.bridge_ns("sw");
        let lb = topo.ns("lb");
        let client = topo.ns("client");
        topo.attach(&sw, &lb, "eth0", &format!("{}/{plen}", host(2)));
        topo.attach(&sw, &client, "eth0", &format!("{}/{plen}", host(7)));
        let mut tasks = Vec::new();
        let mut www = Vec::new();
        for i in 0..n {
            let name = format!("{prefix}.{}", i + 1);
            let ns = topo.ns(&format!("t{}", i + 1));
            let addr = host(10 + i as u32);
            topo.attach(&sw, &ns, "eth0", &format!("{addr}/{plen}"));
            let dir = topo.temp_dir(&format!("www{}", i + 1));
            std::fs::write(dir.join("index.html"), format!("{name}\n")).expect("index.html");
            www.push(dir);
            tasks.push(Task {
                name,
                netns: ns,
                addr,
            });
        }
        VipLab {
            topo,
            lb,
            client,
            tasks,
            lb_interface: "eth0".into(),
            lb_addr: host(2),
            subnet,
            www,
        }
    }

    /// The subnet as text, `10.0.0.0/24` or `fd00:0:0:1::/64`.
    pub fn subnet_cidr(&self) -> String {
        format!("{}/{}", self.subnet.0, self.subnet.1)
    }

    /// An address of the lab's subnet with host number `h` (VIPs: 9, 20, …).
    ///
    /// # Panics
    /// When `h` does not fit the subnet's host part.
    pub fn host(&self, h: u8) -> IpAddr {
        host_in(self.subnet, u32::from(h))
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
        for t in &self.tasks {
            eventually(
                Duration::from_secs(10),
                &format!("task {} to answer on {}:80", t.name, t.addr),
                || match http_get(&self.client, t.addr, 80) {
                    Ok(b) if b == t.name => Ok(()),
                    Ok(b) => Err(format!("answered {b:?}")),
                    Err(e) => Err(e.to_string()),
                },
            );
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

/// Host number `h` of `subnet`.
fn host_in(subnet: (IpAddr, u8), h: u32) -> IpAddr {
    let (net, plen) = subnet;
    let bits: u32 = if net.is_ipv4() { 32 } else { 128 };
    let host_bits = bits.saturating_sub(u32::from(plen));
    assert!(
        host_bits >= 32 || h < (1u32 << host_bits),
        "host number {h} does not fit {net}/{plen}"
    );
    match net {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) | h)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) | u128::from(h))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_numbers_come_from_the_subnet_in_both_families() {
        let v4 = (IpAddr::V4(Ipv4Addr::new(192, 168, 7, 0)), 24);
        assert_eq!(host_in(v4, 9), "192.168.7.9".parse::<IpAddr>().unwrap());
        let v6 = (IpAddr::V6("fd00:0:0:1::".parse().unwrap()), 64);
        assert_eq!(host_in(v6, 20), "fd00:0:0:1::14".parse::<IpAddr>().unwrap());
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn a_host_number_outside_the_subnet_panics() {
        host_in((IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 29), 9);
    }
}
