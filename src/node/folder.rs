//! One folder's task: opens the index and the parts, then routes events (watcher,
//! network, timers, hook) to them and the engine's effects to where they are carried
//! out. It holds no values between steps: parts own their state.

use super::apply::{ApplyQueue, apply_slots};
use super::health::{Facts, Health};
use super::local::Local;
use super::outbound::{LocalChunks, Outbound};
use super::pending::PendingPublisher;
use super::records::Records;
use super::shared_ignore::SharedIgnore;
use super::watching::{WatchResult, Watching};
use super::{FolderSettings, NodeError, NodeSettings, index_path, now_ms};
use crate::engine::{Chunks, Effect, Engine, Entry, Hash};
use crate::fs::applier::Applier;
use crate::fs::attrs::{Keep, Ownership, may_chown};
use crate::fs::ignore::{IGNORE_FILE, Ignore};
use crate::fs::locations::ChunkLocations;
use crate::fs::watcher::FsEvent;
use crate::ops::resync::{self, Verdict};
use crate::ops::status::State;
use crate::protocol::relpath::RelPath;
use crate::protocol::topics::Topics;
use crate::store::index::{Index, LocalMeta, Record};
use crate::transport::{self, ConnectSettings, NetEvent};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// How long a fetch may wait for pushed chunks before asking for them.
const FETCH_STALL: Duration = Duration::from_secs(3);
/// Network events taken in one loop turn before staged files are committed.
const MAX_BATCH_EVENTS: usize = 256;
/// How often a paused folder looks for its root and marker again.
const ROOT_CHECK: Duration = Duration::from_secs(2);
/// The loop's timer: timeouts, stalled fetches, status.
const TICK: Duration = Duration::from_millis(200);

pub(super) struct Folder {
    pub cfg: FolderSettings,
    connect: ConnectSettings,
    pub engine: Engine,
    /// Where each chunk can be read locally (verified on read).
    pub locations: ChunkLocations,
    pub local: Local,
    pub watching: Watching,
    pub applies: ApplyQueue,
    pub out: Outbound,
    pub records: Records,
    pub health: Health,
    /// The retained list of what this node has not brought in sync.
    pub pending: PendingPublisher,
    connected: bool,
    /// When the last chunk message arrived (from anyone).
    pub last_chunk_at: Option<Instant>,
    /// Messages arriving in parts (larger than their sender's `max_message_bytes`).
    pub parts: crate::protocol::wire::parts::Reassembly,
    last_resync: Option<Instant>,
    /// Effects are being carried out (see `process_with`), and the new chunks found by
    /// scans made meanwhile, to push with the announcements of the outer call.
    processing: bool,
    nested_fresh: HashSet<Hash>,
    /// When the folder was opened: start-up time is reported with the first scan.
    started: Instant,
}

