//! The embedded broker's TLS front: accepts client connections, runs each TLS handshake
//! in its own task under a timeout, applies the topic rule of [`super::acl`] to what the
//! client sends, and relays the plain MQTT stream to rumqttd on a loopback port.
//! rumqttd's own TLS listener handshakes inside its single accept loop with no timeout,
//! so one idle connection would stop every other client from connecting. On the way
//! back it drops a node's own data messages (MQTT 3.1.1 has no "no local"), so a
//! writer's upload does not come back down to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rumqttc::tokio_rustls::{TlsAcceptor, rustls};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

use super::acl::{self, Identity, Verdict};

/// Time a new connection gets to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections allowed to be handshaking at once; more wait in the kernel's backlog
/// until a slot frees (at the latest after [`HANDSHAKE_TIMEOUT`]).
const MAX_HANDSHAKES: usize = 512;
/// Once one direction of a relayed connection has ended, how long the other may finish.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
const RELAY_BUF: usize = 64 * 1024;

/// Starts the front on its own thread and runtime. `listener` is already bound (so the
/// caller reports "address in use" itself); `backend` is rumqttd's plain listener.
pub fn spawn(
    listener: std::net::TcpListener,
    backend: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    shared_node_cert: bool,
) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("mqsync-broker-tls")
        .enable_all()
        .build()?;
    thread::Builder::new()
        .name("mqsync-broker-front".to_string())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => {
                        serve(listener, backend, TlsAcceptor::from(tls), shared_node_cert).await
                    }
                    Err(e) => tracing::error!(error = %e, "broker TLS front cannot listen"),
                }
            })
        })
}

async fn serve(
    listener: TcpListener,
    backend: SocketAddr,
    acceptor: TlsAcceptor,
    shared_node_cert: bool,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "broker accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            drop(permit);
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "broker: TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "broker: TLS handshake timed out");
                    return;
                }
            };
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| crate::tls::common_name(cert))
                .unwrap_or_default();
            let upstream = match TcpStream::connect(backend).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "broker: cannot reach rumqttd");
                    return;
                }
            };
            let _ = upstream.set_nodelay(true);
            let identity = if shared_node_cert {
                Identity::AnyNode
            } else {
                Identity::Node(&identity)
            };
            relay(tls, upstream, identity, peer).await;
        });
    }
}

async fn relay<C>(client: C, upstream: TcpStream, identity: Identity<'_>, peer: SocketAddr)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (client_r, mut client_w) = tokio::io::split(client);
    let (up_r, mut up_w) = upstream.into_split();
    // Acknowledgements owed to rumqttd for the client's own messages dropped on the way
    // back. Unbounded: rumqttd's in-flight window bounds them, and either direction
    // waiting on the other could deadlock.
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let own = match identity {
        Identity::Node(id) if !id.is_empty() => Some(id),
        _ => None,
    };
    let to_broker = async {
        if let Err(reason) = forward_checked(client_r, &mut up_w, identity, acks_rx).await {
            tracing::warn!(%peer, ?identity, %reason, "broker: closing client connection");
        }
        let _ = up_w.shutdown().await;
    };
    let to_client = async {
        if let Err(reason) = forward_to_client(up_r, &mut client_w, own, acks_tx).await {
            tracing::warn!(%peer, ?identity, %reason, "broker: closing client connection");
        }
        let _ = client_w.shutdown().await;
    };
    tokio::pin!(to_broker, to_client);
    tokio::select! {
        () = &mut to_broker => { let _ = tokio::time::timeout(CLOSE_GRACE, &mut to_client).await; }
        () = &mut to_client => { let _ = tokio::time::timeout(CLOSE_GRACE, &mut to_broker).await; }
    }
}

