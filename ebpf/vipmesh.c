/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/*
 * vipmesh XDP fast path programs.
 *
 *   xdp_lb     XDP on the node's uplink: service lookup, LRU flow table, Maglev,
 *              then NAT (DNAT + DEVMAP redirect) or encap-DSR (IPIP / IP6IP6).
 *   tc_rev     tc ingress on the node-side veth of a task (NAT mode): finds the
 *              reply's flow (rev_vips + flows), SNAT back to VIP:port, expiry on
 *              FIN/RST/idle, redirect to uplink. No per-flow reverse state.
 *   tc_decap   tc ingress inside the task (encap mode): strip the outer header,
 *              translate the published port to the target port.
 *   tc_egress  tc egress inside the task (encap mode): target -> published port,
 *              and the MSS of SYN-ACKs clamped to fit the encap MTU.
 *   xdp_pass   the benchmark baseline, and the NAPI enabler for redirect targets.
 *
 * Verdicts (documented in crates/vipmesh-xdp/src/lib.rs):
 *   not IPv4/IPv6, malformed or truncated headers, IPv4 options, IPv6 extension
 *   headers, fragments, protocols other than TCP/UDP, and packets for no
 *   service: XDP_PASS (the kernel stack is the slow path and validates them).
 *   A service with no backend (empty or missing table): XDP_DROP.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "vipmesh_abi.h"
#include "vipmesh_maps.h"
#include "vipmesh_parse.h"

#define ETH_LEN 14
#define V4_L4 (ETH_LEN + 20)
#define V6_L4 (ETH_LEN + 40)

static __always_inline void vm_count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += 1;
}

static __always_inline void vm_stats_add(void *map, __u32 idx, __u32 len, int new_flow)
{
	struct vm_stats *s = bpf_map_lookup_elem(map, &idx);

	if (s) {
		s->packets += 1;
		s->bytes += len;
		s->new_flows += new_flow;
	}
}

/* bpf_ktime_get_coarse_ns() without its cost on every packet. The coarse clock
 * only moves at a tick, when jiffies moves too, and the verifier inlines
 * bpf_jiffies64() into one load; so each CPU keeps the last value it read and
 * calls the helper (~15 ns here) only when jiffies has changed. The value may
 * lag by one tick (read between the jiffies and the timekeeping update), and
 * CPUs may disagree by that much: callers clamp negative ages to 0. */
static __always_inline __u64 vm_now(void)
{
	__u32 zero = 0;
	struct vm_clock *ck = bpf_map_lookup_elem(&clock, &zero);
	__u64 j = bpf_jiffies64();

	if (!ck)
		return bpf_ktime_get_coarse_ns();
	if (ck->jiffies != j) {
		ck->jiffies = j;
		ck->ns = bpf_ktime_get_coarse_ns();
	}
	return ck->ns;
}

/* now - then, or 0 when another CPU's clock was a tick ahead (see vm_now). */
static __always_inline __u64 vm_age(__u64 now, __u64 then)
{
	return now > then ? now - then : 0;
}

/* The vm_svc_key of a packet's destination (a service) or source (a backend or,
 * task side, a VIP). */
static __always_inline void vm_key_of(struct vm_svc_key *k, struct vm_pkt *p, int src)
{
	k->addr = src ? p->key.src : p->key.dst;
	k->port = src ? p->key.sport : p->key.dport;
	k->proto = p->key.proto;
	k->family = p->key.family;
}

static __always_inline struct vm_cfg *vm_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&config, &zero);
}

static __always_inline __u32 vm_parse_counter(int r)
{
	switch (r) {
	case VM_P_NOT_IP:
		return VM_C_PASS_NOT_IP;
	case VM_P_FRAGMENT:
		return VM_C_PASS_FRAGMENT;
	case VM_P_OPTIONS:
		return VM_C_PASS_OPTIONS;
	case VM_P_PROTO:
		return VM_C_PASS_PROTO;
	default:
		return VM_C_PASS_MALFORMED;
	}
}

/* DNAT in place: destination address and port, IP and L4 checksums. */
static __always_inline int vm_nat_rewrite(void *data, void *data_end, struct vm_pkt *p,
					  struct vm_backend *be)
{
	__u16 *l4csum = NULL;
	__u16 *dport;
	int udp_zero = 0;

