//! A small synchronous rtnetlink client bound to one network namespace.
//!
//! [`Rtnl::open`] creates the `NETLINK_ROUTE` socket on a thread inside the namespace
//! ([`Netns::run`]): a socket stays bound to the namespace it was created in, so every request
//! made through the handle afterwards acts there, from any thread. Requests are built with
//! the [`rtnetlink`] / [`netlink_packet_route`] types and driven by a private
//! current-thread tokio runtime (`block_on`), so callers need no async runtime. Because of
//! that `block_on`, do not call it from inside an async task (tokio panics on a nested
//! runtime); from async code use `spawn_blocking`. An [`Rtnl`] is `Send + Sync`; calls from
//! several threads are serialised on its runtime.
//!
//! Kernel interfaces: [`rtnetlink(7)`](https://man7.org/linux/man-pages/man7/rtnetlink.7.html),
//! and for the objects: [`ip-link(8)`](https://man7.org/linux/man-pages/man8/ip-link.8.html),
//! [`ip-address(8)`](https://man7.org/linux/man-pages/man8/ip-address.8.html),
//! [`ip-route(8)`](https://man7.org/linux/man-pages/man8/ip-route.8.html),
//! [`ip-neighbour(8)`](https://man7.org/linux/man-pages/man8/ip-neighbour.8.html),
//! [`bridge(8)`](https://man7.org/linux/man-pages/man8/bridge.8.html) (`bridge fdb`),
//! and the kernel's `net/core/rtnetlink.c`, `net/ipv4/devinet.c`, `net/ipv6/addrconf.c`,
//! `net/core/neighbour.c`, `drivers/net/vxlan/vxlan_core.c`.
//!
//! Every failure is an [`Error::Netlink`] carrying the kernel errno, the operation, the
//! namespace and the object; [`Error::is_not_found`] and [`Error::is_exists`] classify it.
//! No `ip` or `bridge` process is ever run.
//!
//! # Address ownership: `IFA_PROTO`
//!
//! [`Rtnl::add_address`] tags an address with an `IFA_PROTO` value; [`Rtnl::addresses`]
//! reports it. vipmesh tags the addresses it owns with [`VIPMESH_ADDR_PROTO`], so after a
//! `kill -9` they are found from the kernel alone (`ip addr` of iproute2 >= 6.3 shows
//! `proto 0x56`; older iproute2 does not print it).
//! The attribute exists since Linux 5.18 (commit 47f0bd503210, "net: Add new protocol
//! attribute to IP addresses"); older kernels ignore it on add and never report it, so
//! [`Address::proto`] is `None` there. Changing the protocol of an *existing* address with a
//! replace needs a later kernel (6.3, Petr Machata's "Allow changing IP address protocol"
//! series): the host tests check that Debian's 6.1 (the qemu guest) keeps and reports the
//! value given at creation but keeps it across a replace, and that 6.18 changes it. On
//! 5.18..6.2, delete and re-add an address to re-tag it.
//!
//! # Examples
//!
//! ```no_run
//! use std::net::IpAddr;
//! use vipmesh_netns::Netns;
//! use vipmesh_netns::rtnl::{Rtnl, VIPMESH_ADDR_PROTO};
//!
//! # fn main() -> Result<(), vipmesh_netns::Error> {
//! let ns = Netns::named("lb-vote")?;
//! let rtnl = Rtnl::open(&ns)?;
//! let eth0 = rtnl.link_index("eth0")?;
//! let vip: IpAddr = "10.255.0.4".parse().unwrap_or(IpAddr::from([10, 255, 0, 4]));
//! rtnl.add_address(eth0, vip, 32, VIPMESH_ADDR_PROTO)?;
//! let ours: Vec<_> = rtnl
//!     .addresses()?
//!     .into_iter()
//!     .filter(|a| a.proto == Some(VIPMESH_ADDR_PROTO))
//!     .collect();
//! assert_eq!(ours.len(), 1);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::str::FromStr;

