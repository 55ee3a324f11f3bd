//! The retained status document each node publishes per folder on
//! `{prefix}/{folder}/status/{node}` (public, stable JSON for monitoring tools; the
//! topic names live in `protocol::topics`). Each document ends with a MAC
//! under the group key, so readers that hold the key can tell a node's status from a
//! forged one while tools without it still read plain JSON.

use crate::protocol::topics;
use crate::protocol::wire::Keys;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Scanning,
    Syncing,
    Idle,
    Offline,
    Error,
    /// Never published: what `mqsync status` shows for a document whose MAC does not
    /// verify under its group key (a node with another group key, or a forgery).
    Unverified,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl State {
    /// The name used in the status JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Scanning => "scanning",
            State::Syncing => "syncing",
            State::Idle => "idle",
            State::Offline => "offline",
            State::Error => "error",
            State::Unverified => "unverified",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FolderStatus {
    pub node: String,
    pub folder: String,
    pub state: State,
    /// mqsync version of the node.
    pub version: String,
    /// Files, directories and symlinks present (tombstones excluded).
    pub files: u64,
    pub bytes: u64,
    /// Remote changes accepted but not yet on disk.
    pub pending: u64,
    /// Hex summary of the node's confirmed state; equal digests mean equal trees.
    pub digest: String,
    /// Local changes not sent (receive-only folders).
    pub local_changes: u64,
    pub last_error: Option<String>,
    /// Since when (ms since the Unix epoch) the node has had a failure it keeps
    /// retrying: an apply that fails (a full disk, a permission), or an index write.
    /// Absent while nothing fails. `last_error` says what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since_ms: Option<u64>,
    /// Whether the node's connections to the broker are up.
    pub connected: bool,
    /// The node talks to the broker over plain TCP (`insecure_plaintext`).
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// Milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// The node's answer to the last resync command addressed to it (`mqsync resync`
    /// reads it). Absent until one came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<crate::ops::resync::ResyncAnswer>,
    /// The folder's ignore patterns: every node must have the same (docs/SYNC.md).
    /// Absent from older nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<IgnoreRules>,
    /// Local deletions held by the mass-delete guard (`max_delete_percent`): applied
    /// by `mqsync resync`, dropped when the files come back. Absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_deletes: u64,
    /// Whole days until the node's own client certificate (`broker.cert_file`)
    /// expires; negative once it has. Absent without a client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_days_left: Option<i64>,
    /// What the node does not keep although the folder asks for it, and why (for
    /// example owners, when the daemon does not run as root). Not a failure: contents
    /// still sync. Absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// What of the folder the node polls instead of watching; absent when inotify
    /// watches all of it (docs/STATUS.md, "Polled folders").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polled: Option<Polled>,
}

/// What of a folder a node polls (`watch = "poll"`, or out of inotify watches): a
/// change there is seen at the next poll, not at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Polled {
    /// `watch = "poll"`, `out of inotify watches`, or the watcher's error.
    pub reason: String,
    /// Directories polled (the root counts), of how many the folder has.
    pub dirs: u64,
    pub of_dirs: u64,
    pub interval_s: u64,
    /// When the last complete poll began (ms since the epoch); 0 before the first.
    pub last_poll_ms: u64,
}

impl Polled {
    /// One line for `mqsync status`: what is polled, why and how often.
    pub fn describe(&self, node: &str) -> String {
        let what = if self.dirs >= self.of_dirs {
            format!("all {} directories", self.of_dirs)
        } else {
            format!("{} of {} directories", self.dirs, self.of_dirs)
        };
        let hint = if self.reason.contains("inotify watches") {
            "; raise fs.inotify.max_user_watches (docs/DEPLOY.md, \"inotify watches\")"
        } else {
            ""
        };
        format!(
            "node {node} polls {what} every {} s ({}{hint}): changes there show only after its next poll",
            self.interval_s, self.reason
        )
    }
}

/// `mqsync status` names a node whose certificate has fewer days left than this.
pub const CERT_NOTE_DAYS: i64 = 30;
/// `mqsync healthcheck` warns (and still exits 0) below this many days; it fails once
/// the certificate has expired.
pub const CERT_WARN_DAYS: i64 = 14;

