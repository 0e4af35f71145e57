//! Compiles `ebpf/vipmesh.c` with clang into `$OUT_DIR/vipmesh.o`, and the benchmark-only
//! `ebpf/bench_floor.c` into `$OUT_DIR/bench_floor.o`.
//!
//! Without clang the crate still builds: the objects are left empty, a
//! `cargo:warning` says why, and loading returns `Error::ObjectUnavailable`.

use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let ebpf = manifest.join("../../ebpf");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    for f in [
        "vipmesh.c",
        "bench_floor.c",
        "vipmesh_abi.h",
        "vipmesh_maps.h",
        "vipmesh_parse.h",
    ] {
        println!("cargo:rerun-if-changed={}", ebpf.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=VIPMESH_CLANG");
    let clang = env::var("VIPMESH_CLANG").unwrap_or_else(|_| "clang".to_owned());
    // The library's object, and the benchmark-only floor programs (benches/xdp.rs).
    let objects = [
        ("vipmesh.c", "vipmesh.o"),
        ("bench_floor.c", "bench_floor.o"),
    ];
    for (i, (src, obj)) in objects.iter().enumerate() {
        let obj = out.join(obj);
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
            .arg("-I/usr/include/x86_64-linux-gnu")
            .arg("-c")
            .arg(ebpf.join(src))
            .arg("-o")
            .arg(&obj)
            .status();
        let reason = match status {
            Ok(s) if s.success() => {
                if i == 0 {
                    println!("cargo:rustc-cfg=vipmesh_object");
                }
                continue;
            }
            Ok(s) => {
                // clang is there but our C does not compile: that is a bug, fail loudly.
                eprintln!("vipmesh-xdp: `{clang}` failed ({s}) compiling ebpf/{src}");
                std::process::exit(1);
            }
            Err(e) => format!("`{clang}` not runnable ({e}); install clang and libbpf-dev"),
        };
        println!(
            "cargo:warning=vipmesh-xdp: {reason}; loading will return Error::ObjectUnavailable"
        );
        for (_, o) in &objects {
            if let Err(e) = fs::write(out.join(o), b"") {
                println!("cargo:warning=vipmesh-xdp: cannot write {o}: {e}");
            }
        }
        break;
    }
    finish();
}

fn finish() {
    println!("cargo::rustc-check-cfg=cfg(vipmesh_object)");
}
