//! Network namespace handles for vipmesh.
//!
//! A [`Netns`] is an open file descriptor on a network namespace (see
//! [`network_namespaces(7)`](https://man7.org/linux/man-pages/man7/network_namespaces.7.html)).
//! Entering one with [`Netns::enter`] calls
//! [`setns(2)`](https://man7.org/linux/man-pages/man2/setns.2.html) on the *calling thread only*
//! and returns a [`NetnsGuard`] that is `!Send` and switches the thread back when dropped.
//! [`Netns::run`] runs a closure on a fresh thread inside the namespace, which is the safe way
//! to create sockets there: a socket stays in the namespace it was created in.
//!
//! [`rtnl::Rtnl`] is a small synchronous rtnetlink client bound to one namespace (links,
//! addresses with `IFA_PROTO`, routes, neighbours, bridge FDB, link creation), built on the
//! [`rtnetlink`] crate. [`Netns::sysctl_read`] and [`Netns::sysctl_write`] read and write
//! `/proc/sys` from a thread inside the namespace. [`Netns::create_named`] and
//! [`Netns::delete_named`] do what `ip netns add` / `ip netns delete` do
//! ([`ip-netns(8)`](https://man7.org/linux/man-pages/man8/ip-netns.8.html)), without running `ip`.
//!
//! Test support (a fresh namespace per test, a topology builder) lives in `vipmesh-testkit`.
//!
//! # Examples
//!
//! ```no_run
//! use vipmesh_netns::Netns;
//!
//! # fn main() -> Result<(), vipmesh_netns::Error> {
//! let lb = Netns::named("lb-vote")?;
//! // Read a per-namespace sysctl from inside the namespace.
//! let fwd = lb.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))?;
//! println!("ip_forward in lb-vote: {}", fwd.unwrap_or_default().trim());
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

use std::fmt;
use std::fs::File;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

pub mod rtnl;
mod sys;

