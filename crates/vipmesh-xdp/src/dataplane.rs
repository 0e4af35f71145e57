//! The pure logic of the fast path: validates services, allocates ids, builds Maglev tables and
//! writes them through a [`MapLayer`] in an order that never exposes a half-applied state.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use vipmesh_maglev::{BackendId, BackendKey, MaglevTable, Weight};

use crate::{
    Error, abi,
    maps::{Counters, MapLayer, StatsMap, TaskPortMap},
    model::{
        Backend, Config, Egress, ForwardMode, MacAddr, Proto, ServiceKey, ServiceSpec, Stats,
        addr_from_abi, addr_to_abi, family,
    },
};

#[derive(Clone, Debug)]
struct ServiceState {
    id: u32,
    spec: ServiceSpec,
    /// Backend id per (addr, port).
    backend_ids: BTreeMap<(IpAddr, u16), u32>,
}

/// What [`Dataplane::upsert_service`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceReport {
    /// The service.
    pub key: ServiceKey,
    /// Its id in the maps.
    pub id: u32,
    /// Backend ids by (address, port).
    pub backends: BTreeMap<(IpAddr, u16), u32>,
    /// Maglev slots per backend id (empty when there is no backend of non-zero weight).
    pub slots: BTreeMap<u32, u32>,
    /// Backend ids retired by this update.
    pub removed: Vec<u32>,
}

/// The fast path's desired state, kept in step with the kernel maps.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use vipmesh_xdp::{Dataplane, Config, ServiceSpec, ServiceKey, Proto, ForwardMode, Backend,
///     Egress, MacAddr, testing::FakeMaps};
/// use vipmesh_maglev::TableSize;
///
/// let mut dp = Dataplane::new(FakeMaps::default(), Config::default())?;
/// let egress = Egress { ifindex: 7, src_mac: MacAddr::default(), dst_mac: MacAddr::default() };
/// let report = dp.upsert_service(&ServiceSpec {
///     key: ServiceKey { addr: "10.0.0.1".parse().unwrap(), port: 80, proto: Proto::Tcp },
///     mode: ForwardMode::Nat,
///     backends: vec![Backend { addr: "10.1.0.2".parse().unwrap(), port: 8080, weight: 1, egress }],
///     table_size: TableSize::new(251)?,
/// })?;
/// assert_eq!(report.slots.values().sum::<u32>(), 251);
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Dataplane<M> {
    maps: M,
    config: Config,
    services: BTreeMap<ServiceKey, ServiceState>,
    used_backend_ids: BTreeSet<u32>,
    /// Task side: the target port of each published VIP ([`Dataplane::set_task_port`]).
    task_targets: BTreeMap<ServiceKey, u16>,
    /// Generation of each allocated backend id ([`abi::BackendEntry::generation`]).
    gens: BTreeMap<u32, u32>,
    next_gen: u32,
    tx_slots: BTreeMap<u32, u32>,
}

/// A NAT backend as `rev_vips` keys it: address, target port, protocol.
type RevKey = (IpAddr, u16, Proto);

