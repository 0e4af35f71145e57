use std::collections::BTreeMap;

use crate::{
    Error, abi,
    maps::{Counters, Dump, MapLayer, StatsMap, TaskPortMap},
    model::Stats,
};

/// An in-memory map layer with the kernel's semantics: fixed capacities (`E2BIG` becomes
/// [`Error::MapFull`]), deleting what is absent succeeds, a table swap replaces the whole
/// table at once, and arrays always hold a value (zeroed by default).
#[derive(Clone, Debug, Default)]
pub struct FakeMaps {
    /// `services`.
    pub services: BTreeMap<abi::SvcKey, abi::Svc>,
    /// `backends` (only written ids; the rest read as zero).
    pub backends: BTreeMap<u32, abi::BackendEntry>,
    /// `maglev_outer`: the current table per service id.
    pub tables: BTreeMap<u32, Vec<u32>>,
    /// Number of table swaps per service id.
    pub swaps: BTreeMap<u32, u32>,
    /// `tx_ports`.
    pub tx_ports: BTreeMap<u32, u32>,
    /// `rev_vips`.
    pub rev_vips: BTreeMap<abi::SvcKey, abi::RevVips>,
    /// `svc_filter` (only written words; the rest read as zero).
    pub filter_words: BTreeMap<u32, u32>,
    /// `config`.
    pub config: abi::Cfg,
    /// `task_ports` and `task_egress`.
    pub task_ports: BTreeMap<(TaskPortMap, abi::SvcKey), u16>,
    /// Stats the test wants read back.
    pub stats: BTreeMap<u32, Stats>,
}

impl FakeMaps {
    /// What the XDP program would pick for a flow hash: the backend of slot `hash % M`, or
    /// `None` when the filter bitmaps or the service lookup miss (pass), or (drop) when the service
    /// has no table or an empty one, or the backend is not valid.
    pub fn select(&self, key: &abi::SvcKey, hash: u32) -> Option<abi::BackendEntry> {
        for (word, bit) in abi::filter_bits(key) {
            if self.filter_words.get(&word).copied().unwrap_or(0) & bit == 0 {
                return None;
            }
        }
        let svc = self.services.get(key)?;
        let t = self.tables.get(&svc.id)?;
        let m = u32::try_from(t.len()).ok().filter(|&m| m > 0)?;
        let bid = *t.get((hash % m) as usize)?;
        let be = self.backends.get(&bid).copied().unwrap_or_default();
        (be.flags & abi::BACKEND_VALID != 0).then_some(be)
    }
}

impl MapLayer for FakeMaps {
    fn set_service(&mut self, key: &abi::SvcKey, svc: &abi::Svc) -> Result<(), Error> {
        if !self.services.contains_key(key) && self.services.len() >= abi::MAX_SERVICES as usize {
            return Err(Error::MapFull {
                map: "services",
                capacity: abi::MAX_SERVICES,
            });
        }
        self.services.insert(*key, *svc);
        Ok(())
    }

    fn remove_service(&mut self, key: &abi::SvcKey) -> Result<(), Error> {
        self.services.remove(key);
        Ok(())
    }

    fn set_backend(&mut self, id: u32, entry: &abi::BackendEntry) -> Result<(), Error> {
        if id >= abi::MAX_BACKENDS {
            return Err(Error::MapFull {
                map: "backends",
                capacity: abi::MAX_BACKENDS,
            });
        }
        self.backends.insert(id, *entry);
        Ok(())
    }

    fn set_rev_vips(
        &mut self,
        key: &abi::SvcKey,
        vips: Option<&abi::RevVips>,
    ) -> Result<(), Error> {
        match vips {
            Some(v) => {
                if !self.rev_vips.contains_key(key)
                    && self.rev_vips.len() >= abi::MAX_BACKENDS as usize
                {
                    return Err(Error::MapFull {
                        map: "rev_vips",
                        capacity: abi::MAX_BACKENDS,
                    });
                }
                self.rev_vips.insert(*key, *v);
            }
            None => {
                self.rev_vips.remove(key);
            }
        }
        Ok(())
    }

