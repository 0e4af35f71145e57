//! The only `unsafe` in this crate: socket options `netlink-sys` does not wrap.
//! See [socket(7)](https://man7.org/linux/man-pages/man7/socket.7.html).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

fn setsockopt<T>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<T>()).map_err(io::Error::other)?;
    // SAFETY: `fd` is a live socket borrowed for the call; `value` points to a valid,
    // initialised `T` of `len` bytes that outlives the call; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn timeval(d: Duration) -> libc::timeval {
    libc::timeval {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(d.subsec_micros().min(999_999) as i32),
    }
}

/// `SO_RCVTIMEO`: a blocked `recv` fails with `EAGAIN` after `d`.
pub(crate) fn set_recv_timeout(fd: BorrowedFd<'_>, d: Duration) -> io::Result<()> {
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeval(d))
}

/// `SO_SNDTIMEO`.
pub(crate) fn set_send_timeout(fd: BorrowedFd<'_>, d: Duration) -> io::Result<()> {
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &timeval(d))
}

/// `SO_RCVBUFFORCE` (needs `CAP_NET_ADMIN`), so a large batch's acks are not dropped.
pub(crate) fn force_recv_buffer(fd: BorrowedFd<'_>, bytes: libc::c_int) -> io::Result<()> {
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &bytes)
}
