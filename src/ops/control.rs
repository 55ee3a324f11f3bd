//! Operator commands over the broker: `mqsync status` and `mqsync wait` read the
//! retained status topics (`mqsync resync` is in [`super::resync`]). Each is a short-lived MQTT client of its own, and none needs the group key
//! (`daemon::connect_settings`): a resync command carries no MAC. With the key, a
//! status whose MAC does not verify shows as `unverified`, and `wait` fails on it.
//! Every such client ends with [`close`]: a DISCONNECT, then the broker's own close.

use crate::ops::status::{FolderStatus, IgnoreRules, State};
use crate::protocol::topics;
use crate::protocol::wire::Keys;
use crate::transport::ConnectSettings;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Refused(String),
    #[error("connection to the broker failed: {0}")]
    Connection(String),
    #[error("no answer from the broker within {} s", .0.as_secs())]
    Timeout(Duration),
}

/// Ends a short-lived client's connection the clean way: sends DISCONNECT and polls
/// until the broker has closed the connection (with TLS close_notify), at most
/// [`crate::transport::CLOSE_TIMEOUT`]. Brokers log a connection that just drops
/// (Mosquitto: `unexpected eof`; rustls: no `close_notify`) as an error.
pub(crate) async fn close(client: &AsyncClient, el: &mut EventLoop) {
    // Never connected, or already gone: polling would connect again.
    if el.network.is_none() || client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(crate::transport::CLOSE_TIMEOUT, async {
        while el.poll().await.is_ok() {}
    })
    .await;
}

/// A refused connection (certificates, authorisation) or another connection failure.
pub(crate) fn connection_error(e: &rumqttc::ConnectionError) -> ControlError {
    match crate::transport::tls::describe_fatal(e) {
        Some(msg) => ControlError::Refused(msg),
        None => ControlError::Connection(e.to_string()),
    }
}

