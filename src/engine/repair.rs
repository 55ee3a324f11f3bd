//! Anti-entropy between two nodes at a time. A node's `Summary` (its 32 group values)
//! names one peer to answer it, chosen by rendezvous hashing over the peers heard
//! lately; only that peer compares, and the two descend the region tree (`Descent`)
//! until the differing regions are small, then each publishes its entries there. So a
//! difference costs bytes in proportion to itself, and one answer, not N − 1.
//! docs/PROTOCOL.md, "Repair", describes the exchange; `handle_digest` still answers
//! the version-1 `Digest` of nodes that predate it.

use super::digest::{LEAF_LEVEL, fanout, region_of_leaf, regions};
use super::{Effect, Engine, Entry};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// A region with at most this many entries is exchanged as entries, not descended into.
pub const LEAF_MAX: u32 = 32;
/// How long a node waits for the answerer of a summary that asked for a reply before
/// it asks the next one.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Answerers tried one after another before a summary is addressed to everyone.
const TRIES: usize = 3;
/// Entries of a region published this recently are not published again for a peer
/// that was already listening then: it received them with everyone else.
pub const SERVED_WINDOW: Duration = Duration::from_secs(3);
/// Peers not heard from for this long are not chosen as answerers (three periodic
/// summaries at the default 30 s).
const DEFAULT_PEER_TTL: Duration = Duration::from_secs(90);
/// The answerer of a summary for everyone.
pub const ANYONE: &str = "*";

/// One region of the digest tree as a `Descent` carries it: the sender's values of its
/// children, or, when `kids` is empty, a request to publish one's entries there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    pub level: u8,
    pub index: u32,
    pub kids: Vec<u64>,
}

impl Region {
    /// Whether the region exists and `kids` has the length its level has.
    pub fn is_valid(&self) -> bool {
        self.level <= LEAF_LEVEL
            && (self.index as usize) < regions(self.level)
            && (self.kids.is_empty() || self.kids.len() == fanout(self.level))
    }
}

/// A peer's `Summary` message, as the engine reads it.
#[derive(Debug, Clone, Copy)]
pub struct Summary<'a> {
    /// The answerer the sender chose, or `"*"`: the receivers pick one among
    /// themselves by rank, as the sender would have, had it known them.
    pub to: &'a str,
    /// Answer even when nothing differs.
    pub reply: bool,
    /// The sender's count of its summaries, which varies the rank.
    pub round: u32,
    pub groups: &'a [u64],
}

/// A summary that asked for a reply, until it is settled: answered and confirmed.
#[derive(Debug)]
struct Awaiting {
    answerer: String,
    deadline: Instant,
    tried: Vec<String>,
    /// The answerer has responded (an acknowledgement or a step of the exchange).
    answered: bool,
    /// This is the second summary, sent [`ANSWER_TIMEOUT`] after the first to check
    /// that the exchange left nothing behind (an answer suppressed because it had just
    /// been published, before this node was listening).
    confirm: bool,
}

/// The repair exchange's state in an engine.
#[derive(Debug)]
pub(super) struct Repair {
    /// Peers heard, and when last.
    peers: BTreeMap<String, Instant>,
    /// Peers heard sending version-1 digests only, and when.
    legacy: BTreeMap<String, Instant>,
    peer_ttl: Duration,
    round: u64,
    awaiting: Option<Awaiting>,
    /// Regions whose entries this node published lately: when, level, index.
    served: VecDeque<(Instant, u8, usize)>,
}

impl Default for Repair {
    fn default() -> Self {
        Repair {
            peers: BTreeMap::new(),
            legacy: BTreeMap::new(),
            peer_ttl: DEFAULT_PEER_TTL,
            round: 0,
            awaiting: None,
            served: VecDeque::new(),
        }
    }
}

impl Repair {
    pub(super) fn set_digest_interval(&mut self, every: Duration) {
        self.peer_ttl = every.saturating_mul(3).max(Duration::from_secs(10));
    }

    fn heard(&mut self, from: &str, now: Instant) {
        self.legacy.remove(from);
        self.peers.insert(from.to_string(), now);
    }

