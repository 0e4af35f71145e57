//! Backends: a stable key (hashed), a caller-chosen id (stored in the table), and a weight.

use crate::{Error, Permutation, TableSize};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The value a table slot holds: an identifier the caller chooses for each backend.
///
/// The table stores ids, not positions, so that a slot whose backend did not change keeps its
/// value when other backends come and go, and a [`TableDelta`](crate::TableDelta) touches only
/// the slots that really moved. A dataplane typically uses the index of the backend in its
/// backend map. Ids are node-local: they do not influence the table's shape, only its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId(u32);

impl BackendId {
    /// An id with the value `id`.
    pub const fn new(id: u32) -> Self {
        Self(id)
    }

    /// The id's value, as written into the dataplane's table.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl From<u32> for BackendId {
    fn from(id: u32) -> Self {
        Self(id)
    }
}

impl From<BackendId> for u32 {
    fn from(id: BackendId) -> u32 {
        id.0
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The stable identity of a backend, hashed to place it in the table.
///
/// Two nodes that give the same keys (and weights) get the same table. The key must therefore
/// be derived from something every node agrees on, such as the backend's address and port
/// ([`BackendKey::from_socket_addr`]) or a task id ([`BackendKey::new`]). Keys are 1 to
/// [`BackendKey::MAX_LEN`] bytes, compared bytewise.
///
/// # Examples
///
/// ```
/// use std::net::SocketAddr;
/// use vipmesh_maglev::BackendKey;
///
/// let addr: SocketAddr = "10.0.0.7:8080".parse()?;
/// let key = BackendKey::from_socket_addr(addr);
/// assert_eq!(key.as_bytes(), &[4, 10, 0, 0, 7, 0x1f, 0x90]);
/// assert_eq!(key.to_string(), "040a0000071f90");
/// assert!(BackendKey::new(b"task-3f9a".to_vec()).is_ok());
/// assert!(BackendKey::new(Vec::new()).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey(Vec<u8>);

impl BackendKey {
    /// The longest key accepted, in bytes.
    pub const MAX_LEN: usize = 255;

    /// A key made of `bytes`.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyKey`] if `bytes` is empty, [`Error::KeyTooLong`] if it is longer than
    /// [`BackendKey::MAX_LEN`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, Error> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(Error::EmptyKey { max: Self::MAX_LEN });
        }
        if bytes.len() > Self::MAX_LEN {
            return Err(Error::KeyTooLong {
                len: bytes.len(),
                max: Self::MAX_LEN,
            });
        }
        Ok(Self(bytes))
    }

    /// The canonical key of a socket address. MUST NOT CHANGE (it is hashed).
    ///
    /// The encoding is a family byte (`4` or `6`), the address's octets in network order, and
    /// the port in network order: 7 bytes for IPv4, 19 for IPv6. An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`) is encoded as IPv6, unchanged; normalise it first if the two
    /// spellings must mean the same backend. The IPv6 flow info and scope id are not part of
    /// the key.
    pub fn from_socket_addr(addr: SocketAddr) -> Self {
        let mut bytes = Vec::with_capacity(19);
        match addr.ip() {
            IpAddr::V4(ip) => {
                bytes.push(4);
                bytes.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                bytes.push(6);
                bytes.extend_from_slice(&ip.octets());
            }
        }
        bytes.extend_from_slice(&addr.port().to_be_bytes());
        Self(bytes)
    }

    /// This key's preference list in a table of size `size` (the frozen hash at work).
    ///
    /// Two keys with the same `skip` walk the same cycle of slots, which makes their slots
    /// more likely to be swapped when other backends change (probability about
    /// `N² / (2 (M − 1))` for `N` backends); a larger table makes that rarer.
    pub fn permutation(&self, size: TableSize) -> Permutation {
        Permutation::new(size, &self.0)
    }

    /// The key's bytes, exactly as hashed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<SocketAddr> for BackendKey {
    fn from(addr: SocketAddr) -> Self {
        Self::from_socket_addr(addr)
    }
}

impl TryFrom<&[u8]> for BackendKey {
    type Error = Error;
    fn try_from(bytes: &[u8]) -> Result<Self, Error> {
        Self::new(bytes)
    }
}

/// Lowercase hex, two digits per byte.
impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A backend's relative share of the table. `0` means no slot at all.
///
/// Slot counts are proportional to weights: each backend gets its exact share
/// `M · weight / total_weight`, rounded down or up (never off by a whole slot; see
/// [`MaglevTable::build`](crate::MaglevTable::build)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(u32);

impl Weight {
    /// Weight 0: the backend takes no slot (a draining backend, for example).
    pub const ZERO: Weight = Weight(0);
    /// Weight 1, the usual weight when all backends are equal.
    pub const ONE: Weight = Weight(1);

    /// A weight of `w`.
    pub const fn new(w: u32) -> Self {
        Self(w)
    }

    /// The weight as a number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Whether this is weight 0.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl Default for Weight {
    fn default() -> Self {
        Self::ONE
    }
}

impl From<u32> for Weight {
    fn from(w: u32) -> Self {
        Self(w)
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// One backend of a table: its id (the value stored in its slots), its key (what is hashed)
/// and its weight.
///
/// # Examples
///
/// ```
/// use vipmesh_maglev::{Backend, BackendId, BackendKey, Weight};
///
/// let b = Backend::new(BackendId::new(3), BackendKey::new(*b"web-3")?, Weight::new(2));
/// assert_eq!(b.id().get(), 3);
/// assert_eq!(b.weight().get(), 2);
/// # Ok::<(), vipmesh_maglev::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    id: BackendId,
    key: BackendKey,
    weight: Weight,
}

impl Backend {
    /// A backend with id `id`, key `key` and weight `weight`.
    pub fn new(id: BackendId, key: BackendKey, weight: Weight) -> Self {
        Self { id, key, weight }
    }

    /// A backend of weight 1 keyed by its socket address.
    pub fn from_socket_addr(id: BackendId, addr: SocketAddr) -> Self {
        Self::new(id, BackendKey::from_socket_addr(addr), Weight::ONE)
    }

    /// The id stored in this backend's slots.
    pub fn id(&self) -> BackendId {
        self.id
    }

    /// The key hashed to place this backend.
    pub fn key(&self) -> &BackendKey {
        &self.key
    }

    /// The backend's weight.
    pub fn weight(&self) -> Weight {
        self.weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_validation() {
        assert_eq!(BackendKey::new(vec![]), Err(Error::EmptyKey { max: 255 }));
        assert_eq!(
            BackendKey::new(vec![0; 256]),
            Err(Error::KeyTooLong { len: 256, max: 255 })
        );
        assert!(BackendKey::new(vec![0; 255]).is_ok());
        assert!(BackendKey::try_from(&b"x"[..]).is_ok());
    }

    #[test]
    fn socket_addr_encoding_is_frozen() {
        let v4: SocketAddr = "192.0.2.1:80".parse().unwrap();
        assert_eq!(BackendKey::from(v4).as_bytes(), &[4, 192, 0, 2, 1, 0, 80]);
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let mut want = vec![6, 0x20, 0x01, 0x0d, 0xb8];
        want.extend_from_slice(&[0; 11]);
        want.extend_from_slice(&[1, 0x01, 0xbb]);
        assert_eq!(BackendKey::from(v6).as_bytes(), &want[..]);
        assert_eq!(BackendKey::from(v6).to_string().len(), 38);
    }
}
