//! An in-memory IPVS table with the kernel's semantics and errnos, for unit tests of the
//! layers above (feature `test-util`). It is no substitute for the guest tests.
//!
//! What it enforces, as `net/netfilter/ipvs/ip_vs_ctl.c` (Linux 6.1) does:
//! - adding a service or destination that exists: `EEXIST`;
//! - any service operation on a missing service: `ESRCH`; a missing destination: `ENOENT`;
//! - an unknown scheduler: `ENOENT` (set with [`Fake::with_schedulers`]);
//! - lower threshold above upper: `ERANGE`; destination of the other family without
//!   Tunnel, or GUE without a port: `EINVAL`;
//! - `Flush` empties the table; `SetTimeouts` changes only non-zero values;
//! - dumping the destinations of a missing service returns an empty list (the kernel's
//!   dump callback ends silently).
//!
//! Invalid operations (what [`Op::validate`] rejects) fail with the same typed error as
//! the real client, before the table is looked at.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;

use crate::Error;
use crate::backend::{IpvsBackend, Op};
use crate::model::{
    DestEntry, DestKey, Family, FwdMethod, IpvsDest, IpvsService, Scheduler, ServiceEntry,
    ServiceKey, Stats, Timeouts, TunnelType,
};

#[derive(Debug, Clone)]
struct FakeDest {
    dest: IpvsDest,
    active: u32,
    inactive: u32,
}

/// The in-memory IPVS table. See the module docs for the semantics.
#[derive(Debug, Clone)]
pub struct Fake {
    services: BTreeMap<ServiceKey, (IpvsService, BTreeMap<DestKey, FakeDest>)>,
    schedulers: BTreeSet<String>,
    timeouts: Timeouts,
    failures: VecDeque<i32>,
    /// Every operation applied successfully, in order (for assertions).
    pub log: Vec<Op>,
}

impl Default for Fake {
    fn default() -> Self {
        Self::new()
    }
}

impl Fake {
    /// An empty table knowing every scheduler in [`Scheduler::ALL`], with the kernel's
    /// default timeouts (900/120/300).
    pub fn new() -> Self {
        Fake {
            services: BTreeMap::new(),
            schedulers: Scheduler::ALL
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
            timeouts: Timeouts {
                tcp: 900,
                tcp_fin: 120,
                udp: 300,
            },
            failures: VecDeque::new(),
            log: Vec::new(),
        }
    }

