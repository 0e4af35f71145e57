//! The firewall backends through the node controller, host kernel, one run: N services
//! (default 10 000, per-client layout: marks in `OUTPUT`, no VIP addresses), each firewall
//! batch real (`iptables-restore` or `nft -f` in a namespace this program creates), IPVS
//! emulated (`vipmesh-ipvs`'s Fake: the host kernel has no IPVS, and IPVS is the same on both
//! backends).
//!
//! - apply from empty: `Controller::sync_full` (observe, plan, apply) on nftables vs iptables;
//! - one changed VIP at N services, `ObserveMode::Cached`: `set_desired` + `sync` on nftables
//!   (one `nft` transaction of two elements; process and libnftables runners) vs Docker's
//!   `iptables -D` + `iptables -A` of one rule at N rules, spawned from a thread inside the
//!   namespace the same way.
//!
//! Run as root: `cargo run --release -p vipmesh --features test-util --example nft_controller -- [N]`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vipmesh::dataplane::{Host, Kernel, KernelHost, KernelRules, NsHandle, open_netns};
use vipmesh::model::*;
use vipmesh::plan::{KernelVersion, NsIdentity, ObservedAddr};
use vipmesh::{Controller, ControllerConfig, Error};
use vipmesh_ipvs::fake::Fake;

/// The host side without IPVS sysctls (the host kernel has none): reads report what we set.
#[derive(Debug)]
struct BenchHost {
    inner: KernelHost,
    sysctls: BTreeMap<String, String>,
}

impl Host for BenchHost {
    fn addresses(&mut self) -> Result<BTreeMap<IpAddr, ObservedAddr>, Error> {
        self.inner.addresses()
    }
    fn add_address(&mut self, interface: &str, addr: IpAddr) -> Result<(), Error> {
        self.inner.add_address(interface, addr)
    }
    fn del_address(&mut self, interface: &str, addr: IpAddr, prefix: u8) -> Result<(), Error> {
        self.inner.del_address(interface, addr, prefix)
    }
    fn sysctls(&mut self, keys: &[String]) -> Result<BTreeMap<String, String>, Error> {
        Ok(keys
            .iter()
            .filter_map(|k| self.sysctls.get(k).map(|v| (k.clone(), v.clone())))
            .collect())
    }
    fn set_sysctl(&mut self, key: &str, value: &str) -> Result<(), Error> {
        self.sysctls.insert(key.into(), value.into());
        Ok(())
    }
    fn kernel(&mut self) -> Result<KernelVersion, Error> {
        self.inner.kernel()
    }
}

/// Real firewall and addresses, fake IPVS.
#[derive(Debug)]
struct Bench {
    runner: vipmesh_nft::Runner,
}

impl Kernel for Bench {
    type Ipvs = Fake;
    type Rules = KernelRules;
    type Host = BenchHost;

    fn open(&mut self, netns: &str) -> Result<NsHandle<Fake, KernelRules, BenchHost>, Error> {
        let ns = Arc::new(open_netns(netns)?);
        Ok(NsHandle {
            ipvs: Fake::new(),
            rules: KernelRules::new(netns, ns.clone()).with_nft_runner(self.runner),
            host: BenchHost {
                inner: KernelHost::new(netns, ns),
                sysctls: BTreeMap::new(),
            },
            identity: None,
        })
    }
    fn identity(&mut self, _netns: &str) -> Result<Option<NsIdentity>, Error> {
        Ok(None)
    }
    fn wire_ingress(&mut self, _: &vipmesh::ingress::Ingress) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }
    fn reserve_ports(
        &mut self,
        _: &str,
        _: &std::collections::BTreeSet<(Family, Protocol, u16)>,
    ) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }
    fn update_ingress_peers(
        &mut self,
        _: &vipmesh::ingress::Ingress,
        _: &vipmesh_overlay::Plan,
    ) -> Result<(), Error> {
        Ok(())
    }
    fn unwire_ingress(&mut self, _: &vipmesh::ingress::Ingress) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }
}

