//! Resync commands on a folder's public `{prefix}/{folder}/cmd` topic: what a node
//! makes of one ([`judge`]: accepted, or ignored under the rate limit), the answer it
//! puts in its status document ([`ResyncAnswer`]), and `mqsync resync`, which publishes
//! the command and collects every targeted node's answer ([`resync`]).

use crate::ops::control::{ControlError, close, connection_error, short_client};
use crate::ops::status::{FolderStatus, State};
use crate::protocol::topics::{self, Topics};
use crate::protocol::wire::Keys;
use crate::transport::ConnectSettings;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS, SubscribeFilter};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Least time between two resyncs of a folder (the cmd topic needs no key).
pub const RESYNC_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// A command on the public cmd topic.
#[derive(Debug, serde::Deserialize)]
struct Command {
    op: String,
    #[serde(default = "any_node")]
    node: String,
    /// Chosen by the sender (`mqsync resync`) to find the nodes' answers in their
    /// status documents.
    #[serde(default)]
    id: Option<String>,
}

fn any_node() -> String {
    "*".into()
}

/// What node `me` makes of a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Addressed to another node.
    NotForMe,
    Malformed(String),
    UnknownOp(String),
    /// A resync: run it when the answer accepts it.
    Resync(ResyncAnswer),
}

/// Judges `payload` for node `me`, whose last resync began at `last`.
pub fn judge(payload: &[u8], me: &str, last: Option<Instant>, now: Instant) -> Verdict {
    let cmd: Command = match serde_json::from_slice(payload) {
        Ok(c) => c,
        Err(e) => return Verdict::Malformed(e.to_string()),
    };
    if cmd.node != "*" && cmd.node != me {
        return Verdict::NotForMe;
    }
    if cmd.op != "resync" {
        return Verdict::UnknownOp(cmd.op);
    }
    let id = cmd.id.filter(|id| ResyncAnswer::valid_id(id));
    match last
        .map(|t| now.duration_since(t))
        .filter(|since| *since < RESYNC_MIN_INTERVAL)
    {
        Some(since) => Verdict::Resync(ResyncAnswer::ignored(
            id,
            format!(
                "rate limit: the last resync was {} s ago (at most one every {} s)",
                since.as_secs(),
                RESYNC_MIN_INTERVAL.as_secs()
            ),
        )),
        None => Verdict::Resync(ResyncAnswer::accepted(id)),
    }
}

/// The JSON of a resync command for `node` (`"*"`: every node); the nodes answer in
/// their status documents under `id`.
pub fn resync_command(node: &str, id: &str) -> String {
    serde_json::json!({ "op": "resync", "node": node, "id": id }).to_string()
}

/// A node's answer to a resync command, in its status document (`resync`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResyncAnswer {
    /// The command's `id`; absent when it had none (a hand-made command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub accepted: bool,
    /// Why it was ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ResyncAnswer {
    pub fn accepted(id: Option<String>) -> Self {
        ResyncAnswer {
            id,
            accepted: true,
            reason: None,
        }
    }

    pub fn ignored(id: Option<String>, reason: String) -> Self {
        ResyncAnswer {
            id,
            accepted: false,
            reason: Some(reason),
        }
    }

    /// Whether a command's id may be echoed in a status: anyone may publish a command,
    /// so only a short token is.
    pub fn valid_id(id: &str) -> bool {
        (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
}

/// What became of a resync command at one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResyncOutcome {
    Accepted,
    /// Ignored, with the node's reason (the rate limit).
    Ignored(String),
    /// The node's status says offline, or there is none: it did not get the command.
    Offline,
    /// Online, but no answer came in time (busy, or an mqsync without answers).
    NoAnswer(Duration),
    /// Its status does not verify under the group key: its answer cannot be trusted.
    Unverified,
}

impl std::fmt::Display for ResyncOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResyncOutcome::Accepted => f.write_str("accepted"),
            ResyncOutcome::Ignored(why) => write!(f, "ignored: {why}"),
            ResyncOutcome::Offline => f.write_str("not reached: the node is offline"),
            ResyncOutcome::NoAnswer(d) => write!(
                f,
                "no answer within {} s (busy, or an mqsync that does not answer)",
                d.as_secs()
            ),
            ResyncOutcome::Unverified => {
                f.write_str("unknown: its status does not verify (group key differs?)")
            }
        }
    }
}

/// One node's outcome of `resync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncReport {
    pub folder: String,
    pub node: String,
    pub outcome: ResyncOutcome,
}

/// `mqsync resync`: reads the folders' statuses to learn which nodes are online,
/// publishes a resync command for `node` (`"*"`: all) on each folder's cmd topic, and
/// waits up to `answer_wait` for every targeted online node to answer in its status.
pub async fn resync(
    s: &ConnectSettings,
    prefix: &str,
    keys: Option<&Keys>,
    folders: &[String],
    node: &str,
    answer_wait: Duration,
) -> Result<Vec<ResyncReport>, ControlError> {
    let (client, mut el) = short_client(s, "ctl");
    let res = resync_on(&client, &mut el, prefix, keys, folders, node, answer_wait).await;
    close(&client, &mut el).await;
    res
}

