//! The store against a real etcd (3.4, Debian's) started on loopback by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod etcd;

use std::net::IpAddr;

use etcd::Etcd;
use vipmesh_agent::Error;
use vipmesh_agent::layout::{self, ClusterFile, NodeRecord};

fn cluster(vips: &[(&str, &str, &str)]) -> ClusterFile {
    let services: Vec<String> = vips
        .iter()
        .map(|(n, v, b)| {
            format!(
                r#"{{"name": "{n}", "mode": {{"vip": ["{v}"]}}, "backends": [{{"addr": "{b}"}}]}}"#
            )
        })
        .collect();
    ClusterFile::from_json(&format!(
        r#"{{"networks": [{{"id": "demo", "lb_netns": "lb-demo", "lb_interface": "eth0",
            "subnets": [{{"subnet": "10.0.0.0/24", "lb_addr": "10.0.0.2"}}],
            "services": [{}]}}]}}"#,
        services.join(",")
    ))
    .unwrap()
}

fn keys(snap: &vipmesh_agent::store::Snapshot) -> Vec<String> {
    snap.kvs
        .keys()
        .map(|k| String::from_utf8(k.clone()).unwrap())
        .collect()
}

#[tokio::test]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn apply_get_and_replace_in_one_transaction() {
    let e = Etcd::start().await;
    let mut s = e.store().await;
    let out = s
        .cluster_apply(
            &cluster(&[
                ("vote", "10.0.0.9", "10.0.0.10"),
                ("web", "10.0.0.19", "10.0.0.20"),
            ]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(out.written.len(), 4, "{out:?}"); // options, network, 2 services
    let snap = s.snapshot().await.unwrap();
    assert_eq!(
        keys(&snap),
        [
            "/vipmesh/v1/cluster",
            "/vipmesh/v1/networks/demo",
            "/vipmesh/v1/options",
            "/vipmesh/v1/services/demo/vote",
            "/vipmesh/v1/services/demo/web",
            "/vipmesh/v1/vips/demo/10.0.0.19",
            "/vipmesh/v1/vips/demo/10.0.0.9",
        ]
    );
    // Every write of one apply has the same revision: one transaction.
    let (file, issues, rev) = s.cluster_get().await.unwrap();
    assert!(issues.is_empty());
    assert_eq!(rev, out.revision);
    assert_eq!(file.networks[0].services.len(), 2);

    // Replacing: web goes, vote changes, a node registration survives.
    let mut reg = s
        .register_node(
            "n1",
            &NodeRecord {
                underlay: ip("192.0.2.1"),
                sandbox_addr: ip("10.255.0.2"),
            },
            30,
            None,
        )
        .await
        .unwrap();
    assert!(reg.keep_alive().await.unwrap() > 0);
    let out2 = s
        .cluster_apply(&cluster(&[("vote", "10.0.0.9", "10.0.0.11")]), None)
        .await
        .unwrap();
    assert_eq!(out2.deleted, ["/vipmesh/v1/services/demo/web"]);
    assert_eq!(out2.written, ["/vipmesh/v1/services/demo/vote"]);
    let snap = s.snapshot().await.unwrap();
    assert!(keys(&snap).contains(&"/vipmesh/v1/nodes/n1".to_string()));
    assert!(!keys(&snap).contains(&"/vipmesh/v1/services/demo/web".to_string()));
    assert!(
        !keys(&snap).contains(&"/vipmesh/v1/vips/demo/10.0.0.19".to_string()),
        "web's VIP claim goes with it"
    );
    let a = layout::assemble("n1", &snap.kvs);
    assert!(a.issues.is_empty(), "{:?}", a.issues);
    let vote = a
        .state
        .network("demo")
        .unwrap()
        .service("vote")
        .unwrap()
        .clone();
    assert_eq!(vote.backends[0].addr, ip("10.0.0.11"));
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn of_two_writers_based_on_one_revision_the_second_loses_and_writes_nothing() {
    let e = Etcd::start().await;
    let mut s = e.store().await;
    s.cluster_apply(&cluster(&[("vote", "10.0.0.9", "10.0.0.10")]), None)
        .await
        .unwrap();
    let (_, _, base) = s.cluster_get().await.unwrap();
    let mut a = e.store().await;
    let mut b = e.store().await;
    let won = a
        .cluster_apply(&cluster(&[("a", "10.0.0.30", "10.0.0.31")]), Some(base))
        .await
        .unwrap();
    let lost = b
        .cluster_apply(&cluster(&[("b", "10.0.0.40", "10.0.0.41")]), Some(base))
        .await
        .unwrap_err();
    match lost {
        Error::CasLost { expected, current } => {
            assert_eq!(expected, base);
            assert_eq!(current, won.revision);
        }
        e => panic!("{e}"),
    }
    let snap = s.snapshot().await.unwrap();
    assert!(keys(&snap).contains(&"/vipmesh/v1/services/demo/a".to_string()));
    assert!(!keys(&snap).contains(&"/vipmesh/v1/services/demo/b".to_string()));
    assert_eq!(snap.revision, won.revision, "the loser wrote nothing");

    // Concurrently: both read the same revision, exactly one wins.
    let base = snap.revision;
    let fa = cluster(&[("c", "10.0.0.50", "10.0.0.51")]);
    let fb = cluster(&[("d", "10.0.0.60", "10.0.0.61")]);
    let (ra, rb) = tokio::join!(
        a.cluster_apply(&fa, Some(base)),
        b.cluster_apply(&fb, Some(base))
    );
    assert!(ra.is_ok() != rb.is_ok(), "{ra:?} {rb:?}");
    let loser = if ra.is_ok() { rb } else { ra };
    assert!(matches!(loser, Err(Error::CasLost { .. })));

    // A deletion-only apply also moves the guarded revision.
    let (_, _, base) = s.cluster_get().await.unwrap();
    s.cluster_apply(&cluster(&[]), Some(base)).await.unwrap();
    assert!(matches!(
        a.cluster_apply(&cluster(&[]), Some(base)).await,
        Err(Error::CasLost { .. })
    ));
    // A direct write under the desired prefixes is seen too.
    let (_, _, base) = s.cluster_get().await.unwrap();
    let mut raw = etcd_client::Client::connect([e.url()], None).await.unwrap();
    raw.put(layout::options_key(), r#"{"drain_timeout": 9}"#, None)
        .await
        .unwrap();
    assert!(matches!(
        s.cluster_apply(&cluster(&[]), Some(base)).await,
        Err(Error::CasLost { .. })
    ));
}

#[tokio::test]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn an_invalid_file_is_refused_before_any_write() {
    let e = Etcd::start().await;
    let mut s = e.store().await;
    let err = s
        .cluster_apply(&cluster(&[("vote", "10.9.0.9", "10.0.0.10")]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Invalid { key, .. } if key == "/vipmesh/v1/services/demo/vote"),
        "{err}"
    );
    assert!(s.snapshot().await.unwrap().kvs.is_empty());
}

#[tokio::test]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn a_watch_from_the_snapshot_sees_the_next_change_and_a_compacted_one_says_so() {
    let e = Etcd::start().await;
    let mut s = e.store().await;
    s.cluster_apply(&cluster(&[("vote", "10.0.0.9", "10.0.0.10")]), None)
        .await
        .unwrap();
    let mut snap = s.snapshot().await.unwrap();
    let mut w = s.watch(snap.revision + 1).await.unwrap();
    let out = s
        .cluster_apply(&cluster(&[("vote", "10.0.0.9", "10.0.0.12")]), None)
        .await
        .unwrap();
    let batch = w.next().await.unwrap().unwrap();
    let mut changed: Vec<String> = batch
        .changes
        .iter()
        .map(|c| String::from_utf8(c.key.clone()).unwrap())
        .collect();
    changed.sort();
    assert_eq!(
        changed,
        ["/vipmesh/v1/cluster", "/vipmesh/v1/services/demo/vote"]
    );
    assert!(batch.changes.iter().all(|c| c.mod_revision == out.revision));
    snap.apply(&batch);
    assert_eq!(snap, s.snapshot().await.unwrap());

    // Compact past the revision and watch from before it.
    let old = snap.revision;
    s.cluster_apply(&cluster(&[]), None).await.unwrap();
    let now = s.snapshot().await.unwrap().revision;
    let mut raw = etcd_client::Client::connect([e.url()], None).await.unwrap();
    raw.compact(now, None).await.unwrap();
    let mut w = s.watch(old).await.unwrap();
    match w.next().await {
        Err(Error::Compacted {
            from,
            compact_revision,
        }) => {
            assert_eq!(from, old);
            assert_eq!(compact_revision, now);
        }
        r => panic!("{r:?}"),
    }
}

#[tokio::test]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn a_node_key_lives_as_long_as_its_lease() {
    let e = Etcd::start().await;
    let mut s = e.store().await;
    let rec = NodeRecord {
        underlay: ip("192.0.2.1"),
        sandbox_addr: ip("10.255.0.2"),
    };
    let mut reg = s.register_node("n1", &rec, 2, None).await.unwrap();
    assert!(reg.keep_alive().await.unwrap() > 0);
    let snap = s.snapshot().await.unwrap();
    let v = snap.kvs.get(layout::node_key("n1").as_bytes()).unwrap();
    assert_eq!(serde_json::from_slice::<NodeRecord>(v).unwrap(), rec);
    let ready = |snap: &vipmesh_agent::store::Snapshot| {
        snap.kvs
            .get(layout::ready_key("n1").as_bytes())
            .map(|v| serde_json::from_slice::<layout::ReadyTasks>(v).unwrap())
    };
    assert_eq!(
        ready(&snap),
        Some(layout::ReadyTasks::default()),
        "a new registration lists no ready task, in the same transaction"
    );
    assert!(s.register_node("a/b", &rec, 2, None).await.is_err());

    // Publishing under the registration's lease; refused under another lease.
    let wired: layout::ReadyTasks =
        serde_json::from_str(r#"{"services": {"web": ["10.255.0.10"]}}"#).unwrap();
    assert!(s.publish_ready("n1", reg.lease(), &wired).await.unwrap());
    assert!(
        !s.publish_ready("n1", reg.lease() + 1, &layout::ReadyTasks::default())
            .await
            .unwrap(),
        "the node key is not under that lease: nothing written"
    );
    assert_eq!(ready(&s.snapshot().await.unwrap()), Some(wired.clone()));

    // A restart of the same node (same record, the old lease still alive) takes over and
    // keeps what the previous process published: its tasks are still wired.
    let old = reg.lease();
    drop(reg);
    let mut reg = s.register_node("n1", &rec, 2, None).await.unwrap();
    assert_ne!(reg.lease(), old);
    assert!(reg.keep_alive().await.unwrap() > 0);
    assert_eq!(ready(&s.snapshot().await.unwrap()), Some(wired));

    // Without keepalives both keys go with the lease.
    drop(reg);
    let mut gone = false;
    for _ in 0..100 {
        let snap = s.snapshot().await.unwrap();
        if !snap.kvs.contains_key(layout::node_key("n1").as_bytes()) && ready(&snap).is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "the node key or its ready tasks outlived the lease");
}

/// Adds a service without a VIP to the cluster by read-modify-write (`cluster get`, then
/// `cluster apply` based on the revision read), retrying when another writer won the
/// compare-and-swap. Returns how many attempts lost.
async fn add_auto_service(url: String, name: String, backend: String) -> u32 {
    let mut s =
        vipmesh_agent::store::Store::connect(vipmesh_agent::store::StoreConfig::new(vec![url]))
            .await
            .unwrap();
    let mut lost = 0;
    loop {
        let (mut file, issues, rev) = s.cluster_get().await.unwrap();
        assert!(issues.is_empty(), "{issues:?}");
        let value = serde_json::json!({"name": name, "mode": "vip",
            "backends": [{"addr": backend}]});
        file.pending_vips.push(layout::PendingVip {
            network: "demo".into(),
            name: name.clone(),
            value: value.as_object().unwrap().clone(),
        });
        match s.cluster_apply(&file, Some(rev)).await {
            Ok(out) => {
                assert_eq!(out.allocated.len(), 1, "{out:?}");
                return lost;
            }
            Err(Error::CasLost { .. }) => lost += 1,
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: runs a real etcd on loopback"]
async fn concurrent_writers_never_give_two_services_one_vip() {
    let e = Etcd::start().await;
    let mut s = e.store().await;
    // The first service holds 10.0.0.9 explicitly; everything else is allocated.
    s.cluster_apply(&cluster(&[("vote", "10.0.0.9", "10.0.0.10")]), None)
        .await
        .unwrap();
    const WRITERS: usize = 8;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            tokio::spawn(add_auto_service(
                e.url(),
                format!("auto{i}"),
                format!("10.0.0.{}", 100 + i),
            ))
        })
        .collect();
    let mut lost = 0;
    for t in tasks {
        lost += t.await.unwrap();
    }
    let (file, issues, _) = s.cluster_get().await.unwrap();
    assert!(issues.is_empty(), "{issues:?}");
    let mut vips = std::collections::BTreeMap::new();
    for svc in &file.networks[0].services {
        let vipmesh::model::EndpointMode::Vip(v) = &svc.mode else {
            panic!("{svc:?}")
        };
        for a in v.iter() {
            if let Some(other) = vips.insert(a, svc.name.as_str().to_string()) {
                panic!("{a} held by {other} and {}", svc.name);
            }
        }
    }
    assert_eq!(vips.len(), WRITERS + 1, "{vips:?}");
    // The claims in etcd are exactly the services' VIPs.
    let snap = s.snapshot().await.unwrap();
    let claims = vipmesh_agent::vips::claims(&snap.kvs);
    let from_claims: std::collections::BTreeMap<IpAddr, String> =
        claims.into_iter().map(|((_, a), s)| (a, s)).collect();
    assert_eq!(from_claims, vips);
    // None took the LB address, the explicit VIP or a backend.
    assert_eq!(vips[&"10.0.0.9".parse::<IpAddr>().unwrap()], "vote");
    for a in [2, 10].into_iter().chain(100..100 + WRITERS) {
        let a: IpAddr = format!("10.0.0.{a}").parse().unwrap();
        assert!(!vips.contains_key(&a), "{a} is not free: {vips:?}");
    }
    eprintln!(
        "{WRITERS} concurrent writers: {lost} lost compare-and-swaps, retried; VIPs {vips:?}"
    );
    // Applying the same state again keeps every VIP (claims are reused, nothing written).
    let again = s.cluster_apply(&file, None).await.unwrap();
    assert!(
        again.written.is_empty() && again.deleted.is_empty(),
        "{again:?}"
    );
}