/// A namespace of ours, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("vmnftc-{tag}-{}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name}");
        Ns(name)
    }
    fn run(&self, tool: &str, args: &[String]) {
        let ns = open_netns(&self.0).unwrap();
        let out = ns
            .run(|| Command::new(tool).args(args).output())
            .unwrap()
            .unwrap();
        assert!(out.status.success(), "{tool} {args:?}: {out:?}");
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn vip(i: u32) -> IpAddr {
    IpAddr::from([10, 128 + (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

fn state(ns: &str, n: u32, moved: Option<u32>, firewall: Firewall) -> NodeState {
    let mut net = Network::new(
        "bench",
        "10.0.0.0/8".parse().unwrap(),
        ns,
        "lo",
        "10.0.0.2".parse().unwrap(),
    )
    .unwrap()
    .with_layout(Layout::PerClient)
    .with_fwmarks(FwmarkRange::new(0x100, 0x100 + 2 * n).unwrap());
    net.lb_netns = ns.to_string();
    let backend: IpAddr = "10.0.0.10".parse().unwrap();
    let services = (0..n)
        .map(|i| {
            let v = if moved == Some(i) { vip(n + 1) } else { vip(i) };
            Service::vip(&format!("s{i}"), v, &[backend]).unwrap()
        })
        .collect();
    NodeState::new(
        vec![NetworkState::new(net, services).unwrap()],
        NodeOptions {
            firewall,
            ..NodeOptions::default()
        },
    )
    .unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse().unwrap())
        .unwrap_or(10_000);
    let rounds = 3;
    let mut empty = [Duration::MAX; 2]; // iptables, nftables
    let mut one = [Duration::MAX; 3]; // nft process, nft library, iptables
    for _ in 0..rounds {
        for (k, fw) in [Firewall::Iptables, Firewall::Nftables]
            .into_iter()
            .enumerate()
        {
            let ns = Ns::new("empty");
            let mut c = Controller::new(
                Bench {
                    runner: vipmesh_nft::Runner::Process,
                },
                ControllerConfig::default(),
            );
            c.set_desired(state(&ns.0, n, None, fw));
            let (d, r) = time(|| c.sync_full(0));
            let _ = r.unwrap();
            empty[k] = empty[k].min(d);
        }
        for (k, runner, fw) in [
            (0, vipmesh_nft::Runner::Process, Firewall::Nftables),
            (1, vipmesh_nft::Runner::Library, Firewall::Nftables),
            (2, vipmesh_nft::Runner::Process, Firewall::Iptables),
        ] {
            let ns = Ns::new("one");
            let cfg = ControllerConfig {
                observe: vipmesh::controller::ObserveMode::Cached,
                ..ControllerConfig::default()
            };
            let mut c = Controller::new(Bench { runner }, cfg);
            c.set_desired(state(&ns.0, n, None, fw));
            let _ = c.sync_full(0).unwrap();
            for (t, moved) in [Some(n / 2), None, Some(n / 2), None]
                .into_iter()
                .enumerate()
            {
                let now = 1 + t as u64;
                c.set_desired(state(&ns.0, n, moved, fw));
                let (d, r) = time(|| c.sync(now));
                let (_, report) = r.unwrap();
                if fw == Firewall::Nftables {
                    let nft_steps: Vec<_> = report
                        .steps
                        .iter()
                        .filter(|s| s.step.starts_with("nftables"))
                        .collect();
                    assert!(
                        nft_steps.len() == 1 && nft_steps[0].step.contains("(6 lines)"),
                        "two element lines: {report}"
                    );
                }
                one[k] = one[k].min(d);
            }
        }
    }
    // Docker's way: one rule changed at N rules, iptables -D + iptables -A.
    let ns = Ns::new("docker");
    let mut text = String::from("*mangle\n:DOCKER-BENCH - [0:0]\n");
    for i in 0..n {
        text.push_str(&format!(
            "-A DOCKER-BENCH -d {}/32 -j MARK --set-xmark {:#x}/0xffffffff\n",
            vip(i),
            0x100 + i
        ));
    }
    text.push_str("COMMIT\n");
    std::fs::write(format!("/tmp/{}.rules", ns.0), &text).unwrap();
    ns.run(
        "sh",
        &[
            "-c".into(),
            format!("iptables-restore < /tmp/{}.rules", ns.0),
        ],
    );
    let _ = std::fs::remove_file(format!("/tmp/{}.rules", ns.0));
    let i = n / 2;
    let mut docker = Duration::MAX;
    for round in 0..rounds * 2 {
        let (from, to) = if round % 2 == 0 {
            (0x100 + i, 0x0fff_0000 + i)
        } else {
            (0x0fff_0000 + i, 0x100 + i)
        };
        let (d, ()) = time(|| {
            for (op, mark) in [("-D", from), ("-A", to)] {
                let args: Vec<String> = [
                    "-t",
                    "mangle",
                    op,
                    "DOCKER-BENCH",
                    "-d",
                    &format!("{}/32", vip(i)),
                    "-j",
                    "MARK",
                    "--set-xmark",
                    &format!("{mark:#x}/0xffffffff"),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                ns.run("iptables", &args);
            }
        });
        docker = docker.min(d);
    }
    println!("N = {n} services, best of {rounds} rounds, through Controller (IPVS emulated)");
    println!(
        "  apply from empty, iptables (sync_full)      : {:>9.1} ms",
        ms(empty[0])
    );
    println!(
        "  apply from empty, nftables (sync_full)      : {:>9.1} ms   ratio {:.2} (goal <= 0.5)",
        ms(empty[1]),
        ms(empty[1]) / ms(empty[0])
    );
    println!(
        "  one VIP moved, nftables, Cached, nft process: {:>9.2} ms   {:.1}x faster than Docker",
        ms(one[0]),
        ms(docker) / ms(one[0])
    );
    println!(
        "  one VIP moved, nftables, Cached, libnftables: {:>9.2} ms   {:.1}x faster than Docker (goal <= 10 ms, >= 20x)",
        ms(one[1]),
        ms(docker) / ms(one[1])
    );
    println!(
        "  one VIP moved, iptables, Cached             : {:>9.2} ms   {:.1}x faster than Docker",
        ms(one[2]),
        ms(docker) / ms(one[2])
    );
    println!(
        "  Docker: iptables -D + iptables -A           : {:>9.2} ms",
        ms(docker)
    );
}
