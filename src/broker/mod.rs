//! The embedded MQTT-over-TLS broker for clusters without one: rumqttd on a loopback
//! port (MQTT 3.1.1, limits raised for chunk messages) behind mqsync's own mTLS front,
//! which enforces the topic rule of [`acl`]. Checks files and ports up front, runs both on
//! their own threads and returns once they accept connections.

pub mod acl;
pub mod certs;
mod front;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rumqttc::tokio_rustls::rustls::pki_types::pem::PemObject;
use rumqttc::tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};

/// Nodes send chunk messages of at most 4 MiB payload; rumqttd checks its limit against
/// the whole packet (topic, header), so leave headroom above the payload.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 4 * 1024 * 1024 + 64 * 1024;
/// QoS 1 publishes a connection may have unacknowledged. rumqttd's sample uses 100; a
/// node streaming chunks keeps many in flight, and a low limit throttles it to one
/// round trip per 100 messages. 500 keeps the link busy while bounding per-client memory.
pub const DEFAULT_MAX_INFLIGHT: usize = 500;
/// Router log segment size: must hold a whole 4 MiB chunk message. rumqttd's default
/// (100 MiB x 10 per topic) made RSS grow to gigabytes and halved throughput in our
/// measurements; 8 MiB segments were 2.5x faster.
pub const SEGMENT_BYTES: usize = 8 * 1024 * 1024;
/// Segments kept per topic. Few segments bound memory, but a subscriber that falls more
/// than `SEGMENT_BYTES * SEGMENT_COUNT` behind silently skips messages (rumqttd only
/// logs "Read cursor start jumped"); the sync protocol's digests repair that, and 4
/// segments (32 MiB) make it rare.
pub const SEGMENT_COUNT: usize = 4;
/// How long [`start`] waits for the listener to accept TCP connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot read broker config {path}: {source}")]
    ReadConfig { path: PathBuf, source: io::Error },
    #[error("broker config {path} is not a valid rumqttd config: {source}")]
    ParseConfig {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("broker config: {0}")]
    InvalidConfig(String),
    #[error("{what} {path}: {detail}")]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("cannot listen on {addr}: address already in use (another broker running?)")]
    AddressInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot start the broker thread: {0}")]
    Thread(io::Error),
    #[error("broker stopped while starting: {0} (see the rumqttd log lines above)")]
    Stopped(String),
    #[error("broker did not accept connections on {addr} within {waited:?}")]
    NotListening { addr: SocketAddr, waited: Duration },
}

/// Settings of the embedded broker: one MQTT 3.1.1 listener with mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    pub listen: SocketAddr,
    /// CA that client certificates must chain to.
    pub ca: PathBuf,
    /// Broker certificate and key (`certs init` writes `broker.pem` / `broker.key`).
    pub cert: PathBuf,
    pub key: PathBuf,
    pub max_packet_bytes: usize,
    pub max_inflight: usize,
    /// Nodes share one client certificate (a Swarm global service): let any client
    /// publish as any node id instead of only as its certificate's common name.
    pub shared_node_cert: bool,
}

impl BrokerSettings {
    /// Settings with the default limits for the certificates of `certs init` in `dir`.
    pub fn with_certs_dir(listen: SocketAddr, dir: &Path) -> Self {
        Self {
            listen,
            ca: dir.join(crate::broker::certs::CA_CERT),
            cert: dir.join(crate::broker::certs::BROKER_CERT),
            key: dir.join(crate::broker::certs::BROKER_KEY),
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            shared_node_cert: false,
        }
    }
}

/// A running broker. rumqttd has no shutdown API: the broker runs until the process
/// exits, and dropping the handle does not stop it.
#[derive(Debug)]
pub struct BrokerHandle {
    listen: Vec<SocketAddr>,
    thread: JoinHandle<()>,
    _fronts: Vec<JoinHandle<()>>,
}

impl BrokerHandle {
    /// The MQTT listeners' addresses (as configured; `0.0.0.0` stays unspecified).
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// False once the broker thread has ended (every listener failed).
    pub fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }
}

