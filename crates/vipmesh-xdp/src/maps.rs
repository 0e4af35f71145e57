//! The map layer: every write the dataplane makes, as a trait with a kernel implementation
//! ([`KernelMaps`], on aya) and a Fake (`testing::FakeMaps`, feature `test-util`).

use std::collections::BTreeMap;

use aya::maps::{Array, ArrayOfMaps, HashMap, MapData, PerCpuArray, xdp::DevMap};

use crate::{Error, abi, model::Stats};

/// Which task-side port map (encap mode) to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskPortMap {
    /// `task_ports`: VIP:published → target (ingress, after decap).
    Ingress,
    /// `task_egress`: VIP:target → published (egress).
    Egress,
}

/// Which per-CPU statistics map to reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatsMap {
    /// `svc_stats`, by service id.
    Service,
    /// `backend_stats`, by backend id.
    Backend,
}

/// What [`MapLayer::dump`] reads back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dump {
    /// Service entries with their table (M backend ids; empty when there is none).
    pub services: Vec<(abi::SvcKey, abi::Svc, Vec<u32>)>,
    /// Valid backend entries by id.
    pub backends: BTreeMap<u32, abi::BackendEntry>,
    /// Egress slot -> ifindex.
    pub tx_ports: BTreeMap<u32, u32>,
    /// Task side: `task_egress`, VIP:target -> published port (host order).
    pub task_egress: BTreeMap<abi::SvcKey, u16>,
}

/// Global counters by name ([`abi::COUNTER_NAMES`]), summed over CPUs.
pub type Counters = BTreeMap<&'static str, u64>;

/// The terminal verdict counters of `xdp_lb`: every packet it sees ends in exactly one.
const XDP_TERMINAL: [&str; 11] = [
    "pass_not_ip",
    "pass_fragment",
    "pass_malformed",
    "pass_not_ours",
    "pass_options",
    "pass_proto",
    "drop_no_backend",
    "drop_family",
    "redirect_nat",
    "redirect_encap",
    "encap_fail",
];

/// The forwarding verdicts of `xdp_lb`: every flow hit and every new flow ends in exactly one.
const XDP_FORWARDED: [&str; 4] = [
    "redirect_nat",
    "redirect_encap",
    "encap_fail",
    "drop_family",
];

/// Fills in the counters the programs do not count, to spare the hit path two increments
/// (`ebpf/vipmesh_abi.h`, `enum vm_counter`): `rx` is the sum of the terminal verdicts of
/// `xdp_lb`, `flow_hit` its forwarding verdicts minus `flow_new`. Per-CPU values are read one
/// counter at a time, so while traffic flows a derived value may be off by the packets of that
/// instant (never below zero); at rest it is exact.
pub(crate) fn derive_counters(c: &mut Counters) {
    let sum = |names: &[&str]| -> u64 {
        names
            .iter()
            .map(|n| c.get(n).copied().unwrap_or(0))
            .fold(0, u64::wrapping_add)
    };
    let rx = sum(&XDP_TERMINAL);
    let hit = sum(&XDP_FORWARDED).saturating_sub(c.get("flow_new").copied().unwrap_or(0));
    c.insert("rx", rx);
    c.insert("flow_hit", hit);
}

