//! The links of the ingress mesh on the real kernel, over rtnetlink
//! ([`rtnetlink(7)`](https://man7.org/linux/man-pages/man7/rtnetlink.7.html)), never with `ip`:
//! the sandbox namespace, the overlay (`vipmesh-overlay`: bridge, VXLAN, veths, static
//! FDB/neighbours), and the gateway bridge in the host namespace with the sandbox's second leg
//! (`eth1`) and its default route. Every step is idempotent: what is in place is left alone.

use std::net::IpAddr;

use vipmesh_netns::Netns;
use vipmesh_netns::rtnl::{Rtnl, VIPMESH_ADDR_PROTO};

use crate::dataplane::open_netns;
use crate::error::Error;
use crate::ingress::{Ingress, overlay_spec};

/// The host side of the sandbox's gateway-bridge veth.
const HOST_LEG: &str = "vmgw-sbox";
/// The sandbox side.
const SANDBOX_LEG: &str = "eth1";

fn netns_err(netns: &str) -> impl Fn(vipmesh_netns::Error) -> Error + '_ {
    move |source| Error::Netns {
        netns: netns.to_string(),
        source,
    }
}

fn overlay_err(source: vipmesh_overlay::Error) -> Error {
    Error::Overlay {
        source: Box::new(source),
    }
}