	if (p->key.family == VM_FAMILY_V4) {
		struct iphdr *ip = data + ETH_LEN;
		__u32 old, new = be->addr.w[0];

		if ((void *)(ip + 1) > data_end)
			return -1;
		if (p->key.proto == IPPROTO_TCP) {
			struct tcphdr *tcp = data + V4_L4;

			if ((void *)(tcp + 1) > data_end)
				return -1;
			l4csum = &tcp->check;
			dport = &tcp->dest;
		} else {
			struct udphdr *udp = data + V4_L4;

			if ((void *)(udp + 1) > data_end)
				return -1;
			l4csum = &udp->check;
			dport = &udp->dest;
			udp_zero = udp->check == 0;
		}
		old = ip->daddr;
		ip->daddr = new;
		vm_csum_replace4(&ip->check, old, new);
		if (!udp_zero) {
			vm_csum_replace4(l4csum, old, new);
			vm_csum_replace2(l4csum, *dport, be->port);
			if (p->key.proto == IPPROTO_UDP && *l4csum == 0)
				*l4csum = 0xffff;
		}
		*dport = be->port;
	} else {
		struct ipv6hdr *ip6 = data + ETH_LEN;
		__u32 *dst;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		if (p->key.proto == IPPROTO_TCP) {
			struct tcphdr *tcp = data + V6_L4;

			if ((void *)(tcp + 1) > data_end)
				return -1;
			l4csum = &tcp->check;
			dport = &tcp->dest;
		} else {
			struct udphdr *udp = data + V6_L4;

			if ((void *)(udp + 1) > data_end)
				return -1;
			l4csum = &udp->check;
			dport = &udp->dest;
		}
		dst = (__u32 *)&ip6->daddr;
#pragma unroll
		for (int i = 0; i < 4; i++) {
			vm_csum_replace4(l4csum, dst[i], be->addr.w[i]);
			dst[i] = be->addr.w[i];
		}
		vm_csum_replace2(l4csum, *dport, be->port);
		if (p->key.proto == IPPROTO_UDP && *l4csum == 0)
			*l4csum = 0xffff;
		*dport = be->port;
	}
	return 0;
}

/* Prepends an outer IPv4 (IPIP) or IPv6 (IP6IP6) header towards the backend. */
static __always_inline int vm_encap(struct xdp_md *ctx, struct vm_pkt *p, struct vm_backend *be,
				    struct vm_cfg *c)
{
	void *data, *data_end;
	struct ethhdr *eth;

