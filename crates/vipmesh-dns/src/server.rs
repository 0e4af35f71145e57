//! The thin shell: sockets bound inside a network namespace, served on a dedicated thread with
//! its own single-threaded tokio runtime.
//!
//! The serving loops are ours, not `hickory_server::Server`'s: hickory 0.26 spawns one task
//! per UDP datagram and per TCP connection without any bound, and offers no knob for one. The
//! loops here are small (receive, [`handler::respond_bytes`], send) and put a hard bound on
//! everything a flood can make the server hold; parsing and encoding stay hickory's.
//!
//! # Bounds under a flood ([`Limits`])
//!
//! - **UDP**: at most [`Limits::udp_in_flight`] queries are being answered at once. At the cap
//!   the loop stops reading the socket until one finishes: the excess waits in the kernel's
//!   receive buffer (`SO_RCVBUF`, `net.core.rmem_default`), and what does not fit is dropped
//!   by the kernel (counted in `nstat`'s `UdpRcvbufErrors`). Dropping, not SERVFAIL/REFUSED:
//!   an error answer costs the same send as a real one, is reflected to whatever source
//!   address the flood forges, and some stub resolvers cache it; a dropped query is retried
//!   by the client. Memory: `udp_in_flight` × (query ≤ 4096 B + answer ≤ 1232 B).
//! - **TCP**: at most [`Limits::tcp_connections`] connections at once; one more is accepted
//!   and closed at once (the client sees EOF, not a connection stuck in the backlog). Each
//!   connection answers its queries one after the other, so TCP queries in flight never
//!   exceed the connection cap. A connection that does not deliver a complete query within
//!   [`Limits::tcp_idle`] of the previous answer (or of accepting it), or does not take an
//!   answer within that time, is closed. Memory: `tcp_connections` × (≤ 64 KiB query +
//!   ≤ 64 KiB answer).
//!
//! [`DnsServer::stats`] exposes the counters (and the peak number of UDP queries in flight and
//! of TCP connections) for tests and metrics.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, oneshot};
use vipmesh_netns::Netns;

use crate::handler::{self, Transport};
use crate::{DnsTable, Error};

/// A TCP connection that sends no complete query for this long is closed (the default of
/// [`Limits::tcp_idle`]).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest UDP query read; a longer datagram is cut there and answered FORMERR (as
/// hickory's own UDP stream does).
const UDP_RECV_BUFFER: usize = 4096;

type SharedTable = Arc<RwLock<Arc<DnsTable>>>;

/// How much a flood can make one server hold. See the module docs of the server for what
/// happens at each bound.
///
/// # Examples
///
/// ```
/// use vipmesh_dns::Limits;
///
/// let limits = Limits { udp_in_flight: 16, ..Limits::default() };
/// assert_eq!(limits.tcp_connections, Limits::default().tcp_connections);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// UDP queries being answered at once (default 128). At the cap, the server stops reading
    /// until one is done; the kernel drops what overflows the socket's receive buffer.
    pub udp_in_flight: usize,
    /// TCP connections open at once (default 64). One more is accepted and closed at once.
    pub tcp_connections: usize,
    /// How long a TCP connection may take to deliver its next complete query, or to take an
    /// answer, before it is closed (default [`TCP_IDLE_TIMEOUT`]).
    pub tcp_idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            udp_in_flight: 128,
            tcp_connections: 64,
            tcp_idle: TCP_IDLE_TIMEOUT,
        }
    }
}

impl Limits {
    fn validate(&self) -> Result<(), Error> {
        let invalid = |field, value: String, reason| Error::InvalidLimit {
            field,
            value,
            reason,
        };
        // tokio's semaphore holds at most `Semaphore::MAX_PERMITS` permits.
        for (field, n) in [
            ("udp_in_flight", self.udp_in_flight),
            ("tcp_connections", self.tcp_connections),
        ] {
            if n == 0 {
                return Err(invalid(field, n.to_string(), "must be at least 1"));
            }
            if n > Semaphore::MAX_PERMITS {
                return Err(invalid(field, n.to_string(), "too large"));
            }
        }
        if self.tcp_idle.is_zero() {
            return Err(invalid(
                "tcp_idle",
                format!("{:?}", self.tcp_idle),
                "must be longer than zero",
            ));
        }
        Ok(())
    }
}

