//! `ipvsadm -R` in vipmesh: reads rules in the `ipvsadm -S` format from stdin and applies
//! them to the IPVS table of this network namespace (or of `--netns PATH`) in one
//! pipelined batch.
//!
//! The whole input is parsed first: a line that does not parse is reported with its line
//! number and nothing is applied. Kernel errors are reported per line; like
//! `ipvsadm -R`, rules before a failing one stay applied (IPVS has no transactions),
//! but unlike it, the following rules are still attempted.
//!
//! ```text
//! ipvsadm -Sn > rules; cargo run -p vipmesh-ipvs --example ipvs_restore < rules
//! ```

use std::io::Read as _;
use std::process::ExitCode;

use vipmesh_ipvs::Client;
use vipmesh_ipvs::save::parse_rules_with_lines;

fn run() -> Result<(), String> {
    let mut netns = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--netns" => netns = Some(args.next().ok_or("--netns needs a path")?),
            other => return Err(format!("unknown argument {other:?}; use --netns PATH")),
        }
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("stdin: {e}"))?;
    let rules = parse_rules_with_lines(&text).map_err(|e| format!("{e}; nothing applied"))?;
    let mut c = match netns {
        Some(p) => Client::open_in_path(p),
        None => Client::open(),
    }
    .map_err(|e| e.to_string())?;
    let ops: Vec<_> = rules.iter().map(|(_, op)| op.clone()).collect();
    let mut failed = 0usize;
    for ((line, _), r) in rules.iter().zip(c.execute(&ops)) {
        if let Err(e) = r {
            eprintln!("line {line}: {e}");
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(format!("{failed} of {} rules failed", ops.len()));
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipvs_restore: {e}");
            ExitCode::FAILURE
        }
    }
}
