//! End to end over real TLS: certificates from `certs::init`, the embedded rumqttd broker
//! on a free port, rumqttc clients with `tls::client_config`. Every wait has a deadline.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use mqsync::broker::certs;
use mqsync::broker::{self, BrokerSettings, DEFAULT_MAX_PACKET_BYTES};
use mqsync::transport::tls;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, Transport};
use tokio::time::{Instant, timeout_at};

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr")
}

fn hosts() -> Vec<String> {
    vec!["localhost".to_string(), "127.0.0.1".to_string()]
}

/// Certificates for nodes `a` and `b` in `dir`, and a broker using them.
fn start_broker(dir: &Path) -> (broker::BrokerHandle, SocketAddr) {
    certs::init(dir, &["a".to_string(), "b".to_string()], &hosts()).expect("certs init");
    let addr = free_addr();
    let handle = broker::start(&BrokerSettings::with_certs_dir(addr, dir)).expect("start broker");
    assert!(handle.is_running());
    (handle, addr)
}

fn client(
    id: &str,
    addr: SocketAddr,
    ca: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> (AsyncClient, EventLoop) {
    let config = tls::client_config(ca, cert, key).expect("client tls config");
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_transport(Transport::tls_with_config(config.into()));
    options.set_max_packet_size(DEFAULT_MAX_PACKET_BYTES, DEFAULT_MAX_PACKET_BYTES);
    options.set_keep_alive(Duration::from_secs(5));
    AsyncClient::new(options, 10)
}

/// Polls until the connection fails and returns `describe_fatal` of the first error.
async fn first_error_description(mut eventloop: EventLoop) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match timeout_at(deadline, eventloop.poll()).await {
            Err(_) => panic!("no connection error within 15 s"),
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                panic!("connection unexpectedly accepted: {ack:?}")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let described = tls::describe_fatal(&e);
                eprintln!("connection error: {e:?} -> {described:?}");
                return described;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_mib_qos1_roundtrip_over_mtls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_broker, addr) = start_broker(dir.path());
    // A node added after the broker started, signed by the reused CA.
    let paths = certs::ensure_node_certs(dir.path(), "c", &hosts()).expect("add node c");
    let (client, mut eventloop) = client(
        "c",
        addr,
        &paths.ca,
        Some(&paths.node_cert),
        Some(&paths.node_key),
    );

    let payload: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    // Its own status topic: the broker does not send a node its own data topic back.
    client
        .subscribe("mqsync/test/status/c", QoS::AtLeastOnce)
        .await
        .expect("queue subscribe");

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut published = false;
    loop {
        let event = timeout_at(deadline, eventloop.poll())
            .await
            .expect("3 MiB message not received within 30 s")
            .expect("connection error");
        match event {
            // Publish only once the subscription is in place, or the broker drops it.
            Event::Incoming(Packet::SubAck(_)) if !published => {
                published = true;
                let client = client.clone();
                let payload = payload.clone();
                // Queued from another task: awaiting from the polling task can deadlock.
                tokio::spawn(async move {
                    client
                        .publish("mqsync/test/status/c", QoS::AtLeastOnce, false, payload)
                        .await
                        .expect("queue publish");
                });
            }
            Event::Incoming(Packet::Publish(p)) => {
                assert_eq!(p.topic, "mqsync/test/status/c");
                assert_eq!(p.payload.len(), payload.len());
                assert!(p.payload[..] == payload[..], "payload corrupted");
                break;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_is_refused_and_recognised() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_broker, addr) = start_broker(dir.path());
    let (_client, eventloop) = client("nocert", addr, &dir.path().join("ca.pem"), None, None);
    let msg = first_error_description(eventloop)
        .await
        .expect("a refused handshake must be recognised as fatal");
    assert!(msg.contains("CertificateRequired"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_trusting_another_ca_is_refused_and_recognised() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = tempfile::tempdir().expect("tempdir");
    let (_broker, addr) = start_broker(dir.path());
    certs::init(other.path(), &["a".to_string()], &hosts()).expect("other CA");

    // Our client certificate is fine, but we do not trust the broker's CA.
    let (_client, eventloop) = client(
        "a",
        addr,
        &other.path().join("ca.pem"),
        Some(&dir.path().join("a.pem")),
        Some(&dir.path().join("a.key")),
    );
    let msg = first_error_description(eventloop)
        .await
        .expect("an untrusted broker must be recognised as fatal");
    assert!(msg.contains("UnknownIssuer"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_another_ca_is_refused_and_recognised() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = tempfile::tempdir().expect("tempdir");
    let (_broker, addr) = start_broker(dir.path());
    certs::init(other.path(), &["a".to_string()], &hosts()).expect("other CA");

    let (_client, eventloop) = client(
        "a",
        addr,
        &dir.path().join("ca.pem"),
        Some(&other.path().join("a.pem")),
        Some(&other.path().join("a.key")),
    );
    let msg = first_error_description(eventloop)
        .await
        .expect("a refused client certificate must be recognised as fatal");
    assert!(
        msg.contains("broker refused our client certificate"),
        "{msg}"
    );
}

#[test]
fn second_broker_on_same_port_gets_address_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_broker, addr) = start_broker(dir.path());
    let err = broker::start(&BrokerSettings::with_certs_dir(addr, dir.path()))
        .expect_err("port is taken");
    assert!(
        matches!(err, broker::BrokerError::AddressInUse { .. }),
        "{err}"
    );
}