/// The kernel maps of the fast path, with kernel semantics.
///
/// Deleting what is absent is success. A table swap is atomic: readers see the old table or the
/// new one, never a mix.
pub trait MapLayer {
    /// Inserts or replaces a service entry.
    ///
    /// # Errors
    ///
    /// [`Error::MapFull`] when the `services` hash is full; other map errors.
    fn set_service(&mut self, key: &abi::SvcKey, svc: &abi::Svc) -> Result<(), Error>;
    /// Removes a service entry; absent is success.
    ///
    /// # Errors
    ///
    /// Map errors other than "not found".
    fn remove_service(&mut self, key: &abi::SvcKey) -> Result<(), Error>;
    /// Writes backend `id`.
    ///
    /// # Errors
    ///
    /// [`Error::MapFull`] when `id` is out of range.
    fn set_backend(&mut self, id: u32, entry: &abi::BackendEntry) -> Result<(), Error>;
    /// Replaces the whole Maglev table of service `svc`: `slots` (M backend ids; empty for a
    /// service without backends) go into a fresh inner map, which is then swapped in.
    ///
    /// # Errors
    ///
    /// [`Error::MapFull`] when `svc` is out of range; map creation or update errors.
    fn swap_table(&mut self, svc: u32, slots: &[u32]) -> Result<(), Error>;
    /// Writes word `word` of the `svc_filter` bitmaps ([`abi::filter_bits`]).
    ///
    /// # Errors
    ///
    /// [`Error::MapFull`] when `word` is out of range.
    fn set_filter_word(&mut self, word: u32, bits: u32) -> Result<(), Error>;
    /// Sets (`Some`) or removes (`None`) the services NAT backend `key` (its address, target port
    /// and protocol) serves, which `tc_rev` uses to find a reply's flow.
    ///
    /// # Errors
    ///
    /// [`Error::MapFull`] when the map is full.
    fn set_rev_vips(&mut self, key: &abi::SvcKey, vips: Option<&abi::RevVips>)
    -> Result<(), Error>;
    /// Points DEVMAP slot `slot` at interface `ifindex`.
    ///
    /// # Errors
    ///
    /// [`Error::MapFull`] when `slot` is out of range.
    fn set_tx_port(&mut self, slot: u32, ifindex: u32) -> Result<(), Error>;
    /// Writes the dataplane configuration.
    ///
    /// # Errors
    ///
    /// Map errors.
    fn set_config(&mut self, cfg: &abi::Cfg) -> Result<(), Error>;
    /// Sets (`Some`) or removes (`None`) a task-side port translation.
    ///
    /// # Errors
    ///
    /// [`Error::MapFull`] when the map is full.
    fn set_task_port(
        &mut self,
        map: TaskPortMap,
        key: &abi::SvcKey,
        port: Option<u16>,
    ) -> Result<(), Error>;
    /// Reads back what is programmed (after a restart with pinned maps): every service entry
    /// with its current Maglev table, every valid backend, and every egress slot.
    ///
    /// # Errors
    ///
    /// Map errors.
    fn dump(&self) -> Result<Dump, Error>;
    /// Reads what `svc_stats` holds for service `svc`, summed over CPUs: the counts of its
    /// retired backends (the programs count only per backend; see
    /// [`MapLayer::add_service_stats`]).
    ///
    /// # Errors
    ///
    /// Map errors.
    fn service_stats(&self, svc: u32) -> Result<Stats, Error>;
    /// Reads the statistics of backend `id`, summed over CPUs.
    ///
    /// # Errors
    ///
    /// Map errors.
    fn backend_stats(&self, id: u32) -> Result<Stats, Error>;
    /// Zeroes the statistics of service or backend `id` on every CPU (when the id is given to a
    /// new service or backend, which must not inherit the counts of the last holder).
    ///
    /// # Errors
    ///
    /// [`Error::MapFull`] when `id` is out of range; map errors.
    fn reset_stats(&mut self, map: StatsMap, id: u32) -> Result<(), Error>;
    /// Adds `s` to the `svc_stats` entry of service `svc` (the counts of a backend it retires,
    /// which would otherwise leave the service's totals). Only userspace writes `svc_stats`.
    ///
    /// # Errors
    ///
    /// [`Error::MapFull`] when `svc` is out of range; map errors.
    fn add_service_stats(&mut self, svc: u32, s: Stats) -> Result<(), Error>;
    /// Reads the global counters.
    ///
    /// # Errors
    ///
    /// Map errors.
    fn counters(&self) -> Result<Counters, Error>;
}

/// The kernel maps, taken from the loaded object.
pub struct KernelMaps {
    services: HashMap<MapData, abi::SvcKey, abi::Svc>,
    backends: Array<MapData, abi::BackendEntry>,
    svc_filter: Array<MapData, u32>,
    maglev: ArrayOfMaps<MapData, Array<MapData, u32>>,
    tx_ports: DevMap<MapData>,
    config: Array<MapData, abi::Cfg>,
    counters: PerCpuArray<MapData, u64>,
    svc_stats: PerCpuArray<MapData, abi::StatsEntry>,
    backend_stats: PerCpuArray<MapData, abi::StatsEntry>,
    task_ports: HashMap<MapData, abi::SvcKey, abi::PortMap>,
    task_egress: HashMap<MapData, abi::SvcKey, abi::PortMap>,
    flows: HashMap<MapData, abi::FlowKey, abi::Flow>,
    rev_vips: HashMap<MapData, abi::SvcKey, abi::RevVips>,
}