/// What the server did since it started: a snapshot of its counters (see
/// [`DnsServer::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// UDP datagrams read from the socket.
    pub udp_received: u64,
    /// UDP answers sent.
    pub udp_answered: u64,
    /// UDP queries being answered now.
    pub udp_in_flight: u64,
    /// The most UDP queries ever in flight at once; never above [`Limits::udp_in_flight`].
    pub udp_in_flight_peak: u64,
    /// Times the UDP loop stopped reading because [`Limits::udp_in_flight`] queries were in
    /// flight.
    pub udp_at_cap: u64,
    /// TCP connections accepted and served.
    pub tcp_accepted: u64,
    /// TCP connections closed at once because [`Limits::tcp_connections`] were open.
    pub tcp_rejected: u64,
    /// TCP connections open now.
    pub tcp_connections: u64,
    /// The most TCP connections ever open at once; never above [`Limits::tcp_connections`].
    pub tcp_connections_peak: u64,
    /// TCP connections closed by the idle timeout.
    pub tcp_idle_closed: u64,
    /// TCP answers sent.
    pub tcp_answered: u64,
}

/// A current value and its high-water mark.
#[derive(Debug, Default)]
struct Gauge {
    now: AtomicU64,
    peak: AtomicU64,
}

impl Gauge {
    /// Counts one more until the returned guard is dropped.
    fn enter(self: &Arc<Self>) -> GaugeGuard {
        let now = self.now.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak.fetch_max(now, Ordering::AcqRel);
        GaugeGuard(Arc::clone(self))
    }
}

struct GaugeGuard(Arc<Gauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Default)]
struct Counters {
    udp_received: AtomicU64,
    udp_answered: AtomicU64,
    udp_at_cap: AtomicU64,
    udp_in_flight: Arc<Gauge>,
    tcp_accepted: AtomicU64,
    tcp_rejected: AtomicU64,
    tcp_idle_closed: AtomicU64,
    tcp_answered: AtomicU64,
    tcp_connections: Arc<Gauge>,
}

