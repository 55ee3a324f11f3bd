//! A passive MQTT subscriber on a folder's data topics (`mqsync/{folder}/v1/+`), for the
//! `nodes` workload: it records every data message's sender, kind and size, so that
//! what each node received can be split by message kind. mqsync's own metrics count
//! received messages and bytes per folder only; the kind is the fifth byte of every
//! message's plaintext header (docs/PROTOCOL.md, "Message layout"), so an observer
//! needs no key. It connects with the certificate of a node that never runs, so the
//! embedded broker's front drops none of the nodes' messages for it; it never publishes.

use anyhow::{Context, Result, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One data message as the broker delivered it to the observer.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub at: Instant,
    /// The sender's node index (`n1` is 0), from the topic's last level.
    pub sender: usize,
    /// The header's kind byte (0 when the payload has no mqsync header).
    pub kind: u8,
    pub bytes: u64,
}

/// A kind byte's name, as `mqsync_messages_sent_total` labels it: the kinds of wire
/// protocol v1, then `summary` and `descent` as issue 25's repair numbers them (9
/// and 10); any other shows as `kind N`.
pub fn kind_name(kind: u8) -> String {
    const NAMES: [&str; 10] = [
        "manifest", "chunks", "digest", "request", "progress", "deltas", "patch", "part",
        "summary", "descent",
    ];
    match kind {
        1..=10 => NAMES[usize::from(kind - 1)].to_string(),
        k => format!("kind {k}"),
    }
}

pub struct Observer {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

/// The largest packet the observer accepts: above mqsync's 4 MiB message bound.
const MAX_PACKET: usize = 5 << 20;

impl Observer {
    /// Connects as `cert` (a name `mqsync certs init` made), subscribes to `folder`'s
    /// data topics and returns once the broker acknowledged the subscription.
    pub fn start(certs: &Path, cert: &str, port: u16, folder: &str) -> Result<Observer> {
        let mut o = MqttOptions::new("mqsync-bench-observer", "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        o.set_clean_session(true);
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            crate::floor::tls(certs, cert)?,
        )));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let subscribed = Arc::new(AtomicBool::new(false));
        let filter = format!("mqsync/{folder}/v1/+");
        let thread = {
            let (seen, stop, subscribed) = (seen.clone(), stop.clone(), subscribed.clone());
            std::thread::spawn(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let (client, mut ev) = AsyncClient::new(o, 64);
                    while !stop.load(Ordering::SeqCst) {
                        // Bounded, so that a stop request is seen within 200 ms.
                        let Ok(event) =
                            tokio::time::timeout(Duration::from_millis(200), ev.poll()).await
                        else {
                            continue;
                        };
                        match event.context("observer connection")? {
                            Event::Incoming(Packet::ConnAck(_)) => {
                                client.subscribe(filter.clone(), QoS::AtLeastOnce).await?;
                            }
                            Event::Incoming(Packet::SubAck(_)) => {
                                subscribed.store(true, Ordering::SeqCst);
                            }
                            Event::Incoming(Packet::Publish(p)) => {
                                let sender = p
                                    .topic
                                    .rsplit('/')
                                    .next()
                                    .and_then(|n| n.strip_prefix('n'))
                                    .and_then(|i| i.parse::<usize>().ok())
                                    .and_then(|i| i.checked_sub(1));
                                // Every data topic names its sender; others are skipped.
                                let Some(sender) = sender else { continue };
                                let kind = if p.payload.starts_with(b"MQS1") {
                                    p.payload.get(4).copied().unwrap_or(0)
                                } else {
                                    0
                                };
                                let s = Seen {
                                    at: Instant::now(),
                                    sender,
                                    kind,
                                    bytes: p.payload.len() as u64,
                                };
                                if let Ok(mut v) = seen.lock() {
                                    v.push(s);
                                }
                            }
                            _ => {}
                        }
                    }
                    let _ = client.disconnect().await;
                    Ok(())
                })
            })
        };
        let mut obs = Observer {
            seen,
            stop,
            thread: Some(thread),
        };
        let start = Instant::now();
        while !subscribed.load(Ordering::SeqCst) {
            if obs.thread.as_ref().is_some_and(JoinHandle::is_finished) {
                return Err(obs
                    .finish()
                    .err()
                    .unwrap_or_else(|| anyhow::anyhow!("observer: ended before it subscribed")));
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("observer: not subscribed to {folder}'s data topics within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(obs)
    }

    /// Every message seen so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Disconnects and ends the thread; the error that ended it early, if any.
    pub fn finish(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("observer thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kinds_are_named_as_the_metrics_label_them() {
        assert_eq!(super::kind_name(1), "manifest");
        assert_eq!(super::kind_name(4), "request");
        assert_eq!(super::kind_name(8), "part");
        assert_eq!(super::kind_name(10), "descent");
        assert_eq!(super::kind_name(0), "kind 0");
        assert_eq!(super::kind_name(11), "kind 11");
    }
}
