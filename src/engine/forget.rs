//! Stopping to sync paths that a shared ignore rule (`.mqsyncignore`) now covers: their
//! entries leave the engine without a tombstone, so the files stay on every disk and no
//! node deletes them; an apply still waiting for one of them is cancelled.

use super::{Effect, Engine};
use crate::protocol::relpath::RelPath;

impl Engine {
    /// Forgets every entry whose path `ignored` names (see the module doc); returns how
    /// many. The digest then covers only what is still synced, like a peer's that has
    /// the same rules.
    pub fn forget_ignored(&mut self, ignored: impl Fn(&RelPath) -> bool) -> usize {
        let paths: Vec<RelPath> = self
            .entries
            .iter()
            .filter(|e| ignored(&e.path))
            .map(|e| e.path.clone())
            .collect();
        for p in &paths {
            if let Some(old) = self.entries.remove(p) {
                self.uncount(&old);
            }
            if self.take_pending(p).is_some() {
                self.effects.push_back(Effect::Cancel(p.clone()));
            }
            self.local_changes.remove(p);
            self.effects.push_back(Effect::Forget(p.clone()));
        }
        // Pending applies of paths without an entry yet (new files) go too.
        let new: Vec<RelPath> = self
            .pending
            .keys()
            .filter(|p| ignored(p))
            .cloned()
            .collect();
        for p in new {
            self.take_pending(&p);
            self.effects.push_back(Effect::Cancel(p));
        }
        paths.len()
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::{Content, Engine, Mode};
    use crate::protocol::relpath::RelPath;

    #[test]
    fn forgotten_paths_leave_no_tombstone_and_the_digest_drops_them() {
        let p = |s: &str| RelPath::new(s).expect("relpath");
        let mut with = Engine::new("a", Mode::SendReceive, []);
        let mut without = Engine::new("a", Mode::SendReceive, []);
        let file = Content::Dir { mode: 0o755 };
        with.handle_local(p("keep"), file.clone());
        with.handle_local(p("x.log"), file.clone());
        without.handle_local(p("keep"), file);
        assert_eq!(with.forget_ignored(|p| p.as_str().ends_with(".log")), 1);
        assert!(with.entry(&p("x.log")).is_none());
        assert_eq!(with.present().0, 1);
        assert_eq!(with.digest().root(), without.digest().root());
    }
}
