//! Flow control for a writer's chunk pushes: receivers report which of its chunk
//! messages they have processed, and the writer keeps at most [`WINDOW`] bytes of chunk
//! messages beyond the slowest receiver that reported recently. A broker keeps only so
//! much of a topic for a lagging subscriber (the embedded one 32 MiB), and what it drops
//! would cost that receiver a request and a second transfer. Pure bookkeeping: the
//! caller passes the clock in.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::engine::Hash;

/// Chunk-message bytes a writer may have ahead of its slowest recent receiver. Well
/// under the embedded broker's 32 MiB per topic, whose oldest 8 MiB segment goes first.
pub const WINDOW: u64 = 16 << 20;
/// A receiver reports after this many bytes of chunk messages from one writer.
pub const REPORT_EVERY: u64 = 4 << 20;
/// A receiver that has not reported for this long no longer holds the writer back (it
/// is gone, or too slow to wait for); it fetches what it misses by request.
pub const STALE: Duration = Duration::from_secs(5);
/// Chunk messages remembered, to place a receiver's report. Covers the window many
/// times over at about 1 MiB per message.
const MARKS: usize = 1024;

/// A writer's side: what it pushed and how far each receiver got.
#[derive(Debug, Default)]
pub struct PushWindow {
    /// Bytes of chunk messages pushed since this process started.
    pushed: u64,
    /// The last chunk of each recent chunk message and `pushed` after it.
    marks: VecDeque<(Hash, u64)>,
    /// Per receiver: the offset it reported last, and when.
    peers: HashMap<String, (u64, Instant)>,
}

impl PushWindow {
    /// A chunk message of `bytes` ending with chunk `last` was handed to the broker.
    pub fn pushed(&mut self, last: Hash, bytes: u64) {
        self.pushed += bytes;
        if self.marks.len() == MARKS {
            self.marks.pop_front();
        }
        self.marks.push_back((last, self.pushed));
    }

    /// Receiver `peer` has processed our chunk message ending with `last`. A report of
    /// a message no longer remembered (or from before a restart) is ignored.
    pub fn progress(&mut self, peer: &str, last: &Hash, now: Instant) {
        let Some(&(_, at)) = self.marks.iter().rev().find(|(h, _)| h == last) else {
            return;
        };
        let e = self.peers.entry(peer.to_string()).or_insert((at, now));
        *e = (e.0.max(at), now);
    }

    /// May another chunk message go out now?
    pub fn open(&self, now: Instant) -> bool {
        self.behind(now) < WINDOW
    }

    /// Bytes pushed beyond the slowest receiver that reported within [`STALE`].
    pub fn behind(&self, now: Instant) -> u64 {
        self.peers
            .values()
            .filter(|(_, when)| now.saturating_duration_since(*when) < STALE)
            .map(|(at, _)| self.pushed.saturating_sub(*at))
            .max()
            .unwrap_or(0)
    }
}

/// A receiver's side: chunk-message bytes per writer since its last report.
#[derive(Debug, Default)]
pub struct ProgressReports {
    unreported: HashMap<String, u64>,
}

impl ProgressReports {
    /// A chunk message of `bytes` from `writer` ending with `last` was processed;
    /// `Some(last)` when it is time to report it.
    pub fn received(&mut self, writer: &str, last: Hash, bytes: u64) -> Option<Hash> {
        let n = self.unreported.entry(writer.to_string()).or_default();
        *n += bytes;
        (*n >= REPORT_EVERY).then(|| {
            *n = 0;
            last
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u8) -> Hash {
        [i; 32]
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_window_follows_the_slowest_recent_receiver() {
        let t0 = Instant::now();
        let mut w = PushWindow::default();
        // Nobody has reported: nothing to wait for.
        for i in 0..40 {
            w.pushed(h(i), MIB);
        }
        assert!(w.open(t0));
        w.progress("fast", &h(39), t0);
        w.progress("slow", &h(9), t0);
        assert_eq!(w.behind(t0), 30 * MIB);
        assert!(!w.open(t0));
        // An older report does not move a receiver back.
        w.progress("slow", &h(30), t0);
        w.progress("slow", &h(20), t0);
        assert_eq!(w.behind(t0), 9 * MIB);
        assert!(w.open(t0));
        // Unknown hashes (another process's messages, long forgotten ones) are ignored.
        w.progress("slow", &h(200), t0);
        assert_eq!(w.behind(t0), 9 * MIB);
        for i in 40..60 {
            w.pushed(h(i), MIB);
        }
        assert_eq!(w.behind(t0), 29 * MIB);
        assert!(!w.open(t0 + STALE - Duration::from_millis(1)));
        // A receiver silent for STALE no longer holds the writer back.
        assert!(w.open(t0 + STALE));
        w.progress("fast", &h(59), t0 + STALE);
        assert_eq!(w.behind(t0 + STALE), 0);
    }

    #[test]
    fn receivers_report_every_few_mebibytes_per_writer() {
        let mut r = ProgressReports::default();
        assert_eq!(r.received("a", h(1), 3 * MIB), None);
        assert_eq!(r.received("b", h(2), 3 * MIB), None);
        assert_eq!(r.received("a", h(3), MIB), Some(h(3)));
        assert_eq!(r.received("a", h(4), MIB), None);
        assert_eq!(r.received("b", h(5), 2 * MIB), Some(h(5)));
    }

    #[test]
    fn the_marks_outlast_the_window() {
        let t0 = Instant::now();
        let mut w = PushWindow::default();
        for i in 0..(MARKS as u32 + 10) {
            let mut hash = [0u8; 32];
            hash[..4].copy_from_slice(&i.to_le_bytes());
            w.pushed(hash, MIB);
        }
        let mut first = [0u8; 32];
        first[..4].copy_from_slice(&0u32.to_le_bytes());
        w.progress("gone", &first, t0);
        assert!(w.peers.is_empty(), "a forgotten message was placed");
        assert!(MARKS as u64 * MIB > 4 * WINDOW);
    }
}
