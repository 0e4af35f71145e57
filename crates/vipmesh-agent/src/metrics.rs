//! `/metrics` (Prometheus text format, rendered by `prometheus-client`) and `/healthz`.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `vipmesh_agent_sync_duration_seconds` | histogram | syncs that did something or failed |
//! | `vipmesh_agent_syncs_total{kind}` | counter | `full`, `incremental` |
//! | `vipmesh_agent_sync_errors_total` | counter | syncs that returned an error |
//! | `vipmesh_agent_change_syncs_total` | counter | syncs caused by a batch of watched changes |
//! | `vipmesh_agent_watch_events_total` | counter | changed keys received |
//! | `vipmesh_agent_watch_revision` | gauge | revision of the last change applied |
//! | `vipmesh_agent_last_sync_timestamp_seconds` | gauge | Unix time of the last sync |
//! | `vipmesh_agent_degraded` | gauge | 1 while etcd is unreachable |
//! | `vipmesh_agent_skipped_values` | gauge | values skipped as invalid |
//! | `vipmesh_service_connections{network,service,state}` | gauge | IPVS active/inactive connections summed over a service's real servers, read at scrape time |
//! | `vipmesh_backend_connections{network,service,backend,state}` | gauge | the same per real server (`backend` is its address) |
//! | `vipmesh_backend_weight{network,service,backend}` | gauge | its IPVS weight (0 while it drains) |
//!
//! `/healthz` answers `200 ok` when etcd is reachable and the last sync succeeded, else
//! `503` with the reason (the dataplane is still served then: this is a readiness signal).
//!
//! `/plan` answers with what a sync would change now ([`Controller::plan_now`]'s text, a dry
//! run: empty when the node is converged), or `500` with the error.
//!
//! The HTTP side is a few lines over a tokio `TcpListener` (two fixed `GET` paths,
//! `Connection: close`) rather than a web framework: nothing else in the agent needs one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vipmesh::Controller;
use vipmesh::dataplane::Kernel;

use crate::agent::StatusHandle;
use crate::error::Error;

type Labels = Vec<(String, String)>;

/// One real server's weight and active and inactive IPVS connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct DestConns {
    weight: u32,
    active: u64,
    inactive: u64,
}

/// Active and inactive IPVS connections per (network, service, real server), observed now.
fn connections<K: Kernel>(
    ctl: &Mutex<Controller<K>>,
) -> BTreeMap<(String, String), BTreeMap<String, DestConns>> {
    let mut c = ctl.lock().unwrap_or_else(|e| e.into_inner());
    let (obs, _failed) = c.observe(vipmesh::plan::now_secs());
    let mut out: BTreeMap<(String, String), BTreeMap<String, DestConns>> = BTreeMap::new();
    for n in c.desired().all_networks() {
        let Some(marks) = c.marks().get(n.id()) else {
            continue;
        };
        let Some(o) = obs.namespaces.get(&n.network().lb_netns) else {
            continue;
        };
        for (svc, mark) in marks {
            let e = out
                .entry((n.id().as_str().to_string(), svc.as_str().to_string()))
                .or_default();
            for ((_, m), s) in &o.ipvs {
                if m == mark {
                    for (addr, d) in &s.dests {
                        let b = e.entry(addr.to_string()).or_default();
                        b.weight = d.weight;
                        b.active += u64::from(d.active);
                        b.inactive += u64::from(d.inactive);
                    }
                }
            }
        }
    }
    out
}

