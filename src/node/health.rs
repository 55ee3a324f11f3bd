//! What a folder says about itself: its state and last error, the signed status
//! document (retained on the broker and written as the health file for `mqsync
//! healthcheck`), its gauges, and since when a failure has lasted.

use super::now_ms;
use super::trust::PeerTrust;
use crate::engine::Engine;
use crate::ops::resync::ResyncAnswer;
use crate::ops::status::{FolderStatus, IgnoreRules, State};
use crate::protocol::relpath::RelPath;
use crate::protocol::wire::Keys;
use crate::transport::Publisher;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;
use tracing::{debug, info, warn};

pub(super) struct Health {
    folder: String,
    node: String,
    state_dir: PathBuf,
    keys: Keys,
    status_topic: String,
    insecure: bool,
    /// The latest error worth reporting (cleared by what resolves it).
    pub last_error: Option<String>,
    /// The path whose failed apply set `last_error`, and that error: the path's
    /// success clears it unless another error came since.
    last_error_path: Option<(RelPath, String)>,
    /// The error last logged per retried path, so a retry every few seconds does not
    /// log the same warning again.
    retry_warned: HashMap<RelPath, String>,
    /// Since when (ms since the epoch) an apply or the index has kept failing.
    failing_since_ms: Option<u64>,
    /// The document last published; `None` publishes the next one in any case.
    pub last_status: Option<FolderStatus>,
    /// Why the folder is paused (its root or marker is gone), if it is.
    pub paused: Option<String>,
    /// The broker seems to refuse packets as large as this node sends
    /// (`broker.max_message_bytes` too large): an error until a large packet goes
    /// through.
    pub packet_limit: Option<String>,
    /// Peers whose messages keep failing verification (another group key).
    pub trust: PeerTrust,
    /// What `trust` said at the last publish: a failure, like a failing apply.
    peer_error: Option<String>,
    /// The folder's ignore rules, which every node must share.
    ignore: IgnoreRules,
    /// The answer to the last resync command, for the status document.
    pub resync: Option<ResyncAnswer>,
    /// When the node's client certificate expires (ms since the epoch).
    cert_expires_ms: Option<u64>,
    /// What the folder asks for that this node cannot keep (status `notes`).
    pub notes: Vec<String>,
    /// What the folder polls instead of watching, if anything.
    pub polled: Option<crate::ops::status::Polled>,
}

/// What the status document is made of besides the health's own state.
pub(super) struct Facts<'a> {
    pub engine: &'a Engine,
    pub index_error: Option<&'a str>,
    pub connected: bool,
    /// Whether an apply or the index keeps failing.
    pub failing: bool,
    pub held_deletes: u64,
}

impl Health {
    pub fn new(
        folder: String,
        node: String,
        state_dir: PathBuf,
        keys: Keys,
        status_topic: String,
        insecure: bool,
        ignore: &[String],
    ) -> Self {
        Health {
            folder,
            node,
            state_dir,
            keys,
            status_topic,
            insecure,
            last_error: None,
            last_error_path: None,
            retry_warned: HashMap::new(),
            failing_since_ms: None,
            last_status: None,
            paused: None,
            packet_limit: None,
            trust: PeerTrust::default(),
            peer_error: None,
            ignore: IgnoreRules::of(ignore),
            resync: None,
            cert_expires_ms: None,
            notes: Vec::new(),
            polled: None,
        }
    }

    /// Reports the days left of the client certificate that expires at `ms`.
    pub fn with_cert_expiry(mut self, ms: Option<u64>) -> Self {
        self.cert_expires_ms = ms;
        self
    }

    /// The folder's ignore patterns changed (its `.mqsyncignore`).
    pub fn set_ignore(&mut self, patterns: &[String]) {
        self.ignore = IgnoreRules::of(patterns);
    }

    pub fn doc(&self, state: State, f: &Facts) -> FolderStatus {
        let (files, bytes) = f.engine.present();
        FolderStatus {
            node: self.node.clone(),
            folder: self.folder.clone(),
            state,
            version: env!("CARGO_PKG_VERSION").to_string(),
            files,
            bytes,
            pending: f.engine.pending_count() as u64,
            digest: f.engine.digest().root(),
            local_changes: f.engine.local_change_count() as u64,
            last_error: self
                .paused
                .clone()
                .or_else(|| self.packet_limit.clone())
                .or_else(|| f.index_error.map(str::to_string))
                .or_else(|| self.last_error.clone())
                .or_else(|| self.peer_error.clone()),
            failing_since_ms: self.failing_since_ms,
            connected: f.connected,
            insecure_plaintext: self.insecure,
            updated_ms: 0,
            resync: self.resync.clone(),
            ignore: Some(self.ignore.clone()),
            held_deletes: f.held_deletes,
            cert_days_left: self
                .cert_expires_ms
                .map(|at| crate::ops::status::days_left(at, now_ms())),
            notes: self.notes.clone(),
            polled: self.polled.clone(),
        }
    }

