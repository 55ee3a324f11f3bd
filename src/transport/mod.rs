//! The MQTT side of a folder: two rumqttc connections (MQTT 3.1.1, TLS by default), one
//! that only publishes and one that only subscribes. A single connection that both
//! publishes large messages and receives the echo of its own wildcard subscription
//! deadlocks against brokers that write and read a connection in turn (rumqttd): both
//! ends block writing until rumqttc's 5 s flush timeout drops the connection. Each event
//! loop runs in its own task; incoming publishes reach the folder over a bounded
//! channel, and outgoing messages go through an unbounded queue drained by another task,
//! so the folder never blocks on an event loop and limits what it puts in flight by
//! watching `queued_bytes`. [`Publisher::disconnect`] ends both connections the clean
//! way: an MQTT DISCONNECT on each, then the event loops run until the broker has closed
//! them (brokers log a connection dropped without either as an error).

pub mod oversize;
pub mod tls;

use oversize::{OversizeWatch, Verdict};
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS, Request, SubscribeFilter,
    TlsConfiguration, Transport,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

/// How long a clean disconnect may take (DISCONNECT sent, the broker closing the
/// connection) before the connection is dropped anyway.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

pub type ClientTlsConfig = rumqttc::tokio_rustls::rustls::ClientConfig;

#[derive(Clone)]
pub struct ConnectSettings {
    pub host: String,
    pub port: u16,
    /// `None` only with an explicit `insecure_plaintext`.
    pub tls: Option<Arc<ClientTlsConfig>>,
    pub client_id: String,
    pub keepalive: Duration,
    /// Largest packet accepted from the broker.
    pub max_packet: usize,
    /// Largest packet published (`broker.max_message_bytes`): larger messages are
    /// split by their publisher, and anything still larger is dropped with an error
    /// instead of making the broker close the connection.
    pub max_message: usize,
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
    /// The broker seems to refuse packets as large as mqsync publishes (a report
    /// naming `broker.max_message_bytes`, [`oversize`]), or `None`: it took one after
    /// all.
    PacketLimit(Option<String>),
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
    sub_client: AsyncClient,
    /// Turns true once `disconnect` has begun: the event loops stop delivering and
    /// reconnecting.
    closing: Arc<watch::Sender<bool>>,
    /// The two event loop tasks, awaited by `disconnect`.
    loops: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// `broker.max_message_bytes`.
    max_message: usize,
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

    /// Whether a payload of `len` bytes on `topic` fits `broker.max_message_bytes`
    /// (larger ones are dropped by `publish`).
    pub fn fits(&self, topic: &str, len: usize) -> bool {
        packet_size(topic, len) <= self.max_message
    }

    /// Bytes handed to `publish` that the event loop has not taken yet.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Resolves when the queue has shrunk.
    pub async fn drained(&self) {
        self.drained.notified().await
    }

