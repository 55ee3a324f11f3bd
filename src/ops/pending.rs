//! The retained pending list each node publishes per folder on
//! `{prefix}/{folder}/pending/{node}`: which paths it has not brought in sync and why
//! (at most [`MAX_LISTED`], with the total), signed like the status document; and the
//! client side of `mqsync pending`, which reads every node's list.

use crate::ops::control::{ControlError, close, connection_error, short_client};
use crate::ops::status::{NodeDoc, verify_doc};
use crate::protocol::topics;
use crate::protocol::wire::Keys;
use crate::transport::ConnectSettings;
use rumqttc::{Event, Packet, QoS};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::warn;

/// Paths one document lists at most (it is published every few seconds).
pub const MAX_LISTED: usize = 100;

/// Why a path is not in sync on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Its apply failed and is retried; `detail` is the error.
    ApplyFailed,
    /// Its chunks are being fetched; `detail` names the node asked.
    Fetching,
    /// Its apply waits for a free apply slot.
    Queued,
    /// Accepted, its apply not started yet; `detail` names the node it came from.
    Waiting,
    /// A local deletion held by the mass-delete guard (`mqsync resync` applies it).
    HeldDelete,
    /// A local change in a receive-only folder: not sent.
    LocalChange,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::ApplyFailed => "apply_failed",
            Reason::Fetching => "fetching",
            Reason::Queued => "queued",
            Reason::Waiting => "waiting",
            Reason::HeldDelete => "held_delete",
            Reason::LocalChange => "local_change",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPath {
    pub path: String,
    pub reason: Reason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One node's pending list for one folder; empty `paths` and `total` 0 when the node
/// has brought everything in sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDoc {
    pub node: String,
    pub folder: String,
    /// Paths not in sync, for every reason; `paths` lists at most [`MAX_LISTED`].
    pub total: u64,
    pub paths: Vec<PendingPath>,
    /// Milliseconds since the Unix epoch.
    pub updated_ms: u64,
}

impl NodeDoc for PendingDoc {
    fn folder_and_node(&self) -> (&str, &str) {
        (&self.folder, &self.node)
    }
}

impl PendingDoc {
    /// An empty list; [`push`](Self::push) fills it up to [`MAX_LISTED`].
    pub fn new(node: &str, folder: &str) -> Self {
        PendingDoc {
            node: node.to_string(),
            folder: folder.to_string(),
            total: 0,
            paths: vec![],
            updated_ms: 0,
        }
    }

    /// Whether the list has room for another path.
    pub fn has_room(&self) -> bool {
        self.paths.len() < MAX_LISTED
    }

    /// Lists `path` unless the list is full (the caller counts `total`).
    pub fn push(&mut self, path: String, reason: Reason, detail: Option<String>) {
        if self.has_room() {
            self.paths.push(PendingPath {
                path,
                reason,
                detail,
            });
        }
    }
}

/// Every node's latest pending list, by (folder, node).
pub type PendingMap = BTreeMap<(String, String), PendingDoc>;

/// Reads the retained pending lists under `prefix`: everything that arrives until
/// `quiet` passes without a new message. With `keys`, a list whose MAC does not
/// verify is logged and left out.
pub async fn read_pending(
    s: &ConnectSettings,
    prefix: &str,
    keys: Option<&Keys>,
    quiet: Duration,
) -> Result<PendingMap, ControlError> {
    let (client, mut el) = short_client(s, "pending");
    let filter = topics::all_pending_filter(prefix);
    let mut map = PendingMap::new();
    let deadline = Duration::from_secs(15);
    let work = async {
        // Until the subscription is acknowledged, the broker's deadline applies.
        let mut subscribed = false;
        loop {
            let wait = if subscribed { quiet } else { deadline };
            let ev = match tokio::time::timeout(wait, el.poll()).await {
                Ok(ev) => ev,
                Err(_) if subscribed => return Ok(()),
                Err(_) => return Err(ControlError::Timeout(deadline)),
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => client
                    .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                    .map_err(|e| ControlError::Connection(e.to_string()))?,
                Ok(Event::Incoming(Packet::SubAck(_))) => subscribed = true,
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let parts = topics::pending_parts(&p.topic);
                    if p.payload.is_empty() {
                        continue;
                    }
                    match verify_doc::<PendingDoc>(&p.payload, &p.topic, parts, keys) {
                        Ok(doc) => {
                            map.insert((doc.folder.clone(), doc.node.clone()), doc);
                        }
                        Err(e) => warn!(topic = %p.topic, "pending list left out: {e}"),
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(connection_error(&e)),
            }
        }
    };
    let res = work.await;
    close(&client, &mut el).await;
    res.map(|()| map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::status::{MacError, StatusError, signed_json};

    #[test]
    fn the_list_is_capped_and_signed_like_the_status() {
        let mut d = PendingDoc::new("n2", "docs");
        for i in 0..250 {
            d.total += 1;
            d.push(format!("f{i}"), Reason::Waiting, Some("n1".into()));
        }
        assert_eq!((d.paths.len(), d.total), (MAX_LISTED, 250));
        let t = "mqsync/docs/pending/n2";
        let k = Keys::new(vec![Keys::derive(b"k")]).unwrap();
        let b = signed_json(&d, t, &k).unwrap();
        let parts = topics::pending_parts(t);
        assert_eq!(verify_doc::<PendingDoc>(&b, t, parts, Some(&k)), Ok(d));
        let other = Keys::new(vec![Keys::derive(b"other")]).unwrap();
        assert_eq!(
            verify_doc::<PendingDoc>(&b, t, parts, Some(&other)),
            Err(StatusError::Mac(MacError::BadMac))
        );
        let moved = "mqsync/docs/pending/n1";
        assert!(matches!(
            verify_doc::<PendingDoc>(&b, moved, topics::pending_parts(moved), None),
            Err(StatusError::WrongTopic { .. })
        ));
    }
}
