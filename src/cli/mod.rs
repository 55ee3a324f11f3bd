//! The command line, one module per command: [`run`], [`broker`], [`certs`],
//! [`resync`], [`status`] (with `wait`), [`pending`], [`conflicts`], [`healthcheck`], [`demo`] and [`forget`]; [`args`] declares
//! them for clap and [`progress`] draws the first sync. `main.rs` only parses and
//! dispatches. This is the binary's edge: errors are `anyhow` here and nowhere below.

pub mod args;
pub mod broker;
pub mod certs;
pub mod conflicts;
pub mod demo;
pub mod forget;
pub mod healthcheck;
pub mod pending;
pub mod progress;
pub mod resync;
pub mod run;
pub mod status;

use crate::config::{Checks, Config, LogFormat};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::Path;

/// Logs to stderr; ANSI colours only when stderr is a terminal and `NO_COLOR` is unset
/// or empty (<https://no-color.org>).
pub fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().finish().with(QuietRumqttd).init(),
        LogFormat::Text => b.finish().with(QuietRumqttd).init(),
    }
}

/// Drops rumqttd's `router-drop` event. rumqttd logs it at ERROR for every connection
/// its router ends, and so for each client's clean MQTT DISCONNECT; any other reason
/// the router has to end a connection it logs itself.
struct QuietRumqttd;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for QuietRumqttd {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if event.metadata().target() != "rumqttd::server::broker" {
            return true;
        }
        let mut is = MessageIs("router-drop", false);
        event.record(&mut is);
        !is.1
    }
}

/// Whether an event's message is the given text.
struct MessageIs(&'static str, bool);

impl tracing::field::Visit for MessageIs {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" && format!("{value:?}") == self.0 {
            self.1 = true;
        }
    }
}

/// The configuration from `path` (or from the environment alone), where `overrides`
/// (command-line flags, keyed by their `MQSYNC_*` variable) win over the environment.
pub fn load_config(
    path: Option<&Path>,
    overrides: HashMap<&'static str, String>,
) -> Result<Config> {
    load_config_checked(path, overrides, Checks::Values)
}

/// [`load_config`] with the `checks` a command needs (`run` checks files and folders
/// too); every problem is listed in the one error, each with file and key.
pub fn load_config_checked(
    path: Option<&Path>,
    overrides: HashMap<&'static str, String>,
    checks: Checks,
) -> Result<Config> {
    let env = |k: &str| overrides.get(k).cloned().or_else(|| std::env::var(k).ok());
    let cfg = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            Config::from_toml_checked(&text, p, &env, checks)?
        }
        None => Config::from_env_only_checked(&env, checks)?,
    };
    Ok(cfg)
}

/// Resolves on Ctrl-C or SIGTERM (what `docker stop` sends).
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// The folder given on the command line, or else every folder of the configuration.
pub fn folder_ids(cfg: &Config, folder: Option<String>) -> Result<Vec<String>> {
    let folders: Vec<String> = match folder {
        Some(f) => vec![f],
        None => cfg.folders.iter().map(|f| f.id.clone()).collect(),
    };
    if folders.is_empty() {
        bail!("no folder: give --folder ID or a configuration with [[folder]] tables");
    }
    Ok(folders)
}
