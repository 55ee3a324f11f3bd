//! The embedded broker's topic rule, the same one `broker/mosquitto.acl` ships: a client
//! may publish only under its own certificate's common name (`…/v1/{cn}`,
//! `…/status/{cn}`, `…/pending/{cn}`) and to the unauthenticated `…/cmd` topics; an
//! operator certificate (CN `mqsync-operator`) may also clear any node's status, pending
//! and mount documents with empty messages (`mqsync forget`). To enforce it in front of
//! rumqttd, which has no ACLs, this reads just enough of the client's MQTT 3.1.1 byte
//! stream to find each PUBLISH topic and the CONNECT will topic.

use crate::broker::certs::OPERATOR_CN;
use crate::protocol::topics::{self, Kind};

/// Largest CONNECT packet accepted (client id, will topic and will message included):
/// mqsync's own are well under 1 KiB.
pub const MAX_CONNECT_BYTES: usize = 64 * 1024;

const CONNECT: u8 = 1;
const PUBLISH: u8 = 3;

/// What the front may do with the bytes at the start of a client's unforwarded stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The next packet is allowed and is this many bytes long (header included); the
    /// bytes may be forwarded as they arrive.
    Forward(usize),
    /// More bytes are needed to decide.
    NeedMore,
    /// The packet breaks the rule or is malformed: close the connection.
    Deny(String),
}

/// Who a client may publish as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity<'a> {
    /// Only as the node its certificate names.
    Node(&'a str),
    /// As any node: the broker was told that nodes share one certificate.
    AnyNode,
    /// An operator certificate (CN [`OPERATOR_CN`]): clears documents of nodes that
    /// left (`mqsync forget`), and sends commands.
    Operator,
}

impl<'a> Identity<'a> {
    /// The identity a client certificate with common name `cn` gets.
    pub fn of(cn: &'a str, shared_node_cert: bool) -> Identity<'a> {
        match cn {
            OPERATOR_CN => Identity::Operator,
            _ if shared_node_cert => Identity::AnyNode,
            _ => Identity::Node(cn),
        }
    }
}

impl std::fmt::Display for Identity<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Node(n) => write!(f, "node {n:?}"),
            Identity::AnyNode => f.write_str("a node sharing the nodes' certificate"),
            Identity::Operator => f.write_str("the operator"),
        }
    }
}

/// What a client may publish on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    No,
    Any,
    /// Only an empty message, which clears a retained document.
    EmptyOnly,
}

/// May a client with `identity` publish a message (of any content) to `topic`?
pub fn may_publish(identity: Identity<'_>, topic: &str) -> bool {
    allowed(identity, topic) == Allowed::Any
}

/// What a client with `identity` may publish to `topic`.
pub fn allowed(identity: Identity<'_>, topic: &str) -> Allowed {
    let yes = |b: bool| if b { Allowed::Any } else { Allowed::No };
    let as_itself = |node: &str| match identity {
        Identity::Node(id) => yes(!id.is_empty() && node == id),
        Identity::AnyNode => yes(!node.is_empty()),
        Identity::Operator => Allowed::No,
    };
    let clear = |node: &str| match identity {
        Identity::Operator if !node.is_empty() => Allowed::EmptyOnly,
        _ => as_itself(node),
    };
    match topics::classify(topic) {
        // Any node may announce or remove a Docker volume (the announcement's MAC, not
        // the broker, decides whether it counts); mount reports only as itself.
        Some(Kind::Volume { name }) => {
            yes(!name.is_empty() && !matches!(identity, Identity::Node("") | Identity::Operator))
        }
        Some(Kind::Data { node, .. }) => as_itself(node),
        Some(Kind::Mounts { node } | Kind::Status { node, .. } | Kind::Pending { node, .. }) => {
            clear(node)
        }
        Some(Kind::Cmd { folder }) => yes(!folder.is_empty()),
        None => Allowed::No,
    }
}

