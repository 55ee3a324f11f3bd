//! `mqsync run` as a library call: turns a validated `Config` into running folders,
//! starting the embedded broker (with certificates made on first start in
//! `state_dir/certs`) when no broker URL is configured.

use crate::broker::certs;
use crate::broker::{self, BrokerHandle, BrokerSettings};
use crate::config::Config;
use crate::node::{self, NodeSettings};
use crate::protocol::wire::Keys;
use crate::transport::ConnectSettings;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Certs(#[from] certs::CertError),
    #[error("embedded broker: {0}")]
    Broker(#[from] broker::BrokerError),
    // Transparent: the TLS error names the file already, and a "TLS:" wrapper with
    // the same text as its cause printed it twice.
    #[error(transparent)]
    Tls(#[from] crate::transport::tls::TlsError),
    // The I/O error is in the message, not a `source`: shown once, not again as cause.
    #[error("security.group_key_file {path}: cannot read: {error}")]
    GroupKey {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("security.group_key_file {0} is empty")]
    EmptyGroupKey(PathBuf),
    #[error(
        "security.group_key_file is required with an external broker: every node of a folder needs the same key (mqsync certs init writes one)"
    )]
    MissingGroupKey,
    #[error(
        "broker.ca_file is required with mqtts:// (the CA that signed the broker's certificate)"
    )]
    MissingCa,
    #[error("cannot create state_dir {path}: {error}")]
    StateDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Node(#[from] node::NodeError),
    #[error(transparent)]
    Metrics(#[from] crate::ops::metrics::MetricsError),
    #[error(transparent)]
    Volumes(#[from] crate::volumes::VolumeServiceError),
    #[error("broker.cert_file {path}: {source}")]
    CertFile {
        path: PathBuf,
        #[source]
        source: certs::CertError,
    },
    #[error(
        "node_id {node_id:?} is not the name in broker.cert_file {} (its common name is {cn}): \
         the broker lets a node publish only under the name its certificate gives, so this \
         node would connect and then be disconnected. Set node_id to the certificate's name, \
         point broker.cert_file and broker.key_file at the certificate of {node_id:?} \
         (mqsync certs init --nodes {node_id}), or, if every node shares one certificate and \
         the broker allows it (mqsync broker --shared-node-cert), set \
         broker.shared_node_cert = true (MQSYNC_BROKER_SHARED_NODE_CERT=true)",
        path.display()
    )]
    CertNameMismatch {
        node_id: String,
        path: PathBuf,
        cn: String,
    },
}

/// Largest MQTT packet the nodes send or accept: a chunk message plus headroom.
pub const MAX_PACKET: usize = broker::DEFAULT_MAX_PACKET_BYTES;

pub fn read_group_key(path: &Path) -> Result<Keys, DaemonError> {
    let text = std::fs::read(path).map_err(|error| DaemonError::GroupKey {
        path: path.to_path_buf(),
        error,
    })?;
    if text.trim_ascii().is_empty() {
        return Err(DaemonError::EmptyGroupKey(path.to_path_buf()));
    }
    // Several lines: rotation. The first key signs, all verify.
    let keys: Vec<[u8; 32]> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .map(Keys::derive)
        .collect();
    Keys::new(keys).ok_or_else(|| DaemonError::EmptyGroupKey(path.to_path_buf()))
}

/// How to reach the broker and sign messages, without starting anything: the
/// connection settings of [`connect_settings`] and the group key.
pub fn client(cfg: &Config) -> Result<(ConnectSettings, Keys), DaemonError> {
    let connect = connect_settings(cfg)?;
    Ok((connect, read_group_key(&group_key_path(cfg)?)?))
}

/// The group key file: `security.group_key_file`, or with the embedded broker the one
/// `mqsync run` makes in `state_dir/certs`.
fn group_key_path(cfg: &Config) -> Result<PathBuf, DaemonError> {
    match (&cfg.security.group_key_file, &cfg.broker.url) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(_)) => Err(DaemonError::MissingGroupKey),
        (None, None) => Ok(cfg.state_dir.join("certs").join(certs::GROUP_KEY)),
    }
}