    /// Only these schedulers are "loaded"; others fail with `ENOENT`.
    pub fn with_schedulers(mut self, names: &[&str]) -> Self {
        self.schedulers = names.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// The next operations fail with these errnos, in order, whatever they are (a
    /// "Faulty" backend, to prove that retries converge).
    pub fn fail_next(&mut self, errnos: &[i32]) {
        self.failures.extend(errnos);
    }

    /// Sets a destination's connection counts (as traffic would), for drain logic.
    ///
    /// # Errors
    /// `is_not_found()` if the service or destination does not exist.
    pub fn set_conns(
        &mut self,
        svc: &ServiceKey,
        dest: &DestKey,
        active: u32,
        inactive: u32,
    ) -> Result<(), Error> {
        let d = self
            .services
            .get_mut(svc)
            .ok_or_else(|| Error::DumpDests {
                service: *svc,
                source: io::Error::from_raw_os_error(libc::ESRCH),
            })?
            .1
            .get_mut(dest)
            .ok_or_else(|| Error::UpdateDest {
                service: *svc,
                dest: *dest,
                source: io::Error::from_raw_os_error(libc::ENOENT),
            })?;
        d.active = active;
        d.inactive = inactive;
        Ok(())
    }

    /// Current timeouts.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    fn apply(&mut self, op: &Op) -> Result<(), i32> {
        if let Some(e) = self.failures.pop_front() {
            return Err(e);
        }
        match op {
            Op::AddService(s) => {
                if self.services.contains_key(&s.key) {
                    return Err(libc::EEXIST);
                }
                if !self.schedulers.contains(s.scheduler.as_str()) {
                    return Err(libc::ENOENT);
                }
                self.services.insert(s.key, (s.clone(), BTreeMap::new()));
            }
            Op::UpdateService(s) => {
                if !self.schedulers.contains(s.scheduler.as_str()) {
                    return Err(libc::ENOENT);
                }
                let e = self.services.get_mut(&s.key).ok_or(libc::ESRCH)?;
                e.0 = s.clone();
            }
            Op::DelService(k) => {
                self.services.remove(k).ok_or(libc::ESRCH)?;
            }
            Op::AddDest(k, d) | Op::UpdateDest(k, d) => {
                let (svc, dests) = self.services.get_mut(k).ok_or(libc::ESRCH)?;
                if d.lower_threshold > d.upper_threshold && d.upper_threshold != 0 {
                    return Err(libc::ERANGE);
                }
                if d.fwd == FwdMethod::Tunnel && d.tun_type == TunnelType::Gue && d.tun_port == 0 {
                    return Err(libc::EINVAL);
                }
                if Family::of(&d.key.addr) != svc.key.family() && d.fwd != FwdMethod::Tunnel {
                    return Err(libc::EINVAL);
                }
                let add = matches!(op, Op::AddDest(..));
                match (add, dests.get_mut(&d.key)) {
                    (true, Some(_)) => return Err(libc::EEXIST),
                    (true, None) => {
                        dests.insert(
                            d.key,
                            FakeDest {
                                dest: *d,
                                active: 0,
                                inactive: 0,
                            },
                        );
                    }
                    (false, Some(x)) => x.dest = *d,
                    (false, None) => return Err(libc::ENOENT),
                }
            }
            Op::DelDest(k, d) => {
                let (_, dests) = self.services.get_mut(k).ok_or(libc::ESRCH)?;
                dests.remove(d).ok_or(libc::ENOENT)?;
            }
            Op::Flush => self.services.clear(),
            Op::SetTimeouts(t) => {
                for (dst, src) in [
                    (&mut self.timeouts.tcp, t.tcp),
                    (&mut self.timeouts.tcp_fin, t.tcp_fin),
                    (&mut self.timeouts.udp, t.udp),
                ] {
                    if src != 0 {
                        *dst = src;
                    }
                }
            }
        }
        Ok(())
    }
}

impl IpvsBackend for Fake {
    fn services(&mut self) -> Result<Vec<ServiceEntry>, Error> {
        Ok(self
            .services
            .values()
            .map(|(s, _)| ServiceEntry {
                service: s.clone(),
                hashed: true,
                stats: Stats::default(),
            })
            .collect())
    }