impl std::fmt::Debug for KernelMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelMaps").finish_non_exhaustive()
    }
}

fn take<T>(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::Map {
        map: name,
        op: "take",
        source: Box::new(aya::maps::MapError::InvalidName {
            name: name.to_owned(),
        }),
    })?;
    T::try_from(map).map_err(|e| Error::map(name, "open", e))
}

fn is_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn full_or(map: &'static str, capacity: u32, op: &'static str, e: aya::maps::MapError) -> Error {
    match &e {
        aya::maps::MapError::OutOfBounds { .. } => Error::MapFull { map, capacity },
        aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
            Error::MapFull { map, capacity }
        }
        _ => Error::map(map, op, e),
    }
}

fn sum(values: impl IntoIterator<Item = abi::StatsEntry>) -> Stats {
    values.into_iter().fold(Stats::default(), |mut s, v| {
        s.packets += v.packets;
        s.bytes += v.bytes;
        s.new_flows += v.new_flows;
        s
    })
}

impl KernelMaps {
    /// Takes the maps out of a loaded object.
    ///
    /// # Errors
    ///
    /// [`Error::Map`] when a map is missing or has an unexpected type or size.
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self, Error> {
        Ok(KernelMaps {
            services: take(ebpf, "services")?,
            backends: take(ebpf, "backends")?,
            svc_filter: take(ebpf, "svc_filter")?,
            maglev: take(ebpf, "maglev_outer")?,
            tx_ports: take(ebpf, "tx_ports")?,
            config: take(ebpf, "config")?,
            counters: take(ebpf, "counters")?,
            svc_stats: take(ebpf, "svc_stats")?,
            backend_stats: take(ebpf, "backend_stats")?,
            task_ports: take(ebpf, "task_ports")?,
            task_egress: take(ebpf, "task_egress")?,
            flows: take(ebpf, "flows")?,
            rev_vips: take(ebpf, "rev_vips")?,
        })
    }

    /// Looks up a flow-table entry (client 5-tuple as received).
    ///
    /// # Errors
    ///
    /// Map errors other than "not found".
    pub fn flow(&self, key: &abi::FlowKey) -> Result<Option<abi::Flow>, Error> {
        match self.flows.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(Error::map("flows", "lookup", e)),
        }
    }

    /// Looks up the services a NAT backend (address, target port, protocol) serves.
    ///
    /// # Errors
    ///
    /// Map errors other than "not found".
    pub fn rev_vips(&self, key: &abi::SvcKey) -> Result<Option<abi::RevVips>, Error> {
        match self.rev_vips.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(Error::map("rev_vips", "lookup", e)),
        }
    }

    /// Number of entries in the flow table.
    pub fn flow_count(&self) -> usize {
        self.flows.keys().filter(Result::is_ok).count()
    }
}

impl MapLayer for KernelMaps {
    fn set_service(&mut self, key: &abi::SvcKey, svc: &abi::Svc) -> Result<(), Error> {
        self.services
            .insert(key, svc, 0)
            .map_err(|e| full_or("services", abi::MAX_SERVICES, "insert", e))
    }