/// Judges the packet at the start of `buf` for a client with `identity`.
pub fn inspect(buf: &[u8], identity: Identity<'_>) -> Verdict {
    let Header {
        first,
        header,
        remaining,
        total,
    } = match fixed_header(buf) {
        Ok(Some(h)) => h,
        Ok(None) => return Verdict::NeedMore,
        Err(e) => return Verdict::Deny(e),
    };
    let body = &buf[header..];
    match first >> 4 {
        PUBLISH => {
            if remaining < 2 {
                return Verdict::Deny("PUBLISH without a topic".into());
            }
            let Some(topic) = read_str(body, 0) else {
                return Verdict::NeedMore;
            };
            let (topic, after) = match topic {
                Ok(t) => t,
                Err(e) => return Verdict::Deny(e),
            };
            let id_len = if (first >> 1) & 3 > 0 { 2 } else { 0 };
            match allowed(identity, topic) {
                Allowed::Any => Verdict::Forward(total),
                Allowed::EmptyOnly if after + id_len == remaining => Verdict::Forward(total),
                Allowed::EmptyOnly => Verdict::Deny(format!(
                    "publish to {topic:?}: {identity} may only clear it (an empty message)"
                )),
                Allowed::No => Verdict::Deny(format!(
                    "publish to {topic:?} is outside the topics of {identity}"
                )),
            }
        }
        CONNECT => {
            if total > MAX_CONNECT_BYTES {
                return Verdict::Deny(format!("CONNECT of {total} bytes"));
            }
            if buf.len() < total {
                return Verdict::NeedMore;
            }
            match connect_will_topic(&buf[header..total]) {
                Ok(None) => Verdict::Forward(total),
                Ok(Some(will)) if may_publish(identity, &will) => Verdict::Forward(total),
                Ok(Some(will)) => Verdict::Deny(format!(
                    "last-will topic {will:?} is outside the topics of {identity}"
                )),
                Err(e) => Verdict::Deny(e),
            }
        }
        _ => Verdict::Forward(total),
    }
}

/// What [`own_echo`] found at the start of rumqttd's stream to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Echo {
    /// A QoS 0 or 1 PUBLISH this many bytes long; `pkid` at QoS 1, whose
    /// acknowledgements rumqttd takes only in the order it sent them; `own` when it is
    /// the client's own data message coming back.
    Publish {
        len: usize,
        pkid: Option<u16>,
        own: bool,
    },
    /// Any other packet, this many bytes long.
    Other(usize),
    NeedMore,
    Malformed(String),
}

/// Is the packet at the start of `buf` (from rumqttd to the client of node `own`) the
/// node's own data message (`…/{folder}/v1/{own}`) coming back? Without `own` (shared
/// node certificates) nothing is. QoS 2 messages are left alone: dropping one would
/// need the four-way handshake answered in the client's stead.
pub fn own_echo(buf: &[u8], own: Option<&str>) -> Echo {
    let Header {
        first,
        header,
        remaining,
        total,
    } = match fixed_header(buf) {
        Ok(Some(h)) => h,
        Ok(None) => return Echo::NeedMore,
        Err(e) => return Echo::Malformed(e),
    };
    let qos = (first >> 1) & 3;
    let Some(own) = own.filter(|_| first >> 4 == PUBLISH && qos < 2) else {
        return Echo::Other(total);
    };
    let body = &buf[header..];
    if let Some(&[hi, lo]) = body.get(..2)
        && 2 + usize::from(u16::from_be_bytes([hi, lo])) > remaining
    {
        return Echo::Malformed("PUBLISH topic longer than the packet".into());
    }
    let (topic, after) = match read_str(body, 0) {
        None if remaining < 2 => return Echo::Malformed("PUBLISH without a topic".into()),
        None => return Echo::NeedMore,
        Some(Err(e)) => return Echo::Malformed(e),
        Some(Ok(t)) => t,
    };
    if after > remaining {
        return Echo::Malformed("PUBLISH topic longer than the packet".into());
    }
    // `{prefix}/{folder}/v1/{own}`, read from the end without allocating.
    let own = topics::data_parts(topic).is_some_and(|(_, node)| node == own);
    if qos == 0 {
        return Echo::Publish {
            len: total,
            pkid: None,
            own,
        };
    }
    if after + 2 > remaining {
        return Echo::Malformed("QoS 1 PUBLISH without a packet id".into());
    }
    match body.get(after..after + 2) {
        Some(id) => Echo::Publish {
            len: total,
            pkid: Some(u16::from_be_bytes([id[0], id[1]])),
            own,
        },
        None => Echo::NeedMore,
    }
}

