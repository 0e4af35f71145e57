/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/*
 * vipmesh XDP fast path: the structs shared between the eBPF programs and
 * userspace (crates/vipmesh-xdp/src/abi.rs). This header is the single
 * declaration of every layout; the Rust side checks sizes and offsets against
 * the compiled object's BTF in a test, so any drift fails loudly.
 *
 * All addresses and ports are in network byte order. An IPv4 address is
 * stored in w[0] of a vm_addr, w[1..3] are zero.
 */
#ifndef VIPMESH_ABI_H
#define VIPMESH_ABI_H

#include <linux/types.h>

#define VM_MAX_SERVICES 1024
#define VM_MAX_BACKENDS 4096
#define VM_MAX_TX_PORTS 256
#define VM_FLOW_ENTRIES 65536
/* The largest Maglev table (M) a service may use; inner maps hold M + 1 slots. */
#define VM_MAX_TABLE 65537
/* `svc_filter`: two bitmaps of 65536 bits, 32 per word. Words [0, 2048) have
 * one bit per destination port (host order); words [2048, 4096) one bit per
 * destination address hash (vm_addr_bit). Userspace computes the same bits. */
#define VM_FILTER_WORDS 4096
#define VM_FILTER_ADDR_BASE 2048
/* Multiplier of the address hash (Knuth's 2^32 / phi). MUST match abi.rs. */
#define VM_ADDR_HASH_MUL 0x9e3779b1u

#define VM_FAMILY_V4 4
#define VM_FAMILY_V6 6

#define VM_MODE_NAT 0
#define VM_MODE_ENCAP 1

#define VM_BACKEND_VALID 1

/* vm_flow.flags */
#define VM_FLOW_REPLIED 1 /* a reply without SYN went back through tc_rev */

/* How many NAT services may share one backend address:port (rev_vips). */
#define VM_REV_VIPS 4

/* Flow states (vm_flow.state, vm_rev.state). */
#define VM_ST_NEW 0
#define VM_ST_ESTABLISHED 1
#define VM_ST_CLOSING 2

/* Hash seed for the 5-tuple flow hash. MUST NOT CHANGE: every node must map a
 * given flow to the same Maglev slot. */
#define VM_FLOW_HASH_SEED 0x9e3779b9u

/* Global per-CPU counters (index into the `counters` map). VM_C_RX and
 * VM_C_FLOW_HIT are not counted by the programs (they would cost the hit path
 * two more increments): userspace derives them, RX as the sum of the terminal
 * verdict counters of xdp_lb, FLOW_HIT as its forwarding verdicts (redirect_nat,
 * redirect_encap, encap_fail, drop_family) minus FLOW_NEW (crates/vipmesh-xdp
 * src/maps.rs, derive_counters). The slots stay so the indices never move. */
enum vm_counter {
	VM_C_RX = 0,
	VM_C_PASS_NOT_IP = 1,
	VM_C_PASS_FRAGMENT = 2,
	VM_C_PASS_MALFORMED = 3,
	VM_C_PASS_NOT_OURS = 4,
	VM_C_PASS_OPTIONS = 5,
	VM_C_PASS_PROTO = 6,
	VM_C_DROP_NO_BACKEND = 7,
	VM_C_FLOW_NEW = 8,
	VM_C_FLOW_HIT = 9,
	VM_C_FLOW_MISS_MIDSTREAM = 10,
	VM_C_FLOW_INSERT_FAIL = 11,
	VM_C_FLOW_CLOSED = 12,
	VM_C_FLOW_EXPIRED = 13,
	VM_C_REDIRECT_NAT = 14,
	VM_C_REDIRECT_ENCAP = 15,
	VM_C_ENCAP_FAIL = 16,
	VM_C_DROP_FAMILY = 17,
	VM_C_REV_HIT = 18,
	VM_C_REV_EXPIRED = 19,
	VM_C_REV_STALE_SYN = 20,
	VM_C_REV_CLOSED = 21,
	VM_C_DECAP = 22,
	VM_C_DECAP_PORT = 23,
	VM_C_EGRESS_PORT = 24,
	VM_C_MSS_CLAMPED = 25,
	VM_C_COUNT = 32,
};

struct vm_addr {
	__u32 w[4];
};

/* Key of the `services` map and of the task-side port maps. */
struct vm_svc_key {
	struct vm_addr addr;
	__u16 port;
	__u8 proto;
	__u8 family;
};

/* Value of the `services` map. */
struct vm_svc {
	__u32 id; /* index into `maglev_outer` and `svc_stats` */
	__u8 mode; /* VM_MODE_* */
	__u8 flags;
	__u16 pad;
};

/* Value of the `backends` array, indexed by backend id. */
struct vm_backend {
	struct vm_addr addr;
	__u16 port; /* NAT: target port; encap: unused (0) */
	__u8 family;
	__u8 flags; /* VM_BACKEND_VALID */
	__u32 tx_slot; /* key into `tx_ports` */
	__u8 smac[6];
	__u8 dmac[6];
	/* Generation of this id's assignment: userspace gives every newly
	 * allocated backend id a fresh value and keeps it while the backend stays.
	 * A flow remembers it, so a flow never follows a reused id. */
	__u32 generation;
	__u8 mode; /* VM_MODE_* of the backend's service */
	__u8 pad[3];
};

/* Key of `flows`: the client 5-tuple as received. */
struct vm_flow_key {
	struct vm_addr src;
	struct vm_addr dst;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/* Value of `flows`, the one state of a flow for both directions. A hit is
 * valid while backends[backend] is valid and has the same generation: then the
 * service lookup is skipped. In NAT mode tc_rev finds the flow of a reply
 * through rev_vips and restores the VIP from its key. */
struct vm_flow {
	__u64 atime; /* vm_now() of the last packet, either direction */
	__u32 backend;
	__u32 svc;
	__u32 generation; /* vm_backend.generation when the flow was created */
	__u8 state; /* VM_ST_* */
	__u8 flags; /* VM_FLOW_* */
	__u16 pad;
	__u32 ifindex; /* NAT: where the client's packets came in */
	__u8 client_mac[6]; /* NAT: destination of replies */
	__u8 our_mac[6]; /* NAT: source of replies */
};

/* One service a NAT backend serves: the VIP:port its replies leave as. */
struct vm_rev_vip {
	struct vm_addr vip;
	__u16 vport;
	__u16 pad;
	__u32 backend; /* the backend's id in that service */
};

/* Value of `rev_vips`, keyed by a vm_svc_key of the backend's address, target
 * port and protocol: the services it serves, n <= VM_REV_VIPS. */
struct vm_rev_vips {
	__u32 n;
	__u32 pad;
	struct vm_rev_vip v[VM_REV_VIPS];
};

/* Single element of `config`. */
struct vm_cfg {
	struct vm_addr node4; /* outer source for IPv4 encapsulation */
	struct vm_addr node6; /* outer source for IPv6 encapsulation */
	__u64 tcp_idle_ns;
	__u64 udp_idle_ns;
	__u64 close_ns; /* how long a flow lives after FIN */
	__u32 flags;
	/* MTU of the links encapsulated packets cross: the MSS of TCP SYNs to
	 * encap services is clamped so that encapsulated segments fit. */
	__u16 encap_mtu;
	__u16 pad;
};

/* Per-CPU statistics per service and per backend. */
struct vm_stats {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
};

/* Value of `task_ports` (task side, keyed by vm_svc_key of VIP:published port)
 * and of `task_egress` (keyed by VIP:target port). */
struct vm_port_map {
	__u16 port;
	__u16 pad;
};

#endif
