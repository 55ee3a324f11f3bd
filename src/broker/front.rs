//! The embedded broker's TLS front: accepts client connections, runs each TLS handshake
//! in its own task under a timeout, applies the topic rule of [`super::acl`] to what the
//! client sends, and relays the plain MQTT stream to rumqttd on a loopback port.
//! rumqttd's own TLS listener handshakes inside its single accept loop with no timeout,
//! so one idle connection would stop every other client from connecting. On the way
//! back it drops a node's own data messages (MQTT 3.1.1 has no "no local"), so a
//! writer's upload does not come back down to it. A client's DISCONNECT ends what the
//! front reads from it: rumqttd then closes the connection, and the front closes TLS
//! with close_notify, so a clean goodbye logs nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rumqttc::tokio_rustls::{TlsAcceptor, rustls};
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

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
                .and_then(|cert| crate::transport::tls::common_name(cert))
                .unwrap_or_default();
            let upstream = match TcpStream::connect(backend).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "broker: cannot reach rumqttd");
                    return;
                }
            };
            let _ = upstream.set_nodelay(true);
            let cn = identity.clone();
            let identity = Identity::of(&identity, shared_node_cert);
            relay(tls, upstream, identity, &cn, peer).await;
        });
    }
}

/// `cn` is the common name of the client's certificate, for the log.
async fn relay<C>(
    client: C,
    upstream: TcpStream,
    identity: Identity<'_>,
    cn: &str,
    peer: SocketAddr,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (client_r, mut client_w) = tokio::io::split(client);
    let (up_r, mut up_w) = upstream.into_split();
    let order = AckOrder::default();
    let own = match identity {
        Identity::Node(id) if !id.is_empty() => Some(id),
        _ => None,
    };
    let to_broker = async {
        match forward_checked(client_r, &mut up_w, identity, &order).await {
            // rumqttd closes the connection after a DISCONNECT; closing our side first
            // could make it see an end of stream before it has taken the goodbye.
            Ok(End::Goodbye) => return,
            Ok(End::Eof) => {}
            Ok(End::Dropped) => {
                tracing::info!(%peer, client = %cn, "broker: client went away without MQTT DISCONNECT");
            }
            Err(reason) => {
                tracing::warn!(%peer, client = %cn, %reason, "broker: closing client connection");
            }
        }
        let _ = up_w.shutdown().await;
    };
    let to_client = async {
        if let Err(reason) = forward_to_client(up_r, &mut client_w, own, &order).await {
            tracing::warn!(%peer, client = %cn, %reason, "broker: closing client connection");
        }
        // With TLS: close_notify.
        let _ = client_w.shutdown().await;
    };
    tokio::pin!(to_broker, to_client);
    tokio::select! {
        () = &mut to_broker => { let _ = tokio::time::timeout(CLOSE_GRACE, &mut to_client).await; }
        () = &mut to_client => { let _ = tokio::time::timeout(CLOSE_GRACE, &mut to_broker).await; }
    }
}

/// The QoS 1 messages rumqttd sent a client and still awaits acknowledgements for, in
/// the order it sent them: rumqttd takes acknowledgements only in that order (it drops
/// the connection otherwise), so one the front owes for a dropped message goes out only
/// once the client has acknowledged every message before it.
#[derive(Default)]
struct AckOrder {
    /// Packet id, and whether the front dropped the message (and so owes its ack).
    sent: Mutex<VecDeque<(u16, bool)>>,
    /// Woken when a dropped message is added.
    dropped: Notify,
}

impl AckOrder {
    fn push(&self, pkid: u16, dropped: bool) {
        if let Ok(mut sent) = self.sent.lock() {
            sent.push_back((pkid, dropped));
        }
        if dropped {
            self.dropped.notify_one();
        }
    }

    /// The client acknowledges `pkid`: the acks owed before its own (dropped messages
    /// rumqttd sent earlier, whose turn it is although the front may not have woken yet),
    /// and those owed right after it.
    fn client_acks(&self, pkid: u16) -> (Vec<u16>, Vec<u16>) {
        let Ok(mut sent) = self.sent.lock() else {
            return (vec![], vec![]);
        };
        let before = Self::owed(&mut sent);
        match sent.iter().position(|&(p, d)| p == pkid && !d) {
            Some(0) => {
                sent.pop_front();
            }
            Some(i) => {
                tracing::debug!(
                    pkid,
                    skipped = i,
                    "broker: client acknowledged out of order"
                );
                sent.remove(i);
            }
            None => tracing::debug!(pkid, "broker: client acknowledged an unrecorded message"),
        }
        (before, Self::owed(&mut sent))
    }

