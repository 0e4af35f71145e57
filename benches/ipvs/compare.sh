#!/bin/bash
# Scripted comparison, run INSIDE the guest kernel (it needs IPVS):
#   cargo build --release -p vipmesh-ipvs --example ipvs_restore
#   cargo xtask vm --timeout 3000 -- bash benches/ipvs/compare.sh target/release/examples/ipvs_restore [SERVICES] [DESTS] [SUBSET_SERVICES]
# It generates one rule file (SERVICES x DESTS, default 10000 x 10) and, on it, in fresh
# network namespaces, times:
#   A. ipvs_restore < rules            (vipmesh: one pipelined netlink batch)
#   B. ipvsadm -R < rules              (the C client's restore)
#   C. one `ipvsadm` process per rule   (what Docker does with iptables), on the first
#      SUBSET_SERVICES services only (default 100: 1100 rules), because a process per rule
#      for 110 000 rules takes hours under emulation. Compared per rule.
# Every run is checked: `ipvsadm -Sn` must list every rule. Only ratios are meaningful
# (the guest CPU is emulated).
set -euo pipefail
BIN=$(realpath "${1:?usage: compare.sh IPVS_RESTORE_BINARY [SERVICES] [DESTS] [SUBSET]}")
S=${2:-10000}; D=${3:-10}; SUB=${4:-100}
WORK=$(mktemp -d)
modprobe ip_vs; modprobe ip_vs_rr
gen() { # services dests
  awk -v S="$1" -v D="$2" 'BEGIN {
    for (i = 0; i < S; i++) {
      vip = sprintf("10.%d.%d.%d", int(i / 65536) % 256, int(i / 256) % 256, i % 256);
      printf "-A -t %s:80 -s rr\n", vip;
      for (j = 0; j < D; j++) printf "-a -t %s:80 -r 172.%d.%d.%d:8080 -m -w 1\n", vip, 16 + j, int(i / 256) % 256, i % 256;
    }
  }'
}
gen "$S" "$D" > "$WORK/rules"
gen "$SUB" "$D" > "$WORK/subset"
N=$(wc -l < "$WORK/rules"); NS=$(wc -l < "$WORK/subset")
ns() { ip netns add "$1"; ip -n "$1" link set lo up; }
now() { date +%s.%N; }
check() { # netns expected
  local got; got=$(ip netns exec "$1" ipvsadm -Sn | wc -l)
  [ "$got" = "$2" ] || { echo "FAIL: $1 has $got rules, expected $2" >&2; exit 1; }
}
P=vmbench$$
ns ${P}a; ns ${P}b; ns ${P}c
trap 'ip netns del ${P}a; ip netns del ${P}b; ip netns del ${P}c; rm -rf "$WORK"' EXIT

t0=$(now); ip netns exec ${P}a "$BIN" < "$WORK/rules"; t1=$(now); check ${P}a "$N"
ta=$(echo "$t1 - $t0" | bc -l)
t0=$(now); ip netns exec ${P}b ipvsadm -R < "$WORK/rules"; t1=$(now); check ${P}b "$N"
tb=$(echo "$t1 - $t0" | bc -l)
t0=$(now)
ip netns exec ${P}c sh -c 'while read -r l; do ipvsadm $l; done' < "$WORK/subset"
t1=$(now); check ${P}c "$NS"
tc=$(echo "$t1 - $t0" | bc -l)

echo "rules: $N (${S} services x ${D} dests); process-per-rule subset: $NS rules"
printf "guest seconds (emulated): ipvs_restore %.2f, ipvsadm -R %.2f, process-per-rule subset %.2f\n" "$ta" "$tb" "$tc"
printf 'ipvsadm -R / ipvs_restore (same %d rules):            %.2fx\n' "$N" "$(echo "$tb / $ta" | bc -l)"
printf 'process per rule / ipvs_restore (per rule):           %.0fx\n' "$(echo "($tc / $NS) / ($ta / $N)" | bc -l)"
printf 'process per rule / ipvsadm -R (per rule):             %.0fx\n' "$(echo "($tc / $NS) / ($tb / $N)" | bc -l)"
