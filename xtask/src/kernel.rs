//! The guest kernels: Debian bookworm's stock kernels, fetched with `apt-get download`,
//! unpacked (not installed) into a project-owned cache, plus a tiny initramfs that mounts the
//! host's root over virtio-9p.
//!
//! Two lines are known ([`Line`]): 6.1 (`linux-image-amd64`, bookworm's default kernel) and
//! 6.12 (`linux-image-6.12-amd64`, the meta-package bookworm carries in its main and security
//! archives since Debian 12.10). Each meta-package names the versioned image package, which is
//! downloaded once; a newer archive does not replace a ready cache entry.
//!
//! Cache: `$VIPMESH_CACHE` or `$XDG_CACHE_HOME/vipmesh` or `~/.cache/vipmesh`, under `vm/`.

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{self, Result};
use crate::lab_err;

/// A ready guest kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The module directory name, e.g. `6.1.0-56-amd64`.
    pub version: String,
    /// The cache directory of this kernel package.
    pub dir: PathBuf,
    /// The kernel image to boot (an uncompressed ELF vmlinux when extraction worked).
    pub image: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
}

/// A kernel line the lab can boot: Debian's meta-package picks the exact version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Line {
    /// Linux 6.1 LTS, bookworm's default (`linux-image-amd64`).
    V6_1,
    /// Linux 6.12 LTS (`linux-image-6.12-amd64`), which has tcx and newer netfilter/IPVS.
    V6_12,
}

/// The environment variable that selects the guest kernel line (`6.1` or `6.12`).
pub const KERNEL_ENV: &str = "VIPMESH_GUEST_KERNEL";

impl Line {
    /// Every line, in the order the test stage boots them.
    pub const ALL: [Line; 2] = [Line::V6_1, Line::V6_12];

    /// `6.1` or `6.12`, as `--kernel` and [`KERNEL_ENV`] take it.
    pub fn label(self) -> &'static str {
        match self {
            Line::V6_1 => "6.1",
            Line::V6_12 => "6.12",
        }
    }

    /// The Debian meta-package whose `Depends:` names the image package.
    fn meta_package(self) -> &'static str {
        match self {
            Line::V6_1 => "linux-image-amd64",
            Line::V6_12 => "linux-image-6.12-amd64",
        }
    }

    /// Parses `6.1` / `6.12` (a `v` prefix is accepted).
    pub fn parse(s: &str) -> Result<Line> {
        match s.trim().trim_start_matches('v') {
            "6.1" => Ok(Line::V6_1),
            "6.12" => Ok(Line::V6_12),
            other => Err(lab_err!(
                "unknown guest kernel {other:?}; known: {}",
                Line::ALL.map(Line::label).join(", ")
            )),
        }
    }

    /// [`KERNEL_ENV`] when set, else 6.1.
    pub fn from_env() -> Result<Line> {
        match std::env::var(KERNEL_ENV) {
            Ok(v) if !v.trim().is_empty() => {
                Line::parse(&v).map_err(|e| lab_err!("{KERNEL_ENV}: {e}"))
            }
            _ => Ok(Line::V6_1),
        }
    }

    /// Whether a module directory name (`6.1.0-57-amd64`, `6.12.118+deb12-amd64`) is this line.
    fn owns(self, module_version: &str) -> bool {
        let mut parts = module_version.split(|c: char| !c.is_ascii_digit());
        let (major, minor) = (parts.next(), parts.next());
        format!("{}.{}", major.unwrap_or(""), minor.unwrap_or("")) == self.label()
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl Kernel {
    /// `/lib/modules/<version>` inside the unpacked package.
    pub fn modules(&self) -> PathBuf {
        self.dir.join("root/lib/modules").join(&self.version)
    }
}

pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VIPMESH_CACHE") {
        return PathBuf::from(d).join("vm");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("vipmesh").join("vm")
}

/// The modules the initramfs loads (with their dependencies) to mount the 9p root.
const INITRD_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// The module directory name inside an unpacked kernel package.
fn module_version(dir: &Path) -> Option<String> {
    fs::read_dir(dir.join("root/lib/modules"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
}

/// The newest ready cache entry of `line`.
fn find_ready(cache: &Path, line: Line) -> Option<Kernel> {
    let mut dirs: Vec<(String, PathBuf)> = fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("linux-image-"))
                && p.join("ready").exists()
        })
        .filter_map(|p| module_version(&p).map(|v| (v, p)))
        .filter(|(v, _)| line.owns(v))
        .collect();
    dirs.sort();
    let (version, dir) = dirs.pop()?;
    let vmlinux = dir.join("vmlinux");
    let image = if vmlinux.exists() {
        vmlinux
    } else {
        dir.join("root/boot").join(format!("vmlinuz-{version}"))
    };
    Some(Kernel {
        version,
        initrd: dir.join("initrd.cpio"),
        dir,
        image,
    })
}