	if (p->key.family == VM_FAMILY_V4) {
		struct iphdr *outer, *inner;
		__u8 *o;

		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
			return -1;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		eth = data;
		outer = data + ETH_LEN;
		inner = data + ETH_LEN + sizeof(struct iphdr);
		if ((void *)(inner + 1) > data_end)
			return -1;
		o = (__u8 *)outer;
		o[0] = 0x45;
		o[1] = inner->tos;
		outer->tot_len = bpf_htons(bpf_ntohs(inner->tot_len) + sizeof(struct iphdr));
		outer->id = 0;
		outer->frag_off = 0;
		outer->ttl = 64;
		outer->protocol = IPPROTO_IPIP;
		outer->check = 0;
		outer->saddr = c->node4.w[0];
		outer->daddr = be->addr.w[0];
		outer->check = vm_ipv4_csum(outer);
		eth->h_proto = bpf_htons(ETH_P_IP);
	} else {
		struct ipv6hdr *outer, *inner;
		__u8 *o;

		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct ipv6hdr)))
			return -1;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		eth = data;
		outer = data + ETH_LEN;
		inner = data + ETH_LEN + sizeof(struct ipv6hdr);
		if ((void *)(inner + 1) > data_end)
			return -1;
		o = (__u8 *)outer;
		o[0] = 0x60;
		o[1] = 0;
		o[2] = 0;
		o[3] = 0;
		outer->payload_len =
			bpf_htons(bpf_ntohs(inner->payload_len) + sizeof(struct ipv6hdr));
		outer->nexthdr = IPPROTO_IPV6;
		outer->hop_limit = 64;
		__builtin_memcpy(&outer->saddr, &c->node6, 16);
		__builtin_memcpy(&outer->daddr, &be->addr, 16);
		eth->h_proto = bpf_htons(ETH_P_IPV6);
	}
	__builtin_memcpy(eth->h_dest, be->dmac, 6);
	__builtin_memcpy(eth->h_source, be->smac, 6);
	return 0;
}

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct vm_pkt p = {};
	struct vm_svc_key sk = {};
	struct vm_cfg *c;
	struct vm_flow *f;
	struct vm_backend *be = NULL;
	__u32 bid = 0, svc_id = 0;
	__u64 now, idle;
	int r, syn, new_flow = 0;

	/* No VM_C_RX or VM_C_FLOW_HIT here: userspace derives both (maps.rs,
	 * derive_counters), so a hit pays one counter (its redirect) instead of
	 * three. Every exit below counts exactly one terminal counter (pass_*,
	 * drop_*, redirect_*, encap_fail), except the ones the parse makes
	 * impossible (no config slot, headers shorter than parsed). */
	r = vm_parse(data, data_end, &p);
	if (r != VM_P_OK) {
		vm_count(vm_parse_counter(r));
		return XDP_PASS;
	}
	{
		__u32 port = bpf_ntohs(p.key.dport), word = port >> 5;
		__u32 h = vm_addr_bit(&p.key.dst), aword = VM_FILTER_ADDR_BASE + (h >> 5);
		__u32 *pbits = bpf_map_lookup_elem(&svc_filter, &word);
		__u32 *abits = bpf_map_lookup_elem(&svc_filter, &aword);

		if (!pbits || !(*pbits & (1u << (port & 31))) || !abits ||
		    !(*abits & (1u << (h & 31)))) {
			vm_count(VM_C_PASS_NOT_OURS);
			return XDP_PASS;
		}
	}
	c = vm_config();
	if (!c)
		return XDP_PASS;
	now = vm_now();
	syn = (p.tcp_flags & (VM_TCP_SYN | VM_TCP_ACK)) == VM_TCP_SYN;

	/* Flow table first: a live flow carries everything the hit path needs
	 * (backend id + generation, service id), so the service lookup is only
	 * paid by first packets and by traffic that is not ours. */
	f = bpf_map_lookup_elem(&flows, &p.key);
	if (f) {
		bid = f->backend;
		be = bpf_map_lookup_elem(&backends, &bid);
		if (be && (be->flags & VM_BACKEND_VALID) && be->generation == f->generation) {
			__u64 age = vm_age(now, f->atime);

			idle = p.key.proto == IPPROTO_TCP ? c->tcp_idle_ns : c->udp_idle_ns;
			if (age > idle || (f->state == VM_ST_CLOSING && (syn || age > c->close_ns)))
				be = NULL;
		} else {
			be = NULL;
		}
		if (be) {
			/* The clock is coarse: most packets of a busy flow see the same
			 * value, so skip the store (and keep the line clean). */
			if (f->atime != now)
				f->atime = now;
			if (f->state == VM_ST_NEW && !syn)
				f->state = VM_ST_ESTABLISHED;
			else if (syn && (f->flags & VM_FLOW_REPLIED))
				/* The client starts over on the same tuple: its SYN-ACK
				 * is expected, not stale (see tc_rev). */
				f->flags &= ~VM_FLOW_REPLIED;
			goto forward;
		}
	}

	vm_key_of(&sk, &p, 0);
	{
		struct vm_svc *svc = bpf_map_lookup_elem(&services, &sk);
		struct vm_flow nf = {};
		__u32 zero = 0, slot, *m, *b;
		void *tbl;

		if (!svc) {
			vm_count(VM_C_PASS_NOT_OURS);
			return XDP_PASS;
		}
		svc_id = svc->id;
		if (f)
			vm_count(VM_C_FLOW_EXPIRED);
		else if (p.key.proto == IPPROTO_TCP && !syn)
			/* A mid-stream packet without state: evicted by LRU pressure,
			 * or a flow that started before this node took over. */
			vm_count(VM_C_FLOW_MISS_MIDSTREAM);
		tbl = bpf_map_lookup_elem(&maglev_outer, &svc_id);
		if (!tbl)
			goto no_backend;
		m = bpf_map_lookup_elem(tbl, &zero);
		if (!m || *m == 0)
			goto no_backend;
		slot = 1 + vm_flow_hash(&p.key) % *m;
		b = bpf_map_lookup_elem(tbl, &slot);
		if (!b)
			goto no_backend;
		bid = *b;
		be = bpf_map_lookup_elem(&backends, &bid);
		if (!be || !(be->flags & VM_BACKEND_VALID))
			goto no_backend;
		nf.atime = now;
		nf.backend = bid;
		nf.svc = svc_id;
		nf.generation = be->generation;
		nf.state = VM_ST_NEW;
		if (be->mode == VM_MODE_NAT) {
			/* What tc_rev needs to send replies back the way we came. */
			struct ethhdr *eth = data;

			if ((void *)(eth + 1) > data_end)
				return XDP_PASS;
			nf.ifindex = ctx->ingress_ifindex;
			__builtin_memcpy(nf.client_mac, eth->h_source, 6);
			__builtin_memcpy(nf.our_mac, eth->h_dest, 6);
		}
		if (f)
			/* Re-created flow (expired, closing, or its backend left): rewrite
			 * the entry in place, which costs far less than an LRU update. */
			*f = nf;
		else if (bpf_map_update_elem(&flows, &p.key, &nf, BPF_ANY))
			vm_count(VM_C_FLOW_INSERT_FAIL);
		vm_count(VM_C_FLOW_NEW);
		new_flow = 1;
	}

