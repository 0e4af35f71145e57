//! The kernel side, behind three small traits so the controller can run on fakes:
//! [`vipmesh_ipvs::IpvsBackend`] for IPVS, [`Rules`] for our netfilter chains and [`Host`]
//! for addresses, sysctls and the kernel version of the LB namespace.
//!
//! The real implementations work inside the LB namespace: IPVS over a generic netlink socket
//! opened there, `iptables-restore` through `nsenter`, addresses with
//! [`ip-address(8)`](https://man7.org/linux/man-pages/man8/ip-address.8.html) and sysctls by
//! writing `/proc/sys` from a thread that entered the namespace
//! ([`proc_sys_net(5)`](https://man7.org/linux/man-pages/man5/proc_sys_net.5.html)).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use vipmesh_netfilter as nf;
use vipmesh_netns::Netns;

use crate::error::Error;
use crate::model::Family;

/// Our netfilter chains in one namespace.
pub trait Rules {
    /// Our chains as they are now (foreign content excluded).
    ///
    /// # Errors
    /// [`Error::Netfilter`].
    fn recorded(&mut self, family: Family) -> Result<nf::OwnedRuleset, Error>;
    /// Whether the kernel already holds exactly `desired`.
    ///
    /// # Errors
    /// [`Error::Netfilter`].
    fn matches(&mut self, desired: &nf::OwnedRuleset) -> Result<bool, Error>;
    /// Makes our chains equal `desired` in one atomic batch.
    ///
    /// # Errors
    /// [`Error::Netfilter`]; nothing is applied then.
    fn apply(&mut self, desired: &nf::OwnedRuleset) -> Result<(), Error>;
}

/// Addresses, sysctls and the kernel version of the LB namespace.
pub trait Host {
    /// The addresses on the LB interface.
    ///
    /// # Errors
    /// [`Error::System`].
    fn addresses(&mut self) -> Result<BTreeSet<IpAddr>, Error>;
    /// Adds a host address (/32 or /128) to the LB interface; present is success.
    ///
    /// # Errors
    /// [`Error::System`].
    fn add_address(&mut self, addr: IpAddr) -> Result<(), Error>;
    /// Removes a host address; absent is success.
    ///
    /// # Errors
    /// [`Error::System`].
    fn del_address(&mut self, addr: IpAddr) -> Result<(), Error>;
    /// Adds many addresses at once (the default adds them one by one).
    ///
    /// # Errors
    /// [`Error::System`]; some addresses may then be added.
    fn add_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), Error> {
        addrs.iter().try_for_each(|a| self.add_address(*a))
    }
    /// Removes many addresses at once (the default removes them one by one).
    ///
    /// # Errors
    /// [`Error::System`]; some addresses may then be removed.
    fn del_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), Error> {
        addrs.iter().try_for_each(|a| self.del_address(*a))
    }
    /// Reads sysctls (dotted keys); unreadable ones are left out.
    fn sysctls(&mut self, keys: &[String]) -> BTreeMap<String, String>;
    /// Writes a sysctl.
    ///
    /// # Errors
    /// [`Error::System`].
    fn set_sysctl(&mut self, key: &str, value: &str) -> Result<(), Error>;
    /// The running kernel's (major, minor).
    fn kernel(&mut self) -> (u32, u32);
}

