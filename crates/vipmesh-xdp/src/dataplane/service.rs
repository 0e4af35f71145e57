//! Programming services: validation, id and slot allocation, the Maglev table, and the
//! ordered writes of [`Dataplane::upsert_service`] and [`Dataplane::remove_service`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use vipmesh_maglev::{BackendId, BackendKey, MaglevTable, Weight};

use super::rev::rev_keys;
use super::{Dataplane, ServiceReport, ServiceState};
use crate::{
    Error, abi,
    maps::{MapLayer, StatsMap},
    model::{ForwardMode, ServiceKey, ServiceSpec, addr_to_abi, family},
};

fn lowest_free(used: impl Iterator<Item = u32>, cap: u32) -> Option<u32> {
    let mut next = 0u32;
    for u in used {
        if u != next {
            break;
        }
        next += 1;
    }
    (next < cap).then_some(next)
}

impl<M: MapLayer> Dataplane<M> {
    fn validate(
        &self,
        spec: &ServiceSpec,
        modes: &BTreeMap<(IpAddr, u16), ForwardMode>,
    ) -> Result<(), Error> {
        let mode_of =
            |b: &crate::model::Backend| modes.get(&(b.addr, b.port)).copied().unwrap_or(spec.mode);
        let fam = family(spec.key.addr);
        if spec.key.port == 0 {
            return Err(Error::InvalidConfig {
                field: "service.port",
                value: spec.key.to_string(),
                reason: "port 0",
            });
        }
        let mut seen = BTreeSet::new();
        for b in &spec.backends {
            let value = || format!("{} in {}", SocketAddr::new(b.addr, b.port), spec.key);
            if family(b.addr) != fam {
                return Err(Error::InvalidConfig {
                    field: "backend.addr",
                    value: value(),
                    reason: "address family differs from the service's",
                });
            }
            if mode_of(b) == ForwardMode::Nat && b.port == 0 {
                return Err(Error::InvalidConfig {
                    field: "backend.port",
                    value: value(),
                    reason: "NAT mode needs a target port",
                });
            }
            if b.egress.ifindex == 0 {
                return Err(Error::InvalidConfig {
                    field: "backend.egress.ifindex",
                    value: value(),
                    reason: "ifindex 0",
                });
            }
            if !seen.insert((b.addr, b.port)) {
                return Err(Error::InvalidConfig {
                    field: "backends",
                    value: value(),
                    reason: "duplicate backend",
                });
            }
        }
        if spec
            .backends
            .iter()
            .any(|b| mode_of(b) == ForwardMode::Encap)
        {
            let missing = match spec.key.addr {
                IpAddr::V4(_) => self.config.node_v4.is_none(),
                IpAddr::V6(_) => self.config.node_v6.is_none(),
            };
            if missing {
                return Err(Error::InvalidConfig {
                    field: "config.node_v4/node_v6",
                    value: spec.key.to_string(),
                    reason: "encap mode needs the node's address of that family",
                });
            }
        }
        Ok(())
    }

    /// Creates or replaces a service.
    ///
    /// Order of writes: egress ports, backend entries, the Maglev table (one atomic swap), the
    /// service entry, then retired backends are invalidated. A packet sees either the old
    /// service or the new one. Flows already in the flow table stay on their backend while it
    /// remains; flows of a removed backend are re-hashed.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] (family mismatch, duplicate backend, missing node address),
    /// [`Error::Table`] (table size too small for the backends), [`Error::MapFull`] (too many
    /// services, backends or egress interfaces) — all before anything is written — and map
    /// errors.
    pub fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<ServiceReport, Error> {
        self.upsert_service_modes(spec, &BTreeMap::new())
    }

