//! The key layout in etcd, version 1, and the pure assembly of one node's
//! [`NodeState`] from a snapshot of it.
//!
//! | key | value |
//! |---|---|
//! | `/vipmesh/v1/options` | [`NodeOptions`] JSON (`{"drain_timeout": 30}`) |
//! | `/vipmesh/v1/networks/<id>` | a [`NetworkFile`] JSON **without** `services` |
//! | `/vipmesh/v1/services/<network>/<name>` | a [`Service`] JSON (its `name` is `<name>`) |
//! | `/vipmesh/v1/ingress/config` | the [`Ingress`] JSON without `node`, `nodes` and `services` |
//! | `/vipmesh/v1/ingress/services/<name>` | an [`IngressService`] JSON (its `name` is `<name>`) |
//! | `/vipmesh/v1/nodes/<name>` | a [`NodeRecord`] JSON, put under the agent's lease |
//! | `/vipmesh/v1/ready/<name>` | a [`ReadyTasks`] JSON: the node's tasks it has wired, under the same lease |
//! | `/vipmesh/v1/cluster` | a [`ClusterMeta`] JSON, rewritten by every `cluster apply` |
//! | `/vipmesh/v1/vips/<network>/<addr>` | a [`VipClaim`] JSON: the service holding that VIP |
//!
//! Everything but `nodes/` is the cluster's desired state, written by `cluster apply` in one
//! transaction ([`crate::store::Store::cluster_apply`]); `nodes/` is written by the agents.
//! Every node programs every network (the namespace names are node-local names); the
//! ingress is assembled per node: `node` is this node, `nodes` the registered (live) nodes,
//! sorted by name, and the tasks with `"node": "<this node>"` are its local tasks. A
//! published service's tasks on a node that is not registered are left out: when a node's
//! lease expires, its tasks drain from every other node's IPVS.
//!
//! A task on another node is a backend here only once that node lists it as ready
//! (`ready/<name>`, written by its agent after a sync that wired the task: the REDIRECT or
//! tc programs in the task's namespace). A runtime writes a task to etcd once; every node
//! reads it at about the same time, and without this a node could balance a request to the
//! task before the task's own node has wired it (a refused connection). A node registered
//! without a `ready/` key (not written by an agent of this version) has all its tasks
//! counted, as before.
//!
//! The version is the second path element. An agent reads only `/vipmesh/v1/`; keys of
//! another version under `/vipmesh/` are reported, never interpreted. A change of the layout
//! that old agents would misread gets a new version.
//!
//! Every value is validated when read: a bad one is reported as an [`Issue`] naming its key
//! and skipped, and everything else is still applied.
//!
//! # Examples
//! ```
//! use std::collections::BTreeMap;
//! use vipmesh_agent::layout;
//! let mut kvs = BTreeMap::new();
//! kvs.insert(layout::network_key("demo").into_bytes(), br#"{"id": "demo",
//!     "lb_netns": "lb-demo", "lb_interface": "eth0",
//!     "subnets": [{"subnet": "10.0.0.0/24", "lb_addr": "10.0.0.2"}]}"#.to_vec());
//! kvs.insert(layout::service_key("demo", "vote").into_bytes(), br#"{"name": "vote",
//!     "mode": {"vip": ["10.0.0.9"]}, "backends": [{"addr": "10.0.0.10"}]}"#.to_vec());
//! kvs.insert(layout::service_key("demo", "bad").into_bytes(), b"{not json".to_vec());
//! let a = layout::assemble("node-1", &kvs);
//! assert_eq!(a.state.network("demo").unwrap().services().count(), 1);
//! assert_eq!(a.issues.len(), 1);
//! assert_eq!(a.issues[0].key, "/vipmesh/v1/services/demo/bad");
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use vipmesh::ingress::{ClusterNode, Ingress, IngressService};
use vipmesh::model::{NetworkFile, NetworkState, NodeOptions, NodeState, Service};

use crate::error::Error;