/// The NAT backends of a service, as `rev_vips` keys them (none in encap mode).
fn rev_keys(state: &ServiceState) -> impl Iterator<Item = RevKey> + '_ {
    let nat = state.spec.mode == ForwardMode::Nat;
    state
        .backend_ids
        .keys()
        .filter(move |_| nat)
        .map(|&(addr, port)| (addr, port, state.spec.key.proto))
}

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
    /// Wraps a map layer and writes the configuration.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for invalid timeouts; map errors.
    pub fn new(mut maps: M, config: Config) -> Result<Self, Error> {
        maps.set_config(&config.to_abi()?)?;
        Ok(Dataplane {
            maps,
            config,
            services: BTreeMap::new(),
            used_backend_ids: BTreeSet::new(),
            task_targets: BTreeMap::new(),
            gens: BTreeMap::new(),
            next_gen: 1,
            tx_slots: BTreeMap::new(),
        })
    }

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
            let mut backends = Vec::new();
            for id in ids {
                let Some(b) = dump.backends.get(&id) else {
                    continue;
                };
                let addr = addr_from_abi(b.addr, b.family);
                let port = u16::from_be(b.port);
                backend_ids.insert((addr, port), id);
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

    /// The `rev_vips` entry of NAT backend `key` (`None`: it serves no NAT service), for the
    /// services programmed with `pending` in place of the service of the same key.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when more than [`abi::REV_VIPS`] NAT services share the backend.
    fn rev_entry(
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
            .filter(|s| s.spec.mode == ForwardMode::Nat && s.spec.key.proto == proto)
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
    fn rev_entries(
        &self,
        keys: BTreeSet<RevKey>,
        pending: Option<&ServiceState>,
    ) -> Result<Vec<(RevKey, Option<abi::RevVips>)>, Error> {
        keys.into_iter()
            .map(|k| Ok((k, self.rev_entry(k, pending)?)))
            .collect()
    }

    /// Writes `rev_vips` entries (from [`Dataplane::rev_entries`]).
    fn write_rev(&mut self, entries: Vec<(RevKey, Option<abi::RevVips>)>) -> Result<(), Error> {
        for ((addr, port, proto), e) in entries {
            let k = ServiceKey { addr, port, proto }.to_abi();
            self.maps.set_rev_vips(&k, e.as_ref())?;
        }
        Ok(())
    }

    /// Word `word` of the `svc_filter` bitmaps for the services programmed.
    fn filter_word(&self, word: u32) -> u32 {
        self.services
            .keys()
            .flat_map(|k| abi::filter_bits(&k.to_abi()))
            .filter(|&(w, _)| w == word)
            .fold(0, |acc, (_, bit)| acc | bit)
    }

    /// The map layer.
    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// The map layer, mutably (for direct task-port writes and tests).
    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Replaces the configuration.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`]; map errors.
    pub fn set_config(&mut self, config: Config) -> Result<(), Error> {
        self.maps.set_config(&config.to_abi()?)?;
        self.config = config;
        Ok(())
    }

    fn validate(&self, spec: &ServiceSpec) -> Result<(), Error> {
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
            if spec.mode == ForwardMode::Nat && b.port == 0 {
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
        if spec.mode == ForwardMode::Encap {
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
        self.validate(spec)?;
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

        let mode = match spec.mode {
            ForwardMode::Nat => abi::MODE_NAT,
            ForwardMode::Encap => abi::MODE_ENCAP,
        };
        // The reverse-path entries of the backends that come, stay or go (errors before writes).
        let next = ServiceState {
            id,
            spec: spec.clone(),
            backend_ids: ids.clone(),
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
            let entry = abi::BackendEntry {
                addr: addr_to_abi(b.addr),
                port: if spec.mode == ForwardMode::Nat {
                    b.port.to_be()
                } else {
                    0
                },
                family: family(b.addr),
                flags: abi::BACKEND_VALID,
                tx_slot: tx[&b.egress.ifindex],
                smac: b.egress.src_mac.0,
                dmac: b.egress.dst_mac.0,
                generation: gens[&ids[&(b.addr, b.port)]],
                mode,
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

    /// The specs currently programmed, in key order.
    pub fn services(&self) -> impl Iterator<Item = &ServiceSpec> {
        self.services.values().map(|s| &s.spec)
    }

    /// Sets the task side of encap service `vip` (`vip.port` is the published port): packets to
    /// `vip:published` are delivered to `vip:target`, and replies from `vip:target` leave as
    /// `vip:published` with the MSS of their SYN-ACK clamped to [`Config::encap_mtu`] (the
    /// client's segments to the task are the ones the node encapsulates). With
    /// `target == published` only the clamping stays. A later call with another target
    /// replaces the earlier one.
    ///
    /// # Errors
    ///
    /// Map errors.
    pub fn set_task_port(&mut self, vip: ServiceKey, target: u16) -> Result<(), Error> {
        let translate = (target != vip.port).then_some(target);
        let tkey = ServiceKey {
            port: target,
            ..vip
        };
        if let Some(&old) = self.task_targets.get(&vip).filter(|&&old| old != target) {
            let okey = ServiceKey { port: old, ..vip };
            self.maps
                .set_task_port(TaskPortMap::Egress, &okey.to_abi(), None)?;
        }
        self.maps
            .set_task_port(TaskPortMap::Ingress, &vip.to_abi(), translate)?;
        self.maps
            .set_task_port(TaskPortMap::Egress, &tkey.to_abi(), Some(vip.port))?;
        self.task_targets.insert(vip, target);
        Ok(())
    }

    /// Statistics of a service.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownService`]; map errors.
    pub fn service_stats(&self, key: &ServiceKey) -> Result<Stats, Error> {
        let s = self
            .services
            .get(key)
            .ok_or_else(|| Error::UnknownService {
                service: key.to_string(),
            })?;
        self.maps.service_stats(s.id)
    }

    /// Statistics per backend (address, port) of a service.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownService`]; map errors.
    pub fn backend_stats(&self, key: &ServiceKey) -> Result<BTreeMap<(IpAddr, u16), Stats>, Error> {
        let s = self
            .services
            .get(key)
            .ok_or_else(|| Error::UnknownService {
                service: key.to_string(),
            })?;
        s.backend_ids
            .iter()
            .map(|(k, &id)| Ok((*k, self.maps.backend_stats(id)?)))
            .collect()
    }

    /// The global counters.
    ///
    /// # Errors
    ///
    /// Map errors.
    pub fn counters(&self) -> Result<Counters, Error> {
        self.maps.counters()
    }
}

