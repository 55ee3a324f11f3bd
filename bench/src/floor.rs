//! The transport floor: the bulk workload's bytes as ~1 MiB QoS 1 messages from one
//! MQTT client through a broker (mqsync's own, or Mosquitto) to two subscribers, over
//! mutual TLS as mqsync connects, with no files, hashing or compression. What mqsync
//! could at best reach through the same broker; its time over this one is its efficiency.

use crate::proc::{Usage, wait_for};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use rumqttc::tokio_rustls::rustls;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Payload of one message, as mqsync's chunks of a large file.
pub const MESSAGE_BYTES: usize = 1 << 20;
/// Messages the publisher may be ahead of the slowest subscriber. rumqttd (mqsync's
/// broker) silently skips messages for a subscriber that falls 32 MiB behind (its log
/// segments), so a sender needs flow control of its own, as mqsync has; 16 MiB keeps
/// the pipe full at a few hundred MB/s.
pub const WINDOW: u64 = 16;
/// The topic: the publisher's own data topic under mqsync's rule (`…/v1/{node}`), so
/// the embedded broker's ACL lets it through.
const TOPIC: &str = "mqsync/floor/v1/n1";

/// What one floor run measured.
pub struct FloorRun {
    /// From the first publish until both subscribers had every byte.
    pub wall: Duration,
    pub messages: u64,
    pub bytes: u64,
    /// This process's CPU during the run (publisher and subscribers).
    pub client: Usage,
    /// The broker's TCP bytes in and out on the clients' connections, while they were
    /// still open (from their start: the handshakes and subscriptions are small).
    pub wire: Option<(u64, u64)>,
}

/// TLS as mqsync's nodes connect: the cluster's CA only, the node's certificate.
pub(crate) fn tls(certs: &Path, node: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs.join("ca.pem"))? {
        roots.add(c?)?;
    }
    let chain = CertificateDer::pem_file_iter(certs.join(format!("{node}.pem")))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(certs.join(format!("{node}.key")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Options as mqsync sets them: 100 publishes in flight, packets above a message.
fn options(certs: &Path, node: &str, port: u16) -> Result<MqttOptions> {
    let mut o = MqttOptions::new(format!("floor-{node}"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(2 * MESSAGE_BYTES, 2 * MESSAGE_BYTES);
    o.set_inflight(100);
    o.set_clean_session(true);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls(
        certs, node,
    )?)));
    Ok(o)
}

fn cpu_now() -> f64 {
    // SAFETY: getrusage(2) fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// The bulk files' bytes cut into messages, read before anything is timed.
pub fn messages(src: &Path) -> Result<Vec<Bytes>> {
    let mut out = vec![];
    for rel in crate::data::listing(src).keys() {
        let data = Bytes::from(std::fs::read(src.join(rel))?);
        let mut at = 0;
        while at < data.len() {
            let end = (at + MESSAGE_BYTES).min(data.len());
            out.push(data.slice(at..end));
            at = end;
        }
    }
    Ok(out)
}

/// Publishes `msgs` through the broker on 127.0.0.1:`port` (certificates of
/// `mqsync certs init` in `certs`: n1 publishes, n2 and n3 subscribe).
pub fn run(certs: &Path, port: u16, msgs: &[Bytes]) -> Result<FloorRun> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(certs, port, msgs))
}

