#!/usr/bin/env bash
# The mesh scale comparison (benches/mesh/mesh_scale.rs), built on the host, run in the guest.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p vipmesh --example mesh_scale
cargo xtask vm --timeout 3000 -- "${CARGO_TARGET_DIR:-target}/release/examples/mesh_scale"
