//! The store: the [`crate::layout`] in etcd, over `etcd-client` (gRPC, etcd ≥ 3.4).
//!
//! - [`Store::snapshot`]: one range read of `/vipmesh/`, at one revision;
//! - [`Store::watch`]: the changes under `/vipmesh/` from a revision on (a compacted start
//!   revision is [`Error::Compacted`]: reload a snapshot);
//! - [`Store::register_node`]: a lease, the node's key under it, and its keepalive
//!   ([`Registration::keep_alive`]);
//! - [`Store::cluster_apply`]: replaces the cluster's desired state in ONE transaction,
//!   guarded by a compare of the modification revision of every desired-state key against
//!   the revision the apply is based on: of two concurrent applies the second gets
//!   [`Error::CasLost`] and writes nothing. Every apply rewrites `/vipmesh/v1/cluster`, so
//!   an apply that only deletes keys also moves the guarded revision. Keys are written and
//!   deleted one by one (etcd rejects a transaction that puts inside a range it deletes);
//!   etcd's `--max-txn-ops` (128 by default) bounds the number of changed keys per apply.
//!
//! Every unary request has a deadline ([`StoreConfig::request_timeout`]); the connection
//! sends HTTP/2 keepalives, so a dead peer ends a watch with an error instead of silence;
//! requests carry etcd's `hasleader` metadata, so a member without a leader (lost quorum)
//! cancels the watch.
//!
//! # Examples
//! ```no_run
//! # async fn demo() -> Result<(), vipmesh_agent::Error> {
//! use vipmesh_agent::store::{Store, StoreConfig};
//! let mut store = Store::connect(StoreConfig::new(vec!["http://127.0.0.1:2379".into()])).await?;
//! let snap = store.snapshot().await?;
//! let mut watch = store.watch(snap.revision + 1).await?;
//! while let Some(batch) = watch.next().await? {
//!     println!("revision {}: {} changes", batch.revision, batch.changes.len());
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, WatchOptions, WatchStream,
};

use crate::error::Error;
use crate::layout::{self, ClusterFile, ClusterMeta, Issue, NodeRecord, ReadyTasks};

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `http://host:port` of each member.
    pub endpoints: Vec<String>,
    /// Deadline of each unary request.
    pub request_timeout: Duration,
    /// Deadline of a connection attempt.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive interval (a dead peer is noticed within interval + timeout).
    pub keepalive_interval: Duration,
    /// HTTP/2 keepalive timeout.
    pub keepalive_timeout: Duration,
    /// TLS to the members (`https://` endpoints), if used.
    pub tls: Option<Tls>,
}

/// Client TLS for etcd, as etcd's `--trusted-ca-file` / `--client-cert-auth` expect it: the
/// CA that signed the members' certificates and, for client certificate authentication, this
/// client's certificate and key, all PEM. Its `Debug` does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Tls {
    /// The CA certificate(s).
    pub ca: Vec<u8>,
    /// This client's certificate and private key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca_bytes", &self.ca.len())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

/// Reads one PEM file that must hold a block whose label ends with `label` (`CERTIFICATE`,
/// `PRIVATE KEY`); `option` names the command-line option in errors.
fn read_pem(option: &str, path: &std::path::Path, label: &str) -> Result<Vec<u8>, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::File {
        path: path.display().to_string(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let has_block = text.lines().any(|l| {
        l.trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
            .is_some_and(|l| l.ends_with(label))
    });
    if !has_block {
        return Err(Error::invalid(
            option,
            format!("{}: no PEM {label} block", path.display()),
        ));
    }
    Ok(bytes)
}

impl Tls {
    /// Reads and checks the PEM files: the CA (`--etcd-cacert`) and, together or not at all,
    /// this client's certificate (`--etcd-cert`) and key (`--etcd-key`).
    ///
    /// # Errors
    /// [`Error::File`] for a file that cannot be read; [`Error::Invalid`] naming the option
    /// for a file without the PEM block it needs, or a certificate without its key (or the
    /// reverse).
    ///
    /// # Examples
    /// ```
    /// use std::path::Path;
    /// use vipmesh_agent::store::Tls;
    /// let e = Tls::from_files(Path::new("ca.pem"), Some(Path::new("c.pem")), None).unwrap_err();
    /// assert!(e.to_string().contains("--etcd-key"), "{e}");
    /// assert_eq!(e.exit_code(), 2);
    /// ```
    pub fn from_files(
        ca: &std::path::Path,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<Tls, Error> {
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((
                read_pem("--etcd-cert", c, "CERTIFICATE")?,
                read_pem("--etcd-key", k, "PRIVATE KEY")?,
            )),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::invalid(
                    "--etcd-key",
                    "missing: --etcd-cert needs the client's private key",
                ));
            }
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "--etcd-cert",
                    "missing: --etcd-key needs the client's certificate",
                ));
            }
        };
        Ok(Tls {
            ca: read_pem("--etcd-cacert", ca, "CERTIFICATE")?,
            identity,
        })
    }
}

