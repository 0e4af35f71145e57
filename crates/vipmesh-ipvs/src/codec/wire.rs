//! Netlink and generic-netlink framing: headers, attributes (TLVs), a bounds-checked
//! reader and a bounds-checked writer into a sized buffer.
//!
//! Every length read from the wire is checked before it is used in arithmetic or
//! slicing; every error carries the byte offset (from the start of the buffer handed to
//! the outermost parser) where the problem was found.
//!
//! See [netlink(7)](https://man7.org/linux/man-pages/man7/netlink.7.html) and
//! `include/uapi/linux/netlink.h`, `include/uapi/linux/genetlink.h`.

use std::fmt;

/// Size of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Size of `struct genlmsghdr`.
pub const GENL_HDRLEN: usize = 4;
/// Size of `struct nlattr`.
pub const NLA_HDRLEN: usize = 4;
/// `NLA_F_NESTED`.
pub const NLA_F_NESTED: u16 = 0x8000;
/// `NLA_F_NET_BYTEORDER`.
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
/// Mask of the attribute type without the two flag bits.
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// `NLMSG_NOOP`.
pub const NLMSG_NOOP: u16 = 1;
/// `NLMSG_ERROR`.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`.
pub const NLMSG_DONE: u16 = 3;
/// `GENL_ID_CTRL`: the generic netlink controller's family id.
pub const GENL_ID_CTRL: u16 = 0x10;

/// `NLM_F_REQUEST`.
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_MULTI`.
pub const NLM_F_MULTI: u16 = 0x2;
/// `NLM_F_ACK`.
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`).
pub const NLM_F_DUMP: u16 = 0x300;

/// Round up to the 4-byte netlink alignment. Saturates instead of overflowing.
pub const fn align4(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// A decode failure, with the byte offset where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Byte offset from the start of the outermost buffer.
    pub offset: usize,
    /// What was wrong.
    pub kind: DecodeErrorKind,
}

