//! Shared pieces of the mqsync fuzz targets and of the corpus generator
//! (`examples/gen_corpus.rs`): the fixed key and topic, and a signer that builds a
//! correctly authenticated message around any body, following the layout in
//! docs/PROTOCOL.md (`wire/keys.rs` keeps its MAC helper private).

use mqsync::protocol::wire::{HEADER_LEN, Keys, MAGIC};

/// Topic every fuzzed message is "received" on; its last level is [`NODE`].
pub const TOPIC: &str = "mqsync/fuzz/v1/n1";
/// The sending node named by [`TOPIC`].
pub const NODE: &str = "n1";
/// Text of the fixed group key file.
pub const KEY_TEXT: &[u8] = b"mqsync fuzz key\n";

/// Header flag: body is zstd-compressed (docs/PROTOCOL.md, "Message layout").
pub const FLAG_ZSTD: u8 = 1;

/// `decode_signed` input layout: `[kind, flags, ctl, len u32 BE (4 bytes), body...]`.
pub const SIGNED_PREFIX: usize = 7;
/// `ctl` bit: when `flags` has [`FLAG_ZSTD`], compress `body` with zstd level 1 (as
/// `wire::encode` does) instead of sending `body` as the raw compressed payload.
pub const CTL_COMPRESS: u8 = 1;
/// `ctl` bit: declare the length from the input's 4 length bytes instead of the true
/// uncompressed body length.
pub const CTL_DECLARED_LEN: u8 = 2;

pub fn key() -> [u8; 32] {
    Keys::derive(KEY_TEXT)
}

pub fn keys() -> Keys {
    Keys::new(vec![key()]).expect("one key")
}

/// BLAKE3 keyed MAC over `u64_le(len(topic)) || topic || signed`.
pub fn mac(key: &[u8; 32], topic: &str, signed: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(&(topic.len() as u64).to_le_bytes());
    h.update(topic.as_bytes());
    h.update(signed);
    *h.finalize().as_bytes()
}

/// A complete message: header, `payload` as is, MAC under the fixed key on [`TOPIC`].
pub fn sign(kind: u8, flags: u8, declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + 32);
    out.extend_from_slice(MAGIC);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&declared_len.to_be_bytes());
    out.extend_from_slice(payload);
    let m = mac(&key(), TOPIC, &out);
    out.extend_from_slice(&m);
    out
}

/// Turns a `decode_signed` input into a signed message, or `None` if it is too short.
pub fn signed_message(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < SIGNED_PREFIX {
        return None;
    }
    let (kind, flags, ctl) = (data[0], data[1], data[2]);
    let given_len = u32::from_be_bytes([data[3], data[4], data[5], data[6]]);
    let body = &data[SIGNED_PREFIX..];
    let compressed;
    let payload = if flags & FLAG_ZSTD != 0 && ctl & CTL_COMPRESS != 0 {
        compressed = zstd::bulk::compress(body, 1).ok()?;
        &compressed[..]
    } else {
        body
    };
    let declared = if ctl & CTL_DECLARED_LEN != 0 {
        given_len
    } else {
        body.len() as u32
    };
    Some(sign(kind, flags, declared, payload))
}

/// The `decode_signed` input that [`signed_message`] turns back into `msg`, a message
/// made by `wire::encode` with [`keys`] on [`TOPIC`]: its header and its uncompressed
/// body, with [`CTL_COMPRESS`] set when the body was compressed.
pub fn signed_input_from_message(msg: &[u8]) -> Vec<u8> {
    assert!(msg.len() >= HEADER_LEN + 32 && &msg[..4] == MAGIC);
    let (kind, flags) = (msg[4], msg[5]);
    let len = u32::from_be_bytes([msg[6], msg[7], msg[8], msg[9]]);
    let payload = &msg[HEADER_LEN..msg.len() - 32];
    let (ctl, body) = if flags & FLAG_ZSTD != 0 {
        let body = zstd::bulk::decompress(payload, len as usize).expect("valid zstd");
        (CTL_COMPRESS, body)
    } else {
        (0, payload.to_vec())
    };
    let mut out = vec![kind, flags, ctl];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    out
}
