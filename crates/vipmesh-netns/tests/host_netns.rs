//! Privileged tests of the netns guard and the topology builder, on the host kernel.

use std::path::Path;

use vipmesh_netns::Netns;
use vipmesh_testkit::{TestNetns, Topology};

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn test_netns_is_entered_and_deleted() {
    let root = Netns::current().unwrap();
    let name;
    {
        let t = TestNetns::new();
        name = t.name().to_string();
        let here = Netns::current().unwrap();
        assert!(
            here.same_as(t.netns()),
            "the thread is inside the test netns"
        );
        assert!(!here.same_as(&root), "and no longer in the original one");
        // Only loopback exists in a fresh namespace, and it is up.
        let links = t.sh("ip -o link");
        assert_eq!(links.lines().count(), 1, "{links}");
        assert!(links.contains("lo:") && links.contains("UP"), "{links}");
        assert!(Path::new("/run/netns").join(&name).exists());
    }
    assert!(Netns::current().unwrap().same_as(&root), "restored on drop");
    assert!(
        !Path::new("/run/netns").join(&name).exists(),
        "deleted on drop"
    );
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn cleanup_happens_when_a_test_panics() {
    let root = Netns::current().unwrap();
    let names = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = TestNetns::new();
        let mut topo = Topology::new("pan");
        let a = topo.ns("a");
        names.lock().unwrap().extend([t.name().to_string(), a]);
        panic!("simulated test failure");
    }));
    assert!(result.is_err());
    assert!(Netns::current().unwrap().same_as(&root));
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 2);
    for n in names {
        assert!(
            Netns::named(&n).unwrap_err().is_not_found(),
            "{n} left behind"
        );
    }
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn topology_connects_namespaces_and_runs_processes() {
    let mut topo = Topology::new("topo");
    let sw = topo.bridge_ns("sw");
    let a = topo.ns("a");
    let b = topo.ns("b");
    topo.attach(&sw, &a, "eth0", "10.77.0.1/24");
    topo.attach(&sw, &b, "eth0", "10.77.0.2/24");
    topo.addr(&a, "eth0", "fd77::1/64");
    topo.addr(&b, "eth0", "fd77::2/64");
    topo.sh(&a, "ping -c1 -W2 10.77.0.2");
    topo.sh(&a, "ping -c1 -W2 fd77::2");

    // A background server in b, reached from a.
    let dir = std::env::temp_dir().join(format!("vipmesh-topo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "hello from b\n").unwrap();
    let pid = topo.spawn(
        &b,
        &format!("busybox httpd -f -p 8080 -h {}", dir.display()),
    );
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let mut body = String::new();
    for _ in 0..50 {
        let out = topo.try_sh(&a, "curl -s --max-time 1 http://10.77.0.2:8080/");
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(body, "hello from b\n");
    let names = topo.namespaces().to_vec();
    drop(topo);
    assert!(!Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid));
    for n in names {
        assert!(Netns::named(&n).unwrap_err().is_not_found());
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true)
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn run_executes_inside_the_namespace() {
    let mut topo = Topology::new("run");
    let a = topo.ns("a");
    topo.sh(&a, "sysctl -qw net.ipv4.ip_forward=1");
    let ns = Netns::named(&a).unwrap();
    let inside = ns
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap())
        .unwrap();
    assert_eq!(inside.trim(), "1");
    let links = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap())
        .unwrap();
    assert!(links.contains("lo:") && !links.contains("eth"), "{links}");
}

/// `Netns::anonymous`: a new namespace (not the caller's), empty but for `lo`, with no name
/// under /run/netns; the caller's thread never leaves its own namespace.
#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn an_anonymous_namespace_is_new_empty_and_unnamed() {
    let here = Netns::current().unwrap();
    let names_before: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let scratch = Netns::anonymous().unwrap();
    assert!(!scratch.same_as(&here), "a new namespace");
    assert!(
        Netns::current().unwrap().same_as(&here),
        "the caller stayed"
    );
    assert_ne!(scratch.id().unwrap(), here.id().unwrap());
    let links = scratch
        .run(|| {
            std::process::Command::new("ip")
                .args(["-o", "link"])
                .output()
                .unwrap()
        })
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
    let names_after: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(names_before, names_after, "no name was created");
}
