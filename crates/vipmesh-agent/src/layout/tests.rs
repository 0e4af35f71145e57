#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

type Kvs = BTreeMap<Vec<u8>, Vec<u8>>;

fn put(kvs: &mut Kvs, k: String, v: &str) {
    kvs.insert(k.into_bytes(), v.as_bytes().to_vec());
}

const NET: &str = r#"{"id": "demo", "lb_netns": "lb-demo", "lb_interface": "eth0",
    "subnets": [{"subnet": "10.0.0.0/24", "lb_addr": "10.0.0.2"}]}"#;

fn vip(name: &str, vip: &str, backend: &str) -> String {
    format!(
        r#"{{"name": "{name}", "mode": {{"vip": ["{vip}"]}}, "backends": [{{"addr": "{backend}"}}]}}"#
    )
}

fn base() -> Kvs {
    let mut kvs = Kvs::new();
    put(&mut kvs, network_key("demo"), NET);
    put(
        &mut kvs,
        service_key("demo", "vote"),
        &vip("vote", "10.0.0.9", "10.0.0.10"),
    );
    put(
        &mut kvs,
        service_key("demo", "web"),
        &vip("web", "10.0.0.19", "10.0.0.20"),
    );
    put(&mut kvs, options_key(), r#"{"drain_timeout": 5}"#);
    kvs
}

fn keys(a: &Assembled) -> Vec<&str> {
    a.issues.iter().map(|i| i.key.as_str()).collect()
}

#[test]
fn a_clean_snapshot_assembles_without_issues() {
    let a = assemble("n1", &base());
    assert!(a.issues.is_empty(), "{:?}", a.issues);
    let net = a.state.network("demo").unwrap();
    assert_eq!(net.services().count(), 2);
    assert_eq!(a.state.options().drain_timeout.as_secs(), 5);
}

#[test]
fn keys_round_trip_through_parse_key() {
    assert_eq!(parse_key(&network_key("a")), Ok(Key::Network("a")));
    assert_eq!(
        parse_key(&service_key("a", "b")),
        Ok(Key::Service {
            network: "a",
            name: "b"
        })
    );
    assert_eq!(parse_key(&ingress_config_key()), Ok(Key::IngressConfig));
    assert_eq!(
        parse_key(&ingress_service_key("x")),
        Ok(Key::IngressService("x"))
    );
    assert_eq!(parse_key(&node_key("n")), Ok(Key::Node("n")));
    assert_eq!(parse_key(&ready_key("n")), Ok(Key::Ready("n")));
    assert_eq!(parse_key(&options_key()), Ok(Key::Options));
    assert_eq!(parse_key(&meta_key()), Ok(Key::Meta));
    assert!(parse_key("/vipmesh/v1/services/a").is_err());
    assert!(parse_key("/vipmesh/v1/services/a//").is_err());
    assert!(parse_key("/vipmesh/v1/networks/").is_err());
}

#[test]
fn malformed_values_are_reported_with_their_key_and_the_rest_applies() {
    let mut kvs = base();
    put(&mut kvs, service_key("demo", "broken"), "{not json");
    put(
        &mut kvs,
        service_key("demo", "typo"),
        r#"{"name": "typo", "mode": "dnsrr", "bakends": []}"#,
    );
    put(
        &mut kvs,
        service_key("demo", "renamed"),
        &vip("other", "10.0.0.29", "10.0.0.30"),
    );
    // A VIP outside the subnet: valid JSON, invalid service.
    put(
        &mut kvs,
        service_key("demo", "outside"),
        &vip("outside", "10.9.0.9", "10.0.0.31"),
    );
    // Same VIP as vote: the later name is skipped.
    put(
        &mut kvs,
        service_key("demo", "zzdup"),
        &vip("zzdup", "10.0.0.9", "10.0.0.32"),
    );
    let a = assemble("n1", &kvs);
    assert_eq!(
        keys(&a),
        [
            "/vipmesh/v1/services/demo/broken",
            "/vipmesh/v1/services/demo/outside",
            "/vipmesh/v1/services/demo/renamed",
            "/vipmesh/v1/services/demo/typo",
            "/vipmesh/v1/services/demo/zzdup",
        ]
    );
    assert!(
        a.issues[0].reason.contains("invalid JSON"),
        "{}",
        a.issues[0]
    );
    assert!(
        a.issues[1].reason.contains("service.vip"),
        "{}",
        a.issues[1]
    );
    assert!(a.issues[2].reason.contains("\"other\""), "{}", a.issues[2]);
    assert!(a.issues[3].reason.contains("bakends"), "{}", a.issues[3]);
    assert!(
        a.issues[4].reason.contains("used by two services"),
        "{}",
        a.issues[4]
    );
    let names: Vec<&str> = a
        .state
        .network("demo")
        .unwrap()
        .services()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["vote", "web"]);
}