    /// Publishes the retained status when it changed (or was invalidated by the
    /// timer), writes the health file and sets the gauges. Returns whether the folder
    /// has just become idle (the end of a busy period).
    pub fn publish(&mut self, state: State, f: &Facts, publisher: Option<&Publisher>) -> bool {
        let peer_error = self.trust.error(Instant::now());
        if peer_error != self.peer_error {
            match &peer_error {
                Some(e) => warn!(folder = %self.folder, "{e}"),
                None => {
                    info!(folder = %self.folder, "no peer's messages keep failing verification any more")
                }
            }
            self.peer_error = peer_error;
        }
        // Hearing no peer that verifies (while some fail) is a failure that lasts, like
        // an apply that keeps failing: the healthcheck fails once it outlasts the grace
        // period. A node that verifies other peers only names the failing ones.
        let isolated = self.peer_error.is_some() && self.trust.isolated(Instant::now());
        match (f.failing || isolated, self.failing_since_ms) {
            (true, None) => self.failing_since_ms = Some(now_ms()),
            (false, Some(_)) => self.failing_since_ms = None,
            _ => {}
        }
        let doc = self.doc(state, f);
        if self.last_status.as_ref() == Some(&doc) {
            return false;
        }
        let was_idle = self
            .last_status
            .as_ref()
            .is_some_and(|d| d.state == State::Idle);
        let became_idle = doc.state == State::Idle && !was_idle;
        self.last_status = Some(doc.clone());
        let mut doc = doc;
        doc.updated_ms = now_ms();
        let folder = self.folder.clone();
        metrics::gauge!("mqsync_files", "folder" => folder.clone()).set(doc.files as f64);
        metrics::gauge!("mqsync_bytes", "folder" => folder.clone()).set(doc.bytes as f64);
        metrics::gauge!("mqsync_pending", "folder" => folder.clone()).set(doc.pending as f64);
        if let Some(d) = crate::ops::metrics::digest_value(&doc.digest) {
            metrics::gauge!("mqsync_tree_digest", "folder" => folder.clone()).set(d);
        }
        metrics::gauge!("mqsync_connected", "folder" => folder).set(if doc.connected {
            1.0
        } else {
            0.0
        });
        let bytes = self.signed(&doc);
        self.write_file(&bytes);
        if let Some(p) = publisher {
            p.publish(self.status_topic.clone(), bytes, true);
        }
        became_idle
    }

    /// The offline document, stamped now, written to the health file: what the broker
    /// publishes as the will, and what a clean stop publishes.
    pub fn offline(&self, f: &Facts, stamp: bool) -> Vec<u8> {
        let mut doc = self.doc(State::Offline, f);
        if stamp {
            doc.updated_ms = now_ms();
            let bytes = self.signed(&doc);
            self.write_file(&bytes);
            return bytes;
        }
        self.signed(&doc)
    }

    /// An apply of `path` failed and will be retried: reported, and logged once per
    /// distinct error.
    pub fn apply_failed(&mut self, path: RelPath, msg: String) {
        if self.retry_warned.get(&path) != Some(&msg) {
            self.retry_warned.insert(path.clone(), msg.clone());
            warn!(folder = %self.folder, %path, "apply failed, will retry: {msg}");
        } else {
            debug!(folder = %self.folder, %path, "apply failed again: {msg}");
        }
        self.last_error = Some(msg.clone());
        self.last_error_path = Some((path, msg));
    }

    /// An apply of `path` was given up: reported until that path is applied or no
    /// apply fails any more.
    pub fn gave_up(&mut self, path: RelPath, msg: String) {
        self.last_error = Some(msg.clone());
        self.last_error_path = Some((path, msg));
    }

    /// The last error of the retried apply of `path`, if it is known.
    pub fn retry_error(&self, path: &RelPath) -> Option<&str> {
        self.retry_warned.get(path).map(String::as_str)
    }

    /// `path` was applied: its earlier failure is over.
    pub fn applied(&mut self, path: &RelPath) {
        self.retry_warned.remove(path);
        if let Some((p, msg)) = &self.last_error_path
            && p == path
        {
            if self.last_error.as_ref() == Some(msg) {
                self.last_error = None;
            }
            self.last_error_path = None;
        }
    }

    /// No apply is failing any more: the error a failed apply set is over.
    pub fn no_failures(&mut self) {
        if let Some((_, msg)) = self.last_error_path.take()
            && self.last_error.as_ref() == Some(&msg)
        {
            self.last_error = None;
        }
    }

    /// No retry is waiting: forget which warnings were logged.
    pub fn no_retries(&mut self) {
        self.retry_warned.clear();
    }

    pub fn shrink_buffers(&mut self) {
        self.retry_warned.shrink_to_fit();
    }

    /// The status JSON as published: signed under the group key.
    fn signed(&self, doc: &FolderStatus) -> Vec<u8> {
        crate::ops::status::signed_json(doc, &self.status_topic, &self.keys).unwrap_or_default()
    }

    /// The local copy of the status for `mqsync healthcheck` (written atomically).
    fn write_file(&self, bytes: &[u8]) {
        let path = crate::ops::status::health_file(&self.state_dir, &self.folder);
        let tmp = path.with_extension("json.tmp");
        let res = std::fs::create_dir_all(path.parent().unwrap_or(&self.state_dir))
            .and_then(|()| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .or_else(|e| {
                // A full state directory has no block for a new file, but the old
                // file's block takes the new document (one block, so in practice
                // whole): the healthcheck then says why, not just that it is stale.
                let _ = std::fs::remove_file(&tmp);
                let f = std::fs::OpenOptions::new().write(true).open(&path);
                f.and_then(|f| {
                    std::os::unix::fs::FileExt::write_all_at(&f, bytes, 0)?;
                    f.set_len(bytes.len() as u64)
                })
                .map_err(|_| e)
            });
        if let Err(e) = res {
            debug!(folder = %self.folder, "cannot write {}: {e}", path.display());
        }
    }
}
