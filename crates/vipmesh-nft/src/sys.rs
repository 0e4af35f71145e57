//! libnftables in-process (the library `nft` itself is built on), loaded with `dlopen(3)`.
//!
//! Spawning `nft` costs a process start per transaction (about 10 ms on the development
//! machine), which dominates a one-element update. A context made here keeps its netlink
//! socket, opened by `nft_ctx_new` on a thread inside the target namespace, so the socket (and
//! every transaction through it) belongs to that namespace; a transaction is then just
//! parsing and one netlink batch. API:
//! [`libnftables(3)`](https://www.netfilter.org/projects/nftables/manpage.html)
//! (`nft_ctx_new`, `nft_ctx_buffer_error`, `nft_run_cmd_from_filename`, `nft_ctx_free`),
//! [`memfd_create(2)`](https://man7.org/linux/man-pages/man2/memfd_create.2.html).
//! No link-time dependency: the crate builds and runs without the library, and
//! [`crate::Runner::Library`] reports [`crate::Error::NftMissing`] when it is absent.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::ptr::NonNull;

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxInt = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxStr = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunFile = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
type CtxSetBool = unsafe extern "C" fn(*mut c_void, bool);

/// The library's name.
pub(crate) const LIBNFTABLES: &str = "libnftables.so.1";

/// One libnftables context (its netlink socket lives in the namespace it was made in).
pub(crate) struct LibNft {
    ctx: NonNull<c_void>,
    free: CtxFree,
    run: RunFile,
    dry_run: CtxSetBool,
    get_err: CtxStr,
    get_out: CtxStr,
}

impl std::fmt::Debug for LibNft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibNft").finish_non_exhaustive()
    }
}

// SAFETY: the context is only used through `&mut self` (callers hold it in a Mutex), and
// libnftables keeps no thread-local state; the socket is a plain fd.
unsafe impl Send for LibNft {}

fn sym<T: Copy>(handle: *mut c_void, name: &CStr) -> Result<T, String> {
    // SAFETY: `handle` is a live dlopen handle; `name` is NUL-terminated.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if p.is_null() {
        return Err(format!("{LIBNFTABLES} has no symbol {name:?}"));
    }
    debug_assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: T is one of the `unsafe extern "C" fn` aliases above, pointer-sized, and the
    // symbol has that C signature in libnftables.h.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

impl LibNft {
    /// Loads the library and makes a context. Call on a thread inside the target namespace.
    pub(crate) fn new() -> Result<LibNft, String> {
        let name = CString::new(LIBNFTABLES).map_err(|e| e.to_string())?;
        // SAFETY: a NUL-terminated name; the handle is never closed (the library stays
        // loaded for the process, as the function pointers we keep require).
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(format!("cannot load {LIBNFTABLES}"));
        }
        let new: CtxNew = sym(handle, c"nft_ctx_new")?;
        let free: CtxFree = sym(handle, c"nft_ctx_free")?;
        let buf_err: CtxInt = sym(handle, c"nft_ctx_buffer_error")?;
        let buf_out: CtxInt = sym(handle, c"nft_ctx_buffer_output")?;
        let get_err: CtxStr = sym(handle, c"nft_ctx_get_error_buffer")?;
        let get_out: CtxStr = sym(handle, c"nft_ctx_get_output_buffer")?;
        // From a file (a memfd): libnftables 1.0.6 reports the wrong line for errors in a
        // multi-line buffer, but the right `path:LINE:COL` for a file.
        let run: RunFile = sym(handle, c"nft_run_cmd_from_filename")?;
        let dry_run: CtxSetBool = sym(handle, c"nft_ctx_set_dry_run")?;
        // SAFETY: NFT_CTX_DEFAULT is 0; a null return is handled.
        let ctx = NonNull::new(unsafe { new(0) }).ok_or("nft_ctx_new failed")?;
        // SAFETY: `ctx` is a live context.
        let ok = unsafe { buf_err(ctx.as_ptr()) == 0 && buf_out(ctx.as_ptr()) == 0 };
        let lib = LibNft {
            ctx,
            free,
            run,
            dry_run,
            get_err,
            get_out,
        };
        if !ok {
            return Err("cannot buffer libnftables output".into());
        }
        Ok(lib)
    }

    /// Runs `script` as one transaction (read from a memfd); returns (success, error text).
    /// `dry`: the kernel validates the transaction and discards it (`nft --check`,
    /// `nft_ctx_set_dry_run`).
    pub(crate) fn run(&mut self, script: &str, dry: bool) -> Result<(bool, String), String> {
        use std::io::Write as _;
        use std::os::fd::{AsRawFd as _, FromRawFd as _};
        // SAFETY: a NUL-terminated name and valid flags; the fd is checked and then owned by
        // the File, which closes it.
        let fd = unsafe { libc::memfd_create(c"vipmesh-nft".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh, owned descriptor.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.write_all(script.as_bytes())
            .map_err(|e| format!("writing the script to a memfd: {e}"))?;
        let path = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|e| e.to_string())?;
        // SAFETY: `ctx` is live and used by one thread at a time (`&mut self`); `path` is
        // NUL-terminated and outlives the call; `file` keeps the memfd open during it.
        let rc = unsafe {
            (self.dry_run)(self.ctx.as_ptr(), dry);
            let rc = (self.run)(self.ctx.as_ptr(), path.as_ptr());
            (self.dry_run)(self.ctx.as_ptr(), false);
            rc
        };
        drop(file);
        // SAFETY: with buffering on, both getters return a NUL-terminated string owned by the
        // context, valid until the next call on it; we copy it at once.
        let err = unsafe {
            let _ = (self.get_out)(self.ctx.as_ptr());
            let p = (self.get_err)(self.ctx.as_ptr());
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        Ok((rc == 0, err))
    }
}

impl Drop for LibNft {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from nft_ctx_new and is freed once.
        unsafe { (self.free)(self.ctx.as_ptr()) }
    }
}