    /// Sends DISCONNECT on both connections, after what is queued so far (the will is
    /// then not fired), and waits until the broker has closed them, at most
    /// [`CLOSE_TIMEOUT`] after the queue has drained.
    pub async fn disconnect(&self) {
        for _ in 0..100 {
            if self.queued_bytes() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.closing.send_replace(true);
        let loops = self
            .loops
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = self.client.disconnect().await;
            let _ = self.sub_client.disconnect().await;
        })
        .await;
        for mut task in loops {
            if tokio::time::timeout(CLOSE_TIMEOUT, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

/// Connects (and keeps reconnecting) both connections. `subscriptions` are renewed on
/// every connect of the subscribing connection, and `NetEvent::Connected` is sent once
/// they are acknowledged, so whatever the folder publishes then gets its answers.
/// Messages on `own_topic` (our own publications, echoed by a wildcard) are dropped in
/// the event loop. The will goes on the publishing connection.
pub fn connect(
    s: &ConnectSettings,
    subscriptions: Vec<String>,
    own_topic: Option<String>,
    will: Option<(String, Vec<u8>)>,
) -> (Publisher, mpsc::Receiver<NetEvent>) {
    let (ev_tx, ev_rx) = mpsc::channel(64);
    let host = format!("{}:{}", s.host, s.port);

    let mut pub_opts = options(s, format!("{}-pub", s.client_id));
    if let Some((topic, payload)) = will {
        pub_opts.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true));
    }
    let (client, pub_loop) = AsyncClient::new(pub_opts, 64);
    let (sub_client, sub_loop) = AsyncClient::new(options(s, format!("{}-sub", s.client_id)), 64);
    let (closing, closing_rx) = watch::channel(false);

    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
    let queued = Arc::new(AtomicUsize::new(0));
    let drained = Arc::new(Notify::new());
    let pub_client = client.clone();
    let q = queued.clone();
    let d = drained.clone();
    let watch = Arc::new(Mutex::new(OversizeWatch::new(s.max_message)));
    let w = watch.clone();
    let max_message = s.max_message;
    tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let len = m.payload.len();
            let size = packet_size(&m.topic, len);
            if size > max_message {
                // Every publisher sizes its messages to fit: this one would make the
                // broker close the connection, and every reconnect would send it again.
                tracing::error!(topic = %m.topic, bytes = size, "dropping a message larger than broker.max_message_bytes ({max_message})");
                q.fetch_sub(len, Ordering::Relaxed);
                d.notify_waiters();
                continue;
            }
            let held = match w.lock() {
                Ok(w) if w.holds_back(size) => true,
                Ok(mut w) => {
                    w.handed(size);
                    false
                }
                Err(_) => false,
            };
            if held {
                // The broker refuses packets this large (reported as an error): the
                // node stays connected, its status reaches the broker, and the sync
                // protocol asks again for what was dropped once the limit is fixed.
                tracing::debug!(topic = %m.topic, bytes = size, "not publishing a message larger than the broker accepts");
                q.fetch_sub(len, Ordering::Relaxed);
                d.notify_waiters();
                continue;
            }
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

    let loops = vec![
        tokio::spawn(drive(
            pub_loop,
            Role::Publish(watch),
            ev_tx.clone(),
            host.clone(),
            closing_rx.clone(),
        )),
        tokio::spawn(drive(
            sub_loop,
            Role::Subscribe {
                client: sub_client.clone(),
                subscriptions,
                own_topic,
            },
            ev_tx,
            host,
            closing_rx,
        )),
    ];

    (
        Publisher {
            tx: out_tx,
            queued,
            drained,
            client,
            sub_client,
            closing: Arc::new(closing),
            loops: Arc::new(Mutex::new(loops)),
            max_message,
        },
        ev_rx,
    )
}

/// The size of the MQTT 3.1.1 PUBLISH packet (QoS 1) carrying `payload_len` bytes on
/// `topic`: what a broker's packet size limit counts.
pub fn packet_size(topic: &str, payload_len: usize) -> usize {
    let len = 2 + topic.len() + 2 + payload_len;
    let len_len = match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + len_len + len
}

/// What an event loop does besides reporting errors.
enum Role {
    /// Publishes, following the size of each publish to recognise a broker's packet
    /// size limit.
    Publish(Arc<Mutex<OversizeWatch>>),
    /// Subscribes after every ConnAck, reports `Connected` on the SubAck and delivers
    /// messages, except those on `own_topic`.
    Subscribe {
        client: AsyncClient,
        subscriptions: Vec<String>,
        own_topic: Option<String>,
    },
}

fn options(s: &ConnectSettings, client_id: String) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, s.host.clone(), s.port);
    opts.set_keep_alive(s.keepalive);
    // Incoming: what other nodes may send (they may allow more than this node);
    // outgoing: the packet limit the publisher keeps to.
    opts.set_max_packet_size(s.max_packet, s.max_message.min(s.max_packet));
    opts.set_clean_session(true);
    opts.set_inflight(100);
    if let Some(tls) = &s.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    opts
}

/// Sends `ev` to the folder; while closing, drops it instead (the folder no longer
/// reads, and waiting would keep the DISCONNECT from going out). False when the folder
/// has gone.
async fn deliver(
    ev_tx: &mpsc::Sender<NetEvent>,
    ev: NetEvent,
    closing: &mut watch::Receiver<bool>,
) -> bool {
    if *closing.borrow() {
        return true;
    }
    tokio::select! {
        sent = ev_tx.send(ev) => sent.is_ok(),
        _ = closing.wait_for(|c| *c) => true,
    }
}

