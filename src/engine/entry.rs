//! What the engine knows about one path: its version vector and the state it names
//! (a file with its chunk list, a directory, a symlink, or a deletion tombstone).
//! Entries travel in manifests and are stored in the index unchanged; their owner and
//! extended attributes ([`Attrs`]) travel after them, so the v1 layout stays the same.

use super::attrs::SharedAttrs;
use super::version::VersionVector;
use crate::protocol::relpath::RelPath;
use serde::{Deserialize, Serialize};

/// BLAKE3 hash of a chunk's plain bytes.
pub type Hash = [u8; 32];

/// One content-defined chunk of a file, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    pub hash: Hash,
    pub len: u32,
}

/// A file's chunks in file order. Most files of a large tree are small and have one
/// chunk, held inline: its own heap block cost 48 bytes per file. Serialises as a `Vec`.
pub type Chunks = smallvec::SmallVec<[ChunkRef; 1]>;

/// The state of a path, without its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    File {
        size: u64,
        mode: u32,
        mtime_ns: i64,
        #[serde(deserialize_with = "cautious_chunks")]
        chunks: Chunks,
    },
    /// Directory mtimes are not synced: they change with every child and would make
    /// every node publish every directory after every write.
    Dir {
        mode: u32,
    },
    /// The link target is stored as text and never followed.
    Symlink {
        target: String,
    },
    Deleted,
}

/// Reads a chunk list without trusting its length hint for the allocation: smallvec's
/// own `Deserialize` reserves whatever the format hints, where serde's `Vec` caps it
/// (postcard bounds its hint by the bytes left, so this is a second bound).
fn cautious_chunks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Chunks, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Chunks;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of chunks")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Chunks, A::Error> {
            let mut out = Chunks::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(c) = seq.next_element()? {
                out.push(c);
            }
            out.shrink_to_fit();
            Ok(out)
        }
    }
    d.deserialize_seq(V)
}

impl Content {
    pub fn is_deleted(&self) -> bool {
        matches!(self, Content::Deleted)
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, Content::Dir { .. })
    }

    /// A file or a symlink: what a conflict keeps as a copy.
    pub fn is_file_like(&self) -> bool {
        matches!(self, Content::File { .. } | Content::Symlink { .. })
    }

    /// Same bytes, type and permissions: the differences that matter for conflicts.
    /// Modification times alone never make a conflict.
    pub fn same_data(&self, other: &Content) -> bool {
        match (self, other) {
            (
                Content::File {
                    size: s1,
                    mode: m1,
                    chunks: c1,
                    ..
                },
                Content::File {
                    size: s2,
                    mode: m2,
                    chunks: c2,
                    ..
                },
            ) => s1 == s2 && m1 == m2 && c1 == c2,
            (a, b) => a == b,
        }
    }

    pub fn size(&self) -> u64 {
        match self {
            Content::File { size, .. } => *size,
            _ => 0,
        }
    }

    pub fn mtime_ns(&self) -> i64 {
        match self {
            Content::File { mtime_ns, .. } => *mtime_ns,
            _ => 0,
        }
    }
}

/// A versioned path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: RelPath,
    pub version: VersionVector,
    /// The node whose change produced this version; names conflict copies.
    #[serde(with = "super::intern::serde_node_id")]
    pub modified_by: super::intern::NodeId,
    /// Wall-clock time of that change on its author, in ms since the epoch (0:
    /// unknown). Ages tombstones for garbage collection; never used to order versions.
    pub changed_ms: u64,
    pub content: Content,
    /// Owner and extended attributes, when the author's folder keeps them. Not part of
    /// the entry's own encoding (nor of its fingerprint): nodes of the previous protocol
    /// read entries without them. The wire and the index carry them after the entries.
    #[serde(skip)]
    pub attrs: SharedAttrs,
}

impl Entry {
    /// Same content and attributes: the path holds the same state.
    pub fn same_state(&self, other: &Entry) -> bool {
        self.content == other.content && self.attrs == other.attrs
    }

    /// [`Content::same_data`] and the same attributes: a change of owner or attributes
    /// alone counts for conflicts like a change of the permission bits.
    pub fn same_data(&self, other: &Entry) -> bool {
        self.content.same_data(&other.content) && self.attrs == other.attrs
    }

    /// A 64-bit fingerprint of path, version and content, for digests.
    pub fn fingerprint(&self) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(self.path.as_str().as_bytes());
        h.update(&[0]);
        for (node, c) in self.version.iter() {
            if c > 0 {
                h.update(node.as_bytes());
                h.update(&[0]);
                h.update(&c.to_le_bytes());
            }
        }
        // postcard of plain data cannot fail; an empty fallback still hashes path+version.
        h.update(&postcard::to_allocvec(&self.content).unwrap_or_default());
        let out = h.finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&out.as_bytes()[..8]);
        u64::from_le_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same content with its chunks in a plain `Vec`, as the wire and the index
    /// were written before chunks moved inline.
    #[derive(Serialize)]
    enum VecContent {
        File {
            size: u64,
            mode: u32,
            mtime_ns: i64,
            chunks: Vec<ChunkRef>,
        },
    }

    #[test]
    fn chunks_encode_as_a_vec_did_and_one_chunk_stays_inline() {
        for n in [0usize, 1, 3] {
            let chunks: Vec<ChunkRef> = (0..n)
                .map(|i| ChunkRef {
                    hash: [i as u8; 32],
                    len: 10 + i as u32,
                })
                .collect();
            let old = postcard::to_allocvec(&VecContent::File {
                size: 7,
                mode: 0o600,
                mtime_ns: -3,
                chunks: chunks.clone(),
            })
            .expect("encode");
            let new = Content::File {
                size: 7,
                mode: 0o600,
                mtime_ns: -3,
                chunks: chunks.iter().copied().collect(),
            };
            assert_eq!(postcard::to_allocvec(&new).expect("encode"), old);
            let back: Content = postcard::from_bytes(&old).expect("decode");
            assert_eq!(back, new);
            if let Content::File { chunks, .. } = back {
                assert_eq!(chunks.spilled(), n > 1, "{n} chunks");
            }
        }
    }

    #[test]
    fn a_lying_chunk_count_is_refused_without_reserving_it() {
        let mut bytes = postcard::to_allocvec(&VecContent::File {
            size: 1,
            mode: 0,
            mtime_ns: 0,
            chunks: vec![],
        })
        .expect("encode");
        // Replace the empty list's length (the last byte) by 2^27 as a varint: 4.8 GB of
        // chunks claimed, none present. postcard already bounds its length hint by the
        // bytes left, so this guards the pair of them (a reservation of the claim would
        // show in the address space's peak), with `cautious_chunks` as a second bound.
        bytes.pop();
        bytes.extend_from_slice(&[0x80, 0x80, 0x80, 0x40]);
        let peak = || {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmPeak:"))
                        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
                })
                .unwrap_or(0)
        };
        let before = peak();
        assert!(postcard::from_bytes::<Content>(&bytes).is_err());
        let grown_kib = peak().saturating_sub(before);
        assert!(grown_kib < 1 << 20, "decoding reserved {grown_kib} KiB");
    }
}