    fn remove_service(&mut self, key: &abi::SvcKey) -> Result<(), Error> {
        match self.services.remove(key) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Error::map("services", "remove", e)),
        }
    }

    fn set_backend(&mut self, id: u32, entry: &abi::BackendEntry) -> Result<(), Error> {
        self.backends
            .set(id, entry, 0)
            .map_err(|e| full_or("backends", abi::MAX_BACKENDS, "set", e))
    }

    fn set_rev_vips(
        &mut self,
        key: &abi::SvcKey,
        vips: Option<&abi::RevVips>,
    ) -> Result<(), Error> {
        match vips {
            Some(v) => self
                .rev_vips
                .insert(key, v, 0)
                .map_err(|e| full_or("rev_vips", abi::MAX_BACKENDS, "insert", e)),
            None => match self.rev_vips.remove(key) {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(Error::map("rev_vips", "remove", e)),
            },
        }
    }

    fn set_filter_word(&mut self, word: u32, bits: u32) -> Result<(), Error> {
        self.svc_filter
            .set(word, bits, 0)
            .map_err(|e| full_or("svc_filter", abi::FILTER_WORDS, "set", e))
    }

    fn swap_table(&mut self, svc: u32, slots: &[u32]) -> Result<(), Error> {
        if svc >= abi::MAX_SERVICES {
            return Err(Error::MapFull {
                map: "maglev_outer",
                capacity: abi::MAX_SERVICES,
            });
        }
        let m = u32::try_from(slots.len()).map_err(|_too_big| Error::InvalidConfig {
            field: "table_size",
            value: slots.len().to_string(),
            reason: "larger than u32",
        })?;
        // Slot 0 holds M; an empty table is M = 0 (the program drops, see the crate docs).
        let entries = m.checked_add(1).ok_or(Error::MapFull {
            map: "maglev_inner",
            capacity: u32::MAX,
        })?;
        let mut inner = Array::<MapData, u32>::create(entries, libc_flags::BPF_F_INNER_MAP)
            .map_err(|e| Error::map("maglev_inner", "create", e))?;
        inner
            .set(0, m, 0)
            .map_err(|e| Error::map("maglev_inner", "set", e))?;
        for (i, &b) in (1u32..).zip(slots) {
            inner
                .set(i, b, 0)
                .map_err(|e| Error::map("maglev_inner", "set", e))?;
        }
        // The one atomic step: the outer slot now points at the complete new table. The old
        // inner map is freed by the kernel once no program holds it (RCU).
        self.maglev
            .set(svc, &inner, 0)
            .map_err(|e| full_or("maglev_outer", abi::MAX_SERVICES, "swap", e))
    }

    fn set_tx_port(&mut self, slot: u32, ifindex: u32) -> Result<(), Error> {
        match self.tx_ports.set(slot, ifindex, None, 0) {
            Ok(()) => Ok(()),
            Err(aya::maps::xdp::XdpMapError::MapError(e)) => {
                Err(full_or("tx_ports", abi::MAX_TX_PORTS, "set", e))
            }
            Err(e) => Err(Error::TxPort {
                slot,
                ifindex,
                source: Box::new(e),
            }),
        }
    }

    fn set_config(&mut self, cfg: &abi::Cfg) -> Result<(), Error> {
        self.config
            .set(0, cfg, 0)
            .map_err(|e| Error::map("config", "set", e))
    }

    fn set_task_port(
        &mut self,
        map: TaskPortMap,
        key: &abi::SvcKey,
        port: Option<u16>,
    ) -> Result<(), Error> {
        let (name, m) = match map {
            TaskPortMap::Ingress => ("task_ports", &mut self.task_ports),
            TaskPortMap::Egress => ("task_egress", &mut self.task_egress),
        };
        match port {
            Some(p) => m
                .insert(
                    key,
                    abi::PortMap {
                        port: p.to_be(),
                        pad: 0,
                    },
                    0,
                )
                .map_err(|e| full_or(name, abi::MAX_SERVICES, "insert", e)),
            None => match m.remove(key) {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(Error::map(name, "remove", e)),
            },
        }
    }

    fn dump(&self) -> Result<Dump, Error> {
        let mut out = Dump::default();
        for kv in self.services.iter() {
            let (k, v) = kv.map_err(|e| Error::map("services", "dump", e))?;
            let table = match self.maglev.get(&v.id, 0) {
                Ok(inner) => {
                    let m = inner
                        .get(&0, 0)
                        .map_err(|e| Error::map("maglev_inner", "get", e))?;
                    (1..=m)
                        .map(|i| {
                            inner
                                .get(&i, 0)
                                .map_err(|e| Error::map("maglev_inner", "get", e))
                        })
                        .collect::<Result<Vec<u32>, Error>>()?
                }
                Err(e) if is_not_found(&e) => Vec::new(),
                Err(e) => return Err(Error::map("maglev_outer", "get", e)),
            };
            out.services.push((k, v, table));
        }
        for id in 0..abi::MAX_BACKENDS {
            let b = self
                .backends
                .get(&id, 0)
                .map_err(|e| Error::map("backends", "dump", e))?;
            if b.flags & abi::BACKEND_VALID != 0 {
                out.backends.insert(id, b);
            }
        }
        for slot in 0..abi::MAX_TX_PORTS {
            match self.tx_ports.get(slot, 0) {
                Ok(v) => {
                    out.tx_ports.insert(slot, v.if_index);
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(Error::map("tx_ports", "dump", e)),
            }
        }
        for kv in self.task_egress.iter() {
            let (k, v) = kv.map_err(|e| Error::map("task_egress", "dump", e))?;
            out.task_egress.insert(k, u16::from_be(v.port));
        }
        out.services.sort_by_key(|(k, _, _)| *k);
        Ok(out)
    }

    fn service_stats(&self, svc: u32) -> Result<Stats, Error> {
        let v = self
            .svc_stats
            .get(&svc, 0)
            .map_err(|e| Error::map("svc_stats", "get", e))?;
        Ok(sum(v.iter().copied()))
    }

    fn reset_stats(&mut self, map: StatsMap, id: u32) -> Result<(), Error> {
        let (m, name, capacity) = match map {
            StatsMap::Service => (&mut self.svc_stats, "svc_stats", abi::MAX_SERVICES),
            StatsMap::Backend => (&mut self.backend_stats, "backend_stats", abi::MAX_BACKENDS),
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| Error::Io {
            op: "read /sys/devices/system/cpu/possible",
            source,
        })?;
        let zero = aya::maps::PerCpuValues::try_from(vec![abi::StatsEntry::default(); cpus])
            .map_err(|source| Error::Io {
                op: "per-CPU statistics",
                source,
            })?;
        m.set(id, zero, 0)
            .map_err(|e| full_or(name, capacity, "set", e))
    }

    fn add_service_stats(&mut self, svc: u32, s: Stats) -> Result<(), Error> {
        let v = self
            .svc_stats
            .get(&svc, 0)
            .map_err(|e| full_or("svc_stats", abi::MAX_SERVICES, "get", e))?;
        let mut values: Vec<abi::StatsEntry> = v.iter().copied().collect();
        if let Some(first) = values.first_mut() {
            first.packets = first.packets.wrapping_add(s.packets);
            first.bytes = first.bytes.wrapping_add(s.bytes);
            first.new_flows = first.new_flows.wrapping_add(s.new_flows);
        }
        let values = aya::maps::PerCpuValues::try_from(values).map_err(|source| Error::Io {
            op: "per-CPU statistics",
            source,
        })?;
        self.svc_stats
            .set(svc, values, 0)
            .map_err(|e| full_or("svc_stats", abi::MAX_SERVICES, "set", e))
    }

    fn backend_stats(&self, id: u32) -> Result<Stats, Error> {
        let v = self
            .backend_stats
            .get(&id, 0)
            .map_err(|e| Error::map("backend_stats", "get", e))?;
        Ok(sum(v.iter().copied()))
    }

    fn counters(&self) -> Result<Counters, Error> {
        let mut out = Counters::new();
        for (i, name) in (0u32..).zip(abi::COUNTER_NAMES) {
            let v = self
                .counters
                .get(&i, 0)
                .map_err(|e| Error::map("counters", "get", e))?;
            out.insert(name, v.iter().sum());
        }
        derive_counters(&mut out);
        Ok(out)
    }
}

mod libc_flags {
    /// `BPF_F_INNER_MAP`: inner array maps of different sizes share one outer map
    /// (include/uapi/linux/bpf.h, Linux 5.10).
    pub const BPF_F_INNER_MAP: u32 = 1 << 12;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rx_and_flow_hit_are_derived_from_the_verdicts() {
        let mut c: Counters = abi::COUNTER_NAMES.iter().map(|&n| (n, 0)).collect();
        // 3 not ours, 1 malformed, 2 new flows (one NAT, one encap), 5 NAT hits, 1 encap
        // hit whose encapsulation failed, 1 new flow of the wrong family.
        for (n, v) in [
            ("pass_not_ours", 3),
            ("pass_malformed", 1),
            ("flow_new", 3),
            ("redirect_nat", 6),
            ("redirect_encap", 1),
            ("encap_fail", 1),
            ("drop_family", 1),
        ] {
            c.insert(n, v);
        }
        derive_counters(&mut c);
        assert_eq!(c["rx"], 13);
        assert_eq!(c["flow_hit"], 6);
        // A torn read never goes below zero.
        c.insert("flow_new", 100);
        derive_counters(&mut c);
        assert_eq!(c["flow_hit"], 0);
    }
}
