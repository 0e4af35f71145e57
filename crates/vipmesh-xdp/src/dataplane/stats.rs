//! Statistics of services and backends, and the global counters.

use std::{collections::BTreeMap, net::IpAddr};

use super::Dataplane;
use crate::{
    Error,
    maps::{Counters, MapLayer},
    model::{ServiceKey, Stats},
};

impl<M: MapLayer> Dataplane<M> {
    /// Statistics of a service: the sum of those of its backends, current and retired.
    ///
    /// The fast path counts each packet once, per backend (one per-CPU update on the hit path
    /// instead of two); `svc_stats` holds what the service's retired backends had counted,
    /// added when they were retired. A packet already past its backend's check when the
    /// backend is retired may be counted after that addition, and then only in the retired
    /// backend's slot.
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
        s.backend_ids
            .values()
            .try_fold(self.maps.service_stats(s.id)?, |mut acc, &id| {
                let b = self.maps.backend_stats(id)?;
                acc.packets += b.packets;
                acc.bytes += b.bytes;
                acc.new_flows += b.new_flows;
                Ok(acc)
            })
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