impl Counters {
    fn snapshot(&self) -> ServerStats {
        let get = |a: &AtomicU64| a.load(Ordering::Acquire);
        ServerStats {
            udp_received: get(&self.udp_received),
            udp_answered: get(&self.udp_answered),
            udp_in_flight: get(&self.udp_in_flight.now),
            udp_in_flight_peak: get(&self.udp_in_flight.peak),
            udp_at_cap: get(&self.udp_at_cap),
            tcp_accepted: get(&self.tcp_accepted),
            tcp_rejected: get(&self.tcp_rejected),
            tcp_connections: get(&self.tcp_connections.now),
            tcp_connections_peak: get(&self.tcp_connections.peak),
            tcp_idle_closed: get(&self.tcp_idle_closed),
            tcp_answered: get(&self.tcp_answered),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::AcqRel);
}

/// A running service-discovery DNS server (UDP and TCP on one address).
///
/// It answers from a [`DnsTable`] that [`update`](Self::update) swaps atomically: a query is
/// answered entirely from the old table or entirely from the new one. It stops on
/// [`shutdown`](Self::shutdown) or when dropped.
///
/// # Examples
///
/// ```no_run
/// use std::net::Ipv4Addr;
/// use vipmesh_dns::{DnsServer, DnsTable};
/// use vipmesh_netns::Netns;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let table = DnsTable::builder("mesh.local.")?
///     .vip("vote", [Ipv4Addr::new(10, 0, 0, 9)])?
///     .build();
/// // Docker's embedded DNS address, inside the client's namespace.
/// let netns = Netns::named("client")?;
/// let server = DnsServer::spawn(Some(&netns), "127.0.0.11:53".parse()?, table)?;
///
/// let table = DnsTable::builder("mesh.local.")?
///     .dnsrr("web", [Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 11)])?
///     .build();
/// server.update(table); // no restart, no lost query
/// server.shutdown()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct DnsServer {
    table: SharedTable,
    counters: Arc<Counters>,
    limits: Limits,
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds UDP and TCP sockets on `addr` inside `netns` (the caller's namespace when `None`)
    /// and starts answering from `table`.
    ///
    /// The sockets are created on a short-lived thread that has entered the namespace (a
    /// socket stays in the namespace it was created in, see
    /// [`network_namespaces(7)`](https://man7.org/linux/man-pages/man7/network_namespaces.7.html)),
    /// then served from a dedicated thread. With port 0, the kernel picks the UDP port and TCP
    /// binds the same one; see [`local_addr`](Self::local_addr).
    ///
    /// # Errors
    /// - [`Error::Netns`] when the namespace cannot be entered (`setns(2)`; needs
    ///   `CAP_SYS_ADMIN`);
    /// - [`Error::Bind`] per transport: [`Error::is_addr_in_use`] (`EADDRINUSE`),
    ///   [`Error::is_addr_not_available`] (`EADDRNOTAVAIL`: the address is not local in that
    ///   namespace, e.g. `lo` is down), `EACCES` for port 53 without `CAP_NET_BIND_SERVICE`
    ///   (see [`bind(2)`](https://man7.org/linux/man-pages/man2/bind.2.html));
    /// - [`Error::Io`] when the runtime or thread cannot be created.
    pub fn spawn(
        netns: Option<&Netns>,
        addr: SocketAddr,
        table: DnsTable,
    ) -> Result<DnsServer, Error> {
        Self::spawn_with_limits(netns, addr, table, Limits::default())
    }

    /// [`spawn`](Self::spawn) with explicit flood bounds instead of [`Limits::default`].
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn), and [`Error::InvalidLimit`] (before any socket is bound)
    /// when a limit is zero.
    pub fn spawn_with_limits(
        netns: Option<&Netns>,
        addr: SocketAddr,
        table: DnsTable,
        limits: Limits,
    ) -> Result<DnsServer, Error> {
        limits.validate()?;
        let (udp, tcp) = match netns {
            Some(ns) => ns.run(|| bind(addr)).map_err(|source| Error::Netns {
                netns: ns.to_string(),
                source,
            })??,
            None => bind(addr)?,
        };
        let local_addr = udp.local_addr().map_err(|source| Error::Io {
            op: "read the bound address",
            source,
        })?;
        let shared: SharedTable = Arc::new(RwLock::new(Arc::new(table)));
        let counters = Arc::new(Counters::default());
        let state = Shared {
            table: Arc::clone(&shared),
            counters: Arc::clone(&counters),
            limits,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        // The runtime lives and dies on the server thread, so `spawn` and `Drop` work from
        // async code too (a tokio runtime must not be dropped inside another one).
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), Error>>(1);
        let thread = std::thread::Builder::new()
            .name("vipmesh-dns".into())
            .spawn(move || {
                let (runtime, udp, tcp) = match start_runtime(udp, tcp) {
                    Ok(started) => started,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                runtime.block_on(serve(state, udp, tcp, stopped, local_addr));
            })
            .map_err(|source| Error::Io {
                op: "spawn the server thread",
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            // The thread ended without reporting: it panicked.
            Err(_) => {
                let _ = thread.join();
                return Err(Error::ServerPanicked);
            }
        }
        tracing::info!(addr = %local_addr, netns = ?netns.map(ToString::to_string), "DNS server started");
        Ok(DnsServer {
            table: shared,
            counters,
            limits,
            local_addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// [`spawn`](Self::spawn) in the namespace `ip netns add <name>` made (`/run/netns/<name>`).
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn), and [`Error::Netns`] when the namespace does not exist
    /// ([`Error::is_netns_not_found`]) or the name is invalid.
    pub fn spawn_in_named(
        netns: &str,
        addr: SocketAddr,
        table: DnsTable,
    ) -> Result<DnsServer, Error> {
        let ns = Netns::named(netns).map_err(|source| Error::Netns {
            netns: netns.to_owned(),
            source,
        })?;
        Self::spawn(Some(&ns), addr, table)
    }

    /// The address the sockets are bound to (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the whole table at once; queries in flight finish with the table they started
    /// with.
    pub fn update(&self, table: DnsTable) {
        let services = table.len();
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        tracing::debug!(addr = %self.local_addr, services, "DNS table updated");
    }

    /// The flood bounds this server runs with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A snapshot of the server's counters: queries received and answered, the peak number
    /// of UDP queries in flight and of TCP connections (never above [`Limits`]), connections
    /// refused at the cap or closed idle.
    pub fn stats(&self) -> ServerStats {
        self.counters.snapshot()
    }

    /// The table currently answered.
    pub fn table(&self) -> Arc<DnsTable> {
        current(&self.table)
    }

    /// Stops serving, closes the sockets and waits for the server thread.
    ///
    /// # Errors
    /// [`Error::ServerPanicked`] if the server thread panicked.
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            // The receiver is gone only if the thread already ended.
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_panic| Error::ServerPanicked),
            None => Ok(()),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Err(error) = self.stop_and_join() {
            tracing::warn!(%error, "DNS server stopped badly");
        }
    }
}

/// Builds the server's single-threaded runtime and registers the sockets with it.
fn start_runtime(
    udp: UdpSocket,
    tcp: TcpListener,
) -> Result<
    (
        tokio::runtime::Runtime,
        tokio::net::UdpSocket,
        tokio::net::TcpListener,
    ),
    Error,
> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|source| Error::Io {
            op: "build the tokio runtime",
            source,
        })?;
    let (udp, tcp) = {
        let _ctx = runtime.enter();
        let udp = tokio::net::UdpSocket::from_std(udp).map_err(|source| Error::Io {
            op: "register the UDP socket",
            source,
        })?;
        let tcp = tokio::net::TcpListener::from_std(tcp).map_err(|source| Error::Io {
            op: "register the TCP listener",
            source,
        })?;
        (udp, tcp)
    };
    Ok((runtime, udp, tcp))
}