/// Parses "6.1.0-56-amd64" into (6, 1).
pub fn parse_kernel_release(s: &str) -> (u32, u32) {
    let mut it = s.trim().split(|c: char| !c.is_ascii_digit());
    let major = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let minor = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// Resolves a namespace given as a name under `/run/netns` or an absolute path.
pub fn netns_path(netns: &str) -> PathBuf {
    if netns.starts_with('/') {
        PathBuf::from(netns)
    } else {
        Path::new(vipmesh_netns::NETNS_RUN_DIR).join(netns)
    }
}

/// Opens the LB namespace.
///
/// # Errors
/// [`Error::MissingNamespace`] when it does not exist, [`Error::Netns`] otherwise.
pub fn open_netns(netns: &str) -> Result<Netns, Error> {
    Netns::from_path(netns_path(netns)).map_err(|source| {
        if source.is_not_found() {
            Error::MissingNamespace {
                netns: netns.to_string(),
            }
        } else {
            Error::Netns {
                netns: netns.to_string(),
                source,
            }
        }
    })
}

/// [`Rules`] on the kernel, through `vipmesh-netfilter`.
#[derive(Debug)]
pub struct KernelRules {
    applier: nf::Applier,
    netns: String,
}

impl KernelRules {
    /// Rules in the namespace `netns` (a name or a path).
    pub fn new(netns: &str) -> KernelRules {
        KernelRules {
            applier: nf::Applier::new(nf::NetnsTarget::Path(netns_path(netns))),
            netns: netns.to_string(),
        }
    }

    fn err(&self, op: &str, source: nf::Error) -> Error {
        Error::Netfilter {
            op: op.to_string(),
            netns: self.netns.clone(),
            source: Box::new(source),
        }
    }
}

impl Rules for KernelRules {
    fn recorded(&mut self, family: Family) -> Result<nf::OwnedRuleset, Error> {
        self.applier
            .observe_ruleset(crate::rules::nf_family(family))
            .map_err(|e| self.err("observe", e))
    }

    fn matches(&mut self, desired: &nf::OwnedRuleset) -> Result<bool, Error> {
        self.applier
            .plan(desired)
            .map(|p| p.is_empty())
            .map_err(|e| self.err("plan", e))
    }

    fn apply(&mut self, desired: &nf::OwnedRuleset) -> Result<(), Error> {
        self.applier
            .apply(desired)
            .map(|_| ())
            .map_err(|e| self.err("apply", e))
    }
}

/// [`Host`] on the kernel, inside the LB namespace.
#[derive(Debug)]
pub struct KernelHost {
    netns: Netns,
    name: String,
    interface: String,
}

impl KernelHost {
    /// The LB namespace `netns` (name or path) and its interface on the subnet.
    ///
    /// # Errors
    /// [`Error::MissingNamespace`].
    pub fn new(netns: &str, interface: &str) -> Result<KernelHost, Error> {
        Ok(KernelHost {
            netns: open_netns(netns)?,
            name: netns.to_string(),
            interface: interface.to_string(),
        })
    }

    fn sys(&self, op: String, source: std::io::Error) -> Error {
        Error::System {
            op,
            netns: self.name.clone(),
            source,
        }
    }

    fn ip(&self, args: &[&str]) -> Result<String, Error> {
        self.ip_stdin(args, None)
    }

    /// Runs `ip ARGS` inside the namespace, with `input` on its standard input.
    fn ip_stdin(&self, args: &[&str], input: Option<&str>) -> Result<String, Error> {
        use std::io::Write as _;
        use std::process::Stdio;
        let path = netns_path(&self.name);
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", path.display()))
            .arg("ip")
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let op = format!("ip {}", args.join(" "));
        let mut child = c.spawn().map_err(|e| self.sys(op.clone(), e))?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| self.sys(op.clone(), e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| self.sys(op.clone(), e))?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(self.sys(op, std::io::Error::other(msg)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn host_prefix(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(_) => format!("{addr}/32"),
        IpAddr::V6(_) => format!("{addr}/128"),
    }
}

impl Host for KernelHost {
    fn addresses(&mut self) -> Result<BTreeSet<IpAddr>, Error> {
        let out = self.ip(&["-o", "addr", "show", "dev", &self.interface.clone()])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                w.position(|x| x == "inet" || x == "inet6")?;
                w.next()?.split('/').next()?.parse().ok()
            })
            .collect())
    }

    fn add_address(&mut self, addr: IpAddr) -> Result<(), Error> {
        let iface = self.interface.clone();
        let p = host_prefix(addr);
        let mut args = vec!["addr", "replace", p.as_str(), "dev", iface.as_str()];
        if addr.is_ipv6() {
            args.push("nodad");
        }
        self.ip(&args).map(|_| ())
    }

    fn del_address(&mut self, addr: IpAddr) -> Result<(), Error> {
        if !self.addresses()?.contains(&addr) {
            return Ok(());
        }
        let iface = self.interface.clone();
        self.ip(&["addr", "del", &host_prefix(addr), "dev", &iface])
            .map(|_| ())
    }

    /// One `ip -batch -` process for all of them (`addr replace` is idempotent).
    fn add_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), Error> {
        let mut batch = String::new();
        for a in addrs {
            batch.push_str(&format!(
                "addr replace {} dev {}",
                host_prefix(*a),
                self.interface
            ));
            if a.is_ipv6() {
                batch.push_str(" nodad");
            }
            batch.push('\n');
        }
        self.ip_stdin(&["-batch", "-"], Some(&batch)).map(|_| ())
    }

    /// One `ip -batch -` process for those present.
    fn del_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), Error> {
        let present = self.addresses()?;
        let batch: String = addrs
            .iter()
            .filter(|a| present.contains(a))
            .map(|a| format!("addr del {} dev {}\n", host_prefix(*a), self.interface))
            .collect();
        if batch.is_empty() {
            return Ok(());
        }
        self.ip_stdin(&["-batch", "-"], Some(&batch)).map(|_| ())
    }

    fn sysctls(&mut self, keys: &[String]) -> BTreeMap<String, String> {
        let keys = keys.to_vec();
        self.netns
            .run(move || {
                keys.iter()
                    .filter_map(|k| {
                        let p = format!("/proc/sys/{}", k.replace('.', "/"));
                        std::fs::read_to_string(p)
                            .ok()
                            .map(|v| (k.clone(), v.trim().to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn set_sysctl(&mut self, key: &str, value: &str) -> Result<(), Error> {
        let p = format!("/proc/sys/{}", key.replace('.', "/"));
        let v = value.to_string();
        let res = self
            .netns
            .run(move || std::fs::write(&p, v))
            .map_err(|source| Error::Netns {
                netns: self.name.clone(),
                source,
            })?;
        res.map_err(|e| self.sys(format!("sysctl {key}={value}"), e))
    }

    fn kernel(&mut self) -> (u32, u32) {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| parse_kernel_release(&s))
            .unwrap_or((0, 0))
    }
}

/// In-memory [`Rules`] and [`Host`] with the kernel's semantics, for logic tests.
#[cfg(any(test, feature = "test-util"))]
pub mod fake {
    use super::*;

    /// In-memory rules: what was applied is what is recorded.
    #[derive(Debug, Default)]
    pub struct FakeRules {
        /// The applied ruleset per family.
        pub applied: BTreeMap<Family, nf::OwnedRuleset>,
        /// How many batches were applied.
        pub batches: usize,
    }

    impl Rules for FakeRules {
        fn recorded(&mut self, family: Family) -> Result<nf::OwnedRuleset, Error> {
            Ok(self
                .applied
                .get(&family)
                .cloned()
                .unwrap_or_else(|| nf::OwnedRuleset::new(crate::rules::nf_family(family))))
        }
        fn matches(&mut self, desired: &nf::OwnedRuleset) -> Result<bool, Error> {
            let fam = match desired.family() {
                nf::Family::V4 => Family::V4,
                nf::Family::V6 => Family::V6,
            };
            Ok(self.applied.get(&fam) == Some(desired))
        }
        fn apply(&mut self, desired: &nf::OwnedRuleset) -> Result<(), Error> {
            desired.validate().map_err(|source| Error::Netfilter {
                op: "apply".into(),
                netns: "fake".into(),
                source: Box::new(source),
            })?;
            let fam = match desired.family() {
                nf::Family::V4 => Family::V4,
                nf::Family::V6 => Family::V6,
            };
            self.applied.insert(fam, desired.clone());
            self.batches += 1;
            Ok(())
        }
    }

    /// In-memory addresses and sysctls of a given kernel version.
    #[derive(Debug)]
    pub struct FakeHost {
        /// Addresses on the LB interface.
        pub addrs: BTreeSet<IpAddr>,
        /// Sysctl values.
        pub sysctls: BTreeMap<String, String>,
        /// Kernel version.
        pub kernel: (u32, u32),
    }

    impl Default for FakeHost {
        fn default() -> Self {
            FakeHost {
                addrs: BTreeSet::new(),
                sysctls: BTreeMap::new(),
                kernel: (6, 1),
            }
        }
    }

    impl Host for FakeHost {
        fn addresses(&mut self) -> Result<BTreeSet<IpAddr>, Error> {
            Ok(self.addrs.clone())
        }
        fn add_address(&mut self, addr: IpAddr) -> Result<(), Error> {
            self.addrs.insert(addr);
            Ok(())
        }
        fn del_address(&mut self, addr: IpAddr) -> Result<(), Error> {
            self.addrs.remove(&addr);
            Ok(())
        }
        fn sysctls(&mut self, keys: &[String]) -> BTreeMap<String, String> {
            keys.iter()
                .filter_map(|k| self.sysctls.get(k).map(|v| (k.clone(), v.clone())))
                .collect()
        }
        fn set_sysctl(&mut self, key: &str, value: &str) -> Result<(), Error> {
            self.sysctls.insert(key.to_string(), value.to_string());
            Ok(())
        }
        fn kernel(&mut self) -> (u32, u32) {
            self.kernel
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_kernel_release("6.1.0-56-amd64\n"), (6, 1));
        assert_eq!(parse_kernel_release("5.10.0"), (5, 10));
        assert_eq!(parse_kernel_release("garbage"), (0, 0));
    }
}
