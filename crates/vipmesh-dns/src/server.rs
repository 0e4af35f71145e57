//! The thin shell: sockets bound inside a network namespace, served by hickory-server on a
//! dedicated thread with its own single-threaded tokio runtime.

use std::iter;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::Record;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::sync::oneshot;
use vipmesh_netns::Netns;

use crate::handler::{self, Transport};
use crate::{DnsTable, Error};

/// A TCP connection that sends no complete query for this long is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Responses queued per TCP connection before the connection applies back-pressure.
const TCP_RESPONSE_BUFFER: usize = 32;

type SharedTable = Arc<RwLock<Arc<DnsTable>>>;

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
        let handler = Handler {
            table: Arc::clone(&shared),
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
                runtime.block_on(serve(handler, udp, tcp, stopped, local_addr));
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

async fn serve(
    handler: Handler,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    stopped: oneshot::Receiver<()>,
    addr: SocketAddr,
) {
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    tokio::select! {
        _ = stopped => {}
        result = server.block_until_done() => {
            // The listeners only end on an unrecoverable socket error.
            tracing::error!(%addr, ?result, "DNS server stopped serving");
        }
    }
    if let Err(error) = server.shutdown_gracefully().await {
        tracing::warn!(%addr, %error, "DNS server shutdown");
    }
    tracing::info!(%addr, "DNS server stopped");
}

fn current(table: &SharedTable) -> Arc<DnsTable> {
    Arc::clone(&table.read().unwrap_or_else(PoisonError::into_inner))
}

/// Bridges hickory's server loop to the pure [`handler::reply`].
struct Handler {
    table: SharedTable,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let table = current(&self.table);
        let transport = match request.protocol() {
            Protocol::Udp => Transport::Udp,
            _ => Transport::Tcp,
        };
        let header_info = |code| {
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = code;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        };
        let Some(reply) = handler::reply(&table, request, transport, rand::random()) else {
            return header_info(ResponseCode::NoError);
        };
        if let [query] = request.queries.queries() {
            tracing::trace!(
                src = %request.src(),
                %transport,
                name = %query.name(),
                qtype = %query.query_type(),
                rcode = %reply.metadata.response_code,
                answers = reply.answers.len(),
                tc = reply.metadata.truncation,
                "DNS query"
            );
        }
        let response = MessageResponseBuilder::new(&request.queries, reply.edns.as_ref()).build(
            reply.metadata,
            reply.answers.iter(),
            iter::empty::<&Record>(),
            iter::empty::<&Record>(),
            iter::empty::<&Record>(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::warn!(src = %request.src(), %error, "cannot send DNS response");
                header_info(ResponseCode::ServFail)
            }
        }
    }
}
