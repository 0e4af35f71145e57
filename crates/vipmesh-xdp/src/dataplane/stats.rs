//! Statistics of services and backends, and the global counters.

use std::{collections::BTreeMap, net::IpAddr};

use super::Dataplane;
use crate::{
    Error,
    maps::{Counters, MapLayer},
    model::{ServiceKey, Stats},
};

impl<M: MapLayer> Dataplane<M> {
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
