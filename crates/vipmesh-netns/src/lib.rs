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
//! With the `test-util` feature, [`testing`] offers a fresh namespace per test and a small
//! topology builder (namespaces, a bridge, veths, addresses, background processes) that cleans
//! up on drop, even when a test panics.
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

mod sys;
#[cfg(feature = "test-util")]
pub mod testing;

/// Where `ip netns add NAME` keeps its bind mounts.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
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
}

impl Error {
    /// True when the error means "this namespace does not exist".
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
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
