//! Version vectors: one counter per node that changed a file. Comparing two vectors
//! tells whether one version descends from the other or whether they are concurrent
//! (written without knowledge of each other), which is what conflict detection needs.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How two versions relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    Equal,
    /// The left side descends from the right: it is newer.
    Greater,
    /// The right side descends from the left: the left is older.
    Less,
    /// Neither saw the other: a conflict unless the contents agree.
    Concurrent,
}

/// Counter per node id. Absent nodes count as zero.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<String, u64>);

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, node: &str) -> u64 {
        self.0.get(node).copied().unwrap_or(0)
    }

    /// Records a new local change by `node`. The counter jumps past every counter in the
    /// vector so that a node whose index was lost can never reuse an old number.
    pub fn incremented(&self, node: &str) -> Self {
        let mut v = self.clone();
        let next = self
            .0
            .values()
            .copied()
            .max()
            .unwrap_or(0)
            .max(self.get(node))
            // The wire refuses counters near the top (`wire::MAX_VERSION_COUNTER`);
            // saturating keeps an index written before that check from panicking.
            .saturating_add(1);
        v.0.insert(node.to_string(), next);
        v
    }

    /// The least vector that descends from both.
    pub fn merged(&self, other: &Self) -> Self {
        let mut v = self.clone();
        for (k, &c) in &other.0 {
            let e = v.0.entry(k.clone()).or_insert(0);
            *e = (*e).max(c);
        }
        v
    }

    pub fn compare(&self, other: &Self) -> Causality {
        let mut greater = false;
        let mut less = false;
        for k in self.0.keys().chain(other.0.keys()) {
            let (a, b) = (self.get(k), other.get(k));
            greater |= a > b;
            less |= a < b;
        }
        match (greater, less) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Greater,
            (false, true) => Causality::Less,
            (true, true) => Causality::Concurrent,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.values().all(|&c| c == 0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, &v)| (k.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(pairs: &[(&str, u64)]) -> VersionVector {
        VersionVector(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    #[test]
    fn compare_table() {
        use Causality::*;
        let cases = [
            (vv(&[]), vv(&[]), Equal),
            (vv(&[("a", 1)]), vv(&[]), Greater),
            (vv(&[]), vv(&[("a", 1)]), Less),
            (vv(&[("a", 2)]), vv(&[("a", 1)]), Greater),
            (vv(&[("a", 1), ("b", 1)]), vv(&[("a", 1)]), Greater),
            (vv(&[("a", 1)]), vv(&[("b", 1)]), Concurrent),
            (
                vv(&[("a", 2), ("b", 1)]),
                vv(&[("a", 1), ("b", 2)]),
                Concurrent,
            ),
            (vv(&[("a", 0)]), vv(&[]), Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(a.compare(&b), want, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn increment_and_merge() {
        let a = vv(&[("a", 3), ("b", 7)]);
        let b = a.incremented("a");
        assert_eq!(b.get("a"), 8);
        assert_eq!(b.compare(&a), Causality::Greater);
        let c = a.incremented("c");
        assert_eq!(b.compare(&c), Causality::Concurrent);
        let m = b.merged(&c);
        assert_eq!(m.compare(&b), Causality::Greater);
        assert_eq!(m.compare(&c), Causality::Greater);
    }
}