/// Everything vipmesh keeps in etcd lives under this.
pub const ROOT: &str = "/vipmesh/";
/// The layout version this crate reads and writes.
pub const VERSION: &str = "v1";
/// The prefix of this version's keys.
pub const PREFIX: &str = "/vipmesh/v1/";
/// The nodes' registrations.
pub const NODES_PREFIX: &str = "/vipmesh/v1/nodes/";
/// The nodes' ready tasks (written by the agents, like the registrations).
pub const READY_PREFIX: &str = "/vipmesh/v1/ready/";
/// The prefixes (and single keys) of the cluster's desired state: what `cluster apply`
/// replaces and compares.
pub const DESIRED_PREFIXES: [&str; 6] = [
    "/vipmesh/v1/networks/",
    "/vipmesh/v1/services/",
    "/vipmesh/v1/ingress/",
    "/vipmesh/v1/options",
    "/vipmesh/v1/cluster",
    "/vipmesh/v1/vips/",
];
/// The VIP claims (one key per VIP of every service, written by `cluster apply`).
pub const VIPS_PREFIX: &str = "/vipmesh/v1/vips/";

/// The key of the node options.
pub fn options_key() -> String {
    format!("{PREFIX}options")
}
/// The key of `cluster apply`'s record.
pub fn meta_key() -> String {
    format!("{PREFIX}cluster")
}
/// The key of a network.
pub fn network_key(id: &str) -> String {
    format!("{PREFIX}networks/{id}")
}
/// The key of a service of a network.
pub fn service_key(network: &str, name: &str) -> String {
    format!("{PREFIX}services/{network}/{name}")
}
/// The key of the ingress configuration.
pub fn ingress_config_key() -> String {
    format!("{PREFIX}ingress/config")
}
/// The key of a published service.
pub fn ingress_service_key(name: &str) -> String {
    format!("{PREFIX}ingress/services/{name}")
}
/// The key of the claim on a VIP of a network.
pub fn vip_claim_key(network: &str, addr: IpAddr) -> String {
    format!("{VIPS_PREFIX}{network}/{addr}")
}
/// The key of a node's registration.
pub fn node_key(name: &str) -> String {
    format!("{NODES_PREFIX}{name}")
}
/// The key of a node's ready tasks.
pub fn ready_key(name: &str) -> String {
    format!("{READY_PREFIX}{name}")
}

/// A key of the layout, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// `/vipmesh/v1/options`.
    Options,
    /// `/vipmesh/v1/cluster`.
    Meta,
    /// `/vipmesh/v1/networks/<id>`.
    Network(&'a str),
    /// `/vipmesh/v1/services/<network>/<name>`.
    Service {
        /// The network's id.
        network: &'a str,
        /// The service's name.
        name: &'a str,
    },
    /// `/vipmesh/v1/ingress/config`.
    IngressConfig,
    /// `/vipmesh/v1/ingress/services/<name>`.
    IngressService(&'a str),
    /// `/vipmesh/v1/nodes/<name>`.
    Node(&'a str),
    /// `/vipmesh/v1/ready/<name>`.
    Ready(&'a str),
    /// `/vipmesh/v1/vips/<network>/<addr>`.
    VipClaim {
        /// The network's id.
        network: &'a str,
        /// The VIP.
        addr: IpAddr,
    },
}

fn segment(s: &str) -> Option<&str> {
    (!s.is_empty() && !s.contains('/')).then_some(s)
}

/// Parses a key of the layout.
///
/// # Errors
/// The reason, for a key outside `/vipmesh/`, of another version, or not of the layout.
pub fn parse_key(key: &str) -> Result<Key<'_>, String> {
    let Some(rest) = key.strip_prefix(PREFIX) else {
        if let Some(other) = key.strip_prefix(ROOT) {
            let v = other.split('/').next().unwrap_or_default();
            return Err(format!(
                "schema version {v:?} is not supported by this agent (it reads {VERSION})"
            ));
        }
        return Err(format!("outside the {PREFIX} layout"));
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let k = match parts.as_slice() {
        ["options"] => Some(Key::Options),
        ["cluster"] => Some(Key::Meta),
        ["networks", id] => segment(id).map(Key::Network),
        ["services", n, s] => segment(n)
            .zip(segment(s))
            .map(|(network, name)| Key::Service { network, name }),
        ["ingress", "config"] => Some(Key::IngressConfig),
        ["ingress", "services", s] => segment(s).map(Key::IngressService),
        ["nodes", n] => segment(n).map(Key::Node),
        ["ready", n] => segment(n).map(Key::Ready),
        ["vips", n, a] => segment(n)
            .zip(a.parse::<IpAddr>().ok())
            .map(|(network, addr)| Key::VipClaim { network, addr }),
        _ => None,
    };
    k.ok_or_else(|| format!("not a key of the {PREFIX} layout"))
}

/// A node's registration (`/vipmesh/v1/nodes/<name>`), kept alive by its agent's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    /// Its underlay address (the VXLAN endpoint).
    pub underlay: IpAddr,
    /// Its ingress sandbox's address on the ingress network.
    pub sandbox_addr: IpAddr,
}

/// The tasks of one node that its agent has wired (`/vipmesh/v1/ready/<name>`), by published
/// service: the addresses of its tasks there. Put under the node's lease with its
/// registration, rewritten after each sync that applied the whole desired state.
///
/// # Examples
/// ```
/// use vipmesh_agent::layout::ReadyTasks;
/// let r: ReadyTasks = serde_json::from_str(r#"{"services": {"web": ["10.255.0.10"]}}"#).unwrap();
/// assert!(r.lists("web", "10.255.0.10".parse().unwrap()));
/// assert!(!r.lists("web", "10.255.0.11".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadyTasks {
    /// Published service name -> the addresses of its ready tasks on the node.
    #[serde(default)]
    pub services: BTreeMap<String, BTreeSet<IpAddr>>,
}

impl ReadyTasks {
    /// The local tasks of node `node` in a desired state (what a sync of it wired).
    pub fn local(node: &str, state: &NodeState) -> ReadyTasks {
        let mut services = BTreeMap::new();
        for s in state
            .ingress()
            .map(|i| i.services.as_slice())
            .unwrap_or_default()
        {
            let addrs: BTreeSet<IpAddr> = s
                .tasks
                .iter()
                .filter(|t| t.node == node)
                .map(|t| t.addr)
                .collect();
            if !addrs.is_empty() {
                services.insert(s.name.as_str().to_string(), addrs);
            }
        }
        ReadyTasks { services }
    }

    /// Whether the task at `addr` of published service `service` is listed.
    pub fn lists(&self, service: &str, addr: IpAddr) -> bool {
        self.services
            .get(service)
            .is_some_and(|a| a.contains(&addr))
    }

    /// Only the tasks also listed in `other`.
    pub fn intersect(&self, other: &ReadyTasks) -> ReadyTasks {
        let services = self
            .services
            .iter()
            .filter_map(|(name, addrs)| {
                let kept: BTreeSet<IpAddr> = addrs
                    .iter()
                    .filter(|a| other.lists(name, **a))
                    .copied()
                    .collect();
                (!kept.is_empty()).then(|| (name.clone(), kept))
            })
            .collect();
        ReadyTasks { services }
    }
}

/// The record `cluster apply` rewrites with every apply (`/vipmesh/v1/cluster`), so that a
/// deletion of the desired state also moves its modification revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterMeta {
    /// The layout version.
    pub version: String,
    /// How many keys the apply wrote.
    pub keys: usize,
}