forward:
	if (p.tcp_flags & VM_TCP_RST) {
		bpf_map_delete_elem(&flows, &p.key);
		vm_count(VM_C_FLOW_CLOSED);
	} else if (p.tcp_flags & VM_TCP_FIN) {
		/* f, when set, is already the entry of this key (hit or rewritten in
		 * place): no second lookup. */
		struct vm_flow *fc = f ? f : bpf_map_lookup_elem(&flows, &p.key);

		if (fc && fc->state != VM_ST_CLOSING) {
			fc->state = VM_ST_CLOSING;
			vm_count(VM_C_FLOW_CLOSED);
		}
	}

	if (be->family != p.key.family) {
		vm_count(VM_C_DROP_FAMILY);
		return XDP_DROP;
	}
	/* Per backend only: a backend id belongs to one service, so userspace
	 * sums a service's backends (and keeps in svc_stats what its retired
	 * backends counted): one per-CPU update per packet, not two. */
	vm_stats_add(&backend_stats, bid, p.len, new_flow);

	if (be->mode == VM_MODE_NAT) {
		struct ethhdr *eth = data;

		if ((void *)(eth + 1) > data_end)
			return XDP_PASS;
		if (vm_nat_rewrite(data, data_end, &p, be))
			return XDP_PASS;
		__builtin_memcpy(eth->h_dest, be->dmac, 6);
		__builtin_memcpy(eth->h_source, be->smac, 6);
		vm_count(VM_C_REDIRECT_NAT);
		return bpf_redirect_map(&tx_ports, be->tx_slot, XDP_DROP);
	}

	if (p.key.proto == IPPROTO_TCP && (p.tcp_flags & VM_TCP_SYN) && c->encap_mtu) {
		/* Outer header + inner IP + TCP must fit the encap MTU. */
		if (p.key.family == VM_FAMILY_V4) {
			if (vm_clamp_mss(data + V4_L4, data_end, c->encap_mtu - 60))
				vm_count(VM_C_MSS_CLAMPED);
		} else if (vm_clamp_mss(data + V6_L4, data_end, c->encap_mtu - 100)) {
			vm_count(VM_C_MSS_CLAMPED);
		}
	}
	if (vm_encap(ctx, &p, be, c)) {
		vm_count(VM_C_ENCAP_FAIL);
		return XDP_DROP;
	}
	vm_count(VM_C_REDIRECT_ENCAP);
	return bpf_redirect_map(&tx_ports, be->tx_slot, XDP_DROP);

no_backend:
	vm_count(VM_C_DROP_NO_BACKEND);
	return XDP_DROP;
}

