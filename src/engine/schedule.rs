//! When the engine compares state with its peers and forgets old tombstones: the
//! periodic digest while connected, a repair digest asked for by a patch of an unknown
//! version (rate-limited), and tombstone collection. Pure: time comes in as `now`.

use std::time::{Duration, Instant};

/// Least time between two digest exchanges asked for by patches of versions this node
/// lacks: a file edited continuously must not make every peer answer each edit.
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(2);

/// The engine's timers. Without intervals (the default) it schedules only repairs.
#[derive(Debug, Default)]
pub struct Schedule {
    digest_every: Option<Duration>,
    collect_every: Option<Duration>,
    connected: bool,
    next_digest: Option<Instant>,
    next_collect: Option<Instant>,
    repair_at: Option<Instant>,
    last_repair: Option<Instant>,
}

/// What is due at a moment.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Publish the digest; `Some(true)` asks peers to answer with theirs.
    pub digest: Option<bool>,
    /// Forget expired tombstones.
    pub collect: bool,
}

impl Schedule {
    pub fn new(digest: Duration, collect: Duration) -> Self {
        Schedule {
            digest_every: Some(digest),
            collect_every: Some(collect),
            ..Default::default()
        }
    }

    /// The folder starts at `now`: the first collection is one interval away (the
    /// runtime collects once at start itself).
    pub fn start(&mut self, now: Instant) {
        self.next_collect = self.collect_every.map(|d| now + d);
    }

    pub fn connected(&mut self, now: Instant) {
        self.connected = true;
        self.next_digest = self.digest_every.map(|d| now + d);
    }

    pub fn disconnected(&mut self) {
        self.connected = false;
        self.next_digest = None;
    }

    /// A repair is wanted: at once, or when the last one is [`REPAIR_INTERVAL`] old.
    pub fn repair(&mut self, now: Instant) {
        if self.repair_at.is_none() {
            let earliest = self.last_repair.map_or(now, |t| t + REPAIR_INTERVAL);
            self.repair_at = Some(earliest.max(now));
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.next_digest, self.next_collect, self.repair_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Takes what is due at `now` and sets the next times.
    pub fn due(&mut self, now: Instant) -> Due {
        let mut due = Due::default();
        if self.repair_at.is_some_and(|t| t <= now) {
            self.repair_at = None;
            self.last_repair = Some(now);
            due.digest = Some(true);
        }
        if self.next_digest.is_some_and(|t| t <= now) {
            self.next_digest = self.digest_every.map(|d| now + d);
            due.digest.get_or_insert(false);
        }
        if self.next_collect.is_some_and(|t| t <= now) {
            self.next_collect = self.collect_every.map(|d| now + d);
            due.collect = true;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_only_while_connected_and_repairs_are_rate_limited() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut sch = Schedule::new(s(60), s(3600));
        sch.start(t0);
        assert_eq!(sch.poll_timeout(), Some(t0 + s(3600)));
        sch.connected(t0);
        assert_eq!(sch.poll_timeout(), Some(t0 + s(60)));
        assert_eq!(sch.due(t0 + s(59)), Due::default());
        assert_eq!(sch.due(t0 + s(60)).digest, Some(false));
        sch.disconnected();
        assert_eq!(sch.due(t0 + s(200)).digest, None);

        sch.repair(t0 + s(300));
        assert_eq!(sch.due(t0 + s(300)).digest, Some(true));
        // A second repair within the interval waits for it.
        sch.repair(t0 + s(301));
        assert_eq!(sch.poll_timeout(), Some(t0 + s(302)));
        assert_eq!(sch.due(t0 + s(301)).digest, None);
        assert_eq!(sch.due(t0 + s(302)).digest, Some(true));
        assert!(sch.due(t0 + s(3600)).collect);
        assert_eq!(sch.poll_timeout(), Some(t0 + s(7200)));
    }
}
