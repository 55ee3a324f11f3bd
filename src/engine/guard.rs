//! The mass-delete guard: local deletions wait until none has been new for a grace
//! period, then go out together unless they would delete more than the folder's
//! `max_delete_percent` (a wiped or swapped volume): those are held until an operator's
//! resync applies them or the files come back (rechecked every few seconds). Pure: the
//! runtime passes `now` and answers whether paths are still absent.

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
/// Held deletions are checked for files that came back this often, plus
/// [`HELD_RECHECK_PER_PATH`] per held path: a stat each, so a hold of a million paths
/// is looked at about once a minute instead of keeping a core busy.
const HELD_RECHECK: Duration = Duration::from_secs(2);
const HELD_RECHECK_PER_PATH: Duration = Duration::from_micros(50);

/// Local deletions waiting for the grace period, or held.
#[derive(Debug)]
pub struct DeleteGuard {
    max_percent: u64,
    /// Each waiting deletion, with when it was first seen.
    waiting: BTreeMap<RelPath, Instant>,
    /// When the latest new deletion not yet judged was seen.
    last_seen: Option<Instant>,
    /// While held: when to look whether the held paths came back.
    recheck: Option<Instant>,
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
    /// A hold is over without a resync: its files came back (`send` may still hold
    /// deletions that do not count: moves, this node's transient files).
    pub restored: bool,
}

impl DeleteGuard {
    /// `max_percent` of 100 or more turns the guard off (deletions still wait for the
    /// grace period only when the guard is on).
    pub fn new(max_percent: u64) -> Self {
        DeleteGuard {
            max_percent,
            waiting: BTreeMap::new(),
            last_seen: None,
            recheck: None,
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

    /// The held deletions, in path order (none unless a hold is on).
    pub fn held_paths(&self) -> impl Iterator<Item = &RelPath> {
        self.waiting.keys().take(self.held)
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
        self.last_seen = None;
        self.recheck = None;
        std::mem::take(&mut self.waiting).into_keys().collect()
    }

    /// When [`release`](Self::release) should look again.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.waiting.is_empty() {
            return None;
        }
        let judge = self.last_seen.map(|t| t + DELETE_GRACE);
        match (judge, self.recheck) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Once quiet for [`DELETE_GRACE`], judges the waiting deletions as a whole:
    /// those no longer `absent` go back; a deletion that is the other half of a move
    /// (`moved`: another staying file holds its content) or of this node's own
    /// transient file (written less than [`TRANSIENT_MS`] before, by `wall_ms`) does
    /// not count; the rest are held when they exceed `max_percent` of the present files
    /// (and [`MASS_DELETE_MIN_FILES`]), else sent. While held, the held paths are
    /// checked for coming back ([`Release::restored`] once none is left); the rest,
    /// and new deletions, stay held, so a restore in progress never sends them.
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
        if self.last_seen.is_none_or(|t| now < t + DELETE_GRACE) {
            return self.recheck_held(now, absent);
        }
        self.last_seen = None;
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
        let over =
            deletes >= MASS_DELETE_MIN_FILES && (deletes as u64) * 100 > self.max_percent * present;
        // While a hold lasts, what is left of it stays held even when small: the files
        // may be coming back (a restore in progress), and new deletions wait with it.
        if over || (self.held > 0 && deletes > 0) {
            out.held = Some((deletes, present, over && deletes != self.held));
            self.held = deletes;
            self.waiting = gone.into_iter().collect();
            self.recheck = Some(now + recheck_interval(self.waiting.len()));
            return out;
        }
        // A hold that new deletions made judge again can end here too.
        out.restored = self.held > 0;
        self.held = 0;
        self.recheck = None;
        out.send = gone.into_iter().map(|(p, _)| p).collect();
        out
    }

