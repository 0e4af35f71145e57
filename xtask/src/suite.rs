//! `cargo xtask test`: the single test entry point.
//!
//! Stages, in order: rustfmt check, clippy `-D warnings`, unit tests, privileged host-kernel
//! tests (`tests/host_*.rs`, run with `--ignored`), guest-kernel tests (`tests/guest_*.rs`,
//! built on the host and run in ONE guest boot per kernel line: 6.1 and 6.12), and short fuzz
//! runs. The last line is `N passed, N failed`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::{self, shell_quote, workspace_root};
use crate::{fuzz_stage, kernel, prereq, vm};

#[derive(Debug, Default)]
struct Tally {
    passed: u64,
    failed: u64,
    lines: Vec<String>,
}

impl Tally {
    fn stage(&mut self, name: &str, passed: u64, failed: u64, note: &str) {
        self.passed += passed;
        self.failed += failed;
        let mut l = format!("{name:<8} {passed:>5} passed, {failed} failed");
        if !note.is_empty() {
            let _ = write!(l, "  ({note})");
        }
        eprintln!("==> {l}");
        self.lines.push(l);
    }
}

/// Counts of one or more libtest runs, from their `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub results: u64,
}

/// Sums every `test result: ... N passed; M failed; K ignored` line.
pub fn parse_libtest(out: &str) -> Counts {
    let mut c = Counts::default();
    for line in out.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        c.results += 1;
        for part in rest.split(';') {
            let part = part
                .trim()
                .trim_start_matches("ok.")
                .trim_start_matches("FAILED.");
            let mut w = part.split_whitespace();
            let (Some(n), Some(kind)) = (w.next(), w.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => c.passed += n,
                "failed" => c.failed += n,
                "ignored" => c.ignored += n,
                _ => {}
            }
        }
    }
    c
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Runs a command, echoing its output as it comes, and returns (success, combined output).
fn stream(mut c: Command) -> (bool, String) {
    eprintln!("+ {}", cmd::show(&c));
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => return (false, format!("cannot run {}: {e}", cmd::show(&c))),
    };
    let err = child.stderr.take().map(|e| {
        std::thread::spawn(move || {
            let mut s = String::new();
            for line in BufReader::new(e).lines().map_while(|l| l.ok()) {
                eprintln!("{line}");
                s.push_str(&line);
                s.push('\n');
            }
            s
        })
    });
    let mut all = String::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
            println!("{line}");
            all.push_str(&line);
            all.push('\n');
        }
    }
    if let Some(h) = err {
        all.push_str(&h.join().unwrap_or_default());
    }
    let ok = child.wait().map(|s| s.success()).unwrap_or(false);
    (ok, all)
}

/// One pass/fail stage (fmt, clippy).
fn check_stage(t: &mut Tally, name: &str, c: Command) {
    let (ok, _) = stream(c);
    t.stage(name, u64::from(ok), u64::from(!ok), "");
}

/// A libtest run: counts its results; a failure without results (build error, crash) counts
/// as one failed test.
fn counted(ok: bool, out: &str) -> Counts {
    let mut c = parse_libtest(out);
    if !ok && c.failed == 0 {
        c.failed = 1;
    }
    c
}

/// Privileged suites must run here: a test that printed that it skipped itself (`SKIPPED`,
/// `SKIPPING`)
/// counts as failed, so a skip can never pass silently in the lab.
fn skipped(suite: &str, out: &str) -> u64 {
    let n = out.lines().filter(|l| l.contains("SKIPP")).count() as u64;
    if n > 0 {
        eprintln!("!!! {suite}: {n} test(s) skipped themselves; the lab counts that as failed");
    }
    n
}