/* Makes the first `len` bytes readable; tc may see non-linear skbs. */
static __always_inline int vm_tc_pull(struct __sk_buff *skb, __u32 len)
{
	if ((void *)(long)skb->data + len > (void *)(long)skb->data_end)
		return bpf_skb_pull_data(skb, len);
	return 0;
}

static __always_inline int vm_tc_parse(struct __sk_buff *skb, struct vm_pkt *p)
{
	vm_tc_pull(skb, V6_L4 + sizeof(struct tcphdr));
	return vm_parse((void *)(long)skb->data, (void *)(long)skb->data_end, p);
}

/* Rewrites the source (addr, port) and the MACs of a TCP/UDP packet. Headers
 * are written directly (the verifier unclones the skb first) and the IPv4
 * header checksum by hand; only the L4 checksum goes through
 * bpf_l4_csum_replace, which alone can tell a CHECKSUM_PARTIAL skb (a TSO/GSO
 * segment from the task: only the pseudo-header part changes) from a complete
 * one. */
static __always_inline int vm_tc_snat(struct __sk_buff *skb, struct vm_pkt *p,
				      const struct vm_addr *addr, __u16 port, const __u8 *macs)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 l4 = p->key.family == VM_FAMILY_V4 ? V4_L4 : V6_L4;
	__u32 csum_off = l4 + (p->key.proto == IPPROTO_TCP ? 16 : 6);
	__u16 *sport = data + l4;
	__u64 mangled = 0;
	__s64 diff = 0;
	int do_l4 = 1;

	if ((void *)(sport + 1) > data_end)
		return -1;
	if (p->key.proto == IPPROTO_UDP && p->key.family == VM_FAMILY_V4) {
		struct udphdr *udp = data + V4_L4;

		if ((void *)(udp + 1) > data_end)
			return -1;
		mangled = BPF_F_MARK_MANGLED_0;
		do_l4 = udp->check != 0;
	}
	if (p->key.family == VM_FAMILY_V4) {
		struct iphdr *ip = data + ETH_LEN;

		if ((void *)(ip + 1) > data_end)
			return -1;
		ip->saddr = addr->w[0];
		vm_csum_replace4(&ip->check, p->key.src.w[0], addr->w[0]);
	} else {
		struct ipv6hdr *ip6 = data + ETH_LEN;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		diff = bpf_csum_diff((__be32 *)&p->key.src, 16, (__be32 *)addr, 16, 0);
		if (diff < 0)
			return -1;
		__builtin_memcpy(&ip6->saddr, addr, 16);
	}
	*sport = port;
	__builtin_memcpy(data, macs, 12);
	/* Packet pointers are stale after these helpers: no access below. */
	if (p->key.family == VM_FAMILY_V4) {
		if (do_l4 && bpf_l4_csum_replace(skb, csum_off, p->key.src.w[0], addr->w[0],
						 BPF_F_PSEUDO_HDR | mangled | 4))
			return -1;
	} else if (bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR)) {
		return -1;
	}
	if (do_l4 && bpf_l4_csum_replace(skb, csum_off, p->key.sport, port, mangled | 2))
		return -1;
	return 0;
}