use futures_util::StreamExt;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressProtocol, AddressScope,
};
use netlink_packet_route::link::{
    InfoBridge, InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{Error, Netns};

/// The `IFA_PROTO` value vipmesh puts on the addresses it owns (VIPs, gateway addresses).
///
/// `0x56` is ASCII `V`. The kernel reserves 0 (`IFAPROT_UNSPEC`, what every address added
/// without the attribute has), 1 (`IFAPROT_KERNEL_LO`), 2 (`IFAPROT_KERNEL_RA`) and 3
/// (`IFAPROT_KERNEL_LL`) in `include/uapi/linux/if_addr.h`; iproute2's
/// `/etc/iproute2/rt_addrprotos` names only those. Any other value is free for user space;
/// a value far from the small numbers makes a clash with another tool's choice unlikely.
/// This value MUST NOT CHANGE: it is how a restarted vipmesh finds its addresses.
pub const VIPMESH_ADDR_PROTO: u8 = 0x56;

/// The IANA VXLAN UDP port (RFC 7348), Docker's default. The kernel's default when
/// `IFLA_VXLAN_PORT` is absent is 8472, so vipmesh always sends the port.
pub const VXLAN_PORT: u16 = 4789;

const RT_TABLE_MAIN: u8 = 254;

/// An Ethernet (MAC) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// From a slice of exactly 6 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Mac> {
        <[u8; 6]>::try_from(b).ok().map(Mac)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A string that is not `xx:xx:xx:xx:xx:xx`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}")]
pub struct MacParseError(pub String);

impl FromStr for Mac {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Mac, MacParseError> {
        let err = || MacParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Mac(out))
    }
}

/// VXLAN attributes of a link, as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    /// The VNI (`IFLA_VXLAN_ID`).
    pub vni: u32,
    /// The UDP destination port (`IFLA_VXLAN_PORT`).
    pub port: u16,
    /// `learning`.
    pub learning: bool,
    /// `proxy` (answer ARP/ND from the neighbour table).
    pub proxy: bool,
    /// `l2miss` notifications.
    pub l2miss: bool,
    /// `l3miss` notifications.
    pub l3miss: bool,
    /// The underlay device (`dev`), when set.
    pub dev: Option<u32>,
    /// The local source address (`local`), when set.
    pub local: Option<IpAddr>,
}

/// A link, as `ip -d link` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The ifindex.
    pub index: u32,
    /// The name.
    pub name: String,
    /// `IFLA_INFO_KIND` (`"bridge"`, `"veth"`, `"vxlan"`, ...); `None` for devices without one
    /// (loopback, physical).
    pub kind: Option<String>,
    /// The MTU.
    pub mtu: Option<u32>,
    /// The master (bridge) ifindex.
    pub master: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The hardware address, when it is a 6-byte MAC.
    pub mac: Option<Mac>,
    /// `IFLA_LINK_NETNSID`: the peer or underlay lives in another namespace (e.g. a VXLAN
    /// device created in the node namespace and moved: `link-netns node1`).
    pub link_netnsid: Option<i32>,
    /// VXLAN attributes, for `kind == "vxlan"`.
    pub vxlan: Option<VxlanInfo>,
}

/// An IP address on a link.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Address {
    /// The ifindex of the link.
    pub ifindex: u32,
    /// The local address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
    /// `IFA_PROTO`, when the kernel reports one (>= 5.18, and only when not 0).
    pub proto: Option<u8>,
}

/// A route of the main table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// The destination and its prefix length; `None` for a default route.
    pub dst: Option<(IpAddr, u8)>,
    /// The gateway, if any.
    pub gateway: Option<IpAddr>,
    /// The output ifindex, if any.
    pub oif: Option<u32>,
    /// `rtm_protocol` (2 kernel, 3 boot, 4 static, ...).
    pub protocol: u8,
}

/// An IP neighbour (ARP/NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    /// The ifindex.
    pub ifindex: u32,
    /// The IP address.
    pub ip: IpAddr,
    /// The link-layer address, when known.
    pub mac: Option<Mac>,
    /// `NUD_PERMANENT`.
    pub permanent: bool,
}

/// A bridge FDB entry (`bridge fdb show`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FdbEntry {
    /// The device (a VXLAN device for `self` entries, a bridge port for `master` ones).
    pub ifindex: u32,
    /// The MAC address.
    pub mac: Mac,
    /// `NDA_DST`: the remote VTEP of a VXLAN entry.
    pub dst: Option<IpAddr>,
    /// `NUD_PERMANENT` (`permanent`).
    pub permanent: bool,
    /// `NTF_SELF` (`self`): the entry lives in the device's own table.
    pub is_self: bool,
}

