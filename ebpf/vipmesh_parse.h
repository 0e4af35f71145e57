/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/* vipmesh XDP fast path: packet parsing, checksum arithmetic and flow hash. */
#ifndef VIPMESH_PARSE_H
#define VIPMESH_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "vipmesh_abi.h"

#define VM_IP_MF 0x2000
#define VM_IP_OFFMASK 0x1fff

/* Outcome of parsing; anything but VM_P_OK is passed to the kernel stack. */
enum vm_parse {
	VM_P_OK = 0,
	VM_P_NOT_IP = 1,
	VM_P_MALFORMED = 2,
	VM_P_FRAGMENT = 3,
	VM_P_OPTIONS = 4, /* IPv4 options or IPv6 extension headers: slow path */
	VM_P_PROTO = 5, /* not TCP or UDP (ICMP, ...) */
};

struct vm_pkt {
	struct vm_flow_key key; /* as received: src = sender */
	__u32 l3_off;
	__u32 l4_off;
	__u32 len; /* whole frame */
	__u8 tcp_flags; /* FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10 */
	__u8 pad[3];
};

#define VM_TCP_FIN 0x01
#define VM_TCP_SYN 0x02
#define VM_TCP_RST 0x04
#define VM_TCP_ACK 0x10

/* Parses eth / IPv4 (no options, not fragmented) or IPv6 (no extension
 * headers) / TCP or UDP. Never reads past data_end. */
static __always_inline int vm_parse(void *data, void *data_end, struct vm_pkt *p)
{
	struct ethhdr *eth = data;
	__u8 proto;

	if ((void *)(eth + 1) > data_end)
		return VM_P_MALFORMED;
	p->len = (__u32)((long)data_end - (long)data);
	p->l3_off = sizeof(*eth);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return VM_P_MALFORMED;
		if (ip->version != 4 || ip->ihl < 5)
			return VM_P_MALFORMED;
		if (ip->ihl != 5)
			return VM_P_OPTIONS;
		if (ip->frag_off & bpf_htons(VM_IP_MF | VM_IP_OFFMASK))
			return VM_P_FRAGMENT;
		proto = ip->protocol;
		p->key.family = VM_FAMILY_V4;
		p->key.src.w[0] = ip->saddr;
		p->key.dst.w[0] = ip->daddr;
		p->l4_off = sizeof(*eth) + sizeof(*ip);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return VM_P_MALFORMED;
		if (ip6->version != 6)
			return VM_P_MALFORMED;
		proto = ip6->nexthdr;
		if (proto == IPPROTO_FRAGMENT)
			return VM_P_FRAGMENT;
		if (proto == IPPROTO_HOPOPTS || proto == IPPROTO_ROUTING ||
		    proto == IPPROTO_DSTOPTS || proto == 51 /* AH */ ||
		    proto == 135 /* mobility */)
			return VM_P_OPTIONS;
		p->key.family = VM_FAMILY_V6;
		__builtin_memcpy(&p->key.src, &ip6->saddr, 16);
		__builtin_memcpy(&p->key.dst, &ip6->daddr, 16);
		p->l4_off = sizeof(*eth) + sizeof(*ip6);
	} else {
		return VM_P_NOT_IP;
	}
	p->key.proto = proto;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = data + p->l4_off;

		if ((void *)(tcp + 1) > data_end)
			return VM_P_MALFORMED;
		if (tcp->doff < 5)
			return VM_P_MALFORMED;
		p->key.sport = tcp->source;
		p->key.dport = tcp->dest;
		p->tcp_flags = ((__u8 *)tcp)[13];
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *udp = data + p->l4_off;

		if ((void *)(udp + 1) > data_end)
			return VM_P_MALFORMED;
		p->key.sport = udp->source;
		p->key.dport = udp->dest;
		p->tcp_flags = 0;
	} else {
		return VM_P_PROTO;
	}
	return VM_P_OK;
}

/* ---- ones' complement arithmetic (RFC 1071 / RFC 1624) ---- */

static __always_inline __u16 vm_csum_fold(__u64 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* HC' = ~(~HC + ~m + m') for a 32-bit field (both in wire order). */
static __always_inline void vm_csum_replace4(__u16 *csum, __u32 from, __u32 to)
{
	__u64 s = (__u16)~*csum;

	s += (~from & 0xffff) + ((~from >> 16) & 0xffff);
	s += (to & 0xffff) + (to >> 16);
	*csum = ~vm_csum_fold(s);
}

static __always_inline void vm_csum_replace2(__u16 *csum, __u16 from, __u16 to)
{
	__u64 s = (__u16)~*csum;

	s += (__u16)~from;
	s += to;
	*csum = ~vm_csum_fold(s);
}

/* Full checksum of a 20-byte IPv4 header (the csum field must be 0). */
static __always_inline __u16 vm_ipv4_csum(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u64 s = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		s += w[i];
	return ~vm_csum_fold(s);
}