/// Makes every known line ready (what `cargo xtask setup` and the test stage need).
pub fn ensure_all() -> Result<Vec<Kernel>> {
    Line::ALL.into_iter().map(ensure_line).collect()
}

/// Returns the cached kernel of `line`, fetching and preparing it first if needed (under a
/// lock, so concurrent first runs do the work once).
pub fn ensure_line(line: Line) -> Result<Kernel> {
    let cache = cache_dir();
    if let Some(k) = find_ready(&cache, line) {
        return Ok(k);
    }
    fs::create_dir_all(&cache)
        .map_err(|e| lab_err!("cannot create cache {}: {e}", cache.display()))?;
    let lock = fs::File::create(cache.join(".lock"))
        .map_err(|e| lab_err!("cannot create lock in {}: {e}", cache.display()))?;
    // SAFETY: flock on a valid descriptor we own; blocks until the lock is ours.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(lab_err!("cannot lock {}", cache.display()));
    }
    if let Some(k) = find_ready(&cache, line) {
        return Ok(k);
    }
    prepare(&cache, line)
}

/// The versioned image package the line's meta-package depends on.
fn kernel_package(line: Line) -> Result<String> {
    let meta = line.meta_package();
    let query = || -> Option<String> {
        let out = Command::new("apt-cache")
            .args(["depends", meta])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .map(str::to_string)
    };
    if let Some(p) = query() {
        return Ok(p);
    }
    cmd::output(Command::new("apt-get").args(["update", "-qq"]))?;
    query().ok_or_else(|| {
        lab_err!("missing kernel package: apt-cache knows no {meta} (guest kernel {line})")
    })
}