/// Binds both sockets in the calling thread's namespace, non-blocking.
fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), Error> {
    let udp = UdpSocket::bind(addr).map_err(|source| Error::Bind {
        transport: Transport::Udp,
        addr,
        source,
    })?;
    // With port 0, TCP takes the port UDP got, so one address serves both.
    let bound = udp.local_addr().map_err(|source| Error::Io {
        op: "read the bound address",
        source,
    })?;
    let tcp = TcpListener::bind(bound).map_err(|source| Error::Bind {
        transport: Transport::Tcp,
        addr: bound,
        source,
    })?;
    for result in [udp.set_nonblocking(true), tcp.set_nonblocking(true)] {
        result.map_err(|source| Error::Io {
            op: "set the sockets non-blocking",
            source,
        })?;
    }
    Ok((udp, tcp))
}

/// What the serving loops share.
#[derive(Clone)]
struct Shared {
    table: SharedTable,
    counters: Arc<Counters>,
    limits: Limits,
}

async fn serve(
    state: Shared,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    stopped: oneshot::Receiver<()>,
    addr: SocketAddr,
) {
    tokio::select! {
        _ = stopped => {}
        result = serve_udp(state.clone(), udp) => {
            tracing::error!(%addr, error = ?result.err(), "DNS server stopped serving UDP");
        }
        result = serve_tcp(state, tcp) => {
            tracing::error!(%addr, error = ?result.err(), "DNS server stopped serving TCP");
        }
    }
    // Dropping the runtime (when this thread ends) cancels the queries and connections still
    // in flight and closes their sockets.
    tracing::info!(%addr, "DNS server stopped");
}

/// Errors after which a listening socket cannot go on (the others are one client's problem).
fn is_fatal(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EBADF | libc::ENOTSOCK | libc::EINVAL | libc::EFAULT)
    )
}

/// Whether an answer can be sent to `src` at all (hickory drops these too).
fn answerable(src: SocketAddr) -> bool {
    src.port() != 0 && !src.ip().is_unspecified() && !src.ip().is_multicast()
}

/// The UDP loop: one task per query, at most [`Limits::udp_in_flight`] at once.
async fn serve_udp(state: Shared, socket: tokio::net::UdpSocket) -> io::Result<()> {
    let socket = Arc::new(socket);
    let permits = Arc::new(Semaphore::new(state.limits.udp_in_flight));
    let counters = &state.counters;
    let mut buf = vec![0u8; UDP_RECV_BUFFER];
    loop {
        // The permit is taken before reading: at the cap, the datagrams wait in the kernel.
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                bump(&counters.udp_at_cap);
                Arc::clone(&permits)
                    .acquire_owned()
                    .await
                    .map_err(|_closed| io::Error::other("UDP permits closed"))?
            }
        };
        let (len, src) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(error) if is_fatal(&error) => return Err(error),
            Err(error) => {
                tracing::debug!(%error, "DNS UDP receive");
                continue;
            }
        };
        bump(&counters.udp_received);
        if !answerable(src) {
            continue;
        }
        let query = buf.get(..len).unwrap_or_default().to_vec();
        let in_flight = counters.udp_in_flight.enter();
        let table = current(&state.table);
        let socket = Arc::clone(&socket);
        let counters = Arc::clone(counters);
        tokio::spawn(async move {
            let _held = (permit, in_flight);
            let Some(answer) =
                handler::respond_bytes(&table, &query, Transport::Udp, rand::random())
            else {
                return;
            };
            tracing::trace!(%src, query = len, answer = answer.len(), "DNS UDP query");
            match socket.send_to(&answer, src).await {
                Ok(_) => bump(&counters.udp_answered),
                Err(error) => tracing::debug!(%src, %error, "cannot send DNS answer"),
            }
        });
    }
}

