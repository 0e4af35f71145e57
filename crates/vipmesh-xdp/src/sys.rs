//! The only module with `unsafe`: `Pod` markers for the shared structs, capability and bpffs
//! system calls.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path};

use crate::{Error, abi};

// SAFETY: every type below is `#[repr(C)]`, made only of integers and integer arrays, has no
// padding the compiler could leave uninitialised (explicit `pad` fields; the layout test checks
// sizes against the object's BTF), and every bit pattern is valid.
unsafe impl aya::Pod for abi::Addr {}
// SAFETY: as above.
unsafe impl aya::Pod for abi::SvcKey {}
// SAFETY: as above.
unsafe impl aya::Pod for abi::Svc {}
// SAFETY: as above.
unsafe impl aya::Pod for abi::BackendEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for abi::FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for abi::Flow {}
// SAFETY: as above.
unsafe impl aya::Pod for abi::RevVips {}
// SAFETY: as above.
unsafe impl aya::Pod for abi::Cfg {}
// SAFETY: as above.
unsafe impl aya::Pod for abi::StatsEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for abi::PortMap {}

/// `CAP_NET_ADMIN` ([capabilities(7)](https://man7.org/linux/man-pages/man7/capabilities.7.html)).
pub const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SYS_ADMIN`.
pub const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_BPF` (Linux 5.8+).
pub const CAP_BPF: u32 = 39;

/// Parses the `CapEff:` line of a `/proc/<pid>/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The calling thread's effective capabilities (capabilities are per thread).
///
/// # Errors
///
/// [`Error::Io`] if `/proc/thread-self/status` is unreadable or has no `CapEff` line.
pub fn effective_caps() -> Result<u64, Error> {
    let status =
        std::fs::read_to_string("/proc/thread-self/status").map_err(|source| Error::Io {
            op: "read /proc/thread-self/status",
            source,
        })?;
    parse_cap_eff(&status).ok_or_else(|| Error::Io {
        op: "parse CapEff in /proc/thread-self/status",
        source: io::Error::from(io::ErrorKind::InvalidData),
    })
}

/// Checks that `caps` allows loading BPF (`CAP_BPF` or `CAP_SYS_ADMIN`) and attaching to
/// interfaces (`CAP_NET_ADMIN`).
///
/// # Errors
///
/// [`Error::MissingCapability`] naming the first missing capability.
pub fn check_caps(caps: u64) -> Result<(), Error> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        return Err(Error::MissingCapability {
            capability: "CAP_BPF",
            op: "load eBPF programs",
        });
    }
    if !has(CAP_NET_ADMIN) {
        return Err(Error::MissingCapability {
            capability: "CAP_NET_ADMIN",
            op: "attach XDP and tc programs",
        });
    }
    Ok(())
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn c_path(path: &Path) -> Result<CString, Error> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| Error::InvalidConfig {
        field: "pin_root",
        value: path.display().to_string(),
        reason: if e.nul_position() > 0 {
            "contains a NUL byte"
        } else {
            "starts with NUL"
        },
    })
}

/// Whether `path` is the root of a mounted bpffs
/// ([statfs(2)](https://man7.org/linux/man-pages/man2/statfs.2.html)).
pub fn is_bpffs(path: &Path) -> Result<bool, Error> {
    let c = c_path(path)?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
    // right size; statfs writes at most one `struct statfs`.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Ok(false);
    }
    // SAFETY: statfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    #[allow(
        clippy::useless_conversion,
        reason = "f_type's width differs between targets"
    )]
    let f_type = i64::from(st.f_type);
    Ok(f_type == BPF_FS_MAGIC)
}

/// Mounts bpffs at `path` unless it is already there
/// ([mount(2)](https://man7.org/linux/man-pages/man2/mount.2.html)).
///
/// # Errors
///
/// [`Error::BpffsUnavailable`] with the mount errno.
pub fn ensure_bpffs(path: &Path) -> Result<(), Error> {
    if is_bpffs(path)? {
        return Ok(());
    }
    let target = c_path(path)?;
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call; data
    // is null, which mount(2) accepts for bpffs.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::BpffsUnavailable {
            path: path.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    tracing::info!(path = %path.display(), "mounted bpffs");
    Ok(())
}

/// Drops capabilities from the calling thread's effective set (test helper: capabilities are
/// per thread, so this affects only the thread that calls it)
/// ([capset(2)](https://man7.org/linux/man-pages/man2/capset.2.html)).
///
/// # Errors
///
/// [`Error::Io`] with the errno of capget/capset.
#[cfg(any(test, feature = "test-util"))]
pub fn drop_effective_caps(caps: &[u32]) -> Result<(), Error> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const V3: u32 = 0x2008_0522;
    let mut hdr = Header {
        version: V3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: hdr and data are valid for the v3 ABI (one header, two data structs).
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(Error::Io {
            op: "capget",
            source: io::Error::last_os_error(),
        });
    }
    for &c in caps {
        let (i, bit) = ((c / 32) as usize, c % 32);
        if let Some(d) = data.get_mut(i) {
            d.effective &= !(1 << bit);
        }
    }
    hdr.pid = 0;
    // SAFETY: as above; capset only reads the structs.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) };
    if rc != 0 {
        return Err(Error::Io {
            op: "capset",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The inode of the calling thread's network namespace (`/proc/thread-self/ns/net`), 0 when
/// it cannot be read ([namespaces(7)](https://man7.org/linux/man-pages/man7/namespaces.7.html)).
pub fn current_netns_ino() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/thread-self/ns/net").map_or(0, |m| m.ino())
}

/// The index of interface `name` in the calling thread's netns, 0 when there is none
/// ([if_nametoindex(3)](https://man7.org/linux/man-pages/man3/if_nametoindex.3.html)).
pub fn if_nametoindex(name: &std::ffi::CStr) -> u32 {
    // SAFETY: `name` is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// Waits until `fd` is readable or `timeout_ms` passes; returns whether it is readable
/// ([poll(2)](https://man7.org/linux/man-pages/man2/poll.2.html)).
pub fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, timeout_ms: i32) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd and the fd is borrowed for the duration of the call.
    let rc = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    rc > 0 && p.revents & libc::POLLIN != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_parsing_and_check() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let caps = parse_cap_eff(s).unwrap();
        assert!(check_caps(caps).is_ok());
        assert_eq!(parse_cap_eff("nothing"), None);
        let no_bpf = caps & !(1 << CAP_BPF) & !(1 << CAP_SYS_ADMIN);
        assert!(matches!(
            check_caps(no_bpf),
            Err(Error::MissingCapability {
                capability: "CAP_BPF",
                ..
            })
        ));
        let no_net = caps & !(1 << CAP_NET_ADMIN);
        assert!(matches!(
            check_caps(no_net),
            Err(Error::MissingCapability {
                capability: "CAP_NET_ADMIN",
                ..
            })
        ));
        // CAP_SYS_ADMIN alone (kernels before CAP_BPF) is enough to load.
        assert!(check_caps(caps & !(1 << CAP_BPF)).is_ok());
    }
}
