//! VIP allocation for the services of a cluster file that have none (`"mode": "vip"`).
//!
//! Pure: [`ClusterFile::allocate_vips`] takes the claims etcd holds
//! (`/vipmesh/v1/vips/<network>/<addr>`, read by [`claims`]) and gives each pending service
//! one VIP per subnet of its network. A service that already holds a claim in that subnet
//! keeps it, so applying the same file again changes nothing; otherwise it gets the lowest
//! address that is not the network's LB address, nor a VIP or a backend of any service of
//! the network in the file, nor claimed by another service (nor, in IPv4, the subnet's
//! network or broadcast address).
//!
//! Atomicity is etcd's: [`crate::store::Store::cluster_apply`] writes the services and
//! their claims in one transaction guarded by the modification revision of every
//! desired-state key (claims included) and by `create_revision == 0` on every claim it
//! creates. Two writers that read the same claims and picked the same address cannot both
//! commit: the second gets [`Error::CasLost`] and writes nothing. Since every apply rewrites
//! every claim from the services it writes, no two services of a network ever hold one VIP.
//!
//! # Examples
//! ```
//! use std::collections::BTreeMap;
//! use vipmesh_agent::layout::ClusterFile;
//! let f = ClusterFile::from_json(r#"{"networks": [{"id": "demo", "lb_netns": "lb-demo",
//!     "lb_interface": "eth0", "subnets": [{"subnet": "10.0.0.0/24", "lb_addr": "10.0.0.1"}],
//!     "services": [{"name": "vote", "mode": "vip", "backends": [{"addr": "10.0.0.2"}]}]}]}"#)?;
//! let (file, allocated) = f.allocate_vips(&BTreeMap::new())?;
//! assert_eq!(allocated, [("/vipmesh/v1/services/demo/vote".to_string(), "10.0.0.3".parse().unwrap())]);
//! assert!(file.pending_vips.is_empty());
//! # Ok::<(), vipmesh_agent::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;
use vipmesh::model::{EndpointMode, Family, Service, Subnet};

use crate::error::Error;
use crate::layout::{self, ClusterFile, Key, VipClaim};

/// VIP claims: (network, address) → the service holding it.
pub type Claims = BTreeMap<(String, IpAddr), String>;

/// How many addresses of a subnet are tried before it counts as full (an IPv6 /64 is never
/// scanned whole).
pub const MAX_SCAN: u128 = 1 << 20;

