//! `vipmesh-agent`: see [`vipmesh_agent::cli`].

fn main() -> std::process::ExitCode {
    vipmesh_agent::cli::main()
}