/// Starts the embedded broker and returns once its listener accepts TCP connections.
///
/// Checks the TLS files and the port first, because rumqttd itself only logs such
/// problems from its threads (or fails every connection) instead of returning an error.
/// Port 0 is refused: rumqttd does not report the port it would pick.
pub fn start(settings: &BrokerSettings) -> Result<BrokerHandle, BrokerError> {
    start_config(config_for(settings), settings.shared_node_cert)
}

/// Loads a rumqttd-style TOML config (see `broker/rumqttd.toml`) and starts it like
/// [`start`]. Every listener must use TLS with a CA for client certificates.
pub fn start_from_file(path: &Path, shared_node_cert: bool) -> Result<BrokerHandle, BrokerError> {
    start_config(load_config(path)?, shared_node_cert)
}

/// Reads and parses a rumqttd TOML config without starting anything.
pub fn load_config(path: &Path) -> Result<Config, BrokerError> {
    let text = std::fs::read_to_string(path).map_err(|source| BrokerError::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| BrokerError::ParseConfig {
        path: path.to_path_buf(),
        source,
    })
}

/// The rumqttd config for `settings`.
pub fn config_for(settings: &BrokerSettings) -> Config {
    let server = ServerSettings {
        name: "mqsync-v4-tls".to_string(),
        listen: settings.listen,
        tls: Some(TlsConfig::Rustls {
            capath: Some(settings.ca.display().to_string()),
            certpath: settings.cert.display().to_string(),
            keypath: settings.key.display().to_string(),
        }),
        // rumqttd sleeps this long after every accepted connection.
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            // Time a new connection gets to send CONNECT (u16 in rumqttd).
            connection_timeout_ms: 10_000,
            max_payload_size: settings.max_packet_bytes,
            max_inflight_count: settings.max_inflight,
            auth: None,
            external_auth: None,
            // Nodes subscribe to new folders' topics while connected.
            dynamic_filters: true,
        },
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1000,
            // Packets the router hands one connection per iteration (rumqttd's sample).
            max_outgoing_packet_count: 200,
            max_segment_size: SEGMENT_BYTES.max(settings.max_packet_bytes),
            max_segment_count: SEGMENT_COUNT,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Config::default()
    }
}

fn start_config(mut config: Config, shared_node_cert: bool) -> Result<BrokerHandle, BrokerError> {
    let listen = check_config(&config)?;
    // Every TLS listener becomes a front on its public address relaying to a plain
    // rumqttd listener on a loopback port (see `front`). Binding the public sockets here
    // also reports "address in use" before anything starts.
    let mut fronts = Vec::new();
    for server in config.v4.iter_mut().flat_map(|m| m.values_mut()) {
        let Some(TlsConfig::Rustls {
            capath: Some(ca),
            certpath,
            keypath,
        }) = server.tls.take()
        else {
            return Err(BrokerError::InvalidConfig(format!(
                "listener {:?}: TLS with a CA is required",
                server.name
            )));
        };
        let tls = crate::transport::tls::server_config(
            Path::new(&ca),
            Path::new(&certpath),
            Path::new(&keypath),
        )
        .map_err(|e| BrokerError::InvalidConfig(format!("listener {:?}: {e}", server.name)))?;
        let public = bind(server.listen)?;
        let backend = loopback_port()?;
        server.listen = backend;
        fronts.push((public, backend, Arc::new(tls)));
    }

    let (done_tx, done_rx) = mpsc::channel::<String>();
    let thread = thread::Builder::new()
        .name("mqsync-broker".to_string())
        .spawn(move || {
            // Broker::new spawns the router thread; start() blocks while any listener runs.
            let mut broker = rumqttd::Broker::new(config);
            let outcome = match broker.start() {
                Ok(()) => "every listener stopped".to_string(),
                Err(e) => e.to_string(),
            };
            tracing::error!(reason = %outcome, "embedded broker stopped");
            let _ = done_tx.send(outcome);
        })
        .map_err(BrokerError::Thread)?;

    let deadline = Instant::now() + START_TIMEOUT;
    let mut front_threads = Vec::new();
    for (public, backend, tls) in fronts {
        wait_listening(backend, deadline, &done_rx)?;
        front_threads.push(
            front::spawn(public, backend, tls, shared_node_cert).map_err(BrokerError::Thread)?,
        );
    }
    let addrs: Vec<String> = listen.iter().map(ToString::to_string).collect();
    tracing::info!(listen = %addrs.join(", "), "embedded broker listening");
    Ok(BrokerHandle {
        listen,
        thread,
        _fronts: front_threads,
    })
}

