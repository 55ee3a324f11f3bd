//! The internal wire format (`{prefix}/{folder}/v1/{node}`): a small fixed header, a
//! postcard body that zstd may compress, and a BLAKE3 keyed MAC under the group key
//! over the topic and everything before it. Decoding checks every bound before it
//! allocates, so a hostile payload costs at most `MAX_MESSAGE_BYTES` to reject.
//! docs/PROTOCOL.md describes the layout byte by byte.

use crate::engine::intern::NodeId;
use crate::engine::{ChunkRef, Chunks, Content, Entry, Hash, VersionVector};
use crate::protocol::delta::{ChunkDelta, DeltaOp};
use crate::protocol::relpath::RelPath;
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 4] = b"MQS1";
pub const HEADER_LEN: usize = 10;
pub const MAC_LEN: usize = 32;
/// Largest payload accepted from the broker.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest body after decompression (the zstd-bomb bound).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Most entries in one manifest.
pub const MAX_ENTRIES: usize = 20_000;
/// Most chunk deltas in one message: each may make the receiver read four old chunks.
pub const MAX_DELTAS: usize = 64;
/// Most chunk hashes in one request.
pub const MAX_REQUEST_HASHES: usize = 20_000;
/// Chunks one file entry may list: 100,000 chunks of at most 1 MiB (about 100 GiB);
/// one entry must also fit in a single message.
pub const MAX_CHUNKS_PER_FILE: usize = 100_000;
/// Largest version counter accepted from the wire (2^53: a change per nanosecond for
/// 100 days); the engine adds one to the largest counter it holds.
pub const MAX_VERSION_COUNTER: u64 = 1 << 53;
/// Bodies smaller than this are sent uncompressed: zstd would not pay for itself.
const COMPRESS_MIN: usize = 512;
const FLAG_ZSTD: u8 = 1;

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

