#!/bin/sh
# Host-kernel comparison, nftables (vipmesh-nft) vs iptables, in one run: per-packet
# classification at 1 vs N VIPs and 1 vs 1000 published ports, one changed VIP at N services,
# apply from empty at N services. Needs root. Usage: benches/nft/compare.sh [N] (default 10000)
set -eu
cd "$(dirname "$0")/../.."
cargo build --release -q -p vipmesh-nft --example nft_compare
exec "${CARGO_TARGET_DIR:-target}/release/examples/nft_compare" "$@"