fn bind(addr: SocketAddr) -> Result<TcpListener, BrokerError> {
    TcpListener::bind(addr).map_err(|source| {
        if source.kind() == io::ErrorKind::AddrInUse {
            BrokerError::AddressInUse { addr }
        } else {
            BrokerError::Bind { addr, source }
        }
    })
}

/// A free port on 127.0.0.1 for rumqttd's plain listener. The probe socket is closed
/// before rumqttd binds; should another process take the port in between, rumqttd fails
/// and [`wait_listening`] reports it.
fn loopback_port() -> Result<SocketAddr, BrokerError> {
    let probe = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let listener = bind(probe)?;
    listener.local_addr().map_err(|source| BrokerError::Bind {
        addr: probe,
        source,
    })
}

/// Validates what rumqttd would otherwise only log (or unwrap) from its own threads, and
/// returns the MQTT listen addresses.
fn check_config(config: &Config) -> Result<Vec<SocketAddr>, BrokerError> {
    let servers: Vec<&ServerSettings> = config.v4.iter().flat_map(|m| m.values()).collect();
    if servers.is_empty() {
        return Err(BrokerError::InvalidConfig(
            "no listener: add a [v4.1] section (MQTT 3.1.1 with TLS)".to_string(),
        ));
    }
    if config.v5.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(BrokerError::InvalidConfig(
            "[v5] listeners are not supported: mqsync speaks MQTT 3.1.1 ([v4.N])".to_string(),
        ));
    }
    if config.ws.is_some() {
        return Err(BrokerError::InvalidConfig(
            "[ws] listeners are not supported by mqsync's broker".to_string(),
        ));
    }
    let mut addrs = Vec::with_capacity(servers.len());
    for server in servers {
        if server.listen.port() == 0 {
            return Err(BrokerError::InvalidConfig(format!(
                "listener {:?}: port 0 is not supported (rumqttd does not report the port it picks)",
                server.name
            )));
        }
        let Some(tls) = &server.tls else {
            return Err(BrokerError::InvalidConfig(format!(
                "listener {:?} has no [tls] section: mqsync's broker only serves MQTT over TLS",
                server.name
            )));
        };
        let TlsConfig::Rustls {
            capath,
            certpath,
            keypath,
        } = tls
        else {
            return Err(BrokerError::InvalidConfig(format!(
                "listener {:?}: only rustls TLS (capath/certpath/keypath) is supported",
                server.name
            )));
        };
        let Some(capath) = capath else {
            return Err(BrokerError::InvalidConfig(format!(
                "listener {:?}: capath is required (clients authenticate with certificates)",
                server.name
            )));
        };
        check_certs("CA file", Path::new(capath))?;
        check_certs("broker certificate", Path::new(certpath))?;
        check_key(Path::new(keypath))?;
        if server.connections.max_payload_size < DEFAULT_MAX_PACKET_BYTES {
            tracing::warn!(
                listener = %server.name,
                max_payload_size = server.connections.max_payload_size,
                "max_payload_size is below what mqsync's chunk messages need"
            );
        }
        addrs.push(server.listen);
    }
    Ok(addrs)
}

fn read_tls_file(what: &'static str, path: &Path) -> Result<Vec<u8>, BrokerError> {
    std::fs::read(path).map_err(|e| BrokerError::TlsFile {
        what,
        path: path.to_path_buf(),
        detail: format!("cannot read: {e}"),
    })
}

