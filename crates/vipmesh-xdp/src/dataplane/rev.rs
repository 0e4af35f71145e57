//! The reverse NAT entries (`rev_vips`): for each NAT backend, the services it serves, so
//! that `tc_rev` can restore the VIP on replies.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use super::{Dataplane, ServiceState};
use crate::{
    Error, abi,
    maps::MapLayer,
    model::{ForwardMode, Proto, ServiceKey, addr_to_abi},
};

/// A NAT backend as `rev_vips` keys it: address, target port, protocol.
pub(super) type RevKey = (IpAddr, u16, Proto);

/// The NAT backends of a service, as `rev_vips` keys them (its encap backends have none).
pub(super) fn rev_keys(state: &ServiceState) -> impl Iterator<Item = RevKey> + '_ {
    state
        .backend_ids
        .keys()
        .filter(move |k| state.mode_of(k) == ForwardMode::Nat)
        .map(|&(addr, port)| (addr, port, state.spec.key.proto))
}

impl<M: MapLayer> Dataplane<M> {
    /// The `rev_vips` entry of NAT backend `key` (`None`: it serves no NAT service), for the
    /// services programmed with `pending` in place of the service of the same key.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when more than [`abi::REV_VIPS`] NAT services share the backend.
    pub(super) fn rev_entry(
        &self,
        key: RevKey,
        pending: Option<&ServiceState>,
    ) -> Result<Option<abi::RevVips>, Error> {
        let (addr, port, proto) = key;
        let pending_key = pending.map(|p| p.spec.key);
        let mut vips: Vec<(ServiceKey, u32)> = self
            .services
            .values()
            .filter(|s| Some(s.spec.key) != pending_key)
            .chain(pending)
            .filter(|s| s.spec.key.proto == proto)
            .filter(|s| s.mode_of(&(addr, port)) == ForwardMode::Nat)
            .filter_map(|s| s.backend_ids.get(&(addr, port)).map(|&b| (s.spec.key, b)))
            .collect();
        vips.sort();
        if vips.len() > abi::REV_VIPS {
            return Err(Error::InvalidConfig {
                field: "backends",
                value: format!(
                    "{} ({proto:?}) in {}",
                    SocketAddr::new(addr, port),
                    vips.iter()
                        .map(|(k, _)| k.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                reason: "more than 4 NAT services share this backend address and port",
            });
        }
        let mut e = abi::RevVips::default();
        for (slot, (k, backend)) in e.v.iter_mut().zip(&vips) {
            *slot = abi::RevVip {
                vip: addr_to_abi(k.addr),
                vport: k.port.to_be(),
                pad: 0,
                backend: *backend,
            };
        }
        e.n = u32::try_from(vips.len()).unwrap_or(0);
        Ok((!vips.is_empty()).then_some(e))
    }

    /// The `rev_vips` entries of `keys` ([`Dataplane::rev_entry`]).
    pub(super) fn rev_entries(
        &self,
        keys: BTreeSet<RevKey>,
        pending: Option<&ServiceState>,
    ) -> Result<Vec<(RevKey, Option<abi::RevVips>)>, Error> {
        keys.into_iter()
            .map(|k| Ok((k, self.rev_entry(k, pending)?)))
            .collect()
    }

    /// Writes `rev_vips` entries (from [`Dataplane::rev_entries`]).
    pub(super) fn write_rev(
        &mut self,
        entries: Vec<(RevKey, Option<abi::RevVips>)>,
    ) -> Result<(), Error> {
        for ((addr, port, proto), e) in entries {
            let k = ServiceKey { addr, port, proto }.to_abi();
            self.maps.set_rev_vips(&k, e.as_ref())?;
        }
        Ok(())
    }
}