/// What [`Rtnl::add_vxlan`] creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// The device name (unique in the namespace it is created in).
    pub name: String,
    /// The VNI, 1..=2^24-1.
    pub vni: u32,
    /// The UDP destination port; always sent. [`VXLAN_PORT`] by default.
    pub port: u16,
    /// The MTU, if not the kernel's default (1450 for an IPv4 underlay without `dev`).
    pub mtu: Option<u32>,
    /// `learning` on or off.
    pub learning: bool,
    /// `proxy`.
    pub proxy: bool,
    /// `l2miss`.
    pub l2miss: bool,
    /// `l3miss`.
    pub l3miss: bool,
}

impl VxlanSpec {
    /// Docker's overlay device: `dstport 4789 proxy l2miss l3miss`, learning off (remote
    /// endpoints come from static FDB and neighbour entries), no `local` and no `dev`
    /// (the source address comes from routing in the namespace that creates the device).
    pub fn docker(name: impl Into<String>, vni: u32) -> VxlanSpec {
        VxlanSpec {
            name: name.into(),
            vni,
            port: VXLAN_PORT,
            mtu: None,
            learning: false,
            proxy: true,
            l2miss: true,
            l3miss: true,
        }
    }
}

/// A synchronous rtnetlink handle bound to one network namespace.
pub struct Rtnl {
    netns: Netns,
    name: String,
    /// Always `Some` but while dropping (see `Drop`).
    rt: Option<tokio::runtime::Runtime>,
    handle: rtnetlink::Handle,
}

impl Drop for Rtnl {
    /// The handle's own runtime is shut down without blocking: dropping a runtime blocks,
    /// which panics inside another runtime's context (an async caller, such as the agent,
    /// dropping its controller). Its one task, the socket's connection, ends with it.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rtnl").field("netns", &self.name).finish()
    }
}

enum Fail {
    Errno(i32),
    Other(String),
}