/// The wall clock in ms since the epoch (what `updated_ms` and `last_poll_ms` are in).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whole days from `now_ms` until `at_ms` (both ms since the epoch), rounded down:
/// negative once `at_ms` has passed.
pub fn days_left(at_ms: u64, now_ms: u64) -> i64 {
    (at_ms as i64 - now_ms as i64).div_euclid(86_400_000)
}

/// What to say about the client certificate of the node of `doc` when it has fewer
/// than `within` days left.
pub fn cert_note(doc: &FolderStatus, within: i64) -> Option<String> {
    let days = doc.cert_days_left.filter(|d| *d < within)?;
    let when = match days {
        d if d < 0 => "has expired".to_string(),
        0 => "expires within a day".to_string(),
        1 => "expires in 1 day".to_string(),
        d => format!("expires in {d} days"),
    };
    Some(format!(
        "node {}: its client certificate (broker.cert_file) {when}: renew it with \
         mqsync certs renew --out DIR --nodes {}, then send the daemon SIGHUP (docs/DEPLOY.md)",
        doc.node, doc.node
    ))
}

/// A folder's ignore patterns as its status reports them: sorted and without repeats
/// (the rules are a set), cut after [`MAX_IGNORE_BYTES`]; `hash` covers the whole set,
/// so nodes can compare rules even when a list is cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoreRules {
    pub hash: String,
    pub patterns: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Bytes of patterns a status document carries at most (it is sent every 10 s).
pub const MAX_IGNORE_BYTES: usize = 2048;