/// An MQTT fixed header: its first byte, its length, the remaining length after it, and
/// the whole packet's length.
struct Header {
    first: u8,
    header: usize,
    remaining: usize,
    total: usize,
}

/// The fixed header at the start of `buf`: `Ok(None)` while incomplete.
fn fixed_header(buf: &[u8]) -> Result<Option<Header>, String> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some((remaining, len_bytes)) = remaining_length(&buf[1..])? else {
        return Ok(None);
    };
    let header = 1 + len_bytes;
    Ok(Some(Header {
        first,
        header,
        remaining,
        total: header + remaining,
    }))
}

/// The MQTT variable-length "remaining length": `Ok(None)` while incomplete.
fn remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, String> {
    let mut value = 0usize;
    for (i, &b) in buf.iter().enumerate().take(4) {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        Err("malformed remaining length".into())
    } else {
        Ok(None)
    }
}

/// A length-prefixed UTF-8 string at `at`: `None` while incomplete, else the string and
/// the offset after it.
fn read_str(buf: &[u8], at: usize) -> Option<Result<(&str, usize), String>> {
    let len_bytes = buf.get(at..at + 2)?;
    let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
    let bytes = buf.get(at + 2..at + 2 + len)?;
    Some(
        std::str::from_utf8(bytes)
            .map(|s| (s, at + 2 + len))
            .map_err(|_| "topic is not UTF-8".to_string()),
    )
}