/// The claims of a snapshot (keys and values as etcd holds them); values that do not parse
/// are left out (an agent reports them).
pub fn claims(kvs: &BTreeMap<Vec<u8>, Vec<u8>>) -> Claims {
    let mut out = Claims::new();
    let start = layout::VIPS_PREFIX.as_bytes().to_vec();
    for (k, v) in kvs.range(start..) {
        if !k.starts_with(layout::VIPS_PREFIX.as_bytes()) {
            break;
        }
        let Ok(key) = std::str::from_utf8(k) else {
            continue;
        };
        if let (Ok(Key::VipClaim { network, addr }), Ok(c)) = (
            layout::parse_key(key),
            serde_json::from_slice::<VipClaim>(v),
        ) {
            out.insert((network.to_string(), addr), c.service);
        }
    }
    out
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(f: Family, v: u128) -> Option<IpAddr> {
    match f {
        Family::V4 => u32::try_from(v).ok().map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        Family::V6 => Some(IpAddr::V6(Ipv6Addr::from(v))),
    }
}

/// The candidates of a subnet in order: IPv4 without its network and broadcast addresses
/// (a /31 or /32 has none to give), IPv6 without the subnet-router anycast address.
fn candidates(s: &Subnet) -> impl Iterator<Item = IpAddr> + use<> {
    let family = s.family();
    let bits: u32 = match family {
        Family::V4 => 32,
        Family::V6 => 128,
    };
    let host_bits = bits - u32::from(s.prefix());
    let size: u128 = if host_bits >= 128 {
        u128::MAX
    } else {
        1u128 << host_bits
    };
    let base = to_u128(s.addr());
    let last = match family {
        Family::V4 => size.saturating_sub(1),
        Family::V6 => size,
    };
    (1..last.min(MAX_SCAN + 1)).filter_map(move |i| from_u128(family, base.checked_add(i)?))
}

impl ClusterFile {
    /// Gives every pending service (`"mode": "vip"`) its VIPs, given the claims etcd
    /// holds. Returns the file without pending services, and each allocated address with
    /// its service's key, in key order.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the service's key: its network is not in the file, a subnet
    /// has no free address left, or the service is invalid with its VIPs.
    pub fn allocate_vips(
        &self,
        claims: &Claims,
    ) -> Result<(ClusterFile, Vec<(String, IpAddr)>), Error> {
        let mut file = self.clone();
        let mut pending = std::mem::take(&mut file.pending_vips);
        pending.sort_by(|a, b| (&a.network, &a.name).cmp(&(&b.network, &b.name)));
        let mut allocated = Vec::new();
        // Addresses in use per network: LB addresses, VIPs and backends in the file.
        let mut used: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        for n in &file.networks {
            let u = used.entry(n.id.as_str().to_string()).or_default();
            u.extend(n.subnets.iter().map(|s| s.lb_addr));
            for s in &n.services {
                if let EndpointMode::Vip(v) = &s.mode {
                    u.extend(v.iter());
                }
                u.extend(s.backends.iter().map(|b| b.addr));
            }
        }
        for p in &pending {
            used.entry(p.network.clone())
                .or_default()
                .extend(backend_addrs(&p.value));
        }
        for p in pending {
            let key = layout::service_key(&p.network, &p.name);
            let Some(net) = file
                .networks
                .iter_mut()
                .find(|n| n.id.as_str() == p.network)
            else {
                return Err(Error::invalid(
                    key,
                    format!(
                        "no network {:?} in the file to allocate its VIP from",
                        p.network
                    ),
                ));
            };
            let u = used.entry(p.network.clone()).or_default();
            let mut vips = Vec::new();
            for sub in &net.subnets {
                let held = claims.iter().find(|((n, a), s)| {
                    *n == p.network && **s == p.name && sub.subnet.contains(*a) && !u.contains(a)
                });
                let addr = match held {
                    Some(((_, a), _)) => *a,
                    None => candidates(&sub.subnet)
                        .find(|a| {
                            !u.contains(a)
                                && claims
                                    .get(&(p.network.clone(), *a))
                                    .is_none_or(|s| *s == p.name)
                        })
                        .ok_or_else(|| {
                            Error::invalid(&key, format!("no free address left in {}", sub.subnet))
                        })?,
                };
                u.insert(addr);
                vips.push(addr);
                allocated.push((key.clone(), addr));
            }
            let mut value = p.value;
            value.insert(
                "mode".into(),
                serde_json::json!({ "vip": vips.iter().map(ToString::to_string).collect::<Vec<_>>() }),
            );
            let svc: Service = serde_json::from_value(Value::Object(value))
                .map_err(|e| Error::invalid(&key, e.to_string()))?;
            net.services.push(svc);
        }
        Ok((file, allocated))
    }
}

fn backend_addrs(v: &serde_json::Map<String, Value>) -> Vec<IpAddr> {
    v.get("backends")
        .and_then(Value::as_array)
        .map(|bs| {
            bs.iter()
                .filter_map(|b| b.get("addr")?.as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn file(services: &str) -> ClusterFile {
        ClusterFile::from_json(&format!(
            r#"{{"networks": [{{"id": "demo", "lb_netns": "lb-demo", "lb_interface": "eth0",
                "subnets": [{{"subnet": "10.0.0.0/29", "lb_addr": "10.0.0.1"}},
                            {{"subnet": "fd00::/120", "lb_addr": "fd00::1"}}],
                "services": [{services}]}}]}}"#
        ))
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_pending_service_gets_the_lowest_free_address_of_each_subnet() {
        let f = file(
            r#"{"name": "a", "mode": {"vip": ["10.0.0.2", "fd00::2"]}},
               {"name": "b", "mode": "vip", "backends": [{"addr": "10.0.0.3"}]}"#,
        );
        assert_eq!(f.pending_vips.len(), 1);
        assert!(f.to_kvs().is_err(), "not allocated yet");
        let mut claims = Claims::new();
        claims.insert(("demo".into(), ip("10.0.0.4")), "other".into());
        let (g, got) = f.allocate_vips(&claims).unwrap();
        let k = "/vipmesh/v1/services/demo/b".to_string();
        assert_eq!(got, [(k.clone(), ip("10.0.0.5")), (k, ip("fd00::3"))]);
        let kvs = g.to_kvs().unwrap();
        assert!(kvs.contains_key("/vipmesh/v1/vips/demo/10.0.0.5"));
        assert!(kvs.contains_key("/vipmesh/v1/vips/demo/10.0.0.2"));
        assert_eq!(kvs["/vipmesh/v1/vips/demo/fd00::3"], r#"{"service":"b"}"#);
    }

    #[test]
    fn a_service_keeps_its_claim_and_a_full_subnet_is_an_error_naming_the_service() {
        let f = file(r#"{"name": "b", "mode": "vip"}"#);
        let mut claims = Claims::new();
        claims.insert(("demo".into(), ip("10.0.0.6")), "b".into());
        claims.insert(("demo".into(), ip("fd00::9")), "b".into());
        let (_, got) = f.allocate_vips(&claims).unwrap();
        assert_eq!(
            got.iter().map(|x| x.1).collect::<Vec<_>>(),
            [ip("10.0.0.6"), ip("fd00::9")]
        );
        // 10.0.0.0/29: .1 is the LB address, .2 .. .6 taken, .7 is the broadcast address.
        for a in 2..=6 {
            claims.insert(("demo".into(), ip(&format!("10.0.0.{a}"))), format!("s{a}"));
        }
        let e = f.allocate_vips(&claims).unwrap_err().to_string();
        assert!(
            e.contains("/vipmesh/v1/services/demo/b") && e.contains("10.0.0.0/29"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_network_is_named() {
        let mut f = file("");
        f.pending_vips.push(crate::layout::PendingVip {
            network: "nope".into(),
            name: "x".into(),
            value: serde_json::Map::new(),
        });
        let e = f.allocate_vips(&Claims::new()).unwrap_err().to_string();
        assert!(e.contains("services/nope/x"), "{e}");
    }
}