/// Copies the client's packets to rumqttd, each only once [`acl::inspect`] allowed it,
/// and slips the PUBACKs of [`forward_to_client`]'s dropped messages in between packets.
/// Returns `Ok` at the client's end of stream, `Err` with the reason to close otherwise.
async fn forward_checked<R, W>(
    mut from: R,
    to: &mut W,
    identity: Identity<'_>,
    mut acks: mpsc::UnboundedReceiver<u16>,
) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(RELAY_BUF);
    // Bytes of the current, already allowed packet that are still to be forwarded.
    let mut allowed = 0usize;
    loop {
        let mut ready = 0usize;
        while ready < buf.len() {
            if allowed == 0 {
                match acl::inspect(&buf[ready..], identity) {
                    Verdict::Forward(len) => allowed = len,
                    Verdict::NeedMore => break,
                    Verdict::Deny(reason) => {
                        to.write_all(&buf[..ready])
                            .await
                            .map_err(|e| e.to_string())?;
                        return Err(reason);
                    }
                }
            }
            let take = allowed.min(buf.len() - ready);
            ready += take;
            allowed -= take;
        }
        if ready > 0 {
            to.write_all(&buf[..ready])
                .await
                .map_err(|e| e.to_string())?;
            buf.advance(ready);
        }
        if buf.len() > acl::MAX_CONNECT_BYTES + 8 {
            return Err("packet header larger than any valid one".into());
        }
        buf.reserve(RELAY_BUF);
        // Between packets (nothing of an allowed one left to forward) an owed
        // acknowledgement may go first; read_buf is cancel safe.
        tokio::select! {
            read = from.read_buf(&mut buf) => match read {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            },
            Some(pkid) = acks.recv(), if allowed == 0 => {
                let [hi, lo] = pkid.to_be_bytes();
                to.write_all(&[PUBACK, 2, hi, lo]).await.map_err(|e| e.to_string())?;
            }
        }
    }
}

/// The fixed header byte of a PUBACK.
const PUBACK: u8 = 0x40;

