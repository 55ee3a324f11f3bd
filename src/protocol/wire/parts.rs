//! Messages larger than the broker's packet limit (`broker.max_message_bytes`) go out
//! as `Part` messages: the encoded message is cut into pieces, each signed as a message
//! of its own, and the receiver joins them in order and decodes the result like any
//! message. Pure bookkeeping: no I/O, bounded memory per sender.

use super::codec::{EncodeError, MAX_MESSAGE_BYTES, encode_with};
use super::{Envelope, Keys, Message};
use crate::engine::Hash;
use std::collections::HashMap;

/// Senders with a message being joined at once; past it the oldest is dropped. The
/// senders are authenticated members of the group, so this only bounds a faulty one.
const MAX_JOINING: usize = 64;

/// MQTT 3.1.1 PUBLISH packet bytes besides the payload: the fixed header (1 byte and a
/// remaining length of at most 4), the topic's length and the packet id (QoS 1).
pub fn packet_overhead(topic: &str) -> usize {
    1 + 4 + 2 + topic.len() + 2
}

/// Encodes `env` for `topic` as one payload when its PUBLISH packet fits `max_packet`
/// bytes, otherwise as `Part` messages whose packets each fit. Chunk data is compressed
/// when `compress` says so (other messages always try); parts never are (their bytes
/// are an encoded message, compressed already where that helped).
pub fn encode_fitting(
    env: &Envelope,
    topic: &str,
    keys: &Keys,
    compress: bool,
    max_packet: usize,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    let whole = encode_with(env, topic, keys, compress)?;
    let room = max_packet.saturating_sub(packet_overhead(topic));
    if whole.len() <= room {
        return Ok(vec![whole]);
    }
    let id = *blake3::hash(&whole).as_bytes();
    let total = whole.len() as u32;
    let part = |offset: u32, data: Vec<u8>| Envelope {
        from: env.from.clone(),
        msg: Message::Part {
            id,
            total,
            offset,
            data,
        },
    };
    // An empty part with the largest offset, plus the most the data's length prefix
    // (a varint) can grow: what every part costs besides its data.
    let overhead = encode_with(&part(total, Vec::new()), topic, keys, false)?.len() + 4;
    let piece = room.saturating_sub(overhead);
    if piece == 0 {
        return Err(EncodeError::TooLarge(whole.len()));
    }
    pieces(&whole, piece)
        .map(|(offset, data)| encode_with(&part(offset, data.to_vec()), topic, keys, false))
        .collect()
}

/// Cuts `payload` into pieces of at most `piece` bytes: `(offset, bytes)` in order.
pub fn pieces(payload: &[u8], piece: usize) -> impl Iterator<Item = (u32, &[u8])> {
    payload
        .chunks(piece.max(1))
        .enumerate()
        .map(move |(i, p)| ((i * piece.max(1)) as u32, p))
}

/// A message being joined: its id (BLAKE3 of the whole), size and the bytes so far.
struct Joining {
    id: Hash,
    total: usize,
    bytes: Vec<u8>,
    /// When it started, in `add` calls, to drop the oldest first.
    started: u64,
}

/// What a `Part` did to its sender's message being joined.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined {
    /// The whole message, ready to decode.
    Complete(Vec<u8>),
    /// More parts to come.
    Waiting,
    /// A part that does not continue what was joined (lost or reordered parts): what
    /// was joined is dropped and the sync protocol asks again for what it carried.
    Dropped(&'static str),
}

/// The messages being joined, one per sender (a sender publishes a message's parts
/// back to back on its own topic, and MQTT keeps a topic's order).
#[derive(Default)]
pub struct Reassembly {
    joining: HashMap<String, Joining>,
    calls: u64,
}