#[test]
fn keys_outside_the_layout_and_other_versions_are_reported_not_read() {
    let mut kvs = base();
    put(&mut kvs, "/vipmesh/v2/networks/demo".into(), NET);
    put(&mut kvs, "/vipmesh/v1/whatever".into(), "{}");
    put(&mut kvs, "/elsewhere".into(), "{}");
    kvs.insert(b"/vipmesh/v1/\xff".to_vec(), b"{}".to_vec());
    let a = assemble("n1", &kvs);
    assert_eq!(a.issues.len(), 4, "{:?}", a.issues);
    let by_key: BTreeMap<&str, &str> = a
        .issues
        .iter()
        .map(|i| (i.key.as_str(), i.reason.as_str()))
        .collect();
    assert!(by_key["/vipmesh/v2/networks/demo"].contains("schema version \"v2\""));
    assert!(by_key["/vipmesh/v1/whatever"].contains("not a key"));
    assert!(by_key["/elsewhere"].contains("outside"));
    assert!(by_key["/vipmesh/v1/\u{fffd}"].contains("not UTF-8"));
    assert_eq!(a.state.network("demo").unwrap().services().count(), 2);
}

#[test]
fn a_bad_network_takes_its_services_with_it_and_nothing_else() {
    let mut kvs = base();
    put(
        &mut kvs,
        network_key("other"),
        r#"{"id": "other", "lb_netns": "lb-o", "lb_interface": "eth0",
            "subnets": [{"subnet": "10.1.0.0/24", "lb_addr": "10.9.9.9"}]}"#,
    );
    put(
        &mut kvs,
        service_key("other", "s"),
        &vip("s", "10.1.0.9", "10.1.0.10"),
    );
    put(
        &mut kvs,
        network_key("inline"),
        r#"{"id": "inline", "lb_netns": "lb-i", "lb_interface": "eth0",
            "subnets": [{"subnet": "10.2.0.0/24", "lb_addr": "10.2.0.2"}],
            "fwmarks": {"first": 196608, "last": 200000}, "services": []}"#,
    );
    put(&mut kvs, network_key("mismatch"), NET);
    let a = assemble("n1", &kvs);
    assert_eq!(
        keys(&a),
        [
            "/vipmesh/v1/networks/mismatch",
            "/vipmesh/v1/networks/other",
            "/vipmesh/v1/services/other/s",
        ]
    );
    assert!(a.issues[1].reason.contains("lb_addr"), "{}", a.issues[1]);
    // An empty inline `services` is accepted; a network with services inline is not.
    assert!(a.state.network("inline").is_some());
    let mut kvs2 = base();
    put(
        &mut kvs2,
        network_key("demo"),
        &NET.replace(
            "}]}",
            "}], \"services\": [{\"name\": \"x\", \"mode\": \"dnsrr\"}] }",
        ),
    );
    let a2 = assemble("n1", &kvs2);
    assert!(
        a2.issues[0].reason.contains("holds no services"),
        "{:?}",
        a2.issues
    );
    assert!(a2.state.network("demo").is_none());
}

#[test]
fn conflicting_networks_keep_the_first_id() {
    let mut kvs = base();
    // Same namespace, overlapping (default) fwmark range: conflicts with demo.
    put(
        &mut kvs,
        network_key("zz"),
        r#"{"id": "zz", "lb_netns": "lb-demo", "lb_interface": "eth1",
            "subnets": [{"subnet": "10.1.0.0/24", "lb_addr": "10.1.0.2"}]}"#,
    );
    let a = assemble("n1", &kvs);
    assert_eq!(keys(&a), ["/vipmesh/v1/networks/zz"]);
    assert!(a.issues[0].reason.contains("fwmarks"), "{}", a.issues[0]);
    assert_eq!(a.state.network("demo").unwrap().services().count(), 2);
}

const INGRESS: &str = r#"{"subnet": "10.255.0.0/16", "gateway": "10.255.0.1", "vni": 4096,
    "host_netns": "host-n1"}"#;