/// The TCP loop: one task per connection, at most [`Limits::tcp_connections`] at once.
async fn serve_tcp(state: Shared, listener: tokio::net::TcpListener) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(state.limits.tcp_connections));
    loop {
        let (stream, src) = match listener.accept().await {
            Ok(got) => got,
            Err(error) if is_fatal(&error) => return Err(error),
            Err(error) => {
                // EMFILE and friends: back off a little instead of spinning.
                tracing::debug!(%error, "DNS TCP accept");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            bump(&state.counters.tcp_rejected);
            tracing::debug!(%src, "DNS TCP connection refused: at the connection cap");
            drop(stream);
            continue;
        };
        bump(&state.counters.tcp_accepted);
        let open = state.counters.tcp_connections.enter();
        let state = state.clone();
        tokio::spawn(async move {
            let _held = (permit, open);
            serve_connection(&state, stream, src).await;
        });
    }
}

/// Answers the queries of one TCP connection in order (RFC 7766 framing: a 2-byte length).
async fn serve_connection(state: &Shared, mut stream: tokio::net::TcpStream, src: SocketAddr) {
    let idle = state.limits.tcp_idle;
    let counters = &state.counters;
    loop {
        let query = match tokio::time::timeout(idle, read_message(&mut stream)).await {
            Ok(Ok(Some(query))) => query,
            Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                tracing::debug!(%src, %error, "DNS TCP read");
                return;
            }
            Err(_elapsed) => {
                bump(&counters.tcp_idle_closed);
                return;
            }
        };
        let table = current(&state.table);
        let Some(answer) = handler::respond_bytes(&table, &query, Transport::Tcp, rand::random())
        else {
            continue;
        };
        // The encoder's bound is 65535 bytes, so the length always fits.
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&answer);
        match tokio::time::timeout(idle, stream.write_all(&framed)).await {
            Ok(Ok(())) => bump(&counters.tcp_answered),
            Ok(Err(error)) => {
                tracing::debug!(%src, %error, "DNS TCP write");
                return;
            }
            Err(_elapsed) => {
                bump(&counters.tcp_idle_closed);
                return;
            }
        }
    }
}

/// Reads one length-prefixed message; `None` on a clean end of stream before its first byte.
async fn read_message(stream: &mut tokio::net::TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read(&mut len[..1]).await? {
        0 => return Ok(None),
        _ => stream.read_exact(&mut len[1..]).await?,
    };
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

fn current(table: &SharedTable) -> Arc<DnsTable> {
    Arc::clone(&table.read().unwrap_or_else(PoisonError::into_inner))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn zero_limits_are_typed_errors_before_any_bind() {
        let table = || DnsTable::builder("mesh.local.").unwrap().build();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for (limits, field) in [
            (
                Limits {
                    udp_in_flight: 0,
                    ..Limits::default()
                },
                "udp_in_flight",
            ),
            (
                Limits {
                    tcp_connections: 0,
                    ..Limits::default()
                },
                "tcp_connections",
            ),
            (
                Limits {
                    tcp_idle: Duration::ZERO,
                    ..Limits::default()
                },
                "tcp_idle",
            ),
        ] {
            match DnsServer::spawn_with_limits(None, addr, table(), limits) {
                Err(Error::InvalidLimit { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_gauge_keeps_its_peak() {
        let g = Arc::new(Gauge::default());
        let a = g.enter();
        let b = g.enter();
        drop(a);
        let _c = g.enter();
        drop(b);
        assert_eq!(g.now.load(Ordering::Acquire), 1);
        assert_eq!(g.peak.load(Ordering::Acquire), 2);
    }

    #[test]
    fn unanswerable_sources_are_skipped() {
        assert!(answerable("10.0.0.1:5353".parse().unwrap()));
        assert!(!answerable("10.0.0.1:0".parse().unwrap()));
        assert!(!answerable("0.0.0.0:53".parse().unwrap()));
        assert!(!answerable("224.0.0.1:53".parse().unwrap()));
    }
}
