//! Compact summaries of a folder's state for anti-entropy. Paths fall into fixed
//! buckets; a bucket's value is the XOR of its entries' fingerprints, so it updates in
//! O(1) per change and two nodes holding the same entries hold the same buckets.

use super::entry::Entry;
use crate::protocol::relpath::RelPath;

/// Number of buckets. Part of the wire protocol: both sides must agree.
pub const BUCKETS: usize = 1024;

pub fn bucket_of(path: &RelPath) -> usize {
    let h = blake3::hash(path.as_str().as_bytes());
    let b = h.as_bytes();
    (usize::from(b[0]) << 8 | usize::from(b[1])) % BUCKETS
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    buckets: Vec<u64>,
}

impl Default for Digest {
    fn default() -> Self {
        Digest {
            buckets: vec![0; BUCKETS],
        }
    }
}

impl Digest {
    pub fn from_buckets(buckets: Vec<u64>) -> Option<Self> {
        (buckets.len() == BUCKETS).then_some(Digest { buckets })
    }

    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    /// Toggles `entry` in or out of its bucket (XOR is its own inverse).
    pub fn toggle(&mut self, entry: &Entry) {
        self.buckets[bucket_of(&entry.path)] ^= entry.fingerprint();
    }

    /// Indices of buckets that differ.
    pub fn differing(&self, other: &Digest) -> Vec<usize> {
        (0..BUCKETS)
            .filter(|&i| self.buckets[i] != other.buckets[i])
            .collect()
    }

    /// One number for the whole state, for status and `mqsync wait`.
    pub fn root(&self) -> String {
        let mut h = blake3::Hasher::new();
        for b in &self.buckets {
            h.update(&b.to_le_bytes());
        }
        h.finalize().to_hex()[..16].to_string()
    }
}
