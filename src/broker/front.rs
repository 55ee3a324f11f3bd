//! The embedded broker's TLS front: accepts client connections, runs each TLS handshake
//! in its own task under a timeout, applies the topic rule of [`super::acl`] to what the
//! client sends, and relays the plain MQTT stream to rumqttd on a loopback port.
//! rumqttd's own TLS listener handshakes inside its single accept loop with no timeout,
//! so one idle connection would stop every other client from connecting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rumqttc::tokio_rustls::{TlsAcceptor, rustls};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

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
    let to_broker = async {
        if let Err(reason) = forward_checked(client_r, &mut up_w, identity).await {
            tracing::warn!(%peer, ?identity, %reason, "broker: closing client connection");
        }
        let _ = up_w.shutdown().await;
    };
    let to_client = async {
        let mut up_r = BufReader::with_capacity(RELAY_BUF, up_r);
        let _ = tokio::io::copy_buf(&mut up_r, &mut client_w).await;
        let _ = client_w.shutdown().await;
    };
    tokio::pin!(to_broker, to_client);
    tokio::select! {
        () = &mut to_broker => { let _ = tokio::time::timeout(CLOSE_GRACE, &mut to_client).await; }
        () = &mut to_client => { let _ = tokio::time::timeout(CLOSE_GRACE, &mut to_broker).await; }
    }
}

/// Copies the client's packets to rumqttd, each only once [`acl::inspect`] allowed it.
/// Returns `Ok` at the client's end of stream, `Err` with the reason to close otherwise.
async fn forward_checked<R, W>(
    mut from: R,
    to: &mut W,
    identity: Identity<'_>,
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
        let result = forward_checked(server, &mut out, identity).await;
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
}