impl Reassembly {
    /// Adds the part at `offset` of message `id` (`total` bytes) from `sender`.
    pub fn add(&mut self, sender: &str, id: Hash, total: u32, offset: u32, data: &[u8]) -> Joined {
        self.calls += 1;
        let (total, offset) = (total as usize, offset as usize);
        if total > MAX_MESSAGE_BYTES || data.is_empty() || offset + data.len() > total {
            self.joining.remove(sender);
            return Joined::Dropped("part out of bounds");
        }
        if offset == 0 {
            if self.joining.get(sender).is_some_and(|j| j.id == id) {
                // A repeated first part (redelivered by QoS 1): keep what was joined.
                return Joined::Waiting;
            }
            if !self.joining.contains_key(sender) && self.joining.len() >= MAX_JOINING {
                let oldest = self
                    .joining
                    .iter()
                    .min_by_key(|(_, j)| j.started)
                    .map(|(s, _)| s.clone());
                if let Some(s) = oldest {
                    self.joining.remove(&s);
                }
            }
            let mut bytes = Vec::with_capacity(total);
            bytes.extend_from_slice(data);
            self.joining.insert(
                sender.to_string(),
                Joining {
                    id,
                    total,
                    bytes,
                    started: self.calls,
                },
            );
        } else {
            let Some(j) = self.joining.get_mut(sender) else {
                return Joined::Dropped("a part without the message's first part");
            };
            if j.id != id || j.total != total {
                self.joining.remove(sender);
                return Joined::Dropped("a part of another message");
            }
            if offset < j.bytes.len() {
                // Redelivered: already joined.
                return Joined::Waiting;
            }
            if offset > j.bytes.len() {
                self.joining.remove(sender);
                return Joined::Dropped("a part is missing");
            }
            j.bytes.extend_from_slice(data);
        }
        let done = self
            .joining
            .get(sender)
            .is_some_and(|j| j.bytes.len() == j.total);
        if !done {
            return Joined::Waiting;
        }
        let Some(j) = self.joining.remove(sender) else {
            return Joined::Waiting;
        };
        if *blake3::hash(&j.bytes).as_bytes() != j.id {
            return Joined::Dropped("joined parts do not match the message's id");
        }
        Joined::Complete(j.bytes)
    }

    /// Forgets every message being joined (the connection was lost: its missing parts
    /// will not come).
    pub fn clear(&mut self) {
        self.joining.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: usize) -> (Vec<u8>, Hash) {
        let m: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
        let id = *blake3::hash(&m).as_bytes();
        (m, id)
    }

    #[test]
    fn parts_in_order_join_to_the_message() {
        let (m, id) = msg(10_000);
        let mut r = Reassembly::default();
        let parts: Vec<_> = pieces(&m, 3_000).collect();
        assert_eq!(parts.len(), 4);
        for (i, (off, p)) in parts.iter().enumerate() {
            let got = r.add("a", id, m.len() as u32, *off, p);
            if i + 1 < parts.len() {
                assert_eq!(got, Joined::Waiting);
            } else {
                assert_eq!(got, Joined::Complete(m.clone()));
            }
        }
    }

    #[test]
    fn repeated_parts_are_ignored_and_gaps_drop_the_message() {
        let (m, id) = msg(9_000);
        let parts: Vec<_> = pieces(&m, 3_000).collect();
        let mut r = Reassembly::default();
        let total = m.len() as u32;
        assert_eq!(r.add("a", id, total, 0, parts[0].1), Joined::Waiting);
        assert_eq!(r.add("a", id, total, 0, parts[0].1), Joined::Waiting);
        assert_eq!(r.add("a", id, total, 3_000, parts[1].1), Joined::Waiting);
        assert_eq!(r.add("a", id, total, 3_000, parts[1].1), Joined::Waiting);
        assert_eq!(
            r.add("a", id, total, 6_000, parts[2].1),
            Joined::Complete(m.clone())
        );
        // A gap: the third part without the second.
        assert_eq!(r.add("a", id, total, 0, parts[0].1), Joined::Waiting);
        assert!(matches!(
            r.add("a", id, total, 6_000, parts[2].1),
            Joined::Dropped(_)
        ));
        // A part without a first part, or of another message.
        assert!(matches!(
            r.add("b", id, total, 3_000, parts[1].1),
            Joined::Dropped(_)
        ));
        assert_eq!(r.add("b", id, total, 0, parts[0].1), Joined::Waiting);
        assert!(matches!(
            r.add("b", [9; 32], total, 3_000, parts[1].1),
            Joined::Dropped(_)
        ));
    }