/// What a [`DecodeError`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// Fewer bytes than a header or a length field needs.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// A length field smaller than its own header.
    BadLength {
        /// The length read from the wire.
        len: usize,
    },
    /// An attribute whose payload has the wrong size for its type.
    BadAttrSize {
        /// The attribute's type (without flags).
        kind: u16,
        /// Where it was found ("service", "dest", "stats", ...).
        context: &'static str,
        /// Size found.
        len: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DecodeErrorKind::Truncated { needed, available } => write!(
                f,
                "truncated netlink data at offset {}: need {needed} bytes, have {available}",
                self.offset
            ),
            DecodeErrorKind::BadLength { len } => {
                write!(f, "bad netlink length {len} at offset {}", self.offset)
            }
            DecodeErrorKind::BadAttrSize { kind, context, len } => write!(
                f,
                "{context} attribute {kind} has a {len}-byte payload of the wrong size, at offset {}",
                self.offset
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// An encode failure: the buffer was smaller than [`Emit::buffer_len`], or a length does
/// not fit its 16-bit field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// The destination buffer is too small.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// A nested attribute or message is longer than its length field can hold.
    TooLong {
        /// The length.
        len: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall { needed, available } => {
                write!(f, "buffer too small: need {needed} bytes, have {available}")
            }
            EncodeError::TooLong { len } => {
                write!(f, "length {len} does not fit its netlink length field")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// A value that can be written into a buffer of exactly [`Emit::buffer_len`] bytes.
///
/// This is the "emit into a sized buffer" half of the codec; [`Writer`] does the bounds
/// checks, so an emitter never panics.
pub trait Emit {
    /// The exact number of bytes [`Emit::emit`] writes (including padding).
    fn buffer_len(&self) -> usize;
    /// Writes the value at the writer's position.
    ///
    /// # Errors
    /// [`EncodeError`] if the buffer is too small or a length overflows its field.
    fn emit(&self, w: &mut Writer<'_>) -> Result<(), EncodeError>;

    /// Emits into `buf`, which must hold at least [`Emit::buffer_len`] bytes; returns the
    /// number of bytes written.
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] if `buf` is shorter than `buffer_len()`.
    fn emit_into(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        self.emit(&mut w)?;
        Ok(w.pos())
    }

    /// Emits into a new vector of exactly [`Emit::buffer_len`] bytes.
    ///
    /// # Errors
    /// [`EncodeError::TooLong`] if a length does not fit its field.
    fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut v = vec![0u8; self.buffer_len()];
        let n = self.emit_into(&mut v)?;
        v.truncate(n);
        Ok(v)
    }
}

/// A bounds-checked cursor over a mutable buffer.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// A writer at the start of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Writes `bytes`.
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] if they do not fit.
    pub fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let end = self
            .pos
            .checked_add(bytes.len())
            .ok_or(EncodeError::TooLong { len: bytes.len() })?;
        let available = self.buf.len();
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(EncodeError::BufferTooSmall {
                needed: end,
                available,
            })?;
        dst.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    /// Writes zero bytes up to the next 4-byte boundary.
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] if they do not fit.
    pub fn pad(&mut self) -> Result<(), EncodeError> {
        let n = align4(self.pos) - self.pos;
        self.put(&[0u8; 3][..n.min(3)])
    }

    /// Overwrites 2 bytes at `at` (for back-patching a length).
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] if `at` is out of range.
    pub fn patch_u16(&mut self, at: usize, v: u16) -> Result<(), EncodeError> {
        let available = self.buf.len();
        let dst =
            self.buf
                .get_mut(at..at.saturating_add(2))
                .ok_or(EncodeError::BufferTooSmall {
                    needed: at.saturating_add(2),
                    available,
                })?;
        dst.copy_from_slice(&v.to_ne_bytes());
        Ok(())
    }

    /// Overwrites 4 bytes at `at` (for back-patching a length).
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] if `at` is out of range.
    pub fn patch_u32(&mut self, at: usize, v: u32) -> Result<(), EncodeError> {
        let available = self.buf.len();
        let dst =
            self.buf
                .get_mut(at..at.saturating_add(4))
                .ok_or(EncodeError::BufferTooSmall {
                    needed: at.saturating_add(4),
                    available,
                })?;
        dst.copy_from_slice(&v.to_ne_bytes());
        Ok(())
    }

    /// Writes one attribute header and payload, then padding.
    ///
    /// # Errors
    /// See [`Writer::put`]; [`EncodeError::TooLong`] if the payload exceeds 65531 bytes.
    pub fn attr(&mut self, kind: u16, payload: &[u8]) -> Result<(), EncodeError> {
        let len = NLA_HDRLEN + payload.len();
        let len16 = u16::try_from(len).map_err(|source| {
            tracing::trace!(%source, len, "attribute too long");
            EncodeError::TooLong { len }
        })?;
        self.put(&len16.to_ne_bytes())?;
        self.put(&kind.to_ne_bytes())?;
        self.put(payload)?;
        self.pad()
    }

    /// Writes a nested attribute: header, then whatever `body` writes, then back-patches
    /// the length.
    ///
    /// # Errors
    /// See [`Writer::attr`].
    pub fn nested(
        &mut self,
        kind: u16,
        body: impl FnOnce(&mut Writer<'a>) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        let start = self.pos;
        self.put(&[0u8; 2])?;
        self.put(&kind.to_ne_bytes())?;
        body(self)?;
        let len = self.pos - start;
        let len16 = u16::try_from(len).map_err(|source| {
            tracing::trace!(%source, len, "nested attribute too long");
            EncodeError::TooLong { len }
        })?;
        self.patch_u16(start, len16)?;
        self.pad()
    }
}

/// The size of one attribute with a payload of `payload` bytes, padding included.
pub const fn attr_len(payload: usize) -> usize {
    align4(NLA_HDRLEN + payload)
}

/// One raw attribute found by [`attrs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttr<'a> {
    /// Attribute type including the `NLA_F_*` flag bits, as on the wire.
    pub kind: u16,
    /// Payload without header or padding.
    pub payload: &'a [u8],
    /// Offset of the payload from the start of the outermost buffer.
    pub offset: usize,
}

