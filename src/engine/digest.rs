//! Compact summaries of a folder's state for anti-entropy. Paths fall into a fixed tree
//! of regions (32 groups of 32 buckets of 64 leaves); a region's value is the XOR of its
//! entries' fingerprints and its count the number of entries, so both update in O(1)
//! per change and two nodes holding the same entries hold the same values everywhere.

use super::entry::Entry;
use crate::protocol::relpath::RelPath;

/// Regions per level below the root; part of the wire protocol: both sides must agree.
pub const GROUPS: usize = 32;
/// Buckets: the level the version-1 `Digest` message carries whole.
pub const BUCKETS: usize = 1024;
/// Leaves: the finest level, 64 per bucket.
pub const LEAVES: usize = 65536;
/// The deepest level (0 is the whole folder, 1 groups, 2 buckets, 3 leaves).
pub const LEAF_LEVEL: u8 = 3;

/// The leaf a path falls in. Its bucket is the same one the version-1 digest used.
pub fn leaf_of(path: &RelPath) -> usize {
    let h = blake3::hash(path.as_str().as_bytes());
    let b = h.as_bytes();
    let bucket = (usize::from(b[0]) << 8 | usize::from(b[1])) % BUCKETS;
    bucket << 6 | usize::from(b[2] & 63)
}

pub fn bucket_of(path: &RelPath) -> usize {
    leaf_of(path) >> 6
}

/// Regions at `level`.
pub fn regions(level: u8) -> usize {
    match level {
        0 => 1,
        1 => GROUPS,
        2 => BUCKETS,
        _ => LEAVES,
    }
}

/// Children of one region at `level` (none for a leaf).
pub fn fanout(level: u8) -> usize {
    match level {
        0 => GROUPS,
        1 => BUCKETS / GROUPS,
        2 => LEAVES / BUCKETS,
        _ => 0,
    }
}

/// The region at `level` holding `leaf`.
pub fn region_of_leaf(leaf: usize, level: u8) -> usize {
    match level {
        0 => 0,
        1 => leaf >> 11,
        2 => leaf >> 6,
        _ => leaf,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// Values and counts by level: `values[l][i]` for region `i` at level `l`.
    values: [Vec<u64>; 4],
    counts: [Vec<u32>; 4],
}

impl Default for Digest {
    fn default() -> Self {
        Digest {
            values: [0, 1, 2, 3].map(|l| vec![0; regions(l)]),
            counts: [0, 1, 2, 3].map(|l| vec![0; regions(l)]),
        }
    }
}

impl Digest {
    /// The buckets of a version-1 digest, to compare with ours; `None` if the count
    /// is wrong.
    pub fn check_buckets(buckets: &[u64]) -> Option<&[u64]> {
        (buckets.len() == BUCKETS).then_some(buckets)
    }

    pub fn buckets(&self) -> &[u64] {
        &self.values[2]
    }

    /// The root's children: what a `Summary` carries.
    pub fn groups(&self) -> &[u64] {
        &self.values[1]
    }

    pub fn value(&self, level: u8, index: usize) -> u64 {
        self.values[usize::from(level.min(LEAF_LEVEL))]
            .get(index)
            .copied()
            .unwrap_or(0)
    }

    pub fn count(&self, level: u8, index: usize) -> u32 {
        self.counts[usize::from(level.min(LEAF_LEVEL))]
            .get(index)
            .copied()
            .unwrap_or(0)
    }

    /// The values of region `index`'s children (empty for a leaf or a bad index).
    pub fn children(&self, level: u8, index: usize) -> &[u64] {
        let n = fanout(level);
        if n == 0 || index >= regions(level) {
            return &[];
        }
        &self.values[usize::from(level) + 1][index * n..(index + 1) * n]
    }

    /// Adds `entry` to its regions.
    pub fn add(&mut self, entry: &Entry) {
        self.toggle(entry, true);
    }

    /// Takes `entry` out of its regions (it must have been added).
    pub fn remove(&mut self, entry: &Entry) {
        self.toggle(entry, false);
    }

    fn toggle(&mut self, entry: &Entry, added: bool) {
        let leaf = leaf_of(&entry.path);
        let f = entry.fingerprint();
        for level in 0..=LEAF_LEVEL {
            let i = region_of_leaf(leaf, level);
            let l = usize::from(level);
            self.values[l][i] ^= f;
            let c = &mut self.counts[l][i];
            *c = if added {
                c.saturating_add(1)
            } else {
                c.saturating_sub(1)
            };
        }
    }

    /// Indices of buckets that differ from a version-1 digest's.
    pub fn differing(&self, buckets: &[u64]) -> Vec<usize> {
        (0..BUCKETS)
            .filter(|&i| buckets.get(i) != Some(&self.values[2][i]))
            .collect()
    }

    /// One number for the whole state, for status and `mqsync wait`.
    pub fn root(&self) -> String {
        let mut h = blake3::Hasher::new();
        for b in self.buckets() {
            h.update(&b.to_le_bytes());
        }
        h.finalize().to_hex()[..16].to_string()
    }
}
