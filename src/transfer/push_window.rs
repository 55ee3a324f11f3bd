//! Flow control for a writer's chunk pushes: receivers report which of its chunk
//! messages they have processed, and the writer keeps at most [`WINDOW`] bytes of chunk
//! messages beyond the slowest receiver that reported recently. A broker keeps only so
//! much of a topic for a lagging subscriber (the embedded one 32 MiB), and what it drops
//! would cost that receiver a request and a second transfer. Pure bookkeeping: the
//! caller passes the clock in.

use std::collections::{HashMap, HashSet, VecDeque};
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
/// A pause in pushing this long ends a burst: at the next one every receiver still
/// known counts as recent again (at the offset it last reported), so it holds the
/// writer back from the burst's first byte. A receiver also reports its first chunk
/// message after such a pause at once.
pub const IDLE: Duration = Duration::from_secs(1);

/// A writer's side: what it pushed and how far each receiver got.
#[derive(Debug, Default)]
pub struct PushWindow {
    /// Bytes of chunk messages pushed since this process started.
    pushed: u64,
    /// The last chunk of each recent chunk message and `pushed` after it.
    marks: VecDeque<(Hash, u64)>,
    /// Per receiver: the offset it reported last, and when.
    peers: HashMap<String, (u64, Instant)>,
    /// When the latest chunk message was pushed.
    last_push: Option<Instant>,
    /// The window was found closed at the latest check: a pause since is a wait, not
    /// the end of a burst.
    waiting: bool,
    /// `pushed` when the current burst began.
    burst_start: u64,
    /// Peers let go for silence: a message from them does not make them count again,
    /// only a report does.
    silent: HashSet<String>,
    /// A burst began with no receiver known: until then it is held at [`WINDOW`] bytes
    /// from its start, in case one is there but has not been heard from yet.
    unknown_until: Option<Instant>,
}

impl PushWindow {
    /// A chunk message of `bytes` ending with chunk `last` was handed to the broker.
    pub fn pushed(&mut self, last: Hash, bytes: u64, now: Instant) {
        self.last_push = Some(now);
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
        self.silent.remove(peer);
        let e = self.peers.entry(peer.to_string()).or_insert((at, now));
        *e = (e.0.max(at), now);
    }

    /// A message from `peer` shows it is subscribed: unless it is already known (or was
    /// let go for silence), it counts from the start of the current burst, so a writer
    /// that starts pushing before a receiver's first report (a first scan of a full
    /// folder) still waits for it. Seen pushing 160 MB before the first report arrived.
    pub fn hello(&mut self, peer: &str, now: Instant) {
        if !self.peers.contains_key(peer) && !self.silent.contains(peer) {
            self.peers.insert(peer.to_string(), (self.burst_start, now));
        }
    }

    /// May another chunk message go out now? Receivers silent for [`STALE`] are
    /// forgotten until they report again.
    pub fn open(&mut self, now: Instant) -> bool {
        if !self.waiting
            && self
                .last_push
                .is_none_or(|t| now.saturating_duration_since(t) >= IDLE)
        {
            self.burst_start = self.pushed;
            for (_, when) in self.peers.values_mut() {
                *when = now;
            }
            self.unknown_until = self.peers.is_empty().then_some(now + IDLE);
        }
        let silent = &mut self.silent;
        self.peers.retain(|peer, (_, when)| {
            let recent = now.saturating_duration_since(*when) < STALE;
            if !recent {
                silent.insert(peer.clone());
            }
            recent
        });
        self.waiting = self.behind(now) >= WINDOW;
        !self.waiting
    }

    /// Whether the latest [`Self::open`] found the window closed.
    pub fn waiting(&self) -> bool {
        self.waiting
    }

    /// Bytes pushed beyond the slowest receiver that reported within [`STALE`]. With
    /// none known, for the first [`IDLE`] of a burst: bytes pushed in the burst. A
    /// writer's first scan of a full folder once pushed 195 MB before its receiver's
    /// first message arrived; a lone writer pauses once per burst instead.
    pub fn behind(&self, now: Instant) -> u64 {
        let known = self
            .peers
            .values()
            .filter(|(_, when)| now.saturating_duration_since(*when) < STALE)
            .map(|(at, _)| self.pushed.saturating_sub(*at))
            .max();
        match known {
            Some(b) => b,
            None if self.unknown_until.is_some_and(|t| now < t) => {
                self.pushed.saturating_sub(self.burst_start)
            }
            None => 0,
        }
    }
}

/// A receiver's side: per writer, chunk-message bytes since its last report, and when
/// it last received one.
#[derive(Debug, Default)]
pub struct ProgressReports {
    unreported: HashMap<String, (u64, Option<Instant>)>,
}

