//! The kernel client: a `NETLINK_GENERIC` socket in one network namespace, talking to the
//! "IPVS" family (`net/netfilter/ipvs/ip_vs_ctl.c`,
//! <https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/net/netfilter/ipvs/ip_vs_ctl.c>).

use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use netlink_sys::{Socket, protocols::NETLINK_GENERIC};
use vipmesh_netns::Netns;

use crate::backend::{IpvsBackend, Op};
use crate::codec::ipvs::{
    Cmd, CmdAttr, IPVS_GENL_NAME, IpvsAttrs, IpvsMessage, getfamily_request, parse_family_id,
};
use crate::codec::wire::{
    Emit, GENL_ID_CTRL, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    NLMSG_HDRLEN, NlHeader, Writer, messages,
};
use crate::model::{DestEntry, Info, ServiceEntry, ServiceKey, Timeouts, service_nest};
use crate::{Error, OpKind};

/// Receive timeout: a kernel that never answers gives `EAGAIN` rather than a hang
/// (moby/ipvs uses 3 s; batches can take longer under emulation).
const RECV_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests per `sendmsg` in a batch. Each ack is its own skb (~1 KiB of receive buffer
/// with `NETLINK_CAP_ACK`); 256 of them fit the default buffer, so no ack is dropped even
/// when `SO_RCVBUFFORCE` is refused.
const BATCH_CHUNK: usize = 256;
const RECV_BUF: usize = 64 * 1024;

/// Why a single request failed: the kernel said no (errno), or something else did.
enum ReqError {
    Kernel(io::Error),
    Other(Error),
}

impl From<Error> for ReqError {
    fn from(e: Error) -> Self {
        ReqError::Other(e)
    }
}

/// A connection to the IPVS table of one network namespace.
///
/// The socket is created inside the namespace and stays bound to it, so the client can be
/// used from any thread afterwards. The family id is resolved once, at open.
///
/// # Examples
/// ```no_run
/// use vipmesh_ipvs::{Client, Family, FwdMethod, IpvsDest, IpvsService, Op, Scheduler, ServiceKey};
/// let mut ipvs = Client::open()?;
/// let key = ServiceKey::fwmark(Family::Inet, 259)?;
/// let results = ipvs.execute(&[
///     Op::AddService(IpvsService::new(key, Scheduler::RR)?),
///     Op::AddDest(key, IpvsDest::new("10.0.0.10".parse().unwrap(), 0, FwdMethod::Masq)),
/// ]);
/// for r in results { r?; }
/// for d in ipvs.dests(&key)? {
///     println!("{} active={} inactive={}", d.dest.key, d.active_conns, d.inactive_conns);
/// }
/// # Ok::<(), vipmesh_ipvs::Error>(())
/// ```
#[derive(Debug)]
pub struct Client {
    sock: Socket,
    family: u16,
    pid: u32,
    seq: u32,
    rx: Vec<u8>,
}

impl Client {
    /// Opens a client in the calling thread's network namespace.
    ///
    /// Resolves the generic netlink family "IPVS"; if it is missing, runs `modprobe ip_vs`
    /// once (as moby/ipvs does) and tries again.
    ///
    /// # Errors
    /// [`Error::IpvsMissing`] when IPVS is not in the kernel, [`Error::PermissionDenied`]
    /// without `CAP_NET_ADMIN`, [`Error::Socket`] for socket failures.
    pub fn open() -> Result<Client, Error> {
        let mut sock = Socket::new(NETLINK_GENERIC).map_err(|source| Error::Socket {
            call: "socket",
            source,
        })?;
        let addr = sock.bind_auto().map_err(|source| Error::Socket {
            call: "bind",
            source,
        })?;
        sock.set_cap_ack(true).map_err(|source| Error::Socket {
            call: "setsockopt(NETLINK_CAP_ACK)",
            source,
        })?;
        crate::sys::set_recv_timeout(sock.as_fd(), RECV_TIMEOUT).map_err(|source| {
            Error::Socket {
                call: "setsockopt(SO_RCVTIMEO)",
                source,
            }
        })?;
        crate::sys::set_send_timeout(sock.as_fd(), RECV_TIMEOUT).map_err(|source| {
            Error::Socket {
                call: "setsockopt(SO_SNDTIMEO)",
                source,
            }
        })?;
        if let Err(e) = crate::sys::force_recv_buffer(sock.as_fd(), 8 << 20) {
            tracing::debug!(error = %e, "SO_RCVBUFFORCE refused; keeping the default receive buffer");
        }
        let mut c = Client {
            sock,
            family: 0,
            pid: addr.port_number(),
            seq: 1,
            rx: Vec::with_capacity(RECV_BUF),
        };
        c.family = match c.resolve_family() {
            Ok(id) => id,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                tracing::info!("generic netlink family IPVS not found; running `modprobe ip_vs`");
                match std::process::Command::new("modprobe").arg("ip_vs").status() {
                    Ok(st) if !st.success() => {
                        tracing::warn!(status = %st, "modprobe ip_vs failed")
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot run modprobe"),
                    Ok(_) => {}
                }
                c.resolve_family().map_err(|source| {
                    if source.raw_os_error() == Some(libc::ENOENT) {
                        Error::IpvsMissing { source }
                    } else {
                        family_error(source)
                    }
                })?
            }
            Err(e) => return Err(family_error(e)),
        };
        tracing::debug!(family = c.family, pid = c.pid, "IPVS client open");
        Ok(c)
    }

    /// Opens a client inside `netns` (the calling thread's namespace is not changed: the
    /// socket is created on a helper thread that enters `netns`).
    ///
    /// # Errors
    /// [`Error::Netns`] if the namespace cannot be entered, else as [`Client::open`].
    pub fn open_in(netns: &Netns) -> Result<Client, Error> {
        netns
            .run(Client::open)
            .map_err(|source| Error::Netns { source })?
    }

    /// Opens a client in the namespace at `path` (e.g. `/run/netns/lb`, `/proc/<pid>/ns/net`).
    ///
    /// # Errors
    /// [`Error::Netns`] if the path is not a namespace, else as [`Client::open_in`].
    pub fn open_in_path(path: impl AsRef<Path>) -> Result<Client, Error> {
        let ns = Netns::from_path(path).map_err(|source| Error::Netns { source })?;
        Client::open_in(&ns)
    }

    /// The generic netlink family id of "IPVS" in this kernel.
    pub fn family_id(&self) -> u16 {
        self.family
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn resolve_family(&mut self) -> io::Result<u16> {
        let payload = getfamily_request(IPVS_GENL_NAME);
        let seq = self.next_seq();
        let hdr = NlHeader {
            len: 0,
            kind: GENL_ID_CTRL,
            flags: NLM_F_REQUEST,
            seq,
            pid: 0,
        };
        let mut buf = vec![0u8; NLMSG_HDRLEN + payload.len()];
        let mut w = Writer::new(&mut buf);
        let len = u32::try_from(NLMSG_HDRLEN + payload.len()).map_err(io::Error::other)?;
        hdr.emit_with_len(&mut w, len).map_err(io::Error::other)?;
        w.put(&payload).map_err(io::Error::other)?;
        self.sock.send(&buf, 0)?;
        loop {
            self.recv()?;
            for m in messages(&self.rx) {
                let (h, body, off) =
                    m.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                if h.seq != seq {
                    continue;
                }
                if h.kind == NLMSG_ERROR {
                    let errno = ack_errno(body);
                    return Err(io::Error::from_raw_os_error(if errno == 0 {
                        libc::EPROTO
                    } else {
                        errno
                    }));
                }
                if h.kind == GENL_ID_CTRL {
                    return parse_family_id(body, off)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
                        .ok_or_else(|| {
                            io::Error::new(io::ErrorKind::InvalidData, "no CTRL_ATTR_FAMILY_ID")
                        });
                }
            }
        }
    }

    fn recv(&mut self) -> io::Result<usize> {
        self.rx.clear();
        self.rx.reserve(RECV_BUF);
        let n = self.sock.recv(&mut self.rx, 0)?;
        if n > self.rx.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "netlink message larger than the receive buffer",
            ));
        }
        Ok(n)
    }

    fn frame(
        &self,
        msg: &IpvsMessage,
        flags: u16,
        seq: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let len = NLMSG_HDRLEN + msg.buffer_len();
        let start = out.len();
        out.resize(start + len, 0);
        let dst = out.get_mut(start..).unwrap_or_default();
        let mut w = Writer::new(dst);
        let len32 = u32::try_from(len).map_err(|source| {
            tracing::debug!(%source, "request too long");
            Error::Encode {
                source: crate::codec::EncodeError::TooLong { len },
            }
        })?;
        NlHeader {
            len: 0,
            kind: self.family,
            flags,
            seq,
            pid: 0,
        }
        .emit_with_len(&mut w, len32)
        .map_err(|source| Error::Encode { source })?;
        msg.emit(&mut w).map_err(|source| Error::Encode { source })
    }

    /// Sends one request and collects the replies (a dump until `NLMSG_DONE`, else until
    /// the ack).
    fn request(&mut self, msg: &IpvsMessage, dump: bool) -> Result<Vec<IpvsMessage>, ReqError> {
        let seq = self.next_seq();
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        let mut buf = Vec::new();
        self.frame(msg, flags, seq, &mut buf)?;
        self.sock.send(&buf, 0).map_err(|source| Error::Socket {
            call: "send",
            source,
        })?;
        let mut out = Vec::new();
        loop {
            self.recv().map_err(|source| Error::Socket {
                call: "recv",
                source,
            })?;
            for m in messages(&self.rx) {
                let (h, body, off) = m.map_err(|source| Error::Decode { source })?;
                if h.seq != seq {
                    tracing::debug!(seq = h.seq, want = seq, "skipping stale netlink message");
                    continue;
                }
                match h.kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = ack_errno(body);
                        if errno != 0 {
                            return Err(ReqError::Kernel(io::Error::from_raw_os_error(errno)));
                        }
                        return Ok(out);
                    }
                    k if k == self.family => out.push(
                        IpvsMessage::parse(body, off).map_err(|source| Error::Decode { source })?,
                    ),
                    _ => {}
                }
            }
        }
    }

    /// Every service, with stats (`ipvsadm -Ln`).
    ///
    /// # Errors
    /// [`Error::Kernel`] with [`OpKind::DumpServices`], [`Error::Decode`] on a malformed
    /// reply.
    pub fn services(&mut self) -> Result<Vec<ServiceEntry>, Error> {
        let replies = self
            .request(&IpvsMessage::new(Cmd::GET_SERVICE, vec![]), true)
            .map_err(|e| match e {
                ReqError::Kernel(source) => kernel(OpKind::DumpServices, source),
                ReqError::Other(e) => e,
            })?;
        let mut out = Vec::with_capacity(replies.len());
        for r in &replies {
            for a in r.cmd_attrs() {
                if let CmdAttr::Service(_, s) = a {
                    out.push(ServiceEntry::from_attrs(s)?);
                }
            }
        }
        Ok(out)
    }

    /// One service, or `None` if it does not exist.
    ///
    /// # Errors
    /// [`Error::GetService`] for kernel errors other than "no such service".
    pub fn service(&mut self, key: &ServiceKey) -> Result<Option<ServiceEntry>, Error> {
        match self.request(
            &IpvsMessage::new(Cmd::GET_SERVICE, vec![service_nest(key)]),
            false,
        ) {
            Ok(replies) => {
                for r in &replies {
                    for a in r.cmd_attrs() {
                        if let CmdAttr::Service(_, s) = a {
                            return ServiceEntry::from_attrs(s).map(Some);
                        }
                    }
                }
                Ok(None)
            }
            Err(ReqError::Kernel(source)) if source.raw_os_error() == Some(libc::ESRCH) => Ok(None),
            Err(ReqError::Kernel(source)) => Err(Error::GetService {
                service: *key,
                source,
            }),
            Err(ReqError::Other(e)) => Err(e),
        }
    }

    /// The destinations of a service, with connection counts and stats (empty when the
    /// service does not exist: the kernel ends the dump silently).
    ///
    /// # Errors
    /// [`Error::DumpDests`] for kernel errors.
    pub fn dests(&mut self, key: &ServiceKey) -> Result<Vec<DestEntry>, Error> {
        let replies = self
            .request(
                &IpvsMessage::new(Cmd::GET_DEST, vec![service_nest(key)]),
                true,
            )
            .map_err(|e| match e {
                ReqError::Kernel(source) => Error::DumpDests {
                    service: *key,
                    source,
                },
                ReqError::Other(e) => e,
            })?;
        let mut out = Vec::new();
        for r in &replies {
            for a in r.cmd_attrs() {
                if let CmdAttr::Dest(_, d) = a {
                    out.push(DestEntry::from_attrs(key.family(), d)?);
                }
            }
        }
        Ok(out)
    }

    /// Connection timeouts (`ipvsadm -L --timeout`).
    ///
    /// # Errors
    /// [`Error::Kernel`] with [`OpKind::GetTimeouts`].
    pub fn timeouts(&mut self) -> Result<Timeouts, Error> {
        let replies = self
            .request(&IpvsMessage::new(Cmd::GET_CONFIG, vec![]), false)
            .map_err(|e| match e {
                ReqError::Kernel(source) => kernel(OpKind::GetTimeouts, source),
                ReqError::Other(e) => e,
            })?;
        Ok(replies
            .first()
            .map(|m| Timeouts::from_attrs(m.cmd_attrs()))
            .unwrap_or_default())
    }

    /// Version and connection table size (`IPVS_CMD_GET_INFO`).
    ///
    /// # Errors
    /// [`Error::Kernel`] with [`OpKind::GetInfo`].
    pub fn info(&mut self) -> Result<Info, Error> {
        let replies = self
            .request(&IpvsMessage::new(Cmd::GET_INFO, vec![]), false)
            .map_err(|e| match e {
                ReqError::Kernel(source) => kernel(OpKind::GetInfo, source),
                ReqError::Other(e) => e,
            })?;
        let mut info = Info::default();
        for r in &replies {
            if let IpvsAttrs::Info(a) = &r.attrs {
                for x in a {
                    match x {
                        crate::codec::InfoAttr::Version(v) => info.version = *v,
                        crate::codec::InfoAttr::ConnTabSize(v) => info.conn_tab_size = *v,
                        crate::codec::InfoAttr::Other { .. } => {}
                    }
                }
            }
        }
        Ok(info)
    }

    /// Zeroes all counters (`ipvsadm -Z`).
    ///
    /// # Errors
    /// [`Error::Kernel`] with [`OpKind::Zero`].
    pub fn zero(&mut self) -> Result<(), Error> {
        self.request(&IpvsMessage::new(Cmd::ZERO, vec![]), false)
            .map(drop)
            .map_err(|e| match e {
                ReqError::Kernel(source) => kernel(OpKind::Zero, source),
                ReqError::Other(e) => e,
            })
    }

    /// Applies one operation.
    ///
    /// # Errors
    /// The operation's typed error (e.g. [`Error::AddDest`]) with the kernel's errno.
    pub fn apply(&mut self, op: &Op) -> Result<(), Error> {
        self.execute(std::slice::from_ref(op))
            .into_iter()
            .next()
            .unwrap_or(Ok(()))
    }

    /// Applies `ops` in order, pipelined: up to 256 requests per `sendmsg`, each with its
    /// own ack, and returns one result per operation. Invalid operations are reported
    /// without being sent. The kernel processes each request independently, so a failure
    /// does not stop the following ones (IPVS has no transactions).
    pub fn execute(&mut self, ops: &[Op]) -> Vec<Result<(), Error>> {
        let mut results: Vec<Result<(), Error>> = Vec::with_capacity(ops.len());
        let mut buf = Vec::with_capacity(64 * 1024);
        for chunk in ops.chunks(BATCH_CHUNK) {
            buf.clear();
            let base = results.len();
            // (seq, index into results) of each request actually sent
            let mut pending: Vec<(u32, usize)> = Vec::with_capacity(chunk.len());
            for (i, op) in chunk.iter().enumerate() {
                if let Err(e) = op.validate() {
                    results.push(Err(e));
                    continue;
                }
                let seq = self.next_seq();
                match self.frame(&op.to_message(), NLM_F_REQUEST | NLM_F_ACK, seq, &mut buf) {
                    Ok(()) => {
                        pending.push((seq, base + i));
                        results.push(Ok(()));
                    }
                    Err(e) => results.push(Err(e)),
                }
            }
            if pending.is_empty() {
                continue;
            }
            if let Err(source) = self.sock.send(&buf, 0) {
                for (_, idx) in &pending {
                    if let Some(r) = results.get_mut(*idx) {
                        *r = Err(Error::Socket {
                            call: "send",
                            source: io::Error::from(source.kind()),
                        });
                    }
                }
                continue;
            }
            if let Err(e) = self.collect_acks(&pending, ops, &mut results) {
                tracing::warn!(error = %e, "lost track of batch acks");
                let msg = e.to_string();
                for (_, idx) in &pending {
                    if let Some(r @ Ok(())) = results.get_mut(*idx) {
                        *r = Err(Error::Protocol {
                            what: format!("no ack received: {msg}"),
                        });
                    }
                }
            }
        }
        results
    }

    fn collect_acks(
        &mut self,
        pending: &[(u32, usize)],
        ops: &[Op],
        results: &mut [Result<(), Error>],
    ) -> Result<(), Error> {
        let first = pending.first().map(|p| p.0).unwrap_or_default();
        let mut acked = 0usize;
        while acked < pending.len() {
            self.recv().map_err(|source| Error::Socket {
                call: "recv",
                source,
            })?;
            for m in messages(&self.rx) {
                let (h, body, _) = m.map_err(|source| Error::Decode { source })?;
                if h.kind != NLMSG_ERROR {
                    continue;
                }
                // seqs in a chunk are consecutive
                let Some(&(_, idx)) = pending.get(h.seq.wrapping_sub(first) as usize) else {
                    tracing::debug!(seq = h.seq, "ack for an unknown sequence number");
                    continue;
                };
                acked += 1;
                let errno = ack_errno(body);
                if errno != 0
                    && let (Some(slot), Some(op)) = (results.get_mut(idx), ops.get(idx))
                {
                    *slot = Err(op.error(io::Error::from_raw_os_error(errno)));
                }
            }
        }
        Ok(())
    }

    /// Deletes every service (`ipvsadm -C`).
    ///
    /// # Errors
    /// [`Error::Kernel`] with [`OpKind::Flush`].
    pub fn flush(&mut self) -> Result<(), Error> {
        self.apply(&Op::Flush)
    }

    /// Sets the connection timeouts (`ipvsadm --set`); 0 leaves a value unchanged.
    ///
    /// # Errors
    /// [`Error::Kernel`] with [`OpKind::SetTimeouts`].
    pub fn set_timeouts(&mut self, t: Timeouts) -> Result<(), Error> {
        self.apply(&Op::SetTimeouts(t))
    }
}

