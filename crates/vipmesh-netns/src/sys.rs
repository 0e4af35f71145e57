//! The only code here that calls into libc.
//!
//! Kernel interfaces: [`setns(2)`](https://man7.org/linux/man-pages/man2/setns.2.html) and the
//! `NS_GET_NSTYPE` ioctl of [`ioctl_ns(2)`](https://man7.org/linux/man-pages/man2/ioctl_ns.2.html).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `_IO(0xb7, 0x3)` from `<linux/nsfs.h>`.
const NS_GET_NSTYPE: libc::Ioctl = 0xb703;

/// Moves the calling thread into the network namespace `fd`.
pub(crate) fn setns(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is a valid open descriptor for the duration of the call; setns only
    // reads it and changes the calling thread's namespace.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// True when `fd` refers to a network namespace.
pub(crate) fn is_netns(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor; on a file that
    // is not an nsfs inode it fails with ENOTTY.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
    rc == libc::CLONE_NEWNET
}

/// The (device, inode) pair identifying the namespace behind `fd`.
pub(crate) fn ino(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer of the right type; fstat writes it fully on success.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: fstat returned 0, so `st` is initialised.
    let st = unsafe { st.assume_init() };
    Some((st.st_dev, st.st_ino))
}