/// The claim on one VIP (`/vipmesh/v1/vips/<network>/<addr>`): which service of the network
/// holds it. `cluster apply` writes one for every VIP of every service, in the transaction
/// that writes the services, and allocates VIPs for services that have none from the
/// addresses no claim holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipClaim {
    /// The service's name.
    pub service: String,
}

/// A value that was not applied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Its etcd key.
    pub key: String,
    /// Why it was skipped.
    pub reason: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// A node's desired state assembled from a snapshot, with what was skipped.
#[derive(Debug, Clone)]
pub struct Assembled {
    /// The state (always valid; possibly without the values named in `issues`).
    pub state: NodeState,
    /// Values skipped, in key order.
    pub issues: Vec<Issue>,
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn parse<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, String> {
    serde_json::from_slice(v).map_err(|e| format!("invalid JSON: {e}"))
}

/// The value of `/vipmesh/v1/services/<network>/<name>`.
fn parse_service(v: &[u8], name: &str) -> Result<Service, String> {
    let s = parse::<Service>(v)?;
    if s.name.as_str() != name {
        return Err(format!(
            "its name {:?} is not the key's {name:?}",
            s.name.as_str()
        ));
    }
    Ok(s)
}

/// The parsed values of a snapshot, before they are checked together.
#[derive(Debug, Default)]
struct Parts {
    options: Option<NodeOptions>,
    networks: BTreeMap<String, NetworkFile>,
    services: BTreeMap<String, BTreeMap<String, Service>>,
    ingress_config: Option<Map<String, Value>>,
    ingress_services: BTreeMap<String, IngressService>,
    nodes: BTreeMap<String, NodeRecord>,
    ready: BTreeMap<String, ReadyTasks>,
}

fn classify(kvs: &BTreeMap<Vec<u8>, Vec<u8>>, issues: &mut Vec<Issue>) -> Parts {
    let mut p = Parts::default();
    for (k, v) in kvs {
        let Ok(key) = std::str::from_utf8(k) else {
            issues.push(Issue {
                key: String::from_utf8_lossy(k).into_owned(),
                reason: "the key is not UTF-8".into(),
            });
            continue;
        };
        let mut bad = |reason: String| {
            issues.push(Issue {
                key: key.to_string(),
                reason,
            })
        };
        let parsed = match parse_key(key) {
            Ok(pk) => pk,
            Err(r) => {
                bad(r);
                continue;
            }
        };
        let res: Result<(), String> = match parsed {
            Key::Options => parse(v).map(|o| p.options = Some(o)),
            Key::Meta => parse::<ClusterMeta>(v).map(|_| ()),
            Key::Network(id) => parse::<NetworkFile>(v).and_then(|f| {
                if f.id.as_str() != id {
                    Err(format!("its id {:?} is not the key's {id:?}", f.id.as_str()))
                } else if !f.services.is_empty() {
                    Err(format!(
                        "a network value holds no services (they live under {PREFIX}services/{id}/)"
                    ))
                } else {
                    p.networks.insert(id.to_string(), f);
                    Ok(())
                }
            }),
            Key::Service { network, name } => parse_service(v, name).map(|s| {
                p.services
                    .entry(network.to_string())
                    .or_default()
                    .insert(name.to_string(), s);
            }),
            Key::IngressConfig => parse::<Map<String, Value>>(v).and_then(|m| {
                match ["node", "nodes", "services"]
                    .into_iter()
                    .find(|f| m.contains_key(*f))
                {
                    Some(f) => Err(format!(
                        "field {f:?} does not belong in the ingress config (it is assembled from {PREFIX}nodes/ and {PREFIX}ingress/services/)"
                    )),
                    None => {
                        p.ingress_config = Some(m);
                        Ok(())
                    }
                }
            }),
            Key::IngressService(name) => parse::<IngressService>(v).and_then(|s| {
                if s.name.as_str() != name {
                    return Err(format!(
                        "its name {:?} is not the key's {name:?}",
                        s.name.as_str()
                    ));
                }
                p.ingress_services.insert(name.to_string(), s);
                Ok(())
            }),
            Key::Node(name) => parse::<NodeRecord>(v).map(|r| {
                p.nodes.insert(name.to_string(), r);
            }),
            // A bad value is reported and counts as absent: all the node's tasks count.
            Key::Ready(name) => parse::<ReadyTasks>(v).map(|r| {
                p.ready.insert(name.to_string(), r);
            }),
            // Claims are the writers' bookkeeping: the services carry their VIPs.
            Key::VipClaim { .. } => parse::<VipClaim>(v).map(|_| ()),
        };
        if let Err(r) = res {
            bad(r);
        }
    }
    p
}

/// Builds one network with as many of its services as are valid together (in name order:
/// of two conflicting services, the second is reported).
fn network_state(
    f: NetworkFile,
    services: BTreeMap<String, Service>,
    issues: &mut Vec<Issue>,
) -> Result<NetworkState, String> {
    let id = f.id.as_str().to_string();
    let empty = NetworkState::try_from(f).map_err(|e| chain(&e))?;
    let all: Vec<Service> = services.values().cloned().collect();
    if let Ok(n) = NetworkState::new(empty.network().clone(), all) {
        return Ok(n);
    }
    let mut n = empty;
    for (name, s) in services {
        if let Err(e) = n.upsert_service(s) {
            issues.push(Issue {
                key: service_key(&id, &name),
                reason: chain(&e),
            });
        }
    }
    Ok(n)
}

/// Names that are local to one node and override the cluster-wide ingress config there:
/// the cluster file says what every node runs, but the namespaces it runs them in are the
/// node's business (a lab runs several "nodes" as namespaces of one kernel; a machine
/// may keep the ingress sandbox under another name). `None` keeps the config's value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeLocal {
    /// The ingress's `host_netns` on this node.
    pub host_netns: Option<String>,
    /// The ingress's `sandbox_netns` on this node.
    pub sandbox_netns: Option<String>,
    /// The ingress's `overlay_netns` on this node.
    pub overlay_netns: Option<String>,
    /// This node's own registration. A running agent counts its node as registered even
    /// while its key is missing (its lease expired while a sync or the network held it up):
    /// it never tears its own ingress down for that. A key present in etcd wins.
    pub me: Option<NodeRecord>,
    /// This node's XDP ingress dataplane (`ingress.xdp`: its uplink, attach mode, MTU),
    /// replacing the cluster config's `xdp` on this node. The tasks' `host_veth` (written
    /// by the runtime with each task) name their node-side veths.
    pub xdp: Option<vipmesh::ingress::IngressXdp>,
}

