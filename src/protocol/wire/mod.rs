//! The internal wire format (`{prefix}/{folder}/v1/{node}`): a small fixed header, a
//! postcard body that zstd may compress, and a BLAKE3 keyed MAC under the group key
//! over the topic and everything before it. Decoding checks every bound before it
//! allocates, so a hostile payload costs at most `MAX_MESSAGE_BYTES` to reject.
//! docs/PROTOCOL.md describes the layout byte by byte.
//!
//! This file holds the message schema; the framing is in `codec`, the bounds a decoded
//! message must meet in `bounds`, the group keys in `keys`.

use crate::engine::intern::NodeId;
use crate::engine::{ChunkRef, Chunks, Content, Entry, Hash, Region, SharedAttrs, VersionVector};
use crate::protocol::delta::ChunkDelta;
use crate::protocol::relpath::RelPath;
use serde::{Deserialize, Serialize};

mod bounds;
mod codec;
pub mod extension;
mod keys;
pub mod parts;

pub use bounds::{
    MAX_CHUNKS_PER_FILE, MAX_DELTAS, MAX_ENTRIES, MAX_REGIONS, MAX_REQUEST_HASHES,
    MAX_VERSION_COUNTER, check_entry,
};
pub use codec::{
    DecodeError, EncodeError, HEADER_LEN, MAC_LEN, MAGIC, MAX_BODY_BYTES, MAX_MESSAGE_BYTES,
    decode, encode, encode_with, sign_raw,
};
pub use keys::Keys;
pub use parts::encode_fitting;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkData {
    pub hash: Hash,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Versioned entries. `live` is true for a fresh local change (its new chunks
    /// follow on the same topic) and false for an answer to a digest.
    Manifest { live: bool, entries: Vec<Entry> },
    /// Chunk contents, each verified against its hash by the receiver.
    Chunks { chunks: Vec<ChunkData> },
    /// The sender's digest buckets; `reply` asks receivers to send theirs back.
    Digest { reply: bool, buckets: Vec<u64> },
    /// Asks node `to` (or `"*"`: anyone) to publish these chunks.
    Request { to: String, hashes: Vec<Hash> },
    /// Tells writer `to` that its chunk messages up to the one ending with chunk `last`
    /// were processed (flow control, [`crate::transfer::push_window`]).
    Progress { to: String, last: Hash },
    /// New chunks of a live change described as edits of the chunks they replaced,
    /// which the receivers hold ([`crate::protocol::delta`]).
    Deltas { deltas: Vec<ChunkDelta> },
    /// Live changes of large files as edits of their previous chunk lists.
    Patch { patches: Vec<FilePatch> },
    /// A piece of an encoded message larger than the sender's `max_message_bytes`: the
    /// bytes from `offset` of the `total` bytes of the message whose BLAKE3 is `id`
    /// ([`parts`]).
    Part {
        id: Hash,
        total: u32,
        offset: u32,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The sender's 32 group values (the top of its digest tree), for `to` to compare
    /// (`"*"`: anyone); the others stay silent. `reply`: `to` answers even when nothing
    /// differs, with its own summary ([`crate::engine::Engine::handle_summary`]).
    Summary {
        to: String,
        reply: bool,
        round: u32,
        groups: Vec<u64>,
    },
    /// A step of the repair exchange with `to`: regions whose children differ, with
    /// the sender's values of them, and regions whose entries `to` should publish.
    Descent { to: String, items: Vec<Region> },
}

/// A live change of a file given as its previous chunk list (`base`, the
/// [`chunk_list_id`] the receiver must hold for the path) with the chunks between the
/// first `keep_front` and the last `keep_back` replaced by `chunks`. A manifest of a
/// 512 MiB file lists 2,048 hashes (74 KB); an edit in its middle changes a few.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePatch {
    pub path: RelPath,
    pub version: VersionVector,
    #[serde(with = "crate::engine::intern::serde_node_id")]
    pub modified_by: NodeId,
    pub changed_ms: u64,
    pub size: u64,
    pub mode: u32,
    pub mtime_ns: i64,
    pub base: Hash,
    pub keep_front: u32,
    pub keep_back: u32,
    pub chunks: Vec<ChunkRef>,
    /// Travels in the message's extension, as an entry's do.
    #[serde(skip)]
    pub attrs: SharedAttrs,
}

/// Files with fewer chunks are always sent whole: a patch would save little.
pub const PATCH_MIN_CHUNKS: usize = 16;

/// Identifies a chunk list: BLAKE3 over each chunk's hash and length.
pub fn chunk_list_id(chunks: &[ChunkRef]) -> Hash {
    let mut h = blake3::Hasher::new();
    for c in chunks {
        h.update(&c.hash);
        h.update(&c.len.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

impl FilePatch {
    /// `entry` (a file) as a patch of the chunk list `old`, when that keeps at least
    /// half of `old`.
    pub fn of(entry: &Entry, old: &[ChunkRef]) -> Option<FilePatch> {
        let Content::File {
            size,
            mode,
            mtime_ns,
            chunks,
        } = &entry.content
        else {
            return None;
        };
        if old.len() < PATCH_MIN_CHUNKS {
            return None;
        }
        let front = chunks.iter().zip(old).take_while(|(a, b)| a == b).count();
        let back = chunks[front..]
            .iter()
            .rev()
            .zip(old[front..].iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        if 2 * (front + back) < old.len() {
            return None;
        }
        Some(FilePatch {
            path: entry.path.clone(),
            version: entry.version.clone(),
            modified_by: entry.modified_by.clone(),
            changed_ms: entry.changed_ms,
            size: *size,
            mode: *mode,
            mtime_ns: *mtime_ns,
            base: chunk_list_id(old),
            keep_front: front as u32,
            keep_back: back as u32,
            chunks: chunks[front..chunks.len() - back].to_vec(),
            attrs: entry.attrs.clone(),
        })
    }

    /// The entry this patch describes, given the chunk list the receiver holds for the
    /// path; `None` when that is not the patch's base. The result is checked like any
    /// entry of a manifest.
    pub fn expand(&self, old: &[ChunkRef]) -> Result<Option<Entry>, DecodeError> {
        let (front, back) = (self.keep_front as usize, self.keep_back as usize);
        if front.saturating_add(back) > old.len() || chunk_list_id(old) != self.base {
            return Ok(None);
        }
        let mut chunks = Chunks::with_capacity(front + self.chunks.len() + back);
        chunks.extend_from_slice(&old[..front]);
        chunks.extend_from_slice(&self.chunks);
        chunks.extend_from_slice(&old[old.len() - back..]);
        let entry = Entry {
            attrs: self.attrs.clone(),
            path: self.path.clone(),
            version: self.version.clone(),
            modified_by: self.modified_by.clone(),
            changed_ms: self.changed_ms,
            content: Content::File {
                size: self.size,
                mode: self.mode,
                mtime_ns: self.mtime_ns,
                chunks,
            },
        };
        check_entry(&entry)?;
        Ok(Some(entry))
    }
}

/// The highest kind byte this version knows; a later one is ignored, not an error.
pub(crate) const LAST_KIND: u8 = 10;

impl Message {
    /// The header's kind byte for this message.
    fn kind(&self) -> u8 {
        match self {
            Message::Manifest { .. } => 1,
            Message::Chunks { .. } => 2,
            Message::Digest { .. } => 3,
            Message::Request { .. } => 4,
            Message::Progress { .. } => 5,
            Message::Deltas { .. } => 6,
            Message::Patch { .. } => 7,
            Message::Part { .. } => 8,
            Message::Summary { .. } => 9,
            Message::Descent { .. } => 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Sender node id; must match the topic's last level.
    pub from: String,
    pub msg: Message,
}

#[cfg(test)]
mod tests;