SEC("classifier")
int tc_rev(struct __sk_buff *skb)
{
	struct vm_pkt p = {};
	struct vm_svc_key bk = {};
	struct vm_flow_key fk = {};
	struct vm_rev_vips *rv;
	struct vm_flow *f = NULL;
	struct vm_backend *be;
	struct vm_cfg *c;
	__u8 macs[12];
	__u64 now, idle, age;
	__u32 ifindex, bid;
	int syn;

	if (vm_tc_parse(skb, &p) != VM_P_OK)
		return TC_ACT_OK;
	/* Which services does the sender serve as a NAT backend? */
	vm_key_of(&bk, &p, 1);
	rv = bpf_map_lookup_elem(&rev_vips, &bk);
	if (!rv)
		return TC_ACT_OK;
	/* The client's flow towards one of them, balanced to this backend. */
	fk.src = p.key.dst;
	fk.sport = p.key.dport;
	fk.proto = p.key.proto;
	fk.family = p.key.family;
#pragma unroll
	for (int i = 0; i < VM_REV_VIPS; i++) {
		if (i >= rv->n)
			break;
		fk.dst = rv->v[i].vip;
		fk.dport = rv->v[i].vport;
		f = bpf_map_lookup_elem(&flows, &fk);
		if (f && f->backend == rv->v[i].backend)
			break;
		f = NULL;
	}
	if (!f)
		return TC_ACT_OK;
	bid = f->backend;
	be = bpf_map_lookup_elem(&backends, &bid);
	if (!be || !(be->flags & VM_BACKEND_VALID) || be->generation != f->generation)
		return TC_ACT_OK;
	c = vm_config();
	if (!c)
		return TC_ACT_OK;
	now = vm_now();
	idle = p.key.proto == IPPROTO_TCP ? c->tcp_idle_ns : c->udp_idle_ns;
	age = vm_age(now, f->atime);
	syn = p.tcp_flags & VM_TCP_SYN;
	if (syn && (f->flags & VM_FLOW_REPLIED)) {
		/* A SYN-ACK for a flow past its handshake belongs to another
		 * connection reusing the 4-tuple (not load-balanced): stale. */
		bpf_map_delete_elem(&flows, &fk);
		vm_count(VM_C_REV_STALE_SYN);
		return TC_ACT_OK;
	}
	if (age > idle || (f->state == VM_ST_CLOSING && age > c->close_ns)) {
		vm_count(VM_C_REV_EXPIRED);
		return TC_ACT_OK;
	}
	ifindex = f->ifindex;
	__builtin_memcpy(macs, f->client_mac, 6);
	__builtin_memcpy(macs + 6, f->our_mac, 6);
	if (p.tcp_flags & VM_TCP_RST) {
		bpf_map_delete_elem(&flows, &fk);
		vm_count(VM_C_REV_CLOSED);
	} else {
		if (p.tcp_flags & VM_TCP_FIN) {
			if (f->state != VM_ST_CLOSING)
				vm_count(VM_C_REV_CLOSED);
			f->state = VM_ST_CLOSING;
		}
		if (!syn && !(f->flags & VM_FLOW_REPLIED))
			f->flags |= VM_FLOW_REPLIED;
		if (f->atime != now)
			f->atime = now;
	}
	if (vm_tc_snat(skb, &p, &fk.dst, fk.dport, macs))
		return TC_ACT_SHOT;
	vm_count(VM_C_REV_HIT);
	return bpf_redirect(ifindex, 0);
}

/* Translates the destination port of a VIP:published packet to the target. */
static __always_inline int vm_tc_dport(struct __sk_buff *skb, struct vm_pkt *p)
{
	struct vm_svc_key k = {};
	struct vm_port_map *pm;
	__u32 l4, csum_off;
	__u64 mangled = 0;
	__u16 port;

	vm_key_of(&k, p, 0);
	pm = bpf_map_lookup_elem(&task_ports, &k);
	if (!pm)
		return 0;
	port = pm->port;
	l4 = p->key.family == VM_FAMILY_V4 ? V4_L4 : V6_L4;
	csum_off = l4 + (p->key.proto == IPPROTO_TCP ? 16 : 6);
	if (p->key.proto == IPPROTO_UDP) {
		void *data = (void *)(long)skb->data;
		void *data_end = (void *)(long)skb->data_end;
		struct udphdr *udp = data + l4;

		if ((void *)(udp + 1) > data_end)
			return -1;
		if (p->key.family == VM_FAMILY_V4) {
			if (udp->check == 0)
				goto store;
			mangled = BPF_F_MARK_MANGLED_0;
		}
	}
	if (bpf_l4_csum_replace(skb, csum_off, p->key.dport, port, mangled | 2))
		return -1;
store:
	if (bpf_skb_store_bytes(skb, l4 + 2, &port, 2, 0))
		return -1;
	vm_count(VM_C_DECAP_PORT);
	return 0;
}

