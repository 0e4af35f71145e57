//! The frozen hash behind every Maglev permutation.
//!
//! The hash is **SipHash-2-4** (Aumasson and Bernstein, 2012, <https://www.aumasson.jp/siphash/siphash.pdf>)
//! with 64-bit output, implemented here so that no dependency upgrade can change its output.
//! It is keyed by two fixed 128-bit keys, one for the permutation's offset and one for its
//! skip. The implementation is checked against the paper's reference vectors and against the
//! standard library's (deprecated) `SipHasher`, which is the same function.
//!
//! # MUST NOT CHANGE
//!
//! Every node of a cluster, and every version of vipmesh, must compute the same table from the
//! same backend set, or connections break when traffic moves between nodes or across an
//! upgrade. Changing the function, a key, or the way the key bytes are fed to it is a breaking
//! change of the on-the-wire behaviour. The golden tests in this crate fail if any of them
//! drifts.

/// Key of the offset hash, as the 16 ASCII bytes `vipmesh-maglev-0`. MUST NOT CHANGE.
pub const OFFSET_KEY: [u8; 16] = *b"vipmesh-maglev-0";

/// Key of the skip hash, as the 16 ASCII bytes `vipmesh-maglev-1`. MUST NOT CHANGE.
pub const SKIP_KEY: [u8; 16] = *b"vipmesh-maglev-1";

/// Reads eight little-endian bytes; `bytes` must hold exactly 8 (the callers guarantee it).
fn le_u64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// A streaming SipHash-2-4 state (64-bit output).
#[derive(Debug, Clone)]
pub(crate) struct SipHasher24 {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
    /// Bytes not yet consumed as a full 8-byte word.
    tail: [u8; 8],
    /// How many bytes of `tail` are valid (0..8).
    ntail: usize,
    /// Total message length, modulo 256 as the algorithm uses it.
    length: u64,
}

impl SipHasher24 {
    /// A hasher with the 128-bit key `key` (the first 8 bytes are `k0`, little-endian).
    pub(crate) fn new(key: &[u8; 16]) -> Self {
        let k0 = le_u64(&key[..8]);
        let k1 = le_u64(&key[8..]);
        Self {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            v1: k1 ^ 0x646f_7261_6e64_6f6d,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
            tail: [0; 8],
            ntail: 0,
            length: 0,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13);
        self.v1 ^= self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16);
        self.v3 ^= self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21);
        self.v3 ^= self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17);
        self.v1 ^= self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    #[inline(always)]
    fn compress(&mut self, m: u64) {
        self.v3 ^= m;
        self.round();
        self.round();
        self.v0 ^= m;
    }

    /// Feeds `data` into the hash.
    pub(crate) fn write(&mut self, mut data: &[u8]) {
        self.length = self.length.wrapping_add(data.len() as u64);
        if self.ntail > 0 {
            let take = (8 - self.ntail).min(data.len());
            let (head, rest) = data.split_at(take);
            self.tail[self.ntail..self.ntail + take].copy_from_slice(head);
            self.ntail += take;
            data = rest;
            if self.ntail < 8 {
                return;
            }
            let m = le_u64(&self.tail);
            self.compress(m);
            self.ntail = 0;
        }
        let mut words = data.chunks_exact(8);
        for word in &mut words {
            self.compress(le_u64(word));
        }
        let rest = words.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.ntail = rest.len();
    }

    /// Feeds a `u32` as 4 little-endian bytes.
    pub(crate) fn write_u32(&mut self, v: u32) {
        self.write(&v.to_le_bytes());
    }

    /// Finishes the hash and returns its 64-bit value.
    pub(crate) fn finish(mut self) -> u64 {
        let mut b = (self.length & 0xff) << 56;
        for (i, &byte) in self.tail[..self.ntail].iter().enumerate() {
            b |= u64::from(byte) << (8 * i);
        }
        self.compress(b);
        self.v2 ^= 0xff;
        self.round();
        self.round();
        self.round();
        self.round();
        self.v0 ^ self.v1 ^ self.v2 ^ self.v3
    }
}

/// SipHash-2-4 of `data` under `key`.
pub(crate) fn siphash24(key: &[u8; 16], data: &[u8]) -> u64 {
    let mut h = SipHasher24::new(key);
    h.write(data);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference key of the SipHash paper: bytes 00..0f.
    fn paper_key() -> [u8; 16] {
        core::array::from_fn(|i| i as u8)
    }

    #[test]
    fn paper_vectors() {
        let key = paper_key();
        // Appendix A of the SipHash paper: message 00..0e (15 bytes).
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(&key, &msg), 0xa129_ca61_49be_45e5);
        // vectors.h of the reference implementation: the empty message and 00.
        assert_eq!(siphash24(&key, &[]), 0x726f_db47_dd0e_0e31);
        assert_eq!(siphash24(&key, &[0]), 0x74f8_39c5_93dc_67fd);
        // The 63-byte message 00..3e, the last entry of vectors.h.
        let msg: Vec<u8> = (0..63).collect();
        assert_eq!(siphash24(&key, &msg), 0x958a_324c_eb06_4572);
    }

    /// The frozen keys' outputs on a fixed input. If this fails, the hash drifted: every
    /// Maglev table built by this crate would change. MUST NOT CHANGE.
    #[test]
    fn frozen_keys_golden() {
        assert_eq!(siphash24(&OFFSET_KEY, b"vipmesh"), 0xc1c2_eaff_5b66_b32a);
        assert_eq!(siphash24(&SKIP_KEY, b"vipmesh"), 0x7097_acd8_bc20_f8a4);
    }

    #[allow(deprecated)]
    fn std_siphash(key: &[u8; 16], chunks: &[Vec<u8>]) -> u64 {
        use std::hash::Hasher;
        let mut h = std::hash::SipHasher::new_with_keys(le_u64(&key[..8]), le_u64(&key[8..]));
        for c in chunks {
            h.write(c);
        }
        h.finish()
    }

    proptest! {
        /// Streaming in arbitrary pieces gives the one-shot result, which is std's SipHash-2-4.
        #[test]
        fn matches_std_siphasher(
            key in proptest::array::uniform16(any::<u8>()),
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..8),
        ) {
            let mut h = SipHasher24::new(&key);
            for c in &chunks {
                h.write(c);
            }
            let whole: Vec<u8> = chunks.concat();
            let streamed = h.finish();
            prop_assert_eq!(streamed, siphash24(&key, &whole));
            prop_assert_eq!(streamed, std_siphash(&key, &chunks));
        }
    }
}
