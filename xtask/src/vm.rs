//! `cargo xtask vm`: run a command as root in a throw-away guest on Debian's stock kernel.
//!
//! `--kernel 6.1|6.12` (or `VIPMESH_GUEST_KERNEL`) picks the kernel line; 6.1 by default.
//!
//! The guest sees the host's `/` read-only over virtio-9p under a tmpfs overlay (every path
//! is there and writable, changes are discarded), and the output directory (default: the
//! current directory) read-write at the same path. It has no network device: all traffic
//! stays in namespaces inside the guest. The command's exit status is returned; 124 when
//! the hard timeout killed the guest, 125 when the guest reported no status.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::{self, Result, shell_quote};
use crate::{kernel, lab_err, prereq};

/// Options of one guest run.
#[derive(Debug, Clone)]
pub struct VmOpts {
    pub timeout: Duration,
    pub mem_mb: u32,
    pub cpus: u32,
    pub out: PathBuf,
    /// The guest kernel line.
    pub kernel: kernel::Line,
}

impl Default for VmOpts {
    fn default() -> Self {
        VmOpts {
            timeout: Duration::from_secs(600),
            mem_mb: 2048,
            cpus: 2,
            out: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            // A bad VIPMESH_GUEST_KERNEL is reported by `main`/`run` through `Line::from_env`.
            kernel: kernel::Line::from_env().unwrap_or(kernel::Line::V6_1),
        }
    }
}

/// Exit status when the hard timeout fired.
pub const TIMED_OUT: i32 = 124;
/// Exit status when the guest did not report one.
pub const NO_STATUS: i32 = 125;

pub fn main(args: &[String]) -> i32 {
    let usage = "usage: cargo xtask vm [--kernel 6.1|6.12] [--timeout SECS] [--mem MB] [--cpus N] [--out DIR] -- <command...>";
    let mut opts = VmOpts::default();
    if let Err(e) = kernel::Line::from_env() {
        return bad(usage, &e.to_string());
    }
    let mut i = 0;
    let mut command: Vec<String> = Vec::new();
    while i < args.len() {
        let a = args[i].as_str();
        let val = args.get(i + 1);
        match (a, val) {
            ("--", _) => {
                command = args[i + 1..].to_vec();
                break;
            }
            ("--timeout", Some(v)) => match v.parse::<u64>() {
                Ok(s) if s > 0 => opts.timeout = Duration::from_secs(s),
                _ => {
                    return bad(
                        usage,
                        &format!("--timeout takes a positive number of seconds, not {v:?}"),
                    );
                }
            },
            ("--mem", Some(v)) => match v.parse::<u32>() {
                Ok(m) if m >= 256 => opts.mem_mb = m,
                _ => return bad(usage, &format!("--mem takes megabytes >= 256, not {v:?}")),
            },
            ("--cpus", Some(v)) => match v.parse::<u32>() {
                Ok(c) if (1..=64).contains(&c) => opts.cpus = c,
                _ => return bad(usage, &format!("--cpus takes 1..=64, not {v:?}")),
            },
            ("--out", Some(v)) => opts.out = PathBuf::from(v),
            ("--kernel", Some(v)) => match kernel::Line::parse(v) {
                Ok(line) => opts.kernel = line,
                Err(e) => return bad(usage, &e.to_string()),
            },
            _ if a.starts_with('-') => return bad(usage, &format!("unknown option {a:?}")),
            _ => {
                command = args[i..].to_vec();
                break;
            }
        }
        i += 2;
    }
    if command.is_empty() {
        return bad(usage, "no command given");
    }
    match run(&command, &opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask vm: {e}");
            NO_STATUS
        }
    }
}

fn bad(usage: &str, why: &str) -> i32 {
    eprintln!("xtask vm: {why}\n{usage}");
    2
}

/// How qemu accelerates: real KVM only when `/dev/kvm` can boot a stock kernel.
///
/// `/dev/kvm` on PVM hosts (the `kvm_pvm` module) only runs PVM-enlightened guests, and a stock
/// kernel hangs there, so TCG is used. `VIPMESH_VM_ACCEL=kvm|tcg` overrides.
pub fn accel() -> &'static str {
    match std::env::var("VIPMESH_VM_ACCEL").as_deref() {
        Ok("kvm") => return "kvm",
        Ok("tcg") => return "tcg",
        _ => {}
    }
    let kvm_ok = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if kvm_ok && !Path::new("/sys/module/kvm_pvm").exists() {
        "kvm"
    } else {
        "tcg"
    }
}

