//! Guest-kernel test (IPVS): the SNAT of a load-balancing sandbox without `-m ipvs`.
//!
//! Client → VIP in the LB namespace (nft map sets the fwmark) → IPVS fwmark service (made with
//! the `ipvsadm` CLI, rr, Masq) → two backend namespaces. The reply path works only because
//! our nft rule `meta mark <range> ip daddr <subnet> snat ip to <lb addr>` rewrites the source
//! of the IPVS-forwarded connection: without it the backend answers the client directly and
//! the connection fails. Traffic that IPVS did not forward (from the LB namespace itself, even
//! with a foreign mark outside our range) keeps its source.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use vipmesh_netns::Netns;
use vipmesh_nft::*;
use vipmesh_testkit::vip::{IpFamily as LabFamily, VipLab, connect, http_get};
use vipmesh_testkit::{Requirement, eventually, require};

/// A TCP server in `ns` on `port` that answers each connection with the peer's address.
fn spawn_peer_reporter(ns: &str, port: u16) {
    let l = Netns::named(ns)
        .unwrap()
        .run(move || TcpListener::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let peer = s
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = s.write_all(format!("{peer}\n").as_bytes());
        }
    });
}

fn peer_seen(ns: &str, addr: SocketAddr) -> std::io::Result<String> {
    let mut s = connect(ns, addr)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_owned())
}

fn lb_table(lab: &VipLab, vip: IpAddr, snat: bool) -> Table {
    let mut t = Table::new(NetworkId::new("web").unwrap());
    vip_marks(
        &mut t,
        &[Hook::Input, Hook::Output],
        &[VipMark {
            vip,
            port: None,
            mark: 0x100,
        }],
    )
    .unwrap();
    let entries = [IpvsSnat {
        first_mark: 0x100,
        last_mark: 0x1ff,
        subnet: lab.subnet_cidr().parse().unwrap(),
        to: lab.lb_addr,
    }];
    ipvs_snat(&mut t, if snat { &entries } else { &[] }).unwrap();
    t
}

#[test]
#[ignore = "guest: needs IPVS (the guest kernel); run by cargo xtask test"]
fn ipvs_reply_path_with_nft_marks_and_mark_based_snat() {
    require(&[
        Requirement::Netns,
        Requirement::Ipvs,
        Requirement::Tool("ipvsadm"),
        Requirement::Tool("nft"),
        Requirement::Tool("busybox"),
    ]);
    let _ = std::process::Command::new("modprobe")
        .args([
            "-qa",
            "nf_tables",
            "nft_chain_nat",
            "nft_nat",
            "nft_fib_inet",
            "nft_ct",
            "nft_redir",
            "ip_vs",
            "ip_vs_rr",
            "nf_conntrack",
        ])
        .status();
    let mut lab = VipLab::new(LabFamily::V4, "web", 2);
    lab.start_servers();
    for t in lab.tasks.clone() {
        spawn_peer_reporter(&t.netns, 9100);
    }
    let vip = lab.host(9);
    let lb = lab.lb.clone();
    let client = lab.client.clone();
    lab.sh(
        &lb,
        &format!(
            "ip addr add {vip}/32 dev eth0 && sysctl -qw net.ipv4.vs.conntrack=1 \
             && sysctl -qw net.ipv4.ip_forward=1 && ipvsadm -A -f 256 -s rr \
             && ipvsadm -a -f 256 -r {}:0 -m && ipvsadm -a -f 256 -r {}:0 -m",
            lab.tasks[0].addr, lab.tasks[1].addr
        ),
    );
    let nft = Nft::new(Arc::new(Netns::named(&lb).unwrap()));
    nft.sync(&lb_table(&lab, vip, true)).unwrap();
    eprintln!(
        "--- the ruleset of this test (LB namespace) ---\n{}",
        lab.sh(&lb, "nft list ruleset")
    );

    // Through the VIP: answers, alternating between the two backends (rr).
    let names: Vec<String> = (0..6)
        .map(|i| http_get(&client, vip, 80).unwrap_or_else(|e| panic!("request {i} via VIP: {e}")))
        .collect();
    eprintln!("answers via the VIP: {names:?}");
    for w in names.windows(2) {
        assert_ne!(w[0], w[1], "rr alternates: {names:?}");
    }
    let mut set: Vec<&String> = names.iter().collect();
    set.sort();
    set.dedup();
    assert_eq!(set.len(), 2, "both backends answered: {names:?}");
    // The backends saw the LB's address (SNAT), not the client's.
    for _ in 0..2 {
        let peer = peer_seen(&client, SocketAddr::new(vip, 9100)).unwrap();
        assert_eq!(peer, lab.lb_addr.to_string());
    }
    let stats = lab.sh(&lb, "ipvsadm -Ln --stats");
    eprintln!("{stats}");

    // Not IPVS traffic: from the LB namespace with its own source 10.0.0.3, even carrying a
    // foreign mark outside our range, the backend sees 10.0.0.3 (the SNAT did not hit).
    let t0 = lab.tasks[0].addr;
    lab.sh(
        &lb,
        &format!(
            "ip addr add 10.0.0.3/32 dev eth0 && ip route add {t0}/32 dev eth0 src 10.0.0.3 \
             && nft add table ip other && nft add chain ip other out '{{ type route hook output priority -150; }}' \
             && nft add rule ip other out ip daddr {t0} tcp dport 9100 meta mark set 0x5"
        ),
    );
    let direct = peer_seen(&lb, SocketAddr::new(t0, 9100)).unwrap();
    assert_eq!(direct, "10.0.0.3", "non-IPVS traffic must keep its source");
    let direct_client = peer_seen(&client, SocketAddr::new(t0, 9100)).unwrap();
    assert_eq!(
        direct_client,
        lab.sh(
            &client,
            "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1"
        )
        .trim()
    );

    // Without the SNAT rule the reply path breaks (the backend answers the client directly):
    // the rule is what makes it work. Then it works again.
    nft.sync(&lb_table(&lab, vip, false)).unwrap();
    assert!(
        !lab.sh(&lb, "nft list table inet vipmesh-web")
            .contains("snat ip to")
    );
    for _ in 0..2 {
        assert!(
            http_get(&client, vip, 80).is_err(),
            "a VIP request without SNAT must not be answered"
        );
    }
    nft.sync(&lb_table(&lab, vip, true)).unwrap();
    eventually(
        Duration::from_secs(10),
        "VIP answers again with SNAT",
        || http_get(&client, vip, 80).map_err(|e| e.to_string()),
    );

    // Teardown removes our table only.
    assert!(nft.teardown(&NetworkId::new("web").unwrap()).unwrap());
    let rest = lab.sh(&lb, "nft list ruleset");
    assert!(
        !rest.contains("vipmesh") && rest.contains("table ip other"),
        "{rest}"
    );
}