impl Message {
    fn kind(&self) -> u8 {
        match self {
            Message::Manifest { .. } => 1,
            Message::Chunks { .. } => 2,
            Message::Digest { .. } => 3,
            Message::Request { .. } => 4,
            Message::Progress { .. } => 5,
            Message::Deltas { .. } => 6,
            Message::Patch { .. } => 7,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Sender node id; must match the topic's last level.
    pub from: String,
    pub msg: Message,
}

/// The group keys: the first signs, any of them verifies (for rotation).
#[derive(Clone)]
pub struct Keys {
    keys: Vec<[u8; 32]>,
}

impl Keys {
    pub fn new(keys: Vec<[u8; 32]>) -> Option<Self> {
        (!keys.is_empty()).then_some(Keys { keys })
    }

    /// Derives a key from the text of a group key file (any length, any content).
    pub fn derive(secret: &[u8]) -> [u8; 32] {
        blake3::derive_key("mqsync group key v1", secret.trim_ascii())
    }

    /// The MAC of `data` published on `topic`, under the signing (first) key.
    pub fn tag(&self, topic: &str, data: &[u8]) -> [u8; 32] {
        Self::mac(&self.keys[0], topic, data)
    }

    /// Whether `tag` is the MAC of `data` on `topic` under any of the keys (the
    /// comparison is constant-time).
    pub fn verifies(&self, topic: &str, data: &[u8], tag: &[u8; 32]) -> bool {
        let given = blake3::Hash::from(*tag);
        self.keys
            .iter()
            .any(|k| blake3::Hash::from(Self::mac(k, topic, data)) == given)
    }

    fn mac(key: &[u8; 32], topic: &str, data: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(key);
        h.update(&(topic.len() as u64).to_le_bytes());
        h.update(topic.as_bytes());
        h.update(data);
        *h.finalize().as_bytes()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("message too short or bad magic: not an mqsync v1 message")]
    BadHeader,
    #[error("MAC does not verify: sender lacks the group key or the message was altered")]
    BadMac,
    #[error("declared body size {0} exceeds the {MAX_BODY_BYTES}-byte limit")]
    BodyTooLarge(usize),
    #[error("decompression failed or size mismatch: {0}")]
    Decompress(String),
    #[error("malformed body: {0}")]
    Body(String),
    #[error("sender {claimed:?} does not match topic node {topic:?}")]
    WrongSender { claimed: String, topic: String },
    #[error("too many items: {0}")]
    TooMany(usize),
    #[error("header kind does not match body")]
    KindMismatch,
    #[error("entry {path}: {reason}")]
    BadEntry { path: String, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoding: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("compression: {0}")]
    Zstd(#[from] std::io::Error),
    #[error("encoded message of {0} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
}

/// Encodes `env` for publication on `topic`.
pub fn encode(env: &Envelope, topic: &str, keys: &Keys) -> Result<Vec<u8>, EncodeError> {
    encode_with(env, topic, keys, true)
}

/// [`encode`], trying zstd only when `compress` is set (receivers read either).
pub fn encode_with(
    env: &Envelope,
    topic: &str,
    keys: &Keys,
    compress: bool,
) -> Result<Vec<u8>, EncodeError> {
    let body = postcard::to_allocvec(env)?;
    let mut flags = 0u8;
    let mut payload = None;
    if compress && body.len() >= COMPRESS_MIN {
        let z = zstd::bulk::compress(&body, 1)?;
        // Incompressible data (media, archives) goes out as is.
        if z.len() + z.len() / 16 < body.len() {
            flags |= FLAG_ZSTD;
            payload = Some(z);
        }
    }
    let payload = payload.as_deref().unwrap_or(&body);
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + MAC_LEN);
    out.extend_from_slice(MAGIC);
    out.push(env.msg.kind());
    out.push(flags);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    let mac = keys.tag(topic, &out);
    out.extend_from_slice(&mac);
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(EncodeError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Signs `raw` as the body of a message of `kind` in the layout [`encode`] produces,
/// whether or not it decodes, with `declared_len` as the header's body size. Only for
/// tests and fuzzing of the receiving side: mqsync itself always uses [`encode`].
#[doc(hidden)]
pub fn sign_raw(
    kind: u8,
    compressed: bool,
    declared_len: u32,
    raw: &[u8],
    topic: &str,
    keys: &Keys,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + raw.len() + MAC_LEN);
    out.extend_from_slice(MAGIC);
    out.push(kind);
    out.push(if compressed { FLAG_ZSTD } else { 0 });
    out.extend_from_slice(&declared_len.to_be_bytes());
    out.extend_from_slice(raw);
    let mac = keys.tag(topic, &out);
    out.extend_from_slice(&mac);
    out
}

/// Decodes and authenticates a payload received on `topic`, whose last level names
/// the sending node `topic_node`.
pub fn decode(
    payload: &[u8],
    topic: &str,
    topic_node: &str,
    keys: &Keys,
) -> Result<Envelope, DecodeError> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(payload.len()));
    }
    if payload.len() < HEADER_LEN + MAC_LEN || &payload[..4] != MAGIC {
        return Err(DecodeError::BadHeader);
    }
    let (signed, mac) = payload.split_at(payload.len() - MAC_LEN);
    let given: &[u8; MAC_LEN] = mac.try_into().map_err(|_| DecodeError::BadHeader)?;
    if !keys.verifies(topic, signed, given) {
        return Err(DecodeError::BadMac);
    }
    let kind = signed[4];
    let flags = signed[5];
    let body_len = u32::from_be_bytes([signed[6], signed[7], signed[8], signed[9]]) as usize;
    if body_len > MAX_BODY_BYTES {
        return Err(DecodeError::BodyTooLarge(body_len));
    }
    let raw = &signed[HEADER_LEN..];
    let decompressed;
    let body = if flags & FLAG_ZSTD != 0 {
        decompressed = zstd::bulk::decompress(raw, body_len)
            .map_err(|e| DecodeError::Decompress(e.to_string()))?;
        &decompressed[..]
    } else {
        raw
    };
    if body.len() != body_len {
        return Err(DecodeError::Decompress(format!(
            "declared {body_len} bytes, got {}",
            body.len()
        )));
    }
    let env: Envelope = postcard::from_bytes(body).map_err(|e| DecodeError::Body(e.to_string()))?;
    if env.from != topic_node {
        return Err(DecodeError::WrongSender {
            claimed: env.from,
            topic: topic_node.to_string(),
        });
    }
    if env.msg.kind() != kind {
        return Err(DecodeError::KindMismatch);
    }
    match &env.msg {
        Message::Manifest { entries, .. } if entries.len() > MAX_ENTRIES => {
            return Err(DecodeError::TooMany(entries.len()));
        }
        Message::Request { hashes, .. } if hashes.len() > MAX_REQUEST_HASHES => {
            return Err(DecodeError::TooMany(hashes.len()));
        }
        Message::Digest { buckets, .. } if buckets.len() != crate::engine::BUCKETS => {
            return Err(DecodeError::TooMany(buckets.len()));
        }
        Message::Patch { patches } if patches.len() > MAX_ENTRIES => {
            return Err(DecodeError::TooMany(patches.len()));
        }
        Message::Deltas { deltas } if deltas.len() > MAX_DELTAS => {
            return Err(DecodeError::TooMany(deltas.len()));
        }
        Message::Manifest { entries, .. } => {
            for e in entries {
                check_entry(e)?;
            }
        }
        Message::Patch { patches } => {
            for p in patches {
                check_patch(p)?;
            }
        }
        Message::Deltas { deltas } => {
            for d in deltas {
                check_delta(d)?;
            }
        }
        _ => {}
    }
    Ok(env)
}