    /// The acks owed now: dropped messages with nothing unacknowledged before them.
    fn take_owed(&self) -> Vec<u16> {
        self.sent
            .lock()
            .map(|mut s| Self::owed(&mut s))
            .unwrap_or_default()
    }

    fn owed(sent: &mut VecDeque<(u16, bool)>) -> Vec<u16> {
        let mut out = vec![];
        while let Some(&(pkid, true)) = sent.front() {
            out.push(pkid);
            sent.pop_front();
        }
        out
    }
}

/// The fixed header byte of a PUBACK.
const PUBACK: u8 = 0x40;
/// The fixed header byte of a DISCONNECT.
const DISCONNECT: u8 = 0xe0;

/// How a client's stream ended without an error.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Its DISCONNECT was forwarded: whatever follows is not read.
    Goodbye,
    /// End of stream (with TLS: after close_notify).
    Eof,
    /// The connection closed without close_notify or DISCONNECT (a client killed or
    /// cut off): not the front's error.
    Dropped,
}

/// Writes `bytes` whole, the error as the reason to close.
async fn put<W: AsyncWrite + Unpin>(to: &mut W, bytes: &[u8]) -> Result<(), String> {
    to.write_all(bytes).await.map_err(|e| e.to_string())
}

/// A PUBACK for each of `pkids`.
fn pubacks(pkids: &[u16]) -> Vec<u8> {
    pkids
        .iter()
        .flat_map(|p| {
            let [hi, lo] = p.to_be_bytes();
            [PUBACK, 2, hi, lo]
        })
        .collect()
}

/// Copies the client's packets to rumqttd, each only once [`acl::inspect`] allowed it,
/// and slips the PUBACKs owed for [`forward_to_client`]'s dropped messages in between
/// packets, each right after the client's ack of the message before it.
/// Returns how the client's stream ended, or `Err` with the reason to close it.
async fn forward_checked<R, W>(
    mut from: R,
    to: &mut W,
    identity: Identity<'_>,
    order: &AckOrder,
) -> Result<End, String>
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
                // Around a client's PUBACK go the acks the front owes for dropped
                // messages rumqttd sent before and right after that one.
                if buf[ready] == PUBACK {
                    let Some(&[_, len, hi, lo]) = buf.get(ready..ready + 4) else {
                        break;
                    };
                    put(to, &buf[..ready]).await?;
                    if len != 2 {
                        // Its ack could never be matched, and the owed ones behind it
                        // would wait for ever.
                        return Err("malformed PUBACK".into());
                    }
                    let (before, after) = order.client_acks(u16::from_be_bytes([hi, lo]));
                    let mut out = pubacks(&before);
                    out.extend_from_slice(&buf[ready..ready + 4]);
                    out.extend(pubacks(&after));
                    put(to, &out).await?;
                    buf.advance(ready + 4);
                    ready = 0;
                    continue;
                }
                match acl::inspect(&buf[ready..], identity) {
                    // Nothing may follow a DISCONNECT (MQTT 3.1.1, 3.14.4), so the
                    // front stops reading: the client's TCP close that comes next
                    // often lacks close_notify (rumqttc sends none).
                    Verdict::Forward(len)
                        if buf[ready] == DISCONNECT && buf.len() >= ready + len =>
                    {
                        put(to, &buf[..ready + len]).await?;
                        return Ok(End::Goodbye);
                    }
                    Verdict::Forward(len) => allowed = len,
                    Verdict::NeedMore => break,
                    Verdict::Deny(reason) => {
                        put(to, &buf[..ready]).await?;
                        return Err(reason);
                    }
                }
            }
            let take = allowed.min(buf.len() - ready);
            ready += take;
            allowed -= take;
        }
        if ready > 0 {
            put(to, &buf[..ready]).await?;
            buf.advance(ready);
        }
        if buf.len() > acl::MAX_CONNECT_BYTES + 8 {
            return Err("packet header larger than any valid one".into());
        }
        buf.reserve(RELAY_BUF);
        // Between packets (nothing of an allowed one left to forward) owed acks whose
        // turn has come may go; read_buf is cancel safe.
        tokio::select! {
            read = from.read_buf(&mut buf) => match read {
                Ok(0) => return Ok(End::Eof),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(End::Dropped);
                }
                Err(e) => return Err(e.to_string()),
            },
            () = order.dropped.notified(), if allowed == 0 => {
                put(to, &pubacks(&order.take_owed())).await?;
            }
        }
    }
}