/// Test executables of the workspace whose target name starts with `prefix`.
fn test_binaries(prefix: &str) -> Result<Vec<(String, PathBuf)>, String> {
    let mut c = cargo();
    c.args([
        "test",
        "--workspace",
        "--all-features",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    let out = c
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err("building the test executables failed".into());
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let name = v["target"]["name"].as_str().unwrap_or_default();
        let is_test = v["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|x| x == "test"));
        if let (true, true, Some(exe)) =
            (is_test, name.starts_with(prefix), v["executable"].as_str())
        {
            bins.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    bins.sort();
    Ok(bins)
}

fn host_stage(t: &mut Tally) {
    let bins = match test_binaries("host_") {
        Ok(b) => b,
        Err(e) => return t.stage("host", 0, 1, &e),
    };
    if !is_root() {
        eprintln!(
            "\n!!! HOST PRIVILEGED TESTS CANNOT RUN: not root (they need CAP_NET_ADMIN/CAP_SYS_ADMIN) !!!\n"
        );
        return t.stage("host", 0, bins.len().max(1) as u64, "NOT RUN: not root");
    }
    let mut total = Counts::default();
    for (name, exe) in &bins {
        eprintln!("--- host suite {name}");
        let mut c = Command::new(exe);
        c.args(["--ignored", "--test-threads=1"])
            .current_dir(workspace_root());
        let (ok, out) = stream(c);
        let n = counted(ok, &out);
        total.passed += n.passed;
        total.failed += n.failed + skipped(name, &out);
    }
    t.stage(
        "host",
        total.passed,
        total.failed,
        &format!("{} suites", bins.len()),
    );
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The guest stage: every `tests/guest_*.rs` suite, once per guest kernel line (one boot each),
/// counted separately as `guest-6.1`, `guest-6.12`. On lines with tcx (6.12), the XDP crate's
/// `tests/host_*.rs` suites run in that boot too, so the fast path is also checked on a
/// Debian kernel and not only on the host's.
fn guest_stage(t: &mut Tally) {
    let bins = match test_binaries("guest_") {
        Ok(b) => b,
        Err(e) => return t.stage("guest", 0, 1, &e),
    };
    let xdp = match xdp_host_binaries() {
        Ok(b) => b,
        Err(e) => return t.stage("guest", 0, 1, &e),
    };
    for line in kernel::Line::ALL {
        let mut suites = bins.clone();
        if line != kernel::Line::ALL[0] {
            suites.retain(|(n, _)| !FIRST_LINE_ONLY.contains(&n.as_str()));
        }
        if line >= kernel::Line::V6_12 {
            suites.extend(xdp.iter().map(|(n, e)| (format!("xdp-{n}"), e.clone())));
            // The mesh suites again on the nftables backend (one kernel line keeps CI short;
            // guest_firewall checks both backends on every line).
            suites.extend(
                bins.iter()
                    .filter(|(n, _)| NFT_SUITES.contains(&n.as_str()))
                    .map(|(n, e)| (format!("{n}{NFT_SUFFIX}"), e.clone())),
            );
        }
        guest_boot(t, line, &suites);
    }
}

/// The XDP crate's host suites (`crates/vipmesh-xdp/tests/host_*.rs`), already built by
/// [`test_binaries`] with the same flags, so this cargo call only reads its cache.
fn xdp_host_binaries() -> Result<Vec<(String, PathBuf)>, String> {
    let mut c = cargo();
    c.args([
        "test",
        "--workspace",
        "--all-features",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    let out = c
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err("building the test executables failed".into());
    }
    let xdp_tests = workspace_root().join("crates/vipmesh-xdp/tests");
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let name = v["target"]["name"].as_str().unwrap_or_default();
        let src = PathBuf::from(v["target"]["src_path"].as_str().unwrap_or_default());
        if let (true, true, Some(exe)) = (
            src.starts_with(&xdp_tests),
            name.starts_with("host_"),
            v["executable"].as_str(),
        ) {
            bins.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    bins.sort();
    Ok(bins)
}

/// The guest suites that run on the first kernel line only: the bad-input table refuses
/// every case before the first write, so what it checks does not depend on the kernel, and
/// it is one of the longest suites (about 5 minutes under emulation).
const FIRST_LINE_ONLY: [&str; 1] = ["guest_bad_input"];

/// The guest suites that load and unload kernel modules: first in every boot.
const MODULE_SUITES: [&str; 1] = ["guest_modules"];

/// The guest suites that run a second time with `VIPMESH_FIREWALL=nftables`.
const NFT_SUITES: [&str; 2] = ["guest_mesh", "guest_ingress"];
/// The name suffix of those second runs.
const NFT_SUFFIX: &str = "-nftables";

/// One boot of `line` running `bins` (name, executable) one after the other.
fn guest_boot(t: &mut Tally, line: kernel::Line, bins: &[(String, PathBuf)]) {
    let stage = format!("guest-{line}");
    let out_dir = workspace_root().join("target/vm-out").join(line.label());
    let _ = std::fs::remove_dir_all(&out_dir);
    if let Err(e) = std::fs::create_dir_all(&out_dir) {
        return t.stage(
            &stage,
            0,
            1,
            &format!("cannot create {}: {e}", out_dir.display()),
        );
    }
    let mut script = String::from(
        "#!/bin/bash\n# Generated by cargo xtask test: every guest suite, one boot.\n",
    );
    script.push_str("echo \"guest kernel: $(uname -r)\"\n");
    // The module suite unloads xt_ipvs, which needs no rule of any namespace to use it: it
    // runs first, before another suite's namespaces (some torn down asynchronously, some
    // held by a process that outlived its test) can hold the module.
    let order: Vec<&(String, PathBuf)> = bins
        .iter()
        .filter(|(n, _)| MODULE_SUITES.contains(&n.as_str()))
        .chain(
            bins.iter()
                .filter(|(n, _)| !MODULE_SUITES.contains(&n.as_str())),
        )
        .collect();
    for (name, exe) in order {
        let log = out_dir.join(format!("{name}.log"));
        let env = if name.ends_with(NFT_SUFFIX) {
            "VIPMESH_FIREWALL=nftables "
        } else {
            ""
        };
        // After each suite, the namespaces still named under /run/netns (a suite should
        // leave none): a leak shows in the log next to the suite that left it.
        let _ = writeln!(
            script,
            "echo '--- guest suite {name}'\n{env}{} --ignored --test-threads=1 > {} 2>&1; rc=$?\ncat {}\necho \"--- {name} exit $rc\"\necho \"--- after {name}: $(ip netns list 2>/dev/null | wc -l) named namespaces left\"",
            shell_quote(&exe.to_string_lossy()),
            shell_quote(&log.to_string_lossy()),
            shell_quote(&log.to_string_lossy()),
        );
    }
    script.push_str("exit 0\n");
    let script_path = out_dir.join("run-guest-suites.sh");
    if let Err(e) = std::fs::write(&script_path, script) {
        return t.stage(&stage, 0, 1, &format!("cannot write the runner: {e}"));
    }
    let opts = vm::VmOpts {
        timeout: Duration::from_secs(guest_timeout()),
        out: out_dir.clone(),
        kernel: line,
        ..vm::VmOpts::default()
    };
    let started = Instant::now();
    eprintln!(
        "--- booting guest kernel {line} ({} accel) for {} guest suites",
        vm::accel(),
        bins.len()
    );
    let rc = match vm::run(
        &["bash".into(), script_path.to_string_lossy().into_owned()],
        &opts,
    ) {
        Ok(rc) => rc,
        Err(e) => {
            eprintln!("\n!!! GUEST SUITE ({line}) DID NOT RUN: {e} !!!\n");
            return t.stage(
                &stage,
                0,
                bins.len().max(1) as u64,
                &format!("NOT RUN: {e}"),
            );
        }
    };
    let mut total = Counts::default();
    for (name, _) in bins {
        let log = std::fs::read_to_string(out_dir.join(format!("{name}.log"))).unwrap_or_default();
        let n = parse_libtest(&log);
        if n.results == 0 {
            eprintln!("!!! guest suite {name} ({line}) reported no result (crash or timeout)");
            total.failed += 1;
        }
        total.passed += n.passed;
        total.failed += n.failed + skipped(name, &log);
    }
    if rc != 0 {
        eprintln!("!!! the guest run ({line}) exited {rc}");
        total.failed += 1;
    }
    let kver = kernel::ensure_line(line)
        .map(|k| k.version)
        .unwrap_or_else(|_| line.label().to_owned());
    t.stage(
        &stage,
        total.passed,
        total.failed,
        &format!(
            "{kver}: {} suites, one {} boot, {:.0} s",
            bins.len(),
            vm::accel(),
            started.elapsed().as_secs_f64()
        ),
    );
}

fn guest_timeout() -> u64 {
    std::env::var("VIPMESH_GUEST_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

pub fn main(args: &[String]) -> i32 {
    let mut fuzz_seconds = 10u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.clone().next()) {
            ("--fuzz-seconds", Some(v)) => {
                match v.parse() {
                    Ok(s) => fuzz_seconds = s,
                    Err(_) => {
                        eprintln!("xtask test: --fuzz-seconds takes a number, not {v:?}");
                        return 2;
                    }
                }
                it.next();
            }
            _ => {
                eprintln!(
                    "xtask test: unknown argument {a:?}\nusage: cargo xtask test [--fuzz-seconds N]"
                );
                return 2;
            }
        }
    }
    let started = Instant::now();
    let mut t = Tally::default();
    if let Err(e) = prereq::ensure_all() {
        eprintln!("xtask test: {e}");
        t.stage("setup", 0, 1, &e.to_string());
    }

    let mut c = cargo();
    c.args(["fmt", "--all", "--", "--check"]);
    check_stage(&mut t, "fmt", c);

    let mut c = cargo();
    c.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]);
    check_stage(&mut t, "clippy", c);

    let mut c = cargo();
    c.args(["test", "--workspace", "--all-features"]);
    let (ok, out) = stream(c);
    let n = counted(ok, &out);
    t.stage(
        "unit",
        n.passed,
        n.failed,
        &format!("{} privileged tests left for the suites below", n.ignored),
    );

    host_stage(&mut t);
    guest_stage(&mut t);
    let (p, f, note) = fuzz_stage::run(fuzz_seconds);
    t.stage("fuzz", p, f, &note);

    eprintln!("\n==== summary ({:.0} s)", started.elapsed().as_secs_f64());
    for l in &t.lines {
        eprintln!("  {l}");
    }
    println!("{} passed, {} failed", t.passed, t.failed);
    if t.failed == 0 { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_lines_are_summed() {
        let out = "running 3 tests\n\
            test result: ok. 3 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
            noise\n\
            test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s\n";
        let c = parse_libtest(out);
        assert_eq!(
            c,
            Counts {
                passed: 4,
                failed: 2,
                ignored: 2,
                results: 2
            }
        );
    }

    #[test]
    fn self_skipped_tests_count_as_failures() {
        assert_eq!(
            skipped("s", "test a ... ok\n!!! SKIPPED (not run): no IPVS\n"),
            1
        );
        assert_eq!(skipped("s", "test a ... ok\n"), 0);
    }

    #[test]
    fn a_crash_without_results_counts_as_a_failure() {
        assert_eq!(counted(false, "error: could not compile").failed, 1);
        assert_eq!(counted(true, "").failed, 0);
    }
}
