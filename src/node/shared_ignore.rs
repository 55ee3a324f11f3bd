//! The folder's ignore rules: the config's `ignore` list plus the patterns of
//! `.mqsyncignore` at the root, a file synced like any other so that every node applies
//! the same rules. The file is read again whenever what the folder knows of it changes
//! (a local edit the scanner saw, an apply, a deletion): a path the new rules ignore
//! stops syncing but stays on every disk; a path they no longer ignore is scanned and
//! sent.

use super::folder::Folder;
use crate::fs::ignore::{IGNORE_FILE, Ignore, read_ignore_file as read};
use crate::protocol::relpath::RelPath;
use crate::store::index::LocalMeta;
use std::path::Path;
use tracing::{info, warn};

pub(super) struct SharedIgnore {
    config: Vec<String>,
    /// The patterns read from the file.
    file: Vec<String>,
    /// What the folder knew of the file when it was read (`None`: absent).
    read_at: Option<LocalMeta>,
}

impl SharedIgnore {
    /// The rules at start: the config's patterns (already validated) and the file's.
    /// `known`: the file's metadata in the index. Returns the problems of the file too.
    pub fn load(
        root: &Path,
        config: &[String],
        known: Option<LocalMeta>,
    ) -> (Self, Ignore, Vec<String>) {
        let (file, problems) = read(root);
        let s = SharedIgnore {
            config: config.to_vec(),
            file,
            read_at: known,
        };
        let ignore = Ignore::new(&s.patterns()).or_else(|_| Ignore::new(config));
        // The config's patterns were validated and the file's checked one by one.
        let ignore = ignore.unwrap_or_else(|_| Ignore::new(&[]).expect("no patterns"));
        (s, ignore, problems)
    }

    /// Every pattern in force: the config's, then the file's.
    pub fn patterns(&self) -> Vec<String> {
        self.config.iter().chain(&self.file).cloned().collect()
    }
}

impl Folder {
    /// Reads `.mqsyncignore` again when what the folder knows of it changed, and puts
    /// new rules in force (see the module doc).
    pub(super) fn reload_ignore(&mut self) {
        let Ok(rel) = RelPath::new(IGNORE_FILE) else {
            return;
        };
        let now = self.local.known.get(&rel).copied();
        if now == self.local.shared.read_at {
            return;
        }
        self.local.shared.read_at = now;
        let (file, problems) = read(&self.cfg.path);
        for p in &problems {
            warn!(folder = %self.cfg.id, "{p}");
        }
        let h = &mut self.health;
        if let Some(p) = problems.first() {
            h.last_error = Some(p.clone());
        } else if h
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(IGNORE_FILE))
        {
            h.last_error = None;
        }
        if file == self.local.shared.file {
            return;
        }
        let old = std::mem::replace(&mut self.local.shared.file, file);
        let patterns = self.local.shared.patterns();
        let ignore = match Ignore::new(&patterns) {
            Ok(i) => i,
            Err(e) => {
                warn!(folder = %self.cfg.id, "{IGNORE_FILE}: {e}; keeping the rules in force");
                self.local.shared.file = old;
                return;
            }
        };
        self.local.ignore = ignore.clone();
        self.applies.applier.set_ignore(ignore.clone());
        self.health.set_ignore(&patterns);
        // Paths ignored now stop syncing: forgotten here, never deleted anywhere.
        let forgotten = self.engine.forget_ignored(|p| ignore.is_ignored(p));
        info!(
            folder = %self.cfg.id,
            patterns = self.local.shared.file.len(),
            stopped_syncing = forgotten,
            "{IGNORE_FILE} changed: new ignore rules in force"
        );
        self.process();
        // Paths ignored no longer are found by a full scan; peers are asked to compare,
        // so that what they hold there comes back even if they sent it meanwhile.
        self.local.rescan_due = true;
        self.ask_peers_to_compare();
        self.health.last_status = None;
    }
}
