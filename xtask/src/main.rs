//! `cargo xtask`: the vipmesh lab.
//!
//! - `cargo xtask vm [--kernel 6.1|6.12] [--timeout SECS] [--mem MB] [--cpus N] -- <cmd...>`
//!   boots Debian's stock kernel (which has IPVS) under qemu and runs `<cmd>` as root in the
//!   current directory.
//! - `cargo xtask test` runs every suite and ends with one `N passed, N failed` line.
//! - `cargo xtask demo [vip|dnsrr|ingress|cluster|xdp|all]` replays the demos.
//! - `cargo xtask fuzz [TARGET...] [--seconds N]` runs the fuzz targets longer.
//! - `cargo xtask setup` installs the prerequisites and prepares both guest kernels.

mod cmd;
mod demo;
mod fuzz_stage;
mod kernel;
mod prereq;
mod suite;
mod vm;

use std::process::ExitCode;

const USAGE: &str = "usage:
  cargo xtask vm [--kernel 6.1|6.12] [--timeout SECS] [--mem MB] [--cpus N] [--out DIR] -- <command...>
  cargo xtask test [--fuzz-seconds N]
  cargo xtask demo [vip|dnsrr|ingress|cluster|xdp|all]
  cargo xtask fuzz [TARGET...] [--seconds N]
  cargo xtask setup";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((sub, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let code = match sub.as_str() {
        "vm" => vm::main(rest),
        "test" => suite::main(rest),
        "demo" => demo::main(rest),
        "fuzz" => fuzz_stage::main(rest),
        "setup" => setup(),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            0
        }
        other => {
            eprintln!("xtask: unknown command {other:?}\n{USAGE}");
            2
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn setup() -> i32 {
    if let Err(e) = prereq::ensure_all() {
        eprintln!("xtask setup: {e}");
        return 1;
    }
    match kernel::ensure_all() {
        Ok(kernels) => {
            for k in kernels {
                println!(
                    "xtask setup: guest kernel {} ready in {}",
                    k.version,
                    k.dir.display()
                );
            }
            0
        }
        Err(e) => {
            eprintln!("xtask setup: {e}");
            1
        }
    }
}