fn published(name: &str, port: u16, task: &str, node: &str) -> String {
    format!(
        r#"{{"name": "{name}", "ports": [{{"protocol": "tcp", "published": {port}, "target": 80}}],
            "tasks": [{{"addr": "{task}", "node": "{node}", "netns": "task-{name}"}}]}}"#
    )
}

#[test]
fn the_ingress_is_assembled_per_node_from_the_registered_nodes() {
    let mut kvs = base();
    put(&mut kvs, ingress_config_key(), INGRESS);
    put(
        &mut kvs,
        ingress_service_key("web"),
        &published("web", 8080, "10.255.0.10", "n2"),
    );
    put(
        &mut kvs,
        node_key("n1"),
        r#"{"underlay": "192.0.2.1", "sandbox_addr": "10.255.0.2"}"#,
    );
    put(
        &mut kvs,
        node_key("n2"),
        r#"{"underlay": "192.0.2.2", "sandbox_addr": "10.255.0.3"}"#,
    );
    let a = assemble("n1", &kvs);
    assert!(a.issues.is_empty(), "{:?}", a.issues);
    let ing = a.state.ingress().unwrap();
    assert_eq!(ing.node, "n1");
    let names: Vec<&str> = ing.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["n1", "n2"]);
    assert_eq!(ing.services.len(), 1);
    // n2's view: its own task is local.
    let b = assemble("n2", &kvs);
    assert!(b.state.namespace_names().contains("task-web"));
    assert!(!a.state.namespace_names().contains("task-web"));
    // An unregistered node gets no ingress, and says so.
    let c = assemble("n3", &kvs);
    assert!(c.state.ingress().is_none());
    assert_eq!(keys(&c), ["/vipmesh/v1/nodes/n3"]);
    assert_eq!(c.state.network("demo").unwrap().services().count(), 2);
}

#[test]
fn a_bad_published_service_or_config_is_skipped_alone() {
    let mut kvs = base();
    put(&mut kvs, ingress_config_key(), INGRESS);
    put(
        &mut kvs,
        ingress_service_key("web"),
        &published("web", 8080, "10.255.0.10", "n1"),
    );
    // Same published port as web: the later one is skipped.
    put(
        &mut kvs,
        ingress_service_key("zz"),
        &published("zz", 8080, "10.255.0.11", "n1"),
    );
    put(&mut kvs, ingress_service_key("junk"), "[]");
    put(
        &mut kvs,
        node_key("n1"),
        r#"{"underlay": "192.0.2.1", "sandbox_addr": "10.255.0.2"}"#,
    );
    put(&mut kvs, node_key("bad"), r#"{"underlay": "nope"}"#);
    let a = assemble("n1", &kvs);
    assert_eq!(
        keys(&a),
        [
            "/vipmesh/v1/ingress/services/junk",
            "/vipmesh/v1/ingress/services/zz",
            "/vipmesh/v1/nodes/bad",
        ]
    );
    let ing = a.state.ingress().unwrap();
    assert_eq!(ing.services.len(), 1);
    assert_eq!(ing.services[0].name.as_str(), "web");

    let mut kvs = base();
    put(
        &mut kvs,
        ingress_config_key(),
        r#"{"subnet": "10.255.0.0/16", "gateway": "10.255.0.1", "vni": 0, "host_netns": "h"}"#,
    );
    put(
        &mut kvs,
        node_key("n1"),
        r#"{"underlay": "192.0.2.1", "sandbox_addr": "10.255.0.2"}"#,
    );
    let a = assemble("n1", &kvs);
    assert_eq!(keys(&a), ["/vipmesh/v1/ingress/config"]);
    assert!(a.issues[0].reason.contains("vni"), "{}", a.issues[0]);
    assert!(a.state.ingress().is_none());
    assert!(a.state.network("demo").is_some());

    let mut kvs = base();
    put(&mut kvs, ingress_config_key(), r#"{"nodes": []}"#);
    let a = assemble("n1", &kvs);
    assert!(a.issues[0].reason.contains("\"nodes\""), "{:?}", a.issues);
}

#[test]
fn the_cluster_file_round_trips_through_keys() {
    let text = format!(
        r#"{{"networks": [{}], "ingress": {{"subnet": "10.255.0.0/16", "gateway": "10.255.0.1",
            "vni": 4096, "host_netns": "h", "services": [{}]}}, "options": {{"drain_timeout": 7}}}}"#,
        NET.replace(
            "}]}",
            &format!(
                "}}], \"services\": [{}]}}",
                vip("vote", "10.0.0.9", "10.0.0.10")
            )
        ),
        published("web", 8080, "10.255.0.10", "n1")
    );
    let f = ClusterFile::from_json(&text).unwrap();
    let kvs = f.to_kvs().unwrap();
    let names: Vec<&str> = kvs.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "/vipmesh/v1/ingress/config",
            "/vipmesh/v1/ingress/services/web",
            "/vipmesh/v1/networks/demo",
            "/vipmesh/v1/options",
            "/vipmesh/v1/services/demo/vote",
            "/vipmesh/v1/vips/demo/10.0.0.9",
        ]
    );
    let bytes: Kvs = kvs
        .iter()
        .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
        .collect();
    let (back, issues) = ClusterFile::from_kvs(&bytes);
    assert!(issues.is_empty());
    assert_eq!(back.to_kvs().unwrap(), kvs);
    assert_eq!(back.networks[0].services.len(), 1);
}

