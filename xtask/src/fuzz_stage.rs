//! Short fuzz runs of every target under `fuzz/`, built on the stable toolchain.
//!
//! cargo-fuzz's layout is kept (`fuzz/Cargo.toml`, `fuzz/fuzz_targets/*.rs`, libfuzzer-sys),
//! so `cargo +nightly fuzz run <target>` works too. Here the targets are built the way
//! `cargo fuzz build --sanitizer none` does, with stable codegen flags only (SanitizerCoverage
//! via `-Cpasses`/`-Cllvm-args`), and each runs for a bounded time.
//!
//! `cargo xtask fuzz [TARGET...] [--seconds N] [--runs N]`: with `--runs`, each target stops
//! after N executions (or after `--seconds`, whichever comes first) and its line reports the
//! executions, the seconds taken and the crashes. Crashing inputs are written under
//! `fuzz/artifacts/<target>/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::workspace_root;

const RUSTFLAGS: &str = "-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

/// The `[[bin]]` names declared in `fuzz/Cargo.toml`.
pub fn targets(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_bin = l == "[[bin]]";
            continue;
        }
        if let (true, Some(v)) = (in_bin, l.strip_prefix("name")) {
            let v = v
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"');
            names.push(v.to_string());
        }
    }
    names.sort();
    names
}

/// The host target triple (`rustc -vV`). Building for an explicit `--target` keeps the
/// coverage flags away from build scripts and proc-macros, as cargo-fuzz does.
fn host_triple() -> Result<String, String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .ok_or_else(|| "rustc -vV printed no host triple".into())
}

/// Builds the named targets (one `--bin` each, so a target that does not compile cannot stop
/// the others from being built on their own); returns the directory of the binaries.
fn build(dir: &Path, names: &[String]) -> Result<PathBuf, String> {
    let target_dir = dir.join("target");
    let triple = host_triple()?;
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(dir)
        .env("RUSTFLAGS", RUSTFLAGS)
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(["build", "--release", "--target", &triple]);
    for n in names {
        c.args(["--bin", n]);
    }
    let st = c.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !st.success() {
        return Err(format!(
            "building the fuzz target(s) {} failed",
            names.join(" ")
        ));
    }
    Ok(target_dir.join(triple).join("release"))
}

/// Runs one target for `seconds`; returns (ok, executions).
pub fn run_one(bin_dir: &Path, dir: &Path, name: &str, seconds: u64) -> (bool, u64) {
    run_bounded(bin_dir, dir, name, seconds, None)
}

/// Runs one target for at most `seconds` and, when given, at most `runs` executions; returns
/// (ok, executions).
fn run_bounded(
    bin_dir: &Path,
    dir: &Path,
    name: &str,
    seconds: u64,
    runs: Option<u64>,
) -> (bool, u64) {
    let corpus = dir.join("corpus").join(name);
    let _ = std::fs::create_dir_all(&corpus);
    let artifacts = dir.join("artifacts").join(name);
    let _ = std::fs::create_dir_all(&artifacts);
    let seeds = dir.join("seeds").join(name);
    let mut c = Command::new(bin_dir.join(name));
    c.arg(format!("-max_total_time={seconds}"))
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    if let Some(runs) = runs {
        c.arg(format!("-runs={runs}"));
    }
    c.arg(&corpus);
    if seeds.is_dir() {
        c.arg(&seeds);
    }
    eprintln!("--- fuzz {name} for {seconds} s");
    let started = std::time::Instant::now();
    let out = match c.output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cannot run fuzz target {name}: {e}");
            return (false, 0);
        }
    };
    let err = String::from_utf8_lossy(&out.stderr);
    let execs = err
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if !out.status.success() {
        eprintln!("{err}");
    }
    let crashes = std::fs::read_dir(&artifacts)
        .map(|d| d.filter_map(|e| e.ok()).count())
        .unwrap_or(0);
    eprintln!(
        "    {name}: {execs} executions in {:.0} s, {crashes} crash file(s) in {}, {}",
        started.elapsed().as_secs_f64(),
        artifacts.display(),
        if out.status.success() {
            "no crash"
        } else {
            "FAILED"
        }
    );
    (out.status.success(), execs)
}

/// Builds and runs every target; returns (passed, failed, note).
pub fn run(seconds: u64) -> (u64, u64, String) {
    let dir = workspace_root().join("fuzz");
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
    let names = targets(&manifest);
    if names.is_empty() {
        eprintln!("!!! no fuzz targets declared in fuzz/Cargo.toml");
        return (0, 1, "no fuzz targets".into());
    }
    let (mut p, mut f, mut total) = (0, 0, 0);
    // All at once when they all compile; else one by one, so each broken target counts as
    // one failure and the others still run.
    let all = build(&dir, &names);
    for n in &names {
        let bin_dir = match &all {
            Ok(b) => b.clone(),
            Err(_) => match build(&dir, std::slice::from_ref(n)) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("!!! fuzz target {n}: {e}");
                    f += 1;
                    continue;
                }
            },
        };
        let (ok, execs) = run_one(&bin_dir, &dir, n, seconds);
        total += execs;
        if ok { p += 1 } else { f += 1 }
    }
    (
        p,
        f,
        format!("{} targets x {seconds} s, {total} executions", names.len()),
    )
}

/// `cargo xtask fuzz [TARGET...] [--seconds N] [--runs N]`: longer local runs.
pub fn main(args: &[String]) -> i32 {
    let mut seconds = 60;
    let mut runs = None;
    let mut only = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--runs" {
            match it.next().and_then(|v| v.parse().ok()) {
                Some(n) => runs = Some(n),
                None => {
                    eprintln!("xtask fuzz: --runs takes a number of executions");
                    return 2;
                }
            }
        } else if a == "--seconds" {
            match it.next().and_then(|v| v.parse().ok()) {
                Some(s) => seconds = s,
                None => {
                    eprintln!("xtask fuzz: --seconds takes a number");
                    return 2;
                }
            }
        } else {
            only.push(a.clone());
        }
    }
    let dir = workspace_root().join("fuzz");
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
    let mut names = targets(&manifest);
    if !only.is_empty() {
        if let Some(bad) = only.iter().find(|o| !names.contains(o)) {
            eprintln!(
                "xtask fuzz: unknown target {bad:?}; known: {}",
                names.join(" ")
            );
            return 2;
        }
        names = only;
    }
    let bin_dir = match build(&dir, &names) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("xtask fuzz: {e}");
            return 1;
        }
    };
    let mut failed = false;
    for n in &names {
        failed |= !run_bounded(&bin_dir, &dir, n, seconds, runs).0;
    }
    i32::from(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_names_are_read_from_the_manifest() {
        let m = "[package]\nname = \"vipmesh-fuzz\"\n[[bin]]\nname = \"b\"\npath = \"x\"\n[[bin]]\nname=\"a\"\n[dependencies]\nname = \"no\"\n";
        assert_eq!(targets(m), vec!["a".to_string(), "b".to_string()]);
    }
}