impl NodeLocal {
    fn overrides(&self) -> impl Iterator<Item = (&'static str, &String)> {
        [
            ("host_netns", self.host_netns.as_ref()),
            ("sandbox_netns", self.sandbox_netns.as_ref()),
            ("overlay_netns", self.overlay_netns.as_ref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
    }
}

fn build_ingress(
    node: &str,
    local: &NodeLocal,
    p: &mut Parts,
    services: Vec<IngressService>,
) -> Result<Ingress, String> {
    let mut m = p.ingress_config.clone().unwrap_or_default();
    if let Some(me) = local.me {
        p.nodes.entry(node.to_string()).or_insert(me);
    }
    for (k, v) in local.overrides() {
        m.insert(k.into(), Value::String(v.clone()));
    }
    if let Some(x) = &local.xdp {
        m.insert(
            "xdp".into(),
            serde_json::to_value(x).map_err(|e| e.to_string())?,
        );
    }
    let nodes: Vec<ClusterNode> = p
        .nodes
        .iter()
        .map(|(name, r)| ClusterNode {
            name: name.clone(),
            underlay: r.underlay,
            sandbox_addr: r.sandbox_addr,
            // Node records carry no IPv6 sandbox address yet: a dual-stack ingress is
            // refused by validation when assembled from etcd.
            sandbox_addr_v6: None,
        })
        .collect();
    m.insert("node".into(), Value::String(node.to_string()));
    m.insert("nodes".into(), Value::Array(Vec::new()));
    // A task on a node that is not registered (never was, or its lease expired) is not a
    // backend: its node is gone from the mesh, so its tasks drain everywhere. A task on
    // another node is one only once that node has wired it (see the module docs).
    let services: Vec<IngressService> = services
        .into_iter()
        .map(|mut s| {
            let name = s.name.as_str().to_string();
            s.tasks.retain(|t| {
                p.nodes.contains_key(&t.node)
                    && (t.node == node
                        || p.ready.get(&t.node).is_none_or(|r| r.lists(&name, t.addr)))
            });
            s
        })
        .collect();
    // The config goes through JSON (it is a map, with this node's overrides); the nodes and
    // services are typed already: set, not serialized and parsed again (a large share of an
    // assembly at 1000 published services). NodeState validates the whole.
    m.insert("services".into(), Value::Array(Vec::new()));
    let mut ing: Ingress = serde_json::from_value(Value::Object(m))
        .map_err(|e| format!("invalid ingress config: {e}"))?;
    ing.nodes = nodes;
    ing.services = services;
    Ok(ing)
}

/// Assembles the desired state of node `node` from a snapshot (keys and values as etcd
/// holds them). Never fails: every value that is invalid, alone or together with the
/// others, is reported with its key and left out.
///
/// Order of checks: each value alone (JSON, key/name agreement); each network with its
/// services (of two conflicting services the later name is skipped); the networks together
/// (of two conflicting networks the later id is skipped); the ingress config with this
/// node's view of the registered nodes, then each published service.
pub fn assemble(node: &str, kvs: &BTreeMap<Vec<u8>, Vec<u8>>) -> Assembled {
    assemble_local(node, &NodeLocal::default(), kvs)
}

/// [`assemble`] with this node's [`NodeLocal`] names replacing the ingress config's.
pub fn assemble_local(
    node: &str,
    local: &NodeLocal,
    kvs: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Assembled {
    let mut issues = Vec::new();
    let mut p = classify(kvs, &mut issues);
    let options = p.options.clone().unwrap_or_default();
    let mut services = std::mem::take(&mut p.services);
    let mut nets = Vec::new();
    for (id, f) in std::mem::take(&mut p.networks) {
        let svcs = services.remove(&id).unwrap_or_default();
        let names: Vec<String> = svcs.keys().cloned().collect();
        match network_state(f, svcs, &mut issues) {
            Ok(n) => nets.push(n),
            Err(reason) => {
                issues.push(Issue {
                    key: network_key(&id),
                    reason,
                });
                orphans(&id, names.iter(), &mut issues);
            }
        }
    }
    for (net, svcs) in services {
        orphans(&net, svcs.keys(), &mut issues);
    }
    let mut state = match NodeState::new(nets.clone(), options.clone()) {
        Ok(s) => s,
        Err(_) => {
            let mut s = empty_state(options);
            for n in nets {
                let id = n.id().as_str().to_string();
                let names: Vec<String> =
                    n.services().map(|x| x.name.as_str().to_string()).collect();
                if let Err(e) = s.upsert_network(n) {
                    issues.push(Issue {
                        key: network_key(&id),
                        reason: chain(&e),
                    });
                    orphans(&id, names.iter(), &mut issues);
                }
            }
            s
        }
    };
    if p.ingress_config.is_some() {
        add_ingress(node, local, &mut p, &mut state, &mut issues);
    } else {
        for name in p.ingress_services.keys() {
            issues.push(Issue {
                key: ingress_service_key(name),
                reason: format!("no valid ingress config at {}", ingress_config_key()),
            });
        }
    }
    issues.sort_by(|a, b| a.key.cmp(&b.key));
    Assembled { state, issues }
}

/// `prev` with `changes` (keys and their new values, `None` for a deletion, in revision
/// order) applied service by service, when that gives what [`assemble_local`] would give for
/// the changed snapshot: `prev` must be the assembly, **without issues**, of the snapshot
/// before the changes. It is when every change is a service of one of `prev`'s networks (or
/// the writers' bookkeeping: `cluster`, `vips/`) and each new service is valid against the
/// rest, since a valid whole holds the same services whatever the order they were checked
/// in. `None` otherwise (any other key, a bad value, a conflict): assemble the whole snapshot
/// then, which decides and reports the conflicts.
///
/// A watch batch that changes a few services of a large state costs the parsing and checking
/// of those services (and a clone of `prev`, which shares its services) instead of the whole
/// snapshot's.
///
/// # Examples
/// ```
/// use std::collections::BTreeMap;
/// use vipmesh_agent::layout;
/// let mut kvs = BTreeMap::new();
/// kvs.insert(layout::network_key("demo").into_bytes(), br#"{"id": "demo",
///     "lb_netns": "lb-demo", "lb_interface": "eth0",
///     "subnets": [{"subnet": "10.0.0.0/24", "lb_addr": "10.0.0.2"}]}"#.to_vec());
/// let prev = layout::assemble("n1", &kvs).state;
/// let key = layout::service_key("demo", "vote");
/// let value = br#"{"name": "vote", "mode": {"vip": ["10.0.0.9"]},
///     "backends": [{"addr": "10.0.0.10"}]}"#;
/// let next = layout::apply_service_changes(&prev, [(key.as_bytes(), Some(&value[..]))])
///     .expect("a service of a known network");
/// kvs.insert(key.into_bytes(), value.to_vec());
/// assert_eq!(next, layout::assemble("n1", &kvs).state);
/// // A change the whole assembly must decide: None.
/// let bad = layout::service_key("demo", "web");
/// assert!(layout::apply_service_changes(&prev, [(bad.as_bytes(), Some(&b"{"[..]))]).is_none());
/// ```
pub fn apply_service_changes<'a>(
    prev: &NodeState,
    changes: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Option<NodeState> {
    let mut state = prev.clone();
    for (k, v) in changes {
        let key = std::str::from_utf8(k).ok()?;
        match (parse_key(key).ok()?, v) {
            (Key::Service { network, name }, Some(v)) => {
                let s = parse_service(v, name).ok()?;
                state.upsert_service(network, s).ok()?;
            }
            (Key::Service { network, name }, None) => {
                state.remove_service(network, name)?;
            }
            (Key::Meta, Some(v)) => {
                parse::<ClusterMeta>(v).ok()?;
            }
            (Key::VipClaim { .. }, Some(v)) => {
                parse::<VipClaim>(v).ok()?;
            }
            (Key::Meta | Key::VipClaim { .. }, None) => {}
            _ => return None,
        }
    }
    Some(state)
}

/// Services left out with their network.
fn orphans<'a>(net: &str, names: impl Iterator<Item = &'a String>, issues: &mut Vec<Issue>) {
    for name in names {
        issues.push(Issue {
            key: service_key(net, name),
            reason: format!("no valid network {net:?}"),
        });
    }
}

fn add_ingress(
    node: &str,
    local: &NodeLocal,
    p: &mut Parts,
    state: &mut NodeState,
    issues: &mut Vec<Issue>,
) {
    if let Some(me) = local.me {
        p.nodes.entry(node.to_string()).or_insert(me);
    }
    if !p.nodes.contains_key(node) {
        issues.push(Issue {
            key: node_key(node),
            reason: "this node is not registered: no ingress until it is".into(),
        });
        return;
    }
    let all: Vec<IngressService> = p.ingress_services.values().cloned().collect();
    if let Ok(ing) = build_ingress(node, local, p, all)
        && state.set_ingress(Some(ing)).is_ok()
    {
        return;
    }
    let base = match build_ingress(node, local, p, Vec::new()) {
        Ok(i) => i,
        Err(reason) => {
            issues.push(Issue {
                key: ingress_config_key(),
                reason,
            });
            return;
        }
    };
    if let Err(e) = state.set_ingress(Some(base)) {
        issues.push(Issue {
            key: ingress_config_key(),
            reason: chain(&e),
        });
        return;
    }
    let mut kept: Vec<IngressService> = Vec::new();
    for (name, s) in p.ingress_services.clone() {
        let mut candidate = kept.clone();
        candidate.push(s);
        let res = build_ingress(node, local, p, candidate.clone()).and_then(|ing| {
            let mut trial = state.clone();
            trial.set_ingress(Some(ing)).map_err(|e| chain(&e))?;
            Ok(trial)
        });
        match res {
            Ok(trial) => {
                *state = trial;
                kept = candidate;
            }
            Err(reason) => issues.push(Issue {
                key: ingress_service_key(&name),
                reason,
            }),
        }
    }
}

fn empty_state(options: NodeOptions) -> NodeState {
    // Empty networks and no ingress: nothing to conflict; fall back to default options.
    NodeState::new(Vec::new(), options.clone())
        .or_else(|_| NodeState::new(Vec::new(), NodeOptions::default()))
        .unwrap_or_else(|_| unreachable_empty())
}

#[allow(clippy::panic)]
fn unreachable_empty() -> NodeState {
    panic!("an empty node state with default options is valid")
}

/// The cluster's desired state as `cluster apply` takes it and `cluster get` prints it:
/// a state file's `networks` and `options` (same form, so a state file without an ingress
/// is also a cluster file) and the ingress without `node` and `nodes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// The networks, each with its services.
    #[serde(default)]
    pub networks: Vec<NetworkFile>,
    /// The ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<ClusterIngress>,
    /// Node options.
    #[serde(default)]
    pub options: NodeOptions,
    /// Services written with `"mode": "vip"` (no address): `cluster apply` allocates their
    /// VIPs ([`ClusterFile::allocate_vips`]) before anything is written.
    #[serde(skip)]
    pub pending_vips: Vec<PendingVip>,
}

/// A service of a cluster file whose VIPs `cluster apply` allocates: one per subnet of its
/// network, from the addresses no VIP claim, VIP, backend or LB address of the network uses.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingVip {
    /// Its network's id.
    pub network: String,
    /// Its name.
    pub name: String,
    /// The service as written (its `mode` is replaced by the allocated VIPs).
    pub value: Map<String, Value>,
}