#[test]
fn cluster_apply_refuses_what_an_agent_would_skip() {
    let text = format!(
        r#"{{"networks": [{}]}}"#,
        NET.replace(
            "}]}",
            &format!(
                "}}], \"services\": [{}]}}",
                vip("vote", "10.9.0.9", "10.0.0.10")
            )
        )
    );
    let err = ClusterFile::from_json(&text).unwrap().to_kvs().unwrap_err();
    match err {
        Error::Invalid { key, reason } => {
            assert_eq!(key, "/vipmesh/v1/services/demo/vote");
            assert!(reason.contains("service.vip"), "{reason}");
        }
        e => panic!("{e}"),
    }
    assert!(ClusterFile::from_json("{\"netwrks\": []}").is_err());
}

/// The base snapshot with the ingress, nodes n1 and n2 registered, and the published service
/// `web` with `tasks` (a JSON array).
fn two_nodes(tasks: &str) -> Kvs {
    let mut kvs = base();
    put(&mut kvs, ingress_config_key(), INGRESS);
    put(
        &mut kvs,
        ingress_service_key("web"),
        &format!(
            r#"{{"name": "web", "ports": [{{"protocol": "tcp", "published": 8080, "target": 80}}],
            "tasks": {tasks}}}"#
        ),
    );
    for (n, u, sb) in [
        ("n1", "192.0.2.1", "10.255.0.2"),
        ("n2", "192.0.2.2", "10.255.0.3"),
    ] {
        put(
            &mut kvs,
            node_key(n),
            &format!(r#"{{"underlay": "{u}", "sandbox_addr": "{sb}"}}"#),
        );
    }
    kvs
}

/// The addresses of `web`'s tasks in an assembled state.
fn web_tasks(a: &Assembled) -> Vec<String> {
    a.state.ingress().unwrap().services[0]
        .tasks
        .iter()
        .map(|t| t.addr.to_string())
        .collect()
}

#[test]
fn tasks_of_an_unregistered_node_are_left_out_not_the_service() {
    let mut kvs = two_nodes(
        r#"[{"addr": "10.255.0.10", "node": "n1", "netns": "task-a"},
            {"addr": "10.255.0.11", "node": "n2", "netns": "task-b"}]"#,
    );
    let both = assemble("n1", &kvs);
    assert!(both.issues.is_empty(), "{:?}", both.issues);
    assert_eq!(web_tasks(&both), ["10.255.0.10", "10.255.0.11"]);
    // n2's lease expired: its key is gone, and so is its task; web stays.
    kvs.remove(node_key("n2").as_bytes());
    let one = assemble("n1", &kvs);
    assert!(one.issues.is_empty(), "{:?}", one.issues);
    assert_eq!(web_tasks(&one), ["10.255.0.10"]);
    let names: Vec<&str> = one
        .state
        .ingress()
        .unwrap()
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(names, ["n1"]);
}

