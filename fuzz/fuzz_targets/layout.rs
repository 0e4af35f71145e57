//! The etcd key layout: any snapshot (keys and values) assembles into a valid node state
//! without panicking, the same way twice; a node publishes only its own tasks as ready; the
//! cluster file read back from the snapshot writes keys that read back to the same keys.
//!
//! A watch batch applied to it service by service gives the same state as the whole assembly.
//!
//! Input: text; the first line is the node's name, every other line `KEY<TAB>VALUE`, up to a
//! line `--`; after it, a watch batch: `KEY<TAB>VALUE` puts, a bare `KEY` deletes.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use vipmesh_agent::layout::{self, ClusterFile, NodeLocal, ReadyTasks};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.lines();
    let node = lines.next().unwrap_or_default();
    let mut kvs: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for l in lines.by_ref().take_while(|l| *l != "--") {
        let (k, v) = l.split_once('\t').unwrap_or((l, ""));
        let _ = layout::parse_key(k);
        kvs.insert(k.as_bytes().to_vec(), v.as_bytes().to_vec());
    }
    // After `--`: a watch batch (`KEY<TAB>VALUE` puts, a bare `KEY` deletes).
    let changes: Vec<(&str, Option<&str>)> = lines
        .map(|l| match l.split_once('\t') {
            Some((k, v)) => (k, Some(v)),
            None => (l, None),
        })
        .collect();

    let a = layout::assemble_local(node, &NodeLocal::default(), &kvs);
    let b = layout::assemble_local(node, &NodeLocal::default(), &kvs);
    assert_eq!(a.state, b.state, "assembly is deterministic");
    assert_eq!(a.issues, b.issues);
    for i in &a.issues {
        // An issue names a key of the snapshot, or the key this node would need.
        assert!(
            kvs.contains_key(i.key.as_bytes())
                || i.key == layout::node_key(node)
                || i.key == layout::ingress_config_key()
                || i.key.starts_with(layout::PREFIX),
            "issue for an unknown key {:?}",
            i.key
        );
    }
    let ready = ReadyTasks::local(node, &a.state);
    if let Some(ing) = a.state.ingress() {
        for s in &ing.services {
            for t in &s.tasks {
                assert_eq!(
                    ready.lists(s.name.as_str(), t.addr),
                    t.node == node,
                    "ready lists exactly this node's tasks"
                );
            }
        }
    }

    // A batch applied service by service gives the whole assembly of the changed snapshot
    // (when the snapshot before it assembled without issues), or is left to that assembly.
    if a.issues.is_empty() {
        let by_service = layout::apply_service_changes(
            &a.state,
            changes
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.map(str::as_bytes))),
        );
        let mut changed = kvs.clone();
        for (k, v) in &changes {
            match v {
                Some(v) => changed.insert(k.as_bytes().to_vec(), v.as_bytes().to_vec()),
                None => changed.remove(k.as_bytes()),
            };
        }
        if let Some(next) = by_service {
            let whole = layout::assemble_local(node, &NodeLocal::default(), &changed);
            assert!(whole.issues.is_empty(), "{:?}", whole.issues);
            assert_eq!(next, whole.state, "service by service = the whole assembly");
        }
    }

    let (file, _) = ClusterFile::from_kvs(&kvs);
    if let Ok(written) = file.to_kvs() {
        let bytes: BTreeMap<Vec<u8>, Vec<u8>> = written
            .iter()
            .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
            .collect();
        let (again, issues) = ClusterFile::from_kvs(&bytes);
        assert!(
            issues.is_empty(),
            "keys cluster apply writes read back: {issues:?}"
        );
        assert_eq!(
            again.to_kvs().ok(),
            Some(written),
            "the cluster file round-trips through its keys"
        );
    }
});
