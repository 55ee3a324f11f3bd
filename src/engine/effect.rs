//! What the engine tells its runtime: the effects it returns, who caused an apply
//! (`Origin`), how the runtime reports a failed apply (`Failure`), and the order in
//! which entries are published.

use super::{Chunks, Entry, Region};
use crate::protocol::relpath::RelPath;
use std::time::Duration;

/// How long a failed apply waits before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Who caused an apply: the node whose message carried the change (the one to ask
/// for its chunks; `*` asks anyone), and whether that message was live (its chunks
/// follow it unasked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub node: String,
    pub live: bool,
}

impl Origin {
    /// No particular node: a change this engine decided itself (a conflict with a
    /// local edit, a resync's revert).
    pub fn any() -> Self {
        Origin {
            node: "*".into(),
            live: false,
        }
    }
}

/// How an apply failed, as the runtime judged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Worth trying again (a full disk, a permission, a directory not yet empty).
    /// `needs_space`: tried again only once this many bytes are free. `reported`:
    /// counts as a failure in status (a directory waiting for its entries does not).
    Retry {
        needs_space: Option<u64>,
        reported: bool,
    },
    /// Given up: the version stays pending no more (a peer offers it again later).
    Refused,
}

/// An action for the runtime to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Publish this local change in a manifest. `previous`: the chunk list it replaces
    /// (what receivers hold), when both are files: the change can go out as a patch
    /// of it, and its new chunks as deltas.
    Announce {
        entry: Entry,
        previous: Option<Chunks>,
    },
    /// Persist this confirmed entry in the index.
    Store(Entry),
    /// Make the disk hold `entry` (fetching chunks as needed, from `from`), moving the
    /// current local file to `conflict_copy` first when set; then report
    /// `handle_applied` or `handle_apply_failed`. `needs_space`: a retry after a full
    /// disk, to start only once the disk has that many bytes free (otherwise report
    /// it failed again at once).
    Apply {
        entry: Entry,
        conflict_copy: Option<RelPath>,
        from: Origin,
        needs_space: Option<u64>,
    },
    /// Abandon an unfinished `Apply` for this path.
    Cancel(RelPath),
    /// Drop this expired tombstone from the index.
    Forget(RelPath),
    /// Publish these entries (an answer to a digest that differs from ours).
    SendEntries(Vec<Entry>),
    /// Publish our version-1 digest (while version-1 peers are around); `reply` asks
    /// peers to answer with theirs.
    SendDigest { reply: bool },
    /// Publish our summary (these group values), to be answered by `to` (or by
    /// anyone: `"*"`); `reply`: even when nothing differs.
    SendSummary {
        to: String,
        reply: bool,
        round: u32,
        groups: Vec<u64>,
    },
    /// Publish a step of the repair exchange with `to` (`Message::Descent`).
    SendDescent { to: String, items: Vec<Region> },
}

/// The order entries are published in, so that a receiver can apply them as they
/// come: changes before deletions, parents before their children, and deletions
/// deepest first (a directory's entries go before the directory).
pub fn announce_order(a: &Entry, b: &Entry) -> std::cmp::Ordering {
    let (ad, bd) = (a.content.is_deleted(), b.content.is_deleted());
    ad.cmp(&bd).then_with(|| {
        if ad {
            b.path
                .depth()
                .cmp(&a.path.depth())
                .then(a.path.cmp(&b.path))
        } else {
            a.path.cmp(&b.path)
        }
    })
}
