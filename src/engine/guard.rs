//! The mass-delete guard: local deletions wait until none has been new for a grace
//! period, then go out together unless they would delete more than the folder's
//! `max_delete_percent` (a wiped or swapped volume): those are held for an operator's
//! resync. Pure: the runtime passes `now` and answers whether paths are still absent.

use super::Engine;
use crate::protocol::relpath::RelPath;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// A held mass deletion needs at least this many files: deleting 1 of 2 files is normal.
pub const MASS_DELETE_MIN_FILES: usize = 10;
/// Local deletions are sent once no new one has been seen for this long.
pub const DELETE_GRACE: Duration = Duration::from_secs(1);
/// A file this node wrote and deleted within this many ms was transient (a temp file
/// renamed into place): the guard does not count it.
pub const TRANSIENT_MS: u64 = 1_000;
/// A held deletion is judged again at the next new deletion or resync, not every tick.
const HELD_RECHECK: Duration = Duration::from_secs(3600);

/// Local deletions waiting for the grace period, or held.
#[derive(Debug)]
pub struct DeleteGuard {
    max_percent: u64,
    /// Each waiting deletion, with when it was first seen.
    waiting: BTreeMap<RelPath, Instant>,
    /// When the latest new deletion was seen (pushed far ahead while held).
    last_seen: Option<Instant>,
    /// How many deletions are held, 0 when none.
    held: usize,
}

/// What [`DeleteGuard::release`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Release {
    /// Paths that are back on disk: ordinary changes again, for the scanner.
    pub back: Vec<RelPath>,
    /// Deletions to hand to the engine now.
    pub send: Vec<RelPath>,
    /// Set when the deletions are held: (counted deletions, files present, whether
    /// this count is new and worth reporting).
    pub held: Option<(usize, u64, bool)>,
}

impl DeleteGuard {
    /// `max_percent` of 100 or more turns the guard off (deletions still wait for the
    /// grace period only when the guard is on).
    pub fn new(max_percent: u64) -> Self {
        DeleteGuard {
            max_percent,
            waiting: BTreeMap::new(),
            last_seen: None,
            held: 0,
        }
    }

    pub fn is_off(&self) -> bool {
        self.max_percent >= 100
    }

    /// Deletions held now (0 when none).
    pub fn held(&self) -> usize {
        self.held
    }

    /// A scan saw `path` missing: takes it when it deletes a present entry (and
    /// returns true), so it waits here instead of going to the engine.
    pub fn hold(&mut self, engine: &Engine, path: &RelPath, now: Instant) -> bool {
        let present = engine.entry(path).is_some_and(|e| !e.content.is_deleted());
        if present && !self.is_off() {
            self.waiting.entry(path.clone()).or_insert(now);
            self.last_seen = Some(now);
        }
        present && !self.is_off()
    }

    /// Lets every waiting deletion through (an operator's resync confirms them).
    pub fn take_all(&mut self) -> Vec<RelPath> {
        self.held = 0;
        std::mem::take(&mut self.waiting).into_keys().collect()
    }

