//! Load, attach, detach, pinning and the bad-input errors, on the host kernel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;
use vipmesh_testkit::{TestNetns, packet::SYN};
use vipmesh_xdp::{
    AttachMode, Error, FastPath, ForwardMode::Nat, LoadOptions, Pinning, Program, Proto::Tcp, sys,
    verdict::*,
};

fn bpftool_ok(args: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("bpftool {args} >/dev/null 2>&1"))
        .status()
        .unwrap()
        .success()
}

/// Program ids attached with tcx on `dev` ingress (bpftool 7.1 does not show tcx links).
fn tcx_ingress(dev: &str) -> Vec<u32> {
    use aya::programs::{SchedClassifier, tc::TcAttachType};
    let (_, progs) = SchedClassifier::query_tcx(dev, TcAttachType::Ingress).unwrap();
    progs.iter().map(|p| p.id()).collect()
}

/// Whether `done` holds within about 5 s, polling. Closing the last descriptor of a link or a
/// program detaches or frees it at once, unless another process holds its file for a moment (a
/// parallel test's bpftool walks every task's files), and maps go after an RCU grace period.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    done()
}

fn veth(t: &TestNetns) {
    t.sh("ip link add va type veth peer name vb && ip link set va up && ip link set vb up");
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn attach_errors_are_typed() {
    require_xdp();
    let t = TestNetns::new();
    veth(&t);
    let mut fp = load(config(), 1024);
    assert!(matches!(
        fp.attach("nope0", Program::XdpLb, AttachMode::Auto),
        Err(Error::InterfaceNotFound { name }) if name == "nope0"
    ));
    assert!(matches!(
        fp.attach("nope0", Program::TcRev, AttachMode::Auto),
        Err(Error::InterfaceNotFound { .. })
    ));
    // veth cannot offload XDP to hardware.
    let e = fp
        .attach("va", Program::XdpLb, AttachMode::Offload)
        .unwrap_err();
    assert!(
        matches!(e, Error::XdpModeUnsupported { mode: AttachMode::Offload, ref interface, .. } if interface == "va"),
        "{e:?}"
    );
    assert_eq!(fp.attachments().count(), 0, "nothing half-attached");
    // Generic mode on request; native on veth with Auto.
    let g = fp
        .attach("vb", Program::XdpLb, AttachMode::Generic)
        .unwrap();
    assert_eq!(g.mode, Some(AttachMode::Generic));
    assert!(t.sh("ip link show vb").contains("xdpgeneric"));
    let n = fp.attach("va", Program::XdpLb, AttachMode::Auto).unwrap();
    assert_eq!(n.mode, Some(AttachMode::Native));
    assert_eq!(n.fallback_reason, None);
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn detach_leaves_nothing_behind() {
    require_xdp();
    let t = TestNetns::new();
    veth(&t);
    let mut fp = load(config(), 1024);
    fp.dataplane()
        .upsert_service(&service("10.0.0.1", 80, Tcp, Nat, &[("10.1.0.2", 8080)]))
        .unwrap();
    let x = fp.attach("va", Program::XdpLb, AttachMode::Auto).unwrap();
    fp.attach("vb", Program::TcRev, AttachMode::Auto).unwrap();
    assert!(t.sh("ip link show va").contains("xdp"));
    let progs = fp.program_ids().unwrap();
    assert_eq!(tcx_ingress("vb"), vec![progs[&Program::TcRev]]);
    let maps = fp.map_ids().unwrap();
    assert!(maps.len() >= 10, "{maps:?}");
    for id in progs.values() {
        assert!(bpftool_ok(&format!("prog show id {id}")));
    }
    fp.detach(&x).unwrap();
    fp.detach(&x).unwrap(); // detaching what is gone is success
    assert!(
        eventually(|| !t.sh("ip link show va").contains("xdp")),
        "{}",
        t.sh("ip link show va")
    );
    fp.detach_all().unwrap();
    assert!(
        eventually(|| tcx_ingress("vb").is_empty()),
        "{:?}",
        tcx_ingress("vb")
    );
    drop(fp);
    for (p, id) in &progs {
        assert!(
            eventually(|| !bpftool_ok(&format!("prog show id {id}"))),
            "program {p:?} (id {id}) left behind"
        );
    }
    for id in &maps {
        assert!(
            eventually(|| !bpftool_ok(&format!("map show id {id}"))),
            "map id {id} left behind"
        );
    }
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn pinned_maps_survive_a_restart_and_unpin_removes_them() {
    require_xdp();
    let _t = TestNetns::new();
    let root = std::env::temp_dir().join(format!("vipmesh-bpffs-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _u = Umount(root.clone());
    assert!(!sys::is_bpffs(&root).unwrap());
    let opts = LoadOptions {
        config: config(),
        flow_entries: 1024,
        pinning: Pinning::Maps { root: root.clone() },
    };
    let mut fp = FastPath::load(&opts).unwrap();
    assert!(sys::is_bpffs(&root).unwrap(), "bpffs mounted on demand");
    fp.dataplane()
        .upsert_service(&service("10.0.0.1", 80, Tcp, Nat, &[("10.1.0.2", 8080)]))
        .unwrap();
    let input = pkt("10.9.0.7", 40000, "10.0.0.1", 80, Tcp, SYN);
    assert_eq!(
        fp.test_run(Program::XdpLb, &input, 1).unwrap().verdict,
        XDP_REDIRECT
    );
    let progs = fp.program_ids().unwrap();
    drop(fp);
    for id in progs.values() {
        assert!(
            eventually(|| !bpftool_ok(&format!("prog show id {id}"))),
            "programs are not pinned"
        );
    }
    let flows = root.join("vipmesh/flows");
    assert!(flows.exists());
    assert!(bpftool_ok(&format!("map show pinned {}", flows.display())));
    // A restarted process re-opens the pinned maps: the flow is still there.
    let fp2 = FastPath::load(&opts).unwrap();
    let mut fp2 = fp2;
    let key = vipmesh_xdp::abi::FlowKey {
        src: vipmesh_xdp::addr_to_abi(ip("10.9.0.7")),
        dst: vipmesh_xdp::addr_to_abi(ip("10.0.0.1")),
        sport: 40000u16.to_be(),
        dport: 80u16.to_be(),
        proto: 6,
        family: 4,
        pad: 0,
    };
    assert!(
        fp2.dataplane().maps().flow(&key).unwrap().is_some(),
        "flow table survived"
    );
    // The service and its ids were restored from the maps: re-applying changes nothing, and
    // the surviving flow still hits.
    assert_eq!(fp2.dataplane().services().count(), 1);
    let report = fp2
        .dataplane()
        .upsert_service(&service("10.0.0.1", 80, Tcp, Nat, &[("10.1.0.2", 8080)]))
        .unwrap();
    assert_eq!(report.id, 0);
    assert!(report.removed.is_empty());
    let hits = fp2.dataplane().counters().unwrap()["flow_hit"];
    let ack = pkt(
        "10.9.0.7",
        40000,
        "10.0.0.1",
        80,
        Tcp,
        vipmesh_testkit::packet::ACK,
    );
    assert_eq!(
        fp2.test_run(Program::XdpLb, &ack, 1).unwrap().verdict,
        XDP_REDIRECT
    );
    assert_eq!(fp2.dataplane().counters().unwrap()["flow_hit"], hits + 1);
    drop(fp2);
    FastPath::unpin(&root).unwrap();
    FastPath::unpin(&root).unwrap(); // idempotent
    assert!(!root.join("vipmesh").exists());
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn bpffs_not_mountable_is_a_typed_error() {
    require_xdp();
    for root in ["/proc/version", "/nonexistent/vipmesh-test"] {
        let opts = LoadOptions {
            pinning: Pinning::Maps { root: root.into() },
            ..LoadOptions::default()
        };
        match FastPath::load(&opts) {
            Err(e @ Error::BpffsUnavailable { .. }) => assert!(e.raw_os_error().is_some(), "{e:?}"),
            other => panic!("{root}: expected BpffsUnavailable, got {other:?}"),
        }
    }
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn missing_capabilities_are_typed_errors() {
    require_xdp();
    // Capabilities are per thread: drop them on a scratch thread only.
    let r = std::thread::spawn(|| {
        sys::drop_effective_caps(&[sys::CAP_BPF, sys::CAP_SYS_ADMIN]).unwrap();
        FastPath::load(&LoadOptions::default()).map(|_| ())
    })
    .join()
    .unwrap();
    assert!(
        matches!(
            r,
            Err(Error::MissingCapability {
                capability: "CAP_BPF",
                ..
            })
        ),
        "{r:?}"
    );
    let r = std::thread::spawn(|| {
        sys::drop_effective_caps(&[sys::CAP_NET_ADMIN]).unwrap();
        FastPath::load(&LoadOptions::default()).map(|_| ())
    })
    .join()
    .unwrap();
    assert!(
        matches!(
            r,
            Err(Error::MissingCapability {
                capability: "CAP_NET_ADMIN",
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn bad_service_input_is_rejected_before_any_write() {
    require_xdp();
    let _t = TestNetns::new();
    let mut fp = load(config(), 1024);
    // Table too small for the backends (from the Maglev crate).
    let mut s = service(
        "10.0.0.1",
        80,
        Tcp,
        Nat,
        &[("10.1.0.2", 8080), ("10.1.0.3", 8080), ("10.1.0.4", 8080)],
    );
    s.table_size = vipmesh_xdp::TableSize::new(2).unwrap();
    assert!(matches!(
        fp.dataplane().upsert_service(&s),
        Err(Error::Table { .. })
    ));
    assert!(matches!(
        vipmesh_xdp::TableSize::new(100),
        Err(vipmesh_maglev::Error::TableSizeNotPrime { value: 100 })
    ));
    // Nothing was written: the service is not ours.
    let out = fp
        .test_run(
            Program::XdpLb,
            &pkt("10.9.0.7", 1, "10.0.0.1", 80, Tcp, SYN),
            1,
        )
        .unwrap();
    assert_eq!(out.verdict, XDP_PASS);
    // Family mismatch.
    let s = service("10.0.0.1", 80, Tcp, Nat, &[("fd01::2", 8080)]);
    assert!(matches!(
        fp.dataplane().upsert_service(&s),
        Err(Error::InvalidConfig {
            field: "backend.addr",
            ..
        })
    ));
    // Encap without a node address of that family.
    let mut fp2 = load(vipmesh_xdp::Config::default(), 1024);
    let s = service(
        "10.0.0.1",
        80,
        Tcp,
        vipmesh_xdp::ForwardMode::Encap,
        &[("10.1.0.2", 0)],
    );
    assert!(matches!(
        fp2.dataplane().upsert_service(&s),
        Err(Error::InvalidConfig { .. })
    ));
    // Zero flow-table size.
    assert!(matches!(
        FastPath::load(&LoadOptions {
            flow_entries: 0,
            ..LoadOptions::default()
        }),
        Err(Error::InvalidConfig {
            field: "flow_entries",
            ..
        })
    ));
}

/// The id of the XDP program attached to `dev` (from `ip link`), if any.
fn xdp_prog_id(t: &TestNetns, dev: &str) -> Option<u32> {
    let out = t.sh(&format!("ip -d link show {dev}"));
    let at = out.find("prog/xdp")?;
    let rest = &out[at..];
    let id = rest.split_whitespace().skip_while(|w| *w != "id").nth(1)?;
    id.parse().ok()
}

#[test]
#[ignore = "privileged: needs root and the host kernel; run by cargo xtask test"]
fn pinned_links_keep_the_fast_path_attached_across_a_restart() {
    require_xdp();
    let t = TestNetns::new();
    veth(&t);
    let root = std::env::temp_dir().join(format!("vipmesh-bpffs-links-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _u = Umount(root.clone());
    let opts = LoadOptions {
        config: config(),
        flow_entries: 1024,
        pinning: Pinning::MapsAndLinks { root: root.clone() },
    };
    let mut fp1 = FastPath::load(&opts).unwrap();
    let a1 = fp1.attach("va", Program::XdpLb, AttachMode::Auto).unwrap();
    assert!(!a1.reused_pin);
    assert!(a1.pinned.as_ref().unwrap().exists());
    fp1.attach("vb", Program::TcRev, AttachMode::Auto).unwrap();
    let ids1 = fp1.program_ids().unwrap();
    assert_eq!(xdp_prog_id(&t, "va"), Some(ids1[&Program::XdpLb]));
    drop(fp1);
    // The process is gone; the fast path is still attached.
    assert_eq!(xdp_prog_id(&t, "va"), Some(ids1[&Program::XdpLb]));
    assert_eq!(tcx_ingress("vb"), vec![ids1[&Program::TcRev]]);
    // The next process takes the links over, atomically.
    let mut fp2 = FastPath::load(&opts).unwrap();
    let a2 = fp2.attach("va", Program::XdpLb, AttachMode::Auto).unwrap();
    assert!(a2.reused_pin);
    let b2 = fp2.attach("vb", Program::TcRev, AttachMode::Auto).unwrap();
    assert!(b2.reused_pin);
    let ids2 = fp2.program_ids().unwrap();
    assert_ne!(ids1[&Program::XdpLb], ids2[&Program::XdpLb]);
    assert_eq!(xdp_prog_id(&t, "va"), Some(ids2[&Program::XdpLb]));
    assert_eq!(tcx_ingress("vb"), vec![ids2[&Program::TcRev]]);
    // An explicit detach removes the pins and the attachments.
    fp2.detach_all().unwrap();
    assert_eq!(xdp_prog_id(&t, "va"), None);
    assert_eq!(tcx_ingress("vb"), Vec::<u32>::new());
    assert!(!a2.pinned.unwrap().exists());
    drop(fp2);
    FastPath::unpin(&root).unwrap();
    assert!(!root.join("vipmesh").exists());
}
