//! The pure logic of the fast path: validates services, allocates ids, builds Maglev tables and
//! writes them through a [`MapLayer`] in an order that never exposes a half-applied state.
//!
//! One submodule per concern: programming services (`service`: validation, id allocation,
//! the ordered writes), the reverse NAT entries (`rev`), rebuilding the state from pinned maps
//! (`restore`), the task side (`task`), and statistics (`stats`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::{
    Error, abi,
    maps::MapLayer,
    model::{Config, ForwardMode, ServiceKey, ServiceSpec},
};

mod restore;
mod rev;
mod service;
mod stats;
mod task;
#[cfg(all(test, feature = "test-util"))]
#[allow(clippy::unwrap_used)]
mod tests;

#[derive(Clone, Debug)]
struct ServiceState {
    id: u32,
    spec: ServiceSpec,
    /// Backend id per (addr, port).
    backend_ids: BTreeMap<(IpAddr, u16), u32>,
    /// Forwarding mode per backend (the service's mode unless overridden, see
    /// [`Dataplane::upsert_service_modes`]).
    modes: BTreeMap<(IpAddr, u16), ForwardMode>,
}

impl ServiceState {
    /// The mode of backend `k` (the service's when not recorded).
    fn mode_of(&self, k: &(IpAddr, u16)) -> ForwardMode {
        self.modes.get(k).copied().unwrap_or(self.spec.mode)
    }
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

    /// The specs currently programmed, in key order.
    pub fn services(&self) -> impl Iterator<Item = &ServiceSpec> {
        self.services.values().map(|s| &s.spec)
    }

    /// The forwarding mode of each backend of service `key` (by address and port), as
    /// programmed: the service's mode unless [`Dataplane::upsert_service_modes`] overrode it.
    /// Empty for an unknown service.
    pub fn backend_modes(&self, key: &ServiceKey) -> BTreeMap<(IpAddr, u16), ForwardMode> {
        self.services
            .get(key)
            .map(|s| s.backend_ids.keys().map(|k| (*k, s.mode_of(k))).collect())
            .unwrap_or_default()
    }
}
