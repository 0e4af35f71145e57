//! The service-discovery view of a desired state (feature `dns`).
//!
//! VIP services answer with their VIP (and `tasks.NAME` with the tasks); DNS round-robin
//! services answer with their tasks, shuffled per query. See `vipmesh-dns` for the server.

use crate::error::Error;
use crate::model::{EndpointMode, NetworkState};

/// Builds the DNS table of one network for `zone` (e.g. `mesh.local.`): service discovery is
/// scoped per network, as Swarm's embedded DNS is.
///
/// # Errors
/// [`Error::Dns`] naming `dns.zone` or the service when the DNS layer rejects it.
///
/// # Examples
/// ```
/// use vipmesh::model::*;
/// let net = Network::new("demo", "10.0.0.0/24".parse()?, "lb", "eth0",
///     "10.0.0.2".parse().unwrap())?;
/// let vote = Service::vip("vote", "10.0.0.9".parse().unwrap(), &["10.0.0.10".parse().unwrap()])?;
/// let desired = NetworkState::new(net, vec![vote])?;
/// let table = vipmesh::dns::table(&desired, "mesh.local.")?;
/// assert_eq!(table.len(), 1);
/// # Ok::<(), vipmesh::Error>(())
/// ```
pub fn table(desired: &NetworkState, zone: &str) -> Result<vipmesh_dns::DnsTable, Error> {
    let bad = |field: &'static str, value: &str, e: vipmesh_dns::Error| Error::Dns {
        field,
        value: value.to_string(),
        source: Box::new(e),
    };
    let mut b = vipmesh_dns::DnsTable::builder(zone).map_err(|e| bad("dns.zone", zone, e))?;
    for s in desired.services() {
        let name = s.name.as_str();
        let tasks: Vec<_> = s.backends.iter().map(|b| b.addr).collect();
        b = match s.mode {
            EndpointMode::Vip(vips) => b
                .vip(name, vips.iter())
                .and_then(|b| b.tasks(name, tasks))
                .map_err(|e| bad("service.name", name, e))?,
            EndpointMode::DnsRr => b
                .dnsrr(name, tasks)
                .map_err(|e| bad("service.name", name, e))?,
            // Published ports are reached through the nodes' addresses, not by name.
            EndpointMode::Published => b,
        };
    }
    Ok(b.build())
}
