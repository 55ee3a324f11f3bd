//! The MQTT side of a folder: one rumqttc connection (MQTT 3.1.1, TLS by default) whose
//! event loop runs in its own task and hands incoming publishes to the folder over a
//! bounded channel. Outgoing messages go through an unbounded queue drained by another
//! task, so the folder never blocks on the event loop (which would deadlock), and the
//! folder limits what it puts in flight by watching `queued_bytes`.

use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

pub type ClientTlsConfig = rumqttc::tokio_rustls::rustls::ClientConfig;

#[derive(Clone)]
pub struct ConnectSettings {
    pub host: String,
    pub port: u16,
    /// `None` only with an explicit `insecure_plaintext`.
    pub tls: Option<Arc<ClientTlsConfig>>,
    pub client_id: String,
    pub keepalive: Duration,
    pub max_packet: usize,
}

#[derive(Debug)]
pub enum NetEvent {
    Connected,
    /// Lost or refused connection; `fatal` when retrying cannot help until an
    /// operator fixes the configuration (it is retried anyway, more slowly).
    Disconnected {
        reason: String,
        fatal: bool,
    },
    Message {
        topic: String,
        payload: bytes::Bytes,
    },
}

struct Outgoing {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

/// Publishes without ever blocking the caller.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Outgoing>,
    queued: Arc<AtomicUsize>,
    drained: Arc<Notify>,
    client: AsyncClient,
}

impl Publisher {
    pub fn publish(&self, topic: String, payload: Vec<u8>, retain: bool) {
        self.queued.fetch_add(payload.len(), Ordering::Relaxed);
        let _ = self.tx.send(Outgoing {
            topic,
            payload,
            retain,
        });
    }

    /// Bytes handed to `publish` that the event loop has not taken yet.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Resolves when the queue has shrunk.
    pub async fn drained(&self) {
        self.drained.notified().await
    }

    /// Sends DISCONNECT after what is queued so far (the will is then not fired).
    pub async fn disconnect(&self) {
        for _ in 0..100 {
            if self.queued_bytes() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.client.disconnect().await;
    }
}

/// Connects (and keeps reconnecting) with `subscriptions` renewed on every connect.
pub fn connect(
    s: &ConnectSettings,
    subscriptions: Vec<String>,
    will: Option<(String, Vec<u8>)>,
) -> (Publisher, mpsc::Receiver<NetEvent>) {
    let mut opts = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
    opts.set_keep_alive(s.keepalive);
    opts.set_max_packet_size(s.max_packet, s.max_packet);
    opts.set_clean_session(true);
    opts.set_inflight(100);
    if let Some((topic, payload)) = will {
        opts.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true));
    }
    if let Some(tls) = &s.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let (ev_tx, ev_rx) = mpsc::channel(64);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
    let queued = Arc::new(AtomicUsize::new(0));
    let drained = Arc::new(Notify::new());

    let pub_client = client.clone();
    let q = queued.clone();
    let d = drained.clone();
    tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let len = m.payload.len();
            if pub_client
                .publish(m.topic, QoS::AtLeastOnce, m.retain, m.payload)
                .await
                .is_err()
            {
                break;
            }
            q.fetch_sub(len, Ordering::Relaxed);
            d.notify_waiters();
        }
    });

    let sub_client = client.clone();
    let host = format!("{}:{}", s.host, s.port);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let ev = NetEvent::Message {
                        topic: p.topic,
                        payload: p.payload,
                    };
                    if ev_tx.send(ev).await.is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(250);
                    let c = sub_client.clone();
                    let subs = subscriptions.clone();
                    // Subscribing from this task could deadlock on a full request queue.
                    tokio::spawn(async move {
                        for t in subs {
                            let _ = c.subscribe(t, QoS::AtLeastOnce).await;
                        }
                    });
                    if ev_tx.send(NetEvent::Connected).await.is_err() {
                        return;
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {}
                Ok(_) => {}
                Err(e) => {
                    let fatal = crate::tls::describe_fatal(&e);
                    let reason = match &fatal {
                        Some(msg) => msg.clone(),
                        None => format!("connection to {host} failed: {e}"),
                    };
                    if matches!(e, rumqttc::ConnectionError::RequestsDone) {
                        return;
                    }
                    let ev = NetEvent::Disconnected {
                        reason,
                        fatal: fatal.is_some(),
                    };
                    if ev_tx.send(ev).await.is_err() {
                        return;
                    }
                    let wait = if fatal.is_some() {
                        Duration::from_secs(10)
                    } else {
                        backoff
                    };
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    });

    (
        Publisher {
            tx: out_tx,
            queued,
            drained,
            client,
        },
        ev_rx,
    )
}