/// Where `ip netns add NAME` keeps its bind mounts.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The namespace file does not exist.
    #[error("network namespace {path:?} does not exist")]
    NotFound {
        /// The path that was opened.
        path: PathBuf,
    },
    /// A namespace name is empty, too long or contains `/` or NUL.
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Opening the namespace file failed for another reason.
    #[error("cannot open network namespace {path:?}")]
    Open {
        /// The path that was opened.
        path: PathBuf,
        /// The underlying error (errno kept).
        #[source]
        source: std::io::Error,
    },
    /// The file is not a network namespace.
    #[error("{path:?} is not a network namespace")]
    NotNetns {
        /// The path that was opened.
        path: PathBuf,
    },
    /// `setns(2)` failed; `EPERM` means the caller lacks CAP_SYS_ADMIN.
    #[error("setns into network namespace {netns} failed")]
    Setns {
        /// The namespace (path or fd description).
        netns: String,
        /// The underlying error (errno kept).
        #[source]
        source: std::io::Error,
    },
    /// The worker thread of [`Netns::run`] could not be spawned or panicked.
    #[error("worker thread for network namespace {netns} failed: {reason}")]
    Thread {
        /// The namespace (path or fd description).
        netns: String,
        /// What went wrong.
        reason: String,
    },
    /// The kernel rejected an rtnetlink request (see [`rtnl`]).
    #[error("{op} {object} in network namespace {netns}: {source}")]
    Netlink {
        /// The operation, e.g. `"add address"`.
        op: &'static str,
        /// The namespace the socket is bound to.
        netns: String,
        /// The object, e.g. `"10.0.0.1/24 on ifindex 3"`.
        object: String,
        /// The positive errno the kernel answered.
        errno: i32,
        /// The errno as an I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An rtnetlink exchange failed without a kernel errno (the connection closed, or a
    /// reply could not be decoded).
    #[error("{op} {object} in network namespace {netns}: {reason}")]
    Protocol {
        /// The operation.
        op: &'static str,
        /// The namespace the socket is bound to.
        netns: String,
        /// The object.
        object: String,
        /// What went wrong.
        reason: String,
    },
    /// The rtnetlink socket or its runtime could not be created.
    #[error("cannot open an rtnetlink socket in network namespace {netns}")]
    Socket {
        /// The namespace.
        netns: String,
        /// The underlying error (errno kept).
        #[source]
        source: std::io::Error,
    },
    /// A sysctl key is empty, absolute or contains `..`.
    #[error("invalid sysctl key {key:?}: {reason}")]
    InvalidSysctl {
        /// The rejected key.
        key: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Reading or writing a sysctl failed.
    #[error("{op} sysctl {key} in network namespace {netns}")]
    Sysctl {
        /// `"read"` or `"write"`.
        op: &'static str,
        /// The namespace.
        netns: String,
        /// The key as given.
        key: String,
        /// The underlying error (errno kept; `ENOENT` when the key does not exist).
        #[source]
        source: std::io::Error,
    },
    /// Creating a named namespace failed.
    #[error("cannot create network namespace {name:?}: {step}")]
    Create {
        /// The name.
        name: String,
        /// Which step failed.
        step: &'static str,
        /// The underlying error (`EEXIST` when the name is taken).
        #[source]
        source: std::io::Error,
    },
    /// Deleting a named namespace failed.
    #[error("cannot delete network namespace {name:?}: {step}")]
    Delete {
        /// The name.
        name: String,
        /// Which step failed.
        step: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `fstat(2)` on the namespace file failed.
    #[error("cannot stat network namespace {netns}")]
    Identity {
        /// The namespace.
        netns: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True when the error means "this does not exist": the namespace, or (for a netlink
    /// error) the object, i.e. the kernel answered `ENOENT`, `ENODEV`, `EADDRNOTAVAIL` or
    /// `ESRCH`.
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::NotFound { .. } => true,
            Error::Netlink { errno, .. } => matches!(
                *errno,
                libc::ENOENT | libc::ENODEV | libc::EADDRNOTAVAIL | libc::ESRCH
            ),
            Error::Sysctl { source, .. } => source.raw_os_error() == Some(libc::ENOENT),
            _ => false,
        }
    }

    /// True when the kernel answered `EEXIST` (the object, or the namespace name, exists).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The kernel errno behind this error, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { errno, .. } => Some(*errno),
            Error::Open { source, .. }
            | Error::Setns { source, .. }
            | Error::Sysctl { source, .. }
            | Error::Create { source, .. }
            | Error::Delete { source, .. }
            | Error::Identity { source, .. }
            | Error::Socket { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the error is a permission problem (EPERM/EACCES).
    pub fn is_permission_denied(&self) -> bool {
        match self {
            Error::Open { source, .. } | Error::Setns { source, .. } => {
                source.kind() == std::io::ErrorKind::PermissionDenied
            }
            _ => false,
        }
    }
}

/// Runs `f` on a new thread (named `name`) that has first `unshare(CLONE_NEWNET)`d into a
/// new, empty network namespace; the thread ends with `f`. Errors are `(step, cause)`.
fn in_new_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T, (&'static str, std::io::Error)> + Send + 'static,
) -> Result<T, (&'static str, std::io::Error)> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            sys::unshare_net().map_err(|e| ("unshare(CLONE_NEWNET)", e))?;
            f()
        })
        .map_err(|e| ("spawn a thread", e))?
        .join()
        .unwrap_or_else(|_| {
            Err((
                "thread panicked",
                std::io::Error::from_raw_os_error(libc::EIO),
            ))
        })
}

/// An open handle on a network namespace.
pub struct Netns {
    fd: OwnedFd,
    path: Option<PathBuf>,
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netns").field("path", &self.path).finish()
    }
}

/// The identity of a network namespace: device and inode of its nsfs file.
///
/// Two handles with equal ids refer to the same namespace. A namespace deleted and created
/// again under the same name gets a new inode, so comparing ids detects the re-creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetnsId {
    /// `st_dev` of the nsfs file.
    pub dev: u64,
    /// `st_ino` of the nsfs file (the number `ip netns identify` and `/proc/PID/ns/net` show).
    pub ino: u64,
}

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}] (dev {})", self.ino, self.dev)
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{}", p.display()),
            None => f.write_str("<netns fd>"),
        }
    }
}