/// A patch's own bounds; the entry it expands to is checked in full then.
fn check_patch(p: &FilePatch) -> Result<(), DecodeError> {
    let bad = |reason: String| DecodeError::BadEntry {
        path: p.path.to_string(),
        reason,
    };
    let total = (p.keep_front as usize)
        .saturating_add(p.keep_back as usize)
        .saturating_add(p.chunks.len());
    if total > MAX_CHUNKS_PER_FILE {
        return Err(bad(format!(
            "{total} chunks, more than {MAX_CHUNKS_PER_FILE}"
        )));
    }
    if let Some(c) = p
        .chunks
        .iter()
        .find(|c| c.len == 0 || c.len > crate::protocol::chunker::MAX_CHUNK)
    {
        return Err(bad(format!("chunk of {} bytes", c.len)));
    }
    Ok(())
}

/// A delta rebuilds one chunk of at most `MAX_CHUNK` bytes from at most
/// [`crate::protocol::delta::MAX_BASES`] distinct others, in at most two steps per block of it
/// (a copy and new bytes), none of them empty; [`crate::protocol::delta::patch`] bounds the rest.
fn check_delta(d: &ChunkDelta) -> Result<(), DecodeError> {
    let most_ops = 2 * (d.len as usize).div_ceil(crate::protocol::delta::BLOCK) + 2;
    let distinct = d
        .bases
        .iter()
        .enumerate()
        .all(|(i, b)| !d.bases[..i].contains(b));
    let reason = if d.len == 0 || d.len > crate::protocol::chunker::MAX_CHUNK {
        format!("chunk of {} bytes", d.len)
    } else if d.bases.len() > crate::protocol::delta::MAX_BASES || !distinct {
        format!(
            "{} bases, more than {} or repeated",
            d.bases.len(),
            crate::protocol::delta::MAX_BASES
        )
    } else if d.ops.len() > most_ops {
        format!("{} steps, more than {most_ops}", d.ops.len())
    } else if d.ops.iter().any(|o| match o {
        DeltaOp::Copy { base, len, .. } => *len == 0 || usize::from(*base) >= d.bases.len(),
        DeltaOp::Data(data) => data.is_empty(),
    }) {
        "an empty step or a copy from a base it does not name".to_string()
    } else {
        return Ok(());
    };
    Err(DecodeError::BadEntry {
        path: format!("delta of chunk {}", blake3::Hash::from(d.hash).to_hex()),
        reason,
    })
}