    /// [`Dataplane::upsert_service`] with a forwarding mode per backend: `modes` overrides
    /// [`ServiceSpec::mode`] for the backends it names (by address and target port), so one
    /// service can NAT to the tasks on this node and encapsulate towards the tasks on other
    /// nodes (the ingress mesh). The backend entry of an encap backend keeps its port (the
    /// program ignores it; a restart reads it back, so the backend keeps its id).
    ///
    /// # Errors
    ///
    /// As [`Dataplane::upsert_service`].
    pub fn upsert_service_modes(
        &mut self,
        spec: &ServiceSpec,
        modes: &BTreeMap<(IpAddr, u16), ForwardMode>,
    ) -> Result<ServiceReport, Error> {
        self.validate(spec, modes)?;
        let resolved: BTreeMap<(IpAddr, u16), ForwardMode> = spec
            .backends
            .iter()
            .map(|b| {
                let k = (b.addr, b.port);
                (k, modes.get(&k).copied().unwrap_or(spec.mode))
            })
            .collect();
        let old = self.services.get(&spec.key);
        let id = match old {
            Some(s) => s.id,
            None => lowest_free(
                self.services
                    .values()
                    .map(|s| s.id)
                    .collect::<BTreeSet<_>>()
                    .into_iter(),
                abi::MAX_SERVICES,
            )
            .ok_or(Error::MapFull {
                map: "services",
                capacity: abi::MAX_SERVICES,
            })?,
        };
        // Backend ids: keep those of backends that stay, allocate the rest.
        let mut used = self.used_backend_ids.clone();
        let mut ids = BTreeMap::new();
        for b in &spec.backends {
            let k = (b.addr, b.port);
            let existing = old.and_then(|s| s.backend_ids.get(&k).copied());
            let bid = match existing {
                Some(i) => i,
                None => {
                    let i = lowest_free(used.iter().copied(), abi::MAX_BACKENDS).ok_or(
                        Error::MapFull {
                            map: "backends",
                            capacity: abi::MAX_BACKENDS,
                        },
                    )?;
                    used.insert(i);
                    i
                }
            };
            ids.insert(k, bid);
        }
        let removed: Vec<u32> = old
            .map(|s| {
                s.backend_ids
                    .iter()
                    .filter(|(k, _)| !ids.contains_key(k))
                    .map(|(_, &v)| v)
                    .collect()
            })
            .unwrap_or_default();
        // Egress slots.
        let mut tx = self.tx_slots.clone();
        for b in &spec.backends {
            if !tx.contains_key(&b.egress.ifindex) {
                let s = lowest_free(
                    tx.values().copied().collect::<BTreeSet<_>>().into_iter(),
                    abi::MAX_TX_PORTS,
                )
                .ok_or(Error::MapFull {
                    map: "tx_ports",
                    capacity: abi::MAX_TX_PORTS,
                })?;
                tx.insert(b.egress.ifindex, s);
            }
        }
        // The table (pure; errors before any write).
        let mbackends: Vec<vipmesh_maglev::Backend> = spec
            .backends
            .iter()
            .map(|b| {
                vipmesh_maglev::Backend::new(
                    BackendId::new(ids[&(b.addr, b.port)]),
                    BackendKey::from_socket_addr(SocketAddr::new(b.addr, b.port)),
                    Weight::new(b.weight),
                )
            })
            .collect();
        let table =
            MaglevTable::build(spec.table_size, &mbackends).map_err(|source| Error::Table {
                service: spec.key.to_string(),
                source,
            })?;
        let slots: BTreeMap<u32, u32> = table
            .slot_counts()
            .into_iter()
            .map(|(k, v)| (k.get(), v))
            .collect();

        // Generations: kept ids keep theirs (their flows stay), new ids get fresh ones.
        let mut gens = BTreeMap::new();
        let mut fresh = BTreeSet::new();
        let mut next_gen = self.next_gen;
        for &bid in ids.values() {
            let kept = old.is_some_and(|s| s.backend_ids.values().any(|&v| v == bid));
            let generation = match self.gens.get(&bid) {
                Some(&g) if kept => g,
                _ => {
                    let g = next_gen;
                    next_gen = next_gen.wrapping_add(1).max(1);
                    fresh.insert(bid);
                    g
                }
            };
            gens.insert(bid, generation);
        }

        let abi_mode = |m: ForwardMode| match m {
            ForwardMode::Nat => abi::MODE_NAT,
            ForwardMode::Encap => abi::MODE_ENCAP,
        };
        let mode = abi_mode(spec.mode);
        // The reverse-path entries of the backends that come, stay or go (errors before writes).
        let next = ServiceState {
            id,
            spec: spec.clone(),
            backend_ids: ids.clone(),
            modes: resolved.clone(),
        };
        let affected = rev_keys(&next)
            .chain(old.into_iter().flat_map(rev_keys))
            .collect();
        let rev = self.rev_entries(affected, Some(&next))?;

        // Writes. New ids start with zeroed statistics, not those of their last holder.
        if old.is_none() {
            self.maps.reset_stats(StatsMap::Service, id)?;
        }
        for &bid in &fresh {
            self.maps.reset_stats(StatsMap::Backend, bid)?;
        }
        for b in &spec.backends {
            let slot = tx[&b.egress.ifindex];
            if self.tx_slots.get(&b.egress.ifindex) != Some(&slot) {
                self.maps.set_tx_port(slot, b.egress.ifindex)?;
                self.tx_slots.insert(b.egress.ifindex, slot);
            }
        }
        for b in &spec.backends {
            let bmode = resolved
                .get(&(b.addr, b.port))
                .copied()
                .unwrap_or(spec.mode);
            let entry = abi::BackendEntry {
                addr: addr_to_abi(b.addr),
                port: b.port.to_be(),
                family: family(b.addr),
                flags: abi::BACKEND_VALID,
                tx_slot: tx[&b.egress.ifindex],
                smac: b.egress.src_mac.0,
                dmac: b.egress.dst_mac.0,
                generation: gens[&ids[&(b.addr, b.port)]],
                mode: abi_mode(bmode),
                pad: [0; 3],
            };
            self.maps.set_backend(ids[&(b.addr, b.port)], &entry)?;
            self.gens.insert(ids[&(b.addr, b.port)], entry.generation);
        }
        self.next_gen = next_gen;
        self.used_backend_ids.extend(ids.values().copied());
        self.write_rev(rev)?;
        self.maps.swap_table(id, table.as_slice())?;
        for (word, bit) in abi::filter_bits(&spec.key.to_abi()) {
            self.maps
                .set_filter_word(word, self.filter_word(word) | bit)?;
        }
        self.maps.set_service(
            &spec.key.to_abi(),
            &abi::Svc {
                id,
                mode,
                flags: 0,
                pad: 0,
            },
        )?;
        for &r in &removed {
            self.maps.set_backend(r, &abi::BackendEntry::default())?;
            // Its counts stay in the service's totals (see Dataplane::service_stats).
            let s = self.maps.backend_stats(r)?;
            self.maps.add_service_stats(id, s)?;
            self.used_backend_ids.remove(&r);
            self.gens.remove(&r);
        }
        tracing::info!(service = %spec.key, id, backends = ids.len(), removed = removed.len(), "service programmed");
        self.services.insert(spec.key, next);
        Ok(ServiceReport {
            key: spec.key,
            id,
            backends: ids,
            slots,
            removed,
        })
    }

    /// Removes a service; removing an absent service is success.
    ///
    /// # Errors
    ///
    /// Map errors.
    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<(), Error> {
        let Some(state) = self.services.get(key) else {
            return self.maps.remove_service(&key.to_abi());
        };
        let (id, bids): (u32, Vec<u32>) = (state.id, state.backend_ids.values().copied().collect());
        self.maps.remove_service(&key.to_abi())?;
        self.maps.swap_table(id, &[])?;
        for b in bids {
            self.maps.set_backend(b, &abi::BackendEntry::default())?;
            self.used_backend_ids.remove(&b);
            self.gens.remove(&b);
        }
        let gone = self.services.remove(key);
        for (word, _) in abi::filter_bits(&key.to_abi()) {
            self.maps.set_filter_word(word, self.filter_word(word))?;
        }
        let rev = self.rev_entries(gone.iter().flat_map(rev_keys).collect(), None)?;
        self.write_rev(rev)?;
        tracing::info!(service = %key, id, "service removed");
        Ok(())
    }
}
