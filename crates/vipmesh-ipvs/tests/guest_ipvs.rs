//! IPVS against the real kernel (the lab's Debian 6.1 guest), cross-checked with the
//! independent C client `ipvsadm`. Every test works in its own fresh network namespace.
//!
//! Run: `cargo xtask test` (or `cargo xtask vm -- <this test binary> --ignored --test-threads=1`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::process::{Command, Stdio};

use vipmesh_ipvs::save::{ListView, parse_rules, render_list, render_rules, render_timeouts};
use vipmesh_ipvs::{
    Client, DestEntry, Error, Family, FwdMethod, IpvsDest, IpvsService, Netmask, Op, Protocol,
    Scheduler, ServiceEntry, ServiceKey, Timeouts,
};
use vipmesh_netns::Netns;
use vipmesh_testkit::{Requirement, TestNetns, Topology, require};

/// A varied rule file in ipvsadm's canonical `-Sn` form: v4/v6, TCP/UDP/SCTP/fwmark,
/// persistence with netmask, one-packet, scheduler flags, every forwarding method
/// ipvsadm can set, tunnel types and checksum options, weight 0 and 65535, a v6 real
/// server behind a v4 service (tunnel).
const RULES: &str = "\
-A -t 10.0.0.1:80 -s rr
-a -t 10.0.0.1:80 -r 10.0.0.10:8080 -m -w 3
-a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 0
-a -t 10.0.0.1:80 -r 10.0.0.12:80 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum
-a -t 10.0.0.1:80 -r 10.0.0.13:80 -i -w 1 --tun-type gre --tun-nocsum
-a -t 10.0.0.1:80 -r 10.0.0.14:80 -i -w 1 --tun-type ipip
-a -t 10.0.0.1:80 -r [2001:db8::20]:80 -i -w 1 --tun-type ipip
-A -t 10.0.0.2:0 -s wrr -p 60 -M 255.255.0.0
-a -t 10.0.0.2:0 -r 10.0.0.21:0 -m -w 2
-A --sctp-service 10.0.0.3:9 -s lc -p 100
-A -u [2001:db8::1]:53 -s sh -p 30 -M 64 -b sh-fallback,sh-port
-a -u [2001:db8::1]:53 -r [2001:db8::10]:53 -m -w 65535
-a -u [2001:db8::1]:53 -r [2001:db8::11]:53 -g -w 7
-A -t [2001:db8::2]:443 -s wlc
-A -f 259 -s mh -b mh-port
-a -f 259 -r 10.0.0.20:0 -m -w 1
-a -f 259 -r 10.0.0.22:0 -m -w 1
-a -f 259 -r 192.168.1.1:0 -g -w 1
-A -t 192.168.0.1:80 -s nq
-a -t 192.168.0.1:80 -r 192.168.1.2:80 -m -w 1
-a -t 192.168.0.1:80 -r 10.1.1.2:80 -m -w 1
-A -f 260 -6 -s rr -o
-a -f 260 -6 -r [2001:db8::30]:0 -m -w 1
-A -u 10.0.0.5:53 -s dh
-A -t 10.0.0.6:80 -s sed
";

/// Fails the calling test, with the reason, when this machine cannot run it (root, iproute2,
/// IPVS: the lab's guest kernel).
fn setup() -> (TestNetns, Client) {
    let _ = Command::new("modprobe")
        .args(["-a", "ip_vs", "ip_vs_rr"])
        .status();
    require(&[Requirement::Netns, Requirement::Ipvs]);
    let t = TestNetns::new();
    let c = Client::open().expect("open IPVS client in the test netns");
    (t, c)
}

fn sh(t: &TestNetns, cmd: &str) -> String {
    t.sh(cmd)
}

/// Runs `ipvsadm -R` inside the namespace with `rules` on stdin.
fn ipvsadm_restore(t: &TestNetns, rules: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", t.name(), "ipvsadm", "-R"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn ipvsadm -R");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "ipvsadm -R failed");
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_owned).collect();
    v.sort();
    v
}

fn table(c: &mut Client) -> Vec<(ServiceEntry, Vec<DestEntry>)> {
    c.services()
        .unwrap()
        .into_iter()
        .map(|s| {
            let d = c.dests(&s.service.key).unwrap();
            (s, d)
        })
        .collect()
}

