//! A shared immutable string one pointer wide: the length lives in the allocation, so
//! a handle costs 8 bytes instead of an `Arc<str>`'s 16. Paths and node ids are held
//! millions of times over in a large folder's maps.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use triomphe::ThinArc;

/// A reference-counted string behind a thin pointer.
#[derive(Clone)]
pub struct SharedStr(ThinArc<(), u8>);

impl SharedStr {
    pub fn new(s: &str) -> Self {
        SharedStr(ThinArc::from_header_and_slice((), s.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: the bytes were copied from a `&str` in `new` and are never mutated.
        unsafe { std::str::from_utf8_unchecked(&self.0.slice) }
    }
}

// Byte order is `str` order, so these agree with comparing the strings.
impl PartialEq for SharedStr {
    fn eq(&self, other: &Self) -> bool {
        self.0.slice == other.0.slice
    }
}
impl Eq for SharedStr {}
impl PartialOrd for SharedStr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SharedStr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.slice.cmp(&other.0.slice)
    }
}
impl std::hash::Hash for SharedStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

// Consistent with `Eq`, `Ord` and `Hash` above, as `Borrow` requires.
impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        SharedStr::new(s)
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pointer_wide_and_ordered_as_str() {
        assert_eq!(std::mem::size_of::<SharedStr>(), 8);
        let mut v: Vec<SharedStr> = ["b", "a/b", "a", "ä", ""].map(SharedStr::new).to_vec();
        v.sort();
        let got: Vec<&str> = v.iter().map(|s| s.as_str()).collect();
        assert_eq!(got, ["", "a", "a/b", "b", "ä"]);
        let set: std::collections::HashSet<SharedStr> = v.into_iter().collect();
        assert!(set.contains("a/b"));
    }
}