    /// Drops the held paths that are back on disk (returned in [`Release::back`]);
    /// when none is left, the hold is over.
    fn recheck_held(&mut self, now: Instant, absent: impl Fn(&RelPath) -> bool) -> Release {
        let mut out = Release::default();
        let waiting = std::mem::take(&mut self.waiting);
        let (gone, back): (BTreeMap<_, _>, BTreeMap<_, _>) =
            waiting.into_iter().partition(|(p, _)| absent(p));
        out.back = back.into_keys().collect();
        self.waiting = gone;
        if self.waiting.is_empty() {
            out.restored = self.held > 0;
            self.held = 0;
            self.recheck = None;
        } else {
            // The count shown shrinks as files come back (it never grows here).
            self.held = self.held.min(self.waiting.len());
            self.recheck = Some(now + recheck_interval(self.waiting.len()));
        }
        out
    }
}

/// How long until held paths are stat'ed again: longer for more of them.
fn recheck_interval(held: usize) -> Duration {
    HELD_RECHECK + HELD_RECHECK_PER_PATH.saturating_mul(held.min(u32::MAX as usize) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Content, Mode, VersionVector};

    fn file(path: &str, by: &str, changed_ms: u64) -> crate::engine::Entry {
        crate::engine::Entry {
            attrs: None,
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
            Some(t0 + DELETE_GRACE + recheck_interval(10))
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
    fn a_held_delete_ends_when_its_files_come_back() {
        let e = engine(20);
        let t0 = Instant::now();
        let mut g = DeleteGuard::new(25);
        // Sorted, as the guard returns them.
        let mut paths: Vec<RelPath> = (0..12)
            .map(|i| RelPath::new(format!("f{i}")).expect("p"))
            .collect();
        paths.sort();
        for p in &paths {
            g.hold(&e, p, t0);
        }
        let t1 = t0 + DELETE_GRACE;
        let r = g.release(t1, 10_000, &e, |_| true, |_, _| false);
        assert_eq!(r.held, Some((12, 20, true)));
        // Half came back: they go back to the scanner, the rest stay held (not sent,
        // though 6 of 20 alone would not be held: the restore may still be running).
        let t2 = g.poll_timeout().expect("recheck");
        assert!(t2 > t1);
        let r = g.release(t2, 12_000, &e, |p| paths[6..].contains(p), |_, _| false);
        assert_eq!(r.back, paths[..6].to_vec());
        assert!(r.send.is_empty() && r.held.is_none() && !r.restored);
        assert_eq!(g.held(), 6);
        // The rest came back: the hold is over, nothing was sent.
        let t3 = g.poll_timeout().expect("recheck");
        let r = g.release(t3, 14_000, &e, |_| false, |_, _| false);
        assert_eq!(r.back, paths[6..].to_vec());
        assert!(r.send.is_empty() && r.restored);
        assert_eq!((g.held(), g.poll_timeout()), (0, None));

        // Held again; while the files come back a scan reports one as deleted anew:
        // judged again after the grace, everything is back, and the hold is over too.
        for p in &paths {
            g.hold(&e, p, t3);
        }
        let t4 = t3 + DELETE_GRACE;
        assert!(
            g.release(t4, 16_000, &e, |_| true, |_, _| false)
                .held
                .is_some()
        );
        g.hold(&e, &paths[0], t4);
        let r = g.release(t4 + DELETE_GRACE, 17_000, &e, |_| false, |_, _| false);
        assert!(r.send.is_empty() && r.held.is_none() && r.restored);
        assert_eq!((g.held(), g.poll_timeout()), (0, None));

        // Held again; most come back while a new deletion is seen: the two left, though
        // a small delete, stay held (not reported again) until they are back too.
        for p in &paths {
            g.hold(&e, p, t4);
        }
        let t5 = t4 + DELETE_GRACE * 3;
        assert!(
            g.release(t5, 18_000, &e, |_| true, |_, _| false)
                .held
                .is_some()
        );
        g.hold(&e, &paths[0], t5);
        let left = |p: &RelPath| p == &paths[0] || p == &paths[1];
        let r = g.release(t5 + DELETE_GRACE, 19_000, &e, left, |_, _| false);
        assert_eq!(r.held, Some((2, 20, false)));
        assert!(r.send.is_empty() && !r.restored);
        assert_eq!(g.held(), 2);
        let t6 = g.poll_timeout().expect("recheck");
        let r = g.release(t6, 21_000, &e, |_| false, |_, _| false);
        assert!(r.send.is_empty() && r.restored);
        assert_eq!(g.held(), 0);
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