/// The group key for checking status MACs in `status` and `wait`, or why there is
/// none: these commands still work without it, they just cannot tell a forged status.
pub fn status_keys(cfg: &Config) -> Result<Keys, DaemonError> {
    read_group_key(&group_key_path(cfg)?)
}

/// How to reach the broker, without the group key: all that `status`, `wait` and
/// `resync` need (a resync command carries no MAC). With no broker URL this uses the
/// embedded broker's certificates in `state_dir/certs`, which `mqsync run` makes on
/// its first start.
pub fn connect_settings(cfg: &Config) -> Result<ConnectSettings, DaemonError> {
    let b = &cfg.broker;
    let (host, port, tls) = match &b.url {
        Some(url) => {
            let tls = if url.tls {
                let ca = b.ca_file.as_deref().ok_or(DaemonError::MissingCa)?;
                Some(Arc::new(crate::transport::tls::client_config(
                    ca,
                    b.cert_file.as_deref(),
                    b.key_file.as_deref(),
                )?))
            } else {
                tracing::warn!(
                    "broker.url uses plain TCP (insecure_plaintext): traffic is not encrypted"
                );
                None
            };
            (url.host.clone(), url.port, tls)
        }
        None => {
            let dir = cfg.state_dir.join("certs");
            let tls = crate::transport::tls::client_config(
                &dir.join(certs::CA_CERT),
                Some(&dir.join(format!("{}.pem", cfg.node_id))),
                Some(&dir.join(format!("{}.key", cfg.node_id))),
            )?;
            let host = match b.embedded_listen.ip() {
                ip if ip.is_unspecified() => "127.0.0.1".to_string(),
                ip => ip.to_string(),
            };
            (host, b.embedded_listen.port(), Some(Arc::new(tls)))
        }
    };
    Ok(ConnectSettings {
        host,
        port,
        tls,
        client_id: cfg.client_id(),
        keepalive: Duration::from_secs(b.keepalive_s),
        max_packet: MAX_PACKET,
        max_message: b.max_message_bytes,
    })
}

/// The client certificate the node connects with: `broker.cert_file` with an external
/// TLS broker, the one `run` makes in `state_dir/certs` with the embedded broker.
fn own_cert_path(cfg: &Config) -> Option<PathBuf> {
    match &cfg.broker.url {
        Some(url) if url.tls => cfg.broker.cert_file.clone(),
        Some(_) => None,
        None => Some(
            cfg.state_dir
                .join("certs")
                .join(format!("{}.pem", cfg.node_id)),
        ),
    }
}

/// Checks that the node's client certificate names `node_id` as its common name (the
/// identity both shipped brokers enforce: the embedded broker's rule and Mosquitto's
/// `use_identity_as_username` with the `%u` ACL), unless `broker.shared_node_cert`
/// says every node presents the same one. Returns when it expires (ms since the
/// epoch), `None` without a client certificate.
pub fn check_client_cert(cfg: &Config) -> Result<Option<u64>, DaemonError> {
    let Some(path) = own_cert_path(cfg) else {
        return Ok(None);
    };
    let info = certs::read_cert(&path).map_err(|source| DaemonError::CertFile {
        path: path.clone(),
        source,
    })?;
    if !cfg.broker.shared_node_cert && info.cn.as_deref() != Some(cfg.node_id.as_str()) {
        return Err(DaemonError::CertNameMismatch {
            node_id: cfg.node_id.clone(),
            path,
            cn: match info.cn {
                Some(cn) => format!("{cn:?}"),
                None => "missing".to_string(),
            },
        });
    }
    Ok(Some(
        u64::try_from(info.not_after)
            .unwrap_or(0)
            .saturating_mul(1000),
    ))
}