#[test]
fn a_remote_task_is_a_backend_only_once_its_node_lists_it_ready() {
    let mut kvs = two_nodes(
        r#"[{"addr": "10.255.0.10", "node": "n1", "netns": "task-a"},
            {"addr": "10.255.0.11", "node": "n2", "netns": "task-b"},
            {"addr": "10.255.0.12", "node": "n2", "netns": "task-c"}]"#,
    );
    // No ready key (a node registered by an older agent): every task counts.
    assert_eq!(
        web_tasks(&assemble("n1", &kvs)),
        ["10.255.0.10", "10.255.0.11", "10.255.0.12"]
    );
    // n2 has wired .11 only: n1 leaves .12 out until n2 lists it.
    put(
        &mut kvs,
        ready_key("n2"),
        r#"{"services": {"web": ["10.255.0.11"]}}"#,
    );
    let a = assemble("n1", &kvs);
    assert!(a.issues.is_empty(), "{:?}", a.issues);
    assert_eq!(web_tasks(&a), ["10.255.0.10", "10.255.0.11"]);
    // A node counts its own tasks whatever it has listed; others wait for the list.
    put(&mut kvs, ready_key("n1"), r#"{"services": {}}"#);
    assert_eq!(
        web_tasks(&assemble("n2", &kvs)),
        ["10.255.0.11", "10.255.0.12"],
        "n2's own tasks, and none of n1's before n1 lists them"
    );
    // Listed under another service: not this one's.
    put(
        &mut kvs,
        ready_key("n2"),
        r#"{"services": {"api": ["10.255.0.12"], "web": ["10.255.0.11", "10.255.0.12"]}}"#,
    );
    assert_eq!(
        web_tasks(&assemble("n1", &kvs)),
        ["10.255.0.10", "10.255.0.11", "10.255.0.12"]
    );
    // A malformed ready value is reported with its key and counts as absent.
    put(&mut kvs, ready_key("n2"), r#"{"services": {"web": "x"}}"#);
    let bad = assemble("n1", &kvs);
    assert_eq!(keys(&bad), ["/vipmesh/v1/ready/n2"]);
    assert_eq!(
        web_tasks(&bad),
        ["10.255.0.10", "10.255.0.11", "10.255.0.12"]
    );
    // What a node publishes: its local tasks of the desired state.
    let mine = ReadyTasks::local("n2", &assemble("n2", &kvs).state);
    assert_eq!(
        serde_json::to_string(&mine).unwrap(),
        r#"{"services":{"web":["10.255.0.11","10.255.0.12"]}}"#
    );
    let fewer: ReadyTasks =
        serde_json::from_str(r#"{"services": {"web": ["10.255.0.12"]}}"#).unwrap();
    assert_eq!(mine.intersect(&fewer), fewer);
    assert_eq!(
        fewer.intersect(&ReadyTasks::default()),
        ReadyTasks::default()
    );
    // The cluster's desired state does not include the agents' keys.
    let (_, issues) = ClusterFile::from_kvs(&kvs);
    assert!(issues.is_empty(), "{issues:?}");
}

#[test]
fn a_nodes_xdp_option_serves_its_published_ports_with_the_xdp_mesh() {
    // The runtime wrote the task with its node-side veth.
    let kvs = two_nodes(
        r#"[{"addr": "10.255.0.10", "node": "n1", "netns": "task-web", "host_veth": "veth-web"},
            {"addr": "10.255.0.11", "node": "n2"}]"#,
    );
    let local = NodeLocal {
        xdp: Some(serde_json::from_str(r#"{"uplink": "eth0"}"#).unwrap()),
        ..NodeLocal::default()
    };
    let a = assemble_local("n1", &local, &kvs);
    assert!(a.issues.is_empty(), "{:?}", a.issues);
    // XDP serves the only port: no IPVS ingress on this node, the mesh derived.
    assert!(a.state.ipvs_ingress().is_none());
    let x = a.state.xdp().unwrap();
    assert_eq!(x.uplink, "eth0");
    assert_eq!(x.tasks["task-web"].host_veth, "veth-web");
    assert_eq!(x.services.values().next().unwrap().backends.len(), 2);
    // Another node without the option keeps the IPVS mesh.
    let b = assemble("n2", &kvs);
    assert!(b.state.ipvs_ingress().is_some() && b.state.xdp().is_none());
}

#[test]
fn the_layout_fuzz_seeds_assemble_without_issues() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/layout");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        let node = lines.next().unwrap();
        let mut kvs = Kvs::new();
        for l in lines.by_ref().take_while(|l| *l != "--") {
            let (k, v) = l.split_once('\t').unwrap();
            put(&mut kvs, k.to_string(), v);
        }
        let a = assemble(node, &kvs);
        assert!(a.issues.is_empty(), "{}: {:?}", path.display(), a.issues);
        assert!(a.state.ingress().is_some(), "{}", path.display());
        // The changes after `--` go service by service.
        let changes: Vec<(String, Option<String>)> = lines
            .map(|l| match l.split_once('\t') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (l.to_string(), None),
            })
            .collect();
        assert!(by_service(&mut kvs, &changes), "{}", path.display());
        n += 1;
    }
    assert!(n >= 1, "seeds in {}", dir.display());
}