    #[test]
    fn senders_join_separately_and_bounds_hold() {
        let (m, id) = msg(4_000);
        let (n, id2) = msg(5_000);
        let mut r = Reassembly::default();
        assert_eq!(r.add("a", id, 4_000, 0, &m[..2_000]), Joined::Waiting);
        assert_eq!(r.add("b", id2, 5_000, 0, &n[..2_500]), Joined::Waiting);
        assert_eq!(
            r.add("b", id2, 5_000, 2_500, &n[2_500..]),
            Joined::Complete(n.clone())
        );
        assert_eq!(
            r.add("a", id, 4_000, 2_000, &m[2_000..]),
            Joined::Complete(m.clone())
        );
        // Too large, past its total, empty, or a forged id.
        let big = (MAX_MESSAGE_BYTES + 1) as u32;
        assert!(matches!(r.add("a", id, big, 0, &m), Joined::Dropped(_)));
        assert!(matches!(r.add("a", id, 10, 0, &m), Joined::Dropped(_)));
        assert!(matches!(r.add("a", id, 10, 0, &[]), Joined::Dropped(_)));
        assert!(matches!(
            r.add("a", [1; 32], 4_000, 0, &m),
            Joined::Dropped(_)
        ));
        // Many senders: the oldest is dropped, memory stays bounded.
        for s in 0..(MAX_JOINING + 10) {
            r.add(&format!("s{s}"), id, 4_000, 0, &m[..10]);
        }
        assert_eq!(r.joining.len(), MAX_JOINING);
        assert!(!r.joining.contains_key("s0"));
    }

    /// Bytes zstd cannot shrink.
    fn noise(n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        blake3::Hasher::new().finalize_xof().fill(&mut out);
        out
    }

    #[test]
    fn a_large_message_goes_out_in_parts_that_fit_and_decode_back() {
        let keys = Keys::new(vec![Keys::derive(b"k")]).unwrap();
        let topic = "mqsync/f/v1/n1";
        let env = Envelope {
            from: "n1".into(),
            msg: Message::Chunks {
                chunks: vec![super::super::ChunkData {
                    hash: [3; 32],
                    data: noise(300_000),
                }],
            },
        };
        let max = 40_000;
        let out = encode_fitting(&env, topic, &keys, true, max).unwrap();
        assert!(out.len() > 7, "{} parts", out.len());
        let mut r = Reassembly::default();
        let mut joined = None;
        for p in &out {
            assert!(p.len() + packet_overhead(topic) <= max, "{}", p.len());
            let Message::Part {
                id,
                total,
                offset,
                data,
            } = super::super::decode(p, topic, "n1", &keys).unwrap().msg
            else {
                panic!("not a part");
            };
            if let Joined::Complete(m) = r.add("n1", id, total, offset, &data) {
                joined = Some(m);
            }
        }
        let back = super::super::decode(&joined.unwrap(), topic, "n1", &keys).unwrap();
        assert_eq!(back, env);
        // A message that fits goes out whole.
        let small = encode_fitting(&env, topic, &keys, true, 1_000_000).unwrap();
        assert_eq!(small.len(), 1);
        assert!(matches!(
            super::super::decode(&small[0], topic, "n1", &keys)
                .unwrap()
                .msg,
            Message::Chunks { .. }
        ));
    }

    #[test]
    fn pieces_cover_the_payload() {
        let (m, _) = msg(10);
        let p: Vec<_> = pieces(&m, 4).collect();
        assert_eq!(p, vec![(0, &m[..4]), (4, &m[4..8]), (8, &m[8..])]);
    }
}