impl Netns {
    /// A handle on the calling thread's network namespace (`/proc/thread-self/ns/net`).
    ///
    /// # Errors
    /// [`Error::Open`] if `/proc` is unavailable.
    pub fn current() -> Result<Netns, Error> {
        let mut ns = Self::from_path("/proc/thread-self/ns/net")?;
        ns.path = None;
        Ok(ns)
    }

    /// Opens the namespace at `path` (a bind mount such as `/run/netns/NAME`, or
    /// `/proc/PID/ns/net`).
    ///
    /// # Errors
    /// [`Error::NotFound`] if the path does not exist, [`Error::NotNetns`] if it is not a
    /// network namespace, [`Error::Open`] otherwise.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Netns, Error> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound { path: path.clone() }
            } else {
                Error::Open {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let fd: OwnedFd = file.into();
        if !sys::is_netns(fd.as_fd()) {
            return Err(Error::NotNetns { path });
        }
        Ok(Netns {
            fd,
            path: Some(path),
        })
    }

    /// Opens the namespace named `name` under [`NETNS_RUN_DIR`], as made by `ip netns add`.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for an empty name or one with `/`, otherwise as
    /// [`Netns::from_path`].
    pub fn named(name: &str) -> Result<Netns, Error> {
        validate_name(name)?;
        Self::from_path(Path::new(NETNS_RUN_DIR).join(name))
    }

    /// The path this handle was opened from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Moves the calling thread into this namespace until the guard is dropped.
    ///
    /// # Errors
    /// [`Error::Setns`] (errno kept; `EPERM` without CAP_SYS_ADMIN).
    pub fn enter(&self) -> Result<NetnsGuard, Error> {
        let prev = Netns::current()?;
        sys::setns(self.fd.as_fd()).map_err(|source| Error::Setns {
            netns: self.to_string(),
            source,
        })?;
        Ok(NetnsGuard {
            prev,
            _not_send: PhantomData,
        })
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    ///
    /// # Errors
    /// [`Error::Setns`] if the thread cannot enter the namespace, [`Error::Thread`] if it
    /// cannot be spawned or `f` panics.
    pub fn run<F, T>(&self, f: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let name = self.to_string();
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name("vipmesh-netns".into())
                .spawn_scoped(s, || -> Result<T, Error> {
                    // The thread exits afterwards, so it need not switch back.
                    sys::setns(self.fd.as_fd()).map_err(|source| Error::Setns {
                        netns: self.to_string(),
                        source,
                    })?;
                    Ok(f())
                })
                .map_err(|e| Error::Thread {
                    netns: name.clone(),
                    reason: e.to_string(),
                })?;
            handle.join().unwrap_or_else(|_| {
                Err(Error::Thread {
                    netns: name.clone(),
                    reason: "the closure panicked".into(),
                })
            })
        })
    }

    /// Whether this handle and `other` refer to the same namespace (same inode).
    pub fn same_as(&self, other: &Netns) -> bool {
        sys::ino(self.fd.as_fd()) == sys::ino(other.fd.as_fd())
    }

    /// The identity (device and inode) of this namespace.
    ///
    /// # Errors
    /// [`Error::Identity`] if `fstat(2)` fails.
    pub fn id(&self) -> Result<NetnsId, Error> {
        let (dev, ino) = sys::stat_id(self.fd.as_fd()).map_err(|source| Error::Identity {
            netns: self.to_string(),
            source,
        })?;
        Ok(NetnsId { dev, ino })
    }

    /// A second handle on the same namespace (a duplicated fd).
    ///
    /// # Errors
    /// [`Error::Open`] if the fd cannot be duplicated.
    pub fn try_clone(&self) -> Result<Netns, Error> {
        let fd = self.fd.try_clone().map_err(|source| Error::Open {
            path: self.path.clone().unwrap_or_default(),
            source,
        })?;
        Ok(Netns {
            fd,
            path: self.path.clone(),
        })
    }

    /// Creates a new, empty network namespace bound at `/run/netns/NAME`, as
    /// `ip netns add NAME` does ([`ip-netns(8)`](https://man7.org/linux/man-pages/man8/ip-netns.8.html)):
    /// makes [`NETNS_RUN_DIR`] a shared mount point (so the bind mount propagates to other
    /// mount namespaces), creates the file, then on a helper thread `unshare(CLONE_NEWNET)`
    /// and bind-mounts the thread's namespace on the file. Needs CAP_SYS_ADMIN.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad name; [`Error::Create`] naming the failed step, with
    /// `EEXIST` ([`Error::is_exists`]) when the name is taken.
    pub fn create_named(name: &str) -> Result<Netns, Error> {
        validate_name(name)?;
        let create = |step: &'static str| {
            let name = name.to_string();
            move |source: std::io::Error| Error::Create { name, step, source }
        };
        let run_dir = Path::new(NETNS_RUN_DIR);
        std::fs::create_dir_all(run_dir).map_err(create("mkdir /run/netns"))?;
        let mut made_mount_point = false;
        while let Err(e) = sys::mount(Path::new(""), run_dir, libc::MS_SHARED | libc::MS_REC) {
            if e.raw_os_error() != Some(libc::EINVAL) || made_mount_point {
                return Err(create("make /run/netns shared")(e));
            }
            sys::mount(run_dir, run_dir, libc::MS_BIND | libc::MS_REC)
                .map_err(create("bind-mount /run/netns on itself"))?;
            made_mount_point = true;
        }
        let path = run_dir.join(name);
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(create("create the namespace file"))?;
        let target = path.clone();
        let bound = in_new_netns("vipmesh-netns-add", move || {
            sys::mount(
                Path::new("/proc/thread-self/ns/net"),
                &target,
                libc::MS_BIND,
            )
            .map_err(|e| ("bind-mount the namespace", e))
        });
        if let Err((step, source)) = bound {
            let _ = std::fs::remove_file(&path);
            return Err(Error::Create {
                name: name.to_string(),
                step,
                source,
            });
        }
        Self::from_path(&path)
    }

    /// Creates a new, empty network namespace that has no name: it lives exactly as long as
    /// the returned handle (and whatever runs in it), so nothing is left behind when the
    /// process ends, however it ends. A helper thread `unshare(CLONE_NEWNET)`s
    /// ([`unshare(2)`](https://man7.org/linux/man-pages/man2/unshare.2.html)), opens
    /// `/proc/thread-self/ns/net` and exits. Used for trial runs that must not touch a real
    /// namespace. Needs CAP_SYS_ADMIN.
    ///
    /// # Errors
    /// [`Error::Create`] (name `<anonymous>`) naming the failed step.
    ///
    /// # Examples
    /// ```no_run
    /// let scratch = vipmesh_netns::Netns::anonymous()?;
    /// assert!(!scratch.same_as(&vipmesh_netns::Netns::current()?));
    /// # Ok::<(), vipmesh_netns::Error>(())
    /// ```
    pub fn anonymous() -> Result<Netns, Error> {
        in_new_netns("vipmesh-netns-new", || {
            Netns::current().map_err(|e| {
                let errno = e.errno().unwrap_or(libc::EIO);
                (
                    "open /proc/thread-self/ns/net",
                    std::io::Error::from_raw_os_error(errno),
                )
            })
        })
        .map_err(|(step, source)| Error::Create {
            name: "<anonymous>".to_string(),
            step,
            source,
        })
    }

    /// Deletes the namespace bound at `/run/netns/NAME`, as `ip netns delete NAME` does:
    /// detaches the bind mount and removes the file. The namespace itself lives on while a
    /// process or an open handle still refers to it. Call it only for a namespace you created.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::Delete`] naming the failed step (`ENOENT` when there
    /// is no such name).
    pub fn delete_named(name: &str) -> Result<(), Error> {
        validate_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let delete = |step: &'static str| {
            let name = name.to_string();
            move |source: std::io::Error| Error::Delete { name, step, source }
        };
        if let Err(e) = sys::umount_detach(&path) {
            // EINVAL: not a mount point (a stale file); remove it anyway.
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(delete("unmount")(e));
            }
        }
        std::fs::remove_file(&path).map_err(delete("remove the file"))
    }

    /// Reads a sysctl of this namespace from a thread inside it, trimmed.
    ///
    /// `key` is either dotted (`net.ipv4.ip_forward`) or a path under `/proc/sys`
    /// (`net/ipv4/conf/eth0.100/forwarding`, needed when an interface name has a dot).
    /// See [`sysctl(8)`](https://man7.org/linux/man-pages/man8/sysctl.8.html) and
    /// `Documentation/networking/ip-sysctl.rst` in the kernel.
    ///
    /// # Errors
    /// [`Error::InvalidSysctl`] for a bad key, [`Error::Setns`]/[`Error::Thread`] when the
    /// thread cannot enter the namespace, [`Error::Sysctl`] when the read fails (`ENOENT`
    /// when the key does not exist here, see [`Error::is_not_found`]).
    pub fn sysctl_read(&self, key: &str) -> Result<String, Error> {
        let path = sysctl_path(key)?;
        self.run(|| std::fs::read_to_string(&path))?
            .map(|v| v.trim().to_string())
            .map_err(|source| Error::Sysctl {
                op: "read",
                netns: self.to_string(),
                key: key.to_string(),
                source,
            })
    }

    /// Writes a sysctl of this namespace from a thread inside it (key as in
    /// [`Netns::sysctl_read`]).
    ///
    /// # Errors
    /// As [`Netns::sysctl_read`], with `op` `"write"`.
    pub fn sysctl_write(&self, key: &str, value: &str) -> Result<(), Error> {
        let path = sysctl_path(key)?;
        self.run(|| std::fs::write(&path, value.as_bytes()))?
            .map_err(|source| Error::Sysctl {
                op: "write",
                netns: self.to_string(),
                key: key.to_string(),
                source,
            })
    }
}

