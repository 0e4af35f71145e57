//! The agent loop: etcd → [`layout::assemble`] → [`Controller::set_desired`] →
//! [`Controller::sync`].
//!
//! 1. Connect; register the node under a lease (when it has a [`NodeRecord`]).
//! 2. Load a snapshot (one range read), assemble this node's state, hand it to the
//!    controller (which marks only the changed services dirty) and sync.
//! 3. Watch from the snapshot's revision + 1. A watch response, and every response that
//!    arrives within [`AgentConfig::batch_window`] after it, become ONE assembly and ONE
//!    sync: a burst of changes costs a few syncs, not one per key.
//! 4. After every sync that applied the whole desired state, publish this node's local
//!    tasks as ready (`/vipmesh/v1/ready/<node>`, under the lease): other nodes balance to a
//!    task only once it is listed there, so never before its node has wired it.
//! 5. Between changes, sleep until the controller's [`Controller::next_deadline`] (drains,
//!    retries, the periodic full resync) and sync then.
//! 6. When etcd is unreachable (the watch breaks, a request times out, the HTTP/2
//!    keepalive fails): the agent is [degraded](AgentStatus::degraded), the controller keeps
//!    the last desired state (the dataplane is never flushed; periodic syncs go on and
//!    repair drift), and it reconnects with backoff, resuming the watch from the last
//!    revision it applied. A compacted revision makes it reload a snapshot instead.
//!
//! The controller is synchronous: every sync runs in `spawn_blocking`, holding the
//! controller's mutex.
//!
//! # Examples
//! ```no_run
//! # async fn demo() -> Result<(), vipmesh_agent::Error> {
//! use vipmesh::{Controller, ControllerConfig};
//! use vipmesh_agent::agent::{Agent, AgentConfig};
//! use vipmesh_agent::store::StoreConfig;
//! let ctl = Controller::real(ControllerConfig::default());
//! let agent = Agent::new(
//!     AgentConfig::new("node-1"),
//!     StoreConfig::new(vec!["http://127.0.0.1:2379".into()]),
//!     ctl,
//! );
//! let status = agent.status();
//! agent.run(std::future::pending()).await?; // or a shutdown signal
//! println!("stopped at revision {}", status.get().revision);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::mpsc;
use vipmesh::dataplane::Kernel;
use vipmesh::{Controller, Report, SyncKind};

use crate::error::Error;
use crate::layout::{self, Issue, NodeLocal, NodeRecord, ReadyTasks};
use crate::store::{Registration, Snapshot, Store, StoreConfig, WatchBatch};

/// Agent tunables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// This node's name (`/vipmesh/v1/nodes/<name>`, the ingress's `node`).
    pub node: String,
    /// Registered under a lease when set (needed for the ingress).
    pub record: Option<NodeRecord>,
    /// This node's names for the ingress's namespaces (override the cluster's config).
    pub local: NodeLocal,
    /// The lease's TTL: the node key disappears this long after the agent stops.
    pub lease_ttl_secs: i64,
    /// After a watch response, how long to wait for more before syncing.
    pub batch_window: Duration,
    /// First reconnect delay; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
}

