//! Telling a broker's packet size limit from a lost connection. A broker that refuses a
//! packet larger than its limit (Mosquitto's `max_packet_size`, EMQX's
//! `mqtt.max_packet_size`) closes the connection without a word under MQTT 3.1.1, so
//! the client only sees the connection end. This watch follows the size of every
//! publish through the client and its acknowledgement: when the connection closes
//! twice in a row with a packet in flight larger than any the broker ever
//! acknowledged, the limit is the likely cause. Pure bookkeeping, no I/O.

use std::collections::{HashMap, VecDeque};

/// Consecutive suspicious closes before the limit is reported: one could be a network
/// failure that happened while a large packet was in flight.
const STRIKES: u32 = 2;

/// A broker that seems to refuse packets of `size` bytes while it acknowledged packets
/// of up to `accepted` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub size: usize,
    pub accepted: usize,
    pub limit: usize,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the broker closed the connection {STRIKES} times in a row right after mqsync \
             published a packet of {} bytes, while the largest packet it acknowledged had {} \
             bytes: its packet size limit is probably below broker.max_message_bytes ({}). \
             Set broker.max_message_bytes (MQSYNC_BROKER_MAX_MESSAGE_BYTES) to the broker's \
             limit (Mosquitto max_packet_size, EMQX mqtt.max_packet_size), or raise that limit",
            self.size, self.accepted, self.limit
        )
    }
}

/// What the watch concludes from an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing new to report.
    Same,
    /// The broker seems to refuse packets this large.
    Refused(Refused),
    /// A packet at least as large as the one reported was acknowledged: the report
    /// was wrong or the broker's limit was raised.
    Cleared,
}

/// Sizes of publishes, from the moment they are handed to the client to their
/// acknowledgement.
#[derive(Debug)]
pub struct OversizeWatch {
    /// `broker.max_message_bytes`, for the report.
    limit: usize,
    /// Publishes handed to the client that it has not written yet, in order.
    handed: VecDeque<usize>,
    /// Written publishes by packet id, awaiting their acknowledgement.
    inflight: HashMap<u16, usize>,
    largest_acked: usize,
    strikes: u32,
    reported: Option<usize>,
}

impl OversizeWatch {
    pub fn new(limit: usize) -> Self {
        OversizeWatch {
            limit,
            handed: VecDeque::new(),
            inflight: HashMap::new(),
            largest_acked: 0,
            strikes: 0,
            reported: None,
        }
    }

    /// A publish of `size` bytes (the whole packet) handed to the client.
    pub fn handed(&mut self, size: usize) {
        self.handed.push_back(size);
    }

    /// The client wrote the next handed publish as packet `pkid`.
    pub fn written(&mut self, pkid: u16) {
        if let Some(size) = self.handed.pop_front() {
            self.inflight.insert(pkid, size);
        }
    }

    /// The broker acknowledged packet `pkid`.
    pub fn acked(&mut self, pkid: u16) -> Verdict {
        let Some(size) = self.inflight.remove(&pkid) else {
            return Verdict::Same;
        };
        self.largest_acked = self.largest_acked.max(size);
        self.strikes = 0;
        match self.reported {
            Some(r) if size >= r => {
                self.reported = None;
                Verdict::Cleared
            }
            _ => Verdict::Same,
        }
    }

    /// The connection closed; the client drops every publish it held, the unwritten
    /// `dropped` of them included (a new clean session starts empty).
    pub fn closed(&mut self, dropped: usize) -> Verdict {
        let largest = self.inflight.drain().map(|(_, s)| s).max().unwrap_or(0);
        for _ in 0..dropped {
            self.handed.pop_front();
        }
        if largest <= self.largest_acked {
            self.strikes = 0;
            return Verdict::Same;
        }
        self.strikes += 1;
        if self.strikes < STRIKES || self.reported.is_some_and(|r| r <= largest) {
            return Verdict::Same;
        }
        self.reported = Some(largest);
        Verdict::Refused(Refused {
            size: largest,
            accepted: self.largest_acked,
            limit: self.limit,
        })
    }

    /// Whether a publish of `size` bytes should be held back: a refusal is reported
    /// and it is larger than any packet the broker took (and than the smallest
    /// `max_message_bytes`, so status documents still go out). Sending it would only
    /// close the connection again, and keep the node's status from reaching anyone.
    pub fn holds_back(&self, size: usize) -> bool {
        self.reported.is_some()
            && size
                > self
                    .largest_acked
                    .max(crate::config::MIN_MAX_MESSAGE_BYTES as usize)
    }

    /// Whether a refusal is reported and not cleared.
    pub fn reported(&self) -> bool {
        self.reported.is_some()
    }

    /// Publishes written and not acknowledged (the rest of what the client drops when
    /// the connection closes was never written).
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(w: &mut OversizeWatch, pkid: u16, size: usize) {
        w.handed(size);
        w.written(pkid);
    }

    #[test]
    fn repeated_closes_after_a_large_packet_are_reported_and_cleared_by_its_ack() {
        let mut w = OversizeWatch::new(1_000_000);
        send(&mut w, 1, 2_000);
        assert_eq!(w.acked(1), Verdict::Same);
        send(&mut w, 2, 900_000);
        assert_eq!(w.closed(0), Verdict::Same, "one close may be the network");
        send(&mut w, 1, 900_000);
        let Verdict::Refused(r) = w.closed(0) else {
            panic!("not reported");
        };
        assert_eq!((r.size, r.accepted, r.limit), (900_000, 2_000, 1_000_000));
        let text = r.to_string();
        assert!(text.contains("broker.max_message_bytes"), "{text}");
        assert!(text.contains("MQSYNC_BROKER_MAX_MESSAGE_BYTES"), "{text}");
        // Reported once, not at every close.
        send(&mut w, 1, 900_000);
        assert_eq!(w.closed(0), Verdict::Same);
        send(&mut w, 1, 900_000);
        assert_eq!(w.closed(0), Verdict::Same);
        assert!(w.holds_back(900_000) && !w.holds_back(30_000));
        // The broker accepts it after all (its limit was raised).
        send(&mut w, 2, 950_000);
        assert_eq!(w.acked(2), Verdict::Cleared);
    }

    #[test]
    fn closes_with_only_packets_the_broker_took_before_are_not_suspicious() {
        let mut w = OversizeWatch::new(1_000_000);
        send(&mut w, 1, 900_000);
        w.acked(1);
        for pkid in 2..6 {
            send(&mut w, pkid, 800_000);
            assert_eq!(w.closed(0), Verdict::Same);
        }
        // A close with nothing in flight resets the count.
        send(&mut w, 7, 990_000);
        assert_eq!(w.closed(0), Verdict::Same);
        assert_eq!(w.closed(0), Verdict::Same);
        send(&mut w, 8, 990_000);
        assert_eq!(w.closed(0), Verdict::Same);
    }

    #[test]
    fn dropped_unwritten_publishes_keep_sizes_aligned_with_packet_ids() {
        let mut w = OversizeWatch::new(1_000_000);
        send(&mut w, 1, 100);
        w.handed(5_000);
        w.handed(6_000);
        assert_eq!(w.inflight(), 1);
        w.closed(2);
        w.handed(300);
        w.written(1);
        w.acked(1);
        assert_eq!(w.largest_acked, 300);
    }
}