/// The index of `name`, if it exists.
fn find(r: &Rtnl, netns: &str, name: &str) -> Result<Option<u32>, Error> {
    match r.link_index(name) {
        Ok(i) => Ok(Some(i)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(netns_err(netns)(e)),
    }
}

fn has_addr(r: &Rtnl, netns: &str, ifindex: u32, addr: IpAddr) -> Result<bool, Error> {
    Ok(r.addresses()
        .map_err(netns_err(netns))?
        .iter()
        .any(|a| a.ifindex == ifindex && a.addr == addr))
}

fn sandbox(ing: &Ingress, done: &mut Vec<String>) -> Result<Netns, Error> {
    match Netns::named(&ing.sandbox_netns) {
        Ok(n) => Ok(n),
        Err(e) if e.is_not_found() => {
            let n =
                Netns::create_named(&ing.sandbox_netns).map_err(netns_err(&ing.sandbox_netns))?;
            done.push(format!("namespace {} created", ing.sandbox_netns));
            Ok(n)
        }
        Err(e) => Err(netns_err(&ing.sandbox_netns)(e)),
    }
}

/// Builds the ingress links (see the module docs). A local task whose namespace does not
/// exist is left out, everything else is built, and then [`Error::MissingNamespace`] names
/// it (the mesh keeps working on this node for the other tasks).
pub fn wire(ing: &Ingress) -> Result<Vec<String>, Error> {
    let mut done = Vec::new();
    let host = open_netns(&ing.host_netns)?;
    let mut missing = Vec::new();
    for ns in ing.local_task_namespaces() {
        match open_netns(ns) {
            Ok(_) => {}
            Err(Error::MissingNamespace { netns }) => missing.push(netns),
            Err(e) => return Err(e),
        }
    }
    let sbox = sandbox(ing, &mut done)?;
    let sb_name = ing.sandbox_netns.as_str();
    let rs = Rtnl::open(&sbox).map_err(netns_err(sb_name))?;
    if let Some(lo) = find(&rs, sb_name, "lo")? {
        rs.set_up(lo).map_err(netns_err(sb_name))?;
    }
    // The overlay: the sandbox's and the local tasks' legs, remote endpoints.
    let mut spec = overlay_spec(ing);
    spec.local.retain(|l| !missing.contains(&l.netns));
    let overlay = vipmesh_overlay::Overlay::new(&spec).map_err(overlay_err)?;
    let p = vipmesh_overlay::sync(&host, &overlay).map_err(overlay_err)?;
    if !p.is_empty() {
        done.push(format!("overlay: {}", p.to_string().lines().count()));
    }
    // The gateway bridge and the sandbox's leg on it.
    let hn = ing.host_netns.as_str();
    let rh = Rtnl::open(&host).map_err(netns_err(hn))?;
    let gw = &ing.gw_bridge;
    let br = match find(&rh, hn, &gw.name)? {
        Some(i) => i,
        None => {
            done.push(format!("bridge {} created", gw.name));
            rh.add_bridge(&gw.name).map_err(netns_err(hn))?
        }
    };
    let v6 = ing.subnet_v6.is_some();
    let mut host_addrs = vec![(gw.host_addr, gw.subnet.prefix())];
    let mut sandbox_addrs = vec![(gw.sandbox_addr, gw.subnet.prefix())];
    if v6 {
        host_addrs.push((gw.host_addr_v6, gw.subnet_v6.prefix()));
        sandbox_addrs.push((gw.sandbox_addr_v6, gw.subnet_v6.prefix()));
    }
    for &(a, prefix) in &host_addrs {
        if !has_addr(&rh, hn, br, a)? {
            rh.add_address(br, a, prefix, VIPMESH_ADDR_PROTO)
                .map_err(netns_err(hn))?;
            done.push(format!("address {a} on {}", gw.name));
        }
    }
    rh.set_up(br).map_err(netns_err(hn))?;
    let leg = match find(&rh, hn, HOST_LEG)? {
        Some(i) => i,
        None => {
            // A stale sandbox leg (the host side was deleted) blocks the name in the sandbox.
            if let Some(old) = find(&rs, sb_name, SANDBOX_LEG)? {
                rs.delete_link(old).map_err(netns_err(sb_name))?;
            }
            done.push(format!("veth {HOST_LEG} <-> {sb_name}:{SANDBOX_LEG}"));
            rh.add_veth(HOST_LEG, SANDBOX_LEG, &sbox)
                .map_err(netns_err(hn))?
        }
    };
    rh.set_master(leg, br).map_err(netns_err(hn))?;
    rh.set_up(leg).map_err(netns_err(hn))?;
    let e1 = find(&rs, sb_name, SANDBOX_LEG)?.ok_or_else(|| Error::MissingInterface {
        netns: sb_name.to_string(),
        interface: SANDBOX_LEG.to_string(),
    })?;
    for &(a, prefix) in &sandbox_addrs {
        if !has_addr(&rs, sb_name, e1, a)? {
            rs.add_address(e1, a, prefix, VIPMESH_ADDR_PROTO)
                .map_err(netns_err(sb_name))?;
            done.push(format!("address {a} on {sb_name}:{SANDBOX_LEG}"));
        }
    }
    rs.set_up(e1).map_err(netns_err(sb_name))?;
    let routes = rs.routes().map_err(netns_err(sb_name))?;
    for (via, _) in host_addrs {
        let routed = routes
            .iter()
            .any(|r| r.dst.is_none() && r.gateway == Some(via));
        if !routed {
            rs.replace_default_route(via, Some(e1))
                .map_err(netns_err(sb_name))?;
            done.push(format!("default route via {via} in {sb_name}"));
        }
    }
    if let Some(netns) = missing.into_iter().next() {
        tracing::warn!(?done, "ingress wired without the task namespace {netns}");
        return Err(Error::MissingNamespace { netns });
    }
    Ok(done)
}

/// Removes the ingress links: the overlay's, the gateway bridge, the sandbox namespace.
pub fn unwire(ing: &Ingress) -> Result<Vec<String>, Error> {
    let mut done = Vec::new();
    let host = open_netns(&ing.host_netns)?;
    let mut spec = overlay_spec(ing);
    // Endpoint namespaces may be gone already; the overlay's own objects are enough.
    spec.local.retain(|l| Netns::named(&l.netns).is_ok());
    let overlay = vipmesh_overlay::Overlay::new(&spec).map_err(overlay_err)?;
    vipmesh_overlay::teardown(&host, &overlay).map_err(overlay_err)?;
    done.push("overlay removed".to_string());
    let hn = ing.host_netns.as_str();
    let rh = Rtnl::open(&host).map_err(netns_err(hn))?;
    for name in [HOST_LEG, ing.gw_bridge.name.as_str()] {
        if let Some(i) = find(&rh, hn, name)? {
            rh.delete_link(i).map_err(netns_err(hn))?;
            done.push(format!("link {name} deleted"));
        }
    }
    match Netns::delete_named(&ing.sandbox_netns) {
        Ok(()) => done.push(format!("namespace {} deleted", ing.sandbox_netns)),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(netns_err(&ing.sandbox_netns)(e)),
    }
    Ok(done)
}

/// A socket bound to `0.0.0.0:port` (IPv4) or `[::]:port` with `IPV6_V6ONLY` (IPv6), TCP:
/// bound, not listening; UDP; SCTP, in the calling thread's namespace: it reserves the port.
/// See [`socket(2)`](https://man7.org/linux/man-pages/man2/socket.2.html),
/// [`bind(2)`](https://man7.org/linux/man-pages/man2/bind.2.html),
/// [`ipv6(7)`](https://man7.org/linux/man-pages/man7/ipv6.7.html).
pub fn bind_port(
    family: crate::model::Family,
    proto: crate::model::Protocol,
    port: u16,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let (ty, p) = match proto {
        crate::model::Protocol::Tcp => (libc::SOCK_STREAM, 0),
        crate::model::Protocol::Udp => (libc::SOCK_DGRAM, 0),
        crate::model::Protocol::Sctp => (libc::SOCK_STREAM, libc::IPPROTO_SCTP),
    };
    let af = match family {
        crate::model::Family::V4 => libc::AF_INET,
        crate::model::Family::V6 => libc::AF_INET6,
    };
    // SAFETY: socket(2) with constant arguments; the fd is owned right below.
    let fd = unsafe { libc::socket(af, ty | libc::SOCK_CLOEXEC, p) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let r = match family {
        crate::model::Family::V4 => {
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr { s_addr: 0 },
                sin_zero: [0; 8],
            };
            // SAFETY: addr is a valid sockaddr_in of the size passed; fd is open.
            unsafe {
                libc::bind(
                    fd,
                    (&raw const addr).cast::<libc::sockaddr>(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        crate::model::Family::V6 => {
            let one: libc::c_int = 1;
            // SAFETY: a valid int option of the size passed, on an open socket.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_IPV6,
                    libc::IPV6_V6ONLY,
                    (&raw const one).cast::<libc::c_void>(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: all-zero is a valid sockaddr_in6 (the unspecified address).
            let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            addr.sin6_port = port.to_be();
            // SAFETY: addr is a valid sockaddr_in6 of the size passed; fd is open.
            unsafe {
                libc::bind(
                    fd,
                    (&raw const addr).cast::<libc::sockaddr>(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(owned)
}
