//! The folder's writes to its index: confirmed entries (with what the disk held), the
//! tombstones forgotten, and chunk signatures, written in batches. A failed write (a
//! full or read-only state directory) keeps its records and is tried again each second.
//! Also the in-memory maps built from the index (chunk locations) and their compaction.

use super::folder::Folder;
use crate::engine::Hash;
use crate::fs::locations::ChunkLocations;
use crate::protocol::delta::Signature;
use crate::protocol::relpath::RelPath;
use crate::store::index::{Index, IndexError, Record};
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Chunk signatures collected before they are written on their own (about 256 MiB
/// of chunks).
const SIGNATURE_BATCH: usize = 1024;
/// How often a failed index write (a full state directory) is tried again.
const INDEX_RETRY: Duration = Duration::from_secs(1);
/// Fewest stored changes after which the per-file maps are rebuilt when idle.
const COMPACT_MIN_CHANGES: usize = 10_000;

pub(super) struct Records {
    folder: String,
    pub index: Index,
    /// Entries to write at the next flush.
    pub store: Vec<Record>,
    /// Paths to remove from the index at the next flush.
    pub forget: Vec<RelPath>,
    /// Signatures of large chunks pushed or received, to store with the next batch.
    pub signatures: Vec<(Hash, Signature)>,
    /// The index write that last failed, and when; the records stay in `store` and
    /// are written again at the next flush.
    failed: Option<(String, Instant)>,
    /// Entries stored since the in-memory maps were last rebuilt (see `compact`).
    pub stored_since_compact: usize,
}

impl Records {
    pub fn new(folder: String, index: Index) -> Self {
        Records {
            folder,
            index,
            store: vec![],
            forget: vec![],
            signatures: vec![],
            failed: None,
            stored_since_compact: 0,
        }
    }

    pub fn push(&mut self, r: Record) {
        self.store.push(r);
        self.stored_since_compact += 1;
    }

    /// The message of the failing index write, while it fails.
    pub fn error(&self) -> Option<&str> {
        self.failed.as_ref().map(|(m, _)| m.as_str())
    }

    /// A chunk signature stored earlier.
    pub fn signature(&self, hash: &Hash) -> Option<Signature> {
        self.index.signature(hash).ok().flatten()
    }

    /// Writes the chunk signatures collected so far.
    pub fn flush_signatures(&mut self) {
        if self.signatures.is_empty() {
            return;
        }
        let sigs = std::mem::take(&mut self.signatures);
        if let Err(e) = tokio::task::block_in_place(|| self.index.put_signatures(&sigs)) {
            // Only costs whole chunks instead of deltas later.
            warn!(folder = %self.folder, "storing chunk signatures failed: {e}");
        }
    }

    /// Writes what was collected; the chunks of entries that describe the disk become
    /// readable through `locations` once recorded.
    pub fn flush(&mut self, locations: &mut ChunkLocations) {
        // After a failed write, try again once a second, not at every turn of the loop
        // (each try reopens the database).
        if self
            .failed
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < INDEX_RETRY)
        {
            return;
        }
        // Signatures go with entries, or in batches: a transaction per chunk message
        // made a receiver of 512 MiB three times slower.
        if self.signatures.len() >= SIGNATURE_BATCH || !self.store.is_empty() {
            self.flush_signatures();
        }
        if self.forget.is_empty() && self.store.is_empty() {
            return;
        }
        if !self.forget.is_empty() {
            let paths = std::mem::take(&mut self.forget);
            if let Err(e) = tokio::task::block_in_place(|| self.index.remove(&paths)) {
                self.forget = paths;
                return self.write_failed(e);
            }
        }
        let batch = std::mem::take(&mut self.store);
        for r in &batch {
            if r.local.is_some() {
                locations.insert(&r.entry.path, &r.entry.content);
            }
        }
        if let Err(e) = tokio::task::block_in_place(|| self.index.put(&batch)) {
            // Kept and written again: a record dropped here would make the next start
            // take a received file for a local change.
            self.store = batch;
            return self.write_failed(e);
        }
        if self.failed.take().is_some() {
            info!(folder = %self.folder, "index writes work again");
        }
    }

    fn write_failed(&mut self, e: IndexError) {
        let msg = format!("index: {e}");
        if self.failed.as_ref().map(|(m, _)| m) != Some(&msg) {
            error!(folder = %self.folder, "index write failed, will retry: {e}");
            metrics::counter!("mqsync_index_errors_total", "folder" => self.folder.clone())
                .increment(1);
        }
        self.failed = Some((msg, Instant::now()));
    }
}

impl Folder {
    /// Where each chunk of the files on disk is, from the confirmed entries (borrowed,
    /// not cloned: a copy of every entry here was once the peak of a start).
    pub(super) fn rebuild_locations(&mut self) {
        let known = &self.local.known;
        self.locations = ChunkLocations::build(
            self.engine
                .entries()
                .filter(|e| known.contains_key(&e.path))
                .map(|e| (&e.path, &e.content)),
        );
    }

    /// Forgets the signatures of chunks no local file holds any more.
    pub(super) fn drop_stale_signatures(&mut self) {
        let locations = &self.locations;
        match self
            .records
            .index
            .retain_signatures(|h| locations.contains(h))
        {
            Ok(0) => {}
            Ok(n) => {
                debug!(folder = %self.cfg.id, dropped = n, "chunk signatures of chunks no file holds")
            }
            Err(e) => warn!(folder = %self.cfg.id, "pruning chunk signatures failed: {e}"),
        }
    }

    /// After many changes, rebuilds the per-file maps from their sorted contents. Filled
    /// one insert at a time (a first scan, a large sync), their B-tree nodes are about
    /// half empty; a start from the index builds them full. Rebuilding a million entries
    /// takes a fraction of a second, so it waits for a change of an eighth of the folder.
    pub(super) fn compact(&mut self) {
        let files = self.local.known.len().max(self.engine.present().0 as usize);
        if self.records.stored_since_compact < COMPACT_MIN_CHANGES.max(files / 8) {
            return;
        }
        let started = Instant::now();
        self.records.stored_since_compact = 0;
        self.engine.compact();
        self.local.compact();
        self.rebuild_locations();
        self.drop_stale_signatures();
        debug!(folder = %self.cfg.id, files, ms = started.elapsed().as_millis() as u64, "maps compacted");
    }
}