fn check_certs(what: &'static str, path: &Path) -> Result<(), BrokerError> {
    let bytes = read_tls_file(what, path)?;
    let bad = |detail: String| BrokerError::TlsFile {
        what,
        path: path.to_path_buf(),
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".to_string()));
    }
    Ok(())
}

fn check_key(path: &Path) -> Result<(), BrokerError> {
    let bytes = read_tls_file("broker key", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| BrokerError::TlsFile {
        what: "broker key",
        path: path.to_path_buf(),
        detail: format!("no usable private key: {e}"),
    })?;
    Ok(())
}

/// Polls rumqttd's loopback listener with TCP connects until it accepts.
fn wait_listening(
    addr: SocketAddr,
    deadline: Instant,
    done: &mpsc::Receiver<String>,
) -> Result<(), BrokerError> {
    let probe = probe_addr(addr);
    loop {
        if let Ok(reason) = done.try_recv() {
            return Err(BrokerError::Stopped(reason));
        }
        let up = match listening_in_proc(probe.port()).filter(|_| probe.is_ipv4()) {
            Some(up) => up,
            None => TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok(),
        };
        if up {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BrokerError::NotListening {
                addr,
                waited: START_TIMEOUT,
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a socket listens on `port` on IPv4 loopback or any address, from
/// `/proc/net/tcp`; `None` where that file cannot be read. Reading it instead of
/// connecting spares rumqttd a client that leaves without CONNECT, which it logs as an
/// error.
fn listening_in_proc(port: u16) -> Option<bool> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let wanted = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    Some(table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1).unwrap_or_default();
        let state = fields.nth(1).unwrap_or_default();
        state == "0A" && wanted.iter().any(|w| w == local)
    }))
}

/// A wildcard listen address is probed through loopback.
fn probe_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("broker/rumqttd.toml")
    }

    #[test]
    fn example_config_parses_and_is_tls_only() {
        let config = load_config(&example_path()).expect("broker/rumqttd.toml must parse");
        let servers = config.v4.as_ref().expect("a v4 listener");
        assert_eq!(servers.len(), 1);
        let server = servers.values().next().expect("listener");
        assert_eq!(server.listen.port(), 8883);
        assert!(server.connections.max_payload_size >= DEFAULT_MAX_PACKET_BYTES);
        assert!(config.router.max_segment_size >= server.connections.max_payload_size);
        assert!(matches!(
            server.tls,
            Some(TlsConfig::Rustls {
                capath: Some(_),
                ..
            })
        ));
        assert!(config.v5.is_none() && config.ws.is_none());
    }

    #[test]
    fn generated_config_fits_a_chunk_message() {
        let settings =
            BrokerSettings::with_certs_dir("127.0.0.1:8883".parse().expect("addr"), Path::new("c"));
        let config = config_for(&settings);
        assert!(config.router.max_segment_size >= DEFAULT_MAX_PACKET_BYTES);
    }

    #[test]
    fn missing_tls_files_are_reported_before_starting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings =
            BrokerSettings::with_certs_dir("127.0.0.1:1".parse().expect("addr"), dir.path());
        let err = start(&settings).expect_err("no files");
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }

    #[test]
    fn port_zero_and_plaintext_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings =
            BrokerSettings::with_certs_dir("127.0.0.1:0".parse().expect("addr"), dir.path());
        assert!(matches!(
            start(&settings),
            Err(BrokerError::InvalidConfig(_))
        ));
        let mut config = config_for(&BrokerSettings::with_certs_dir(
            "127.0.0.1:1883".parse().expect("addr"),
            dir.path(),
        ));
        if let Some(servers) = config.v4.as_mut() {
            for server in servers.values_mut() {
                server.tls = None;
            }
        }
        let err = check_config(&config).expect_err("plaintext");
        assert!(err.to_string().contains("TLS"), "{err}");
    }

    #[test]
    fn address_in_use_is_clear() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        assert!(matches!(bind(addr), Err(BrokerError::AddressInUse { .. })));
    }
}