/// Version counters must be at most [`MAX_VERSION_COUNTER`]. A file entry's size must be exactly what its chunk list covers, with chunks no larger
/// than the chunker makes: a sender cannot make a receiver reserve space or wait for
/// data that the manifest does not describe.
pub fn check_entry(e: &crate::engine::Entry) -> Result<(), DecodeError> {
    let bad = |reason: String| DecodeError::BadEntry {
        path: e.path.to_string(),
        reason,
    };
    // Counters grow by one per change; one near the top of u64 can only be forged, and
    // would overflow the next increment.
    if let Some((node, c)) = e.version.iter().find(|(_, c)| *c > MAX_VERSION_COUNTER) {
        return Err(bad(format!(
            "version counter {c} of {node} is out of range"
        )));
    }
    let crate::engine::Content::File { size, chunks, .. } = &e.content else {
        return Ok(());
    };
    if chunks.len() > MAX_CHUNKS_PER_FILE {
        return Err(bad(format!(
            "{} chunks, more than {MAX_CHUNKS_PER_FILE}",
            chunks.len()
        )));
    }
    let mut total = 0u64;
    for c in chunks {
        if c.len == 0 || c.len > crate::protocol::chunker::MAX_CHUNK {
            return Err(bad(format!("chunk of {} bytes", c.len)));
        }
        total += u64::from(c.len);
    }
    if total != *size {
        return Err(bad(format!(
            "claims {size} bytes but its chunks hold {total}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Content, VersionVector};
    use crate::protocol::relpath::RelPath;
    use proptest::prelude::*;

    fn keys() -> Keys {
        Keys::new(vec![Keys::derive(b"secret\n")]).unwrap()
    }

    fn manifest() -> Envelope {
        Envelope {
            from: "n1".into(),
            msg: Message::Manifest {
                live: true,
                entries: vec![Entry {
                    path: RelPath::new("a/b.txt").unwrap(),
                    version: VersionVector::new().incremented("n1"),
                    modified_by: "n1".into(),
                    changed_ms: 0,
                    content: Content::Symlink {
                        target: "../x".into(),
                    },
                }],
            },
        }
    }

    const T: &str = "mqsync/f/v1/n1";

    #[test]
    fn roundtrip_and_compression() {
        let env = manifest();
        let b = encode(&env, T, &keys()).unwrap();
        assert_eq!(decode(&b, T, "n1", &keys()).unwrap(), env);
        let big = Envelope {
            from: "n1".into(),
            msg: Message::Chunks {
                chunks: vec![ChunkData {
                    hash: [1; 32],
                    data: vec![b'a'; 100_000],
                }],
            },
        };
        let b = encode(&big, T, &keys()).unwrap();
        assert!(b.len() < 10_000, "text-like data is compressed");
        assert_eq!(decode(&b, T, "n1", &keys()).unwrap(), big);
    }

    #[test]
    fn rejects_forgery_and_tampering() {
        let b = encode(&manifest(), T, &keys()).unwrap();
        let other = Keys::new(vec![Keys::derive(b"other")]).unwrap();
        assert_eq!(decode(&b, T, "n1", &other), Err(DecodeError::BadMac));
        assert_eq!(
            decode(&b, "mqsync/g/v1/n1", "n1", &keys()),
            Err(DecodeError::BadMac),
            "a message replayed on another topic fails"
        );
        for i in 0..b.len() {
            let mut t = b.clone();
            t[i] ^= 0x40;
            assert!(decode(&t, T, "n1", &keys()).is_err(), "flip at {i}");
        }
        assert!(matches!(
            decode(&b, T, "n2", &keys()),
            Err(DecodeError::WrongSender { .. })
        ));
    }

    #[test]
    fn rotation_accepts_old_key() {
        let old = keys();
        let both = Keys::new(vec![Keys::derive(b"new"), Keys::derive(b"secret")]).unwrap();
        let b = encode(&manifest(), T, &old).unwrap();
        assert!(decode(&b, T, "n1", &both).is_ok());
    }

    #[test]
    fn bounds_zstd_bomb() {
        // A validly signed message whose header lies about the body size.
        let zeros = vec![0u8; 50 * 1024 * 1024];
        let z = zstd::bulk::compress(&zeros, 3).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(2);
        out.push(FLAG_ZSTD);
        out.extend_from_slice(&(1024u32).to_be_bytes());
        out.extend_from_slice(&z);
        let mac = Keys::mac(&keys().keys[0], T, &out);
        out.extend_from_slice(&mac);
        assert!(matches!(
            decode(&out, T, "n1", &keys()),
            Err(DecodeError::Decompress(_))
        ));
    }

    #[test]
    fn file_entries_must_match_their_chunks() {
        let file = |size: u64, lens: &[u32]| {
            let mut env = manifest();
            if let Message::Manifest { entries, .. } = &mut env.msg {
                entries[0].content = Content::File {
                    size,
                    mode: 0o644,
                    mtime_ns: 0,
                    chunks: lens
                        .iter()
                        .map(|&len| crate::engine::ChunkRef { hash: [9; 32], len })
                        .collect(),
                };
            }
            let b = encode(&env, T, &keys()).unwrap();
            decode(&b, T, "n1", &keys())
        };
        assert!(file(3 << 20, &[1 << 20; 3]).is_ok());
        let mut forged = manifest();
        if let Message::Manifest { entries, .. } = &mut forged.msg {
            entries[0].version = serde_json::from_str(r#"{"n1": 18446744073709551615}"#).unwrap();
        }
        let b = encode(&forged, T, &keys()).unwrap();
        assert!(matches!(
            decode(&b, T, "n1", &keys()),
            Err(DecodeError::BadEntry { reason, .. }) if reason.contains("out of range")
        ));
        assert!(file(0, &[]).is_ok());
        for bad in [
            file(1 << 50, &[1 << 20]),
            file(10, &[]),
            file(2 << 20, &[2 << 20]),
            file(0, &[0]),
        ] {
            assert!(matches!(bad, Err(DecodeError::BadEntry { .. })), "{bad:?}");
        }
    }

    fn file_entry(lens: &[(u8, u32)]) -> Entry {
        let mut e = match manifest().msg {
            Message::Manifest { mut entries, .. } => entries.remove(0),
            _ => unreachable!(),
        };
        let chunks: Chunks = lens
            .iter()
            .map(|&(b, len)| ChunkRef { hash: [b; 32], len })
            .collect();
        e.content = Content::File {
            size: chunks.iter().map(|c| u64::from(c.len)).sum(),
            mode: 0o644,
            mtime_ns: 7,
            chunks,
        };
        e
    }

    /// An edit in the middle of a large file is sent as the chunks it replaced, and
    /// expands to the same entry on a node holding the previous list, and only there.
    #[test]
    fn a_patch_expands_to_the_entry_only_against_its_base() {
        let old: Vec<(u8, u32)> = (0..40).map(|i| (i, 65_536)).collect();
        let mut new = old.clone();
        new.splice(20..22, [(200, 100_000), (201, 31_072)]);
        let (old_e, new_e) = (file_entry(&old), file_entry(&new));
        let Content::File {
            chunks: old_chunks, ..
        } = &old_e.content
        else {
            unreachable!()
        };
        let patch = FilePatch::of(&new_e, old_chunks).unwrap();
        assert_eq!(
            (patch.keep_front, patch.keep_back, patch.chunks.len()),
            (20, 18, 2)
        );
        // It travels like any message.
        let env = Envelope {
            from: "n1".into(),
            msg: Message::Patch {
                patches: vec![patch.clone()],
            },
        };
        let decoded = decode(&encode(&env, T, &keys()).unwrap(), T, "n1", &keys()).unwrap();
        assert_eq!(decoded, env);
        assert_eq!(patch.clone().expand(old_chunks), Ok(Some(new_e.clone())));
        // Another base (a node that missed the previous version) expands to nothing.
        let Content::File { chunks: other, .. } = &file_entry(&old[1..]).content else {
            unreachable!()
        };
        assert_eq!(patch.clone().expand(other), Ok(None));
        // A forged size is refused once expanded, as in a manifest.
        let lying = FilePatch {
            size: patch.size + 1,
            ..patch
        };
        assert!(matches!(
            lying.expand(old_chunks),
            Err(DecodeError::BadEntry { reason, .. }) if reason.contains("claims")
        ));
        // Small files, and edits that keep less than half, go out whole.
        let Content::File { chunks: few, .. } = &file_entry(&old[..10]).content else {
            unreachable!()
        };
        assert_eq!(FilePatch::of(&file_entry(&new[..11]), few), None);
        let rewritten: Vec<(u8, u32)> = (100..140).map(|i| (i, 65_536)).collect();
        assert_eq!(FilePatch::of(&file_entry(&rewritten), old_chunks), None);
    }

    #[test]
    fn deltas_and_patches_out_of_bounds_are_refused() {
        let send = |msg: Message| {
            let env = Envelope {
                from: "n1".into(),
                msg,
            };
            decode(&encode(&env, T, &keys()).unwrap(), T, "n1", &keys())
        };
        let delta = |len: u32, bases: usize, ops: Vec<DeltaOp>| {
            send(Message::Deltas {
                deltas: vec![ChunkDelta {
                    hash: [1; 32],
                    len,
                    bases: vec![[2; 32]; bases],
                    ops,
                }],
            })
        };
        let copy = |base: u8, len: u32| DeltaOp::Copy {
            base,
            offset: 0,
            len,
        };
        assert!(delta(100_000, 1, vec![copy(0, 100_000)]).is_ok());
        for bad in [
            delta(0, 1, vec![]),
            delta(crate::protocol::chunker::MAX_CHUNK + 1, 1, vec![]),
            delta(100_000, crate::protocol::delta::MAX_BASES + 1, vec![]),
            delta(100_000, 1, vec![copy(1, 10)]),
            delta(100_000, 1, vec![copy(0, 0)]),
            delta(100_000, 1, vec![DeltaOp::Data(vec![])]),
            delta(100_000, 1, vec![copy(0, 1); 100]),
            send(Message::Deltas {
                deltas: vec![ChunkDelta {
                    hash: [1; 32],
                    len: 10,
                    bases: vec![[2; 32], [2; 32]],
                    ops: vec![],
                }],
            }),
        ] {
            assert!(matches!(bad, Err(DecodeError::BadEntry { .. })), "{bad:?}");
        }
        let many = Message::Deltas {
            deltas: vec![
                ChunkDelta {
                    hash: [1; 32],
                    len: 10,
                    bases: vec![],
                    ops: vec![],
                };
                MAX_DELTAS + 1
            ],
        };
        assert_eq!(send(many), Err(DecodeError::TooMany(MAX_DELTAS + 1)));
        let old: Vec<(u8, u32)> = (0..40).map(|i| (i, 65_536)).collect();
        let Content::File { chunks, .. } = &file_entry(&old).content else {
            unreachable!()
        };
        let mut new = old.clone();
        new[5].0 = 99;
        let patch = FilePatch::of(&file_entry(&new), chunks).unwrap();
        let too_many = FilePatch {
            keep_front: MAX_CHUNKS_PER_FILE as u32,
            ..patch.clone()
        };
        let empty_chunk = FilePatch {
            chunks: vec![ChunkRef {
                hash: [1; 32],
                len: 0,
            }],
            ..patch
        };
        for bad in [too_many, empty_chunk] {
            let got = send(Message::Patch { patches: vec![bad] });
            assert!(matches!(got, Err(DecodeError::BadEntry { .. })), "{got:?}");
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&data, T, "n1", &keys());
        }

        #[test]
        fn signed_random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048), kind in 0u8..9) {
            let mut out = Vec::new();
            out.extend_from_slice(MAGIC);
            out.push(kind);
            out.push(0);
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(&body);
            let mac = Keys::mac(&keys().keys[0], T, &out);
            out.extend_from_slice(&mac);
            let _ = decode(&out, T, "n1", &keys());
        }
    }
}