impl ProgressReports {
    /// A chunk message of `bytes` from `writer` ending with `last` was processed;
    /// `Some(last)` when it is time to report it: every [`REPORT_EVERY`] bytes, and for
    /// the first message after [`IDLE`], so that a writer learns early in a burst who
    /// is receiving it.
    pub fn received(&mut self, writer: &str, last: Hash, bytes: u64, now: Instant) -> Option<Hash> {
        let (n, seen) = self.unreported.entry(writer.to_string()).or_default();
        let first = seen.is_none_or(|s| now.saturating_duration_since(s) >= IDLE);
        *seen = Some(now);
        *n += bytes;
        (first || *n >= REPORT_EVERY).then(|| {
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
        let ms = Duration::from_millis;
        let mut w = PushWindow::default();
        // Nobody known: the burst waits at 16 MiB for a while, then goes on.
        for i in 0..40 {
            if i < WINDOW / MIB {
                assert!(w.open(t0));
            } else {
                assert!(!w.open(t0));
                assert!(w.open(t0 + IDLE));
            }
            w.pushed(h(i as u8), MIB, t0);
        }
        assert!(w.open(t0 + IDLE));
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
            w.pushed(h(i), MIB, t0 + ms(100));
        }
        assert_eq!(w.behind(t0), 29 * MIB);
        assert!(!w.open(t0 + ms(200)));
        w.progress("fast", &h(59), t0 + ms(300));
        // A receiver silent for STALE no longer holds the writer back.
        assert!(w.open(t0 + STALE));
        assert_eq!(w.behind(t0 + STALE), 0);
        assert!(w.peers.contains_key("fast") && !w.peers.contains_key("slow"));
    }

    #[test]
    fn after_a_pause_known_receivers_hold_the_writer_back_from_the_start() {
        let t0 = Instant::now();
        let mut w = PushWindow::default();
        w.pushed(h(1), MIB, t0);
        w.progress("r", &h(1), t0);
        // Minutes later a new burst: "r" counts again, at the offset it reported.
        let t1 = t0 + Duration::from_secs(300);
        assert!(w.open(t1));
        for i in 2..40 {
            if !w.open(t1) {
                break;
            }
            w.pushed(h(i), MIB, t1);
        }
        assert_eq!(w.behind(t1), WINDOW, "the window closed at 16 MiB");
        // A receiver that never answers in this burst is let go after STALE.
        assert!(!w.open(t1 + STALE - Duration::from_millis(1)));
        assert!(w.open(t1 + STALE));
    }

    #[test]
    fn a_receiver_heard_from_before_its_first_report_holds_the_burst_back() {
        let t0 = Instant::now();
        let mut w = PushWindow::default();
        w.pushed(h(1), 3 * MIB, t0);
        // A new burst after a pause; the receiver's first message is a digest.
        let t1 = t0 + Duration::from_secs(10);
        assert!(w.open(t1));
        w.hello("r", t1);
        let mut pushed = 0;
        while w.open(t1) && pushed < 100 {
            w.pushed(h(10 + pushed as u8), MIB, t1);
            pushed += 1;
        }
        assert_eq!(pushed, 16, "held back from the burst's first byte");
        // Hearing from it again changes nothing; its report moves it.
        w.hello("r", t1);
        assert!(!w.open(t1));
        w.progress("r", &h(20), t1);
        assert!(w.open(t1));
        // Let go after STALE without a report, a message alone does not bring it back.
        let t2 = t1 + STALE;
        for i in 0..20 {
            w.pushed(h(100 + i), MIB, t2 - Duration::from_millis(10));
        }
        assert!(w.open(t2));
        w.hello("r", t2);
        assert!(w.open(t2));
        w.progress("r", &h(119), t2);
        assert!(w.peers.contains_key("r"));
    }

    #[test]
    fn receivers_report_every_few_mebibytes_per_writer_and_early_in_a_burst() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = ProgressReports::default();
        assert_eq!(
            r.received("a", h(1), MIB, t0),
            Some(h(1)),
            "first of a burst"
        );
        assert_eq!(r.received("a", h(2), 3 * MIB, t0 + ms(10)), None);
        assert_eq!(r.received("b", h(3), MIB, t0 + ms(10)), Some(h(3)));
        assert_eq!(r.received("b", h(4), 3 * MIB, t0 + ms(20)), None);
        assert_eq!(r.received("a", h(5), MIB, t0 + ms(30)), Some(h(5)));
        assert_eq!(r.received("a", h(6), MIB, t0 + ms(40)), None);
        assert_eq!(r.received("b", h(7), MIB, t0 + ms(50)), Some(h(7)));
        assert_eq!(r.received("a", h(8), MIB, t0 + ms(40) + IDLE), Some(h(8)));
    }

    #[test]
    fn the_marks_outlast_the_window() {
        let t0 = Instant::now();
        let mut w = PushWindow::default();
        for i in 0..(MARKS as u32 + 10) {
            let mut hash = [0u8; 32];
            hash[..4].copy_from_slice(&i.to_le_bytes());
            w.pushed(hash, MIB, t0);
        }
        let mut first = [0u8; 32];
        first[..4].copy_from_slice(&0u32.to_le_bytes());
        w.progress("gone", &first, t0);
        assert!(w.peers.is_empty(), "a forgotten message was placed");
        assert!(MARKS as u64 * MIB > 4 * WINDOW);
    }
}