impl RawAttr<'_> {
    /// The type without flag bits.
    pub fn kind(&self) -> u16 {
        self.kind & NLA_TYPE_MASK
    }

    fn size_err(&self, context: &'static str) -> DecodeError {
        DecodeError {
            offset: self.offset,
            kind: DecodeErrorKind::BadAttrSize {
                kind: self.kind(),
                context,
                len: self.payload.len(),
            },
        }
    }

    /// Payload as a native-endian u8.
    ///
    /// # Errors
    /// [`DecodeErrorKind::BadAttrSize`] unless the payload is exactly 1 byte.
    pub fn u8(&self, context: &'static str) -> Result<u8, DecodeError> {
        let b: [u8; 1] = self
            .payload
            .try_into()
            .map_err(|_e: std::array::TryFromSliceError| self.size_err(context))?;
        Ok(b[0])
    }

    /// Payload as a native-endian u16.
    ///
    /// # Errors
    /// [`DecodeErrorKind::BadAttrSize`] unless the payload is exactly 2 bytes.
    pub fn u16(&self, context: &'static str) -> Result<u16, DecodeError> {
        let b: [u8; 2] = self
            .payload
            .try_into()
            .map_err(|_e: std::array::TryFromSliceError| self.size_err(context))?;
        Ok(u16::from_ne_bytes(b))
    }

    /// Payload as a big-endian (network order) u16.
    ///
    /// # Errors
    /// [`DecodeErrorKind::BadAttrSize`] unless the payload is exactly 2 bytes.
    pub fn be16(&self, context: &'static str) -> Result<u16, DecodeError> {
        let b: [u8; 2] = self
            .payload
            .try_into()
            .map_err(|_e: std::array::TryFromSliceError| self.size_err(context))?;
        Ok(u16::from_be_bytes(b))
    }

    /// Payload as a native-endian u32.
    ///
    /// # Errors
    /// [`DecodeErrorKind::BadAttrSize`] unless the payload is exactly 4 bytes.
    pub fn u32(&self, context: &'static str) -> Result<u32, DecodeError> {
        let b: [u8; 4] = self
            .payload
            .try_into()
            .map_err(|_e: std::array::TryFromSliceError| self.size_err(context))?;
        Ok(u32::from_ne_bytes(b))
    }

    /// Payload as exactly `N` bytes.
    ///
    /// # Errors
    /// [`DecodeErrorKind::BadAttrSize`] unless the payload is exactly `N` bytes.
    pub fn array<const N: usize>(&self, context: &'static str) -> Result<[u8; N], DecodeError> {
        self.payload
            .try_into()
            .map_err(|_e: std::array::TryFromSliceError| self.size_err(context))
    }

    /// Iterates the attributes nested in this one.
    pub fn nested(&self) -> Attrs<'_> {
        attrs(self.payload, self.offset)
    }
}

/// Iterates the attributes in `buf`; `base` is `buf`'s offset in the outermost buffer.
pub fn attrs(buf: &[u8], base: usize) -> Attrs<'_> {
    Attrs {
        buf,
        pos: 0,
        base,
        failed: false,
    }
}

/// Iterator over attributes; yields an error (once, then stops) on malformed data.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
    failed: bool,
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<RawAttr<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let offset = self.base.saturating_add(self.pos);
        let fail = |kind| Some(Err(DecodeError { offset, kind }));
        let Some(hdr) = rest.get(..NLA_HDRLEN) else {
            self.failed = true;
            return fail(DecodeErrorKind::Truncated {
                needed: NLA_HDRLEN,
                available: rest.len(),
            });
        };
        let len = usize::from(u16::from_ne_bytes([hdr[0], hdr[1]]));
        let kind = u16::from_ne_bytes([hdr[2], hdr[3]]);
        if len < NLA_HDRLEN {
            self.failed = true;
            return fail(DecodeErrorKind::BadLength { len });
        }
        let Some(payload) = rest.get(NLA_HDRLEN..len) else {
            self.failed = true;
            return fail(DecodeErrorKind::Truncated {
                needed: len,
                available: rest.len(),
            });
        };
        // The last attribute may omit its padding.
        self.pos = self.pos.saturating_add(align4(len)).min(self.buf.len());
        Some(Ok(RawAttr {
            kind,
            payload,
            offset: offset.saturating_add(NLA_HDRLEN),
        }))
    }
}

/// `struct nlmsghdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NlHeader {
    /// `nlmsg_len`: the whole message length including this header.
    pub len: u32,
    /// `nlmsg_type`: a family id, or `NLMSG_ERROR`/`NLMSG_DONE`.
    pub kind: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// `nlmsg_pid`: the port id.
    pub pid: u32,
}

