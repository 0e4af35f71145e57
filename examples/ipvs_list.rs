//! `ipvsadm -Ln` in vipmesh: prints the IPVS table of this network namespace (or of
//! `--netns PATH`) byte for byte as ipvsadm 1.31 does.
//!
//! ```text
//! cargo run -p vipmesh-ipvs --example ipvs_list [-- --stats | --rate | --timeout] [--netns /run/netns/NAME]
//! ```

use std::process::ExitCode;

use vipmesh_ipvs::Client;
use vipmesh_ipvs::save::{ListView, render_list, render_timeouts};

fn run() -> Result<String, String> {
    let mut view = ListView::Table;
    let mut timeout = false;
    let mut netns = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--stats" => view = ListView::Stats,
            "--rate" => view = ListView::Rate,
            "--timeout" => timeout = true,
            "-n" | "--numeric" | "-L" | "-l" | "-Ln" => {}
            "--netns" => netns = Some(args.next().ok_or("--netns needs a path")?),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; use --stats, --rate, --timeout, --netns PATH"
                ));
            }
        }
    }
    let mut c = match netns {
        Some(p) => Client::open_in_path(p),
        None => Client::open(),
    }
    .map_err(|e| e.to_string())?;
    if timeout {
        return Ok(render_timeouts(&c.timeouts().map_err(|e| e.to_string())?));
    }
    let info = c.info().map_err(|e| e.to_string())?;
    let mut table = Vec::new();
    for s in c.services().map_err(|e| e.to_string())? {
        let d = c.dests(&s.service.key).map_err(|e| e.to_string())?;
        table.push((s, d));
    }
    Ok(render_list(&info, &table, view))
}

fn main() -> ExitCode {
    match run() {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ipvs_list: {e}");
            ExitCode::FAILURE
        }
    }
}
