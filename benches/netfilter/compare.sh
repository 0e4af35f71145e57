#!/bin/sh
# Host-kernel comparison: vipmesh's one-batch apply vs one `iptables -A` per rule (Docker's
# way), plus the per-packet cost of a linear mangle chain at 10/1k/10k VIPs.
# Needs root. Usage: benches/netfilter/compare.sh [N]   (default N = 10000)
set -eu
cd "$(dirname "$0")/../.."
cargo build --release -q -p vipmesh-netfilter --example nf_compare
exec "${CARGO_TARGET_DIR:-target}/release/examples/nf_compare" "$@"
