//! `mqsync forget`: finds the retained documents a node left on the broker (status,
//! pending list and Docker mount report of every folder) and clears them with empty
//! retained messages, which only the node itself or an operator certificate may
//! publish (docs/SECURITY.md). Whether they are gone is checked by reading them again:
//! Mosquitto acknowledges a publish its ACL drops.

use super::control::{ControlError, close, connection_error, short_client};
use crate::protocol::topics;
use crate::transport::ConnectSettings;
use rumqttc::{Event, Packet, QoS};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The documents are still there after clearing: the broker dropped the empty
    /// messages (or closed the connection). Carries how many were cleared.
    #[error("the broker did not let this certificate clear the documents ({0} cleared)")]
    NotAllowed(usize),
}

/// What a node left on the broker.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Found {
    /// Every retained topic of the node, sorted.
    pub topics: Vec<String>,
    /// Folders whose status says the node is not offline.
    pub online: Vec<String>,
}

/// How long a connection may take to deliver what it is asked for.
const DEADLINE: Duration = Duration::from_secs(15);

/// The retained documents of `node` under `prefix`: everything that arrives on its
/// topics until `quiet` passes without a message after subscribing.
pub async fn find(
    s: &ConnectSettings,
    prefix: &str,
    node: &str,
    quiet: Duration,
) -> Result<Found, ControlError> {
    let (client, mut el) = short_client(s, "forget");
    let filters = [
        format!("{prefix}/+/status/{node}"),
        format!("{prefix}/+/pending/{node}"),
        topics::mounts(prefix, node),
    ];
    let mut docs: BTreeMap<String, bytes::Bytes> = BTreeMap::new();
    let mut subscribed = false;
    let work = async {
        loop {
            let event = if subscribed {
                match tokio::time::timeout(quiet, el.poll()).await {
                    Ok(e) => e,
                    Err(_) => return Ok(()),
                }
            } else {
                el.poll().await
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for f in &filters {
                        client
                            .try_subscribe(f.clone(), QoS::AtLeastOnce)
                            .map_err(|e| ControlError::Connection(e.to_string()))?;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => subscribed = true,
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if p.payload.is_empty() {
                        docs.remove(&p.topic);
                    } else {
                        docs.insert(p.topic.clone(), p.payload);
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(connection_error(&e)),
            }
        }
    };
    let r = tokio::time::timeout(DEADLINE, work).await;
    close(&client, &mut el).await;
    r.map_err(|_| ControlError::Timeout(DEADLINE))??;
    let online = docs
        .iter()
        .filter_map(|(topic, payload)| {
            let (folder, _) = topics::status_parts(topic)?;
            let doc: serde_json::Value = serde_json::from_slice(payload).ok()?;
            (doc["state"] != "offline").then(|| folder.to_string())
        })
        .collect();
    Ok(Found {
        topics: docs.into_keys().collect(),
        online,
    })
}

/// Publishes an empty retained message on each of `topics` and returns once the broker
/// has acknowledged them all.
pub async fn clear(s: &ConnectSettings, topics: &[String]) -> Result<(), ForgetError> {
    let (client, mut el) = short_client(s, "forget");
    let (mut acked, mut connected) = (0, false);
    let work = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    for t in topics {
                        client
                            .try_publish(t.clone(), QoS::AtLeastOnce, true, Vec::new())
                            .map_err(|e| ControlError::Connection(e.to_string()))?;
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    if acked == topics.len() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                // The embedded broker closes a connection that breaks its rule.
                Err(e) => return Err(ForgetError::from(connection_error(&e))),
            }
        }
    };
    let r = tokio::time::timeout(DEADLINE, work).await;
    close(&client, &mut el).await;
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(ForgetError::Control(_))) if connected => Err(ForgetError::NotAllowed(acked)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ControlError::Timeout(DEADLINE).into()),
    }
}
