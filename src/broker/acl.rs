//! The embedded broker's topic rule, the same one `broker/mosquitto.acl` ships: a client
//! may publish only under its own certificate's common name (`…/v1/{cn}`,
//! `…/status/{cn}`) and to the unauthenticated `…/cmd` topics. To enforce it in front of
//! rumqttd, which has no ACLs, this reads just enough of the client's MQTT 3.1.1 byte
//! stream to find each PUBLISH topic and the CONNECT will topic.

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
}

/// May a client with `identity` publish to `topic`?
pub fn may_publish(identity: Identity<'_>, topic: &str) -> bool {
    let levels: Vec<&str> = topic.split('/').collect();
    match levels.as_slice() {
        // Any node may announce or remove a Docker volume (the announcement's MAC, not
        // the broker, decides whether it counts); mount reports only as itself.
        [_prefix @ .., "v1", "volumes", name] if levels.len() >= 4 => {
            !name.is_empty() && identity != Identity::Node("")
        }
        [_prefix @ .., "v1", "volume-mounts", node] if levels.len() >= 4 => match identity {
            Identity::Node(id) => !id.is_empty() && *node == id,
            Identity::AnyNode => !node.is_empty(),
        },
        [_prefix @ .., folder, "cmd"] if levels.len() >= 3 => !folder.is_empty(),
        [_prefix @ .., _folder, "v1" | "status", node] if levels.len() >= 4 => match identity {
            Identity::Node(id) => !id.is_empty() && *node == id,
            Identity::AnyNode => !node.is_empty(),
        },
        _ => false,
    }
}

/// Judges the packet at the start of `buf` for a client with `identity`.
pub fn inspect(buf: &[u8], identity: Identity<'_>) -> Verdict {
    let Some(&first) = buf.first() else {
        return Verdict::NeedMore;
    };
    let (remaining, len_bytes) = match remaining_length(&buf[1..]) {
        Ok(Some(v)) => v,
        Ok(None) => return Verdict::NeedMore,
        Err(e) => return Verdict::Deny(e),
    };
    let header = 1 + len_bytes;
    let total = header + remaining;
    let body = &buf[header..];
    match first >> 4 {
        PUBLISH => {
            if remaining < 2 {
                return Verdict::Deny("PUBLISH without a topic".into());
            }
            let Some(topic) = read_str(body, 0) else {
                return Verdict::NeedMore;
            };
            match topic {
                Ok((topic, _)) if may_publish(identity, topic) => Verdict::Forward(total),
                Ok((topic, _)) => Verdict::Deny(format!(
                    "publish to {topic:?} is outside the topics of {identity:?}"
                )),
                Err(e) => Verdict::Deny(e),
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
                    "last-will topic {will:?} is outside the topics of {identity:?}"
                )),
                Err(e) => Verdict::Deny(e),
            }
        }
        _ => Verdict::Forward(total),
    }
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
        let remaining = 2 + topic.len() + payload_len;
        let mut out = vec![0x30];
        let mut r = remaining;
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
        out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.extend(std::iter::repeat_n(7u8, payload_len));
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
}