/// Prepares everything `run` needs; starts the embedded broker when configured so.
pub fn prepare(cfg: &Config) -> Result<(NodeSettings, Option<BrokerHandle>), DaemonError> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(|error| DaemonError::StateDir {
        path: cfg.state_dir.clone(),
        error,
    })?;
    let handle = match &cfg.broker.url {
        Some(_) => None,
        None => {
            let dir = cfg.state_dir.join("certs");
            let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            certs::ensure_node_certs(&dir, &cfg.node_id, &hosts)?;
            let settings = BrokerSettings::with_certs_dir(cfg.broker.embedded_listen, &dir);
            let handle = broker::start(&settings)?;
            tracing::info!(listen = %cfg.broker.embedded_listen, certs = %dir.display(), "embedded broker started");
            Some(handle)
        }
    };
    let (connect, keys) = client(cfg)?;
    let client_cert_expires_ms = check_client_cert(cfg)?;
    let folders = cfg.folders.iter().map(node::folder_settings).collect();
    let settings = NodeSettings {
        node_id: cfg.node_id.clone(),
        state_dir: cfg.state_dir.clone(),
        topic_prefix: cfg.broker.topic_prefix.clone(),
        connect,
        keys,
        folders,
        client_cert_expires_ms,
    };
    Ok((settings, handle))
}

/// Runs the daemon until `shutdown` turns true.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> Result<(), DaemonError> {
    if let Some(addr) = cfg.metrics_listen {
        crate::ops::metrics::install(addr)?;
        tracing::info!(%addr, "Prometheus metrics on http://{addr}/metrics");
    }
    let (settings, _broker) = prepare(&cfg)?;
    if let Some(expires_ms) = settings.client_cert_expires_ms {
        crate::ops::metrics::set_certificate_expiry(expires_ms);
    }
    let volumes = match (&cfg.docker.volumes_root, cfg.docker.volume_plugin) {
        (Some(root), true) => {
            let v = crate::volumes::VolumeSettings {
                root: root.clone(),
                socket: cfg.docker.plugin_socket.clone(),
                node: settings.clone(),
            };
            // Fail at start, not at shutdown, when the root or socket cannot be made.
            let listener = crate::volumes::prepare(&v)?;
            Some(tokio::spawn(crate::volumes::run(
                v,
                listener,
                shutdown.clone(),
            )))
        }
        _ => None,
    };
    // Ready once the configuration, state directory, keys and certificates loaded (and
    // the embedded broker listens): connecting to the broker may take long, and a
    // unit that waited for it would fail its start while the broker is down.
    crate::sys::notify::notify("READY=1");
    run_nodes(&cfg, settings, shutdown).await?;
    if let Some(v) = volumes {
        if let Ok(Err(e)) = v.await {
            return Err(e.into());
        }
    }
    Ok(())
}

/// Runs the configured folders until `shutdown` turns true. On SIGHUP it reads the
/// group key file and the TLS files again and, when they load, restarts the folders
/// with them (each stops cleanly and reconnects within a second or two), so keys and
/// certificates rotate without restarting the process. Files that do not load are
/// reported and the ones in use are kept.
async fn run_nodes(
    cfg: &Config,
    mut settings: NodeSettings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())
        .map_err(|e| tracing::warn!("cannot catch SIGHUP, reloading is off: {e}"))
        .ok();
    loop {
        let (stop, stopped) = watch::channel(false);
        let nodes = node::run(settings.clone(), stopped);
        tokio::pin!(nodes);
        let (connect, keys, expires) = loop {
            tokio::select! {
                r = &mut nodes => return Ok(r?),
                _ = shutdown.changed() => {
                    let _ = stop.send(true);
                    return Ok(nodes.await?);
                }
                Some(()) = async {
                    match &mut hangup {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => match client(cfg).and_then(|(c, k)| Ok((c, k, check_client_cert(cfg)?))) {
                    Ok(loaded) => break loaded,
                    Err(e) => tracing::error!(
                        "reload: {e}; keeping the group key and certificates in use"
                    ),
                },
            }
        };
        tracing::info!("SIGHUP: group key and certificates read again; restarting the folders");
        let _ = stop.send(true);
        nodes.await?;
        settings.connect = connect;
        settings.keys = keys;
        settings.client_cert_expires_ms = expires;
        if let Some(expires_ms) = expires {
            crate::ops::metrics::set_certificate_expiry(expires_ms);
        }
    }
}