async fn run_async(certs: &Path, port: u16, msgs: &[Bytes]) -> Result<FloorRun> {
    let total: u64 = msgs.iter().map(|m| m.len() as u64).sum();
    let received: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let bytes_in: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let subscribed = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());
    // Each client's event loop runs until it fails (or is aborted at the end).
    let mut tasks: Vec<tokio::task::JoinHandle<Result<()>>> = vec![];
    for (i, node) in ["n2", "n3"].into_iter().enumerate() {
        let (client, mut ev) = AsyncClient::new(options(certs, node, port)?, 16);
        let (received, bytes_in, subscribed, progress) = (
            received.clone(),
            bytes_in.clone(),
            subscribed.clone(),
            progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        client.subscribe(TOPIC, QoS::AtLeastOnce).await?;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subscribed.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        bytes_in[i].fetch_add(p.payload.len() as u64, Ordering::SeqCst);
                        received[i].fetch_add(1, Ordering::SeqCst);
                        progress.notify_one();
                    }
                    Ok(_) => {}
                    Err(e) => return Err(anyhow::Error::from(e).context(node)),
                }
            }
        }));
    }
    let (publisher, mut pev) = AsyncClient::new(options(certs, "n1", port)?, 16);
    let connected = Arc::new(AtomicU64::new(0));
    let c2 = connected.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            match pev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    c2.store(1, Ordering::SeqCst);
                }
                Ok(_) => {}
                Err(e) => return Err(anyhow::Error::from(e).context("n1")),
            }
        }
    }));
    let ready = async {
        while subscribed.load(Ordering::SeqCst) < 2 || connected.load(Ordering::SeqCst) == 0 {
            if tasks.iter().any(|t| t.is_finished()) {
                return Err(failure(&mut tasks).await);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .context("floor clients not connected and subscribed within 30 s")??;

    let cpu = cpu_now();
    let start = Instant::now();
    let slowest = || {
        received
            .iter()
            .map(|r| r.load(Ordering::SeqCst))
            .min()
            .unwrap_or(0)
    };
    let deadline = Duration::from_secs(600);
    for (sent, m) in msgs.iter().enumerate() {
        while sent as u64 >= slowest() + WINDOW {
            if tasks.iter().any(|t| t.is_finished()) {
                return Err(failure(&mut tasks).await);
            }
            if start.elapsed() > deadline {
                bail!("floor: stalled after {sent} messages (messages were lost?)");
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), progress.notified()).await;
        }
        publisher
            .publish_bytes(TOPIC, QoS::AtLeastOnce, false, m.clone())
            .await?;
    }
    let n = msgs.len() as u64;
    while slowest() < n {
        if tasks.iter().any(|t| t.is_finished()) {
            return Err(failure(&mut tasks).await);
        }
        if start.elapsed() > deadline {
            bail!(
                "floor: the subscribers got {:?} of {n} messages",
                received
                    .iter()
                    .map(|r| r.load(Ordering::SeqCst))
                    .collect::<Vec<_>>()
            );
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), progress.notified()).await;
    }
    let wall = start.elapsed();
    let client = Usage {
        cpu_s: cpu_now() - cpu,
        max_rss_kib: 0,
    };
    for (i, b) in bytes_in.iter().enumerate() {
        let got = b.load(Ordering::SeqCst);
        if got != total {
            bail!("floor: subscriber {} got {got} bytes of {total}", i + 1);
        }
    }
    let wire = crate::mqsync::wire_of(port)
        .ok()
        .map(|w| crate::mqsync::wire_between(&Default::default(), &w));
    let _ = publisher.disconnect().await;
    for t in &tasks {
        t.abort();
    }
    Ok(FloorRun {
        wall,
        messages: n,
        bytes: total,
        client,
        wire,
    })
}

/// Why the first ended client task ended; the others are stopped.
async fn failure(tasks: &mut Vec<tokio::task::JoinHandle<Result<()>>>) -> anyhow::Error {
    let Some(at) = tasks.iter().position(|t| t.is_finished()) else {
        return anyhow::anyhow!("floor: no client ended");
    };
    let t = tasks.remove(at);
    for other in tasks.iter() {
        other.abort();
    }
    match t.await {
        Ok(Err(e)) => e.context("floor client"),
        Ok(Ok(())) => anyhow::anyhow!("floor: a client ended"),
        Err(e) => anyhow::anyhow!("floor: a client task failed: {e}"),
    }
}

/// Mosquitto from Debian with TLS and required client certificates, as the tests run
/// it: the broker's certificate of `certs init`, the client's CN as its user name.
pub fn start_mosquitto(certs: &Path, port: u16, dir: &Path) -> Result<crate::proc::Proc> {
    let c = certs.display();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\nlistener {port} 127.0.0.1\ncafile {c}/ca.pem\ncertfile {c}/broker.pem\n\
             keyfile {c}/broker.key\nrequire_certificate true\nuse_identity_as_username true\n\
             allow_anonymous false\n"
        ),
    )?;
    let bin = crate::peers::which("mosquitto").context("mosquitto is not installed")?;
    let mut p = crate::proc::Proc::spawn(
        bin.to_str().context("path")?,
        &["-c", conf.to_str().context("path")?],
        &dir.join("mosquitto.log"),
    )?;
    let mut died = false;
    wait_for(
        "mosquitto",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || {
            died = p.exited();
            died || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        },
    )?;
    if died {
        let log = std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
        bail!("mosquitto exited: {}", log.trim());
    }
    Ok(p)
}