fn modprobe_for(rules: &str) {
    for s in ["wrr", "lc", "sh", "mh", "wlc", "dh", "sed", "nq"] {
        if rules.contains(&format!("-s {s}")) {
            let _ = Command::new("modprobe").arg(format!("ip_vs_{s}")).status();
        }
    }
}

fn ok_all(results: Vec<Result<(), Error>>) {
    for (i, r) in results.into_iter().enumerate() {
        if let Err(e) = r {
            panic!("op {i} failed: {e}");
        }
    }
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn vipmesh_writes_ipvsadm_reads_back_identically() {
    let (t, mut c) = setup();
    modprobe_for(RULES);
    ok_all(c.execute(&parse_rules(RULES).unwrap()));
    let save = sh(&t, "ipvsadm -Sn");
    assert_eq!(
        sorted_lines(&save),
        sorted_lines(RULES),
        "ipvsadm -Sn:\n{save}"
    );
    // and our own renderer of our own dump prints exactly what ipvsadm prints
    assert_eq!(render_rules(&table(&mut c)), save);
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn ipvsadm_writes_vipmesh_reads_back_identically() {
    let (t, mut c) = setup();
    modprobe_for(RULES);
    ipvsadm_restore(&t, RULES);
    // thresholds are not in -S output: set them with ipvsadm and read them typed
    sh(
        &t,
        "ipvsadm -e -t 10.0.0.1:80 -r 10.0.0.10:8080 -m -w 3 -x 100 -y 10",
    );
    let tab = table(&mut c);
    assert_eq!(render_rules(&tab), sh(&t, "ipvsadm -Sn"));
    let key = ServiceKey::addr(Protocol::Tcp, "10.0.0.1".parse().unwrap(), 80);
    let d = c.dests(&key).unwrap();
    let d10 = d
        .iter()
        .find(|e| e.dest.key.to_string() == "10.0.0.10:8080")
        .unwrap();
    assert_eq!(
        (d10.dest.upper_threshold, d10.dest.lower_threshold),
        (100, 10)
    );
    assert_eq!(d10.dest.weight.get(), 3);
    let d11 = d
        .iter()
        .find(|e| e.dest.key.to_string() == "10.0.0.11:80")
        .unwrap();
    assert_eq!(
        (d11.dest.weight.get(), d11.dest.fwd),
        (0, FwdMethod::DirectRoute)
    );
    let v6 = d.iter().find(|e| e.dest.key.addr.is_ipv6()).unwrap();
    assert_eq!(v6.dest.fwd, FwdMethod::Tunnel);
    let s = c
        .service(&ServiceKey::addr(
            Protocol::Tcp,
            "10.0.0.2".parse().unwrap(),
            0,
        ))
        .unwrap()
        .unwrap();
    assert_eq!(s.service.timeout, 60);
    assert_eq!(
        s.service.netmask,
        Netmask::V4("255.255.0.0".parse().unwrap())
    );
    assert!(s.hashed);
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn list_views_are_byte_identical_to_ipvsadm() {
    let (t, mut c) = setup();
    modprobe_for(RULES);
    ipvsadm_restore(&t, RULES);
    let info = c.info().unwrap();
    let tab = table(&mut c);
    assert_eq!(
        render_list(&info, &tab, ListView::Table),
        sh(&t, "ipvsadm -Ln")
    );
    assert_eq!(
        render_list(&info, &tab, ListView::Stats),
        sh(&t, "ipvsadm -Ln --stats")
    );
    assert_eq!(
        render_list(&info, &tab, ListView::Rate),
        sh(&t, "ipvsadm -Ln --rate")
    );
    assert_eq!(
        render_timeouts(&c.timeouts().unwrap()),
        sh(&t, "ipvsadm -Ln --timeout")
    );
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn every_scheduler_the_kernel_offers() {
    let (t, mut c) = setup();
    let rel = sh(&t, "uname -r");
    let dir = format!("/lib/modules/{}/kernel/net/netfilter/ipvs", rel.trim());
    let mut scheds: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.ok()?.file_name().to_string_lossy().into_owned();
            // Debian's 6.12 ships compressed modules (.ko.xz).
            let base = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
                .iter()
                .find_map(|ext| n.strip_suffix(ext))?;
            let s = base.strip_prefix("ip_vs_")?.to_owned();
            (!matches!(s.as_str(), "ftp" | "pe_sip")).then_some(s)
        })
        .collect();
    scheds.sort();
    assert!(scheds.len() >= 13, "schedulers found in {dir}: {scheds:?}");
    let mut ops = Vec::new();
    for (i, s) in scheds.iter().enumerate() {
        let key = ServiceKey::fwmark(Family::Inet, 1000 + i as u32).unwrap();
        let sched = Scheduler::new(s).unwrap();
        assert!(
            Scheduler::ALL.contains(&sched),
            "{s} missing from Scheduler::ALL"
        );
        ops.push(Op::AddService(IpvsService::new(key, sched).unwrap()));
        ops.push(Op::AddDest(
            key,
            IpvsDest::new("10.0.0.10".parse().unwrap(), 0, FwdMethod::Masq),
        ));
    }
    ok_all(c.execute(&ops));
    let save = sh(&t, "ipvsadm -Sn");
    for (i, s) in scheds.iter().enumerate() {
        assert!(
            save.contains(&format!("-A -f {} -s {s}\n", 1000 + i)),
            "{s}:\n{save}"
        );
    }
    let got: Vec<String> = c
        .services()
        .unwrap()
        .iter()
        .map(|e| e.service.scheduler.to_string())
        .collect();
    for s in &scheds {
        assert!(got.contains(s), "{s} not read back: {got:?}");
    }
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn kernel_errors_keep_errno_op_and_object() {
    let (t, mut c) = setup();
    let key = ServiceKey::addr(Protocol::Tcp, "10.0.0.1".parse().unwrap(), 80);
    let svc = IpvsService::new(key, Scheduler::RR).unwrap();
    let d = IpvsDest::new("10.0.0.10".parse().unwrap(), 80, FwdMethod::Masq);
    let mut unknown = svc.clone();
    unknown.key = ServiceKey::addr(Protocol::Tcp, "10.0.0.2".parse().unwrap(), 80);
    unknown.scheduler = Scheduler::new("nosuchsched").unwrap();
    let missing = ServiceKey::fwmark(Family::Inet, 4242).unwrap();
    let r = c.execute(&[
        Op::AddDest(key, d),         // 0: no service yet
        Op::AddService(svc.clone()), // 1
        Op::AddService(svc.clone()), // 2: exists
        Op::AddDest(key, d),         // 3
        Op::AddDest(key, d),         // 4: exists
        Op::DelDest(
            key,
            vipmesh_ipvs::DestKey {
                addr: "10.0.0.99".parse().unwrap(),
                port: 80,
            },
        ), // 5
        Op::UpdateDest(
            key,
            IpvsDest::new("10.0.0.98".parse().unwrap(), 80, FwdMethod::Masq),
        ), // 6
        Op::DelService(missing),     // 7
        Op::AddService(unknown),     // 8: unknown scheduler
        Op::UpdateService(IpvsService::new(missing, Scheduler::RR).unwrap()), // 9
    ]);
    let e0 = r[0].as_ref().unwrap_err();
    assert!(
        matches!(e0, Error::AddDest { .. }) && e0.is_not_found(),
        "{e0}"
    );
    assert_eq!(e0.errno(), Some(libc::ESRCH));
    assert!(r[1].is_ok());
    assert!(r[2].as_ref().unwrap_err().is_exists());
    assert!(r[3].is_ok());
    let e4 = r[4].as_ref().unwrap_err();
    assert!(e4.is_exists(), "{e4}");
    assert!(
        e4.to_string().contains("10.0.0.10:80") && e4.to_string().contains("TCP 10.0.0.1:80"),
        "{e4}"
    );
    assert_eq!(r[5].as_ref().unwrap_err().errno(), Some(libc::ENOENT));
    assert_eq!(r[6].as_ref().unwrap_err().errno(), Some(libc::ENOENT));
    assert_eq!(r[7].as_ref().unwrap_err().errno(), Some(libc::ESRCH));
    let e8 = r[8].as_ref().unwrap_err();
    assert!(matches!(e8, Error::AddService { .. }), "{e8}");
    assert_eq!(
        e8.errno(),
        Some(libc::ENOENT),
        "unknown scheduler keeps the kernel's errno: {e8}"
    );
    assert_eq!(r[9].as_ref().unwrap_err().errno(), Some(libc::ESRCH));
    // nothing else changed
    assert_eq!(
        sh(&t, "ipvsadm -Sn"),
        "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.10:80 -m -w 1\n"
    );
    // a bad op is reported typed, without being sent
    let mut bad = IpvsDest::new("10.0.0.11".parse().unwrap(), 80, FwdMethod::Masq);
    bad.upper_threshold = 1;
    bad.lower_threshold = 5;
    let r = c.execute(&[Op::AddDest(key, bad)]);
    assert!(matches!(
        r[0],
        Err(Error::Invalid {
            field: "lower_threshold",
            ..
        })
    ));
    // dumping the dests of a missing service: the kernel ends the dump silently
    assert_eq!(c.dests(&missing).unwrap(), vec![]);
    assert_eq!(c.service(&missing).unwrap(), None);
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn update_get_delete_and_flush() {
    let (t, mut c) = setup();
    let _ = Command::new("modprobe")
        .args(["-a", "ip_vs_wrr", "ip_vs_sh"])
        .status();
    let key = ServiceKey::addr(Protocol::Udp, "2001:db8::1".parse().unwrap(), 53);
    let svc = IpvsService::new(key, Scheduler::RR).unwrap();
    let d = IpvsDest::new("2001:db8::10".parse().unwrap(), 53, FwdMethod::Masq);
    ok_all(c.execute(&[Op::AddService(svc.clone()), Op::AddDest(key, d)]));
    let upd = IpvsService::new(key, Scheduler::SH)
        .unwrap()
        .persistent(120, Netmask::V6(64))
        .unwrap();
    let mut d2 = d.with_weight(0).unwrap();
    d2.fwd = FwdMethod::DirectRoute;
    d2.upper_threshold = 50;
    d2.lower_threshold = 5;
    ok_all(c.execute(&[Op::UpdateService(upd.clone()), Op::UpdateDest(key, d2)]));
    assert_eq!(
        sh(&t, "ipvsadm -Sn"),
        "-A -u [2001:db8::1]:53 -s sh -p 120 -M 64\n-a -u [2001:db8::1]:53 -r [2001:db8::10]:53 -g -w 0\n"
    );
    assert_eq!(c.service(&key).unwrap().unwrap().service, upd);
    assert_eq!(c.dests(&key).unwrap()[0].dest, d2);
    assert!(sh(&t, "ipvsadm -Ln --thresholds").contains("50         5"));
    ok_all(c.execute(&[Op::DelDest(key, d.key)]));
    assert_eq!(
        sh(&t, "ipvsadm -Sn"),
        "-A -u [2001:db8::1]:53 -s sh -p 120 -M 64\n"
    );
    ok_all(c.execute(&[Op::DelService(key)]));
    assert_eq!(sh(&t, "ipvsadm -Sn"), "");
    ok_all(c.execute(
        &parse_rules("-A -f 1 -s rr\n-A -f 2 -s rr\n-a -f 2 -r 10.0.0.1:0 -m\n").unwrap(),
    ));
    c.flush().unwrap();
    assert_eq!(sh(&t, "ipvsadm -Sn"), "");
    assert!(c.services().unwrap().is_empty());
    // ipvsadm's flush is seen by us too
    sh(&t, "ipvsadm -A -f 3 -s rr && ipvsadm -C");
    assert!(c.services().unwrap().is_empty());
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn timeouts_and_info() {
    let (t, mut c) = setup();
    let info = c.info().unwrap();
    assert_eq!(info.version_string(), "1.2.1");
    assert!(sh(&t, "ipvsadm -Ln").starts_with(&format!(
        "IP Virtual Server version 1.2.1 (size={})",
        info.conn_tab_size
    )));
    c.set_timeouts(Timeouts {
        tcp: 1000,
        tcp_fin: 20,
        udp: 30,
    })
    .unwrap();
    assert_eq!(
        sh(&t, "ipvsadm -L --timeout"),
        "Timeout (tcp tcpfin udp): 1000 20 30\n"
    );
    c.set_timeouts(Timeouts {
        tcp: 0,
        tcp_fin: 0,
        udp: 40,
    })
    .unwrap();
    assert_eq!(
        c.timeouts().unwrap(),
        Timeouts {
            tcp: 1000,
            tcp_fin: 20,
            udp: 40
        }
    );
    sh(&t, "ipvsadm --set 900 120 300");
    assert_eq!(
        c.timeouts().unwrap(),
        Timeouts {
            tcp: 900,
            tcp_fin: 120,
            udp: 300
        }
    );
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn a_namespace_other_than_the_callers() {
    let (t, mut here) = setup();
    let other = format!("vmipvs{}-other", std::process::id());
    // not through `ip netns exec` (its private mount namespace would hide the new file)
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ip netns add {other} && ip -n {other} link set lo up"
        ))
        .status()
        .unwrap();
    assert!(st.success());
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _del = Del(other.clone());
    let mut there = Client::open_in_path(format!("/run/netns/{other}")).unwrap();
    let key = ServiceKey::fwmark(Family::Inet, 259).unwrap();
    ok_all(there.execute(&[
        Op::AddService(IpvsService::new(key, Scheduler::RR).unwrap()),
        Op::AddDest(
            key,
            IpvsDest::new("10.0.0.10".parse().unwrap(), 0, FwdMethod::Masq),
        ),
    ]));
    let theirs = Command::new("ip")
        .args(["netns", "exec", &other, "ipvsadm", "-Sn"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&theirs.stdout),
        "-A -f 259 -s rr\n-a -f 259 -r 10.0.0.10:0 -m -w 1\n"
    );
    assert_eq!(
        sh(&t, "ipvsadm -Sn"),
        "",
        "the caller's namespace is untouched"
    );
    assert!(here.services().unwrap().is_empty());
    // the Netns-handle constructor reaches the same table
    let ns = Netns::named(&other).unwrap();
    let mut again = Client::open_in(&ns).unwrap();
    assert_eq!(again.services().unwrap().len(), 1);
    assert_eq!(again.family_id(), here.family_id());
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn large_batch_results_line_up_with_ops() {
    let (t, mut c) = setup();
    // 1000 services and a duplicate every 97th op: crosses several sendmsg chunks
    let mut ops = Vec::new();
    let mut dup_at = Vec::new();
    for i in 0..1000u32 {
        let key = ServiceKey::fwmark(Family::Inet, 0x100 + i).unwrap();
        ops.push(Op::AddService(
            IpvsService::new(key, Scheduler::RR).unwrap(),
        ));
        if i % 97 == 0 {
            dup_at.push(ops.len());
            ops.push(Op::AddService(
                IpvsService::new(key, Scheduler::RR).unwrap(),
            ));
        }
    }
    let r = c.execute(&ops);
    assert_eq!(r.len(), ops.len());
    for (i, res) in r.iter().enumerate() {
        if dup_at.contains(&i) {
            assert!(res.as_ref().unwrap_err().is_exists(), "op {i}");
        } else {
            assert!(res.is_ok(), "op {i}: {res:?}");
        }
    }
    assert_eq!(sh(&t, "ipvsadm -Sn").lines().count(), 1000);
    assert_eq!(c.services().unwrap().len(), 1000);
}

/// The example binaries (`cargo test` builds them next to the test binary's directory).
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        p.exists(),
        "{} missing: build the examples (cargo test -p vipmesh-ipvs builds them)",
        p.display()
    );
    p
}

fn run_in(
    t: &TestNetns,
    bin: &std::path::Path,
    args: &[&str],
    stdin: &str,
) -> std::process::Output {
    let mut child = Command::new("ip")
        .args(["netns", "exec", t.name()])
        .arg(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn examples_speak_ipvsadm() {
    let (t, _c) = setup();
    modprobe_for(RULES);
    let restore = example("ipvs_restore");
    let list = example("ipvs_list");
    // a bad line: reported with its number, nothing applied
    let bad = format!("{RULES}-A -f 0 -s rr\n");
    let out = run_in(&t, &restore, &[], &bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let n = RULES.lines().count() + 1;
    assert!(
        err.contains(&format!("line {n}:")) && err.contains("fwmark"),
        "{err}"
    );
    assert_eq!(sh(&t, "ipvsadm -Sn"), "", "nothing applied");
    // the real thing
    let out = run_in(&t, &restore, &[], RULES);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let save = sh(&t, "ipvsadm -Sn");
    assert_eq!(sorted_lines(&save), sorted_lines(RULES));
    for (args, cmd) in [
        (&[][..], "ipvsadm -Ln"),
        (&["--stats"][..], "ipvsadm -Ln --stats"),
        (&["--rate"][..], "ipvsadm -Ln --rate"),
        (&["--timeout"][..], "ipvsadm -Ln --timeout"),
    ] {
        let out = run_in(&t, &list, args, "");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), sh(&t, cmd), "{cmd}");
    }
    // ipvsadm -Sn | ipvs_restore in a fresh namespace reproduces it byte for byte
    let t2 = TestNetns::new();
    let out = run_in(&t2, &restore, &[], &save);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(t2.sh("ipvsadm -Sn"), save);
    // a kernel error names its line
    let out = run_in(&t2, &restore, &[], "-A -f 259 -s rr\n");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1: add service FWM 259: File exists")
    );
}

/// Real traffic through a VIP: the connection counts the mesh drains by are read back,
/// equal ipvsadm's, and the counters reach the stats.
#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn connection_counts_and_stats_follow_real_traffic() {
    require(&[Requirement::Netns, Requirement::Ipvs]);
    let _ = Command::new("modprobe")
        .args(["-a", "ip_vs_rr", "veth"])
        .status();
    let mut topo = Topology::new("ipvs");
    let client = topo.ns("client");
    let be = topo.ns("be");
    topo.veth((&client, "eth0"), (&be, "eth0"));
    topo.addr(&client, "eth0", "10.0.0.7/24");
    topo.addr(&be, "eth0", "10.0.0.10/24");
    let www = topo.temp_dir("www");
    std::fs::write(www.join("index.html"), "be\n").unwrap();
    topo.spawn(&be, &format!("busybox httpd -f -p 80 -h {}", www.display()));
    // wait for the backend itself (not through IPVS, so it is not counted)
    topo.sh(&client, "for i in $(seq 100); do curl -s -o /dev/null -m 2 http://10.0.0.10/ && exit 0; sleep 0.2; done; exit 1");
    let mut c = Client::open_in_path(format!("/run/netns/{client}")).unwrap();
    let key = ServiceKey::addr(Protocol::Tcp, "10.0.0.9".parse().unwrap(), 80);
    ok_all(c.execute(&[
        Op::AddService(IpvsService::new(key, Scheduler::RR).unwrap()),
        Op::AddDest(
            key,
            IpvsDest::new("10.0.0.10".parse().unwrap(), 80, FwdMethod::Masq),
        ),
    ]));
    for _ in 0..3 {
        assert_eq!(topo.sh(&client, "curl -s -m 5 http://10.0.0.9/"), "be\n");
    }
    let d = c.dests(&key).unwrap();
    assert_eq!(d[0].active_conns + d[0].inactive_conns, 3, "{d:?}");
    let line = topo.sh(&client, "ipvsadm -Ln | grep -- '-> 10.0.0.10:80'");
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        (
            cols[4].parse::<u32>().unwrap(),
            cols[5].parse::<u32>().unwrap()
        ),
        (d[0].active_conns, d[0].inactive_conns),
        "{line}"
    );
    // counters are folded in by the kernel's 2 s estimator: wait for them (bounded)
    let mut conns = 0;
    for _ in 0..50 {
        let s = c.service(&key).unwrap().unwrap();
        conns = s.stats.conns;
        if conns == 3 && s.stats.inpkts > 0 && s.stats.outbytes > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(conns, 3);
    let d = c.dests(&key).unwrap();
    assert_eq!(d[0].stats.conns, 3);
    assert!(
        d[0].stats.inpkts >= 9 && d[0].stats.inbytes > 0,
        "{:?}",
        d[0].stats
    );
}