/// Polls one event loop until the folder goes away or the connection has been closed
/// after `closing` turned true, reconnecting with backoff until then. Subscribing
/// loops subscribe after every ConnAck and report `Connected` on the SubAck;
/// publishing loops watch for a broker's packet size limit; both report errors.
async fn drive(
    mut eventloop: EventLoop,
    role: Role,
    ev_tx: mpsc::Sender<NetEvent>,
    host: String,
    mut closing: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(250);
    // The publishing connection lost since its last ConnAck: its next one is reported.
    let mut lost = false;
    let lock = |w: &Arc<Mutex<OversizeWatch>>, f: &mut dyn FnMut(&mut OversizeWatch) -> Verdict| {
        w.lock().map(|mut w| f(&mut w)).unwrap_or(Verdict::Same)
    };
    loop {
        // Closing while not connected: nothing to say goodbye to.
        if *closing.borrow() && eventloop.network.is_none() {
            return;
        }
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Role::Subscribe { own_topic, .. } = &role else {
                    continue;
                };
                if own_topic.as_deref() == Some(p.topic.as_str()) {
                    continue;
                }
                let ev = NetEvent::Message {
                    topic: p.topic,
                    payload: p.payload,
                };
                if !deliver(&ev_tx, ev, &mut closing).await {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(250);
                // The folder took the publishing connection's loss as the node's (it
                // stops its timers, and what it published meanwhile may be gone): its
                // return is a reconnection too, even while the subscribing connection
                // stayed up and so sends no SubAck. Found by the fault campaign: a node
                // paused past its keep-alive lost only this connection and stayed
                // "disconnected" for good.
                if matches!(role, Role::Publish(_))
                    && std::mem::take(&mut lost)
                    && !deliver(&ev_tx, NetEvent::Connected, &mut closing).await
                {
                    return;
                }
                if let Role::Subscribe {
                    client,
                    subscriptions,
                    ..
                } = &role
                {
                    let c = client.clone();
                    let subs: Vec<SubscribeFilter> = subscriptions
                        .iter()
                        .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce))
                        .collect();
                    // Subscribing from this task could deadlock on a full request queue.
                    tokio::spawn(async move {
                        let _ = c.subscribe_many(subs).await;
                    });
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if !deliver(&ev_tx, NetEvent::Connected, &mut closing).await {
                    return;
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                if let Role::Publish(w) = &role {
                    lock(w, &mut |w| {
                        w.written(pkid);
                        Verdict::Same
                    });
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Role::Publish(w) = &role {
                    if lock(w, &mut |w| w.acked(ack.pkid)) == Verdict::Cleared
                        && !deliver(&ev_tx, NetEvent::PacketLimit(None), &mut closing).await
                    {
                        return;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                // After our DISCONNECT the broker closes the connection: done.
                if matches!(e, rumqttc::ConnectionError::RequestsDone) || *closing.borrow() {
                    return;
                }
                let mut refused = None;
                let mut limited = false;
                let mut cleared = false;
                if let Role::Publish(w) = &role {
                    // rumqttc queues the events of one network round and keeps them
                    // across the reconnect: read them now, or the next connection's
                    // first publishes are matched with this one's sizes (a watch that
                    // believed the broker took 497,782 bytes under a 262,144 limit).
                    for ev in std::mem::take(&mut eventloop.state.events) {
                        match ev {
                            Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => {
                                lock(w, &mut |w| {
                                    w.written(pkid);
                                    Verdict::Same
                                });
                            }
                            Event::Incoming(Packet::PubAck(ack)) => {
                                cleared |= lock(w, &mut |w| w.acked(ack.pkid)) == Verdict::Cleared;
                            }
                            _ => {}
                        }
                    }
                    // The client holds every publish it has not had acknowledged, the
                    // written ones first; a new clean session drops them all.
                    let held = eventloop
                        .pending
                        .iter()
                        .filter(|r| matches!(r, Request::Publish(_)))
                        .count();
                    if let Verdict::Refused(r) = lock(w, &mut |w| {
                        let dropped = held.saturating_sub(w.inflight());
                        w.closed(dropped)
                    }) {
                        refused = Some(r.to_string());
                    }
                    limited = w.lock().is_ok_and(|w| w.reported());
                }
                let fatal = crate::transport::tls::describe_fatal(&e);
                let reason = match &fatal {
                    Some(msg) => msg.clone(),
                    None => format!("connection to {host} failed: {e}"),
                };
                let slow = fatal.is_some() || limited;
                lost = true;
                let ev = NetEvent::Disconnected {
                    reason,
                    fatal: fatal.is_some(),
                };
                if !deliver(&ev_tx, ev, &mut closing).await {
                    return;
                }
                if cleared && !deliver(&ev_tx, NetEvent::PacketLimit(None), &mut closing).await {
                    return;
                }
                if let Some(r) = refused {
                    if !deliver(&ev_tx, NetEvent::PacketLimit(Some(r)), &mut closing).await {
                        return;
                    }
                }
                let wait = if slow {
                    Duration::from_secs(10)
                } else {
                    backoff
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = closing.wait_for(|c| *c) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