impl Rtnl {
    /// Opens an rtnetlink socket inside `netns` (created on a thread that entered it).
    ///
    /// # Errors
    /// [`Error::Setns`]/[`Error::Thread`] if the thread cannot enter the namespace,
    /// [`Error::Socket`] if the runtime or the socket cannot be created.
    pub fn open(netns: &Netns) -> Result<Rtnl, Error> {
        let name = netns.to_string();
        let socket_err = |source| Error::Socket {
            netns: name.clone(),
            source,
        };
        let (rt, handle) = netns
            .run(|| -> std::io::Result<_> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()?;
                // The socket is registered with this runtime's reactor, so it is made
                // inside the runtime's context; it is bound to this thread's namespace.
                let (conn, handle, _) = rt.block_on(async { rtnetlink::new_connection() })?;
                rt.spawn(conn);
                Ok((rt, handle))
            })?
            .map_err(socket_err)?;
        Ok(Rtnl {
            netns: netns.try_clone()?,
            name,
            rt: Some(rt),
            handle,
        })
    }

    /// The namespace this handle is bound to.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    fn exchange(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, Fail> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut handle = self.handle.clone();
        let Some(rt) = self.rt.as_ref() else {
            return Err(Fail::Other("the handle is being dropped".into()));
        };
        rt.block_on(async move {
            let mut replies = handle
                .request(req)
                .map_err(|e| Fail::Other(e.to_string()))?;
            let mut out = Vec::new();
            while let Some(reply) = replies.next().await {
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        if let Some(code) = e.code {
                            return Err(Fail::Errno(code.get().abs()));
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
            Ok(out)
        })
    }

    fn fail(&self, op: &'static str, object: impl fmt::Display, f: Fail) -> Error {
        match f {
            Fail::Errno(errno) => Error::Netlink {
                op,
                netns: self.name.clone(),
                object: object.to_string(),
                errno,
                source: std::io::Error::from_raw_os_error(errno),
            },
            Fail::Other(reason) => Error::Protocol {
                op,
                netns: self.name.clone(),
                object: object.to_string(),
                reason,
            },
        }
    }

    /// A request that changes something; the kernel's ACK is awaited.
    fn change(
        &self,
        op: &'static str,
        object: impl fmt::Display,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), Error> {
        self.exchange(msg, NLM_F_REQUEST | NLM_F_ACK | flags)
            .map(drop)
            .map_err(|f| self.fail(op, object, f))
    }

    fn dump(
        &self,
        op: &'static str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        self.exchange(msg, NLM_F_REQUEST | NLM_F_DUMP)
            .map_err(|f| self.fail(op, "(dump)", f))
    }

    // ------------------------------------------------------------------ links

    /// All links of the namespace, sorted by ifindex.
    ///
    /// # Errors
    /// [`Error::Netlink`] / [`Error::Protocol`].
    pub fn links(&self) -> Result<Vec<Link>, Error> {
        let msgs = self.dump(
            "dump links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        let mut out: Vec<Link> = msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(&l)),
                _ => None,
            })
            .collect();
        out.sort_by_key(|l| l.index);
        Ok(out)
    }

    /// The link named `name`.
    ///
    /// # Errors
    /// [`Error::Netlink`] with `ENODEV` ([`Error::is_not_found`]) if there is none.
    pub fn link(&self, name: &str) -> Result<Link, Error> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let replies = self
            .exchange(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST)
            .map_err(|f| self.fail("get link", format!("{name:?}"), f))?;
        replies
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(&l)),
                _ => None,
            })
            .ok_or_else(|| {
                self.fail(
                    "get link",
                    format!("{name:?}"),
                    Fail::Other("no RTM_NEWLINK in the reply".into()),
                )
            })
    }

    /// The ifindex of the link named `name`.
    ///
    /// # Errors
    /// As [`Rtnl::link`].
    pub fn link_index(&self, name: &str) -> Result<u32, Error> {
        self.link(name).map(|l| l.index)
    }

    fn set_link(
        &self,
        op: &'static str,
        index: u32,
        f: impl FnOnce(&mut LinkMessage),
    ) -> Result<(), Error> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        f(&mut msg);
        self.change(
            op,
            format_args!("ifindex {index}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
    }

    /// `ip link set dev X up`.
    ///
    /// # Errors
    /// [`Error::Netlink`] (`ENODEV` for a missing link).
    pub fn set_up(&self, index: u32) -> Result<(), Error> {
        self.set_link("set link up", index, |m| {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        })
    }

    /// `ip link set dev X down`.
    ///
    /// # Errors
    /// [`Error::Netlink`].
    pub fn set_down(&self, index: u32) -> Result<(), Error> {
        self.set_link("set link down", index, |m| {
            m.header.change_mask = LinkFlags::Up;
        })
    }

    /// `ip link set dev X mtu N`.
    ///
    /// # Errors
    /// [`Error::Netlink`] (`EINVAL` outside the device's min/max MTU).
    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), Error> {
        self.set_link("set link mtu", index, |m| {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        })
    }

    /// `ip link set dev X address MAC`.
    ///
    /// # Errors
    /// [`Error::Netlink`].
    pub fn set_mac(&self, index: u32, mac: Mac) -> Result<(), Error> {
        self.set_link("set link address", index, |m| {
            m.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        })
    }

    /// `ip link set dev X master BRIDGE`.
    ///
    /// # Errors
    /// [`Error::Netlink`].
    pub fn set_master(&self, index: u32, master: u32) -> Result<(), Error> {
        self.set_link("set link master", index, |m| {
            m.attributes.push(LinkAttribute::Controller(master));
        })
    }

    /// `ip link set dev X nomaster`.
    ///
    /// # Errors
    /// [`Error::Netlink`].
    pub fn set_nomaster(&self, index: u32) -> Result<(), Error> {
        self.set_link("set link nomaster", index, |m| {
            m.attributes.push(LinkAttribute::Controller(0));
        })
    }

    /// `ip link set dev X name NEW` (the link must be down for most kinds).
    ///
    /// # Errors
    /// [`Error::Netlink`] (`EEXIST` when the name is taken, `EBUSY` when the link is up).
    pub fn rename(&self, index: u32, name: &str) -> Result<(), Error> {
        self.set_link("rename link", index, |m| {
            m.attributes.push(LinkAttribute::IfName(name.to_string()));
        })
    }

    /// `ip link set dev X netns TARGET [name NEW]`: moves the link into `target`, renaming it
    /// on the way when `new_name` is given (the kernel supports both in one request). The link
    /// is down afterwards; look it up by name in the target for its new ifindex.
    ///
    /// # Errors
    /// [`Error::Netlink`] (`EEXIST` when the name is taken in the target).
    pub fn move_to_netns(
        &self,
        index: u32,
        target: &Netns,
        new_name: Option<&str>,
    ) -> Result<(), Error> {
        let fd = target.as_fd().as_raw_fd();
        self.set_link("move link to netns", index, |m| {
            m.attributes.push(LinkAttribute::NetNsFd(fd));
            if let Some(n) = new_name {
                m.attributes.push(LinkAttribute::IfName(n.to_string()));
            }
        })
    }

    /// `ip link del dev X`, by ifindex. Delete only links you created.
    ///
    /// # Errors
    /// [`Error::Netlink`] (`ENODEV` when it is gone already).
    pub fn delete_link(&self, index: u32) -> Result<(), Error> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.change(
            "delete link",
            format_args!("ifindex {index}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        )
    }

    fn new_link(&self, op: &'static str, name: &str, msg: LinkMessage) -> Result<u32, Error> {
        self.change(
            op,
            format_args!("{name:?}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        self.link_index(name)
    }

    /// `ip link add NAME type bridge`; returns the new ifindex.
    ///
    /// # Errors
    /// [`Error::Netlink`] (`EEXIST` when the name is taken).
    pub fn add_bridge(&self, name: &str) -> Result<u32, Error> {
        let msg = link_msg(
            name,
            InfoKind::Bridge,
            Some(InfoData::Bridge(Vec::<InfoBridge>::new())),
        );
        self.new_link("add bridge", name, msg)
    }

    /// `ip link add NAME type veth peer name PEER netns PEER_NS`: the peer is created directly
    /// in `peer_ns` (`IFLA_NET_NS_FD` in the peer message). Returns the local end's ifindex.
    ///
    /// # Errors
    /// [`Error::Netlink`] (`EEXIST` when either name is taken).
    pub fn add_veth(&self, name: &str, peer: &str, peer_ns: &Netns) -> Result<u32, Error> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        peer_msg
            .attributes
            .push(LinkAttribute::NetNsFd(peer_ns.as_fd().as_raw_fd()));
        let msg = link_msg(
            name,
            InfoKind::Veth,
            Some(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        );
        self.new_link("add veth", name, msg)
    }

    /// `ip link add NAME [mtu M] type vxlan id VNI dstport PORT [no]learning [proxy]
    /// [l2miss] [l3miss]`, with no `local` and no `dev`. Returns the new ifindex.
    ///
    /// # Errors
    /// [`Error::Netlink`] (`EEXIST` when the name is taken or another device already has this
    /// VNI and port in the namespace).
    pub fn add_vxlan(&self, spec: &VxlanSpec) -> Result<u32, Error> {
        let data = vec![
            InfoVxlan::Id(spec.vni),
            InfoVxlan::Port(spec.port),
            InfoVxlan::Learning(spec.learning),
            InfoVxlan::Proxy(spec.proxy),
            InfoVxlan::L2Miss(spec.l2miss),
            InfoVxlan::L3Miss(spec.l3miss),
        ];
        let mut msg = link_msg(&spec.name, InfoKind::Vxlan, Some(InfoData::Vxlan(data)));
        if let Some(mtu) = spec.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.new_link("add vxlan", &spec.name, msg)
    }

    // ------------------------------------------------------------------ addresses

    /// All addresses (IPv4 and IPv6), sorted.
    ///
    /// # Errors
    /// [`Error::Netlink`] / [`Error::Protocol`].
    pub fn addresses(&self) -> Result<Vec<Address>, Error> {
        let msgs = self.dump(
            "dump addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        )?;
        let mut out: Vec<Address> = msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => parse_address(&a),
                _ => None,
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// `ip addr replace ADDR/PREFIX dev X proto PROTO [nodad]`: adds the address, or
    /// replaces it when present (idempotent). Before Linux 6.3 a replace keeps the `IFA_PROTO`
    /// an existing address already has (see the module docs). IPv6 addresses get `IFA_F_NODAD`, so they are
    /// usable at once (no duplicate address detection, no "tentative" state).
    ///
    /// # Errors
    /// [`Error::Netlink`] (`ENODEV` for a missing link, `EINVAL` for a bad prefix).
    pub fn add_address(
        &self,
        ifindex: u32,
        addr: IpAddr,
        prefix_len: u8,
        proto: u8,
    ) -> Result<(), Error> {
        let mut msg = address_msg(ifindex, addr, prefix_len);
        if addr.is_ipv6() {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        msg.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(proto)));
        self.change(
            "add address",
            format_args!("{addr}/{prefix_len} on ifindex {ifindex}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// `ip addr del ADDR/PREFIX dev X`.
    ///
    /// # Errors
    /// [`Error::Netlink`]; a missing address is `EADDRNOTAVAIL` ([`Error::is_not_found`]).
    pub fn delete_address(&self, ifindex: u32, addr: IpAddr, prefix_len: u8) -> Result<(), Error> {
        let msg = address_msg(ifindex, addr, prefix_len);
        self.change(
            "delete address",
            format_args!("{addr}/{prefix_len} on ifindex {ifindex}"),
            RouteNetlinkMessage::DelAddress(msg),
            0,
        )
    }

    // ------------------------------------------------------------------ routes

    /// Routes of the main table (IPv4 and IPv6), sorted.
    ///
    /// # Errors
    /// [`Error::Netlink`] / [`Error::Protocol`].
    pub fn routes(&self) -> Result<Vec<Route>, Error> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = family;
            for m in self.dump("dump routes", RouteNetlinkMessage::GetRoute(req))? {
                if let RouteNetlinkMessage::NewRoute(r) = m
                    && let Some(route) = parse_route(&r)
                {
                    out.push(route);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// `ip route replace default via GW [dev X]` in the main table.
    ///
    /// # Errors
    /// [`Error::Netlink`] (`ENETUNREACH` when the gateway is not on a connected subnet).
    pub fn replace_default_route(&self, gateway: IpAddr, oif: Option<u32>) -> Result<(), Error> {
        let msg = default_route_msg(gateway, oif);
        self.change(
            "replace default route",
            format_args!("via {gateway}"),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// `ip route del default via GW` in the main table.
    ///
    /// # Errors
    /// [`Error::Netlink`]; a missing route is `ESRCH` ([`Error::is_not_found`]).
    pub fn delete_default_route(&self, gateway: IpAddr) -> Result<(), Error> {
        let msg = default_route_msg(gateway, None);
        self.change(
            "delete default route",
            format_args!("via {gateway}"),
            RouteNetlinkMessage::DelRoute(msg),
            0,
        )
    }

    // ------------------------------------------------------------------ neighbours

    /// IPv4 and IPv6 neighbour entries, sorted.
    ///
    /// # Errors
    /// [`Error::Netlink`] / [`Error::Protocol`].
    pub fn neighbours(&self) -> Result<Vec<Neighbour>, Error> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = NeighbourMessage::default();
            req.header.family = family;
            for m in self.dump("dump neighbours", RouteNetlinkMessage::GetNeighbour(req))? {
                if let RouteNetlinkMessage::NewNeighbour(n) = m
                    && let Some(n) = parse_neighbour(&n)
                {
                    out.push(n);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// `ip neigh replace IP lladdr MAC dev X nud permanent`.
    ///
    /// # Errors
    /// [`Error::Netlink`].
    pub fn replace_neighbour(&self, ifindex: u32, ip: IpAddr, mac: Mac) -> Result<(), Error> {
        let mut msg = neigh_msg(ifindex, ip);
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        self.change(
            "replace neighbour",
            format_args!("{ip} lladdr {mac} on ifindex {ifindex}"),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// `ip neigh del IP dev X`.
    ///
    /// # Errors
    /// [`Error::Netlink`]; a missing entry is `ENOENT` ([`Error::is_not_found`]).
    pub fn delete_neighbour(&self, ifindex: u32, ip: IpAddr) -> Result<(), Error> {
        let msg = neigh_msg(ifindex, ip);
        self.change(
            "delete neighbour",
            format_args!("{ip} on ifindex {ifindex}"),
            RouteNetlinkMessage::DelNeighbour(msg),
            0,
        )
    }

    // ------------------------------------------------------------------ bridge fdb

    /// All bridge FDB entries of the namespace (`bridge fdb show`), sorted.
    ///
    /// # Errors
    /// [`Error::Netlink`] / [`Error::Protocol`].
    pub fn fdb(&self) -> Result<Vec<FdbEntry>, Error> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        let mut out: Vec<FdbEntry> = self
            .dump("dump fdb", RouteNetlinkMessage::GetNeighbour(req))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => parse_fdb(&n),
                _ => None,
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// `bridge fdb replace MAC dev X dst VTEP self permanent`.
    ///
    /// # Errors
    /// [`Error::Netlink`].
    pub fn replace_fdb(&self, ifindex: u32, mac: Mac, dst: IpAddr) -> Result<(), Error> {
        let msg = fdb_msg(ifindex, mac, Some(dst));
        self.change(
            "replace fdb entry",
            format_args!("{mac} dst {dst} on ifindex {ifindex}"),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// `bridge fdb del MAC dev X [dst VTEP] self`: with `dst`, only that remote of the entry.
    ///
    /// # Errors
    /// [`Error::Netlink`]; a missing entry is `ENOENT` ([`Error::is_not_found`]).
    pub fn delete_fdb(&self, ifindex: u32, mac: Mac, dst: Option<IpAddr>) -> Result<(), Error> {
        let msg = fdb_msg(ifindex, mac, dst);
        self.change(
            "delete fdb entry",
            format_args!("{mac} on ifindex {ifindex}"),
            RouteNetlinkMessage::DelNeighbour(msg),
            0,
        )
    }

    // ------------------------------------------------------------------ sysctls

    /// [`Netns::sysctl_read`] in this handle's namespace.
    ///
    /// # Errors
    /// As [`Netns::sysctl_read`].
    pub fn sysctl_read(&self, key: &str) -> Result<String, Error> {
        self.netns.sysctl_read(key)
    }

    /// [`Netns::sysctl_write`] in this handle's namespace.
    ///
    /// # Errors
    /// As [`Netns::sysctl_write`].
    pub fn sysctl_write(&self, key: &str, value: &str) -> Result<(), Error> {
        self.netns.sysctl_write(key, value)
    }
}

// ---------------------------------------------------------------------- message building

fn link_msg(name: &str, kind: InfoKind, data: Option<InfoData>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    let mut info = vec![LinkInfo::Kind(kind)];
    if let Some(d) = data {
        info.push(LinkInfo::Data(d));
    }
    msg.attributes.push(LinkAttribute::LinkInfo(info));
    msg
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn address_msg(ifindex: u32, addr: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family_of(addr);
    msg.header.prefix_len = prefix_len;
    msg.header.scope = AddressScope::Universe;
    msg.header.index = ifindex;
    // As iproute2: IFA_LOCAL and IFA_ADDRESS both carry the address.
    msg.attributes.push(AddressAttribute::Local(addr));
    msg.attributes.push(AddressAttribute::Address(addr));
    msg
}

fn default_route_msg(gateway: IpAddr, oif: Option<u32>) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(gateway);
    msg.header.table = RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
    if let Some(i) = oif {
        msg.attributes.push(RouteAttribute::Oif(i));
    }
    msg
}

fn neigh_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

fn neigh_msg(ifindex: u32, ip: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family_of(ip);
    msg.header.ifindex = ifindex;
    msg.attributes
        .push(NeighbourAttribute::Destination(neigh_address(ip)));
    msg
}

fn fdb_msg(ifindex: u32, mac: Mac, dst: Option<IpAddr>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = ifindex;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    if let Some(d) = dst {
        msg.attributes
            .push(NeighbourAttribute::Destination(neigh_address(d)));
    }
    msg
}

// ---------------------------------------------------------------------- parsing

fn parse_link(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        kind: None,
        mtu: None,
        master: None,
        up: l.header.flags.contains(LinkFlags::Up),
        mac: None,
        link_netnsid: None,
        vxlan: None,
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = Some(*m),
            LinkAttribute::Controller(c) => link.master = Some(*c),
            LinkAttribute::Address(b) => link.mac = Mac::from_slice(b),
            LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(v)) => link.vxlan = Some(parse_vxlan(v)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn parse_vxlan(attrs: &[InfoVxlan]) -> VxlanInfo {
    let mut v = VxlanInfo {
        vni: 0,
        port: 0,
        learning: false,
        proxy: false,
        l2miss: false,
        l3miss: false,
        dev: None,
        local: None,
    };
    for a in attrs {
        match a {
            InfoVxlan::Id(id) => v.vni = *id,
            InfoVxlan::Port(p) => v.port = *p,
            InfoVxlan::Learning(b) => v.learning = *b,
            InfoVxlan::Proxy(b) => v.proxy = *b,
            InfoVxlan::L2Miss(b) => v.l2miss = *b,
            InfoVxlan::L3Miss(b) => v.l3miss = *b,
            InfoVxlan::Link(i) if *i != 0 => v.dev = Some(*i),
            InfoVxlan::Local(a) if !a.is_unspecified() => v.local = Some(IpAddr::V4(*a)),
            InfoVxlan::Local6(a) if !a.is_unspecified() => v.local = Some(IpAddr::V6(*a)),
            _ => {}
        }
    }
    v
}

fn parse_address(a: &AddressMessage) -> Option<Address> {
    let mut local = None;
    let mut address = None;
    let mut proto = None;
    for attr in &a.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Protocol(p) => proto = Some(u8::from(*p)).filter(|p| *p != 0),
            _ => {}
        }
    }
    Some(Address {
        ifindex: a.header.index,
        addr: local.or(address)?,
        prefix_len: a.header.prefix_len,
        proto,
    })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn parse_route(r: &RouteMessage) -> Option<Route> {
    let mut table = u32::from(r.header.table);
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = route_ip(d),
            RouteAttribute::Gateway(g) => gateway = route_ip(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != u32::from(RT_TABLE_MAIN) {
        return None;
    }
    let dst = match dst {
        Some(d) => Some((d, r.header.destination_prefix_length)),
        None if r.header.destination_prefix_length == 0 => None,
        None => return None,
    };
    Some(Route {
        dst,
        gateway,
        oif,
        protocol: u8::from(r.header.protocol),
    })
}

fn neigh_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        NeighbourAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        // AF_BRIDGE entries carry NDA_DST as raw bytes: 4 for IPv4, 16 for IPv6.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice())
                .ok()
                .map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            16 => <[u8; 16]>::try_from(b.as_slice())
                .ok()
                .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
            _ => None,
        },
        _ => None,
    }
}

fn parse_neighbour(n: &NeighbourMessage) -> Option<Neighbour> {
    if !matches!(n.header.family, AddressFamily::Inet | AddressFamily::Inet6) {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(d) => ip = neigh_ip(d),
            NeighbourAttribute::LinkLayerAddress(b) => mac = Mac::from_slice(b),
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex: n.header.ifindex,
        ip: ip?,
        mac,
        permanent: n.header.state == NeighbourState::Permanent,
    })
}

fn parse_fdb(n: &NeighbourMessage) -> Option<FdbEntry> {
    if n.header.family != AddressFamily::Bridge {
        return None;
    }
    let mut mac = None;
    let mut dst = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(b) => mac = Mac::from_slice(b),
            NeighbourAttribute::Destination(d) => dst = neigh_ip(d),
            _ => {}
        }
    }
    Some(FdbEntry {
        ifindex: n.header.ifindex,
        mac: mac?,
        dst,
        permanent: n.header.state == NeighbourState::Permanent,
        is_self: n.header.flags.contains(NeighbourFlags::Own),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let m: Mac = "02:42:0a:ff:00:06".parse().unwrap();
        assert_eq!(m, Mac([2, 0x42, 10, 255, 0, 6]));
        assert_eq!(m.to_string(), "02:42:0a:ff:00:06");
        for bad in [
            "",
            "02:42",
            "02:42:0a:ff:00:06:07",
            "2:42:0a:ff:00:06",
            "zz:42:0a:ff:00:06",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bridge_fdb_dst_bytes_parse_as_ip() {
        assert_eq!(
            neigh_ip(&NeighbourAddress::Other(vec![192, 168, 50, 12])),
            Some(IpAddr::from([192, 168, 50, 12]))
        );
        assert_eq!(neigh_ip(&NeighbourAddress::Other(vec![1, 2, 3])), None);
    }

    #[test]
    fn address_message_carries_proto_and_nodad() {
        let m = address_msg(3, "fd00::1".parse().unwrap(), 64);
        assert_eq!(m.header.family, AddressFamily::Inet6);
        assert_eq!(m.header.index, 3);
        let parsed = parse_address(&m).unwrap();
        assert_eq!(parsed.addr, "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(parsed.proto, None);
    }

    #[test]
    fn vipmesh_proto_is_outside_the_kernel_reserved_values() {
        const { assert!(VIPMESH_ADDR_PROTO > 3) };
        assert_eq!(VIPMESH_ADDR_PROTO, 0x56);
    }
}

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn rtnl_is_send_and_sync() {
        assert_send_sync::<super::Rtnl>();
    }
}