impl IgnoreRules {
    pub fn of(patterns: &[String]) -> IgnoreRules {
        let set: std::collections::BTreeSet<&String> = patterns.iter().collect();
        let mut h = blake3::Hasher::new();
        let (mut kept, mut bytes) = (vec![], 0);
        for p in &set {
            h.update(&(p.len() as u64).to_le_bytes())
                .update(p.as_bytes());
            bytes += p.len();
            if bytes <= MAX_IGNORE_BYTES {
                kept.push(p.to_string());
            }
        }
        IgnoreRules {
            hash: h.finalize().to_hex()[..16].to_string(),
            truncated: kept.len() < set.len(),
            patterns: kept,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The member that closes a signed document: `,"mac":"` + 64 hex digits + `"}`.
const MAC_OPEN: &[u8] = b",\"mac\":\"";
const MAC_SUFFIX_LEN: usize = MAC_OPEN.len() + 64 + 2;

/// The JSON of `doc` for `topic`, with a last member `"mac"`: the hex BLAKE3 keyed MAC
/// (group key) of the topic and the exact JSON bytes without that member. Any retained
/// document mqsync publishes (status, volume announcements) is signed this way.
pub fn signed_json<T: Serialize>(doc: &T, topic: &str, keys: &Keys) -> serde_json::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec(doc)?;
    if bytes.last() != Some(&b'}') {
        return Err(serde::ser::Error::custom(
            "only a JSON object can be signed",
        ));
    }
    let tag = blake3::Hash::from(keys.tag(topic, &bytes));
    bytes.pop();
    bytes.extend_from_slice(MAC_OPEN);
    bytes.extend_from_slice(tag.to_hex().as_bytes());
    bytes.extend_from_slice(b"\"}");
    Ok(bytes)
}

/// Why a signed document's MAC was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum MacError {
    #[error("carries no MAC")]
    Unsigned,
    #[error("MAC does not verify: sender lacks the group key or the document was altered")]
    BadMac,
}

/// Checks the `"mac"` member that [`signed_json`] appended to `payload` for `topic`.
pub fn check_mac(payload: &[u8], topic: &str, keys: &Keys) -> Result<(), MacError> {
    let n = payload.len();
    if n < MAC_SUFFIX_LEN + 2
        || &payload[n - MAC_SUFFIX_LEN..n - MAC_SUFFIX_LEN + MAC_OPEN.len()] != MAC_OPEN
        || !payload.ends_with(b"\"}")
    {
        return Err(MacError::Unsigned);
    }
    let hex = &payload[n - 66..n - 2];
    let tag = std::str::from_utf8(hex)
        .ok()
        .and_then(|h| blake3::Hash::from_hex(h).ok())
        .ok_or(MacError::BadMac)?;
    let mut signed = payload[..n - MAC_SUFFIX_LEN].to_vec();
    signed.push(b'}');
    if keys.verifies(topic, &signed, tag.as_bytes()) {
        Ok(())
    } else {
        Err(MacError::BadMac)
    }
}

/// Why a status message was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatusError {
    #[error("not a valid document: {0}")]
    Malformed(String),
    #[error("document of node {node:?} folder {folder:?} published on another node's topic")]
    WrongTopic { node: String, folder: String },
    #[error("status {0}")]
    Mac(#[from] MacError),
}

/// Parses a status message from `topic` (`{prefix}/{folder}/status/{node}`). The
/// document must name the topic's folder and node; with `keys`, its MAC must verify.
pub fn verify(
    payload: &[u8],
    topic: &str,
    keys: Option<&Keys>,
) -> Result<FolderStatus, StatusError> {
    verify_doc(payload, topic, topics::status_parts(topic), keys)
}

/// A signed per-node document that names its folder and node (the status, the
/// pending list), which must be the ones its topic names.
pub trait NodeDoc: serde::de::DeserializeOwned {
    fn folder_and_node(&self) -> (&str, &str);
}

impl NodeDoc for FolderStatus {
    fn folder_and_node(&self) -> (&str, &str) {
        (&self.folder, &self.node)
    }
}

/// Parses a [`NodeDoc`] from `topic`, whose folder and node are `parts`; with `keys`,
/// its MAC must verify.
pub fn verify_doc<T: NodeDoc>(
    payload: &[u8],
    topic: &str,
    parts: Option<(&str, &str)>,
    keys: Option<&Keys>,
) -> Result<T, StatusError> {
    let doc: T =
        serde_json::from_slice(payload).map_err(|e| StatusError::Malformed(e.to_string()))?;
    if parts != Some(doc.folder_and_node()) {
        let (folder, node) = doc.folder_and_node();
        return Err(StatusError::WrongTopic {
            node: node.to_string(),
            folder: folder.to_string(),
        });
    }
    if let Some(keys) = keys {
        check_mac(payload, topic, keys)?;
    }
    Ok(doc)
}

/// Where a node writes its latest status per folder for `mqsync healthcheck`.
pub fn health_file(state_dir: &std::path::Path, folder: &str) -> std::path::PathBuf {
    state_dir.join("health").join(format!("{folder}.json"))
}

/// A node counts as healthy while its status file is this fresh.
pub const HEALTH_MAX_AGE_MS: u64 = 30_000;

/// How long a retried failure may last before `mqsync healthcheck` calls the node
/// unhealthy, by default: a disk that fills for a moment, or one file written while a
/// directory is being replaced, heals by itself within seconds.
pub const DEFAULT_ERROR_GRACE_MS: u64 = 60_000;

/// Why a folder's status is unhealthy, if it is. A failure the node keeps retrying
/// counts once it has lasted `error_grace_ms`.
pub fn unhealthy(doc: &FolderStatus, now_ms: u64, error_grace_ms: u64) -> Option<String> {
    if now_ms.saturating_sub(doc.updated_ms) > HEALTH_MAX_AGE_MS {
        return Some(format!(
            "folder {}: status is {} s old (daemon not running or stuck)",
            doc.folder,
            now_ms.saturating_sub(doc.updated_ms) / 1000
        ));
    }
    match doc.state {
        State::Error | State::Offline | State::Unverified => Some(format!(
            "folder {}: state {}: {}",
            doc.folder,
            doc.state,
            doc.last_error.as_deref().unwrap_or("no detail")
        )),
        _ if !doc.connected => Some(format!(
            "folder {}: not connected to the broker: {}",
            doc.folder,
            doc.last_error.as_deref().unwrap_or("no detail")
        )),
        _ => {
            let since = doc.failing_since_ms?;
            let failing = now_ms.saturating_sub(since);
            (failing >= error_grace_ms).then(|| {
                format!(
                    "folder {}: failing for {} s ({} pending): {}",
                    doc.folder,
                    failing / 1000,
                    doc.pending,
                    doc.last_error.as_deref().unwrap_or("no detail")
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "mqsync/docs/status/n1";

    fn keys(secret: &[u8]) -> Keys {
        Keys::new(vec![Keys::derive(secret)]).unwrap()
    }

    fn doc() -> FolderStatus {
        FolderStatus {
            node: "n1".into(),
            folder: "docs".into(),
            state: State::Idle,
            version: "0.1.0".into(),
            files: 3,
            bytes: 42,
            pending: 0,
            digest: "abc".into(),
            local_changes: 0,
            last_error: Some("quote \" and } inside".into()),
            failing_since_ms: None,
            connected: true,
            insecure_plaintext: false,
            updated_ms: 1,
            resync: None,
            ignore: Some(IgnoreRules::of(&["*.swp".into()])),
            held_deletes: 0,
            cert_days_left: Some(400),
            notes: vec![],
            polled: None,
        }
    }

    #[test]
    fn a_failure_is_unhealthy_once_it_outlasts_the_grace_period() {
        let mut d = doc();
        d.updated_ms = 100_000;
        assert_eq!(unhealthy(&d, 100_000, 60_000), None);
        d.failing_since_ms = Some(50_000);
        assert_eq!(
            unhealthy(&d, 100_000, 60_000),
            None,
            "within the grace period"
        );
        let why = unhealthy(&d, 110_000, 60_000).expect("failing for 60 s");
        assert!(why.contains("failing for 60 s"), "{why}");
        assert!(why.contains("quote"), "names the error: {why}");
        // A status too old to trust is unhealthy whatever it says.
        d.failing_since_ms = None;
        assert!(unhealthy(&d, 100_000 + HEALTH_MAX_AGE_MS + 1, 60_000).is_some());
    }

    #[test]
    fn certificate_notes_start_below_their_threshold() {
        assert_eq!(days_left(10 * 86_400_000, 1), 9);
        assert_eq!(days_left(0, 1), -1);
        let mut d = doc();
        assert_eq!(cert_note(&d, CERT_NOTE_DAYS), None);
        d.cert_days_left = Some(29);
        let note = cert_note(&d, CERT_NOTE_DAYS).expect("29 < 30");
        assert!(note.contains("n1") && note.contains("29 days"), "{note}");
        assert_eq!(cert_note(&d, CERT_WARN_DAYS), None);
        d.cert_days_left = Some(-2);
        assert!(cert_note(&d, CERT_WARN_DAYS).is_some_and(|n| n.contains("has expired")));
        d.cert_days_left = None;
        assert_eq!(cert_note(&d, CERT_NOTE_DAYS), None);
    }

    #[test]
    fn signed_status_is_plain_json_and_verifies() {
        let b = signed_json(&doc(), T, &keys(b"k")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["mac"].as_str().unwrap().len(), 64);
        assert_eq!(v["files"], 3);
        assert_eq!(verify(&b, T, Some(&keys(b"k"))), Ok(doc()));
        assert_eq!(verify(&b, T, None), Ok(doc()));
        // Rotation: a reader with the new key first and the old one second accepts it.
        let both = Keys::new(vec![Keys::derive(b"new"), Keys::derive(b"k")]).unwrap();
        assert_eq!(verify(&b, T, Some(&both)), Ok(doc()));
    }

    #[test]
    fn forged_altered_unsigned_and_moved_statuses_are_refused() {
        let k = keys(b"k");
        let forged = signed_json(&doc(), T, &keys(b"other")).unwrap();
        assert_eq!(
            verify(&forged, T, Some(&k)),
            Err(StatusError::Mac(MacError::BadMac))
        );
        let good = signed_json(&doc(), T, &k).unwrap();
        let altered = String::from_utf8(good.clone())
            .unwrap()
            .replace("\"files\":3", "\"files\":4");
        assert_eq!(
            verify(altered.as_bytes(), T, Some(&k)),
            Err(StatusError::Mac(MacError::BadMac))
        );
        let plain = serde_json::to_vec(&doc()).unwrap();
        assert_eq!(
            verify(&plain, T, Some(&k)),
            Err(StatusError::Mac(MacError::Unsigned))
        );
        assert!(matches!(
            verify(&good, "mqsync/docs/status/n2", Some(&k)),
            Err(StatusError::WrongTopic { .. })
        ));
        let mut other = doc();
        other.node = "n2".into();
        let moved = signed_json(&other, T, &k).unwrap();
        assert!(matches!(
            verify(&moved, T, None),
            Err(StatusError::WrongTopic { .. })
        ));
        assert!(matches!(
            verify(b"\xff{", T, None),
            Err(StatusError::Malformed(_))
        ));
        // A MAC member that is not hex.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 3] = b'z';
        assert_eq!(
            verify(&bad, T, Some(&k)),
            Err(StatusError::Mac(MacError::BadMac))
        );
    }
}
