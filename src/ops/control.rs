//! Operator commands over the broker: `mqsync resync` publishes one command on a
//! folder's public cmd topic; `mqsync status` and `mqsync wait` read the retained status
//! topics. Each is a short-lived MQTT client of its own, and none needs the group key
//! (`daemon::connect_settings`): a resync command carries no MAC. With the key, status
//! readers drop any status whose MAC does not verify.

use crate::ops::status::FolderStatus;
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
    #[error("the broker did not acknowledge the command within {0:?}")]
    Timeout(Duration),
}

/// The JSON of a resync command for `node` (`"*"`: every node).
pub fn resync_command(node: &str) -> String {
    serde_json::json!({ "op": "resync", "node": node }).to_string()
}

/// Publishes `payload` on each topic with QoS 1 and returns once the broker has
/// acknowledged all of them.
pub async fn publish(
    s: &ConnectSettings,
    topics: &[String],
    payload: &str,
) -> Result<(), ControlError> {
    let timeout = Duration::from_secs(15);
    let id = format!("{}-ctl-{}", s.client_id, std::process::id());
    let mut opts = MqttOptions::new(id, s.host.clone(), s.port);
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some(tls) = &s.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    let (client, mut el) = AsyncClient::new(opts, 16);
    let work = async {
        let mut acked = 0;
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for t in topics {
                        client
                            .try_publish(
                                t.clone(),
                                QoS::AtLeastOnce,
                                false,
                                payload.as_bytes().to_vec(),
                            )
                            .map_err(|e| ControlError::Connection(e.to_string()))?;
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    if acked == topics.len() {
                        let _ = client.try_disconnect();
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(connection_error(&e)),
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ControlError::Timeout(timeout))?
}

/// A refused connection (certificates, authorisation) or another connection failure.
fn connection_error(e: &rumqttc::ConnectionError) -> ControlError {
    match crate::transport::tls::describe_fatal(e) {
        Some(msg) => ControlError::Refused(msg),
        None => ControlError::Connection(e.to_string()),
    }
}

fn short_client(s: &ConnectSettings, role: &str) -> (AsyncClient, EventLoop) {
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
/// when the connection fails.
pub async fn watch_status(
    s: &ConnectSettings,
    prefix: &str,
    keys: Option<&Keys>,
    tx: mpsc::Sender<StatusMap>,
) -> Result<(), ControlError> {
    let (client, mut el) = short_client(s, "status");
    let filter = topics::all_status_filter(prefix);
    let mut map = StatusMap::new();
    loop {
        match el.poll().await {
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
                match crate::ops::status::verify(&p.payload, &p.topic, keys) {
                    Ok(doc) => {
                        map.insert((doc.folder.clone(), doc.node.clone()), doc);
                        if tx.send(map.clone()).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => warn!(topic = %p.topic, "dropping status: {e}"),
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
    match first {
        Ok(Some(m)) => latest = Some(m),
        Ok(None) => {}
        Err(_) => {
            task.abort();
            return Err(ControlError::Timeout(deadline));
        }
    }
    while let Ok(Some(m)) = tokio::time::timeout(quiet, rx.recv()).await {
        latest = Some(m);
    }
    task.abort();
    match latest {
        Some(m) => Ok(m),
        None => match task.await {
            Ok(Err(e)) => Err(e),
            _ => Err(ControlError::Connection("no answer from the broker".into())),
        },
    }
}

/// Whether the online nodes of `folder` agree: same digest, nothing pending. Returns
/// a reason when they do not.
pub fn folder_in_sync(map: &StatusMap, folder: &str) -> Result<usize, String> {
    let online: Vec<&FolderStatus> = map
        .values()
        .filter(|d| d.folder == folder && d.state != crate::ops::status::State::Offline)
        .collect();
    if online.is_empty() {
        return Err(format!("no online node reports folder {folder}"));
    }
    let digest = &online[0].digest;
    for d in &online {
        if &d.digest != digest {
            return Err(format!(
                "folder {folder}: node {} has state {} but node {} has {}",
                online[0].node, digest, d.node, d.digest
            ));
        }
        if d.pending > 0 || d.state != crate::ops::status::State::Idle {
            return Err(format!(
                "folder {folder}: node {} is {:?} with {} pending",
                d.node, d.state, d.pending
            ));
        }
    }
    Ok(online.len())
}
