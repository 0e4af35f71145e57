//! Packet builders (feature `xdp`): builds Ethernet frames with correct checksums and checks the frames programs emit.
//! Parsing never panics: every length is checked before use.

use std::net::IpAddr;

use vipmesh_xdp::Proto;

/// TCP flags.
pub const FIN: u8 = 0x01;
/// TCP SYN.
pub const SYN: u8 = 0x02;
/// TCP RST.
pub const RST: u8 = 0x04;
/// TCP PSH.
pub const PSH: u8 = 0x08;
/// TCP ACK.
pub const ACK: u8 = 0x10;

/// A frame to build.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Destination MAC.
    pub dmac: [u8; 6],
    /// Source MAC.
    pub smac: [u8; 6],
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Protocol.
    pub proto: Proto,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// TCP flags (ignored for UDP).
    pub flags: u8,
    /// Payload.
    pub payload: Vec<u8>,
}

fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data` (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum16(data, 0))
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    let mut acc = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = sum16(&s.octets(), acc);
            acc = sum16(&d.octets(), acc);
        }
        (s, d) => {
            acc = sum16(&v6_octets(s), acc);
            acc = sum16(&v6_octets(d), acc);
        }
    }
    acc + u64::from(proto) + len as u64
}

fn v6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

/// L4 header (with `tcp_options`, padded to 4 bytes, for TCP) + payload with a correct
/// checksum.
fn l4(spec: &Spec, tcp_options: &[u8]) -> Vec<u8> {
    let mut seg = Vec::new();
    seg.extend_from_slice(&spec.sport.to_be_bytes());
    seg.extend_from_slice(&spec.dport.to_be_bytes());
    match spec.proto {
        Proto::Tcp => {
            seg.extend_from_slice(&1000u32.to_be_bytes()); // seq
            seg.extend_from_slice(&(if spec.flags & ACK != 0 { 2000u32 } else { 0 }).to_be_bytes());
            let opt_len = tcp_options.len().div_ceil(4) * 4;
            seg.push(u8::try_from(5 + opt_len / 4).unwrap_or(15) << 4);
            seg.push(spec.flags);
            seg.extend_from_slice(&64240u16.to_be_bytes());
            seg.extend_from_slice(&[0, 0, 0, 0]); // csum, urg
            seg.extend_from_slice(tcp_options);
            seg.resize(20 + opt_len, 0); // EOL padding
        }
        Proto::Udp => {
            let len = u16::try_from(8 + spec.payload.len()).unwrap_or(u16::MAX);
            seg.extend_from_slice(&len.to_be_bytes());
            seg.extend_from_slice(&[0, 0]);
        }
    }
    seg.extend_from_slice(&spec.payload);
    let off = if spec.proto == Proto::Tcp { 16 } else { 6 };
    let mut c = !fold(sum16(
        &seg,
        pseudo(spec.src, spec.dst, spec.proto.number(), seg.len()),
    ));
    if spec.proto == Proto::Udp && c == 0 {
        c = 0xffff;
    }
    seg[off..off + 2].copy_from_slice(&c.to_be_bytes());
    seg
}

/// An IPv4 header (20 bytes, DF clear) with a correct checksum.
pub fn ipv4_header(src: [u8; 4], dst: [u8; 4], proto: u8, payload_len: usize) -> Vec<u8> {
    let total = u16::try_from(20 + payload_len).unwrap_or(u16::MAX);
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// An IPv6 header.
pub fn ipv6_header(src: [u8; 16], dst: [u8; 16], next: u8, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&u16::try_from(payload_len).unwrap_or(u16::MAX).to_be_bytes());
    h.push(next);
    h.push(64);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h
}

/// Builds the frame.
pub fn build(spec: &Spec) -> Vec<u8> {
    build_with_tcp_options(spec, &[])
}

/// The TCP MSS option (kind 2, length 4).
pub fn mss_option(mss: u16) -> [u8; 4] {
    let [hi, lo] = mss.to_be_bytes();
    [2, 4, hi, lo]
}

/// Builds the frame with TCP options (at most 40 bytes; padded with EOL to a multiple of 4).
/// Ignored for UDP.
pub fn build_with_tcp_options(spec: &Spec, tcp_options: &[u8]) -> Vec<u8> {
    let seg = l4(spec, tcp_options);
    let mut f = Vec::new();
    f.extend_from_slice(&spec.dmac);
    f.extend_from_slice(&spec.smac);
    match (spec.src, spec.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            f.extend(ipv4_header(
                s.octets(),
                d.octets(),
                spec.proto.number(),
                seg.len(),
            ));
        }
        (s, d) => {
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend(ipv6_header(
                v6_octets(s),
                v6_octets(d),
                spec.proto.number(),
                seg.len(),
            ));
        }
    }
    f.extend(seg);
    f
}

/// What a checked frame contains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Destination MAC.
    pub dmac: [u8; 6],
    /// Source MAC.
    pub smac: [u8; 6],
    /// Outer addresses when the frame is IPIP / IP6IP6 encapsulated.
    pub outer: Option<(IpAddr, IpAddr)>,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol.
    pub proto: u8,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// TCP flags.
    pub flags: u8,
    /// TCP options (the header bytes past the first 20; empty for UDP).
    pub tcp_options: Vec<u8>,
    /// Payload.
    pub payload: Vec<u8>,
}

fn get(b: &[u8], from: usize, len: usize) -> Result<&[u8], String> {
    from.checked_add(len)
        .and_then(|end| b.get(from..end))
        .ok_or_else(|| format!("truncated: need {len} bytes at {from}, have {}", b.len()))
}

fn ip_layer(b: &[u8], ethertype: u16) -> Result<(IpAddr, IpAddr, u8, &[u8], usize), String> {
    match ethertype {
        0x0800 => {
            let h = get(b, 0, 20)?;
            if h[0] != 0x45 {
                return Err(format!("unexpected IPv4 version/ihl {:#x}", h[0]));
            }
            if checksum(h) != 0 {
                return Err(format!(
                    "bad IPv4 header checksum {:#06x}",
                    u16::from_be_bytes([h[10], h[11]])
                ));
            }
            let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
            if total < 20 || total > b.len() {
                return Err(format!("IPv4 total length {total} vs {} bytes", b.len()));
            }
            let s: [u8; 4] = [h[12], h[13], h[14], h[15]];
            let d: [u8; 4] = [h[16], h[17], h[18], h[19]];
            Ok((
                IpAddr::from(s),
                IpAddr::from(d),
                h[9],
                get(b, 20, total - 20)?,
                20,
            ))
        }
        0x86dd => {
            let h = get(b, 0, 40)?;
            if h[0] >> 4 != 6 {
                return Err("unexpected IPv6 version".into());
            }
            let plen = usize::from(u16::from_be_bytes([h[4], h[5]]));
            let mut s = [0u8; 16];
            s.copy_from_slice(&h[8..24]);
            let mut d = [0u8; 16];
            d.copy_from_slice(&h[24..40]);
            Ok((
                IpAddr::from(s),
                IpAddr::from(d),
                h[6],
                get(b, 40, plen)?,
                40,
            ))
        }
        t => Err(format!("unexpected ethertype {t:#06x}")),
    }
}

/// Parses a frame and verifies the IPv4 header checksum and the TCP/UDP checksum (over the
/// pseudo-header). For IPIP / IP6IP6 the outer header is checked too.
///
/// # Errors
///
/// A description of the first thing that is wrong.
pub fn check(frame: &[u8]) -> Result<Parsed, String> {
    let eth = get(frame, 0, 14)?;
    let mut dmac = [0u8; 6];
    dmac.copy_from_slice(&eth[0..6]);
    let mut smac = [0u8; 6];
    smac.copy_from_slice(&eth[6..12]);
    let et = u16::from_be_bytes([eth[12], eth[13]]);
    let rest = get(frame, 14, frame.len() - 14)?;
    let (mut src, mut dst, mut proto, mut l4b, _) = ip_layer(rest, et)?;
    let mut outer = None;
    if proto == 4 || proto == 41 {
        outer = Some((src, dst));
        let inner_et = if proto == 4 { 0x0800 } else { 0x86dd };
        (src, dst, proto, l4b, _) = ip_layer(l4b, inner_et)?;
    }
    let (sport, dport, flags, tcp_options, payload) = match proto {
        6 => {
            let h = get(l4b, 0, 20)?;
            let doff = usize::from(h[12] >> 4) * 4;
            (
                u16::from_be_bytes([h[0], h[1]]),
                u16::from_be_bytes([h[2], h[3]]),
                h[13],
                get(l4b, 20, doff.saturating_sub(20))?,
                get(l4b, doff, l4b.len().saturating_sub(doff))?,
            )
        }
        17 => {
            let h = get(l4b, 0, 8)?;
            (
                u16::from_be_bytes([h[0], h[1]]),
                u16::from_be_bytes([h[2], h[3]]),
                0,
                &[][..],
                get(l4b, 8, l4b.len() - 8)?,
            )
        }
        p => return Err(format!("unexpected protocol {p}")),
    };
    let zero_udp = proto == 17 && l4b.get(6..8) == Some(&[0, 0]) && src.is_ipv4();
    if !zero_udp {
        let c = !fold(sum16(l4b, pseudo(src, dst, proto, l4b.len())));
        if c != 0 {
            return Err(format!("bad L4 checksum (residue {c:#06x})"));
        }
    }
    Ok(Parsed {
        dmac,
        smac,
        outer,
        src,
        dst,
        proto,
        sport,
        dport,
        flags,
        tcp_options: tcp_options.to_vec(),
        payload: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(src: &str, dst: &str, proto: Proto) -> Spec {
        Spec {
            dmac: [2, 0, 0, 0, 0, 1],
            smac: [2, 0, 0, 0, 0, 2],
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto,
            sport: 40000,
            dport: 80,
            flags: SYN,
            payload: b"hello".to_vec(),
        }
    }

    #[test]
    fn round_trip_all_families_and_protocols() {
        for (s, d) in [("10.0.0.2", "10.0.0.1"), ("fd00::2", "fd00::1")] {
            for p in [Proto::Tcp, Proto::Udp] {
                let f = build(&spec(s, d, p));
                let parsed = check(&f).unwrap();
                assert_eq!(parsed.src, s.parse::<IpAddr>().unwrap());
                assert_eq!((parsed.sport, parsed.dport), (40000, 80));
                assert_eq!(parsed.payload, b"hello");
                let mut bad = f.clone();
                let n = bad.len();
                bad[n - 1] ^= 0xff;
                assert!(check(&bad).unwrap_err().contains("checksum"));
            }
        }
    }

    #[test]
    fn check_never_panics_on_truncation() {
        let f = build(&spec("10.0.0.2", "10.0.0.1", Proto::Tcp));
        for n in 0..f.len() {
            let _ = check(&f[..n]);
        }
    }
}
