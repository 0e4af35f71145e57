//! The validated table size `M`.

use crate::Error;
use std::fmt;

/// The size `M` of a Maglev lookup table: a prime in [`TableSize::MIN`]`..=`[`TableSize::MAX`].
///
/// A built value is always valid (parse, don't validate). Sizes and what they buy:
///
/// - `M` must be prime, so that every backend's permutation visits every slot.
/// - `M` must be at least the number of backends with a non-zero weight, `N`; a smaller `M` is
///   rejected with [`Error::TableTooSmall`] when the table is built.
/// - The **1 % balance guarantee** (every backend's slot count within 1 % of its fair share)
///   needs `M > 100 · N` (see [`TableSize::is_balanced_for`]). Between `N` and `100 · N` the
///   table is still built and still exact to within one slot per backend, which is then more
///   than 1 % of a share.
/// - Larger `M` also lowers the disruption when backends change, at the cost of memory
///   (`4 · M` bytes in the dataplane) and build time (linear in `M`).
///
/// # Examples
///
/// ```
/// use vipmesh_maglev::{Error, TableSize};
///
/// assert_eq!(TableSize::DEFAULT.get(), 65537);
/// assert_eq!(TableSize::new(251)?.get(), 251);
/// assert!(matches!(TableSize::new(65536), Err(Error::TableSizeNotPrime { value: 65536 })));
/// assert!(TableSize::DEFAULT.is_balanced_for(655));
/// assert!(!TableSize::DEFAULT.is_balanced_for(656));
/// assert_eq!(TableSize::balanced_for(1000)?.get(), 100_003);
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableSize(u32);

impl TableSize {
    /// The default size, 65537 (as Katran and Cilium use): balanced for up to 655 backends.
    pub const DEFAULT: TableSize = TableSize(65537);
    /// The smallest size accepted, 2 (the smallest prime).
    pub const MIN: u32 = 2;
    /// The largest size accepted, 16 777 213 (the largest prime below 2^24; 64 MiB of `u32`).
    pub const MAX: u32 = 16_777_213;

    /// Validates `value` as a table size.
    ///
    /// # Errors
    ///
    /// [`Error::TableSizeOutOfRange`] if `value` exceeds [`TableSize::MAX`], and
    /// [`Error::TableSizeNotPrime`] if it is not prime (which includes 0 and 1).
    pub fn new(value: u32) -> Result<Self, Error> {
        if value > Self::MAX {
            return Err(Error::TableSizeOutOfRange {
                value: u64::from(value),
                min: Self::MIN,
                max: Self::MAX,
            });
        }
        if !is_prime(value) {
            return Err(Error::TableSizeNotPrime {
                value: u64::from(value),
            });
        }
        Ok(Self(value))
    }

    /// The smallest prime size that is at least [`TableSize::DEFAULT`] and balanced for `n`
    /// backends (`M > 100 · n`).
    ///
    /// # Errors
    ///
    /// [`Error::TableSizeOutOfRange`] if that size would exceed [`TableSize::MAX`].
    pub fn balanced_for(n: usize) -> Result<Self, Error> {
        let want = (n as u64).saturating_mul(100).saturating_add(1);
        if want <= u64::from(Self::DEFAULT.0) {
            return Ok(Self::DEFAULT);
        }
        let mut candidate = want;
        while candidate <= u64::from(Self::MAX) {
            // `candidate <= MAX < 2^32`, so the conversion is lossless.
            if is_prime(candidate as u32) {
                return Ok(Self(candidate as u32));
            }
            candidate += 1;
        }
        Err(Error::TableSizeOutOfRange {
            value: want,
            min: Self::MIN,
            max: Self::MAX,
        })
    }

    /// A size already known to be valid (taken from another `TableSize`).
    pub(crate) const fn new_unchecked(value: u32) -> Self {
        Self(value)
    }

    /// The size as a number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Whether the 1 % balance guarantee holds for `n` backends of equal weight: `M > 100 · n`.
    pub const fn is_balanced_for(self, n: usize) -> bool {
        (self.0 as u64) > (n as u64).saturating_mul(100)
    }
}

impl Default for TableSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl TryFrom<u32> for TableSize {
    type Error = Error;
    fn try_from(value: u32) -> Result<Self, Error> {
        Self::new(value)
    }
}

impl TryFrom<u64> for TableSize {
    type Error = Error;
    fn try_from(value: u64) -> Result<Self, Error> {
        match u32::try_from(value) {
            Ok(v) => Self::new(v),
            Err(_) => Err(Error::TableSizeOutOfRange {
                value,
                min: Self::MIN,
                max: Self::MAX,
            }),
        }
    }
}

impl From<TableSize> for u32 {
    fn from(size: TableSize) -> u32 {
        size.0
    }
}

impl fmt::Display for TableSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Deterministic primality by trial division (at most ~2 000 divisions below `MAX`).
fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 5u64;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive_prime(n: u32) -> bool {
        n >= 2
            && (2..n)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    }

    #[test]
    fn known_sizes() {
        for p in [
            2,
            3,
            5,
            251,
            509,
            1021,
            4093,
            16381,
            65521,
            65537,
            131071,
            TableSize::MAX,
        ] {
            assert_eq!(TableSize::new(p).map(TableSize::get), Ok(p), "{p}");
        }
        for n in [0, 1, 4, 9, 25, 65536, 65535, 1_000_000, 16_777_211] {
            assert_eq!(
                TableSize::new(n),
                Err(Error::TableSizeNotPrime {
                    value: u64::from(n)
                })
            );
        }
        assert_eq!(
            TableSize::new(TableSize::MAX + 2),
            Err(Error::TableSizeOutOfRange {
                value: u64::from(TableSize::MAX + 2),
                min: 2,
                max: TableSize::MAX
            })
        );
        assert!(matches!(
            TableSize::try_from(u64::MAX),
            Err(Error::TableSizeOutOfRange {
                value: u64::MAX,
                ..
            })
        ));
        assert_eq!(TableSize::default(), TableSize::DEFAULT);
        assert_eq!(TableSize::new(65537), Ok(TableSize::DEFAULT));
    }

    #[test]
    fn error_names_field_and_value() {
        let e = TableSize::new(1000).unwrap_err().to_string();
        assert!(e.contains("table_size") && e.contains("1000"), "{e}");
    }

    #[test]
    fn balanced_for() {
        assert_eq!(TableSize::balanced_for(0), Ok(TableSize::DEFAULT));
        assert_eq!(TableSize::balanced_for(655), Ok(TableSize::DEFAULT));
        let s = TableSize::balanced_for(656).unwrap();
        assert!(s.is_balanced_for(656) && s.get() == 65609, "{s}");
        assert!(TableSize::balanced_for(usize::MAX).is_err());
        assert!(TableSize::balanced_for(167_772).is_ok());
        assert!(TableSize::balanced_for(167_773).is_err());
    }

    proptest! {
        #[test]
        fn primality_matches_naive(n in 0u32..200_000) {
            prop_assert_eq!(is_prime(n), naive_prime(n));
            prop_assert_eq!(TableSize::new(n).is_ok(), naive_prime(n));
        }

        #[test]
        fn never_panics(n in any::<u64>()) {
            let _ = TableSize::try_from(n);
            let _ = TableSize::balanced_for(n as usize);
        }
    }
}