    /// Peers heard within the TTL.
    fn live<'a>(&'a self, now: Instant) -> impl Iterator<Item = &'a str> + 'a {
        self.peers
            .iter()
            .filter(move |(_, last)| now.saturating_duration_since(**last) <= self.peer_ttl)
            .map(|(name, _)| name.as_str())
    }

    /// The peer to answer this node's next summary, skipping `tried`: the highest
    /// [`rank`] for this round, so each round asks another; `"*"` when none is known.
    fn choose(&self, me: &str, tried: &[String], now: Instant) -> String {
        self.live(now)
            .filter(|name| !tried.iter().any(|t| t == name))
            .max_by_key(|name| rank(me, name, self.round))
            .map_or_else(|| ANYONE.to_string(), str::to_string)
    }

    /// Whether this node answers `from`'s summary to everyone of `round`: it ranks
    /// highest among the peers it knows (the sender's choice, had it known them).
    fn answers_anyone(&self, me: &str, from: &str, round: u32, now: Instant) -> bool {
        let mine = rank(from, me, u64::from(round));
        !self
            .live(now)
            .filter(|name| *name != from)
            .any(|name| rank(from, name, u64::from(round)) > mine)
    }

    fn has_legacy(&self, now: Instant) -> bool {
        self.legacy
            .values()
            .any(|t| now.saturating_duration_since(*t) <= self.peer_ttl)
    }

    /// Whether `region` (or one holding it) was published within [`SERVED_WINDOW`]:
    /// the peer asking most likely received it then, with everyone else. If it was not
    /// listening yet, its confirming summary asks again once the window has passed.
    fn served_lately(&self, level: u8, index: usize, now: Instant) -> bool {
        self.served.iter().any(|&(t, l, i)| {
            now.saturating_duration_since(t) <= SERVED_WINDOW
                && l <= level
                && region_of_leaf(first_leaf(level, index), l) == i
        })
    }

    pub(super) fn timeout(&self) -> Option<Instant> {
        self.awaiting.as_ref().map(|a| a.deadline)
    }
}

