#!/bin/sh
# XDP fast path vs iptables DNAT vs direct: new connections/s with wrk, in namespaces on this
# host, all measured in one run (ratios against the baselines of the same run).
# Needs root, wrk, busybox. Env: ROUNDS (3), SECS (5), CONNS (16).
set -eu
cd "$(dirname "$0")/../.."
exec cargo bench -p vipmesh-xdp --bench xdp_wrk "$@"
