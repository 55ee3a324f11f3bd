//! Writes the committed seed corpus, `fuzz/corpus/<target>/`, from real messages:
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus
//!
//! Every message is made by `wire::encode` with the fuzz key and checked to decode;
//! every `decode_signed` seed is checked to rebuild the exact same message. Rerun it
//! when the wire format changes (and commit the result).

use mqsync::engine::{BUCKETS, ChunkRef, Content, Entry, GROUPS, Region, VersionVector};
use mqsync::protocol::relpath::RelPath;
use mqsync::protocol::wire::{self, ChunkData, Envelope, Message};
use mqsync_fuzz::{
    CTL_COMPRESS, CTL_DECLARED_LEN, FLAG_ZSTD, NODE, TOPIC, keys, sign, signed_input_from_message,
    signed_message,
};
use std::path::{Path, PathBuf};

fn entry(path: &str, content: Content) -> Entry {
    Entry {
        attrs: None,
        path: RelPath::new(path).unwrap(),
        version: VersionVector::new().incremented("n1").incremented("n2"),
        modified_by: "n2".into(),
        changed_ms: 1_760_000_000_000,
        content,
    }
}

fn file(size: u64, n: u8) -> Content {
    Content::File {
        size,
        mode: 0o644,
        mtime_ns: 1_760_000_000_123_456_789,
        chunks: (0..n)
            .map(|i| ChunkRef {
                hash: [i.wrapping_mul(37).wrapping_add(1); 32],
                len: (size / n.max(1) as u64) as u32,
            })
            .collect(),
    }
}

fn env(msg: Message) -> Envelope {
    Envelope {
        from: NODE.into(),
        msg,
    }
}

/// Deterministic bytes that zstd cannot compress.
fn noise(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 32);
    let mut h = *blake3::hash(b"mqsync fuzz noise").as_bytes();
    while out.len() < n {
        out.extend_from_slice(&h);
        h = *blake3::hash(&h).as_bytes();
    }
    out.truncate(n);
    out
}