fn prepare(cache: &Path, line: Line) -> Result<Kernel> {
    let pkg = kernel_package(line)?;
    eprintln!("xtask: fetching guest kernel {line}: package {pkg}");
    let tmp = cache.join(format!("tmp.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| lab_err!("cannot create {}: {e}", tmp.display()))?;
    let download = || {
        cmd::output(
            Command::new("apt-get")
                .current_dir(&tmp)
                .args(["download", &pkg]),
        )
    };
    if download().is_err() {
        cmd::output(Command::new("apt-get").args(["update", "-qq"]))?;
        download().map_err(|e| lab_err!("missing kernel package {pkg}: {e}"))?;
    }
    let deb = fs::read_dir(&tmp)
        .map_err(|e| lab_err!("{}: {e}", tmp.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| {
            lab_err!("missing kernel package: apt-get download {pkg} produced no .deb")
        })?;
    let root = tmp.join("root");
    cmd::output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let _ = fs::remove_file(&deb);
    let version = fs::read_dir(root.join("lib/modules"))
        .map_err(|e| lab_err!("kernel package {pkg} has no lib/modules: {e}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| lab_err!("kernel package {pkg} has no module directory"))?;
    cmd::output(Command::new("depmod").arg("-b").arg(&root).arg(&version))?;
    extract_vmlinux(
        &root.join("boot").join(format!("vmlinuz-{version}")),
        &tmp.join("vmlinux"),
    );
    build_initrd(&tmp, &root, &version)?;
    fs::write(tmp.join("ready"), b"ok\n").map_err(|e| lab_err!("{}: {e}", tmp.display()))?;
    let dir = cache.join(&pkg);
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir)
        .map_err(|e| lab_err!("cannot move kernel into {}: {e}", dir.display()))?;
    if !line.owns(&version) {
        return Err(lab_err!(
            "package {pkg} holds kernel {version}, not a {line} kernel"
        ));
    }
    find_ready(cache, line).ok_or_else(|| lab_err!("kernel cache {} is incomplete", dir.display()))
}

/// Extracts the uncompressed ELF from a bzImage whose payload is xz. Booting it through PVH
/// skips the emulated decompression, which halves boot time under TCG. On any failure the
/// bzImage is used instead.
fn extract_vmlinux(bzimage: &Path, out: &Path) {
    let Ok(data) = fs::read(bzimage) else { return };
    let magic = b"\xfd7zXZ\x00";
    let Some(off) = data.windows(magic.len()).position(|w| w == magic) else {
        return;
    };
    let Ok(mut child) = Command::new("xz")
        .args(["-dcq"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return;
    };
    let Some(mut stdin) = child.stdin.take() else {
        return;
    };
    let payload = data[off..].to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&payload);
    });
    let Ok(res) = child.wait_with_output() else {
        return;
    };
    let _ = writer.join();
    // xz complains about trailing garbage after the stream; the output is still complete.
    if res.stdout.starts_with(b"\x7fELF") {
        let _ = fs::write(out, &res.stdout);
    }
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin; export PATH=/bin
mkdir -p /proc /sys /dev; mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /m/order); do insmod /m/$m; done
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /lower
mount -t tmpfs -o mode=755 tmpfs /rw; mkdir -p /rw/u /rw/w
mount -t overlay -o lowerdir=/lower,upperdir=/rw/u,workdir=/rw/w overlay /newroot
for d in proc sys dev; do mount --move /$d /newroot/$d; done
mount -t tmpfs -o mode=755 tmpfs /newroot/run
mkdir -p /newroot/dev/pts /newroot/dev/shm /newroot/run/lab/ctl
mount -t devpts devpts /newroot/dev/pts; mount -t tmpfs tmpfs /newroot/dev/shm
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 ctl /newroot/run/lab/ctl
. /newroot/run/lab/ctl/vars
mkdir -p /newroot/lib/modules/$KVER "/newroot$OUT"
mount --bind "/newroot$KMOD" /newroot/lib/modules/$KVER
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none out "/newroot$OUT"
mount -t cgroup2 none /newroot/sys/fs/cgroup 2>/dev/null
mount -t bpf bpf /newroot/sys/fs/bpf 2>/dev/null
cp /bin/busybox /newroot/run/lab/busybox
exec switch_root /newroot /run/lab/busybox sh -c '
  /run/lab/busybox stty -onlcr
  /bin/bash /run/lab/ctl/cmd </dev/null; echo $? > /run/lab/ctl/rc
  sync; /run/lab/busybox poweroff -f'
"#;

fn build_initrd(tmp: &Path, root: &Path, version: &str) -> Result<()> {
    let ird = tmp.join("ird");
    let io = |e: std::io::Error| lab_err!("building the initramfs in {}: {e}", ird.display());
    fs::create_dir_all(ird.join("bin")).map_err(io)?;
    fs::create_dir_all(ird.join("m")).map_err(io)?;
    fs::copy("/bin/busybox", ird.join("bin/busybox"))
        .map_err(|e| lab_err!("busybox-static missing (/bin/busybox): {e}"))?;
    let deps = cmd::output(
        Command::new("modprobe")
            .arg("-d")
            .arg(root)
            .args(["-S", version, "--show-depends", "-a"])
            .args(INITRD_MODULES),
    )?;
    let mut order = String::new();
    let mut seen = std::collections::BTreeSet::new();
    for line in String::from_utf8_lossy(&deps.stdout).lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("insmod") {
            continue;
        }
        let Some(path) = words.next() else { continue };
        let file = Path::new(path);
        let Some(name) = file.file_name() else {
            continue;
        };
        if !seen.insert(name.to_os_string()) {
            continue;
        }
        fs::copy(file, ird.join("m").join(name)).map_err(io)?;
        order.push_str(&name.to_string_lossy());
        order.push('\n');
    }
    fs::write(ird.join("m/order"), order).map_err(io)?;
    fs::write(ird.join("init"), INIT).map_err(io)?;
    cmd::output(Command::new("chmod").arg("+x").arg(ird.join("init")))?;
    let out = cmd::output(
        Command::new("sh")
            .current_dir(&ird)
            .args(["-c", "find . | cpio -o -H newc --quiet"]),
    )?;
    fs::write(tmp.join("initrd.cpio"), out.stdout).map_err(io)?;
    fs::remove_dir_all(&ird).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_own_their_module_directories() {
        assert_eq!(Line::parse("6.1").ok(), Some(Line::V6_1));
        assert_eq!(Line::parse("v6.12").ok(), Some(Line::V6_12));
        assert!(Line::parse("6.2").is_err());
        assert!(Line::V6_1.owns("6.1.0-57-amd64"));
        assert!(!Line::V6_1.owns("6.12.118+deb12-amd64"));
        assert!(Line::V6_12.owns("6.12.118+deb12-amd64"));
        assert!(!Line::V6_12.owns("6.1.0-57-amd64"));
    }
}