/// The will topic of a complete CONNECT body (after the fixed header), if it has one.
fn connect_will_topic(body: &[u8]) -> Result<Option<String>, String> {
    let truncated = || "truncated CONNECT".to_string();
    let (_protocol, at) = read_str(body, 0).ok_or_else(truncated)??;
    // Protocol level, connect flags, keep-alive.
    let flags = *body.get(at + 1).ok_or_else(truncated)?;
    let at = at + 4;
    let (_client_id, at) = read_str(body, at).ok_or_else(truncated)??;
    if flags & 0x04 == 0 {
        return Ok(None);
    }
    let (will, _) = read_str(body, at).ok_or_else(truncated)??;
    Ok(Some(will.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const N1: Identity = Identity::Node("n1");
    const N2: Identity = Identity::Node("n2");
    const NOBODY: Identity = Identity::Node("");

    fn publish(topic: &str, payload_len: usize) -> Vec<u8> {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        body.extend(std::iter::repeat_n(7u8, payload_len));
        packet(0x30, body)
    }

    /// A packet of `first` and `body`, with its remaining length encoded between them.
    fn packet(first: u8, body: Vec<u8>) -> Vec<u8> {
        let mut out = vec![first];
        let mut r = body.len();
        loop {
            let mut b = (r % 128) as u8;
            r /= 128;
            if r > 0 {
                b |= 0x80;
            }
            out.push(b);
            if r == 0 {
                break;
            }
        }
        out.extend(body);
        out
    }

    fn connect(will: Option<&str>) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&4u16.to_be_bytes());
        body.extend_from_slice(b"MQTT");
        body.push(4);
        body.push(if will.is_some() { 0x06 } else { 0x02 });
        body.extend_from_slice(&30u16.to_be_bytes());
        body.extend_from_slice(&2u16.to_be_bytes());
        body.extend_from_slice(b"id");
        if let Some(w) = will {
            body.extend_from_slice(&(w.len() as u16).to_be_bytes());
            body.extend_from_slice(w.as_bytes());
            body.extend_from_slice(&3u16.to_be_bytes());
            body.extend_from_slice(b"off");
        }
        let mut out = vec![0x10, body.len() as u8];
        out.extend(body);
        out
    }

    #[test]
    fn the_rule_matches_the_mosquitto_acl() {
        assert!(may_publish(N1, "mqsync/f/v1/n1"));
        assert!(may_publish(N1, "mqsync/f/status/n1"));
        assert!(may_publish(N1, "a/b/mqsync/f/v1/n1"));
        assert!(may_publish(N1, "mqsync/f/cmd"));
        assert!(may_publish(NOBODY, "mqsync/f/cmd"));
        assert!(!may_publish(N1, "mqsync/f/v1/n2"));
        assert!(!may_publish(N1, "mqsync/f/status/n2"));
        assert!(may_publish(N1, "mqsync/f/pending/n1"));
        assert!(!may_publish(N1, "mqsync/f/pending/n2"));
        assert!(!may_publish(N1, "mqsync/f/pending/"));
        assert!(!may_publish(N1, "mqsync/f/pending/n1/x"));
        assert!(!may_publish(N1, "mqsync/f/v1/n1/extra"));
        assert!(!may_publish(N1, "v1/n1"));
        assert!(!may_publish(N1, "other/topic"));
        assert!(!may_publish(NOBODY, "mqsync/f/v1/"));
        assert!(!may_publish(N1, "/cmd"));
        assert!(may_publish(Identity::AnyNode, "mqsync/f/v1/n2"));
        assert!(may_publish(N1, "mqsync/v1/volumes/demo"));
        assert!(may_publish(N1, "mqsync/v1/volume-mounts/n1"));
        assert!(!may_publish(N1, "mqsync/v1/volume-mounts/n2"));
        assert!(!may_publish(N1, "mqsync/v1/volumes/"));
        assert!(!may_publish(N1, "mqsync/v1/volumes/a/b"));
        assert!(!may_publish(Identity::AnyNode, "mqsync/f/v1/"));
        assert!(!may_publish(Identity::AnyNode, "other/topic"));
    }

    #[test]
    fn an_operator_may_only_clear_node_documents() {
        let op = Identity::of(OPERATOR_CN, false);
        assert_eq!(op, Identity::Operator);
        assert_eq!(Identity::of(OPERATOR_CN, true), Identity::Operator);
        assert_eq!(Identity::of("n1", true), Identity::AnyNode);
        for t in [
            "mqsync/f/status/n2",
            "mqsync/f/pending/n2",
            "mqsync/v1/volume-mounts/n2",
        ] {
            assert_eq!(allowed(op, t), Allowed::EmptyOnly, "{t}");
            assert!(!may_publish(op, t), "{t}");
            let empty = publish(t, 0);
            assert_eq!(inspect(&empty, op), Verdict::Forward(empty.len()), "{t}");
            assert!(
                matches!(inspect(&publish(t, 3), op), Verdict::Deny(_)),
                "{t}"
            );
            let q1 = publish_qos1(t, 9, 0);
            assert_eq!(inspect(&q1, op), Verdict::Forward(q1.len()), "{t}");
            assert!(matches!(
                inspect(&publish_qos1(t, 9, 1), op),
                Verdict::Deny(_)
            ));
        }
        assert!(may_publish(op, "mqsync/f/cmd"));
        for t in [
            "mqsync/f/v1/n2",
            "mqsync/v1/volumes/x",
            "mqsync/f/status/",
            "x",
        ] {
            assert_eq!(allowed(op, t), Allowed::No, "{t}");
            assert!(
                matches!(inspect(&publish(t, 0), op), Verdict::Deny(_)),
                "{t}"
            );
        }
        // A node may not clear another's documents.
        assert!(matches!(
            inspect(&publish("mqsync/f/status/n2", 0), N1),
            Verdict::Deny(_)
        ));
    }

    #[test]
    fn publish_topics_are_judged_from_a_prefix_of_the_packet() {
        let ok = publish("mqsync/f/v1/n1", 300_000);
        assert_eq!(inspect(&ok, N1), Verdict::Forward(ok.len()));
        // The topic is known long before the 300 KB payload has arrived.
        assert_eq!(inspect(&ok[..30], N1), Verdict::Forward(ok.len()));
        assert_eq!(inspect(&ok[..6], N1), Verdict::NeedMore);
        assert_eq!(inspect(&ok[..1], N1), Verdict::NeedMore);
        assert!(matches!(inspect(&ok, N2), Verdict::Deny(_)));
        let bad = publish("mqsync/f/v1/n2", 10);
        assert!(matches!(inspect(&bad, N1), Verdict::Deny(m) if m.contains("n2")));
    }

    #[test]
    fn connect_will_topics_follow_the_same_rule() {
        let plain = connect(None);
        assert_eq!(inspect(&plain, N1), Verdict::Forward(plain.len()));
        let own = connect(Some("mqsync/f/status/n1"));
        assert_eq!(inspect(&own, N1), Verdict::Forward(own.len()));
        assert_eq!(inspect(&own[..own.len() - 1], N1), Verdict::NeedMore);
        let other = connect(Some("mqsync/f/status/n2"));
        assert!(matches!(inspect(&other, N1), Verdict::Deny(_)));
    }

    #[test]
    fn other_packets_pass_and_malformed_ones_are_denied() {
        let ping = [0xc0, 0x00];
        assert_eq!(inspect(&ping, N1), Verdict::Forward(2));
        let subscribe = [0x82, 0x03, 0, 1, 0];
        assert_eq!(inspect(&subscribe, N1), Verdict::Forward(5));
        assert!(matches!(
            inspect(&[0x30, 0xff, 0xff, 0xff, 0xff], N1),
            Verdict::Deny(_)
        ));
        assert!(matches!(inspect(&[0x30, 0x01, 0x00], N1), Verdict::Deny(_)));
        let mut bad_utf8 = publish("mqsync/f/v1/n1", 0);
        bad_utf8[5] = 0xff;
        assert!(matches!(inspect(&bad_utf8, N1), Verdict::Deny(_)));
        let mut huge = vec![0x10, 0xff, 0xff, 0x7f];
        huge.extend([0; 8]);
        assert!(matches!(inspect(&huge, N1), Verdict::Deny(_)));
    }

    /// A QoS 1 PUBLISH with packet id `pkid`.
    fn publish_qos1(topic: &str, pkid: u16, payload_len: usize) -> Vec<u8> {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&pkid.to_be_bytes());
        body.extend(std::iter::repeat_n(7u8, payload_len));
        packet(0x32, body)
    }

    #[test]
    fn a_nodes_own_data_messages_are_recognised_on_the_way_back() {
        let own = Some("n1");
        let mine = |len, pkid| Echo::Publish {
            len,
            pkid,
            own: true,
        };
        let q0 = publish("mqsync/f/v1/n1", 300_000);
        assert_eq!(own_echo(&q0, own), mine(q0.len(), None));
        assert_eq!(own_echo(&q0[..30], own), mine(q0.len(), None));
        let q1 = publish_qos1("a/b/mqsync/v1/v1/n1", 513, 10);
        assert_eq!(own_echo(&q1, own), mine(q1.len(), Some(513)));
        // The topic has arrived but not the packet id.
        assert_eq!(own_echo(&q1[..q1.len() - 11], own), Echo::NeedMore);
        assert_eq!(own_echo(&q1[..3], own), Echo::NeedMore);
        for other in [
            "mqsync/f/v1/n2",
            "mqsync/f/status/n1",
            "mqsync/v1/volume-mounts/n1",
            "mqsync/f/v1/n1/x",
            "v1/n1",
            "mqsync/f/cmd",
        ] {
            let p = publish_qos1(other, 77, 5);
            let want = Echo::Publish {
                len: p.len(),
                pkid: Some(77),
                own: false,
            };
            assert_eq!(own_echo(&p, own), want, "{other}");
        }
        // Shared node certificates name no node: nothing is dropped.
        assert_eq!(own_echo(&q0, None), Echo::Other(q0.len()));
        let mut q2 = publish_qos1("mqsync/f/v1/n1", 1, 0);
        q2[0] = 0x34;
        assert_eq!(own_echo(&q2, own), Echo::Other(q2.len()));
        assert_eq!(own_echo(&[0x90, 0x03, 0, 1, 1], own), Echo::Other(5));
        // A topic longer than its packet is refused at once, not waited for.
        assert!(matches!(
            own_echo(&[0x32, 5, 0, 200, b'a', b'b', b'c'], own),
            Echo::Malformed(_)
        ));
        let mut no_pkid = vec![0x32, 11, 0, 9];
        no_pkid.extend_from_slice(b"m/f/v1/n1");
        assert!(matches!(own_echo(&no_pkid, own), Echo::Malformed(_)));
        assert!(matches!(
            own_echo(&[0x30, 0xff, 0xff, 0xff, 0xff], own),
            Echo::Malformed(_)
        ));
    }
}