/// Checks the endpoints against the TLS choice before anything connects: every endpoint is
/// `http://` or `https://` (or a bare `host:port`), and TLS is given exactly when they are
/// `https://` (a mix cannot be served by one client).
///
/// # Errors
/// [`Error::Invalid`] naming `--etcd` (or `--etcd-cacert`) and the endpoint.
///
/// # Examples
/// ```
/// use vipmesh_agent::store::check_endpoints;
/// assert!(check_endpoints(&["http://127.0.0.1:2379".into()], false).is_ok());
/// let e = check_endpoints(&["https://127.0.0.1:2379".into()], false).unwrap_err();
/// assert!(e.to_string().contains("--etcd-cacert"), "{e}");
/// assert!(check_endpoints(&["http://a:1".into()], true).is_err());
/// assert!(check_endpoints(&["ftp://a:1".into()], false).is_err());
/// ```
pub fn check_endpoints(endpoints: &[String], tls: bool) -> Result<(), Error> {
    for e in endpoints {
        let (scheme, rest) = e.split_once("://").unwrap_or(("", e.as_str()));
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(Error::invalid("--etcd", format!("{e:?}: not a URL")));
        }
        match (scheme, tls) {
            ("http", false) | ("https", true) | ("", _) => {}
            ("https", false) => {
                return Err(Error::invalid(
                    "--etcd-cacert",
                    format!("missing: endpoint {e} is https and needs the CA certificate"),
                ));
            }
            ("http", true) => {
                return Err(Error::invalid(
                    "--etcd",
                    format!("{e}: the TLS options need https:// endpoints"),
                ));
            }
            _ => {
                return Err(Error::invalid(
                    "--etcd",
                    format!("{e}: the scheme must be http:// or https://"),
                ));
            }
        }
    }
    Ok(())
}

impl StoreConfig {
    /// Defaults: 5 s per request, 3 s to connect, keepalive every 10 s with 5 s to answer
    /// (etcd's `--grpc-keepalive-min-time` is 5 s by default: a client that pings more
    /// often is sent a GOAWAY "too_many_pings" and loses its watch).
    pub fn new(endpoints: Vec<String>) -> StoreConfig {
        StoreConfig {
            endpoints,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// Everything under `/vipmesh/` at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The store's revision the read saw.
    pub revision: i64,
    /// Keys and values.
    pub kvs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Snapshot {
    /// Applies a batch of watched changes (in order).
    pub fn apply(&mut self, batch: &WatchBatch) {
        for c in &batch.changes {
            match &c.value {
                Some(v) => {
                    self.kvs.insert(c.key.clone(), v.clone());
                }
                None => {
                    self.kvs.remove(&c.key);
                }
            }
        }
        let last = batch.changes.iter().map(|c| c.mod_revision).max();
        self.revision = self.revision.max(last.unwrap_or(0));
    }
}

/// One changed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: Vec<u8>,
    /// The new value; `None` for a deletion.
    pub value: Option<Vec<u8>>,
    /// The revision of the change.
    pub mod_revision: i64,
}

/// The changes of one watch response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchBatch {
    /// The store's revision when the response was sent.
    pub revision: i64,
    /// The changes, in revision order.
    pub changes: Vec<Change>,
}

/// What `cluster apply` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The revision of the transaction.
    pub revision: i64,
    /// Keys written (new or changed), excluding the apply record.
    pub written: Vec<String>,
    /// Keys deleted.
    pub deleted: Vec<String>,
    /// VIPs allocated for services written without one: (the service's key, the VIP).
    pub allocated: Vec<(String, std::net::IpAddr)>,
}