pub(crate) fn short_client(s: &ConnectSettings, role: &str) -> (AsyncClient, EventLoop) {
    let id = format!("{}-{role}-{}", s.client_id, std::process::id());
    let mut opts = MqttOptions::new(id, s.host.clone(), s.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    if let Some(tls) = &s.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    AsyncClient::new(opts, 16)
}

/// The latest status of every (folder, node), kept up to date by `watch_status`.
pub type StatusMap = BTreeMap<(String, String), FolderStatus>;

/// Subscribes to every status topic under `prefix` and sends the map of statuses on
/// `tx` after each change. Retained messages arrive at once, so the first map after a
/// short quiet period is complete. With `keys`, a status whose MAC does not verify is
/// logged and dropped; without, statuses are taken as they come. Ends with an error
/// when the connection fails, and closes the connection cleanly once `tx`'s receiver
/// is dropped.
pub async fn watch_status(
    s: &ConnectSettings,
    prefix: &str,
    keys: Option<&Keys>,
    tx: mpsc::Sender<StatusMap>,
) -> Result<(), ControlError> {
    let (client, mut el) = short_client(s, "status");
    let res = watch_on(&client, &mut el, prefix, keys, &tx).await;
    close(&client, &mut el).await;
    res
}

async fn watch_on(
    client: &AsyncClient,
    el: &mut EventLoop,
    prefix: &str,
    keys: Option<&Keys>,
    tx: &mpsc::Sender<StatusMap>,
) -> Result<(), ControlError> {
    let filter = topics::all_status_filter(prefix);
    let mut map = StatusMap::new();
    loop {
        // A poll cut short loses nothing that matters: the connection closes next.
        let ev = tokio::select! {
            ev = el.poll() => ev,
            () = tx.closed() => return Ok(()),
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                client
                    .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                    .map_err(|e| ControlError::Connection(e.to_string()))?;
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if tx.send(map.clone()).await.is_err() {
                    return Ok(());
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // An empty retained message clears a topic (a removed Docker volume's
                // status): forget what it held.
                if p.payload.is_empty() {
                    if let Some((folder, node)) = topics::status_parts(&p.topic) {
                        if map
                            .remove(&(folder.to_string(), node.to_string()))
                            .is_some()
                            && tx.send(map.clone()).await.is_err()
                        {
                            return Ok(());
                        }
                    }
                    continue;
                }
                let doc = match crate::ops::status::verify(&p.payload, &p.topic, keys) {
                    Ok(doc) => doc,
                    Err(e) => {
                        warn!(topic = %p.topic, "unverified status: {e}");
                        match unverified(&p.topic, &e) {
                            Some(doc) => doc,
                            None => continue,
                        }
                    }
                };
                map.insert((doc.folder.clone(), doc.node.clone()), doc);
                if tx.send(map.clone()).await.is_err() {
                    return Ok(());
                }
            }
            Ok(_) => {}
            Err(e) => return Err(connection_error(&e)),
        }
    }
}

/// Reads the current statuses: everything that arrives until `quiet` passes without a
/// new message (retained statuses come in a burst right after subscribing).
pub async fn read_status(
    s: &ConnectSettings,
    prefix: &str,
    keys: Option<&Keys>,
    quiet: Duration,
) -> Result<StatusMap, ControlError> {
    let (tx, mut rx) = mpsc::channel(64);
    let settings = s.clone();
    let prefix = prefix.to_string();
    let keys = keys.cloned();
    let task =
        tokio::spawn(async move { watch_status(&settings, &prefix, keys.as_ref(), tx).await });
    let deadline = Duration::from_secs(15);
    let mut latest = None;
    let first = tokio::time::timeout(deadline, rx.recv()).await;
    let timed_out = match first {
        Ok(Some(m)) => {
            latest = Some(m);
            false
        }
        Ok(None) => false,
        Err(_) => true,
    };
    if !timed_out {
        while let Ok(Some(m)) = tokio::time::timeout(quiet, rx.recv()).await {
            latest = Some(m);
        }
    }
    // Dropping the receiver makes the task disconnect cleanly.
    drop(rx);
    let ended = finish(task).await;
    match (latest, timed_out) {
        (Some(m), _) => Ok(m),
        (None, true) => Err(ControlError::Timeout(deadline)),
        (None, false) => match ended {
            Some(Err(e)) => Err(e),
            _ => Err(ControlError::Connection("no answer from the broker".into())),
        },
    }
}

/// The map once the burst of retained statuses that follows the subscription has
/// passed: the first map, then each update until `quiet` passes without one. `None`
/// when the subscription ended before any map.
pub async fn settled(rx: &mut mpsc::Receiver<StatusMap>, quiet: Duration) -> Option<StatusMap> {
    let mut latest = rx.recv().await?;
    while let Ok(Some(m)) = tokio::time::timeout(quiet, rx.recv()).await {
        latest = m;
    }
    Some(latest)
}

/// Awaits a `watch_status` task whose receiver is gone (it closes its connection, at
/// most [`crate::transport::CLOSE_TIMEOUT`]); aborts it if it takes longer.
pub async fn finish(
    mut task: tokio::task::JoinHandle<Result<(), ControlError>>,
) -> Option<Result<(), ControlError>> {
    let limit = crate::transport::CLOSE_TIMEOUT + Duration::from_secs(1);
    match tokio::time::timeout(limit, &mut task).await {
        Ok(Ok(r)) => Some(r),
        Ok(Err(_)) => None,
        Err(_) => {
            task.abort();
            None
        }
    }
}

/// The row of a status that does not verify: nothing it claims is taken, only the
/// folder and node its topic names, so a node with another group key (or a forgery on
/// its topic) shows instead of vanishing.
fn unverified(topic: &str, e: &crate::ops::status::StatusError) -> Option<FolderStatus> {
    let (folder, node) = topics::status_parts(topic)?;
    Some(FolderStatus {
        node: node.to_string(),
        folder: folder.to_string(),
        state: State::Unverified,
        version: String::new(),
        files: 0,
        bytes: 0,
        pending: 0,
        digest: String::new(),
        local_changes: 0,
        last_error: Some(format!("{e} (group key differs?)")),
        failing_since_ms: None,
        connected: false,
        insecure_plaintext: false,
        updated_ms: 0,
        resync: None,
        ignore: None,
        held_deletes: 0,
        cert_days_left: None,
        notes: vec![],
        polled: None,
    })
}

/// Whether the online nodes of `folder` agree: every status verified, no failure that
/// lasts, the same ignore rules and digest, nothing pending, and every node that polls
/// (part of) the folder has polled it since `since_ms` (ms since the epoch; `wait`
/// passes its start, so a change made before it cannot hide in a polled directory).
/// Returns a reason when they do not.
pub fn folder_in_sync(map: &StatusMap, folder: &str, since_ms: u64) -> Result<usize, String> {
    let online: Vec<&FolderStatus> = map
        .values()
        .filter(|d| d.folder == folder && d.state != State::Offline)
        .collect();
    if online.is_empty() {
        return Err(format!("no online node reports folder {folder}"));
    }
    if let Some(d) = online.iter().find(|d| d.state == State::Unverified) {
        return Err(format!(
            "folder {folder}: node {} is unverified: {}",
            d.node,
            d.last_error.as_deref().unwrap_or("")
        ));
    }
    // A failure that lasts (a peer whose messages do not verify, an apply or index
    // write retried) is no agreement, even where the digests match.
    if let Some(d) = online.iter().find(|d| d.failing_since_ms.is_some()) {
        return Err(format!(
            "folder {folder}: node {} keeps failing: {}",
            d.node,
            d.last_error.as_deref().unwrap_or("no detail")
        ));
    }
    if let Some(why) = ignore_differences(map, folder) {
        return Err(why);
    }
    if let Some((d, p)) = online
        .iter()
        .find_map(|d| Some((d, d.polled.as_ref()?)).filter(|(_, p)| p.last_poll_ms < since_ms))
    {
        return Err(format!(
            "folder {folder}: node {} polls {} of {} directories every {} s ({}) and has not polled since this check began",
            d.node, p.dirs, p.of_dirs, p.interval_s, p.reason
        ));
    }
    let digest = &online[0].digest;
    for d in &online {
        if &d.digest != digest {
            return Err(format!(
                "folder {folder}: node {} has state {} but node {} has {}",
                online[0].node, digest, d.node, d.digest
            ));
        }
        if d.pending > 0 || d.state != State::Idle {
            return Err(format!(
                "folder {folder}: node {} is {} with {} pending",
                d.node, d.state, d.pending
            ));
        }
    }
    Ok(online.len())
}

/// Which online nodes of `folder` ignore other patterns than the rules most of them
/// share (ties: the first node's), naming each node and pattern; `None` when all agree.
/// Differing rules keep digests apart for good: what one node ignores, another syncs.
pub fn ignore_differences(map: &StatusMap, folder: &str) -> Option<String> {
    let nodes: Vec<(&str, &IgnoreRules)> = map
        .values()
        .filter(|d| d.folder == folder && d.state != State::Offline)
        .filter_map(|d| Some((d.node.as_str(), d.ignore.as_ref()?)))
        .collect();
    let held = |h: &str| nodes.iter().filter(|(_, r)| r.hash == h).count();
    let (ref_node, reference) =
        nodes
            .iter()
            .fold(None, |best: Option<&(&str, &IgnoreRules)>, n| match best {
                Some(b) if held(&b.1.hash) >= held(&n.1.hash) => Some(b),
                _ => Some(n),
            })?;
    let quoted = |ps: &[&String]| {
        ps.iter()
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = vec![];
    for (node, rules) in nodes.iter().filter(|(_, r)| r.hash != reference.hash) {
        let extra: Vec<_> = rules
            .patterns
            .iter()
            .filter(|p| !reference.patterns.contains(p))
            .collect();
        let missing: Vec<_> = reference
            .patterns
            .iter()
            .filter(|p| !rules.patterns.contains(p))
            .collect();
        if !extra.is_empty() {
            parts.push(format!(
                "node {node} ignores {} ({ref_node} does not)",
                quoted(&extra)
            ));
        }
        if !missing.is_empty() {
            parts.push(format!(
                "node {node} does not ignore {} ({ref_node} does)",
                quoted(&missing)
            ));
        }
        if extra.is_empty() && missing.is_empty() {
            parts.push(format!(
                "node {node}'s ignore rules differ from {ref_node}'s (lists too long to show)"
            ));
        }
    }
    (!parts.is_empty()).then(|| {
        format!(
            "folder {folder}: ignore rules differ (they must be the same on every node): {}",
            parts.join("; ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::status::StatusError;

    fn doc(node: &str, ignore: &[&str]) -> FolderStatus {
        let ignore: Vec<String> = ignore.iter().map(|p| p.to_string()).collect();
        FolderStatus {
            state: State::Idle,
            version: "0".into(),
            digest: "d".into(),
            last_error: None,
            connected: true,
            ignore: Some(IgnoreRules::of(&ignore)),
            ..unverified(
                &format!("mqsync/docs/status/{node}"),
                &StatusError::Malformed(String::new()),
            )
            .unwrap()
        }
    }

    fn map(docs: Vec<FolderStatus>) -> StatusMap {
        docs.into_iter()
            .map(|d| ((d.folder.clone(), d.node.clone()), d))
            .collect()
    }

    #[test]
    fn an_unverified_node_keeps_the_folder_out_of_sync() {
        let mut m = map(vec![doc("n1", &[]), doc("n2", &[])]);
        assert_eq!(folder_in_sync(&m, "docs", 0), Ok(2));
        let bad = StatusError::Mac(crate::ops::status::MacError::BadMac);
        let u = unverified("mqsync/docs/status/n3", &bad).unwrap();
        assert_eq!((u.folder.as_str(), u.node.as_str()), ("docs", "n3"));
        m.insert(("docs".into(), "n3".into()), u);
        let why = folder_in_sync(&m, "docs", 0).unwrap_err();
        assert!(
            why.contains("node n3 is unverified") && why.contains("group key"),
            "{why}"
        );
        assert_eq!(unverified("not/a/status", &bad), None);
        // A node that verifies none of a peer's messages is not in sync either.
        m.remove(&("docs".to_string(), "n3".to_string()));
        let n1 = m.get_mut(&("docs".to_string(), "n1".to_string())).unwrap();
        n1.failing_since_ms = Some(1);
        n1.last_error = Some("messages from n3 fail verification".into());
        let why = folder_in_sync(&m, "docs", 0).unwrap_err();
        assert!(
            why.contains("node n1 keeps failing: messages from n3"),
            "{why}"
        );
    }

    #[test]
    fn a_busy_node_is_named_with_its_state_as_the_status_json_says_it() {
        let mut m = map(vec![doc("n1", &[]), doc("n2", &[])]);
        let n2 = m.get_mut(&("docs".to_string(), "n2".to_string())).unwrap();
        n2.state = State::Syncing;
        n2.pending = 3;
        assert_eq!(
            folder_in_sync(&m, "docs", 0),
            Err("folder docs: node n2 is syncing with 3 pending".to_string())
        );
    }

    #[test]
    fn differing_ignore_rules_name_the_node_and_the_patterns() {
        // Order and repeats do not matter: the rules are a set.
        let m = map(vec![
            doc("n1", &["*.swp", "*.tmp"]),
            doc("n2", &["*.tmp", "*.swp", "*.tmp"]),
            doc("n3", &["*.swp", "*.log"]),
        ]);
        let why = ignore_differences(&m, "docs").unwrap();
        assert!(
            why.contains(r#"node n3 ignores "*.log" (n1 does not)"#)
                && why.contains(r#"node n3 does not ignore "*.tmp" (n1 does)"#)
                && !why.contains("node n1")
                && !why.contains("node n2"),
            "{why}"
        );
        assert_eq!(folder_in_sync(&m, "docs", 0), Err(why));
        let same = map(vec![doc("n1", &["a"]), doc("n2", &["a"])]);
        assert_eq!(ignore_differences(&same, "docs"), None);
        // An older node that does not report its rules is not compared.
        let mut old = doc("n3", &["b"]);
        old.ignore = None;
        let m = map(vec![doc("n1", &["a"]), old]);
        assert_eq!(ignore_differences(&m, "docs"), None);
    }

    #[test]
    fn ignore_lists_too_long_to_show_still_differ() {
        let long: Vec<String> = (0..1000).map(|i| format!("pattern-{i:04}")).collect();
        let mut other = long.clone();
        other.push("zzz".into());
        let (a, b) = (IgnoreRules::of(&long), IgnoreRules::of(&other));
        assert!(a.truncated && a.patterns.iter().map(String::len).sum::<usize>() <= 2048);
        assert_ne!(a.hash, b.hash);
        let mut d1 = doc("n1", &[]);
        d1.ignore = Some(a);
        let mut d2 = doc("n2", &[]);
        d2.ignore = Some(b);
        let why = ignore_differences(&map(vec![d1, d2]), "docs").unwrap();
        assert!(why.contains("too long to show"), "{why}");
    }
}
