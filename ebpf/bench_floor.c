/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/*
 * Benchmark-only programs (never loaded by the library): the cost floor of the
 * data structures xdp_lb is built on, measured beside it by
 * crates/vipmesh-xdp/benches/xdp.rs.
 *
 *   floor_pass    XDP_PASS, the baseline (same as xdp_pass).
 *   floor_lookup  parse + one lookup in an LRU hash shaped like `flows`
 *                 (inserting the key when absent): the least any hit path
 *                 with a per-flow LRU table can cost.
 *   floor_update  parse + one update of that LRU hash: the least any path
 *                 that records a new flow in it can cost.
 *   floor_redirect  XDP_REDIRECT through a DEVMAP (slot 0), nothing else: the
 *                 bare redirect the live-frames throughput is compared with.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "vipmesh_abi.h"
#include "vipmesh_parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, VM_FLOW_ENTRIES);
	__type(key, struct vm_flow_key);
	__type(value, struct vm_flow);
} floor_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
} floor_tx SEC(".maps");

SEC("xdp")
int floor_redirect(struct xdp_md *ctx)
{
	return bpf_redirect_map(&floor_tx, 0, XDP_DROP);
}

SEC("xdp")
int floor_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp")
int floor_lookup(struct xdp_md *ctx)
{
	struct vm_pkt p = {};
	struct vm_flow z = {};

	if (vm_parse((void *)(long)ctx->data, (void *)(long)ctx->data_end, &p) != VM_P_OK)
		return XDP_PASS;
	if (bpf_map_lookup_elem(&floor_flows, &p.key))
		return XDP_TX;
	bpf_map_update_elem(&floor_flows, &p.key, &z, BPF_ANY);
	return XDP_TX;
}

SEC("xdp")
int floor_update(struct xdp_md *ctx)
{
	struct vm_pkt p = {};
	struct vm_flow z = {};

	if (vm_parse((void *)(long)ctx->data, (void *)(long)ctx->data_end, &p) != VM_P_OK)
		return XDP_PASS;
	bpf_map_update_elem(&floor_flows, &p.key, &z, BPF_ANY);
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
