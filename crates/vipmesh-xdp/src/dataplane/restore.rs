//! Rebuilding the ids from what pinned maps hold ([`Dataplane::restore`]).

use std::collections::{BTreeMap, BTreeSet};

use super::rev::rev_keys;
use super::{Dataplane, ServiceState};
use crate::{
    Error, abi,
    maps::MapLayer,
    model::{Backend, Egress, ForwardMode, MacAddr, Proto, ServiceKey, ServiceSpec, addr_from_abi},
};

/// The service key of a `vm_svc_key`, unless its protocol is neither TCP nor UDP.
fn key_from_abi(k: &abi::SvcKey) -> Option<ServiceKey> {
    let proto = match k.proto {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        _ => return None,
    };
    Some(ServiceKey {
        addr: addr_from_abi(k.addr, k.family),
        port: u16::from_be(k.port),
        proto,
    })
}

impl<M: MapLayer> Dataplane<M> {
    /// Rebuilds the service and backend ids from what the maps hold, after a restart with
    /// pinned maps ([`crate::Pinning`]). Re-applying the same services then keeps every id, so
    /// the flows in the pinned flow table keep pointing at the right backends. Valid backends
    /// that no table uses stay reserved. Returns the number of services restored; weights come
    /// back as 1 until the next [`Dataplane::upsert_service`].
    ///
    /// # Errors
    ///
    /// Map errors.
    pub fn restore(&mut self) -> Result<usize, Error> {
        let dump = self.maps.dump()?;
        self.tx_slots = dump
            .tx_ports
            .iter()
            .map(|(&slot, &ifindex)| (ifindex, slot))
            .collect();
        self.used_backend_ids = dump.backends.keys().copied().collect();
        // Task side: VIP:published -> target, so that a new target replaces the old one.
        self.task_targets = dump
            .task_egress
            .iter()
            .filter_map(|(k, &published)| {
                let t = key_from_abi(k)?;
                Some((
                    ServiceKey {
                        port: published,
                        ..t
                    },
                    t.port,
                ))
            })
            .collect();
        self.gens = dump
            .backends
            .iter()
            .map(|(&id, b)| (id, b.generation))
            .collect();
        self.next_gen = self
            .gens
            .values()
            .max()
            .map_or(1, |g| g.wrapping_add(1).max(1));
        self.services.clear();
        let mut words = BTreeSet::new();
        for (k, v, table) in &dump.services {
            let Some(key) = key_from_abi(k) else {
                continue;
            };
            let mode = if v.mode == abi::MODE_ENCAP {
                ForwardMode::Encap
            } else {
                ForwardMode::Nat
            };
            let ids: BTreeSet<u32> = table.iter().copied().collect();
            let mut backend_ids = BTreeMap::new();
            let mut modes = BTreeMap::new();
            let mut backends = Vec::new();
            for id in ids {
                let Some(b) = dump.backends.get(&id) else {
                    continue;
                };
                let addr = addr_from_abi(b.addr, b.family);
                let port = u16::from_be(b.port);
                backend_ids.insert((addr, port), id);
                modes.insert(
                    (addr, port),
                    if b.mode == abi::MODE_ENCAP {
                        ForwardMode::Encap
                    } else {
                        ForwardMode::Nat
                    },
                );
                backends.push(Backend {
                    addr,
                    port,
                    weight: 1,
                    egress: Egress {
                        ifindex: dump.tx_ports.get(&b.tx_slot).copied().unwrap_or(0),
                        src_mac: MacAddr(b.smac),
                        dst_mac: MacAddr(b.dmac),
                    },
                });
            }
            let table_size = u32::try_from(table.len())
                .ok()
                .and_then(|m| vipmesh_maglev::TableSize::new(m).ok())
                .unwrap_or(vipmesh_maglev::TableSize::DEFAULT);
            let spec = ServiceSpec {
                key,
                mode,
                backends,
                table_size,
            };
            self.services.insert(
                key,
                ServiceState {
                    id: v.id,
                    spec,
                    backend_ids,
                    modes,
                },
            );
            words.extend(abi::filter_bits(&key.to_abi()).map(|(w, _)| w));
        }
        // The filter and the reverse-path entries are pinned with the rest; rewriting them heals
        // a half-written state.
        for w in words {
            self.maps.set_filter_word(w, self.filter_word(w))?;
        }
        let keys = self.services.values().flat_map(rev_keys).collect();
        let rev = self.rev_entries(keys, None)?;
        self.write_rev(rev)?;
        tracing::info!(
            services = self.services.len(),
            backends = self.used_backend_ids.len(),
            "dataplane state restored from the maps"
        );
        Ok(self.services.len())
    }
}