fn messages() -> Vec<(&'static str, Envelope)> {
    let mut buckets = vec![0u64; BUCKETS];
    for (i, b) in buckets.iter_mut().enumerate().step_by(97) {
        *b = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    let many: Vec<Entry> = (0..40)
        .map(|i| entry(&format!("dir{}/file-{i}.txt", i % 4), file(1000 + i, 1)))
        .collect();
    vec![
        (
            "manifest_live_file",
            env(Message::Manifest {
                live: true,
                entries: vec![entry("docs/report.txt", file(300_000, 2))],
            }),
        ),
        (
            "manifest_kinds",
            env(Message::Manifest {
                live: true,
                entries: vec![
                    entry("a", Content::Dir { mode: 0o755 }),
                    entry(
                        "a/link",
                        Content::Symlink {
                            target: "../x".into(),
                        },
                    ),
                    entry("a/gone.bin", Content::Deleted),
                    entry("a/empty", file(0, 0)),
                ],
            }),
        ),
        (
            "manifest_unicode",
            env(Message::Manifest {
                live: false,
                entries: vec![entry("with space/ü/日本語.md", file(12, 1))],
            }),
        ),
        (
            "manifest_answer_compressed",
            env(Message::Manifest {
                live: false,
                entries: many,
            }),
        ),
        (
            "manifest_empty",
            env(Message::Manifest {
                live: false,
                entries: vec![],
            }),
        ),
        (
            "chunks_small",
            env(Message::Chunks {
                chunks: vec![ChunkData {
                    hash: *blake3::hash(b"hello\n").as_bytes(),
                    data: b"hello\n".to_vec(),
                }],
            }),
        ),
        (
            "chunks_text_compressed",
            env(Message::Chunks {
                chunks: vec![ChunkData {
                    hash: [7; 32],
                    data: b"the quick brown fox ".repeat(150),
                }],
            }),
        ),
        (
            "chunks_noise_two",
            env(Message::Chunks {
                chunks: vec![
                    ChunkData {
                        hash: [1; 32],
                        data: noise(900),
                    },
                    ChunkData {
                        hash: [2; 32],
                        data: noise(100),
                    },
                ],
            }),
        ),
        (
            "digest_reply",
            env(Message::Digest {
                reply: true,
                buckets: buckets.clone(),
            }),
        ),
        (
            "digest_zero",
            env(Message::Digest {
                reply: false,
                buckets: vec![0; BUCKETS],
            }),
        ),
        (
            "summary_reply",
            env(Message::Summary {
                to: "n0".into(),
                reply: true,
                round: 7,
                groups: buckets[..GROUPS].to_vec(),
            }),
        ),
        (
            "descent",
            env(Message::Descent {
                to: "n0".into(),
                items: vec![
                    Region {
                        level: 1,
                        index: 3,
                        kids: buckets[..32].to_vec(),
                    },
                    Region {
                        level: 3,
                        index: 4000,
                        kids: vec![],
                    },
                ],
            }),
        ),
        (
            "request_any",
            env(Message::Request {
                to: "*".into(),
                hashes: vec![[3; 32], [4; 32]],
            }),
        ),
        (
            "request_node",
            env(Message::Request {
                to: "n2".into(),
                hashes: vec![[5; 32]],
            }),
        ),
        (
            "progress",
            env(Message::Progress {
                to: "n2".into(),
                last: [6; 32],
            }),
        ),
    ]
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::write(dir.join(name), data).unwrap();
}

fn fresh(root: &Path, target: &str) -> PathBuf {
    let dir = root.join(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let keys = keys();
    let decode = fresh(&root, "decode");
    let signed = fresh(&root, "decode_signed");
    let engine = fresh(&root, "engine");

    for (name, e) in messages() {
        let msg = wire::encode(&e, TOPIC, &keys).unwrap();
        assert_eq!(wire::decode(&msg, TOPIC, NODE, &keys).unwrap(), e, "{name}");
        write(&decode, name, &msg);
        let input = signed_input_from_message(&msg);
        assert_eq!(
            signed_message(&input).unwrap(),
            msg,
            "{name}: signer differs from wire::encode"
        );
        write(&signed, name, &input);
        if name.starts_with("manifest") || name.starts_with("digest") {
            write(&engine, name, &input);
        }
    }

    // Near misses for the raw decoder.
    let good = wire::encode(&messages()[0].1, TOPIC, &keys).unwrap();
    write(&decode, "bad_empty", b"");
    write(&decode, "bad_magic_only", b"MQS1");
    let mut flipped = good.clone();
    flipped[12] ^= 0x40;
    write(&decode, "bad_mac_flipped", &flipped);
    let mut short = good.clone();
    short.truncate(wire::HEADER_LEN + wire::MAC_LEN - 1);
    write(&decode, "bad_short", &short);

    // Signed but hostile bodies, to start the fuzzer at each decoding step.
    let keep = |name: &str, input: Vec<u8>| {
        let msg = signed_message(&input).unwrap();
        assert!(
            wire::decode(&msg, TOPIC, NODE, &keys).is_err(),
            "{name} must be refused"
        );
        write(&signed, name, &input);
    };
    let base = signed_input_from_message(&good);
    // zstd frame of 1 MiB of zeros, declared as 1 KiB: the bomb bound.
    let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
    let mut input = vec![2, FLAG_ZSTD, CTL_DECLARED_LEN];
    input.extend_from_slice(&1024u32.to_be_bytes());
    input.extend_from_slice(&bomb);
    keep("hostile_zstd_bomb", input);
    // Declared length over the 8 MiB limit.
    let mut input = base.clone();
    input[2] |= CTL_DECLARED_LEN;
    input[3..7].copy_from_slice(&(9u32 << 20).to_be_bytes());
    keep("hostile_declared_huge", input);
    // Header kind that does not match the body.
    let mut input = base.clone();
    input[0] = 3;
    keep("hostile_kind_mismatch", input);
    // Body claiming another sender.
    let other = Envelope {
        from: "n2".into(),
        msg: Message::Request {
            to: "*".into(),
            hashes: vec![],
        },
    };
    let msg = wire::encode(&other, TOPIC, &keys).unwrap();
    keep("hostile_wrong_sender", signed_input_from_message(&msg));
    // A traversal path, spliced into an otherwise valid manifest body.
    let ok = entry("xx/passwd", Content::Deleted);
    let msg = wire::encode(
        &env(Message::Manifest {
            live: true,
            entries: vec![ok],
        }),
        TOPIC,
        &keys,
    )
    .unwrap();
    let mut input = signed_input_from_message(&msg);
    let at = input.windows(2).position(|w| w == b"xx").unwrap();
    input[at..at + 2].copy_from_slice(b"..");
    keep("hostile_traversal", input);
    // A file entry whose size is not what its chunks hold (a huge reservation).
    let liar = Content::File {
        size: 1 << 50,
        mode: 0o644,
        mtime_ns: 0,
        chunks: [ChunkRef {
            hash: [9; 32],
            len: 1 << 20,
        }]
        .into(),
    };
    let msg = wire::encode(
        &env(Message::Manifest {
            live: true,
            entries: vec![entry("huge.iso", liar)],
        }),
        TOPIC,
        &keys,
    )
    .unwrap();
    keep("hostile_file_size", signed_input_from_message(&msg));
    // A manifest claiming far more entries than it holds.
    let mut input = vec![1, 0, 0, 0, 0, 0, 0];
    input.extend_from_slice(&[2, b'n', b'1', 0, 0xff, 0xff, 0xff, 0x7f]);
    keep("hostile_entry_count", input);
    // Raw sign() use: an uncompressed body under the zstd flag.
    let raw = sign(4, FLAG_ZSTD, 4, b"junk");
    assert!(wire::decode(&raw, TOPIC, NODE, &keys).is_err());
    let mut input = vec![4, FLAG_ZSTD, 0, 0, 0, 0, 4];
    input.extend_from_slice(b"junk");
    keep("hostile_not_zstd", input);
    let _ = CTL_COMPRESS;

    // Known crashes, kept out of the seed dirs so that scripts/fuzz stays green until
    // they are fixed (fuzz/README.md, "Known crashes").
    let repro = Path::new(env!("CARGO_MANIFEST_DIR")).join("reproducers");
    let engine_repro = fresh(&repro, "engine");
    // A manifest entry whose version counter is u64::MAX: a local change to that path
    // overflows `VersionVector::incremented`.
    let max: std::collections::BTreeMap<String, u64> = [("n2".to_string(), u64::MAX)].into();
    let version: VersionVector =
        postcard::from_bytes(&postcard::to_allocvec(&max).unwrap()).unwrap();
    let msg = wire::encode(
        &env(Message::Manifest {
            live: true,
            entries: vec![Entry {
                version,
                ..entry("f", Content::Deleted)
            }],
        }),
        TOPIC,
        &keys,
    )
    .unwrap();
    // Decoding now refuses such a counter (MAX_VERSION_COUNTER): kept as a regression
    // input that must neither crash nor get through.
    assert!(wire::decode(&msg, TOPIC, NODE, &keys).is_err());
    write(
        &engine_repro,
        "crash-version-counter-overflow",
        &signed_input_from_message(&msg),
    );

    let relpath = fresh(&root, "relpath");
    let long = "x".repeat(255);
    let too_long = "x".repeat(256);
    let deep = "abcdefg/".repeat(511) + "z";
    let paths: Vec<(&str, Vec<u8>)> = vec![
        ("ok_simple", b"a/b".to_vec()),
        ("ok_file", b"report.txt".to_vec()),
        ("ok_hidden", b".hidden/.b/c..d".to_vec()),
        ("ok_unicode", "with space/ü/日本語.md".as_bytes().to_vec()),
        ("ok_long_component", long.as_bytes().to_vec()),
        ("ok_deep", deep.as_bytes().to_vec()),
        ("ok_backslash", b"a\\b/c".to_vec()),
        ("ok_dots3", b".../x".to_vec()),
        ("bad_parent", b"../x".to_vec()),
        ("bad_inner_parent", b"a/../../x".to_vec()),
        ("bad_absolute", b"/etc/passwd".to_vec()),
        ("bad_empty_component", b"a//b".to_vec()),
        ("bad_trailing_slash", b"a/".to_vec()),
        ("bad_dot", b"a/./b".to_vec()),
        ("bad_nul", b"a\0b".to_vec()),
        ("bad_long_component", too_long.as_bytes().to_vec()),
        ("bad_too_long", "a/".repeat(2100).into_bytes()),
        ("bad_not_utf8", b"a/\xff\xfe/b".to_vec()),
        ("bad_empty", b"".to_vec()),
    ];
    for (name, p) in paths {
        write(&relpath, name, &p);
    }

    let config = fresh(&root, "config");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for name in ["minimal.toml", "mqsync.toml"] {
        let text = std::fs::read(repo.join("config").join(name)).unwrap();
        write(&config, name, &text);
    }
    let snippets: &[(&str, &str)] = &[
        (
            "broker_url.toml",
            "node_id = \"n1\"\n[broker]\nurl = \"mqtts://broker.example:8883\"\n\n[[folder]]\nid = \"f\"\npath = \"/srv/f\"\nmode = \"send-receive\"\n",
        ),
        ("bad_type.toml", "[broker]\nurl = 3\n"),
        (
            "bad_unknown_key.toml",
            "[[folder]]\nid = \"f\"\npath = \"/x\"\nnope = true\n",
        ),
        (
            "bad_unicode_span.toml",
            "# ü日本\n[broker]\nurl = \"ü://\"\n",
        ),
        ("bad_syntax.toml", "[[folder]\nid = \n"),
    ];
    for (name, text) in snippets {
        write(&config, name, text.as_bytes());
    }
    println!("corpus written to {}", root.display());
}
