use super::codec::FLAG_ZSTD;
use super::*;
use crate::engine::{Content, VersionVector};
use crate::protocol::delta::DeltaOp;
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
                attrs: None,
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
