//! The `vipmesh` command-line tool.

fn main() {
    eprintln!("vipmesh: not yet implemented (see issue: the mesh API)");
    std::process::exit(2);
}