async fn resync_on(
    client: &AsyncClient,
    el: &mut EventLoop,
    prefix: &str,
    keys: Option<&Keys>,
    folders: &[String],
    node: &str,
    answer_wait: Duration,
) -> Result<Vec<ResyncReport>, ControlError> {
    let id = format!(
        "{:016x}",
        rand::random::<u64>() ^ u64::from(std::process::id())
    );
    let connect_limit = Duration::from_secs(15);
    let quiet = Duration::from_millis(500);
    // Every known (folder, node): verified status, or None when it does not verify.
    let mut seen: BTreeMap<(String, String), Option<FolderStatus>> = BTreeMap::new();
    let mut deadline = tokio::time::Instant::now() + connect_limit;
    let mut phase = 0u8; // 0: subscribing, 1: reading retained statuses, 2: answers
    let mut acked = 0usize;
    let mut expected: Vec<(String, String)> = vec![];
    loop {
        let answered = |seen: &BTreeMap<_, Option<FolderStatus>>, k: &(String, String)| matches!(seen.get(k), Some(Some(d)) if d.resync.as_ref().is_some_and(|a| a.id.as_deref() == Some(id.as_str())));
        if phase == 2 && acked == folders.len() && expected.iter().all(|k| answered(&seen, k)) {
            break;
        }
        let ev = match tokio::time::timeout_at(deadline, el.poll()).await {
            Ok(ev) => ev,
            Err(_) if phase == 0 => return Err(ControlError::Timeout(connect_limit)),
            Err(_) if phase == 2 => break,
            Err(_) => {
                // The retained statuses are in: whom to expect, then the commands.
                expected = seen
                    .iter()
                    .filter(|((f, n), d)| {
                        folders.contains(f)
                            && (node == "*" || n == node)
                            && d.as_ref().is_none_or(|d| d.state != State::Offline)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                let payload = resync_command(node, &id);
                for f in folders {
                    client
                        .try_publish(
                            Topics::new(prefix, f).cmd(),
                            QoS::AtLeastOnce,
                            false,
                            payload.clone().into_bytes(),
                        )
                        .map_err(|e| ControlError::Connection(e.to_string()))?;
                }
                phase = 2;
                deadline = tokio::time::Instant::now() + answer_wait;
                continue;
            }
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let filters = folders.iter().map(|f| {
                    SubscribeFilter::new(Topics::new(prefix, f).status("+"), QoS::AtLeastOnce)
                });
                client
                    .try_subscribe_many(filters)
                    .map_err(|e| ControlError::Connection(e.to_string()))?;
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                phase = 1;
                deadline = tokio::time::Instant::now() + quiet;
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some((f, n)) = topics::status_parts(&p.topic) else {
                    continue;
                };
                let key = (f.to_string(), n.to_string());
                if p.payload.is_empty() {
                    seen.remove(&key);
                    continue;
                }
                let doc = crate::ops::status::verify(&p.payload, &p.topic, keys).ok();
                seen.insert(key, doc);
                if phase == 1 {
                    deadline = tokio::time::Instant::now() + quiet;
                }
            }
            Ok(_) => {}
            Err(e) => return Err(connection_error(&e)),
        }
    }
    if acked < folders.len() {
        return Err(ControlError::Timeout(answer_wait));
    }
    let mut reports = vec![];
    for f in folders {
        let mut nodes: Vec<&str> = seen
            .keys()
            .filter(|(sf, _)| sf == f)
            .map(|(_, n)| n.as_str())
            .filter(|n| node == "*" || *n == node)
            .collect();
        if node != "*" && nodes.is_empty() {
            nodes.push(node);
        }
        for n in nodes {
            let key = (f.clone(), n.to_string());
            let outcome = match seen.get(&key) {
                None => ResyncOutcome::Offline,
                Some(None) => ResyncOutcome::Unverified,
                Some(Some(d)) => match d
                    .resync
                    .as_ref()
                    .filter(|a| a.id.as_deref() == Some(id.as_str()))
                {
                    Some(a) if a.accepted => ResyncOutcome::Accepted,
                    Some(a) => ResyncOutcome::Ignored(a.reason.clone().unwrap_or_default()),
                    None if d.state == State::Offline => ResyncOutcome::Offline,
                    None => ResyncOutcome::NoAnswer(answer_wait),
                },
            };
            reports.push(ResyncReport {
                folder: f.clone(),
                node: n.to_string(),
                outcome,
            });
        }
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_resync_within_the_interval_is_ignored_and_says_why() {
        let t0 = Instant::now();
        let cmd = resync_command("*", "abc");
        let Verdict::Resync(first) = judge(cmd.as_bytes(), "n1", None, t0) else {
            panic!("not a resync");
        };
        assert_eq!(first, ResyncAnswer::accepted(Some("abc".into())));
        let Verdict::Resync(again) =
            judge(cmd.as_bytes(), "n1", Some(t0), t0 + Duration::from_secs(4))
        else {
            panic!("not a resync");
        };
        assert!(!again.accepted);
        assert_eq!(
            again.reason.as_deref(),
            Some("rate limit: the last resync was 4 s ago (at most one every 10 s)")
        );
        let later = judge(cmd.as_bytes(), "n1", Some(t0), t0 + RESYNC_MIN_INTERVAL);
        assert!(matches!(later, Verdict::Resync(a) if a.accepted));
        let other = resync_command("n2", "abc");
        assert_eq!(judge(other.as_bytes(), "n1", None, t0), Verdict::NotForMe);
        // A hand-made command without an id, or with one that is not a short token.
        let bare = br#"{"op":"resync","id":"<script>"}"#;
        assert_eq!(
            judge(bare, "n1", None, t0),
            Verdict::Resync(ResyncAnswer::accepted(None))
        );
    }

    #[test]
    fn only_a_short_token_is_echoed_as_a_resync_id() {
        assert!(ResyncAnswer::valid_id("0123abcdef_-"));
        for bad in ["", "a b", "x\"y", &"a".repeat(65)] {
            assert!(!ResyncAnswer::valid_id(bad), "{bad}");
        }
        let json = serde_json::to_value(ResyncAnswer::ignored(None, "rate limit".into())).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"accepted": false, "reason": "rate limit"})
        );
    }
}