/// Takes the services with `"mode": "vip"` out of a cluster file's JSON.
fn take_pending(v: &mut Value) -> Vec<PendingVip> {
    let mut out = Vec::new();
    let Some(nets) = v.get_mut("networks").and_then(Value::as_array_mut) else {
        return out;
    };
    for n in nets {
        let Some(id) = n.get("id").and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        let Some(svcs) = n.get_mut("services").and_then(Value::as_array_mut) else {
            continue;
        };
        svcs.retain(|s| {
            let auto = s.get("mode").and_then(Value::as_str) == Some("vip");
            let name = s.get("name").and_then(Value::as_str).map(str::to_string);
            match (auto, name, s.as_object()) {
                (true, Some(name), Some(value)) => {
                    out.push(PendingVip {
                        network: id.clone(),
                        name,
                        value: value.clone(),
                    });
                    false
                }
                _ => true,
            }
        });
    }
    out
}

/// The ingress of a [`ClusterFile`]: the fields of [`Ingress`] but `node` and `nodes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterIngress {
    /// The published services.
    #[serde(default)]
    pub services: Vec<IngressService>,
    /// The other fields of [`Ingress`] (`subnet`, `gateway`, `vni`, `host_netns`, …).
    #[serde(flatten)]
    pub config: Map<String, Value>,
}