impl NlHeader {
    /// Parses the 16-byte header at the start of `buf`.
    ///
    /// # Errors
    /// [`DecodeErrorKind::Truncated`] if fewer than 16 bytes.
    pub fn parse(buf: &[u8], base: usize) -> Result<Self, DecodeError> {
        let h: [u8; NLMSG_HDRLEN] = buf
            .get(..NLMSG_HDRLEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError {
                offset: base,
                kind: DecodeErrorKind::Truncated {
                    needed: NLMSG_HDRLEN,
                    available: buf.len(),
                },
            })?;
        Ok(NlHeader {
            len: u32::from_ne_bytes([h[0], h[1], h[2], h[3]]),
            kind: u16::from_ne_bytes([h[4], h[5]]),
            flags: u16::from_ne_bytes([h[6], h[7]]),
            seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            pid: u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
        })
    }

    /// Writes the header with `len` as its length.
    ///
    /// # Errors
    /// See [`Writer::put`].
    pub fn emit_with_len(&self, w: &mut Writer<'_>, len: u32) -> Result<(), EncodeError> {
        w.put(&len.to_ne_bytes())?;
        w.put(&self.kind.to_ne_bytes())?;
        w.put(&self.flags.to_ne_bytes())?;
        w.put(&self.seq.to_ne_bytes())?;
        w.put(&self.pid.to_ne_bytes())
    }
}

/// Splits a buffer of back-to-back netlink messages (one `recv`) into `(header, payload,
/// payload offset)`, checking every length.
pub fn messages(buf: &[u8]) -> Messages<'_> {
    Messages {
        buf,
        pos: 0,
        failed: false,
    }
}

/// Iterator returned by [`messages`].
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<(NlHeader, &'a [u8], usize), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let offset = self.pos;
        let hdr = match NlHeader::parse(rest, offset) {
            Ok(h) => h,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        let len = usize::try_from(hdr.len).unwrap_or(usize::MAX);
        if len < NLMSG_HDRLEN {
            self.failed = true;
            return Some(Err(DecodeError {
                offset,
                kind: DecodeErrorKind::BadLength { len },
            }));
        }
        let Some(payload) = rest.get(NLMSG_HDRLEN..len) else {
            self.failed = true;
            return Some(Err(DecodeError {
                offset,
                kind: DecodeErrorKind::Truncated {
                    needed: len,
                    available: rest.len(),
                },
            }));
        };
        self.pos = self.pos.saturating_add(align4(len)).min(self.buf.len());
        Some(Ok((hdr, payload, offset.saturating_add(NLMSG_HDRLEN))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_reject_short_and_overlong_lengths() {
        // len 2 < header
        let e = attrs(&[2, 0, 1, 0], 10).next().and_then(Result::err);
        assert_eq!(
            e,
            Some(DecodeError {
                offset: 10,
                kind: DecodeErrorKind::BadLength { len: 2 }
            })
        );
        // len 12 but only 8 bytes
        let e = attrs(&[12, 0, 1, 0, 1, 2, 3, 4], 0)
            .next()
            .and_then(Result::err);
        assert_eq!(
            e,
            Some(DecodeError {
                offset: 0,
                kind: DecodeErrorKind::Truncated {
                    needed: 12,
                    available: 8
                }
            })
        );
        // 3 stray bytes
        let e = attrs(&[8, 0, 1, 0, 1, 2, 3, 4, 9, 9, 9], 0)
            .nth(1)
            .and_then(Result::err);
        assert_eq!(
            e,
            Some(DecodeError {
                offset: 8,
                kind: DecodeErrorKind::Truncated {
                    needed: 4,
                    available: 3
                }
            })
        );
    }

    #[test]
    fn writer_never_overruns() {
        let mut buf = [0u8; 6];
        let mut w = Writer::new(&mut buf);
        assert!(w.attr(1, &[1, 2, 3, 4]).is_err());
        let mut w = Writer::new(&mut buf);
        assert_eq!(
            w.attr(1, &[1]),
            Err(EncodeError::BufferTooSmall {
                needed: 8,
                available: 6
            })
        );
    }

    #[test]
    fn messages_check_lengths() {
        let mut m = vec![0u8; 20];
        m[0] = 40; // claims 40 bytes
        let e = messages(&m).next().and_then(Result::err);
        assert_eq!(
            e,
            Some(DecodeError {
                offset: 0,
                kind: DecodeErrorKind::Truncated {
                    needed: 40,
                    available: 20
                }
            })
        );
        m[0] = 3;
        let e = messages(&m).next().and_then(Result::err);
        assert_eq!(
            e,
            Some(DecodeError {
                offset: 0,
                kind: DecodeErrorKind::BadLength { len: 3 }
            })
        );
    }
}