/// The command script: the host environment, the working directory, then `exec argv`.
fn command_script(command: &[String], cwd: &Path) -> String {
    let mut s = String::new();
    let skip = ["OLDPWD", "PWD", "SHLVL", "_", "TERM", "DISPLAY"];
    for (k, v) in std::env::vars_os() {
        let (Some(k), Some(v)) = (k.to_str(), v.to_str()) else {
            continue;
        };
        let ident = !k.is_empty()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !k.as_bytes()[0].is_ascii_digit();
        if !ident || skip.contains(&k) || k.starts_with("SSH_") {
            continue;
        }
        s.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    s.push_str("export TERM=dumb VIPMESH_GUEST=1\n");
    s.push_str(&format!(
        "cd {} 2>/dev/null || cd /\n",
        shell_quote(&cwd.to_string_lossy())
    ));
    s.push_str("exec");
    for a in command {
        s.push(' ');
        s.push_str(&shell_quote(a));
    }
    s.push('\n');
    s
}

/// Boots the guest, runs `command`, and returns its exit status.
pub fn run(command: &[String], opts: &VmOpts) -> Result<i32> {
    prereq::ensure_all()?;
    let k = kernel::ensure_line(opts.kernel)?;
    let out = fs::canonicalize(&opts.out)
        .map_err(|e| lab_err!("output directory {}: {e}", opts.out.display()))?;
    let cwd = std::env::current_dir().map_err(|e| lab_err!("current directory: {e}"))?;
    let ctl = tempdir("/tmp", "vipmesh-vm")?;
    let result = boot(command, opts, &k, &out, &cwd, &ctl);
    let _ = fs::remove_dir_all(&ctl);
    result
}

fn boot(
    command: &[String],
    opts: &VmOpts,
    k: &kernel::Kernel,
    out: &Path,
    cwd: &Path,
    ctl: &Path,
) -> Result<i32> {
    let io = |e: std::io::Error| lab_err!("control directory {}: {e}", ctl.display());
    fs::write(
        ctl.join("vars"),
        format!(
            "KVER={}\nKMOD={}\nOUT={}\n",
            shell_quote(&k.version),
            shell_quote(&k.modules().to_string_lossy()),
            shell_quote(&out.to_string_lossy())
        ),
    )
    .map_err(io)?;
    fs::write(ctl.join("cmd"), command_script(command, cwd)).map_err(io)?;

    let accel = accel();
    let mut q = Command::new("qemu-system-x86_64");
    if accel == "kvm" {
        q.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        q.args(["-accel", "tcg,thread=multi", "-cpu", "max"]);
    }
    // Quiet, but a kernel panic (KERN_EMERG) still reaches the console: a guest that dies
    // mid-test says why.
    let quiet = if std::env::var_os("VIPMESH_VM_DEBUG").is_some() {
        "loglevel=7"
    } else {
        "quiet loglevel=1"
    };
    let fsdev = |id: &str, path: &Path, extra: &str| {
        format!(
            "local,id={id},path={},security_model={extra}",
            path.to_string_lossy().replace(',', ",,")
        )
    };
    q.args([
        "-smp",
        &opts.cpus.to_string(),
        "-m",
        &opts.mem_mb.to_string(),
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-nic",
        "none",
    ])
    .args(["-no-reboot", "-serial", "stdio", "-monitor", "none"])
    .arg("-kernel")
    .arg(&k.image)
    .arg("-initrd")
    .arg(&k.initrd)
    .arg("-append")
    .arg(format!(
        "console=ttyS0 {quiet} panic=-1 rdinit=/init mitigations=off"
    ))
    .arg("-fsdev")
    .arg(fsdev(
        "r",
        Path::new("/"),
        "none,readonly=on,multidevs=remap",
    ))
    .args(["-device", "virtio-9p-pci,fsdev=r,mount_tag=hostroot"])
    .arg("-fsdev")
    .arg(fsdev("c", ctl, "none"))
    .args(["-device", "virtio-9p-pci,fsdev=c,mount_tag=ctl"])
    .arg("-fsdev")
    .arg(fsdev("o", out, "passthrough,multidevs=remap"))
    .args(["-device", "virtio-9p-pci,fsdev=o,mount_tag=out"])
    .stdin(Stdio::null());
    let start = Instant::now();
    let mut child = q
        .spawn()
        .map_err(|e| lab_err!("cannot start {}: {e}", cmd::show(&q)))?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(e) => return Err(lab_err!("waiting for qemu: {e}")),
        }
        if start.elapsed() >= opts.timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let Some(status) = status else {
        eprintln!(
            "xtask vm: timeout: the guest ran longer than {} s and was killed",
            opts.timeout.as_secs()
        );
        return Ok(TIMED_OUT);
    };
    match fs::read_to_string(ctl.join("rc")) {
        Ok(rc) => rc
            .trim()
            .parse::<i32>()
            .map_err(|e| lab_err!("guest reported a bad exit status {rc:?}: {e}")),
        Err(_) => {
            eprintln!(
                "xtask vm: the guest did not report an exit status (qemu {status}): its kernel panicked or reset (see any 'Kernel panic' line above); rerun with VIPMESH_VM_DEBUG=1 for the kernel log"
            );
            Ok(NO_STATUS)
        }
    }
}

/// Creates a fresh private directory.
pub fn tempdir(parent: &str, prefix: &str) -> Result<PathBuf> {
    for n in 0..1000u32 {
        let p = PathBuf::from(parent).join(format!("{prefix}.{}.{n}", std::process::id()));
        match fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(lab_err!("cannot create {}: {e}", p.display())),
        }
    }
    Err(lab_err!("cannot create a temporary directory in {parent}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_script_quotes_argv_and_keeps_cwd() {
        let s = command_script(
            &["sh".into(), "-c".into(), "echo 'a b'; exit 3".into()],
            Path::new("/work/x y"),
        );
        assert!(s.contains("cd '/work/x y' 2>/dev/null || cd /\n"));
        assert!(
            s.ends_with("exec sh -c 'echo '\\''a b'\\''; exit 3'\n"),
            "{s}"
        );
        assert!(s.contains("export VIPMESH_GUEST=1") || s.contains("VIPMESH_GUEST=1"));
    }

    #[test]
    fn usage_errors_exit_2() {
        assert_eq!(main(&[]), 2);
        assert_eq!(main(&["--".into()]), 2);
        assert_eq!(
            main(&["--timeout".into(), "x".into(), "--".into(), "true".into()]),
            2
        );
        assert_eq!(
            main(&["--kernel".into(), "5.10".into(), "--".into(), "true".into()]),
            2
        );
    }
}
