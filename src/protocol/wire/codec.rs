//! The framing of a message: the fixed header (magic, kind, flags, body size), the
//! postcard body that zstd may compress, and the MAC. `decode` checks the size bounds
//! before it allocates and hands the decoded message to `bounds` before returning it.
//! An [`extension`](super::extension) may follow the envelope in the body.

use super::bounds::check_message;
use super::extension::{self, FLAG_EXT};
use super::{Envelope, Keys, LAST_KIND};

pub const MAGIC: &[u8; 4] = b"MQS1";
pub const HEADER_LEN: usize = 10;
pub const MAC_LEN: usize = 32;
/// Largest payload accepted from the broker.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest body after decompression (the zstd-bomb bound).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Bodies smaller than this are sent uncompressed: zstd would not pay for itself.
const COMPRESS_MIN: usize = 512;
pub(super) const FLAG_ZSTD: u8 = 1;

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
    #[error("message kind {0} is newer than this version: ignored")]
    UnknownKind(u8),
    #[error("a repair region that does not exist")]
    BadRegion,
    #[error("entry {path}: {reason}")]
    BadEntry { path: String, reason: String },
    #[error("a part that is empty or lies beyond its message's size")]
    BadPart,
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
    let mut body = postcard::to_allocvec(env)?;
    let mut flags = 0u8;
    if let Some(ext) = extension::of(&env.msg) {
        // After the envelope: a node of the previous protocol stops reading before it.
        body.extend_from_slice(&postcard::to_allocvec(&ext)?);
        flags |= FLAG_EXT;
    }
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
    if kind > LAST_KIND {
        return Err(DecodeError::UnknownKind(kind));
    }
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
    let (mut env, rest): (Envelope, _) =
        postcard::take_from_bytes(body).map_err(|e| DecodeError::Body(e.to_string()))?;
    if env.from != topic_node {
        return Err(DecodeError::WrongSender {
            claimed: env.from,
            topic: topic_node.to_string(),
        });
    }
    if env.msg.kind() != kind {
        return Err(DecodeError::KindMismatch);
    }
    check_message(&env.msg)?;
    // Bytes after the envelope without the flag are ignored, as the previous protocol
    // ignored them: a later extension may use another flag.
    if flags & FLAG_EXT != 0 {
        let ext = postcard::from_bytes(rest).map_err(|e| DecodeError::Body(e.to_string()))?;
        extension::apply(&mut env.msg, ext)?;
    }
    Ok(env)
}
