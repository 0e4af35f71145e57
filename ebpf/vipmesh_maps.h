/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/* vipmesh XDP fast path: the maps (libbpf BTF style, loaded by aya 0.14). */
#ifndef VIPMESH_MAPS_H
#define VIPMESH_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "vipmesh_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VM_MAX_SERVICES);
	__type(key, struct vm_svc_key);
	__type(value, struct vm_svc);
} services SEC(".maps");

/* Which destination ports, and which destination address hashes, any service
 * uses (see VM_FILTER_WORDS): traffic that is not ours passes after two array
 * loads instead of two hash lookups. False positives only cost the lookups. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VM_FILTER_WORDS);
	__type(key, __u32);
	__type(value, __u32);
} svc_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VM_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct vm_backend);
} backends SEC(".maps");

/* One Maglev table per service: slot 0 holds M, slots 1..=M backend ids.
 * Userspace fills a fresh inner map and swaps it in with one update of the
 * outer map, so no packet ever sees a half-written table. */
struct vm_maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VM_MAX_TABLE + 1);
	__uint(map_flags, BPF_F_INNER_MAP);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, VM_MAX_SERVICES);
	__type(key, __u32);
	__array(values, struct vm_maglev_inner);
} maglev_outer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, VM_MAX_TX_PORTS);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
} tx_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, VM_FLOW_ENTRIES);
	__type(key, struct vm_flow_key);
	__type(value, struct vm_flow);
} flows SEC(".maps");

/* NAT mode: backend address:target port:protocol -> the VIPs it serves, so
 * that tc_rev can find a reply's flow without any per-flow reverse state. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VM_MAX_BACKENDS);
	__type(key, struct vm_svc_key);
	__type(value, struct vm_rev_vips);
} rev_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vm_cfg);
} config SEC(".maps");

/* Per-CPU cache of the coarse clock, private to the programs (not pinned, not
 * read by userspace): see vm_now(). */
struct vm_clock {
	__u64 jiffies;
	__u64 ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vm_clock);
} clock SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VM_C_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Written by userspace only: per service, what its retired backends counted in
 * backend_stats (the programs count per backend; a service's statistics are the
 * sum of its backends', see Dataplane::service_stats). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VM_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct vm_stats);
} svc_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VM_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct vm_stats);
} backend_stats SEC(".maps");

/* Task side (encap-DSR): VIP:published -> target port on ingress after decap. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VM_MAX_SERVICES);
	__type(key, struct vm_svc_key);
	__type(value, struct vm_port_map);
} task_ports SEC(".maps");

/* Task side (encap-DSR): VIP:target -> published port on egress. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VM_MAX_SERVICES);
	__type(key, struct vm_svc_key);
	__type(value, struct vm_port_map);
} task_egress SEC(".maps");

#endif