/// Rendezvous weight of `peer` as the answerer of `node`'s summary in `round`.
fn rank(node: &str, peer: &str, round: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(node.as_bytes());
    h.update(&[0]);
    h.update(peer.as_bytes());
    h.update(&round.to_le_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// The first leaf of region `index` at `level`.
fn first_leaf(level: u8, index: usize) -> usize {
    match level {
        0 => 0,
        1 => index << 11,
        2 => index << 6,
        _ => index,
    }
}

impl Engine {
    /// Publishes this node's summary, addressed to one answerer. `reply`: the answerer
    /// must respond even when nothing differs, and another is asked if it does not.
    /// The runtime calls it through the schedule; a simulation may call it any time.
    pub fn send_summary(&mut self, reply: bool, now: Instant) {
        self.summary(reply, now, Vec::new(), false);
        if self.repair.has_legacy(now) {
            self.effects.push_back(Effect::SendDigest { reply });
        }
    }

    /// A new round's summary to the best answerer not in `tried`.
    fn summary(&mut self, reply: bool, now: Instant, mut tried: Vec<String>, confirm: bool) {
        self.repair.round = self.repair.round.wrapping_add(1);
        let to = self.repair.choose(self.node(), &tried, now);
        if reply {
            tried.push(to.clone());
            self.repair.awaiting = Some(Awaiting {
                answerer: to.clone(),
                deadline: now + ANSWER_TIMEOUT,
                tried,
                answered: false,
                confirm,
            });
        }
        self.effects.push_back(Effect::SendSummary {
            to,
            reply,
            round: self.repair.round as u32,
            groups: self.digest.groups().to_vec(),
        });
    }

    /// A summary that asked for a reply is due for its next step: answered, it is
    /// confirmed once; unanswered, the next answerer is asked, [`TRIES`] in all (the
    /// periodic summaries go on after that).
    pub(super) fn repair_due(&mut self, now: Instant) {
        if self
            .repair
            .awaiting
            .as_ref()
            .is_none_or(|a| a.deadline > now)
        {
            return;
        }
        let Some(a) = self.repair.awaiting.take() else {
            return;
        };
        if a.answered {
            if !a.confirm {
                self.summary(true, now, Vec::new(), true);
            }
        } else if a.tried.len() < TRIES {
            self.summary(true, now, a.tried, a.confirm);
        }
    }

    fn answered_by(&mut self, from: &str) {
        if let Some(a) = &mut self.repair.awaiting
            && (a.answerer == from || a.answerer == ANYONE)
        {
            if a.confirm {
                self.repair.awaiting = None;
            } else {
                a.answered = true;
            }
        }
    }

    /// A peer's summary: compared only when addressed to this node (or to everyone).
    pub fn handle_summary(&mut self, from: &str, s: &Summary<'_>, now: Instant) {
        let me = self.node().to_string();
        let for_me =
            s.to == me || (s.to == ANYONE && self.repair.answers_anyone(&me, from, s.round, now));
        self.repair.heard(from, now);
        if s.to == me {
            self.answered_by(from);
        }
        if !for_me || s.groups.len() != fanout(0) {
            return;
        }
        if self.digest.groups() == s.groups {
            // The acknowledgement: a step with nothing left to compare.
            if s.reply {
                self.effects.push_back(Effect::SendDescent {
                    to: from.to_string(),
                    items: Vec::new(),
                });
            }
            return;
        }
        let region = Region {
            level: 0,
            index: 0,
            kids: s.groups.to_vec(),
        };
        if !self.exchange(from, std::slice::from_ref(&region), now) {
            // Only entries were published (the sender holds nothing there): the
            // acknowledgement tells it that it was answered.
            self.effects.push_back(Effect::SendDescent {
                to: from.to_string(),
                items: Vec::new(),
            });
        }
    }

    /// A peer's step down the region tree, when addressed to this node.
    pub fn handle_descent(&mut self, from: &str, to: &str, items: &[Region], now: Instant) {
        self.repair.heard(from, now);
        if to != self.node() {
            return;
        }
        self.answered_by(from);
        self.exchange(from, items, now);
    }

    /// Compares `items` with this node's regions: publishes its entries where a region
    /// is asked for or small, and answers `from` with the next level where it is not.
    /// Returns whether it answered.
    fn exchange(&mut self, from: &str, items: &[Region], now: Instant) -> bool {
        let mut publish = Vec::new();
        let mut answer = Vec::new();
        for item in items.iter().filter(|r| r.is_valid()) {
            let index = item.index as usize;
            if item.kids.is_empty() {
                publish.push((item.level, index));
                continue;
            }
            let mine = self.digest.children(item.level, index);
            let level = item.level + 1;
            let n = fanout(item.level);
            for (k, (a, b)) in mine.iter().zip(&item.kids).enumerate() {
                if a == b {
                    continue;
                }
                let child = index * n + k;
                let count = self.digest.count(level, child);
                if level == LEAF_LEVEL || count <= LEAF_MAX || *b == 0 {
                    if count > 0 {
                        publish.push((level, child));
                    }
                    if *b != 0 {
                        answer.push(Region {
                            level,
                            index: child as u32,
                            kids: Vec::new(),
                        });
                    }
                } else {
                    answer.push(Region {
                        level,
                        index: child as u32,
                        kids: self.digest.children(level, child).to_vec(),
                    });
                }
            }
        }
        self.publish_regions(publish, now);
        if answer.is_empty() {
            return false;
        }
        self.effects.push_back(Effect::SendDescent {
            to: from.to_string(),
            items: answer,
        });
        true
    }

    /// Publishes this node's entries in `wanted` regions, except those published lately.
    fn publish_regions(&mut self, wanted: Vec<(u8, usize)>, now: Instant) {
        while self
            .repair
            .served
            .front()
            .is_some_and(|(t, ..)| now.saturating_duration_since(*t) > SERVED_WINDOW)
        {
            self.repair.served.pop_front();
        }
        let mut leaves = vec![false; regions(LEAF_LEVEL)];
        let mut any = false;
        for (level, index) in wanted {
            if self.repair.served_lately(level, index, now) {
                continue;
            }
            self.repair.served.push_back((now, level, index));
            let first = first_leaf(level, index);
            let n = regions(LEAF_LEVEL) / regions(level);
            leaves[first..first + n].fill(true);
            any = true;
        }
        if !any {
            return;
        }
        let entries: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| leaves[super::digest::leaf_of(&e.path)])
            .cloned()
            .collect();
        if !entries.is_empty() {
            self.effects.push_back(Effect::SendEntries(entries));
        }
    }

    /// A version-1 peer's digest: answered as version 1 did, with all our entries in
    /// every bucket that differs. Ignored from a peer that also sends summaries (it
    /// sends both while version-1 peers are around).
    pub fn handle_digest(&mut self, from: &str, buckets: &[u64], reply: bool, now: Instant) {
        if self.repair.peers.contains_key(from) {
            return;
        }
        self.repair.legacy.insert(from.to_string(), now);
        let differing = self.digest.differing(buckets);
        if differing.is_empty() {
            return;
        }
        let mut wanted = vec![false; super::digest::BUCKETS];
        for i in differing {
            wanted[i] = true;
        }
        let entries: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| wanted[super::digest::bucket_of(&e.path)])
            .cloned()
            .collect();
        if !entries.is_empty() {
            self.effects.push_back(Effect::SendEntries(entries));
        }
        if reply {
            self.effects.push_back(Effect::SendDigest { reply: false });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ChunkRef, Content, Mode};
    use crate::protocol::relpath::RelPath;

    fn engine(name: &str, files: u8) -> Engine {
        let mut e = Engine::new(name, Mode::SendReceive, []);
        for i in 0..files {
            let c = Content::File {
                size: 1,
                mode: 0o644,
                mtime_ns: 0,
                chunks: [ChunkRef {
                    hash: [i; 32],
                    len: 1,
                }]
                .into(),
            };
            e.handle_local(RelPath::new(format!("f{i}")).unwrap(), c);
        }
        while e.poll_effect().is_some() {}
        e
    }

    fn summary_of(e: &Engine, to: &str, reply: bool) -> (Vec<u64>, String, bool) {
        (e.digest.groups().to_vec(), to.to_string(), reply)
    }

    fn effects(e: &mut Engine) -> Vec<Effect> {
        std::iter::from_fn(|| e.poll_effect()).collect()
    }

    #[test]
    fn only_the_named_answerer_compares() {
        let a = engine("a", 5);
        let mut b = engine("b", 0);
        let (groups, _, _) = summary_of(&a, "c", true);
        let now = Instant::now();
        let s = Summary {
            to: "c",
            reply: true,
            round: 1,
            groups: &groups,
        };
        b.handle_summary("a", &s, now);
        assert!(effects(&mut b).is_empty(), "b stays silent for c");
        let s = Summary { to: "b", ..s };
        b.handle_summary("a", &s, now);
        // b holds nothing there: it asks for a's entries of every differing group.
        let out = effects(&mut b);
        assert!(
            matches!(&out[..], [Effect::SendDescent { to, items }] if to == "a"
                && !items.is_empty() && items.iter().all(|r| r.kids.is_empty())),
            "{out:?}"
        );
    }

    #[test]
    fn an_unanswered_summary_asks_the_next_peer_then_confirms_once_answered() {
        let mut a = engine("a", 3);
        let t0 = Instant::now();
        let peer = |name: &'static str| (name, engine(name, 3).digest.groups().to_vec());
        for (name, groups) in [peer("b"), peer("c")] {
            let s = Summary {
                to: "x",
                reply: false,
                round: 1,
                groups: &groups,
            };
            a.handle_summary(name, &s, t0);
        }
        a.send_summary(true, t0);
        let first = match &effects(&mut a)[..] {
            [
                Effect::SendSummary {
                    to, reply: true, ..
                },
            ] => to.clone(),
            other => panic!("{other:?}"),
        };
        assert!(first == "b" || first == "c");
        // Silence: the other peer is asked.
        assert_eq!(a.poll_timeout(), Some(t0 + ANSWER_TIMEOUT));
        let t1 = t0 + ANSWER_TIMEOUT;
        a.handle_timeout(t1);
        let second = match &effects(&mut a)[..] {
            [
                Effect::SendSummary {
                    to, reply: true, ..
                },
            ] => to.clone(),
            other => panic!("{other:?}"),
        };
        assert_ne!(first, second);
        // It acknowledges; 5 s later one confirming summary goes out, and its
        // acknowledgement settles it.
        a.handle_descent(&second, "a", &[], t1);
        assert!(effects(&mut a).is_empty());
        let t2 = t1 + ANSWER_TIMEOUT;
        a.handle_timeout(t2);
        let third = match &effects(&mut a)[..] {
            [
                Effect::SendSummary {
                    to, reply: true, ..
                },
            ] => to.clone(),
            other => panic!("{other:?}"),
        };
        a.handle_descent(&third, "a", &[], t2);
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn a_region_published_lately_is_not_published_again() {
        let mut a = engine("a", 10);
        let want = [Region {
            level: 0,
            index: 0,
            kids: vec![0; GROUPS_FANOUT],
        }];
        let t0 = Instant::now();
        a.handle_descent("b", "a", &want, t0);
        let sent = |out: &[Effect]| {
            out.iter()
                .filter(|e| matches!(e, Effect::SendEntries(_)))
                .count()
        };
        assert_eq!(sent(&effects(&mut a)), 1);
        a.handle_descent("c", "a", &want, t0 + Duration::from_secs(1));
        assert_eq!(sent(&effects(&mut a)), 0, "c got them with everyone");
        a.handle_descent("c", "a", &want, t0 + SERVED_WINDOW + Duration::from_secs(1));
        assert_eq!(sent(&effects(&mut a)), 1);
    }

    const GROUPS_FANOUT: usize = crate::engine::GROUPS;
}
