#!/bin/sh
# XDP fast path vs iptables DNAT vs direct: new connections/s with wrk, in namespaces on this
# host, all measured in one run (ratios against the baselines of the same run).
# Needs root and wrk. Env: ROUNDS (3), SECS (5), CONNS (16).
set -eu
cd "$(dirname "$0")/../.."
# NAPI on the task veths through GRO rather than an xdp_pass program: measured faster here
# (VIPMESH_LAB_NAPI_GRO= , i.e. empty, uses xdp_pass instead).
export VIPMESH_LAB_NAPI_GRO="${VIPMESH_LAB_NAPI_GRO-1}"
exec cargo bench -p vipmesh-xdp --bench xdp_wrk "$@"
