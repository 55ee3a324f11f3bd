//! Operator commands sent over the broker (`mqsync resync`): a short-lived MQTT client
//! that publishes one command on a folder's public cmd topic, waits for the broker's
//! acknowledgement and disconnects.

use crate::transport::ConnectSettings;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use std::time::Duration;

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
                Err(e) => {
                    return Err(match crate::tls::describe_fatal(&e) {
                        Some(msg) => ControlError::Refused(msg),
                        None => ControlError::Connection(e.to_string()),
                    });
                }
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ControlError::Timeout(timeout))?
}