    fn set_filter_word(&mut self, word: u32, bits: u32) -> Result<(), Error> {
        if word >= abi::FILTER_WORDS {
            return Err(Error::MapFull {
                map: "svc_filter",
                capacity: abi::FILTER_WORDS,
            });
        }
        self.filter_words.insert(word, bits);
        Ok(())
    }

    fn swap_table(&mut self, svc: u32, slots: &[u32]) -> Result<(), Error> {
        if svc >= abi::MAX_SERVICES {
            return Err(Error::MapFull {
                map: "maglev_outer",
                capacity: abi::MAX_SERVICES,
            });
        }
        self.tables.insert(svc, slots.to_vec());
        *self.swaps.entry(svc).or_default() += 1;
        Ok(())
    }

    fn set_tx_port(&mut self, slot: u32, ifindex: u32) -> Result<(), Error> {
        if slot >= abi::MAX_TX_PORTS {
            return Err(Error::MapFull {
                map: "tx_ports",
                capacity: abi::MAX_TX_PORTS,
            });
        }
        self.tx_ports.insert(slot, ifindex);
        Ok(())
    }

    fn set_config(&mut self, cfg: &abi::Cfg) -> Result<(), Error> {
        self.config = *cfg;
        Ok(())
    }

    fn set_task_port(
        &mut self,
        map: TaskPortMap,
        key: &abi::SvcKey,
        port: Option<u16>,
    ) -> Result<(), Error> {
        match port {
            Some(p) => {
                let n = self.task_ports.keys().filter(|(m, _)| *m == map).count();
                if !self.task_ports.contains_key(&(map, *key)) && n >= abi::MAX_SERVICES as usize {
                    return Err(Error::MapFull {
                        map: "task_ports",
                        capacity: abi::MAX_SERVICES,
                    });
                }
                self.task_ports.insert((map, *key), p);
            }
            None => {
                self.task_ports.remove(&(map, *key));
            }
        }
        Ok(())
    }

    fn dump(&self) -> Result<Dump, Error> {
        Ok(Dump {
            services: self
                .services
                .iter()
                .map(|(k, v)| (*k, *v, self.tables.get(&v.id).cloned().unwrap_or_default()))
                .collect(),
            backends: self
                .backends
                .iter()
                .filter(|(_, b)| b.flags & abi::BACKEND_VALID != 0)
                .map(|(i, b)| (*i, *b))
                .collect(),
            tx_ports: self.tx_ports.clone(),
            task_egress: self
                .task_ports
                .iter()
                .filter(|((m, _), _)| *m == TaskPortMap::Egress)
                .map(|((_, k), p)| (*k, *p))
                .collect(),
        })
    }

    fn service_stats(&self, svc: u32) -> Result<Stats, Error> {
        Ok(self.stats.get(&svc).copied().unwrap_or_default())
    }

    fn backend_stats(&self, id: u32) -> Result<Stats, Error> {
        Ok(self
            .stats
            .get(&(id | 0x8000_0000))
            .copied()
            .unwrap_or_default())
    }

    fn reset_stats(&mut self, map: StatsMap, id: u32) -> Result<(), Error> {
        let (key, capacity, name) = match map {
            StatsMap::Service => (id, abi::MAX_SERVICES, "svc_stats"),
            StatsMap::Backend => (id | 0x8000_0000, abi::MAX_BACKENDS, "backend_stats"),
        };
        if id >= capacity {
            return Err(Error::MapFull {
                map: name,
                capacity,
            });
        }
        self.stats.remove(&key);
        Ok(())
    }

    fn add_service_stats(&mut self, svc: u32, s: Stats) -> Result<(), Error> {
        if svc >= abi::MAX_SERVICES {
            return Err(Error::MapFull {
                map: "svc_stats",
                capacity: abi::MAX_SERVICES,
            });
        }
        let e = self.stats.entry(svc).or_default();
        e.packets += s.packets;
        e.bytes += s.bytes;
        e.new_flows += s.new_flows;
        Ok(())
    }

    fn counters(&self) -> Result<Counters, Error> {
        Ok(abi::COUNTER_NAMES.iter().map(|&n| (n, 0)).collect())
    }
}
