//! Compiles `ebpf/vipmesh.c` with clang into `$OUT_DIR/vipmesh.o`.
//!
//! Without clang the crate still builds: the object is left empty, a
//! `cargo:warning` says why, and loading returns `Error::ObjectUnavailable`.

use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let ebpf = manifest.join("../../ebpf");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let obj = out.join("vipmesh.o");
    for f in [
        "vipmesh.c",
        "vipmesh_abi.h",
        "vipmesh_maps.h",
        "vipmesh_parse.h",
    ] {
        println!("cargo:rerun-if-changed={}", ebpf.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=VIPMESH_CLANG");
    let clang = env::var("VIPMESH_CLANG").unwrap_or_else(|_| "clang".to_owned());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg("-c")
        .arg(ebpf.join("vipmesh.c"))
        .arg("-o")
        .arg(&obj)
        .status();
    let reason = match status {
        Ok(s) if s.success() => {
            println!("cargo:rustc-cfg=vipmesh_object");
            return finish();
        }
        Ok(s) => {
            // clang is there but our C does not compile: that is a bug, fail loudly.
            eprintln!("vipmesh-xdp: `{clang}` failed ({s}) compiling ebpf/vipmesh.c");
            std::process::exit(1);
        }
        Err(e) => format!("`{clang}` not runnable ({e}); install clang and libbpf-dev"),
    };
    println!("cargo:warning=vipmesh-xdp: {reason}; loading will return Error::ObjectUnavailable");
    if let Err(e) = fs::write(&obj, b"") {
        println!(
            "cargo:warning=vipmesh-xdp: cannot write {}: {e}",
            obj.display()
        );
    }
    finish();
}

fn finish() {
    println!("cargo::rustc-check-cfg=cfg(vipmesh_object)");
}