impl Folder {
    pub fn open(s: &NodeSettings, f: &FolderSettings) -> Result<Self, NodeError> {
        let started = Instant::now();
        let path = index_path(&s.state_dir, &f.id);
        let dir = path.parent().unwrap_or(&s.state_dir);
        std::fs::create_dir_all(dir).map_err(|source| NodeError::Io {
            folder: f.id.clone(),
            path: dir.to_path_buf(),
            source,
        })?;
        let index_error = |source| NodeError::Index {
            folder: f.id.clone(),
            source,
        };
        let index = Index::open(&path).map_err(index_error)?;
        let records = index.load().map_err(index_error)?;
        debug!(folder = %f.id, records = records.len(), ms = started.elapsed().as_millis() as u64, "index loaded");
        Ignore::new(&f.ignore).map_err(|source| NodeError::Ignore {
            folder: f.id.clone(),
            source,
        })?;
        // Records come sorted by path: collecting them builds full B-tree nodes, where
        // inserting one by one leaves most nodes half empty.
        let known: BTreeMap<RelPath, LocalMeta> = records
            .iter()
            .filter_map(|r| Some((r.entry.path.clone(), r.local?)))
            .collect();
        let file = RelPath::new(IGNORE_FILE)
            .ok()
            .and_then(|p| known.get(&p).copied());
        let (shared, ignore, problems) = SharedIgnore::load(&f.path, &f.ignore, file);
        let patterns = shared.patterns();
        let entries: Vec<Entry> = records.into_iter().map(|r| r.entry).collect();
        let topics = Topics {
            prefix: s.topic_prefix.clone(),
            folder: f.id.clone(),
        };
        let mut engine = Engine::new(s.node_id.clone(), f.mode, entries)
            .with_intervals(f.digest_interval, f.rescan_interval);
        if let Some(ttl) = f.tombstone_ttl {
            engine = engine.with_tombstone_ttl(ttl.as_millis() as u64);
        }
        let cannot_chown = f.keep.ownership != Ownership::None && !may_chown();
        let mut folder = Folder {
            connect: ConnectSettings {
                client_id: format!("{}-{}", s.connect.client_id, f.id),
                ..s.connect.clone()
            },
            engine,
            locations: ChunkLocations::default(),
            local: Local::new(
                f.id.clone(),
                f.path.clone(),
                (f.debounce, f.rescan_interval),
                (ignore.clone(), shared),
                known,
                f.max_delete_percent,
            )
            .with_keep(Keep {
                // Not read where they cannot be set: see `Keep::carry_owner`.
                ownership: if cannot_chown {
                    Ownership::None
                } else {
                    f.keep.ownership
                },
                carry_owner: cannot_chown || f.keep.ownership == Ownership::None,
                ..f.keep
            }),
            applies: ApplyQueue::new(
                Applier::new(f.path.clone(), ignore).with_keep(f.keep, may_chown()),
                apply_slots(crate::sys::rlimit::open_files(), s.folders.len()),
            )
            .with_observer(f.applied.clone()),
            watching: Watching::new(f.id.clone(), f.watch, f.poll_interval),
            health: Health::new(
                f.id.clone(),
                s.node_id.clone(),
                s.state_dir.clone(),
                s.keys.clone(),
                topics.status(&s.node_id),
                s.connect.tls.is_none(),
                &patterns,
            )
            .with_cert_expiry(s.client_cert_expires_ms),
            pending: PendingPublisher::new(topics.pending(&s.node_id), s.keys.clone()),
            out: Outbound::new(
                s.node_id.clone(),
                f.id.clone(),
                topics,
                s.keys.clone(),
                f.compression,
                s.connect.max_message,
            ),
            records: Records::new(f.id.clone(), index),
            connected: false,
            last_chunk_at: None,
            parts: Default::default(),
            last_resync: None,
            processing: false,
            nested_fresh: HashSet::new(),
            started,
            cfg: f.clone(),
        };
        if cannot_chown {
            let note = format!(
                "ownership = \"{}\" but the daemon does not run as root: received files belong to its own user (contents, permissions and times still sync)",
                f.keep.ownership
            );
            warn!(folder = %f.id, "{note}");
            folder.health.notes.push(note);
        }
        folder.health.last_error = problems.into_iter().next();
        folder.rebuild_locations();
        folder.drop_stale_signatures();
        debug!(folder = %f.id, ms = started.elapsed().as_millis() as u64, "folder state built");
        Ok(folder)
    }

    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        mut early_watch: Option<tokio::task::JoinHandle<WatchResult>>,
    ) -> Result<(), NodeError> {
        let topics = &self.out.topics;
        let will = self.health.offline(&self.facts(), false);
        let (publisher, mut net) = transport::connect(
            &self.connect,
            vec![topics.data_filter(), topics.cmd()],
            Some(topics.data(&self.out.node)),
            Some((topics.status(&self.out.node), will)),
        );
        self.out.publisher = Some(publisher);
        self.publish_status(State::Starting);

        // The watcher set up while the index loaded serves only a root that was in place
        // at once: one that appears later (a mount) gets a watcher of its own.
        while !self.check_root() {
            if let Some(h) = early_watch.take() {
                h.abort();
            }
            self.publish_status(State::Error);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
        self.local.probe_case();
        let mut fs_rx = self.start_watching(early_watch.take()).await;
        debug!(folder = %self.cfg.id, ms = self.started.elapsed().as_millis() as u64, "watcher ready");
        self.publish_status(State::Scanning);
        self.engine.set_clock(now_ms());
        self.engine.start(Instant::now());
        let (scan_started, started_ms) = (Instant::now(), now_ms());
        self.full_scan(true);
        self.local.rescan_after(Instant::now());
        self.report_polled(started_ms);
        info!(
            folder = %self.cfg.id,
            files = self.engine.entries().count(),
            scan_ms = scan_started.elapsed().as_millis() as u64,
            since_start_ms = self.started.elapsed().as_millis() as u64,
            "initial scan done"
        );

        let mut tick = tokio::time::interval(TICK);
        let mut last_status = Instant::now();
        let mut last_root_check = Instant::now();
        let (hook_tx, mut hook_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
        loop {
            self.engine.set_clock(now_ms());
            let publisher = self.out.publisher.clone();
            let (pump_more, want_room) = self.out.start_turn();
            tokio::select! {
                // Out of budget, not out of room: take what has arrived and push on.
                _ = std::future::ready(()), if pump_more => {}
                ev = net.recv() => match ev {
                    Some(ev) => self.on_net(ev),
                    None => break,
                },
                ev = fs_rx.recv() => if let Some(ev) = ev { self.on_fs(ev) },
                _ = async { if let Some(p) = &publisher { p.drained().await } }, if want_room => {}
                _ = tick.tick() => {
                    let now = Instant::now();
                    if self.health.paused.is_some() && now.duration_since(last_root_check) >= ROOT_CHECK {
                        last_root_check = now;
                        if self.check_root() {
                            // The volume is back (a remount replaces the watched inode).
                            info!(folder = %self.cfg.id, "folder root and marker are back; resuming");
                            fs_rx = self.restart_watcher();
                            self.local.rescan_due = true;
                            self.ask_peers_to_compare();
                        }
                    }
                    self.on_tick(now);
                    if now.duration_since(last_status) >= self.cfg.status_interval {
                        last_status = now;
                        self.health.last_status = None;
                    }
                    self.publish_status(self.current_state());
                    self.publish_pending(now);
                }
                Some(res) = hook_rx.recv() => {
                    self.applies.hook_running = false;
                    if let Err(e) = res {
                        warn!(folder = %self.cfg.id, "{e}");
                        self.health.last_error = Some(e);
                    }
                }
                _ = shutdown.changed() => break,
            }
            self.maybe_run_hook(&hook_tx);
            self.report_applied();
            self.reload_ignore();
            // Drain what else is already queued before the expensive steps.
            while let Ok(ev) = fs_rx.try_recv() {
                self.on_fs(ev);
            }
            if std::mem::take(&mut self.local.rescan_due) {
                self.full_scan(false);
            }
            if let Some((paths, closed)) =
                self.local.take_dirty(Instant::now(), &self.applies.applier)
            {
                self.scan_paths(&paths, Some(&closed));
            }
            // Take what else has arrived, so the files it completes commit together.
            for _ in 0..MAX_BATCH_EVENTS {
                if self.applies.commit_frees_slots() {
                    break;
                }
                match net.try_recv() {
                    Ok(ev) => self.on_net(ev),
                    Err(_) => break,
                }
            }
            self.commit_applies();
            self.process();
            // This turn's chunk requests, one message per node asked (ahead of the
            // chunks this node pushes, which would queue before them).
            self.out.flush_requests();
            self.pump_chunks();
        }
        // Leave no temp files and say goodbye so peers do not wait for us.
        self.commit_applies();
        self.process();
        let retrying: Vec<RelPath> = self.engine.retrying().cloned().collect();
        for p in retrying {
            self.applies.cancel(&p);
        }
        self.records.flush(&mut self.locations);
        let bytes = self.health.offline(&self.facts(), true);
        if let Some(p) = &self.out.publisher {
            p.publish(self.out.topics.status(&self.out.node), bytes, true);
            p.disconnect().await;
        }
        Ok(())
    }

    fn on_fs(&mut self, ev: FsEvent) {
        self.on_watch_event(&ev);
        if let Some(e) = self.local.on_fs(ev, &mut self.applies.applier) {
            self.health.last_error = Some(e);
        }
    }

    fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Connected => {
                info!(folder = %self.cfg.id, "connected to broker");
                self.connected = true;
                let h = &mut self.health;
                if h.last_error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("broker:"))
                {
                    h.last_error = None;
                }
                h.last_status = None;
                self.pending.invalidate();
                self.engine.handle_connected(Instant::now());
                self.process();
            }
            NetEvent::Disconnected { reason, fatal } => {
                let h = &mut self.health;
                if fatal {
                    error!(folder = %self.cfg.id, "{reason}");
                } else if self.connected
                    || h.last_error
                        .as_deref()
                        .and_then(|e| e.strip_prefix("broker: "))
                        != Some(reason.as_str())
                {
                    // Losing the connection, or a failed attempt unlike the previous one.
                    warn!(folder = %self.cfg.id, "{reason}");
                } else {
                    debug!(folder = %self.cfg.id, "{reason}");
                }
                self.connected = false;
                h.last_error = Some(format!("broker: {reason}"));
                self.parts.clear();
                self.engine.handle_disconnected();
            }
            NetEvent::PacketLimit(report) => {
                match &report {
                    Some(r) => error!(folder = %self.cfg.id, "{r}"),
                    None => {
                        info!(folder = %self.cfg.id, "the broker accepted a packet as large as the one it seemed to refuse: packet size error cleared")
                    }
                }
                self.health.packet_limit = report;
                self.health.last_status = None;
                self.publish_status(self.current_state());
            }
            NetEvent::Message { topic, payload } if topic == self.out.topics.cmd() => {
                self.on_command(&payload);
            }
            NetEvent::Message { topic, payload } => self.on_data(&topic, &payload),
        }
    }

    /// A JSON command from the public cmd topic. Only `resync` exists: it can only make
    /// nodes compare and repair, so it needs no key, but it is rate-limited. The answer
    /// (accepted, or ignored and why) goes into the status document.
    fn on_command(&mut self, payload: &[u8]) {
        let now = Instant::now();
        let answer = match resync::judge(payload, &self.out.node, self.last_resync, now) {
            Verdict::NotForMe => return,
            Verdict::Malformed(e) => {
                warn!(folder = %self.cfg.id, "ignoring malformed command: {e}");
                return;
            }
            Verdict::UnknownOp(op) => {
                warn!(folder = %self.cfg.id, %op, "ignoring unknown command");
                return;
            }
            Verdict::Resync(answer) => answer,
        };
        let accepted = answer.accepted;
        if let Some(why) = &answer.reason {
            warn!(folder = %self.cfg.id, "resync ignored: {why}");
        }
        // Answered before the work: a full scan of a large folder takes a while.
        self.health.resync = Some(answer);
        self.publish_status(self.current_state());
        if accepted {
            self.last_resync = Some(now);
            self.resync();
        }
    }

    /// Rescans everything (applying held mass deletions, which the operator's command
    /// confirms), reverts local changes of a receive-only folder, and compares full state
    /// with every peer.
    fn resync(&mut self) {
        let held = self.local.guard.held();
        info!(folder = %self.cfg.id, held_deletes = held, "resync requested");
        if held > 0 {
            self.health.last_error = None;
        }
        self.local.resyncing = true;
        self.full_scan(false);
        self.local.resyncing = false;
        self.engine.handle_resync();
        self.process();
        self.ask_peers_to_compare();
        self.health.last_status = None;
    }

    /// The timer: deletions the guard lets go, rechecks of new directories, fetches
    /// overtaken or stalled, and the engine's own timeouts.
    fn on_tick(&mut self, now: Instant) {
        self.release_deletes(now);
        self.local.on_tick(now);
        self.poll_if_due(now);
        for (to, hashes) in self.applies.applier.overtaken(now) {
            self.out.request(to, hashes);
        }
        // While chunks keep arriving, a fetch without progress is only further back
        // in the writer's queue: asking again would make the writer send it twice.
        let streaming = self
            .last_chunk_at
            .is_some_and(|t| now.duration_since(t) < FETCH_STALL);
        if !streaming {
            for (to, hashes) in self.applies.applier.stalled(now, FETCH_STALL) {
                self.out.request(to, hashes);
            }
            let gone = self.applies.applier.abandoned(now, FETCH_STALL);
            if !gone.is_empty() {
                for o in gone {
                    self.on_outcome(o);
                }
                // Whatever the peers hold there now comes back whole.
                self.ask_peers_to_compare();
            }
        }
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
        }
        self.process();
        // After the due retries ran: one that failed again is waiting once more, and
        // its warning, already logged, is not repeated.
        if self.engine.retrying().next().is_none() {
            self.health.no_retries();
        }
        // A failing version may also end without an apply (replaced by a deletion
        // that had nothing left to delete, or no longer wanted): its error goes too.
        if self.engine.failing_count() == 0 {
            self.health.no_failures();
        }
    }

    /// Carries out the engine's effects until it has nothing more to say.
    pub(super) fn process(&mut self) {
        self.process_with(HashSet::new());
    }

    /// As [`process`](Self::process), with the chunks of the latest scan that are new
    /// to this node: pushed right after the manifests that announce them.
    pub(super) fn process_with(&mut self, mut fresh: HashSet<Hash>) {
        // Carrying out an effect can scan (a conflict copy, a file changed under an
        // apply), and a scan processes what it found: inside this loop, its effects are
        // already being drained here, so only its new chunks are handed over.
        if self.processing {
            self.nested_fresh.extend(fresh);
            return;
        }
        self.processing = true;
        let mut announce: Vec<(Entry, Option<Chunks>)> = vec![];
        let mut answer = vec![];
        while let Some(eff) = self.engine.poll_effect() {
            match eff {
                Effect::Announce { entry, previous } => announce.push((entry, previous)),
                Effect::Store(e) => {
                    let local = if e.content.is_deleted() {
                        None
                    } else {
                        self.local.known.get(&e.path).copied()
                    };
                    self.records.push(Record { entry: e, local });
                }
                Effect::Apply {
                    entry,
                    conflict_copy,
                    from,
                    needs_space,
                } => self.apply(entry, conflict_copy, from, needs_space),
                Effect::Cancel(p) => {
                    self.applies.cancel(&p);
                    self.local.release_name(&p);
                }
                Effect::Forget(p) => {
                    self.local.know(&p, None);
                    self.records.forget.push(p);
                }
                Effect::SendEntries(es) => answer.extend(es.into_iter().map(|e| (e, None))),
                Effect::SendDigest { reply } => self.send_digest(reply),
                Effect::SendSummary {
                    to,
                    reply,
                    round,
                    groups,
                } => self.out.send(crate::protocol::wire::Message::Summary {
                    to,
                    reply,
                    round,
                    groups,
                }),
                Effect::SendDescent { to, items } => self
                    .out
                    .send(crate::protocol::wire::Message::Descent { to, items }),
            }
        }
        self.processing = false;
        fresh.extend(std::mem::take(&mut self.nested_fresh));
        self.records.flush(&mut self.locations);
        for (entries, live) in [(announce, true), (answer, false)] {
            if !entries.is_empty() {
                let chunks = LocalChunks::new(
                    &self.cfg.path,
                    &self.locations,
                    &self.engine,
                    &self.local.known,
                );
                self.out
                    .publish_entries(entries, &mut fresh, live, &chunks, &mut self.records);
            }
        }
    }

    /// Where the chunks of this node's files are read from.
    pub(super) fn local_chunks(&self) -> LocalChunks<'_> {
        LocalChunks::new(
            &self.cfg.path,
            &self.locations,
            &self.engine,
            &self.local.known,
        )
    }

    fn pump_chunks(&mut self) {
        let chunks = LocalChunks::new(
            &self.cfg.path,
            &self.locations,
            &self.engine,
            &self.local.known,
        );
        self.out.pump(&chunks, &mut self.records);
    }

    /// Publishes a summary that asks for an answer (the repair exchange,
    /// `engine::Engine::send_summary`).
    pub(super) fn ask_peers_to_compare(&mut self) {
        self.engine.send_summary(true, Instant::now());
        self.process();
    }

    /// The version-1 digest, for peers of the previous version.
    fn send_digest(&mut self, reply: bool) {
        let buckets = self.engine.digest().buckets().to_vec();
        self.out
            .send(crate::protocol::wire::Message::Digest { reply, buckets });
    }

    fn current_state(&self) -> State {
        if self.health.paused.is_some() || self.health.packet_limit.is_some() {
            State::Error
        } else if self.engine.pending_count() > 0
            || !self.applies.is_idle()
            || self.records.error().is_some()
        {
            // Not idle while what was applied is not yet recorded.
            State::Syncing
        } else {
            State::Idle
        }
    }

    fn facts(&self) -> Facts<'_> {
        facts(
            &self.engine,
            &self.records,
            self.connected,
            self.local.guard.held(),
        )
    }

    fn publish_status(&mut self, state: State) {
        let held = self.local.guard.held();
        let facts = facts(&self.engine, &self.records, self.connected, held);
        if self
            .health
            .publish(state, &facts, self.out.publisher.as_ref())
        {
            // The end of a busy period (the first scan, a large sync): what it freed
            // goes back to the system instead of staying in the allocator.
            self.shrink_buffers();
            crate::sys::heap::release_free_memory();
        }
    }

    /// Drops the capacity that queues grew to in a busy period: a first scan of a
    /// million files leaves queues sized for a million effects and chunks, empty.
    fn shrink_buffers(&mut self) {
        self.records.flush_signatures();
        self.out.shrink_buffers();
        self.local.shrink_buffers();
        self.applies.shrink_buffers();
        self.health.shrink_buffers();
        self.engine.shrink_buffers();
        self.compact();
    }
}

/// What the status document says besides the health's own state.
fn facts<'a>(engine: &'a Engine, records: &'a Records, connected: bool, held: usize) -> Facts<'a> {
    Facts {
        engine,
        index_error: records.error(),
        connected,
        failing: records.error().is_some() || engine.failing_count() > 0,
        held_deletes: held as u64,
    }
}
