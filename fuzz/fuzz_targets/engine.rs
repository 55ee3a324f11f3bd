//! Accepted messages (same input layout as `decode_signed`) → the sync engine of a
//! fresh node: every manifest entry is offered with `handle_remote` and applied, then
//! changed locally, then replayed. Must never panic; a local change must produce a
//! version that descends from the one it replaced, and a replayed old entry must not
//! roll that change back. Summaries and repair steps are answered as if addressed to
//! this node. Patches are expanded against a chunk list with their base's
//! id (and offered like manifest entries), deltas rebuilt against zeroed bases.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqsync::engine::{Causality, ChunkRef, Content, Effect, Engine, Mode, Summary};
use std::time::Instant;
use mqsync::protocol::wire::{self, Message};
use mqsync_fuzz::{NODE, TOPIC, keys, signed_message};
use std::sync::LazyLock;

static KEYS: LazyLock<wire::Keys> = LazyLock::new(keys);

/// Carries out the engine's effects as a runtime whose applies all succeed would.
fn drain(eng: &mut Engine) -> usize {
    let mut applies = 0;
    while let Some(effect) = eng.poll_effect() {
        if let Effect::Apply { entry, .. } = effect {
            applies += 1;
            eng.handle_applied(&entry.path, &entry.version, true);
        }
    }
    applies
}

fuzz_target!(|data: &[u8]| {
    let Some(msg) = signed_message(data) else {
        return;
    };
    let Ok(env) = wire::decode(&msg, TOPIC, NODE, &KEYS) else {
        return;
    };
    let mut eng = Engine::new("n0", Mode::SendReceive, []);
    eng.set_clock(1_760_000_000_000);
    match env.msg {
        Message::Manifest { entries, .. } => {
            for e in &entries {
                eng.handle_remote(e.clone());
                drain(&mut eng);
            }
            for e in &entries {
                let before = eng.entry(&e.path).map(|c| c.version.clone());
                eng.handle_local(e.path.clone(), Content::Dir { mode: 0o700 });
                drain(&mut eng);
                let after = eng.entry(&e.path).expect("a local change is recorded");
                if let Some(before) = before {
                    assert!(
                        after.version == before
                            || after.version.compare(&before) == Causality::Greater,
                        "local change at {:?}: {:?} does not descend from {:?}",
                        e.path,
                        after.version,
                        before
                    );
                }
            }
            for e in &entries {
                let mine = eng.entry(&e.path).cloned();
                eng.handle_remote(e.clone());
                drain(&mut eng);
                if let Some(mine) = mine
                    && mine.version.compare(&e.version) == Causality::Greater
                {
                    assert_eq!(eng.entry(&e.path), Some(&mine), "replay rolled back");
                }
            }
        }
        Message::Digest { reply, buckets } => {
            eng.handle_digest(NODE, &buckets, reply, Instant::now());
            drain(&mut eng);
        }
        // Addressed to this node ("n0") or to anyone, and to someone else.
        Message::Summary {
            to,
            reply,
            round,
            groups,
        } => {
            let mut s = Summary {
                to: &to,
                reply,
                round,
                groups: &groups,
            };
            eng.handle_summary(NODE, &s, Instant::now());
            s.to = "n0";
            eng.handle_summary(NODE, &s, Instant::now());
            drain(&mut eng);
        }
        Message::Descent { to, items } => {
            eng.handle_descent(NODE, &to, &items, Instant::now());
            eng.handle_descent(NODE, "n0", &items, Instant::now());
            drain(&mut eng);
        }
        Message::Patch { patches } => {
            for p in patches {
                let kept = (p.keep_front as usize + p.keep_back as usize).min(4096);
                let old: Vec<ChunkRef> = (0..kept)
                    .map(|i| ChunkRef {
                        hash: [i as u8; 32],
                        len: 1 + i as u32,
                    })
                    .collect();
                let _ = p.clone().expand(&[]);
                let p = wire::FilePatch {
                    base: wire::chunk_list_id(&old),
                    ..p
                };
                if let Ok(Some(e)) = p.expand(&old) {
                    eng.handle_remote(e);
                    drain(&mut eng);
                }
            }
        }
        Message::Deltas { deltas } => {
            let zeros = vec![0u8; 1 << 20];
            for d in deltas {
                let bases: Vec<&[u8]> = d.bases.iter().map(|_| &zeros[..]).collect();
                if let Ok(chunk) = mqsync::protocol::delta::patch(&d, &bases) {
                    assert_eq!(chunk.len(), d.len as usize);
                }
            }
        }
        Message::Chunks { .. }
        | Message::Request { .. }
        | Message::Progress { .. }
        | Message::Part { .. } => {}
    }
});