/// The metrics text now. With a controller, the namespaces are observed once for the
/// connection counts (blocking: call it off the async threads).
pub fn render<K: Kernel>(status: &StatusHandle, ctl: Option<&Mutex<Controller<K>>>) -> String {
    let st = status.get();
    let mut r = Registry::with_prefix("vipmesh");
    r.register(
        "agent_sync_duration_seconds",
        "Duration of the syncs that did something or failed",
        status.sync_seconds().clone(),
    );
    let syncs = Family::<Labels, Counter>::default();
    syncs
        .get_or_create(&vec![("kind".into(), "full".into())])
        .inc_by(st.full_syncs);
    syncs
        .get_or_create(&vec![("kind".into(), "incremental".into())])
        .inc_by(st.incremental_syncs);
    r.register("agent_syncs", "Syncs by kind", syncs);
    let counter = |v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        c
    };
    let gauge = |v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        g
    };
    r.register(
        "agent_sync_errors",
        "Syncs that returned an error",
        counter(st.sync_errors),
    );
    r.register(
        "agent_change_syncs",
        "Syncs caused by a batch of watched changes",
        counter(st.change_syncs),
    );
    r.register(
        "agent_watch_events",
        "Changed keys received from the watch",
        counter(st.watch_events),
    );
    r.register(
        "agent_watch_revision",
        "The etcd revision of the last change applied",
        gauge(st.revision),
    );
    r.register(
        "agent_last_sync_timestamp_seconds",
        "Unix time of the last sync",
        gauge(
            st.last_sync
                .map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)),
        ),
    );
    r.register(
        "agent_degraded",
        "1 while etcd is unreachable (the dataplane keeps its last state)",
        gauge(i64::from(st.degraded.is_some())),
    );
    r.register(
        "agent_skipped_values",
        "Values in etcd skipped as invalid",
        gauge(i64::try_from(st.issues.len()).unwrap_or(i64::MAX)),
    );
    if let Some(ctl) = ctl {
        let conns = Family::<Labels, Gauge>::default();
        let per_backend = Family::<Labels, Gauge>::default();
        let weights = Family::<Labels, Gauge>::default();
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for ((net, svc), dests) in connections(ctl) {
            let (active, inactive) = dests
                .values()
                .fold((0u64, 0u64), |(a, i), d| (a + d.active, i + d.inactive));
            for (state, v) in [("active", active), ("inactive", inactive)] {
                conns
                    .get_or_create(&vec![
                        ("network".into(), net.clone()),
                        ("service".into(), svc.clone()),
                        ("state".into(), state.into()),
                    ])
                    .set(g(v));
            }
            for (addr, d) in dests {
                let labels = |extra: Option<&str>| {
                    let mut l: Labels = vec![
                        ("network".into(), net.clone()),
                        ("service".into(), svc.clone()),
                        ("backend".into(), addr.clone()),
                    ];
                    if let Some(s) = extra {
                        l.push(("state".into(), s.into()));
                    }
                    l
                };
                per_backend
                    .get_or_create(&labels(Some("active")))
                    .set(g(d.active));
                per_backend
                    .get_or_create(&labels(Some("inactive")))
                    .set(g(d.inactive));
                weights
                    .get_or_create(&labels(None))
                    .set(i64::from(d.weight));
            }
        }
        r.register(
            "service_connections",
            "IPVS connections of a service's real servers",
            conns,
        );
        r.register(
            "backend_connections",
            "IPVS connections of one real server",
            per_backend,
        );
        r.register(
            "backend_weight",
            "IPVS weight of one real server (0 while it drains)",
            weights,
        );
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

/// The `/plan` answer: what a sync would change now (an empty body when converged), or the
/// error.
/// Blocking (observes every namespace): call it off the async threads.
pub fn plan<K: Kernel>(ctl: &Mutex<Controller<K>>) -> (u16, String) {
    let mut c = ctl.lock().unwrap_or_else(|e| e.into_inner());
    match c.plan_now() {
        // Empty when there is nothing to do (not the plan's "(no changes)"), for scripts.
        Ok(p) if p.is_empty() => (200, String::new()),
        Ok(p) => (200, p.to_string()),
        Err(e) => (500, format!("{e}\n")),
    }
}

/// The `/healthz` answer: status code and body.
pub fn health(status: &StatusHandle) -> (u16, String) {
    let st = status.get();
    match (&st.degraded, &st.last_sync_error) {
        (None, None) => (200, "ok\n".into()),
        (Some(d), _) => (503, format!("degraded: {d}\n")),
        (None, Some(e)) => (503, format!("last sync failed: {e}\n")),
    }
}

/// The listener of `/metrics` and `/healthz`.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Binds the address (port 0 picks a free one: see [`MetricsServer::local_addr`]).
    ///
    /// # Errors
    /// [`Error::Io`] with the errno.
    pub async fn bind(addr: SocketAddr) -> Result<MetricsServer, Error> {
        let listener = TcpListener::bind(addr).await.map_err(|source| Error::Io {
            op: format!("bind {addr}"),
            source,
        })?;
        Ok(MetricsServer { listener })
    }

    /// The bound address.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.listener.local_addr().map_err(|source| Error::Io {
            op: "metrics local_addr".into(),
            source,
        })
    }

    /// Serves until `shutdown` completes.
    ///
    /// # Errors
    /// [`Error::Io`] when accepting fails.
    pub async fn serve<K: Kernel + 'static>(
        self,
        status: StatusHandle,
        ctl: Option<Arc<Mutex<Controller<K>>>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error>
    where
        Controller<K>: Send,
    {
        tokio::pin!(shutdown);
        loop {
            let (sock, _) = tokio::select! {
                () = shutdown.as_mut() => return Ok(()),
                a = self.listener.accept() => a.map_err(|source| Error::Io { op: "metrics accept".into(), source })?,
            };
            let (status, ctl) = (status.clone(), ctl.clone());
            tokio::spawn(async move {
                if let Err(e) = answer(sock, status, ctl).await {
                    tracing::debug!(error = %e, "metrics connection");
                }
            });
        }
    }
}

async fn answer<K: Kernel + 'static>(
    mut sock: TcpStream,
    status: StatusHandle,
    ctl: Option<Arc<Mutex<Controller<K>>>>,
) -> std::io::Result<()>
where
    Controller<K>: Send,
{
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<(), std::io::Error>(())
    };
    if tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .is_err()
    {
        return Ok(());
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (code, ctype, body) = match (method, path) {
        ("GET", "/metrics") => {
            let body = tokio::task::spawn_blocking(move || render(&status, ctl.as_deref()))
                .await
                .unwrap_or_default();
            (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            )
        }
        ("GET", "/plan") => match ctl {
            Some(ctl) => {
                let (c, b) = tokio::task::spawn_blocking(move || plan(&ctl))
                    .await
                    .unwrap_or_else(|e| (500, format!("plan task: {e}\n")));
                (c, "text/plain; charset=utf-8", b)
            }
            None => (404, "text/plain", "no controller\n".to_string()),
        },
        ("GET", "/healthz") => {
            let (c, b) = health(&status);
            (c, "text/plain; charset=utf-8", b)
        }
        ("GET", _) => (404, "text/plain", "not found\n".to_string()),
        _ => (405, "text/plain", "GET only\n".to_string()),
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}