#[cfg(all(test, feature = "test-util"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Backend, Egress, MacAddr, Proto, testing::FakeMaps};
    use vipmesh_maglev::TableSize;

    fn be(addr: &str, ifindex: u32) -> Backend {
        Backend {
            addr: addr.parse().unwrap(),
            port: 80,
            weight: 1,
            egress: Egress {
                ifindex,
                src_mac: MacAddr::default(),
                dst_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            },
        }
    }

    fn spec(port: u16, backends: Vec<Backend>) -> ServiceSpec {
        ServiceSpec {
            key: ServiceKey {
                addr: "10.0.0.1".parse().unwrap(),
                port,
                proto: Proto::Tcp,
            },
            mode: ForwardMode::Nat,
            backends,
            table_size: TableSize::new(251).unwrap(),
        }
    }

    fn dp() -> Dataplane<FakeMaps> {
        Dataplane::new(FakeMaps::default(), Config::default()).unwrap()
    }

    #[test]
    fn ids_are_stable_and_retired_backends_invalidated() {
        let mut d = dp();
        let r1 = d
            .upsert_service(&spec(80, vec![be("10.1.0.2", 3), be("10.1.0.3", 4)]))
            .unwrap();
        assert_eq!(r1.id, 0);
        assert_eq!(r1.slots.values().sum::<u32>(), 251);
        let id2 = r1.backends[&("10.1.0.2".parse().unwrap(), 80)];
        let id3 = r1.backends[&("10.1.0.3".parse().unwrap(), 80)];
        assert_eq!(d.maps().tx_ports.len(), 2);
        // Replace .3 by .4: .2 keeps its id, .3 is invalidated, .4 gets a fresh id.
        let r2 = d
            .upsert_service(&spec(80, vec![be("10.1.0.2", 3), be("10.1.0.4", 4)]))
            .unwrap();
        assert_eq!(r2.id, 0);
        assert_eq!(r2.backends[&("10.1.0.2".parse().unwrap(), 80)], id2);
        assert_eq!(r2.removed, vec![id3]);
        assert_eq!(d.maps().backends[&id3].flags, 0);
        assert_eq!(d.maps().swaps[&0], 2, "one whole-table swap per update");
        assert!(!d.maps().tables[&0].contains(&id3));
        assert_eq!(d.maps().tx_ports.len(), 2, "egress slots reused");
        // A second service gets the next id; removal is idempotent.
        let r3 = d
            .upsert_service(&spec(81, vec![be("10.1.0.9", 3)]))
            .unwrap();
        assert_eq!(r3.id, 1);
        d.remove_service(&spec(81, vec![]).key).unwrap();
        d.remove_service(&spec(81, vec![]).key).unwrap();
        assert!(d.maps().tables[&1].is_empty());
        assert_eq!(d.services().count(), 1);
    }

    #[test]
    fn filter_bitmaps_track_the_ports_and_addresses_in_use() {
        let mut d = dp();
        // Whether both filter bits of a key are set.
        let set = |d: &Dataplane<FakeMaps>, k: &ServiceKey| {
            abi::filter_bits(&k.to_abi())
                .iter()
                .all(|&(w, bit)| d.maps().filter_words.get(&w).copied().unwrap_or(0) & bit != 0)
        };
        let a80 = spec(80, vec![be("10.1.0.2", 3)]);
        let a81 = spec(81, vec![be("10.1.0.2", 3)]);
        let mut b80 = spec(80, vec![be("10.1.0.3", 3)]);
        b80.key.addr = "10.0.0.2".parse().unwrap();
        for s in [&a80, &a81, &b80] {
            d.upsert_service(s).unwrap();
        }
        assert!([&a80, &a81, &b80].iter().all(|s| set(&d, &s.key)));
        let [(pw, pbit), (aw, abit)] = abi::filter_bits(&a80.key.to_abi());
        assert_eq!((pw, pbit), (80 >> 5, 1 << (80 & 31)));
        assert!((abi::FILTER_ADDR_BASE..abi::FILTER_WORDS).contains(&aw) && abit != 0);
        // Bits stay while another service uses them and go with the last one.
        d.remove_service(&a80.key).unwrap();
        assert!(
            set(&d, &a80.key),
            "port 80 (b80) and 10.0.0.1 (a81) are still in use"
        );
        d.remove_service(&a81.key).unwrap();
        assert!(!set(&d, &a80.key) && !set(&d, &a81.key));
        assert!(d.maps().select(&b80.key.to_abi(), 7).is_some());
        d.remove_service(&b80.key).unwrap();
        assert!(d.maps().filter_words.values().all(|&w| w == 0));
        // v6 keys use the address half too; a restart rebuilds both halves from the services.
        let mut v6 = spec(65535, vec![be("10.1.0.2", 3)]);
        v6.key.addr = "fd00::1".parse().unwrap();
        v6.backends[0].addr = "fd01::2".parse().unwrap();
        d.upsert_service(&v6).unwrap();
        let mut maps = d.maps().clone();
        maps.filter_words.clear();
        let mut d2 = Dataplane::new(maps, Config::default()).unwrap();
        d2.restore().unwrap();
        assert!(set(&d2, &v6.key));
        assert_eq!(d2.maps().filter_words.get(&(65535 >> 5)), Some(&(1 << 31)));
    }

    #[test]
    fn rev_vips_list_the_nat_services_of_each_backend() {
        let mut d = dp();
        let rk = |addr: &str| {
            ServiceKey {
                addr: addr.parse().unwrap(),
                port: 80,
                proto: Proto::Tcp,
            }
            .to_abi()
        };
        // Two NAT services share 10.1.0.2:80; the entry lists both, in service-key order.
        let r81 = d
            .upsert_service(&spec(81, vec![be("10.1.0.2", 3)]))
            .unwrap();
        let r80 = d
            .upsert_service(&spec(80, vec![be("10.1.0.2", 3), be("10.1.0.3", 3)]))
            .unwrap();
        let e = d.maps().rev_vips[&rk("10.1.0.2")];
        assert_eq!(e.n, 2);
        assert_eq!(
            (u16::from_be(e.v[0].vport), u16::from_be(e.v[1].vport)),
            (80, 81)
        );
        let b = |r: &ServiceReport, a: &str| r.backends[&(a.parse().unwrap(), 80)];
        assert_eq!(
            (e.v[0].backend, e.v[1].backend),
            (b(&r80, "10.1.0.2"), b(&r81, "10.1.0.2"))
        );
        assert_eq!(e.v[0].vip, addr_to_abi("10.0.0.1".parse().unwrap()));
        assert_eq!(d.maps().rev_vips[&rk("10.1.0.3")].n, 1);
        // A backend that leaves its last service leaves the map; one that leaves one of two
        // stays for the other.
        d.upsert_service(&spec(80, vec![be("10.1.0.9", 3)]))
            .unwrap();
        assert!(!d.maps().rev_vips.contains_key(&rk("10.1.0.3")));
        assert_eq!(d.maps().rev_vips[&rk("10.1.0.2")].n, 1);
        // Encap services have no reverse path.
        let mut enc = spec(82, vec![be("10.1.0.2", 3)]);
        enc.mode = ForwardMode::Encap;
        let mut d2 = Dataplane::new(
            FakeMaps::default(),
            Config {
                node_v4: Some("192.0.2.1".parse().unwrap()),
                ..Config::default()
            },
        )
        .unwrap();
        d2.upsert_service(&enc).unwrap();
        assert!(d2.maps().rev_vips.is_empty());
        // Switching 81 to encap drops it from the backend's entry; removing 80 empties it.
        let mut s81 = spec(81, vec![be("10.1.0.2", 3)]);
        d.upsert_service(&s81).unwrap();
        assert_eq!(d.maps().rev_vips[&rk("10.1.0.2")].n, 1);
        d.remove_service(&spec(80, vec![]).key).unwrap();
        assert_eq!(d.maps().rev_vips[&rk("10.1.0.2")].n, 1, "81 still uses it");
        s81.mode = ForwardMode::Encap;
        d.set_config(Config {
            node_v4: Some("192.0.2.1".parse().unwrap()),
            ..Config::default()
        })
        .unwrap();
        d.upsert_service(&s81).unwrap();
        assert!(d.maps().rev_vips.is_empty());
    }

    #[test]
    fn a_fifth_nat_service_on_one_backend_is_refused_before_any_write() {
        let mut d = dp();
        for port in 80..84 {
            d.upsert_service(&spec(port, vec![be("10.1.0.2", 3)]))
                .unwrap();
        }
        let before = d.maps().clone();
        let err = d
            .upsert_service(&spec(84, vec![be("10.1.0.2", 3)]))
            .unwrap_err();
        match &err {
            Error::InvalidConfig { field, value, .. } => {
                assert_eq!(*field, "backends");
                assert!(
                    value.contains("10.1.0.2:80") && value.contains("10.0.0.1:84"),
                    "{value}"
                );
            }
            other => panic!("{other}"),
        }
        assert_eq!(
            format!("{:?}", d.maps()),
            format!("{before:?}"),
            "nothing written"
        );
        assert_eq!(d.services().count(), 4);
    }

    #[test]
    fn reused_ids_start_with_zeroed_statistics() {
        let mut d = dp();
        let bkey = |id: u32| id | 0x8000_0000;
        let r = d
            .upsert_service(&spec(80, vec![be("10.1.0.2", 3)]))
            .unwrap();
        let bid = r.backends[&("10.1.0.2".parse().unwrap(), 80)];
        let busy = Stats {
            packets: 9,
            bytes: 900,
            new_flows: 3,
        };
        d.maps_mut().stats.insert(r.id, busy);
        d.maps_mut().stats.insert(bkey(bid), busy);
        // Re-applying keeps the counts of what stays.
        d.upsert_service(&spec(80, vec![be("10.1.0.2", 3)]))
            .unwrap();
        assert_eq!(d.maps().service_stats(r.id).unwrap(), busy);
        assert_eq!(d.maps().backend_stats(bid).unwrap(), busy);
        // A new service and backend that take the freed ids do not inherit them.
        d.remove_service(&spec(80, vec![]).key).unwrap();
        let r2 = d
            .upsert_service(&spec(81, vec![be("10.1.0.9", 3)]))
            .unwrap();
        assert_eq!(
            (r2.id, r2.backends[&("10.1.0.9".parse().unwrap(), 80)]),
            (r.id, bid)
        );
        assert_eq!(d.maps().service_stats(r.id).unwrap(), Stats::default());
        assert_eq!(d.maps().backend_stats(bid).unwrap(), Stats::default());
    }

    #[test]
    fn generations_follow_assignments_not_ids() {
        let mut d = dp();
        let ip = |s: &str| (s.parse::<IpAddr>().unwrap(), 80);
        let r1 = d
            .upsert_service(&spec(80, vec![be("10.1.0.2", 3), be("10.1.0.3", 4)]))
            .unwrap();
        let gen_of = |d: &Dataplane<FakeMaps>, id: u32| d.maps().backends[&id].generation;
        let (id2, id3) = (r1.backends[&ip("10.1.0.2")], r1.backends[&ip("10.1.0.3")]);
        let (g2, g3) = (gen_of(&d, id2), gen_of(&d, id3));
        assert!(g2 != 0 && g3 != 0 && g2 != g3);
        // Re-applying keeps every generation: live flows stay valid.
        d.upsert_service(&spec(80, vec![be("10.1.0.2", 3), be("10.1.0.3", 4)]))
            .unwrap();
        assert_eq!((gen_of(&d, id2), gen_of(&d, id3)), (g2, g3));
        // .3 leaves; its id goes to another service's backend with a fresh generation, so
        // flows that remember (id3, g3) cannot follow it.
        d.upsert_service(&spec(80, vec![be("10.1.0.2", 3)]))
            .unwrap();
        let r = d
            .upsert_service(&spec(81, vec![be("10.1.0.9", 3)]))
            .unwrap();
        assert_eq!(r.backends[&ip("10.1.0.9")], id3, "the id is reused");
        let g9 = gen_of(&d, id3);
        assert!(g9 != g3 && g9 != g2);
        // The mode travels with the backend entry (the hit path reads it there).
        assert_eq!(d.maps().backends[&id2].mode, abi::MODE_NAT);
        // After a restart the next generation is above every one in the maps.
        let mut d2 = Dataplane::new(d.maps().clone(), Config::default()).unwrap();
        d2.restore().unwrap();
        let r = d2
            .upsert_service(&spec(82, vec![be("10.1.0.7", 3)]))
            .unwrap();
        let g7 = gen_of(&d2, r.backends[&ip("10.1.0.7")]);
        assert!(g7 > g9 && g7 > g2, "{g7} after {g2}, {g9}");
    }

    #[test]
    fn restore_keeps_ids_whatever_the_order() {
        let mut d = dp();
        let a = spec(80, vec![be("10.1.0.2", 3), be("10.1.0.3", 4)]);
        let b = spec(81, vec![be("10.1.0.9", 3)]);
        let ra = d.upsert_service(&a).unwrap();
        let rb = d.upsert_service(&b).unwrap();
        // A new process over the same (pinned) maps, applying in the other order.
        let mut d2 = Dataplane::new(d.maps().clone(), Config::default()).unwrap();
        assert_eq!(d2.restore().unwrap(), 2);
        let rb2 = d2.upsert_service(&b).unwrap();
        let ra2 = d2.upsert_service(&a).unwrap();
        assert_eq!((ra2.id, rb2.id), (ra.id, rb.id));
        assert_eq!(ra2.backends, ra.backends);
        assert_eq!(rb2.backends, rb.backends);
        assert!(ra2.removed.is_empty());
        // Without restore, the ids would have been handed out again from 0.
        let mut d3 = Dataplane::new(d.maps().clone(), Config::default()).unwrap();
        assert_ne!(d3.upsert_service(&b).unwrap().id, rb.id);
    }

    #[test]
    fn zero_backends_selects_nothing() {
        let mut d = dp();
        let s = spec(80, vec![]);
        d.upsert_service(&s).unwrap();
        for h in [0, 1, 99, u32::MAX] {
            assert_eq!(d.maps().select(&s.key.to_abi(), h), None);
        }
    }

    #[test]
    fn invalid_specs_write_nothing() {
        let mut d = dp();
        let before = format!("{:?}", d.maps());
        let mut v6 = be("fd00::2", 3);
        v6.port = 80;
        let cases = [
            spec(80, vec![v6]),
            spec(80, vec![be("10.1.0.2", 3), be("10.1.0.2", 3)]),
            spec(0, vec![be("10.1.0.2", 3)]),
            spec(80, vec![be("10.1.0.2", 0)]),
            spec(
                80,
                vec![Backend {
                    port: 0,
                    ..be("10.1.0.2", 3)
                }],
            ),
            ServiceSpec {
                mode: ForwardMode::Encap,
                ..spec(80, vec![be("10.1.0.2", 3)])
            },
            ServiceSpec {
                table_size: TableSize::new(2).unwrap(),
                ..spec(
                    80,
                    vec![be("10.1.0.2", 3), be("10.1.0.3", 3), be("10.1.0.4", 3)],
                )
            },
        ];
        for c in &cases {
            let e = d.upsert_service(c).unwrap_err();
            assert!(
                matches!(e, Error::InvalidConfig { .. } | Error::Table { .. }),
                "{e}"
            );
            assert_eq!(format!("{:?}", d.maps()), before, "{e}: nothing written");
        }
    }

    #[test]
    fn capacity_errors_are_map_full() {
        let mut d = dp();
        let many: Vec<Backend> = (0..=abi::MAX_TX_PORTS)
            .map(|i| be(&format!("10.2.{}.{}", i / 250, i % 250 + 1), i + 1))
            .collect();
        let mut s = spec(80, many);
        s.table_size = TableSize::new(65537).unwrap();
        assert!(matches!(
            d.upsert_service(&s),
            Err(Error::MapFull {
                map: "tx_ports",
                ..
            })
        ));
        assert!(d.maps().backends.is_empty(), "nothing written");
    }

    #[test]
    fn task_ports_are_written_both_ways_and_removed() {
        let mut d = dp();
        let key = ServiceKey {
            addr: "10.50.100.1".parse().unwrap(),
            port: 8080,
            proto: Proto::Tcp,
        };
        d.set_task_port(key, 80).unwrap();
        assert_eq!(
            d.maps().task_ports[&(TaskPortMap::Ingress, key.to_abi())],
            80
        );
        let tkey = ServiceKey { port: 80, ..key };
        assert_eq!(
            d.maps().task_ports[&(TaskPortMap::Egress, tkey.to_abi())],
            8080
        );
        d.set_task_port(key, 8080).unwrap();
        assert!(
            !d.maps()
                .task_ports
                .contains_key(&(TaskPortMap::Ingress, key.to_abi()))
        );
        // The old target's egress entry goes; the new one stays (it marks VIP:target as a VIP
        // flow whose SYN-ACK MSS is clamped), translating to the same port.
        assert!(
            !d.maps()
                .task_ports
                .contains_key(&(TaskPortMap::Egress, tkey.to_abi()))
        );
        assert_eq!(
            d.maps().task_ports[&(TaskPortMap::Egress, key.to_abi())],
            8080
        );
        // After a restart the target is known again: moving it to 9090 drops the 8080 entry.
        let mut d2 = Dataplane::new(d.maps().clone(), Config::default()).unwrap();
        d2.restore().unwrap();
        d2.set_task_port(key, 9090).unwrap();
        let egress: Vec<u16> = d2
            .maps()
            .task_ports
            .keys()
            .filter(|(m, _)| *m == TaskPortMap::Egress)
            .map(|(_, k)| u16::from_be(k.port))
            .collect();
        assert_eq!(egress, vec![9090]);
    }
}