impl AgentConfig {
    /// Defaults: no registration, lease TTL 10 s, a 50 ms batch window, reconnects from
    /// 200 ms to 5 s.
    pub fn new(node: &str) -> AgentConfig {
        AgentConfig {
            node: node.to_string(),
            record: None,
            local: NodeLocal::default(),
            lease_ttl_secs: 10,
            batch_window: Duration::from_millis(50),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

/// What the agent is doing, for health checks, metrics and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentStatus {
    /// Why the agent cannot reach etcd, while it cannot (the dataplane keeps the last state).
    pub degraded: Option<String>,
    /// The revision of the last change applied to the desired state.
    pub revision: i64,
    /// Snapshots loaded (the first, and after each compaction).
    pub snapshots: u64,
    /// Watch responses received.
    pub watch_batches: u64,
    /// Changed keys received.
    pub watch_events: u64,
    /// Syncs run because the desired state changed (one per batch).
    pub change_syncs: u64,
    /// Batches of those applied service by service to the desired state, without assembling
    /// the whole snapshot again ([`layout::apply_service_changes`]).
    pub service_batches: u64,
    /// Every sync that did something, by kind.
    pub full_syncs: u64,
    /// Incremental syncs.
    pub incremental_syncs: u64,
    /// Syncs that returned an error.
    pub sync_errors: u64,
    /// The last sync's error, until a sync succeeds.
    pub last_sync_error: Option<String>,
    /// When the last sync ran (seconds of the sync clock).
    pub last_sync: Option<u64>,
    /// Values skipped when the desired state was last assembled.
    pub issues: Vec<Issue>,
    /// Watches established (the first, and one per reconnect or reload).
    pub watches: u64,
}

/// A shared view of an agent's [`AgentStatus`], and the sync-duration histogram.
#[derive(Debug, Clone)]
pub struct StatusHandle {
    status: Arc<Mutex<AgentStatus>>,
    sync_seconds: Histogram,
}

impl Default for StatusHandle {
    fn default() -> Self {
        StatusHandle {
            status: Arc::default(),
            // 0.5 ms .. ~16 s.
            sync_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        }
    }
}

impl StatusHandle {
    /// A copy of the status now.
    pub fn get(&self) -> AgentStatus {
        self.lock().clone()
    }

    /// The durations of the syncs that did something (or failed), in seconds.
    pub fn sync_seconds(&self) -> &Histogram {
        &self.sync_seconds
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, AgentStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The per-node agent. See the module docs.
#[derive(Debug)]
pub struct Agent<K: Kernel> {
    cfg: AgentConfig,
    store_cfg: StoreConfig,
    ctl: Arc<Mutex<Controller<K>>>,
    status: StatusHandle,
    snapshot: Snapshot,
    loaded: bool,
    /// The desired state is the snapshot's assembly and it had no issues: a watch batch of
    /// services may then be applied service by service.
    clean: bool,
    /// A sync ran since the heap was last trimmed ([`release_free_heap`]).
    trim_due: bool,
    published: Arc<Mutex<Published>>,
    endpoint: usize,
}

/// The node's registration as the agent and its keepalive task share it.
#[derive(Debug, Default)]
struct Published {
    /// The lease the node's keys are under (0: not registered).
    lease: i64,
    /// The ready tasks this process last wrote (None: nothing yet).
    ready: Option<ReadyTasks>,
    /// The ready key must be written again: the last write failed, or a re-registration
    /// wrote it concurrently with a newer list. The agent retries every second meanwhile.
    pending: bool,
}

fn lock_published(p: &Mutex<Published>) -> MutexGuard<'_, Published> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why the watch phase ended.
enum Leave {
    Shutdown,
    Disconnected(Error),
    Reload(Error),
}

fn lock<K: Kernel>(c: &Mutex<Controller<K>>) -> MutexGuard<'_, Controller<K>> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

fn until(deadline: Option<u64>) -> Duration {
    let now = vipmesh::plan::now_secs();
    match deadline {
        Some(t) => Duration::from_secs(t.saturating_sub(now)),
        None => Duration::from_secs(60),
    }
}

impl<K: Kernel + 'static> Agent<K>
where
    Controller<K>: Send,
{
    /// An agent driving `controller` from the etcd at `store_cfg`.
    pub fn new(cfg: AgentConfig, store_cfg: StoreConfig, controller: Controller<K>) -> Agent<K> {
        Agent {
            cfg,
            store_cfg,
            ctl: Arc::new(Mutex::new(controller)),
            status: StatusHandle::default(),
            snapshot: Snapshot::default(),
            loaded: false,
            clean: false,
            trim_due: false,
            published: Arc::default(),
            endpoint: 0,
        }
    }

    /// The status, shared (readable while the agent runs).
    pub fn status(&self) -> StatusHandle {
        self.status.clone()
    }

    /// The controller, shared (lock it briefly: syncs wait for it).
    pub fn controller(&self) -> Arc<Mutex<Controller<K>>> {
        self.ctl.clone()
    }

    /// Runs until `shutdown` completes. Never returns an error for etcd trouble (that is
    /// [`AgentStatus::degraded`]); the dataplane is left as it is on return.
    ///
    /// # Errors
    /// [`Error::NodeNameTaken`]: another node is registered under this node's name (at
    /// start, or when re-registering after the lease was lost); the agent stops and leaves
    /// the dataplane as it is.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        tokio::pin!(shutdown);
        let mut backoff = self.cfg.reconnect_min;
        loop {
            let attempt = self.connect_and_load().await;
            let (store, ka) = match attempt {
                Ok(x) => x,
                Err(e @ Error::NodeNameTaken { .. }) => return Err(e),
                Err(e) => {
                    self.set_degraded(&e);
                    if self.wait_syncing(backoff, &mut shutdown).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(self.cfg.reconnect_max);
                    continue;
                }
            };
            backoff = self.cfg.reconnect_min;
            match self.watch_phase(store, ka, &mut shutdown).await {
                Leave::Shutdown => return Ok(()),
                Leave::Reload(e) => {
                    tracing::info!(error = %e, "reloading the snapshot");
                    self.loaded = false;
                }
                Leave::Disconnected(e @ Error::NodeNameTaken { .. }) => return Err(e),
                Leave::Disconnected(e) => {
                    self.set_degraded(&e);
                    if self.wait_syncing(backoff, &mut shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn set_degraded(&self, e: &Error) {
        tracing::warn!(error = %e, "etcd unreachable: keeping the dataplane as it is");
        self.status.lock().degraded = Some(e.to_string());
    }

    /// Connects, registers (the lease is kept alive from then on by its own task, so a long
    /// sync cannot let it expire), and loads a snapshot unless one is loaded (then the watch
    /// resumes from its revision).
    async fn connect_and_load(&mut self) -> Result<(Store, Option<Keepalive>), Error> {
        // The member that worked last first (see Store::connect_from).
        let mut store = Store::connect_from(self.store_cfg.clone(), self.endpoint).await?;
        self.endpoint = store.endpoint();
        let ka = match &self.cfg.record {
            Some(r) => {
                let ready = lock_published(&self.published).ready.clone();
                let reg = store
                    .register_node(&self.cfg.node, r, self.cfg.lease_ttl_secs, ready.as_ref())
                    .await?;
                lock_published(&self.published).lease = reg.lease();
                Some(Keepalive::spawn(
                    store.clone(),
                    reg,
                    self.cfg.clone(),
                    self.published.clone(),
                ))
            }
            None => None,
        };
        if !self.loaded {
            let snap = store.snapshot().await?;
            self.snapshot = snap;
            self.loaded = true;
            self.status.lock().snapshots += 1;
            self.desired_changed(&[]).await;
        }
        Ok((store, ka))
    }

    /// Waits `d` (or until shutdown: then true), syncing whenever the controller is due.
    async fn wait_syncing(
        &mut self,
        d: Duration,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> bool {
        let end = Instant::now() + d;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let due = until(lock(&self.ctl).next_deadline());
            tokio::select! {
                () = shutdown.as_mut() => return true,
                () = tokio::time::sleep(left.min(due.max(Duration::from_millis(200)))) => {
                    if due <= left {
                        self.sync().await;
                    }
                }
            }
        }
    }

    async fn watch_phase(
        &mut self,
        mut store: Store,
        mut ka: Option<Keepalive>,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Leave {
        let from = self.snapshot.revision.saturating_add(1);
        let mut watch = match store.watch(from).await {
            Ok(w) => w,
            Err(e) => return Leave::Disconnected(e),
        };
        let (tx, mut rx) = mpsc::channel::<Result<WatchBatch, Error>>(1024);
        let task = tokio::spawn(async move {
            loop {
                let r = watch.next().await;
                let end = !matches!(r, Ok(Some(_)));
                let msg = match r {
                    Ok(Some(b)) => Ok(b),
                    Ok(None) => Err(Error::invalid("watch", "the server closed the stream")),
                    Err(e) => Err(e),
                };
                if tx.send(msg).await.is_err() || end {
                    return;
                }
            }
        });
        let _abort = AbortOnDrop(task);
        {
            let mut st = self.status.lock();
            st.degraded = None;
            st.watches += 1;
        }
        self.publish_ready(&mut store).await;
        loop {
            let mut due = until(lock(&self.ctl).next_deadline());
            if lock_published(&self.published).pending {
                due = due.min(Duration::from_secs(1));
            }
            tokio::select! {
                () = shutdown.as_mut() => return Leave::Shutdown,
                m = rx.recv() => {
                    let first = match m {
                        Some(Ok(b)) => b,
                        Some(Err(e @ Error::Compacted { .. })) => return Leave::Reload(e),
                        Some(Err(e)) => return Leave::Disconnected(e),
                        None => return Leave::Disconnected(Error::invalid("watch", "the watch task ended")),
                    };
                    let mut batches = vec![first];
                    tokio::time::sleep(self.cfg.batch_window).await;
                    let mut leave = None;
                    while let Ok(m) = rx.try_recv() {
                        match m {
                            Ok(b) => batches.push(b),
                            Err(e @ Error::Compacted { .. }) => { leave = Some(Leave::Reload(e)); break; }
                            Err(e) => { leave = Some(Leave::Disconnected(e)); break; }
                        }
                    }
                    {
                        let mut st = self.status.lock();
                        st.watch_batches += batches.len() as u64;
                        st.watch_events += batches.iter().map(|b| b.changes.len() as u64).sum::<u64>();
                    }
                    for b in &batches {
                        self.snapshot.apply(b);
                    }
                    self.status.lock().change_syncs += 1;
                    self.desired_changed(&batches).await;
                    self.publish_ready(&mut store).await;
                    if let Some(l) = leave {
                        return l;
                    }
                }
                () = tokio::time::sleep(due) => {
                    self.sync().await;
                    self.publish_ready(&mut store).await;
                    // Never spin on a deadline that stays in the past.
                    if until(lock(&self.ctl).next_deadline()).is_zero() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                () = tokio::time::sleep(IDLE_TRIM), if self.trim_due => {
                    self.trim_due = false;
                    // Off the runtime's threads: it walks the whole heap.
                    let _ = tokio::task::spawn_blocking(release_free_heap).await;
                }
                Some(e) = recv_error(&mut ka) => return Leave::Disconnected(e),
            }
        }
    }

    /// Writes this node's ready tasks when they changed: all its local tasks once the
    /// controller has applied the whole desired state; before that, only removals (tasks no
    /// longer desired leave the list; none is added). Failures are logged and retried every
    /// second.
    async fn publish_ready(&self, store: &mut Store) {
        if self.cfg.record.is_none() {
            return;
        }
        let (lease, published, pending) = {
            let p = lock_published(&self.published);
            (p.lease, p.ready.clone(), p.pending)
        };
        let want = {
            let ctl = lock(&self.ctl);
            let local = ReadyTasks::local(&self.cfg.node, ctl.desired());
            if ctl.in_sync() {
                local
            } else if let Some(p) = &published {
                p.intersect(&local)
            } else {
                return;
            }
        };
        if lease == 0 || (!pending && published.as_ref() == Some(&want)) {
            return;
        }
        let res = store.publish_ready(&self.cfg.node, lease, &want).await;
        let mut p = lock_published(&self.published);
        match res {
            Ok(true) => {
                tracing::info!(node = %self.cfg.node, tasks = want.services.values().map(|a| a.len()).sum::<usize>(), "ready tasks published");
                p.ready = Some(want);
                p.pending = false;
            }
            Ok(false) => {
                tracing::warn!(
                    node = %self.cfg.node,
                    "ready tasks not published: the node key is not under this agent's lease"
                );
                p.pending = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "ready tasks not published (retried in a second)");
                p.pending = true;
            }
        }
    }

    /// Assembles the desired state from the snapshot, hands it to the controller, syncs.
    /// The snapshot changed (by `batches`, or entirely when that is empty): the controller's
    /// desired state follows, then a sync.
    async fn desired_changed(&mut self, batches: &[WatchBatch]) {
        let changes = || {
            batches
                .iter()
                .flat_map(|b| &b.changes)
                .map(|c| (c.key.as_slice(), c.value.as_deref()))
        };
        let by_service = (self.clean && !batches.is_empty())
            .then(|| {
                let prev = lock(&self.ctl).desired().clone();
                layout::apply_service_changes(&prev, changes())
            })
            .flatten();
        if let Some(state) = by_service {
            {
                let mut st = self.status.lock();
                st.service_batches += 1;
                st.revision = self.snapshot.revision;
            }
            lock(&self.ctl).set_desired(state);
            self.sync().await;
            return;
        }
        let local = NodeLocal {
            me: self.cfg.record,
            ..self.cfg.local.clone()
        };
        let a = layout::assemble_local(&self.cfg.node, &local, &self.snapshot.kvs);
        for i in &a.issues {
            tracing::warn!(key = %i.key, reason = %i.reason, "value skipped");
        }
        self.clean = a.issues.is_empty();
        {
            let mut st = self.status.lock();
            st.issues = a.issues;
            st.revision = self.snapshot.revision;
        }
        lock(&self.ctl).set_desired(a.state);
        self.sync().await;
    }

    async fn sync(&mut self) {
        let ctl = self.ctl.clone();
        let started = Instant::now();
        let res = tokio::task::spawn_blocking(move || {
            let now = vipmesh::plan::now_secs();
            (lock(&ctl).sync(now), now)
        })
        .await;
        let secs = started.elapsed().as_secs_f64();
        self.trim_due |= !matches!(&res, Ok((Ok((SyncKind::Idle, _)), _)));
        self.record_sync(res, secs);
    }

    fn record_sync(&self, res: Result<(SyncOutcome, u64), tokio::task::JoinError>, secs: f64) {
        let mut st = self.status.lock();
        match res {
            Ok((Ok((kind, report)), now)) => {
                if kind != SyncKind::Idle {
                    tracing::info!(
                        node = %self.cfg.node,
                        kind = ?kind,
                        steps = report.steps.len(),
                        ms = secs * 1000.0,
                        revision = self.snapshot.revision,
                        "synced"
                    );
                    tracing::debug!(node = %self.cfg.node, "sync report:\n{report}");
                }
                match kind {
                    SyncKind::Full => st.full_syncs += 1,
                    SyncKind::Incremental => st.incremental_syncs += 1,
                    SyncKind::Idle => return,
                }
                st.last_sync = Some(now);
                st.last_sync_error = None;
                self.status.sync_seconds.observe(secs);
            }
            Ok((Err(e), now)) => {
                tracing::warn!(error = %e, "sync failed (retried with backoff)");
                st.sync_errors += 1;
                st.last_sync = Some(now);
                st.last_sync_error = Some(e.to_string());
                self.status.sync_seconds.observe(secs);
            }
            Err(e) => {
                st.sync_errors += 1;
                st.last_sync_error = Some(format!("sync task: {e}"));
            }
        }
    }
}

/// What [`Controller::sync`] returned.
type SyncOutcome = Result<(SyncKind, Report), vipmesh::Error>;

/// How long the agent waits after a sync, with nothing else to do, before
/// [`release_free_heap`].
const IDLE_TRIM: Duration = Duration::from_secs(1);

/// Gives the heap's free pages back to the kernel (malloc_trim(3)). A sync allocates a plan,
/// an observation and a report up to the size of the node's state and frees them, and glibc
/// keeps the freed memory mapped: at 10 000 services x 10 backends that was about a third of
/// the agent's RSS once converged (README, "Memory and watch bursts"). The agent calls it once
/// it has been idle for a second after a sync, so a burst of changes is not slowed by it.
/// A no-op where the allocator is not glibc's.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of glibc's heap to the kernel; it takes the
    // allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The node's lease, refreshed every third of its TTL by a task of its own (a sync that
/// takes longer than the TTL, as on an emulated machine, must not let the node expire). An
/// expired lease is registered again; any other failure ends the task and is reported
/// through [`recv_error`].
struct Keepalive {
    errors: mpsc::Receiver<Error>,
    _task: AbortOnDrop,
}

impl Keepalive {
    fn spawn(
        mut store: Store,
        mut reg: Registration,
        cfg: AgentConfig,
        published: Arc<Mutex<Published>>,
    ) -> Keepalive {
        let (tx, errors) = mpsc::channel(1);
        let every = Duration::from_secs(u64::try_from(cfg.lease_ttl_secs / 3).unwrap_or(1).max(1));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                match reg.keep_alive().await {
                    Ok(_) => {}
                    Err(e @ Error::Invalid { .. }) => {
                        tracing::warn!(error = %e, "lease lost: registering again");
                        let Some(rec) = cfg.record.as_ref() else {
                            return;
                        };
                        let ready = lock_published(&published).ready.clone();
                        match store
                            .register_node(&cfg.node, rec, cfg.lease_ttl_secs, ready.as_ref())
                            .await
                        {
                            Ok(r) => {
                                let mut p = lock_published(&published);
                                p.lease = r.lease();
                                // It wrote the list read above; a newer one may have gone
                                // out meanwhile under the old lease: write it again.
                                p.pending = true;
                                reg = r;
                            }
                            Err(e) => {
                                let _ = tx.send(e).await;
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(e).await;
                        return;
                    }
                }
            }
        });
        Keepalive {
            errors,
            _task: AbortOnDrop(task),
        }
    }
}

/// The keepalive task's failure, if there is a task (else never).
async fn recv_error(ka: &mut Option<Keepalive>) -> Option<Error> {
    match ka {
        Some(k) => k.errors.recv().await,
        None => std::future::pending().await,
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
