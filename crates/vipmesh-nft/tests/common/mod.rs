//! Fixtures shared by the golden, host and guest tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};

use vipmesh_nft::*;

/// VIP `i` of a large fixture: 10.64.0.0 + i.
pub fn vip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a40_0000 + i))
}

/// The VIP entries of `n` services (every third one port-restricted, mark 0x100 + i).
pub fn vips(n: u32) -> Vec<VipMark> {
    (0..n)
        .map(|i| VipMark {
            vip: vip(i),
            port: (i % 3 == 2).then_some((Proto::TCP, 80 + (i % 7) as u16)),
            mark: 0x100 + i,
        })
        .collect()
}

/// A load-balancer sandbox's table: VIP marks on input and output, SNAT for the subnet.
pub fn lb_table(id: &str, vips: &[VipMark]) -> Table {
    let mut t = Table::new(NetworkId::new(id).unwrap());
    vip_marks(&mut t, &[Hook::Input, Hook::Output], vips).unwrap();
    ipvs_snat(
        &mut t,
        &[IpvsSnat {
            first_mark: 0x100,
            last_mark: 0x1ff_ffff,
            subnet: "10.0.0.0/24".parse().unwrap(),
            to: "10.0.0.2".parse().unwrap(),
        }],
    )
    .unwrap();
    t
}

/// Every builder in one table (as the ingress sandbox and a node would hold them, together
/// so one test covers the whole typed subset).
pub fn full_table(id: &str) -> Table {
    let mut t = Table::new(NetworkId::new(id).unwrap());
    vip_marks(
        &mut t,
        &[Hook::Prerouting, Hook::Output],
        &[
            VipMark {
                vip: "10.0.0.9".parse().unwrap(),
                port: None,
                mark: 0x100,
            },
            VipMark {
                vip: "10.0.0.20".parse().unwrap(),
                port: Some((Proto::TCP, 443)),
                mark: 0x101,
            },
            VipMark {
                vip: "10.0.0.20".parse().unwrap(),
                port: Some((Proto::UDP, 53)),
                mark: 0x102,
            },
            VipMark {
                vip: "fd00::9".parse().unwrap(),
                port: None,
                mark: 0x103,
            },
            VipMark {
                vip: "fd00::20".parse().unwrap(),
                port: Some((Proto::SCTP, 9)),
                mark: 0x104,
            },
        ],
    )
    .unwrap();
    ingress_port_marks(
        &mut t,
        &[
            PortMark {
                proto: Proto::TCP,
                port: 8080,
                mark: 0x105,
            },
            PortMark {
                proto: Proto::UDP,
                port: 5353,
                mark: 0x106,
            },
        ],
    )
    .unwrap();
    publish_dnat(
        &mut t,
        &[
            PublishedDnat {
                proto: Proto::TCP,
                port: 8080,
                to: "172.18.0.2:8080".parse().unwrap(),
            },
            PublishedDnat {
                proto: Proto::TCP,
                port: 8443,
                to: "[fd00:18::2]:443".parse().unwrap(),
            },
        ],
    )
    .unwrap();
    ipvs_snat(
        &mut t,
        &[
            IpvsSnat {
                first_mark: 0x100,
                last_mark: 0x1ff,
                subnet: "10.255.0.0/16".parse().unwrap(),
                to: "10.255.0.2".parse().unwrap(),
            },
            IpvsSnat {
                first_mark: 0x100,
                last_mark: 0x1ff,
                subnet: "fd00:ff::/64".parse().unwrap(),
                to: "fd00:ff::2".parse().unwrap(),
            },
        ],
    )
    .unwrap();
    task_ingress(
        &mut t,
        &IfName::new("eth1").unwrap(),
        &[
            TaskPort {
                proto: Proto::TCP,
                published: 8080,
                target: 80,
            },
            TaskPort {
                proto: Proto::UDP,
                published: 5353,
                target: 5353,
            },
        ],
    )
    .unwrap();
    t
}