/// Maps a sysctl key to its path under `/proc/sys`.
fn sysctl_path(key: &str) -> Result<PathBuf, Error> {
    let invalid = |reason| Error::InvalidSysctl {
        key: key.to_string(),
        reason,
    };
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    if rel.is_empty() {
        return Err(invalid("empty"));
    }
    if rel.starts_with('/') {
        return Err(invalid("absolute path"));
    }
    if rel.contains('\0') {
        return Err(invalid("contains NUL"));
    }
    if rel
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(invalid("empty, '.' or '..' component"));
    }
    Ok(Path::new("/proc/sys").join(rel))
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The calling thread is inside another namespace while this guard lives.
///
/// It is `!Send`: `setns(2)` affects only the thread that called it, so the guard must be
/// dropped on that same thread, where it switches back.
#[derive(Debug)]
pub struct NetnsGuard {
    prev: Netns,
    _not_send: PhantomData<*const ()>,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = sys::setns(self.prev.fd.as_fd()) {
            tracing::error!(error = %e, "could not restore the thread's network namespace");
        }
    }
}

/// Checks a name for use under [`NETNS_RUN_DIR`].
///
/// # Errors
/// [`Error::InvalidName`] when empty, longer than 255 bytes, `.`/`..`, or containing `/` or NUL.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > 255 {
        "longer than 255 bytes"
    } else if name == "." || name == ".." {
        "not a file name"
    } else if name.contains('/') || name.contains('\0') {
        "contains '/' or NUL"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("lb-vote").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            let err = validate_name(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidName { ref name, .. } if name == bad));
        }
        assert!(validate_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn sysctl_keys_map_to_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/forwarding").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        for bad in ["", "/etc/passwd", "net/../../etc", "net..x", "a\0b"] {
            let err = sysctl_path(bad).unwrap_err();
            assert!(
                matches!(err, Error::InvalidSysctl { ref key, .. } if key == bad),
                "{bad}"
            );
        }
    }

    #[test]
    fn missing_namespace_is_not_found() {
        let err = Netns::named("vipmesh-definitely-missing-ns").unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().contains("vipmesh-definitely-missing-ns"));
    }

    #[test]
    fn a_regular_file_is_not_a_netns() {
        let err = Netns::from_path("/proc/self/status").unwrap_err();
        assert!(matches!(err, Error::NotNetns { .. }), "{err}");
    }

    #[test]
    fn current_is_same_as_itself_and_run_stays_there() {
        let a = Netns::current().unwrap();
        let b = Netns::current().unwrap();
        assert!(a.same_as(&b));
        // Entering one's own namespace needs CAP_SYS_ADMIN; only check when we have it.
        if let Ok(v) = a.run(|| 41 + 1) {
            assert_eq!(v, 42);
        }
    }
}
