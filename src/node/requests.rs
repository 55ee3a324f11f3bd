//! Chunk requests gathered during one turn of a folder's loop: per node asked, in the
//! order asked and without repeats, then split into messages of at most
//! [`wire::MAX_REQUEST_HASHES`] hashes, so a turn costs one message per addressee.

use crate::engine::Hash;
use crate::protocol::wire;
use std::collections::HashSet;

/// The chunks asked of one node in this turn.
struct ToNode {
    to: String,
    hashes: Vec<Hash>,
    seen: HashSet<Hash>,
}

/// This turn's requests, per addressee in the order each was first asked (few:
/// a fetch asks its source, or everyone with `"*"`).
#[derive(Default)]
pub(super) struct RequestBatch {
    nodes: Vec<ToNode>,
}

impl RequestBatch {
    /// Adds chunks to ask `to` for; ones already asked of it in this turn are skipped.
    pub fn add(&mut self, to: String, hashes: Vec<Hash>) {
        if hashes.is_empty() {
            return;
        }
        let i = match self.nodes.iter().position(|n| n.to == to) {
            Some(i) => i,
            None => {
                self.nodes.push(ToNode {
                    to,
                    hashes: Vec::new(),
                    seen: HashSet::new(),
                });
                self.nodes.len() - 1
            }
        };
        let n = &mut self.nodes[i];
        n.hashes
            .extend(hashes.into_iter().filter(|h| n.seen.insert(*h)));
    }

    /// Takes the turn's requests as messages: addressee and at most
    /// [`wire::MAX_REQUEST_HASHES`] hashes each.
    pub fn take(&mut self) -> Vec<(String, Vec<Hash>)> {
        let mut out = Vec::new();
        for n in std::mem::take(&mut self.nodes) {
            for part in n.hashes.chunks(wire::MAX_REQUEST_HASHES) {
                out.push((n.to.clone(), part.to_vec()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u32) -> Hash {
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(&i.to_le_bytes());
        h
    }

    #[test]
    fn one_message_per_addressee_in_order_without_repeats() {
        let mut b = RequestBatch::default();
        b.add("n1".into(), vec![h(3), h(1)]);
        b.add("n2".into(), vec![h(1)]);
        b.add("n1".into(), vec![h(1), h(2), h(3), h(4)]);
        b.add("n3".into(), vec![]);
        assert_eq!(
            b.take(),
            vec![
                ("n1".to_string(), vec![h(3), h(1), h(2), h(4)]),
                ("n2".to_string(), vec![h(1)]),
            ]
        );
        // Taken: the next turn starts empty, and may ask for the same chunks again.
        assert!(b.take().is_empty());
        b.add("n1".into(), vec![h(3)]);
        assert_eq!(b.take(), vec![("n1".to_string(), vec![h(3)])]);
    }

    #[test]
    fn messages_are_bounded() {
        let mut b = RequestBatch::default();
        let n = 2 * wire::MAX_REQUEST_HASHES as u32 + 5;
        b.add("*".into(), (0..n).map(h).collect());
        let msgs = b.take();
        let sizes: Vec<usize> = msgs.iter().map(|(_, hs)| hs.len()).collect();
        assert_eq!(
            sizes,
            [wire::MAX_REQUEST_HASHES, wire::MAX_REQUEST_HASHES, 5]
        );
        let all: Vec<Hash> = msgs.into_iter().flat_map(|(_, hs)| hs).collect();
        assert_eq!(all, (0..n).map(h).collect::<Vec<_>>());
    }
}