#[test]
fn a_cluster_file_round_trips_through_its_keys_with_any_number() {
    // Found by the layout fuzz target: without serde_json's exact float parsing, the number
    // below was written back as 4e+70, which read back as 3.9999999999999997e70, so a
    // rewrite of the same file changed its keys.
    let f = ClusterFile::from_json(
        r#"{"ingress": {"subnet": "10.255.0.0/16", "gateway": "10.255.0.1",
            "vni": 40000000000000000000000000000000000000000000000000000000000000000000096,
            "host_netns": "h"}}"#,
    )
    .unwrap();
    let written = f.to_kvs().unwrap();
    let bytes: Kvs = written
        .iter()
        .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
        .collect();
    let (again, issues) = ClusterFile::from_kvs(&bytes);
    assert!(issues.is_empty(), "{issues:?}");
    assert_eq!(again.to_kvs().unwrap(), written);
}

/// Applies `changes` to `kvs` and to its assembly: when the changes go service by service,
/// the result is exactly the whole assembly of the changed snapshot (which has no issues).
fn by_service(kvs: &mut Kvs, changes: &[(String, Option<String>)]) -> bool {
    let prev = assemble("n1", kvs);
    assert!(prev.issues.is_empty(), "{:?}", prev.issues);
    let next = apply_service_changes(
        &prev.state,
        changes
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_ref().map(|v| v.as_bytes()))),
    );
    for (k, v) in changes {
        match v {
            Some(v) => put(kvs, k.clone(), v),
            None => {
                kvs.remove(k.as_bytes());
            }
        }
    }
    let whole = assemble("n1", kvs);
    match next {
        Some(next) => {
            assert!(whole.issues.is_empty(), "{:?}", whole.issues);
            assert_eq!(next, whole.state);
            true
        }
        None => false,
    }
}

#[test]
fn a_batch_of_services_applies_service_by_service_as_the_whole_assembly_would() {
    let mut kvs = base();
    let k = |n: &str| service_key("demo", n);
    let s = |v: String| Some(v);
    // Changed backends, a new service, a removed one, claims and the apply record.
    assert!(by_service(
        &mut kvs,
        &[
            (k("vote"), s(vip("vote", "10.0.0.9", "10.0.0.11"))),
            (k("api"), s(vip("api", "10.0.0.29", "10.0.0.30"))),
            (k("web"), None),
            (
                vip_claim_key("demo", "10.0.0.29".parse().unwrap()),
                s(r#"{"service": "api"}"#.into())
            ),
            (vip_claim_key("demo", "10.0.0.19".parse().unwrap()), None),
        ],
    ));
    // A VIP handed from one service to another within one batch: valid in this order.
    assert!(by_service(
        &mut kvs,
        &[
            (k("api"), None),
            (k("web"), s(vip("web", "10.0.0.29", "10.0.0.31"))),
        ],
    ));
    // Everything the whole assembly must decide or report: no change is applied.
    for (key, v) in [
        // A conflict: the whole assembly keeps one of the two services, in name order.
        (k("aaa"), s(vip("aaa", "10.0.0.29", "10.0.0.40"))),
        // A bad value, a name that is not the key's, an unknown network.
        (k("vote"), s("{".into())),
        (k("vote"), s(vip("other", "10.0.0.9", "10.0.0.11"))),
        (
            service_key("nope", "x"),
            s(vip("x", "10.0.0.50", "10.0.0.51")),
        ),
        // A service that is not there; keys that are not services.
        (k("ghost"), None),
        (network_key("demo"), s(NET.into())),
        (options_key(), s(r#"{"drain_timeout": 6}"#.into())),
        (node_key("n2"), None),
        ("/vipmesh/v1/bogus".into(), s("{}".into())),
        (
            vip_claim_key("demo", "10.0.0.9".parse().unwrap()),
            s("[]".into()),
        ),
    ] {
        let before = kvs.clone();
        let prev = assemble("n1", &kvs).state;
        let one = [(key.as_bytes(), v.as_ref().map(|v| v.as_bytes()))];
        assert!(
            apply_service_changes(&prev, one).is_none(),
            "{key} {v:?} needs the whole assembly"
        );
        assert_eq!(kvs, before);
    }
}