/// Copies rumqttd's packets to the client, except PUBLISHes on the client's own data
/// topic (`…/v1/{own}`): the client sent those itself. A dropped QoS 1 message's
/// packet id goes to `acks`, so rumqttd gets the acknowledgement the client would
/// have sent. Returns `Ok` at rumqttd's end of stream.
async fn forward_to_client<R, W>(
    mut from: R,
    to: &mut W,
    own: Option<&str>,
    acks: mpsc::UnboundedSender<u16>,
) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(RELAY_BUF);
    // Bytes of the current packet still to forward, or still to drop.
    let mut pass = 0usize;
    let mut skip = 0usize;
    loop {
        // buf[..sent] is already written or dropped; buf[sent..at] is ready to write.
        let mut sent = 0usize;
        let mut at = 0usize;
        while at < buf.len() {
            if pass > 0 {
                let take = pass.min(buf.len() - at);
                at += take;
                pass -= take;
                continue;
            }
            if skip > 0 {
                let take = skip.min(buf.len() - at);
                at += take;
                skip -= take;
                sent = at;
                continue;
            }
            match acl::own_echo(&buf[at..], own) {
                acl::Echo::NeedMore => break,
                acl::Echo::Other(len) => pass = len,
                acl::Echo::Own { len, pkid } => {
                    if at > sent {
                        to.write_all(&buf[sent..at])
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    sent = at;
                    skip = len;
                    if let Some(pkid) = pkid {
                        acks.send(pkid)
                            .map_err(|_| "relay to broker ended".to_string())?;
                    }
                }
                acl::Echo::Malformed(reason) => return Err(reason),
            }
        }
        if at > sent {
            to.write_all(&buf[sent..at])
                .await
                .map_err(|e| e.to_string())?;
        }
        buf.advance(at);
        if buf.len() > acl::MAX_CONNECT_BYTES + 8 {
            return Err("packet header from rumqttd larger than any valid one".into());
        }
        buf.reserve(RELAY_BUF);
        match from.read_buf(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(input: Vec<u8>, identity: &str) -> (Vec<u8>, Result<(), String>) {
        let identity = Identity::Node(identity);
        let (mut client, server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            // Small pieces: the inspector must cope with packets split anywhere.
            for piece in input.chunks(7) {
                if client.write_all(piece).await.is_err() {
                    break;
                }
            }
        });
        let mut out = Vec::new();
        let (_acks_tx, acks) = mpsc::unbounded_channel();
        let result = forward_checked(server, &mut out, identity, acks).await;
        let _ = writer.await;
        (out, result)
    }

    fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
        let remaining = 2 + topic.len() + payload.len();
        assert!(remaining < 128 * 128);
        let mut out = vec![
            0x30,
            (remaining % 128) as u8 | 0x80,
            (remaining / 128) as u8,
        ];
        out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test]
    async fn allowed_packets_pass_unchanged_in_any_split() {
        let mut input = publish("mqsync/f/v1/n1", &[1u8; 5000]);
        input.extend([0xc0, 0x00]);
        input.extend(publish("mqsync/f/cmd", b"{}"));
        let (out, result) = run(input.clone(), "n1").await;
        assert_eq!(result, Ok(()));
        assert_eq!(out, input);
    }

    #[tokio::test]
    async fn a_forbidden_publish_closes_the_stream_before_it_is_forwarded() {
        let good = publish("mqsync/f/v1/n1", b"ok");
        let mut input = good.clone();
        input.extend(publish("mqsync/f/v1/n2", b"forged"));
        input.extend(publish("mqsync/f/v1/n1", b"after"));
        let (out, result) = run(input, "n1").await;
        assert!(result.unwrap_err().contains("n2"));
        assert_eq!(out, good);
    }

    fn publish_qos1(topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = publish(topic, &[]);
        let mut body = p.split_off(3);
        body.extend_from_slice(&pkid.to_be_bytes());
        body.extend_from_slice(payload);
        let remaining = body.len();
        let mut out = vec![
            0x32,
            (remaining % 128) as u8 | 0x80,
            (remaining / 128) as u8,
        ];
        out.extend(body);
        out
    }

    #[tokio::test]
    async fn own_data_messages_are_dropped_on_the_way_back_and_acknowledged() {
        let others = [
            publish("mqsync/f/v1/n2", &[2u8; 3000]),
            vec![0x90, 0x03, 0, 1, 1],
            publish_qos1("mqsync/f/status/n1", 9, b"status"),
            vec![0xd0, 0x00],
        ];
        let mut input = Vec::new();
        input.extend(publish_qos1("mqsync/f/v1/n1", 7, &[1u8; 5000]));
        input.extend(&others[0]);
        input.extend(publish("mqsync/f/v1/n1", &[1u8; 10]));
        input.extend(&others[1]);
        input.extend(&others[2]);
        input.extend(publish_qos1("mqsync/f/v1/n1", 8, b"again"));
        input.extend(&others[3]);
        let want: Vec<u8> = others.concat();
        for piece in [1, 7, 4096, input.len()] {
            let (mut broker, client_side) = tokio::io::duplex(1024);
            let input = input.clone();
            let writer = tokio::spawn(async move {
                for p in input.chunks(piece) {
                    if broker.write_all(p).await.is_err() {
                        break;
                    }
                }
            });
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut out = Vec::new();
            let result = forward_to_client(client_side, &mut out, Some("n1"), tx).await;
            let _ = writer.await;
            assert_eq!(result, Ok(()));
            assert!(out == want, "pieces of {piece}: {} bytes out", out.len());
            let mut acked = vec![];
            while let Ok(id) = rx.try_recv() {
                acked.push(id);
            }
            assert_eq!(acked, [7, 8]);
        }
    }

    #[tokio::test]
    async fn owed_acknowledgements_go_to_the_broker_between_packets() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (tx, acks) = mpsc::unbounded_channel();
        let first = publish("mqsync/f/v1/n1", &[1u8; 2000]);
        let relay = tokio::spawn(async move {
            let mut out = Vec::new();
            let r = forward_checked(server, &mut out, Identity::Node("n1"), acks).await;
            (out, r)
        });
        // Half a packet, then an acknowledgement owed: it must wait for the packet's end.
        client.write_all(&first[..1000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(0x0102).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(&first[1000..]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Between packets it goes out while the client is silent.
        tx.send(0x0304).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(client);
        let (out, r) = relay.await.unwrap();
        assert_eq!(r, Ok(()));
        let mut want = first.clone();
        want.extend([0x40, 2, 1, 2, 0x40, 2, 3, 4]);
        assert_eq!(out, want);
    }
}
