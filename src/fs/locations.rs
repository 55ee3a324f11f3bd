//! Where a chunk can be read on this node's disk: which path holds it. Kept compact for
//! trees of a million files: a map from the first 8 bytes of the chunk hash to the path
//! only; the offset and length come from the path's confirmed entry when asked.

use crate::engine::{Content, Engine, Hash};
use crate::protocol::chunker;
use crate::protocol::relpath::RelPath;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Chunk hash prefix → a path whose confirmed entry lists that chunk.
///
/// A map of full hashes to (path, offset, length) cost 136 bytes per file with a million
/// files, the largest part of a node's memory. Here a slot is 24 bytes. A prefix shared
/// by two chunks (or a path changed since) makes a lookup miss, never return wrong
/// bytes: the full hash is matched in the entry, and reads are verified.
#[derive(Default)]
pub struct ChunkLocations {
    by_prefix: BTreeMap<u64, RelPath>,
    /// When each chunk whose recorded holder had changed was last looked for.
    looked_for: HashMap<Hash, Instant>,
}

/// How long a chunk looked for in vain is not looked for again.
const LOOK_AGAIN: Duration = Duration::from_secs(60);

fn prefix(hash: &Hash) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(b)
}

impl ChunkLocations {
    /// The locations of every file in `entries` (a folder's confirmed state at start-up).
    /// Collected in one go, so the map's nodes come out full.
    pub fn build<'a>(files: impl Iterator<Item = (&'a RelPath, &'a Content)>) -> Self {
        let mut pairs: Vec<(u64, RelPath)> = Vec::new();
        for (path, content) in files {
            if let Content::File { chunks, .. } = content {
                pairs.extend(chunks.iter().map(|c| (prefix(&c.hash), path.clone())));
            }
        }
        ChunkLocations {
            by_prefix: pairs.into_iter().collect(),
            looked_for: Default::default(),
        }
    }

    /// Remembers that `path` holds the chunks of `content`.
    pub fn insert(&mut self, path: &RelPath, content: &Content) {
        if let Content::File { chunks, .. } = content {
            for c in chunks {
                self.by_prefix.insert(prefix(&c.hash), path.clone());
            }
        }
    }

    /// Finds another holder for each of `hashes` whose recorded one no longer lists it
    /// (only one path is kept per chunk: the last confirmed file to hold it, which may
    /// have changed since while an older file still holds the chunk), in one pass over
    /// the confirmed entries. Found by the fault campaign: a chunk every node held was
    /// served by none, and the node missing it fetched for ever. Returns how many were
    /// found. The caller limits how often a hash is looked for (a pass is O(files)).
    pub fn relocate(&mut self, hashes: &[Hash], engine: &Engine) -> usize {
        let mut want: HashMap<u64, Hash> = hashes
            .iter()
            .filter(|h| self.find(h, engine).is_none())
            .map(|h| (prefix(h), *h))
            .collect();
        let mut found = 0;
        for e in engine.entries() {
            if want.is_empty() {
                break;
            }
            let Content::File { chunks, .. } = &e.content else {
                continue;
            };
            for c in chunks.iter() {
                let p = prefix(&c.hash);
                if want.get(&p) == Some(&c.hash) {
                    want.remove(&p);
                    self.by_prefix.insert(p, e.path.clone());
                    found += 1;
                }
            }
        }
        found
    }

    /// [`Self::relocate`] for the asked `hashes` that this node recorded a holder for
    /// but whose holder changed, each at most once a minute: a node never holding a
    /// chunk asked of everyone costs nothing, and one asked again and again costs one
    /// pass over the entries a minute.
    pub fn relocate_asked(&mut self, hashes: &[Hash], engine: &Engine, now: Instant) -> usize {
        if self.looked_for.len() > 4096 {
            self.looked_for
                .retain(|_, at| now.duration_since(*at) < LOOK_AGAIN);
        }
        let stale: Vec<Hash> = hashes
            .iter()
            .filter(|h| self.contains(h) && self.find(h, engine).is_none())
            .filter(|h| {
                self.looked_for
                    .get(*h)
                    .is_none_or(|at| now.duration_since(*at) >= LOOK_AGAIN)
            })
            .copied()
            .collect();
        if stale.is_empty() {
            return 0;
        }
        for h in &stale {
            self.looked_for.insert(*h, now);
        }
        self.relocate(&stale, engine)
    }

    /// Whether some local path is known to hold a chunk with this hash's prefix.
    pub fn contains(&self, hash: &Hash) -> bool {
        self.by_prefix.contains_key(&prefix(hash))
    }

    /// The path, offset and length of `hash` on this node, per the engine's confirmed
    /// entries.
    pub fn find(&self, hash: &Hash, engine: &Engine) -> Option<(RelPath, u64, u32)> {
        let path = self.by_prefix.get(&prefix(hash))?;
        let Content::File { chunks, .. } = &engine.entry(path)?.content else {
            return None;
        };
        chunker::offsets(chunks)
            .find(|(_, c)| c.hash == *hash)
            .map(|(off, c)| (path.clone(), off, c.len))
    }

    pub fn len(&self) -> usize {
        self.by_prefix.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ChunkRef, Chunks, Mode};

    fn file(chunks: &[(u8, u32)]) -> Content {
        Content::File {
            size: chunks.iter().map(|(_, l)| u64::from(*l)).sum(),
            mode: 0o644,
            mtime_ns: 1,
            chunks: chunks
                .iter()
                .map(|(b, len)| ChunkRef {
                    hash: *blake3::hash(&[*b]).as_bytes(),
                    len: *len,
                })
                .collect::<Chunks>(),
        }
    }

    fn hash(b: u8) -> Hash {
        *blake3::hash(&[b]).as_bytes()
    }

    #[test]
    fn finds_offsets_through_the_confirmed_entry_and_misses_when_it_changed() {
        let p = RelPath::new("a/big").expect("path");
        let q = RelPath::new("small").expect("path");
        let mut engine = Engine::new("n1", Mode::SendReceive, []);
        engine.handle_local(p.clone(), file(&[(1, 100), (2, 50), (3, 7)]));
        engine.handle_local(q.clone(), file(&[(4, 9)]));
        let locs = ChunkLocations::build(engine.entries().map(|e| (&e.path, &e.content)));
        assert_eq!(locs.len(), 4);
        assert_eq!(locs.find(&hash(3), &engine), Some((p.clone(), 150, 7)));
        assert_eq!(locs.find(&hash(4), &engine), Some((q.clone(), 0, 9)));
        assert!(locs.contains(&hash(2)));
        assert!(!locs.contains(&hash(5)));
        assert_eq!(locs.find(&hash(5), &engine), None);

        // The file changed and lost chunk 3: the stale slot misses instead of pointing
        // at the wrong bytes; the new chunk is found once inserted.
        let mut locs = locs;
        let now = file(&[(1, 100), (5, 20)]);
        engine.handle_local(p.clone(), now.clone());
        assert_eq!(locs.find(&hash(3), &engine), None);
        locs.insert(&p, &now);
        assert_eq!(locs.find(&hash(5), &engine), Some((p, 100, 20)));
    }

    #[test]
    fn a_chunk_whose_recorded_holder_changed_is_found_in_another_file() {
        let (old, new) = (
            RelPath::new("old").expect("path"),
            RelPath::new("new").expect("path"),
        );
        let mut engine = Engine::new("n1", Mode::SendReceive, []);
        engine.handle_local(old.clone(), file(&[(1, 10), (2, 20)]));
        engine.handle_local(new.clone(), file(&[(2, 20), (3, 30)]));
        let mut locs = ChunkLocations::default();
        locs.insert(&old, &engine.entry(&old).expect("entry").content);
        locs.insert(&new, &engine.entry(&new).expect("entry").content);
        // "new" holds chunk 2 as the last one recorded, then changes and loses it.
        engine.handle_local(new.clone(), file(&[(3, 30)]));
        assert_eq!(locs.find(&hash(2), &engine), None);
        assert_eq!(locs.relocate(&[hash(2), hash(9)], &engine), 1);
        assert_eq!(locs.find(&hash(2), &engine), Some((old.clone(), 10, 20)));
        assert_eq!(
            locs.relocate(&[hash(2)], &engine),
            0,
            "found, not looked for again"
        );

        // Asked by a peer: a chunk never held here is not looked for; a stale one is,
        // once a minute.
        let t = Instant::now();
        engine.handle_local(old.clone(), file(&[(1, 10)]));
        engine.handle_local(new.clone(), file(&[(3, 30), (2, 20)]));
        assert_eq!(locs.relocate_asked(&[hash(9)], &engine, t), 0);
        assert!(locs.looked_for.is_empty());
        assert_eq!(locs.relocate_asked(&[hash(2)], &engine, t), 1);
        assert_eq!(locs.find(&hash(2), &engine), Some((new.clone(), 30, 20)));
        engine.handle_local(old.clone(), file(&[(2, 20)]));
        engine.handle_local(new.clone(), file(&[(8, 1)]));
        assert_eq!(
            locs.relocate_asked(&[hash(2)], &engine, t),
            0,
            "within the minute"
        );
        assert_eq!(locs.relocate_asked(&[hash(2)], &engine, t + LOOK_AGAIN), 1);
        assert_eq!(locs.find(&hash(2), &engine), Some((old, 0, 20)));
    }

    #[test]
    fn a_shared_prefix_misses_rather_than_returning_another_chunk() {
        let p = RelPath::new("f").expect("path");
        let mut engine = Engine::new("n1", Mode::SendReceive, []);
        engine.handle_local(p.clone(), file(&[(1, 10)]));
        let mut locs = ChunkLocations::default();
        locs.insert(&p, &engine.entry(&p).expect("entry").content);
        let mut twin = hash(1);
        twin[31] ^= 1;
        assert!(locs.contains(&twin));
        assert_eq!(locs.find(&twin, &engine), None);
    }
}