    /// When [`release`](Self::release) should look again.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.waiting.is_empty() {
            return None;
        }
        self.last_seen.map(|t| t + DELETE_GRACE)
    }

    /// Once quiet for [`DELETE_GRACE`], judges the waiting deletions as a whole:
    /// those no longer `absent` go back; a deletion that is the other half of a move
    /// (`moved`: another staying file holds its content) or of this node's own
    /// transient file (written less than [`TRANSIENT_MS`] before, by `wall_ms`) does
    /// not count; the rest are held when they exceed `max_percent` of the present files
    /// (and [`MASS_DELETE_MIN_FILES`]), else sent.
    pub fn release(
        &mut self,
        now: Instant,
        wall_ms: u64,
        engine: &Engine,
        absent: impl Fn(&RelPath) -> bool,
        moved: impl Fn(&RelPath, &HashSet<&RelPath>) -> bool,
    ) -> Release {
        let mut out = Release::default();
        if self.poll_timeout().is_none_or(|t| now < t) {
            return out;
        }
        let waiting = std::mem::take(&mut self.waiting);
        let (gone, back): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|(p, _)| absent(p));
        out.back = back.into_iter().map(|(p, _)| p).collect();
        let leaving: HashSet<&RelPath> = gone.iter().map(|(p, _)| p).collect();
        let transient = |p: &RelPath, seen: &Instant| {
            let seen_ms = wall_ms.saturating_sub(now.duration_since(*seen).as_millis() as u64);
            engine.entry(p).is_some_and(|e| {
                // Only this node's own writes: their times come from this clock (and
                // one from the future, after the clock stepped back, is not recent).
                &*e.modified_by == engine.node()
                    && seen_ms
                        .checked_sub(e.changed_ms)
                        .is_some_and(|age| age < TRANSIENT_MS)
            })
        };
        let deletes = gone
            .iter()
            .filter(|(p, seen)| !transient(p, seen) && !moved(p, &leaving))
            .count();
        let (present, _) = engine.present();
        if deletes >= MASS_DELETE_MIN_FILES && (deletes as u64) * 100 > self.max_percent * present {
            out.held = Some((deletes, present, deletes != self.held));
            self.held = deletes;
            self.waiting = gone.into_iter().collect();
            self.last_seen = Some(now + HELD_RECHECK);
            return out;
        }
        self.held = 0;
        out.send = gone.into_iter().map(|(p, _)| p).collect();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Content, Mode, VersionVector};

    fn file(path: &str, by: &str, changed_ms: u64) -> crate::engine::Entry {
        crate::engine::Entry {
            path: RelPath::new(path).expect("path"),
            version: VersionVector::new().incremented(&crate::engine::intern::node_id(by)),
            modified_by: crate::engine::intern::node_id(by),
            changed_ms,
            content: Content::File {
                size: 1,
                mode: 0o644,
                mtime_ns: 1,
                chunks: Default::default(),
            },
        }
    }

    fn engine(n: usize) -> Engine {
        Engine::new(
            "a",
            Mode::SendReceive,
            (0..n).map(|i| file(&format!("f{i}"), "b", 1)),
        )
    }

    #[test]
    fn a_mass_delete_is_held_until_taken_and_a_small_one_goes_after_the_grace() {
        let e = engine(20);
        let t0 = Instant::now();
        let mut g = DeleteGuard::new(25);
        for i in 0..10 {
            assert!(g.hold(&e, &RelPath::new(format!("f{i}")).expect("p"), t0));
        }
        let never_moved = |_: &RelPath, _: &HashSet<&RelPath>| false;
        // Within the grace period nothing happens.
        let r = g.release(t0 + DELETE_GRACE / 2, 10_000, &e, |_| true, never_moved);
        assert_eq!(r, Release::default());
        // 10 of 20 is over 25 %: held, reported once.
        let r = g.release(t0 + DELETE_GRACE, 10_000, &e, |_| true, never_moved);
        assert_eq!(r.held, Some((10, 20, true)));
        assert!(r.send.is_empty());
        assert_eq!(g.held(), 10);
        assert_eq!(
            g.poll_timeout(),
            Some(t0 + DELETE_GRACE + HELD_RECHECK + DELETE_GRACE)
        );
        assert_eq!(g.take_all().len(), 10);
        assert_eq!(g.held(), 0);

        // Two deletions, one of which came back: the other is sent.
        let mut g = DeleteGuard::new(25);
        let (f1, f2) = (
            RelPath::new("f1").expect("p"),
            RelPath::new("f2").expect("p"),
        );
        g.hold(&e, &f1, t0);
        g.hold(&e, &f2, t0);
        let r = g.release(t0 + DELETE_GRACE, 10_000, &e, |p| p == &f1, never_moved);
        assert_eq!(r.send, vec![f1]);
        assert_eq!(r.back, vec![f2]);
        assert_eq!(r.held, None);
    }

    #[test]
    fn moves_and_own_transient_files_do_not_count() {
        let t0 = Instant::now();
        // 12 files this node wrote at 10,000 ms, deleted 500 ms later: transient.
        let own = Engine::new(
            "a",
            Mode::SendReceive,
            (0..12).map(|i| file(&format!("f{i}"), "a", 10_000)),
        );
        let mut g = DeleteGuard::new(25);
        for i in 0..12 {
            g.hold(&own, &RelPath::new(format!("f{i}")).expect("p"), t0);
        }
        let r = g.release(t0 + DELETE_GRACE, 11_500, &own, |_| true, |_, _| false);
        assert_eq!((r.send.len(), r.held), (12, None));

        // The same deletions as moves of another node's files: not counted either.
        let e = engine(12);
        for i in 0..12 {
            g.hold(&e, &RelPath::new(format!("f{i}")).expect("p"), t0);
        }
        let r = g.release(t0 + DELETE_GRACE, 11_500, &e, |_| true, |_, _| true);
        assert_eq!((r.send.len(), r.held), (12, None));
        // And as plain deletions they are held.
        for i in 0..12 {
            g.hold(&e, &RelPath::new(format!("f{i}")).expect("p"), t0);
        }
        let r = g.release(t0 + DELETE_GRACE, 11_500, &e, |_| true, |_, _| false);
        assert_eq!(r.held, Some((12, 12, true)));
    }
}
