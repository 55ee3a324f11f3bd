//! `mqsync broker`: the embedded MQTT-over-TLS broker on its own, from a certificates
//! directory or a rumqttd-style file, until Ctrl-C or SIGTERM.

use super::args::BrokerArgs;
use super::{init_logging, shutdown_signal};
use crate::broker::{self, BrokerSettings};
use crate::config::LogFormat;
use anyhow::{Result, bail};
use tokio::runtime::Runtime;

pub fn broker(rt: &Runtime, log: &str, a: BrokerArgs) -> Result<()> {
    init_logging(log, LogFormat::Text);
    let open_files = crate::sys::rlimit::raise_open_files();
    tracing::debug!(?open_files, "open-file limit");
    let handle = match (&a.config, &a.certs) {
        (Some(c), _) => broker::start_from_file(c, a.shared_node_cert)?,
        (None, Some(dir)) => broker::start(&BrokerSettings {
            shared_node_cert: a.shared_node_cert,
            ..BrokerSettings::with_certs_dir(a.listen, dir)
        })?,
        (None, None) => bail!("give --certs DIR or --config FILE"),
    };
    for addr in handle.listen_addrs() {
        tracing::info!(%addr, "broker listening (MQTT 3.1.1 over TLS, client certificates required)");
    }
    rt.block_on(shutdown_signal());
    Ok(())
}
