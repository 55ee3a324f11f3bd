//! Which peers' messages keep failing verification: every message of a node with
//! another group key fails the MAC. Judged per sender, so a forged message or a burst
//! of them (a rogue client) does not put a healthy node in error, while a peer none of
//! whose messages verified for a while does, and the node's status and health say so.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Failed messages from one sender, none verified since the first, before it counts…
const MIN_FAILURES: u32 = 2;
/// …spread over at least this long (a peer sends a digest every 30 s, so a peer with
/// another key is judged within a minute; a burst of forgeries is not).
const MIN_SPAN: Duration = Duration::from_secs(10);
/// A sender with no failed message for this long is forgotten: it stopped, or it was
/// fixed and has not spoken since (a peer's digest comes every 30 s).
const FORGET_AFTER: Duration = Duration::from_secs(120);
/// Senders tracked at most: the topic names the sender, and a rogue may invent many.
const MAX_SENDERS: usize = 64;

#[derive(Debug, Default)]
pub(super) struct PeerTrust {
    failing: BTreeMap<String, Failing>,
    /// When a message from any peer last verified.
    last_verified: Option<Instant>,
}

/// Messages from one sender that failed since its last verified one.
#[derive(Debug)]
struct Failing {
    first: Instant,
    last: Instant,
    count: u32,
}

impl PeerTrust {
    /// A message from `sender` verified: whatever failed before was not its own.
    pub fn verified(&mut self, sender: &str, now: Instant) {
        self.failing.remove(sender);
        self.last_verified = Some(now);
    }

    /// Whether this node hears no peer it can verify while some fail: its own key
    /// is the odd one out (or every peer's is), a failure its healthcheck reports. A
    /// node that still verifies other peers only names the failing ones in its status,
    /// so one misconfigured node does not fail every healthy node's healthcheck.
    pub fn isolated(&self, now: Instant) -> bool {
        !self.untrusted(now).is_empty()
            && self
                .last_verified
                .is_none_or(|t| now.duration_since(t) >= FORGET_AFTER)
    }

    /// A message from `sender` failed the MAC.
    pub fn failed(&mut self, sender: &str, now: Instant) {
        self.failing
            .retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
        if !self.failing.contains_key(sender) && self.failing.len() >= MAX_SENDERS {
            let oldest = self
                .failing
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.failing.remove(&k);
            }
        }
        let f = self.failing.entry(sender.to_string()).or_insert(Failing {
            first: now,
            last: now,
            count: 0,
        });
        f.last = now;
        f.count = f.count.saturating_add(1);
    }

    /// The senders none of whose messages has verified for a while, by name.
    pub fn untrusted(&self, now: Instant) -> Vec<&str> {
        self.failing
            .iter()
            .filter(|(_, f)| {
                f.count >= MIN_FAILURES
                    && f.last.duration_since(f.first) >= MIN_SPAN
                    && now.duration_since(f.last) < FORGET_AFTER
            })
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// What the status says about them, if anything.
    pub fn error(&self, now: Instant) -> Option<String> {
        let names = self.untrusted(now);
        if names.is_empty() {
            return None;
        }
        let shown = names.iter().take(5).copied().collect::<Vec<_>>().join(", ");
        let more = match names.len() {
            n if n > 5 => format!(" and {} more", n - 5),
            _ => String::new(),
        };
        Some(format!(
            "messages from {shown}{more} fail verification: group key differs? (their MAC does not verify under this node's group key)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn a_peer_whose_messages_all_fail_for_a_while_is_named() {
        let t0 = Instant::now();
        let mut t = PeerTrust::default();
        t.failed("n3", t0);
        assert_eq!(t.error(at(t0, 1)), None, "one message is not a while");
        t.failed("n3", at(t0, 30));
        let why = t.error(at(t0, 31)).expect("30 s of failures");
        assert!(why.contains("n3") && why.contains("group key"), "{why}");
        // Stopped or fixed: forgotten once it has been quiet long enough.
        assert_eq!(t.error(at(t0, 30) + FORGET_AFTER), None);
        // A verified message clears it at once.
        t.failed("n3", at(t0, 60));
        t.verified("n3", at(t0, 60));
        assert_eq!(t.error(at(t0, 61)), None);
    }

    #[test]
    fn forgeries_do_not_flip_a_healthy_node() {
        let t0 = Instant::now();
        let mut t = PeerTrust::default();
        // A burst of forged messages under an invented name.
        for _ in 0..50 {
            t.failed("rogue", t0);
        }
        assert_eq!(t.error(at(t0, 1)), None);
        // Forgeries under a real peer's name, between its verified messages.
        for s in [0, 30, 60, 90] {
            t.failed("n1", at(t0, s));
            t.verified("n1", at(t0, s));
        }
        assert_eq!(t.error(at(t0, 91)), None);
    }

    #[test]
    fn only_a_node_that_verifies_no_peer_is_isolated() {
        let t0 = Instant::now();
        // n1 verifies n2 but not n3: it names n3 and is not isolated.
        let mut n1 = PeerTrust::default();
        n1.verified("n2", t0);
        n1.failed("n3", t0);
        n1.failed("n3", at(t0, 30));
        n1.verified("n2", at(t0, 30));
        assert!(n1.error(at(t0, 31)).is_some());
        assert!(!n1.isolated(at(t0, 31)));
        // n3 verifies nobody: isolated.
        let mut n3 = PeerTrust::default();
        for s in [0, 30] {
            n3.failed("n1", at(t0, s));
            n3.failed("n2", at(t0, s));
        }
        assert!(n3.isolated(at(t0, 31)));
    }

    #[test]
    fn invented_senders_are_bounded() {
        let t0 = Instant::now();
        let mut t = PeerTrust::default();
        for i in 0..1000 {
            t.failed(&format!("x{i}"), t0);
        }
        assert!(t.failing.len() <= MAX_SENDERS);
        // Real peers failing later push out the invented ones heard longest ago.
        for s in [1, 21] {
            for i in 0..8 {
                t.failed(&format!("n{i}"), at(t0, s));
            }
        }
        let why = t.error(at(t0, 22)).unwrap();
        assert!(why.contains("and 3 more"), "{why}");
    }
}