/// Copies rumqttd's packets to the client, except PUBLISHes on the client's own data
/// topic (`…/v1/{own}`): the client sent those itself. Every QoS 1 message goes into
/// `order`, so that rumqttd gets the acknowledgement of a dropped one in its turn.
/// Returns `Ok` at rumqttd's end of stream.
async fn forward_to_client<R, W>(
    mut from: R,
    to: &mut W,
    own: Option<&str>,
    order: &AckOrder,
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
                acl::Echo::Publish { len, pkid, own } => {
                    // Recorded before the client can see it, so its ack finds it.
                    if let Some(pkid) = pkid {
                        order.push(pkid, own);
                    }
                    if !own {
                        pass = len;
                        continue;
                    }
                    if at > sent {
                        put(to, &buf[sent..at]).await?;
                    }
                    sent = at;
                    skip = len;
                }
                acl::Echo::Malformed(reason) => return Err(reason),
            }
        }
        if at > sent {
            put(to, &buf[sent..at]).await?;
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

    async fn run(input: Vec<u8>, identity: &str) -> (Vec<u8>, Result<End, String>) {
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
        let result = forward_checked(server, &mut out, identity, &AckOrder::default()).await;
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
        assert_eq!(result, Ok(End::Eof));
        assert_eq!(out, input);
    }

    #[tokio::test]
    async fn nothing_after_a_disconnect_is_read() {
        let mut input = publish("mqsync/f/v1/n1", b"ok");
        input.extend([0xe0, 0x00]);
        let sent = input.clone();
        input.extend(publish("mqsync/f/v1/n2", b"never read"));
        let (out, result) = run(input, "n1").await;
        assert_eq!(result, Ok(End::Goodbye));
        assert_eq!(out, sent);
    }

    #[tokio::test]
    async fn a_malformed_puback_closes_the_stream() {
        let mut input = publish("mqsync/f/v1/n1", b"ok");
        let good = input.clone();
        input.extend([0x40, 3, 0, 1, 0]);
        let (out, result) = run(input, "n1").await;
        assert!(result.unwrap_err().contains("PUBACK"));
        assert_eq!(out, good);
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
    async fn own_data_messages_are_dropped_on_the_way_back_and_acknowledged_in_order() {
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
            let order = AckOrder::default();
            let mut out = Vec::new();
            let result = forward_to_client(client_side, &mut out, Some("n1"), &order).await;
            let _ = writer.await;
            assert_eq!(result, Ok(()));
            assert!(out == want, "pieces of {piece}: {} bytes out", out.len());
            // 7 is owed at once; 8 only once the client has acknowledged 9.
            assert_eq!(order.take_owed(), [7]);
            assert_eq!(order.take_owed(), Vec::<u16>::new());
            assert_eq!(order.client_acks(9), (vec![], vec![8]));
        }
    }

    #[tokio::test]
    async fn owed_acknowledgements_follow_the_clients_own_in_order() {
        let (mut client, server) = tokio::io::duplex(1024);
        let order = std::sync::Arc::new(AckOrder::default());
        let first = publish("mqsync/f/v1/n1", &[1u8; 2000]);
        let o = order.clone();
        let relay = tokio::spawn(async move {
            let mut out = Vec::new();
            let r = forward_checked(server, &mut out, Identity::Node("n1"), &o).await;
            (out, r)
        });
        // rumqttd sent 1 (to the client) and 2 (dropped): 2 waits for the client's ack of 1.
        order.push(1, false);
        order.push(2, true);
        client.write_all(&first[..1000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(&first[1000..]).await.unwrap();
        client.write_all(&[0x40, 2, 0, 1]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A dropped message with nothing before it is acknowledged while the client is
        // silent.
        order.push(3, true);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The client's ack of 5 reaches the front before its wake-up for the dropped 4:
        // 4's ack still goes first.
        if let Ok(mut sent) = order.sent.lock() {
            sent.extend([(4, true), (5, false)]);
        }
        client.write_all(&[0x40, 2, 0, 5]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(client);
        let (out, r) = relay.await.unwrap();
        assert_eq!(r, Ok(End::Eof));
        let mut want = first.clone();
        want.extend([0x40, 2, 0, 1, 0x40, 2, 0, 2, 0x40, 2, 0, 3]);
        want.extend([0x40, 2, 0, 4, 0x40, 2, 0, 5]);
        assert_eq!(out, want);
    }
}