/* The 2-byte value of the MSS option of the TCP header `tcp` (bounds-checked
 * against data_end), or NULL when there is none. Options are walked for at
 * most 10 steps (40 bytes of options hold no more), stopping at EOL or
 * anything malformed. */
static __always_inline __u8 *vm_mss_field(struct tcphdr *tcp, void *data_end)
{
	__u8 *opt = (__u8 *)(tcp + 1);
	__u8 *end;

	if ((void *)(tcp + 1) > data_end)
		return NULL;
	end = (__u8 *)tcp + tcp->doff * 4;
#pragma unroll
	for (int i = 0; i < 10; i++) {
		__u8 kind, len;

		if (opt + 1 > end || (void *)(opt + 1) > data_end)
			return NULL;
		kind = opt[0];
		if (kind == 0)
			return NULL;
		if (kind == 1) {
			opt++;
			continue;
		}
		if (opt + 2 > end || (void *)(opt + 2) > data_end)
			return NULL;
		len = opt[1];
		if (kind == 2) {
			if (len != 4 || opt + 4 > end || (void *)(opt + 4) > data_end)
				return NULL;
			return opt + 2;
		}
		if (len < 2)
			return NULL;
		opt += len;
	}
	return NULL;
}

/* The MSS value `v` (host order) as the TCP checksum sees it at byte offset
 * `off` of the header: the raw 16-bit word at an even offset, byte-swapped
 * across two words at an odd one. */
static __always_inline __u16 vm_mss_csum_word(__u16 v, long off)
{
	__u16 raw = bpf_htons(v);

	return off & 1 ? __builtin_bswap16(raw) : raw;
}

/* XDP: lowers the MSS option of the TCP SYN at `tcp` to `max`, fixing the
 * checksum incrementally. Returns 1 when it did. */
static __always_inline int vm_clamp_mss(struct tcphdr *tcp, void *data_end, __u16 max)
{
	__u8 *v = vm_mss_field(tcp, data_end);
	long off;
	__u16 cur;

	if (!v)
		return 0;
	off = v - (__u8 *)tcp;
	cur = (__u16)v[0] << 8 | v[1];
	if (cur <= max)
		return 0;
	v[0] = max >> 8;
	v[1] = max & 0xff;
	vm_csum_replace2(&tcp->check, vm_mss_csum_word(cur, off), vm_mss_csum_word(max, off));
	return 1;
}

/* Bit of an address in the address half of `svc_filter` (16 bits). */
static __always_inline __u32 vm_addr_bit(const struct vm_addr *a)
{
	__u32 w = a->w[0] ^ a->w[1] ^ a->w[2] ^ a->w[3];

	return (w * VM_ADDR_HASH_MUL) >> 16;
}

/* ---- jhash (Bob Jenkins' lookup3 final mix) over the flow key ---- */

static __always_inline __u32 vm_rol32(__u32 w, int s)
{
	return (w << s) | (w >> (32 - s));
}

#define VM_JHASH_MIX(a, b, c)                 \
	do {                                  \
		a -= c; a ^= vm_rol32(c, 4); c += b;  \
		b -= a; b ^= vm_rol32(a, 6); a += c;  \
		c -= b; c ^= vm_rol32(b, 8); b += a;  \
		a -= c; a ^= vm_rol32(c, 16); c += b; \
		b -= a; b ^= vm_rol32(a, 19); a += c; \
		c -= b; c ^= vm_rol32(b, 4); b += a;  \
	} while (0)

#define VM_JHASH_FINAL(a, b, c)                \
	do {                                   \
		c ^= b; c -= vm_rol32(b, 14);  \
		a ^= c; a -= vm_rol32(c, 11);  \
		b ^= a; b -= vm_rol32(a, 25);  \
		c ^= b; c -= vm_rol32(b, 16);  \
		a ^= c; a -= vm_rol32(c, 4);   \
		b ^= a; b -= vm_rol32(a, 14);  \
		c ^= b; c -= vm_rol32(b, 24);  \
	} while (0)

/* Hash of a vm_flow_key without its destination address: jhash2 (frozen seed)
 * of the 6 words src[0..3], sport|dport, proto|family|pad. The destination
 * address is left out because a published port is addressed to each node's own
 * address: a flow must pick the same Maglev slot whichever node it enters, so
 * every node sends it to the same task (the ingress mesh). Within one service
 * the destination address is constant otherwise, so nothing is lost.
 * MUST NOT CHANGE (as VM_FLOW_HASH_SEED): every node computes it. */
static __always_inline __u32 vm_flow_hash(const struct vm_flow_key *k)
{
	const __u32 *w = (const __u32 *)k;
	__u32 a, b, c;

	a = b = c = 0xdeadbeef + (6 << 2) + VM_FLOW_HASH_SEED;
	a += w[0]; b += w[1]; c += w[2];
	VM_JHASH_MIX(a, b, c);
	a += w[3]; b += w[8]; c += w[9];
	VM_JHASH_FINAL(a, b, c);
	return c;
}

#endif
