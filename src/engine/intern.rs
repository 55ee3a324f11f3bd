//! Node ids, shared: every entry names the node that last changed it and carries a
//! counter per node, so a million files hold a few distinct names millions of times.
//! One allocation per name instead of two per entry is about 64 bytes per file.

use serde::{Deserializer, Serializer};
use std::collections::HashSet;
use std::fmt;
use std::sync::{Mutex, OnceLock};

pub use crate::protocol::shared_str::SharedStr as NodeId;

/// Names kept at most: a peer that invents ids cannot grow the table without bound;
/// later names are simply not shared.
const MAX_NAMES: usize = 4096;

/// The shared copy of node id `s`.
pub fn node_id(s: &str) -> NodeId {
    static NAMES: OnceLock<Mutex<HashSet<NodeId>>> = OnceLock::new();
    let names = NAMES.get_or_init(|| Mutex::new(HashSet::new()));
    // A poisoned lock still holds a valid set: the insert below cannot half-fail.
    let mut names = names.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.get(s) {
        return n.clone();
    }
    let n = NodeId::new(s);
    if names.len() < MAX_NAMES {
        names.insert(n.clone());
    }
    n
}

/// Serde for an `NodeId` node id: a plain string on the wire, shared once read.
pub mod serde_node_id {
    use super::*;

    pub fn serialize<S: Serializer>(id: &NodeId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
        d.deserialize_str(NodeIdVisitor)
    }
}

pub(crate) struct NodeIdVisitor;

impl serde::de::Visitor<'_> for NodeIdVisitor {
    type Value = NodeId;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a node id")
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<NodeId, E> {
        Ok(node_id(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_share_one_allocation() {
        let a = node_id("node-a");
        let b = node_id(&String::from("node-a"));
        assert!(std::ptr::eq(a.as_ptr(), b.as_ptr()));
        assert_eq!(&*a, "node-a");
    }
}
