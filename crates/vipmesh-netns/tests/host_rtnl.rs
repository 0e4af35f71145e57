//! Privileged tests of `vipmesh_netns::rtnl` and the named-namespace helpers, on the host
//! kernel. Each test makes its own namespaces (deleted on drop, also on panic) and checks the
//! result with iproute2 (`ip`, `bridge`), never with the library itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use vipmesh_netns::Netns;
use vipmesh_netns::rtnl::{Mac, Rtnl, VIPMESH_ADDR_PROTO, VxlanSpec};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A namespace made by `Netns::create_named`, deleted on drop.
struct Ns {
    name: String,
    ns: Netns,
}

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!(
            "vmrt-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let ns = Netns::create_named(&name).unwrap_or_else(|e| panic!("create {name}: {e}"));
        Ns { name, ns }
    }

    /// Runs `ip -n NAME ARGS` (or `bridge -n ...`), panics on failure, returns stdout.
    fn cmd(&self, tool: &str, args: &str) -> String {
        let out = Command::new(tool)
            .arg("-n")
            .arg(&self.name)
            .args(args.split_whitespace())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool} -n {} {args}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ip(&self, args: &str) -> String {
        self.cmd("ip", args)
    }

    fn rtnl(&self) -> Rtnl {
        Rtnl::open(&self.ns).unwrap()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Err(e) = Netns::delete_named(&self.name) {
            eprintln!("cannot delete {}: {e}", self.name);
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn named_namespace_create_identity_delete() {
    let a = Ns::new("id");
    let path = std::path::Path::new("/run/netns").join(&a.name);
    assert!(path.exists());
    // `ip netns` sees it, and its identity matches a fresh open by name.
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&a.name));
    let again = Netns::named(&a.name).unwrap();
    assert_eq!(again.id().unwrap(), a.ns.id().unwrap());
    assert_ne!(a.ns.id().unwrap(), Netns::current().unwrap().id().unwrap());
    // It is a fresh namespace: only lo.
    assert_eq!(a.ip("-o link").lines().count(), 1);

    // The name is taken: EEXIST.
    let err = Netns::create_named(&a.name).unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert!(err.to_string().contains(&a.name), "{err}");

    // Delete and re-create under the same name while the old handle is held (so the old
    // namespace lives on): the identity differs.
    let old_id = a.ns.id().unwrap();
    Netns::delete_named(&a.name).unwrap();
    assert!(!path.exists());
    let err = Netns::delete_named(&a.name).unwrap_err();
    assert_eq!(err.errno(), Some(libc_enoent()), "{err}");
    let re = Netns::create_named(&a.name).unwrap();
    assert_ne!(
        re.id().unwrap(),
        old_id,
        "a re-created namespace has a new identity"
    );
    // `a` deletes the new one on drop.
}

