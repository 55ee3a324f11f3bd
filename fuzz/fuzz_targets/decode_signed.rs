//! A body signed correctly under the fixed key (see `mqsync_fuzz::signed_message` for
//! the input layout), so mutations get past the MAC into the size checks, zstd
//! decompression, postcard decoding, path validation and the per-kind limits.
//! Must never panic; an accepted message must satisfy every documented bound and
//! survive an encode/decode round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqsync::protocol::chunker::MAX_CHUNK;
use mqsync::protocol::delta::{DeltaOp, MAX_BASES};
use mqsync::engine::{BUCKETS, Content, GROUPS};
use mqsync::protocol::relpath::{MAX_COMPONENT_BYTES, MAX_PATH_BYTES};
use mqsync::protocol::wire::{
    self, MAX_CHUNKS_PER_FILE, MAX_DELTAS, MAX_ENTRIES, MAX_MESSAGE_BYTES, MAX_REGIONS,
    MAX_REQUEST_HASHES,
    Message,
};
use mqsync_fuzz::{NODE, TOPIC, keys, signed_message};
use std::sync::LazyLock;

static KEYS: LazyLock<wire::Keys> = LazyLock::new(keys);

fuzz_target!(|data: &[u8]| {
    let Some(msg) = signed_message(data) else {
        return;
    };
    let Ok(env) = wire::decode(&msg, TOPIC, NODE, &KEYS) else {
        return;
    };
    assert!(msg.len() <= MAX_MESSAGE_BYTES);
    assert_eq!(env.from, NODE);
    match &env.msg {
        Message::Manifest { entries, .. } => {
            assert!(entries.len() <= MAX_ENTRIES);
            for e in entries {
                let p = e.path.as_str();
                assert!(!p.is_empty() && p.len() <= MAX_PATH_BYTES, "{p:?}");
                assert!(!p.starts_with('/') && !p.contains('\0'), "{p:?}");
                for c in p.split('/') {
                    assert!(!c.is_empty() && c != "." && c != "..", "{p:?}");
                    assert!(c.len() <= MAX_COMPONENT_BYTES, "{p:?}");
                }
                if let Content::File { size, chunks, .. } = &e.content {
                    // A file is exactly its chunks, each one the chunker could make.
                    assert!(chunks.len() <= MAX_CHUNKS_PER_FILE);
                    assert!(chunks.iter().all(|c| c.len >= 1 && c.len <= MAX_CHUNK));
                    let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
                    assert_eq!(total, *size, "{p:?}");
                }
            }
        }
        Message::Request { hashes, .. } => assert!(hashes.len() <= MAX_REQUEST_HASHES),
        Message::Digest { buckets, .. } => assert_eq!(buckets.len(), BUCKETS),
        Message::Summary { groups, .. } => assert_eq!(groups.len(), GROUPS),
        Message::Descent { items, .. } => {
            assert!(items.len() <= MAX_REGIONS && items.iter().all(|r| r.is_valid()))
        }
        Message::Patch { patches } => {
            assert!(patches.len() <= MAX_ENTRIES);
            for p in patches {
                let kept = p.keep_front as usize + p.keep_back as usize;
                assert!(kept + p.chunks.len() <= MAX_CHUNKS_PER_FILE);
                assert!(p.chunks.iter().all(|c| c.len >= 1 && c.len <= MAX_CHUNK));
            }
        }
        Message::Deltas { deltas } => {
            assert!(deltas.len() <= MAX_DELTAS);
            for d in deltas {
                assert!(d.len >= 1 && d.len <= MAX_CHUNK);
                assert!(d.bases.len() <= MAX_BASES);
                for op in &d.ops {
                    match op {
                        DeltaOp::Copy { base, len, .. } => {
                            assert!(*len > 0 && usize::from(*base) < d.bases.len())
                        }
                        DeltaOp::Data(data) => assert!(!data.is_empty()),
                    }
                }
            }
        }
        Message::Part {
            total,
            offset,
            data,
            ..
        } => {
            assert!(!data.is_empty() && *total as usize <= MAX_MESSAGE_BYTES);
            assert!(*offset as usize + data.len() <= *total as usize);
        }
        Message::Chunks { .. } | Message::Progress { .. } => {}
    }
    // What was accepted encodes again (possibly compressed differently) and decodes to
    // the same envelope.
    if let Ok(again) = wire::encode(&env, TOPIC, &KEYS) {
        let back = wire::decode(&again, TOPIC, NODE, &KEYS).expect("re-encoded message decodes");
        assert_eq!(back, env);
    }
});