impl ClusterFile {
    /// Parses a cluster file.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the line and column.
    pub fn from_json(text: &str) -> Result<ClusterFile, Error> {
        let at = |e: serde_json::Error| {
            Error::invalid(
                format!("cluster file line {} column {}", e.line(), e.column()),
                e.to_string(),
            )
        };
        let mut v: Value = serde_json::from_str(text).map_err(at)?;
        let pending = take_pending(&mut v);
        if pending.is_empty() {
            // Parsed from the text again, so that errors keep their line and column.
            return serde_json::from_str(text).map_err(at);
        }
        let mut f: ClusterFile =
            serde_json::from_value(v).map_err(|e| Error::invalid("cluster file", e.to_string()))?;
        f.pending_vips = pending;
        Ok(f)
    }

    /// The keys and values of this desired state (without `/vipmesh/v1/cluster`), checked
    /// as an agent would read them.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the key of the first value an agent would skip (a node's
    /// ingress is checked by the agents, which know the registered nodes).
    pub fn to_kvs(&self) -> Result<BTreeMap<String, String>, Error> {
        if let Some(p) = self.pending_vips.first() {
            return Err(Error::invalid(
                service_key(&p.network, &p.name),
                "its VIP is not allocated yet (cluster apply allocates it)",
            ));
        }
        let mut out = BTreeMap::new();
        let enc = |key: &str, v: Result<String, serde_json::Error>| {
            v.map_err(|e| Error::invalid(key, e.to_string()))
        };
        let ok = serde_json::to_string(&self.options);
        out.insert(options_key(), enc(&options_key(), ok)?);
        for n in &self.networks {
            let id = n.id.as_str();
            let mut bare = n.clone();
            let services = std::mem::take(&mut bare.services);
            let k = network_key(id);
            if out.contains_key(&k) {
                return Err(Error::invalid(k, "two networks with this id"));
            }
            out.insert(k.clone(), enc(&k, serde_json::to_string(&bare))?);
            for s in services {
                let k = service_key(id, s.name.as_str());
                if out.contains_key(&k) {
                    return Err(Error::invalid(k, "two services with this name"));
                }
                out.insert(k.clone(), enc(&k, serde_json::to_string(&s))?);
                if let vipmesh::model::EndpointMode::Vip(vips) = &s.mode {
                    let claim = VipClaim {
                        service: s.name.as_str().to_string(),
                    };
                    for addr in vips.iter() {
                        let ck = vip_claim_key(id, addr);
                        // Two services with one VIP are refused by the network's
                        // validation below; the first claim is kept for its message.
                        out.entry(ck.clone())
                            .or_insert(enc(&ck, serde_json::to_string(&claim))?);
                    }
                }
            }
        }
        if let Some(i) = &self.ingress {
            let k = ingress_config_key();
            out.insert(k.clone(), enc(&k, serde_json::to_string(&i.config))?);
            for s in &i.services {
                let k = ingress_service_key(s.name.as_str());
                if out.contains_key(&k) {
                    return Err(Error::invalid(k, "two published services with this name"));
                }
                out.insert(k.clone(), enc(&k, serde_json::to_string(s))?);
            }
        }
        let bytes: BTreeMap<Vec<u8>, Vec<u8>> = out
            .iter()
            .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
            .collect();
        let a = assemble("", &bytes);
        if let Some(i) = a
            .issues
            .iter()
            .find(|i| !i.key.starts_with(NODES_PREFIX) && !i.key.starts_with(READY_PREFIX))
        {
            return Err(Error::invalid(&i.key, &i.reason));
        }
        Ok(out)
    }