    fn dests(&mut self, service: &ServiceKey) -> Result<Vec<DestEntry>, Error> {
        Ok(self
            .services
            .get(service)
            .map(|(_, d)| {
                d.values()
                    .map(|x| DestEntry {
                        dest: x.dest,
                        active_conns: x.active,
                        inactive_conns: x.inactive,
                        persistent_conns: 0,
                        stats: Stats::default(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    fn execute(&mut self, ops: &[Op]) -> Vec<Result<(), Error>> {
        ops.iter()
            .map(|op| {
                op.validate()?;
                self.apply(op)
                    .map_err(|errno| op.error(io::Error::from_raw_os_error(errno)))?;
                self.log.push(op.clone());
                Ok(())
            })
            .collect()
    }

    fn timeouts(&mut self) -> Result<Timeouts, Error> {
        Ok(self.timeouts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn key() -> ServiceKey {
        ServiceKey::addr(Protocol::Tcp, "10.0.0.1".parse().unwrap(), 80)
    }
    fn svc() -> IpvsService {
        IpvsService::new(key(), Scheduler::RR).unwrap()
    }
    fn dest(ip: &str) -> IpvsDest {
        IpvsDest::new(ip.parse().unwrap(), 8080, FwdMethod::Masq)
    }

    #[test]
    fn dest_needs_its_service() {
        let mut f = Fake::new();
        let r = f.execute(&[Op::AddDest(key(), dest("10.0.0.10"))]);
        let e = r.into_iter().next().unwrap().unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert_eq!(e.errno(), Some(libc::ESRCH));
        assert!(matches!(e, Error::AddDest { .. }));
    }

    #[test]
    fn duplicates_give_eexist_and_missing_give_not_found() {
        let mut f = Fake::new();
        let r = f.execute(&[
            Op::AddService(svc()),
            Op::AddService(svc()),
            Op::AddDest(key(), dest("10.0.0.10")),
            Op::AddDest(key(), dest("10.0.0.10")),
            Op::DelDest(key(), dest("10.0.0.11").key),
            Op::UpdateDest(key(), dest("10.0.0.11")),
            Op::DelService(ServiceKey::fwmark(Family::Inet, 5).unwrap()),
        ]);
        assert!(r[0].is_ok());
        assert!(r[1].as_ref().unwrap_err().is_exists());
        assert!(r[2].is_ok());
        assert!(r[3].as_ref().unwrap_err().is_exists());
        assert_eq!(r[4].as_ref().unwrap_err().errno(), Some(libc::ENOENT));
        assert_eq!(r[5].as_ref().unwrap_err().errno(), Some(libc::ENOENT));
        assert_eq!(r[6].as_ref().unwrap_err().errno(), Some(libc::ESRCH));
        assert_eq!(f.log.len(), 2);
    }

    #[test]
    fn unknown_scheduler_and_thresholds() {
        let mut f = Fake::new().with_schedulers(&["rr"]);
        let mut s = svc();
        s.scheduler = Scheduler::new("nosuch").unwrap();
        let r = f.execute(&[Op::AddService(s), Op::AddService(svc())]);
        assert_eq!(r[0].as_ref().unwrap_err().errno(), Some(libc::ENOENT));
        let mut d = dest("10.0.0.10");
        d.upper_threshold = 1;
        d.lower_threshold = 2;
        // validation catches it first, as the client does
        let r = f.execute(&[Op::AddDest(key(), d)]);
        assert!(matches!(
            r[0],
            Err(Error::Invalid {
                field: "lower_threshold",
                ..
            })
        ));
    }

    #[test]
    fn mixed_family_only_with_tunnel() {
        let mut f = Fake::new();
        f.execute(&[Op::AddService(svc())]);
        let v6 = IpvsDest::new("2001:db8::1".parse().unwrap(), 80, FwdMethod::Masq);
        assert!(f.execute(&[Op::AddDest(key(), v6)])[0].is_err());
        let v6t = IpvsDest::new("2001:db8::1".parse().unwrap(), 80, FwdMethod::Tunnel);
        assert!(f.execute(&[Op::AddDest(key(), v6t)])[0].is_ok());
    }

    /// A reconciler that retries what failed converges on a faulty backend.
    #[test]
    fn retries_converge_on_a_faulty_backend() {
        let mut f = Fake::new();
        f.fail_next(
            &[libc::ENOMEM, 0, libc::EBUSY]
                .into_iter()
                .filter(|e| *e != 0)
                .collect::<Vec<_>>(),
        );
        let mut todo = vec![
            Op::AddService(svc()),
            Op::AddDest(key(), dest("10.0.0.10")),
            Op::AddDest(key(), dest("10.0.0.11")),
        ];
        for _round in 0..5 {
            let results = f.execute(&todo);
            todo = todo
                .into_iter()
                .zip(results)
                .filter(|(_, r)| r.as_ref().is_err_and(|e| !e.is_exists()))
                .map(|(op, _)| op)
                .collect();
            if todo.is_empty() {
                break;
            }
        }
        assert!(todo.is_empty());
        assert_eq!(f.dests(&key()).unwrap().len(), 2);
    }

    #[test]
    fn flush_timeouts_conns_and_faults() {
        let mut f = Fake::new();
        f.execute(&[Op::AddService(svc()), Op::AddDest(key(), dest("10.0.0.10"))]);
        f.set_conns(&key(), &dest("10.0.0.10").key, 3, 4).unwrap();
        let d = f.dests(&key()).unwrap();
        assert_eq!((d[0].active_conns, d[0].inactive_conns), (3, 4));
        f.execute(&[Op::SetTimeouts(Timeouts {
            tcp: 0,
            tcp_fin: 60,
            udp: 0,
        })]);
        assert_eq!(
            f.timeouts(),
            Timeouts {
                tcp: 900,
                tcp_fin: 60,
                udp: 300
            }
        );
        f.fail_next(&[libc::ENOMEM]);
        assert_eq!(
            f.execute(&[Op::Flush])[0].as_ref().unwrap_err().errno(),
            Some(libc::ENOMEM)
        );
        assert_eq!(f.services().unwrap().len(), 1);
        assert!(f.execute(&[Op::Flush])[0].is_ok());
        assert!(f.services().unwrap().is_empty());
        assert!(f.dests(&key()).unwrap().is_empty());
    }
}
