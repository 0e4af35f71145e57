#!/usr/bin/env bash
# The ingress scale comparison (benches/ingress/ingress_scale.rs), built on the host, run in the guest.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p vipmesh --example ingress_scale
cargo xtask vm --timeout 3000 --mem 4096 -- env ${INGRESS_ONLY_CHANGE:+INGRESS_ONLY_CHANGE=1} "${CARGO_TARGET_DIR:-target}/release/examples/ingress_scale"
