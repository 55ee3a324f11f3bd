//! The confirmed entries of a folder, ordered by path. Each entry is stored once, keyed
//! by its own path: a map from path to entry held the path twice, 16 bytes per file.

use super::entry::Entry;
use crate::protocol::relpath::RelPath;
use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;

/// An entry ordered and looked up by its path alone.
#[derive(Debug, Clone)]
struct ByPath(Entry);

impl PartialEq for ByPath {
    fn eq(&self, other: &Self) -> bool {
        self.0.path == other.0.path
    }
}
impl Eq for ByPath {}
impl PartialOrd for ByPath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByPath {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.path.cmp(&other.0.path)
    }
}
// Consistent with `Ord` above, as `Borrow` requires: both compare the path only.
impl Borrow<RelPath> for ByPath {
    fn borrow(&self) -> &RelPath {
        &self.0.path
    }
}

#[derive(Debug, Clone, Default)]
pub struct Entries(BTreeSet<ByPath>);

impl FromIterator<Entry> for Entries {
    /// Collected in one go: sorted input builds full B-tree nodes, where inserting one
    /// by one leaves most nodes half empty.
    fn from_iter<I: IntoIterator<Item = Entry>>(iter: I) -> Self {
        Entries(iter.into_iter().map(ByPath).collect())
    }
}

impl Entries {
    pub fn get(&self, path: &RelPath) -> Option<&Entry> {
        self.0.get(path).map(|e| &e.0)
    }

    pub fn contains(&self, path: &RelPath) -> bool {
        self.0.contains(path)
    }

    /// Stores `entry`, replacing the entry of its path.
    pub fn insert(&mut self, entry: Entry) {
        self.0.replace(ByPath(entry));
    }

    pub fn remove(&mut self, path: &RelPath) -> Option<Entry> {
        self.0.take(path).map(|e| e.0)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.0.iter().map(|e| &e.0)
    }

    /// Rebuilds the tree from its own sorted contents. After a burst of inserts in no
    /// particular order (a first scan) most nodes are half empty; rebuilt, they are full.
    pub fn compact(&mut self) {
        self.0 = std::mem::take(&mut self.0).into_iter().collect();
    }

    /// Entries from `path` on, in path order.
    pub fn from_path(&self, path: &RelPath) -> impl Iterator<Item = &Entry> {
        use std::ops::Bound;
        self.0
            .range::<RelPath, _>((Bound::Included(path), Bound::Unbounded))
            .map(|e| &e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Content, VersionVector};

    fn entry(path: &str, changed_ms: u64) -> Entry {
        Entry {
            attrs: None,
            path: RelPath::new(path).expect("path"),
            version: VersionVector::new(),
            modified_by: crate::engine::intern::node_id("n"),
            changed_ms,
            content: Content::Deleted,
        }
    }

    #[test]
    fn one_entry_per_path_replaced_in_place_and_found_by_path() {
        let mut e: Entries = [entry("b", 1), entry("a", 1), entry("c/d", 1)]
            .into_iter()
            .collect();
        e.insert(entry("b", 2));
        let paths: Vec<_> = e.iter().map(|x| (x.path.as_str(), x.changed_ms)).collect();
        assert_eq!(paths, [("a", 1), ("b", 2), ("c/d", 1)]);
        let b = RelPath::new("b").expect("path");
        assert_eq!(e.get(&b).map(|x| x.changed_ms), Some(2));
        let from: Vec<_> = e.from_path(&b).map(|x| x.path.as_str()).collect();
        assert_eq!(from, ["b", "c/d"]);
        assert_eq!(e.remove(&b).map(|x| x.changed_ms), Some(2));
        assert!(!e.contains(&b));
        assert_eq!(e.iter().count(), 2);
        e.compact();
        let paths: Vec<_> = e.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(paths, ["a", "c/d"]);
    }
}