/// A connection to etcd.
#[derive(Clone)]
pub struct Store {
    client: Client,
    cfg: StoreConfig,
    index: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("cfg", &self.cfg)
            .field("endpoint", &self.cfg.endpoints.get(self.index))
            .finish()
    }
}

async fn deadline<T>(
    op: &str,
    d: Duration,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(d, fut).await {
        Ok(r) => r.map_err(|e| Error::etcd(op, e)),
        Err(_) => Err(Error::Timeout {
            op: op.to_string(),
            timeout_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

impl Store {
    /// Connects to the first member that answers, trying them in the order given: see
    /// [`Store::connect_from`].
    ///
    /// # Errors
    /// As [`Store::connect_from`].
    pub async fn connect(cfg: StoreConfig) -> Result<Store, Error> {
        Store::connect_from(cfg, 0).await
    }

    /// Connects to one member: the first of the endpoints, starting at index `start` and
    /// wrapping around, that answers a linearizable read (so it is up, reachable, and part
    /// of a cluster with a leader). Every request of the connection goes to that member; a
    /// caller that loses it connects again (an agent starts from the member that worked last,
    /// [`Store::endpoint`]).
    ///
    /// One member at a time, not etcd-client's balanced channel over all of them: that
    /// channel keeps sending requests to a dead member (each failing with a connect error), so
    /// after a member died an agent could take tens of seconds of failed reconnects to land
    /// on a live one. Here a dead member costs one refused connection (or `connect_timeout`).
    ///
    /// # Errors
    /// The last member's error ([`Error::Etcd`], [`Error::Timeout`]) when none answers; the
    /// others are logged.
    pub async fn connect_from(cfg: StoreConfig, start: usize) -> Result<Store, Error> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(cfg.connect_timeout)
            .with_keep_alive(cfg.keepalive_interval, cfg.keepalive_timeout)
            .with_keep_alive_while_idle(true)
            // A member cut off from its cluster's leader cancels our watch instead of
            // keeping it open and silent.
            .with_require_leader(true);
        let opts = match &cfg.tls {
            Some(t) => {
                let mut tls = etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(&t.ca));
                if let Some((cert, key)) = &t.identity {
                    tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
                }
                opts.with_tls(tls)
            }
            None => opts,
        };
        let n = cfg.endpoints.len();
        let mut last = Error::invalid("--etcd", "no endpoint given");
        for i in 0..n {
            let index = (start + i) % n;
            let ep = &cfg.endpoints[index];
            match Store::probe(&cfg, ep, opts.clone()).await {
                Ok(client) => {
                    tracing::debug!(endpoint = %ep, "connected to etcd");
                    return Ok(Store { client, cfg, index });
                }
                Err(e) => {
                    tracing::debug!(endpoint = %ep, error = %e, "etcd member unreachable");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// A client of member `ep`, once it answered one read.
    async fn probe(cfg: &StoreConfig, ep: &str, opts: ConnectOptions) -> Result<Client, Error> {
        let mut client = deadline(
            &format!("connect {ep}"),
            cfg.connect_timeout + cfg.request_timeout,
            Client::connect([ep], Some(opts)),
        )
        .await?;
        deadline(
            &format!("range {} (first read) at {ep}", layout::ROOT),
            cfg.connect_timeout + cfg.request_timeout,
            client.get(
                layout::ROOT,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_limit(1),
                ),
            ),
        )
        .await?;
        Ok(client)
    }

    /// The index (in [`StoreConfig::endpoints`]) of the member this connection uses.
    pub fn endpoint(&self) -> usize {
        self.index
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// Everything under `/vipmesh/` in one range read.
    ///
    /// # Errors
    /// [`Error::Etcd`], [`Error::Timeout`].
    pub async fn snapshot(&mut self) -> Result<Snapshot, Error> {
        let op = format!("range {}", layout::ROOT);
        let mut resp = deadline(
            &op,
            self.cfg.request_timeout,
            self.client
                .get(layout::ROOT, Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let kvs = resp
            .take_kvs()
            .into_iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect();
        Ok(Snapshot { revision, kvs })
    }

    /// Watches `/vipmesh/` from `from_revision` on (inclusive).
    ///
    /// # Errors
    /// [`Error::Etcd`], [`Error::Timeout`] (a compacted revision shows at the first
    /// [`Watch::next`]).
    pub async fn watch(&mut self, from_revision: i64) -> Result<Watch, Error> {
        let op = format!("watch {} from {from_revision}", layout::ROOT);
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from_revision);
        let stream = deadline(
            &op,
            self.cfg.request_timeout,
            self.client.watch(layout::ROOT, Some(opts)),
        )
        .await?;
        Ok(Watch {
            stream,
            from: from_revision,
        })
    }

    /// Registers a node: grants a lease of `ttl_secs`, puts `/vipmesh/v1/nodes/<name>` and
    /// its ready tasks (`/vipmesh/v1/ready/<name>`) under it in one transaction, and opens its
    /// keepalive stream. Both keys disappear when the lease expires (the agent died or lost
    /// etcd for `ttl_secs`).
    ///
    /// `ready` is what the caller has wired; `None` (a process that has wired nothing yet)
    /// keeps the ready tasks of this node's previous registration when it takes over its own
    /// record (the tasks it wired are still in the kernel), and lists none otherwise.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a name that is not one path segment; [`Error::Etcd`],
    /// [`Error::Timeout`].
    pub async fn register_node(
        &mut self,
        name: &str,
        record: &NodeRecord,
        ttl_secs: i64,
        ready: Option<&ReadyTasks>,
    ) -> Result<Registration, Error> {
        let key = layout::node_key(name);
        let ready_key = layout::ready_key(name);
        if !matches!(layout::parse_key(&key), Ok(layout::Key::Node(n)) if n == name) {
            return Err(Error::invalid(
                key,
                "a node name is one non-empty path segment",
            ));
        }
        let value = serde_json::to_vec(record).map_err(|e| Error::invalid(&key, e.to_string()))?;
        let t = self.cfg.request_timeout;
        // The name is ours when it is free or holds our own record (this agent before a
        // restart, whose lease has not expired yet); another record under a live lease is
        // another node with the same name: refused, its key untouched.
        let held = deadline(&format!("get {key}"), t, self.client.get(key.clone(), None)).await?;
        let current = held
            .kvs()
            .first()
            .map(|kv| (kv.mod_revision(), kv.value().to_vec()));
        if let Some((_, v)) = &current
            && serde_json::from_slice::<NodeRecord>(v).ok().as_ref() != Some(record)
        {
            return Err(Error::NodeNameTaken {
                node: name.to_string(),
                holder: String::from_utf8_lossy(v).into_owned(),
            });
        }
        let ready = match (ready, &current) {
            (Some(r), _) => r.clone(),
            (None, None) => ReadyTasks::default(),
            (None, Some(_)) => {
                let held = deadline(
                    &format!("get {ready_key}"),
                    t,
                    self.client.get(ready_key.clone(), None),
                )
                .await?;
                held.kvs()
                    .first()
                    .and_then(|kv| serde_json::from_slice(kv.value()).ok())
                    .unwrap_or_default()
            }
        };
        let ready =
            serde_json::to_vec(&ready).map_err(|e| Error::invalid(&ready_key, e.to_string()))?;
        let lease = deadline("lease grant", t, self.client.lease_grant(ttl_secs, None)).await?;
        let id = lease.id();
        // Put only if the key is still what was read (no other node claimed it meanwhile).
        let unchanged = match &current {
            Some((rev, _)) => Compare::mod_revision(key.clone(), CompareOp::Equal, *rev),
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
        };
        let txn = Txn::new().when([unchanged]).and_then([
            TxnOp::put(key.clone(), value, Some(PutOptions::new().with_lease(id))),
            TxnOp::put(ready_key, ready, Some(PutOptions::new().with_lease(id))),
        ]);
        let r = deadline(&format!("txn register {key}"), t, self.client.txn(txn)).await?;
        if !r.succeeded() {
            // Lost a race for the name: give the lease back (best effort; it expires anyway).
            let _ = deadline("lease revoke", t, self.client.lease_revoke(id)).await;
            return Err(Error::NodeNameTaken {
                node: name.to_string(),
                holder: "(claimed concurrently)".into(),
            });
        }
        let (keeper, stream) =
            deadline("lease keepalive", t, self.client.lease_keep_alive(id)).await?;
        Ok(Registration {
            key,
            id,
            ttl_secs,
            keeper,
            stream,
            timeout: t,
        })
    }

    /// Publishes the tasks node `name` has wired, under its registration's lease, if the
    /// node's key is still held by that lease. Returns false (nothing written) when it is
    /// not: the lease expired, or another process holds the name.
    ///
    /// # Errors
    /// [`Error::Etcd`], [`Error::Timeout`].
    pub async fn publish_ready(
        &mut self,
        name: &str,
        lease: i64,
        ready: &ReadyTasks,
    ) -> Result<bool, Error> {
        let key = layout::ready_key(name);
        let value = serde_json::to_vec(ready).map_err(|e| Error::invalid(&key, e.to_string()))?;
        let txn = Txn::new()
            .when([Compare::lease(
                layout::node_key(name),
                CompareOp::Equal,
                lease,
            )])
            .and_then([TxnOp::put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let r = deadline(
            &format!("txn put {key}"),
            self.cfg.request_timeout,
            self.client.txn(txn),
        )
        .await?;
        Ok(r.succeeded())
    }

    /// The cluster's desired state, with the values that do not parse, and the revision.
    ///
    /// # Errors
    /// As [`Store::snapshot`].
    pub async fn cluster_get(&mut self) -> Result<(ClusterFile, Vec<Issue>, i64), Error> {
        let snap = self.snapshot().await?;
        let (file, issues) = ClusterFile::from_kvs(&snap.kvs);
        Ok((file, issues, snap.revision))
    }

    /// Replaces the cluster's desired state by `file`, in one transaction, if no key of the
    /// desired state was modified after revision `based_on` (default: the revision this call
    /// reads). Node registrations are not touched.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the key of a value an agent would skip, or of a service
    /// whose VIP cannot be allocated (nothing is written); [`Error::CasLost`] when the desired state changed after `based_on` (nothing
    /// is written); [`Error::Etcd`], [`Error::Timeout`].
    pub async fn cluster_apply(
        &mut self,
        file: &ClusterFile,
        based_on: Option<i64>,
    ) -> Result<ApplyOutcome, Error> {
        if file.pending_vips.is_empty() {
            // Refused before any request when invalid.
            file.to_kvs()?;
        }
        let snap = self.snapshot().await?;
        let (file, allocated) = file.allocate_vips(&crate::vips::claims(&snap.kvs))?;
        let new = file.to_kvs()?;
        let base = based_on.unwrap_or(snap.revision);
        let mut ops = Vec::new();
        let mut written = Vec::new();
        let mut deleted = Vec::new();
        for (k, _) in snap.kvs.iter().filter(|(k, _)| is_desired(k)) {
            let Ok(ks) = std::str::from_utf8(k) else {
                ops.push(TxnOp::delete(k.clone(), None));
                deleted.push(String::from_utf8_lossy(k).into_owned());
                continue;
            };
            if ks != layout::meta_key() && !new.contains_key(ks) {
                ops.push(TxnOp::delete(k.clone(), None));
                if !ks.starts_with(layout::VIPS_PREFIX) {
                    deleted.push(ks.to_string());
                }
            }
        }
        let mut claims_created = Vec::new();
        for (k, v) in &new {
            let old = snap.kvs.get(k.as_bytes());
            if old.map(Vec::as_slice) != Some(v.as_bytes()) {
                ops.push(TxnOp::put(k.clone(), v.clone(), None));
                if !k.starts_with(layout::VIPS_PREFIX) {
                    written.push(k.clone());
                } else if old.is_none() {
                    claims_created.push(k.clone());
                }
            }
        }
        let meta = ClusterMeta {
            version: layout::VERSION.to_string(),
            keys: new.len(),
        };
        let meta_value = serde_json::to_vec(&meta)
            .map_err(|e| Error::invalid(layout::meta_key(), e.to_string()))?;
        ops.push(TxnOp::put(layout::meta_key(), meta_value, None));
        let mut compares: Vec<Compare> = layout::DESIRED_PREFIXES
            .iter()
            .map(|p| {
                Compare::mod_revision(*p, CompareOp::Less, base.saturating_add(1)).with_prefix()
            })
            .collect();
        // A claim is created only where none exists (the revision compare above already
        // refuses a key created after `base`; this one says so per VIP).
        compares.extend(
            claims_created
                .iter()
                .map(|k| Compare::create_revision(k.clone(), CompareOp::Equal, 0)),
        );
        let txn = Txn::new().when(compares).and_then(ops);
        let resp = deadline(
            "txn cluster apply",
            self.cfg.request_timeout,
            self.client.txn(txn),
        )
        .await?;
        if !resp.succeeded() {
            let current = self.desired_mod_revision().await?;
            return Err(Error::CasLost {
                expected: base,
                current,
            });
        }
        Ok(ApplyOutcome {
            revision: resp.header().map_or(0, |h| h.revision()),
            written,
            deleted,
            allocated,
        })
    }

    /// The newest modification revision among the desired-state keys.
    async fn desired_mod_revision(&mut self) -> Result<i64, Error> {
        let mut max = 0;
        for p in layout::DESIRED_PREFIXES {
            let resp = deadline(
                &format!("range {p}"),
                self.cfg.request_timeout,
                self.client.get(p, Some(GetOptions::new().with_prefix())),
            )
            .await?;
            max = resp
                .kvs()
                .iter()
                .map(|kv| kv.mod_revision())
                .fold(max, i64::max);
        }
        Ok(max)
    }
}

fn is_desired(k: &[u8]) -> bool {
    layout::DESIRED_PREFIXES
        .iter()
        .any(|p| k.starts_with(p.as_bytes()))
}

/// A watch of `/vipmesh/`.
pub struct Watch {
    stream: WatchStream,
    from: i64,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("from", &self.from).finish()
    }
}

impl Watch {
    /// The next batch of changes (one watch response; responses without events, such as
    /// the creation's, are skipped). `None` when the server closed the stream.
    ///
    /// # Errors
    /// [`Error::Compacted`] when the start revision was compacted; [`Error::Etcd`] when the
    /// stream broke or the watch was cancelled.
    pub async fn next(&mut self) -> Result<Option<WatchBatch>, Error> {
        loop {
            let Some(resp) = self
                .stream
                .message()
                .await
                .map_err(|e| Error::etcd("watch", e))?
            else {
                return Ok(None);
            };
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    return Err(Error::Compacted {
                        from: self.from,
                        compact_revision: resp.compact_revision(),
                    });
                }
                return Err(Error::Etcd {
                    op: "watch".into(),
                    source: etcd_client::Error::WatchError(format!(
                        "cancelled: {}",
                        resp.cancel_reason()
                    )),
                });
            }
            let revision = resp.header().map_or(0, |h| h.revision());
            let changes: Vec<Change> = resp
                .events()
                .iter()
                .filter_map(|e| {
                    let kv = e.kv()?;
                    Some(Change {
                        key: kv.key().to_vec(),
                        value: (e.event_type() == EventType::Put).then(|| kv.value().to_vec()),
                        mod_revision: kv.mod_revision(),
                    })
                })
                .collect();
            if changes.is_empty() {
                continue;
            }
            if let Some(last) = changes.last() {
                self.from = last.mod_revision.saturating_add(1);
            }
            return Ok(Some(WatchBatch { revision, changes }));
        }
    }
}

/// A node's registration: its lease and keepalive stream.
pub struct Registration {
    key: String,
    id: i64,
    ttl_secs: i64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
    timeout: Duration,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("lease", &self.id)
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

impl Registration {
    /// The lease id.
    pub fn lease(&self) -> i64 {
        self.id
    }

    /// The lease's time to live.
    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    /// Refreshes the lease once; call it every third of the TTL. Returns the TTL granted.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the lease has expired (its key is gone: register again);
    /// [`Error::Etcd`], [`Error::Timeout`].
    pub async fn keep_alive(&mut self) -> Result<i64, Error> {
        deadline("lease keepalive", self.timeout, self.keeper.keep_alive()).await?;
        let resp = deadline("lease keepalive", self.timeout, self.stream.message()).await?;
        match resp {
            Some(r) if r.ttl() > 0 => Ok(r.ttl()),
            _ => Err(Error::invalid(
                &self.key,
                format!("lease {:x} expired", self.id),
            )),
        }
    }
}