    /// The desired state held in a snapshot (as `cluster get` shows it); values that do not
    /// parse are reported and left out.
    pub fn from_kvs(kvs: &BTreeMap<Vec<u8>, Vec<u8>>) -> (ClusterFile, Vec<Issue>) {
        let mut issues = Vec::new();
        let mut p = classify(kvs, &mut issues);
        issues.retain(|i| !i.key.starts_with(NODES_PREFIX) && !i.key.starts_with(READY_PREFIX));
        let mut networks = Vec::new();
        for (id, mut f) in std::mem::take(&mut p.networks) {
            f.services = p
                .services
                .remove(&id)
                .map(|m| m.into_values().collect())
                .unwrap_or_default();
            networks.push(f);
        }
        for (net, svcs) in p.services {
            for name in svcs.keys() {
                issues.push(Issue {
                    key: service_key(&net, name),
                    reason: format!("no valid network {net:?}"),
                });
            }
        }
        let ingress = p.ingress_config.map(|config| ClusterIngress {
            services: p.ingress_services.into_values().collect(),
            config,
        });
        let file = ClusterFile {
            networks,
            ingress,
            options: p.options.unwrap_or_default(),
            pending_vips: Vec::new(),
        };
        (file, issues)
    }
}

#[cfg(test)]
mod tests;
