//! The VIP lab's network for vipmesh, built from the lab's plain values (the testkit knows
//! nothing of vipmesh). Shared by the guest tests and the vip/dnsrr demos.
#![allow(dead_code, clippy::unwrap_used)]

use vipmesh::model::Network;
use vipmesh_testkit::vip::VipLab;

/// Network `lab` on the lab's subnet, its LB namespace, interface and address.
pub fn network(lab: &VipLab) -> Network {
    Network::new(
        "lab",
        lab.subnet_cidr().parse().unwrap(),
        &lab.lb,
        &lab.lb_interface,
        lab.lb_addr,
    )
    .unwrap()
}
