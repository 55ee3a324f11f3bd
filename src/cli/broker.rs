//! `mqsync broker`: the embedded MQTT-over-TLS broker on its own, until Ctrl-C or
//! SIGTERM, from a certificates directory, from an mqsync configuration (`-c`, or
//! `MQSYNC_CONFIG` like the other commands: the broker `run` would embed), or from a
//! rumqttd-style file.

use super::args::BrokerArgs;
use super::{init_logging, load_config, shutdown_signal};
use crate::broker::{self, BrokerSettings};
use crate::config::LogFormat;
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use tokio::runtime::Runtime;

/// `--listen` without an mqsync configuration.
const DEFAULT_LISTEN: &str = "0.0.0.0:8883";

pub fn broker(rt: &Runtime, log: &str, a: BrokerArgs) -> Result<()> {
    let settings = |listen: SocketAddr, dir: &Path| BrokerSettings {
        shared_node_cert: a.shared_node_cert,
        ..BrokerSettings::with_certs_dir(listen, dir)
    };
    // Raised before the broker's threads start: they inherit it.
    let open_files = crate::sys::rlimit::raise_open_files();
    let start = match (&a.certs, &a.config) {
        (Some(dir), _) => {
            init_logging(log, LogFormat::Text);
            let listen = match a.listen {
                Some(l) => l,
                None => DEFAULT_LISTEN.parse()?,
            };
            broker::start(&settings(listen, dir)).map_err(anyhow::Error::from)
        }
        (None, Some(path)) if is_rumqttd_file(path)? => {
            init_logging(log, LogFormat::Text);
            if a.listen.is_some() {
                bail!(
                    "--listen does not apply to a rumqttd-style file ({}): its listeners say where to listen",
                    path.display()
                );
            }
            broker::start_from_file(path, a.shared_node_cert).map_err(anyhow::Error::from)
        }
        (None, Some(path)) => {
            let cfg = load_config(Some(path), HashMap::new())?;
            init_logging(log, cfg.log_format);
            let dir = cfg.state_dir.join("certs");
            let listen = a.listen.unwrap_or(cfg.broker.embedded_listen);
            broker::start(&settings(listen, &dir)).with_context(|| {
                format!(
                    "the broker of configuration {} uses the certificates in state_dir/certs ({}); give --certs DIR for others",
                    path.display(),
                    dir.display()
                )
            })
        }
        (None, None) => bail!(
            "give --certs DIR (from `mqsync certs init`) or --config FILE (an mqsync configuration or a rumqttd-style file; MQSYNC_CONFIG=FILE also works)"
        ),
    };
    tracing::debug!(open_files, "open-file limit");
    let handle = start?;
    for addr in handle.listen_addrs() {
        tracing::info!(%addr, "broker listening (MQTT 3.1.1 over TLS, client certificates required)");
    }
    crate::sys::notify::notify("READY=1");
    rt.block_on(shutdown_signal());
    Ok(())
}

/// Whether `path` is a rumqttd-style file (it has rumqttd's `[router]` or `[v4…]`
/// tables) rather than an mqsync configuration.
fn is_rumqttd_file(path: &Path) -> Result<bool> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    // A file that does not parse is left to the mqsync parser, which names the problem.
    Ok(text
        .parse::<toml::Table>()
        .is_ok_and(|t| t.contains_key("router") || t.contains_key("v4")))
}