fn libc_enoent() -> i32 {
    2
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn links_bridge_veth_vxlan_and_moves() {
    let node = Ns::new("node");
    let other = Ns::new("other");
    let r = node.rtnl();

    let br = r.add_bridge("br0").unwrap();
    assert_eq!(r.link_index("br0").unwrap(), br);
    let err = r.add_bridge("br0").unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert!(err.to_string().contains(&node.name) && err.to_string().contains("br0"));

    // veth with the peer created directly in `other`.
    let v = r.add_veth("vov-ep", "eth0", &other.ns).unwrap();
    assert!(other.ip("-o link show eth0").contains("eth0@"));
    r.set_mtu(v, 1450).unwrap();
    r.set_mac(v, "02:42:0a:ff:00:09".parse().unwrap()).unwrap();
    r.set_master(v, br).unwrap();
    r.set_up(br).unwrap();
    r.set_up(v).unwrap();
    let shown = node.ip("-d link show vov-ep");
    assert!(shown.contains("mtu 1450"), "{shown}");
    assert!(shown.contains("master br0"), "{shown}");
    assert!(shown.contains("link/ether 02:42:0a:ff:00:09"), "{shown}");
    assert!(shown.contains("veth"), "{shown}");
    let l = r.link("vov-ep").unwrap();
    assert_eq!(
        (l.kind.as_deref(), l.mtu, l.master, l.up),
        (Some("veth"), Some(1450), Some(br), true)
    );
    assert_eq!(l.mac, Some(Mac([2, 0x42, 10, 255, 0, 9])));
    assert!(l.link_netnsid.is_some(), "the peer is in another namespace");
    r.set_nomaster(v).unwrap();
    assert!(!node.ip("link show vov-ep").contains("master"));
    r.set_down(v).unwrap();
    assert!(!node.ip("link show vov-ep").contains(",UP"));
    r.rename(v, "vov-renamed").unwrap();
    assert!(node.ip("-o link").contains("vov-renamed"));

    // VXLAN: explicit dstport, proxy l2miss l3miss, no learning; then moved and renamed.
    let mut spec = VxlanSpec::docker("vx-001000-test", 4096);
    spec.mtu = Some(1450);
    let vx = r.add_vxlan(&spec).unwrap();
    let shown = node.ip("-d link show vx-001000-test");
    assert!(shown.contains("vxlan id 4096"), "{shown}");
    assert!(shown.contains("dstport 4789"), "{shown}");
    assert!(shown.contains("nolearning"), "{shown}");
    assert!(
        shown.contains("proxy") && shown.contains("l2miss") && shown.contains("l3miss"),
        "{shown}"
    );
    assert!(shown.contains("mtu 1450"), "{shown}");
    let info = r.link("vx-001000-test").unwrap().vxlan.unwrap();
    assert_eq!((info.vni, info.port, info.learning), (4096, 4789, false));
    assert!(info.proxy && info.l2miss && info.l3miss);
    assert_eq!((info.dev, info.local), (None, None));

    r.move_to_netns(vx, &other.ns, Some("vxlan0")).unwrap();
    assert!(r.link("vx-001000-test").unwrap_err().is_not_found());
    let shown = other.ip("-d link show vxlan0");
    assert!(shown.contains("vxlan id 4096"), "{shown}");
    assert!(shown.contains("link-netns"), "created elsewhere: {shown}");

    // Delete by index; a second delete is ENODEV, reported as not found.
    let ro = other.rtnl();
    let idx = ro.link_index("vxlan0").unwrap();
    ro.delete_link(idx).unwrap();
    let err = ro.delete_link(idx).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(err.errno(), Some(19), "ENODEV: {err}");
    assert!(!other.ip("-o link").contains("vxlan0"));

    let names: Vec<String> = r.links().unwrap().into_iter().map(|l| l.name).collect();
    assert_eq!(names, ["lo", "br0", "vov-renamed"]);
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn addresses_carry_ifa_proto_and_errors_keep_errno() {
    let ns = Ns::new("addr");
    ns.ip("link add d0 type veth peer name d0p");
    ns.ip("link set d0p up");
    ns.ip("link set d0 up");
    let r = ns.rtnl();
    let d0 = r.link_index("d0").unwrap();

    r.add_address(d0, ip("10.255.0.4"), 32, VIPMESH_ADDR_PROTO)
        .unwrap();
    // Replace semantics: a second add is a no-op, not EEXIST.
    r.add_address(d0, ip("10.255.0.4"), 32, VIPMESH_ADDR_PROTO)
        .unwrap();
    r.add_address(d0, ip("fd00:255::4"), 128, VIPMESH_ADDR_PROTO)
        .unwrap();
    ns.ip("addr add 10.9.9.9/24 dev d0"); // a foreign address, no proto

    let shown = ns.ip("addr show dev d0");
    assert_eq!(shown.matches("10.255.0.4/32").count(), 1, "{shown}");
    let v6 = shown
        .lines()
        .find(|l| l.contains("fd00:255::4/128"))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(v6.contains("nodad"), "{shown}");
    assert!(!v6.contains("tentative"), "NODAD: usable at once: {shown}");
    // The host's iproute2 (6.1) predates `proto` for addresses (iproute2 6.3), so IFA_PROTO
    // is read back with a raw RTM_GETADDR dump, independent of the rtnetlink crate.
    let raw = raw_addr_protos(&ns.ns);
    assert_eq!(raw.get("10.255.0.4/32"), Some(&Some(0x56)), "{raw:?}");
    assert_eq!(raw.get("fd00:255::4/128"), Some(&Some(0x56)), "{raw:?}");
    assert_eq!(raw.get("10.9.9.9/24"), Some(&None), "{raw:?}");
    if iproute_knows_addr_proto() {
        let json = ns.ip("-j addr show dev d0");
        assert_eq!(json.matches("\"protocol\":\"0x56\"").count(), 2, "{json}");
    }

    let ours: Vec<_> = r
        .addresses()
        .unwrap()
        .into_iter()
        .filter(|a| a.proto == Some(VIPMESH_ADDR_PROTO))
        .map(|a| (a.ifindex, a.addr, a.prefix_len))
        .collect();
    assert_eq!(
        ours,
        [(d0, ip("10.255.0.4"), 32), (d0, ip("fd00:255::4"), 128)]
    );
    let foreign = r
        .addresses()
        .unwrap()
        .into_iter()
        .find(|a| a.addr == ip("10.9.9.9"))
        .unwrap();
    assert_eq!((foreign.prefix_len, foreign.proto), (24, None));

    r.delete_address(d0, ip("10.255.0.4"), 32).unwrap();
    r.delete_address(d0, ip("fd00:255::4"), 128).unwrap();
    assert!(!ns.ip("addr show dev d0").contains("10.255.0.4"));
    assert!(!ns.ip("addr show dev d0").contains("fd00:255::4"));
    for a in [ip("10.255.0.4"), ip("fd00:255::4")] {
        let err = r.delete_address(d0, a, 32).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert_eq!(err.errno(), Some(99), "EADDRNOTAVAIL: {err}");
        let text = err.to_string();
        assert!(
            text.contains(&ns.name) && text.contains(&a.to_string()),
            "{text}"
        );
    }
    // A missing link is ENODEV.
    let err = r.add_address(9999, ip("10.1.1.1"), 32, 0x56).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(ns.ip("addr show dev d0").contains("10.9.9.9/24"));
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn default_route_neighbours_and_vxlan_fdb() {
    let ns = Ns::new("rt");
    ns.ip("link add d0 type veth peer name d0p");
    ns.ip("link set d0p up");
    ns.ip("addr add 172.18.0.2/16 dev d0");
    ns.ip("link set d0 up");
    let r = ns.rtnl();
    let d0 = r.link_index("d0").unwrap();

    r.replace_default_route(ip("172.18.0.1"), None).unwrap();
    r.replace_default_route(ip("172.18.0.1"), Some(d0)).unwrap();
    let shown = ns.ip("route show");
    assert_eq!(shown.matches("default").count(), 1, "{shown}");
    assert!(shown.contains("default via 172.18.0.1 dev d0"), "{shown}");
    let routes = r.routes().unwrap();
    assert!(
        routes
            .iter()
            .any(|x| x.dst.is_none() && x.gateway == Some(ip("172.18.0.1")) && x.oif == Some(d0)),
        "{routes:?}"
    );
    r.delete_default_route(ip("172.18.0.1")).unwrap();
    assert!(!ns.ip("route show").contains("default"));
    let err = r.delete_default_route(ip("172.18.0.1")).unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // Neighbours.
    let mac: Mac = "02:42:0a:ff:00:06".parse().unwrap();
    r.replace_neighbour(d0, ip("172.18.0.6"), mac).unwrap();
    r.replace_neighbour(d0, ip("172.18.0.6"), mac).unwrap();
    let shown = ns.ip("neigh show dev d0");
    assert!(
        shown.contains("172.18.0.6 lladdr 02:42:0a:ff:00:06 PERMANENT"),
        "{shown}"
    );
    let n = r.neighbours().unwrap();
    assert!(
        n.iter()
            .any(|x| x.ip == ip("172.18.0.6") && x.mac == Some(mac) && x.permanent),
        "{n:?}"
    );
    r.delete_neighbour(d0, ip("172.18.0.6")).unwrap();
    assert!(!ns.ip("neigh show dev d0").contains("172.18.0.6"));
    let err = r.delete_neighbour(d0, ip("172.18.0.6")).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(err.errno(), Some(2), "ENOENT: {err}");

    // FDB on a VXLAN device.
    let vx = r.add_vxlan(&VxlanSpec::docker("vxlan0", 4096)).unwrap();
    r.replace_fdb(vx, mac, ip("192.168.50.12")).unwrap();
    r.replace_fdb(vx, mac, ip("192.168.50.12")).unwrap();
    let shown = ns.cmd("bridge", "fdb show dev vxlan0");
    assert!(
        shown.contains("02:42:0a:ff:00:06 dst 192.168.50.12 self permanent"),
        "{shown}"
    );
    // Replace moves the entry to another VTEP.
    r.replace_fdb(vx, mac, ip("192.168.50.13")).unwrap();
    let shown = ns.cmd("bridge", "fdb show dev vxlan0");
    assert!(
        shown.contains("02:42:0a:ff:00:06 dst 192.168.50.13 self permanent"),
        "{shown}"
    );
    assert!(!shown.contains("192.168.50.12"), "{shown}");
    let fdb = r.fdb().unwrap();
    assert!(
        fdb.iter().any(|e| e.ifindex == vx
            && e.mac == mac
            && e.dst == Some(ip("192.168.50.13"))
            && e.permanent
            && e.is_self),
        "{fdb:?}"
    );
    r.delete_fdb(vx, mac, Some(ip("192.168.50.13"))).unwrap();
    assert!(
        !ns.cmd("bridge", "fdb show dev vxlan0")
            .contains("02:42:0a:ff:00:06")
    );
    let err = r.delete_fdb(vx, mac, None).unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn sysctls_are_per_namespace() {
    let ns = Ns::new("sysctl");
    let r = ns.rtnl();
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let flip = if host_before.trim() == "1" { "0" } else { "1" };
    r.sysctl_write("net.ipv4.ip_forward", flip).unwrap();
    assert_eq!(r.sysctl_read("net.ipv4.ip_forward").unwrap(), flip);
    let inside = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "cat",
            "/proc/sys/net/ipv4/ip_forward",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&inside.stdout).trim(), flip);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_before,
        "the host's value is untouched"
    );
    // The slash form, for interface names with dots.
    assert_eq!(r.sysctl_read("net/ipv4/conf/lo/forwarding").unwrap(), flip);
    let err = r.sysctl_read("net.ipv4.no_such_key").unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains(&ns.name), "{err}");
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut it = r.trim().split(|c: char| !c.is_ascii_digit());
    let v: (u32, u32) = (
        it.next().unwrap().parse().unwrap(),
        it.next().unwrap().parse().unwrap(),
    );
    v >= (major, minor)
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn replacing_an_address_changes_its_proto_from_6_3() {
    let ns = Ns::new("reproto");
    ns.ip("link add d0 type veth peer name d0p");
    let r = ns.rtnl();
    let d0 = r.link_index("d0").unwrap();
    r.add_address(d0, ip("10.77.0.1"), 24, 0x57).unwrap();
    assert_eq!(
        raw_addr_protos(&ns.ns).get("10.77.0.1/24"),
        Some(&Some(0x57))
    );
    r.add_address(d0, ip("10.77.0.1"), 24, VIPMESH_ADDR_PROTO)
        .unwrap();
    let want = if kernel_at_least(6, 3) { 0x56 } else { 0x57 };
    assert_eq!(
        raw_addr_protos(&ns.ns).get("10.77.0.1/24"),
        Some(&Some(want)),
        "a replace changes IFA_PROTO from 6.3 on, keeps it before"
    );
}

/// Whether this iproute2 prints and accepts `proto` on addresses (iproute2 >= 6.3).
fn iproute_knows_addr_proto() -> bool {
    let out = Command::new("ip")
        .args(["address", "help"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    text.contains("proto")
}

/// "addr/prefix" -> IFA_PROTO, from a raw `RTM_GETADDR` dump in `ns` (a test-only observer
/// written against `<linux/rtnetlink.h>` and `<linux/if_addr.h>`).
fn raw_addr_protos(ns: &Netns) -> std::collections::BTreeMap<String, Option<u8>> {
    ns.run(|| {
        // SAFETY (test): plain socket calls with valid buffers.
        unsafe {
            let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            // nlmsghdr (16) + ifaddrmsg (8)
            let mut req = [0u8; 24];
            req[0..4].copy_from_slice(&24u32.to_ne_bytes());
            req[4..6].copy_from_slice(&22u16.to_ne_bytes()); // RTM_GETADDR
            req[6..8].copy_from_slice(&(0x1u16 | 0x300).to_ne_bytes()); // REQUEST|DUMP
            req[8..12].copy_from_slice(&1u32.to_ne_bytes());
            assert_eq!(libc::send(fd, req.as_ptr().cast(), req.len(), 0), 24);
            let mut out = std::collections::BTreeMap::new();
            let mut buf = vec![0u8; 65536];
            'recv: loop {
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                assert!(n > 0);
                let mut off = 0usize;
                let n = n as usize;
                while off + 16 <= n {
                    let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                    let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
                    if ty == 3 {
                        break 'recv; // NLMSG_DONE
                    }
                    assert_ne!(ty, 2, "NLMSG_ERROR");
                    let m = &buf[off + 16..off + len];
                    let (family, plen) = (m[0], m[1]);
                    let mut a = 8usize;
                    let (mut addr, mut local, mut proto) = (None, None, None);
                    while a + 4 <= m.len() {
                        let alen = u16::from_ne_bytes([m[a], m[a + 1]]) as usize;
                        let aty = u16::from_ne_bytes([m[a + 2], m[a + 3]]);
                        let v = &m[a + 4..a + alen];
                        let ip: Option<IpAddr> = match (family as i32, v.len()) {
                            (libc::AF_INET, 4) => Some(<[u8; 4]>::try_from(v).unwrap().into()),
                            (libc::AF_INET6, 16) => Some(<[u8; 16]>::try_from(v).unwrap().into()),
                            _ => None,
                        };
                        match aty {
                            1 => addr = ip,
                            2 => local = ip,
                            11 => proto = Some(v[0]),
                            _ => {}
                        }
                        a += (alen + 3) & !3;
                    }
                    if let Some(ip) = local.or(addr) {
                        out.insert(format!("{ip}/{plen}"), proto.filter(|p| *p != 0));
                    }
                    off += (len + 3) & !3;
                }
            }
            libc::close(fd);
            out
        }
    })
    .unwrap()
}

/// A handle dropped by async code (inside another tokio runtime, as the agent drops its
/// controller at shutdown) does not panic: its own runtime is shut down in the background.
#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn a_handle_dropped_inside_another_runtime_does_not_panic() {
    let ns = Ns::new("rtdrop");
    let rt = Rtnl::open(&ns.ns).unwrap();
    assert!(rt.link("lo").is_ok());
    let outer = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    outer.block_on(async move { drop(rt) });
}
