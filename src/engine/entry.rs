//! What the engine knows about one path: its version vector and the state it names
//! (a file with its chunk list, a directory, a symlink, or a deletion tombstone).
//! Entries travel in manifests and are stored in the index unchanged.

use super::version::VersionVector;
use crate::relpath::RelPath;
use serde::{Deserialize, Serialize};

/// BLAKE3 hash of a chunk's plain bytes.
pub type Hash = [u8; 32];

/// One content-defined chunk of a file, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    pub hash: Hash,
    pub len: u32,
}

/// The state of a path, without its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    File {
        size: u64,
        mode: u32,
        mtime_ns: i64,
        chunks: Vec<ChunkRef>,
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

impl Content {
    pub fn is_deleted(&self) -> bool {
        matches!(self, Content::Deleted)
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, Content::Dir { .. })
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
    pub modified_by: std::sync::Arc<str>,
    /// Wall-clock time of that change on its author, in ms since the epoch (0:
    /// unknown). Ages tombstones for garbage collection; never used to order versions.
    pub changed_ms: u64,
    pub content: Content,
}

impl Entry {
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
