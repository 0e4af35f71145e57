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

/// The (device, inode) pair of the nsfs file behind `fd`, with the errno on failure.
pub(crate) fn stat_id(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer of the right type; fstat writes it fully on success.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat returned 0, so `st` is initialised.
    let st = unsafe { st.assume_init() };
    Ok((st.st_dev, st.st_ino))
}

/// `unshare(CLONE_NEWNET)` for the calling thread
/// ([`unshare(2)`](https://man7.org/linux/man-pages/man2/unshare.2.html)).
pub(crate) fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare takes a flag word only; it changes the calling thread's namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn cstr(p: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `mount(2)` with no file system type and no data
/// ([`mount(2)`](https://man7.org/linux/man-pages/man2/mount.2.html)).
pub(crate) fn mount(
    source: &std::path::Path,
    target: &std::path::Path,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let src = cstr(source)?;
    let dst = cstr(target)?;
    let none = c"none";
    // SAFETY: all pointers are valid NUL-terminated strings that live across the call; the
    // data argument is NULL, which every flag combination used here accepts.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            none.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `umount2(target, MNT_DETACH)`
/// ([`umount2(2)`](https://man7.org/linux/man-pages/man2/umount2.2.html)).
pub(crate) fn umount_detach(target: &std::path::Path) -> io::Result<()> {
    let dst = cstr(target)?;
    // SAFETY: `dst` is a valid NUL-terminated string that lives across the call.
    let rc = unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