impl IpvsBackend for Client {
    fn services(&mut self) -> Result<Vec<ServiceEntry>, Error> {
        Client::services(self)
    }

    fn dests(&mut self, service: &ServiceKey) -> Result<Vec<DestEntry>, Error> {
        Client::dests(self, service)
    }

    fn execute(&mut self, ops: &[Op]) -> Vec<Result<(), Error>> {
        Client::execute(self, ops)
    }

    fn timeouts(&mut self) -> Result<Timeouts, Error> {
        Client::timeouts(self)
    }
}

fn kernel(op: OpKind, source: io::Error) -> Error {
    if source.raw_os_error() == Some(libc::EPERM) {
        return Error::PermissionDenied {
            op: format!("{op:?}"),
            source,
        };
    }
    Error::Kernel { op, source }
}

fn family_error(source: io::Error) -> Error {
    match source.raw_os_error() {
        Some(libc::EPERM) => Error::PermissionDenied {
            op: "resolve the IPVS netlink family".into(),
            source,
        },
        Some(_) => Error::Kernel {
            op: OpKind::ResolveFamily,
            source,
        },
        None => Error::Socket {
            call: "recv",
            source,
        },
    }
}

/// The positive errno of an `NLMSG_ERROR` payload (0 for an ack); `EPROTO` if truncated.
pub(crate) fn ack_errno(body: &[u8]) -> i32 {
    body.get(..4)
        .and_then(|b| b.try_into().ok())
        .map(|b: [u8; 4]| i32::from_ne_bytes(b).saturating_neg())
        .unwrap_or(libc::EPROTO)
}
