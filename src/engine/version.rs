//! Version vectors: one counter per node that changed a file. Comparing two vectors
//! tells whether one version descends from the other or whether they are concurrent
//! (written without knowledge of each other), which is what conflict detection needs.

use super::intern::{NodeId, node_id};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;
use std::fmt;

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

/// Counter per node id, sorted by node id. Absent nodes count as zero.
///
/// A sorted vector rather than a `BTreeMap`: most files carry one or two counters, and
/// a map's first leaf costs about 370 bytes per file, the largest single item of a
/// node's memory with a million files. The one counter of a file only ever changed on
/// one node is held inline: a heap block of its own cost 32 to 112 bytes per file. It
/// serialises as the map did (a postcard map is a length and its pairs), so the index,
/// the wire and the digests are unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct VersionVector(Counters);

type Counters = SmallVec<[(NodeId, u64); 1]>;

impl Serialize for VersionVector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k.as_ref(), v)))
    }
}

impl<'de> Deserialize<'de> for VersionVector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = VersionVector;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of node ids to counters")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut pairs = Counters::with_capacity(m.size_hint().unwrap_or(0).min(64));
                while let Some((k, v)) =
                    m.next_entry_seed(NodeIdSeed, std::marker::PhantomData::<u64>)?
                {
                    pairs.push((k, v));
                }
                // Sorted by node id; a repeated id keeps its last counter, as the map
                // this replaced did.
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
                let mut out = Counters::with_capacity(pairs.len());
                for p in pairs {
                    match out.last_mut() {
                        Some(last) if last.0 == p.0 => *last = p,
                        _ => out.push(p),
                    }
                }
                Ok(VersionVector(out))
            }
        }
        d.deserialize_map(V)
    }
}

struct NodeIdSeed;

impl<'de> serde::de::DeserializeSeed<'de> for NodeIdSeed {
    type Value = NodeId;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<NodeId, D::Error> {
        d.deserialize_str(super::intern::NodeIdVisitor)
    }
}

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    fn position(&self, node: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_ref().cmp(node))
    }

    pub fn get(&self, node: &str) -> u64 {
        self.position(node).map_or(0, |i| self.0[i].1)
    }

    fn set(&mut self, node: &str, counter: u64) {
        match self.position(node) {
            Ok(i) => self.0[i].1 = counter,
            Err(i) => self.0.insert(i, (node_id(node), counter)),
        }
    }

    /// Records a new local change by `node`. The counter jumps past every counter in the
    /// vector so that a node whose index was lost can never reuse an old number.
    pub fn incremented(&self, node: &str) -> Self {
        let mut v = self.clone();
        let next = self
            .0
            .iter()
            .map(|(_, c)| *c)
            .max()
            .unwrap_or(0)
            .max(self.get(node))
            // The wire refuses counters near the top (`wire::MAX_VERSION_COUNTER`);
            // saturating keeps an index written before that check from panicking.
            .saturating_add(1);
        v.set(node, next);
        v
    }

    /// The least vector that descends from both.
    pub fn merged(&self, other: &Self) -> Self {
        let mut v = self.clone();
        for (k, c) in &other.0 {
            v.set(k, v.get(k).max(*c));
        }
        v
    }

    pub fn compare(&self, other: &Self) -> Causality {
        let mut greater = false;
        let mut less = false;
        for (k, _) in self.0.iter().chain(other.0.iter()) {
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
        self.0.iter().all(|(_, c)| *c == 0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(pairs: &[(&str, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for (k, c) in pairs {
            v.set(k, *c);
        }
        v
    }

    #[test]
    fn reads_unsorted_and_repeated_ids_as_the_map_did() {
        // A hand-made or hostile document: sorted on reading, the last counter wins.
        let v: VersionVector = serde_json::from_str(r#"{"b":1,"a":2,"b":3}"#).unwrap();
        assert_eq!(v, vv(&[("a", 2), ("b", 3)]));
        assert_eq!(v.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn serialises_exactly_as_the_map_did() {
        // Index files, wire messages and digests written by earlier versions stay valid.
        let v = vv(&[("n2", 7), ("a", 1), ("node-10", u64::MAX / 3)]);
        let map: std::collections::BTreeMap<String, u64> =
            v.iter().map(|(k, c)| (k.to_string(), c)).collect();
        let bytes = postcard::to_allocvec(&v).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&map).unwrap());
        let back: VersionVector = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, v);
        assert_eq!(
            v.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["a", "n2", "node-10"],
            "kept sorted"
        );
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
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
