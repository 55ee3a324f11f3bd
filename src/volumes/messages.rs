//! The two retained, signed documents that carry volumes between nodes: the
//! announcement of each volume (`{prefix}/v1/volumes/{name}`) and each node's mount
//! report (`{prefix}/v1/volume-mounts/{node}`). Anything malformed, oversized, forged
//! or published on another volume's or node's topic is refused here.

use super::registry::{Announcement, MountReport, check_name};
use crate::ops::status::{MacError, check_mac, signed_json};
use crate::protocol::topics;
use crate::protocol::wire::Keys;

/// Largest accepted document; real ones are a few hundred bytes.
pub const MAX_DOC_BYTES: usize = 64 * 1024;
/// Most ignore patterns an announcement may carry.
const MAX_IGNORE: usize = 256;

/// Why a volume document was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("{0} bytes is over the {MAX_DOC_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("not a volume document: {0}")]
    Malformed(String),
    #[error("document for {found:?} published on the topic of {topic:?}")]
    WrongTopic { found: String, topic: String },
    #[error("document {0}")]
    Mac(#[from] MacError),
}

/// The last level of `topic`.
fn last_level(topic: &str) -> &str {
    topic.rsplit('/').next().unwrap_or("")
}

fn parse<T: serde::de::DeserializeOwned>(
    payload: &[u8],
    topic: &str,
    keys: &Keys,
) -> Result<T, MessageError> {
    if payload.len() > MAX_DOC_BYTES {
        return Err(MessageError::TooLarge(payload.len()));
    }
    let doc =
        serde_json::from_slice(payload).map_err(|e| MessageError::Malformed(e.to_string()))?;
    check_mac(payload, topic, keys)?;
    Ok(doc)
}

pub fn encode_announcement(a: &Announcement, prefix: &str, keys: &Keys) -> Vec<u8> {
    // Serialising plain strings, numbers and a list cannot fail.
    signed_json(a, &topics::volume(prefix, &a.name), keys).unwrap_or_default()
}

pub fn encode_mounts(r: &MountReport, prefix: &str, keys: &Keys) -> Vec<u8> {
    signed_json(r, &topics::mounts(prefix, &r.node), keys).unwrap_or_default()
}

/// An announcement from `topic`, checked.
pub fn decode_announcement(
    payload: &[u8],
    topic: &str,
    keys: &Keys,
) -> Result<Announcement, MessageError> {
    let a: Announcement = parse(payload, topic, keys)?;
    if a.name != last_level(topic) {
        return Err(MessageError::WrongTopic {
            found: a.name,
            topic: topic.into(),
        });
    }
    check_name(&a.name).map_err(|e| MessageError::Malformed(e.to_string()))?;
    if a.ignore.len() > MAX_IGNORE {
        return Err(MessageError::Malformed(format!(
            "{} ignore patterns (at most {MAX_IGNORE})",
            a.ignore.len()
        )));
    }
    crate::fs::ignore::Ignore::new(&a.ignore)
        .map_err(|e| MessageError::Malformed(e.to_string()))?;
    Ok(a)
}

/// A mount report from `topic`, checked; `None` for an empty (cleared) retained message.
pub fn decode_mounts(
    payload: &[u8],
    topic: &str,
    keys: &Keys,
) -> Result<Option<MountReport>, MessageError> {
    if payload.is_empty() {
        return Ok(None);
    }
    let r: MountReport = parse(payload, topic, keys)?;
    if r.node != last_level(topic) {
        return Err(MessageError::WrongTopic {
            found: r.node,
            topic: topic.into(),
        });
    }
    Ok(Some(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Mode;

    fn keys(k: &[u8]) -> Keys {
        Keys::new(vec![Keys::derive(k)]).unwrap()
    }

    fn ann() -> Announcement {
        Announcement {
            name: "demo".into(),
            generation: "00ff".into(),
            present: true,
            mode: Mode::SendReceive,
            ignore: vec!["*.tmp".into()],
            ownership: Default::default(),
            xattrs: false,
            creator: "n1".into(),
            created_ms: 1,
            node: "n1".into(),
            updated_ms: 1,
        }
    }

    #[test]
    fn roundtrip_and_refusals() {
        let k = keys(b"k");
        let t = topics::volume("mqsync", "demo");
        let bytes = encode_announcement(&ann(), "mqsync", &k);
        assert_eq!(decode_announcement(&bytes, &t, &k), Ok(ann()));
        // Forged, altered, unsigned, moved, oversized, junk.
        let forged = encode_announcement(&ann(), "mqsync", &keys(b"other"));
        assert_eq!(
            decode_announcement(&forged, &t, &k),
            Err(MessageError::Mac(MacError::BadMac))
        );
        let altered = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"present\":true", "\"present\":false");
        assert_eq!(
            decode_announcement(altered.as_bytes(), &t, &k),
            Err(MessageError::Mac(MacError::BadMac))
        );
        let plain = serde_json::to_vec(&ann()).unwrap();
        assert_eq!(
            decode_announcement(&plain, &t, &k),
            Err(MessageError::Mac(MacError::Unsigned))
        );
        assert!(matches!(
            decode_announcement(&bytes, &topics::volume("mqsync", "other"), &k),
            Err(MessageError::Mac(_)) | Err(MessageError::WrongTopic { .. })
        ));
        let mut moved = ann();
        moved.name = "other".into();
        let moved = signed_json(&moved, &t, &k).unwrap();
        assert!(matches!(
            decode_announcement(&moved, &t, &k),
            Err(MessageError::WrongTopic { .. })
        ));
        let mut escape = ann();
        escape.name = "..".into();
        let t2 = topics::volume("mqsync", "..");
        let escape = signed_json(&escape, &t2, &k).unwrap();
        assert!(matches!(
            decode_announcement(&escape, &t2, &k),
            Err(MessageError::Malformed(_))
        ));
        assert!(matches!(
            decode_announcement(&vec![b' '; MAX_DOC_BYTES + 1], &t, &k),
            Err(MessageError::TooLarge(_))
        ));
        assert!(matches!(
            decode_announcement(b"\xff{junk", &t, &k),
            Err(MessageError::Malformed(_))
        ));
    }

    #[test]
    fn mount_reports() {
        let k = keys(b"k");
        let mut r = MountReport {
            node: "n2".into(),
            ..Default::default()
        };
        r.mounted.insert("demo".into(), 1);
        let t = topics::mounts("mqsync", "n2");
        let bytes = encode_mounts(&r, "mqsync", &k);
        assert_eq!(decode_mounts(&bytes, &t, &k), Ok(Some(r.clone())));
        assert_eq!(decode_mounts(b"", &t, &k), Ok(None));
        assert!(decode_mounts(&bytes, &topics::mounts("mqsync", "n3"), &k).is_err());
        let forged = encode_mounts(&r, "mqsync", &keys(b"x"));
        assert!(decode_mounts(&forged, &t, &k).is_err());
    }
}