SEC("classifier")
int tc_decap(struct __sk_buff *skb)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct vm_pkt p = {};
	int shrink = 0;

	vm_tc_pull(skb, V6_L4 + sizeof(struct ipv6hdr));
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return TC_ACT_OK;
		if (ip->protocol == IPPROTO_IPIP && ip->ihl == 5)
			shrink = sizeof(struct iphdr);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return TC_ACT_OK;
		if (ip6->nexthdr == IPPROTO_IPV6)
			shrink = sizeof(struct ipv6hdr);
	}
	if (shrink) {
		if (bpf_skb_adjust_room(skb, -shrink, BPF_ADJ_ROOM_MAC, 0))
			return TC_ACT_SHOT;
		vm_count(VM_C_DECAP);
	}
	if (vm_tc_parse(skb, &p) != VM_P_OK)
		return TC_ACT_OK;
	if (vm_tc_dport(skb, &p))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/* tc: lowers the MSS option of a TCP SYN(-ACK) to `max` with the helpers, which
 * leave the checksum of a CHECKSUM_PARTIAL skb alone (the stack completes it
 * over the new bytes). Returns 1 when it did, -1 on a helper error. */
static __always_inline int vm_tc_clamp_mss(struct __sk_buff *skb, struct vm_pkt *p, __u16 max)
{
	__u32 l4 = p->key.family == VM_FAMILY_V4 ? V4_L4 : V6_L4;
	void *data, *data_end;
	long off;
	__u8 *v;
	__u16 cur, nv;

	/* Options may sit past what vm_tc_parse pulled; a SYN is small. */
	if (bpf_skb_pull_data(skb, 0))
		return 0;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (l4 == V4_L4)
		v = vm_mss_field(data + V4_L4, data_end);
	else
		v = vm_mss_field(data + V6_L4, data_end);
	if (!v)
		return 0;
	off = v - (__u8 *)data - l4;
	cur = (__u16)v[0] << 8 | v[1];
	if (cur <= max)
		return 0;
	nv = bpf_htons(max);
	if (bpf_skb_store_bytes(skb, l4 + off, &nv, 2, 0))
		return -1;
	if (bpf_l4_csum_replace(skb, l4 + 16, vm_mss_csum_word(cur, off),
				vm_mss_csum_word(max, off), 2))
		return -1;
	return 1;
}

SEC("classifier")
int tc_egress(struct __sk_buff *skb)
{
	struct vm_pkt p = {};
	struct vm_svc_key k = {};
	struct vm_port_map *pm;
	__u32 l4, csum_off;
	__u64 mangled = 0;
	__u16 port;

	if (vm_tc_parse(skb, &p) != VM_P_OK)
		return TC_ACT_OK;
	vm_key_of(&k, &p, 1);
	pm = bpf_map_lookup_elem(&task_egress, &k);
	if (!pm)
		return TC_ACT_OK;
	port = pm->port;
	if (p.key.proto == IPPROTO_TCP && (p.tcp_flags & VM_TCP_SYN)) {
		/* The task's SYN-ACK sets the size of the client's segments, which
		 * the node encapsulates: clamp its MSS to fit the encap MTU. */
		struct vm_cfg *c = vm_config();
		int r = 0;

		if (c && c->encap_mtu)
			r = vm_tc_clamp_mss(skb, &p, c->encap_mtu - (p.key.family == VM_FAMILY_V4 ? 60 : 100));
		if (r < 0)
			return TC_ACT_SHOT;
		if (r > 0)
			vm_count(VM_C_MSS_CLAMPED);
	}
	if (port == p.key.sport)
		return TC_ACT_OK; /* a VIP flow without port translation */
	l4 = p.key.family == VM_FAMILY_V4 ? V4_L4 : V6_L4;
	csum_off = l4 + (p.key.proto == IPPROTO_TCP ? 16 : 6);
	if (p.key.proto == IPPROTO_UDP) {
		void *data = (void *)(long)skb->data;
		void *data_end = (void *)(long)skb->data_end;
		struct udphdr *udp = data + l4;

		if ((void *)(udp + 1) > data_end)
			return TC_ACT_OK;
		if (p.key.family == VM_FAMILY_V4) {
			if (udp->check == 0)
				goto store;
			mangled = BPF_F_MARK_MANGLED_0;
		}
	}
	if (bpf_l4_csum_replace(skb, csum_off, p.key.sport, port, mangled | 2))
		return TC_ACT_SHOT;
store:
	if (bpf_skb_store_bytes(skb, l4, &port, 2, 0))
		return TC_ACT_SHOT;
	vm_count(VM_C_EGRESS_PORT);
	return TC_ACT_OK;
}

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
