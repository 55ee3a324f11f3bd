//! The `mqsync` command line: parses arguments, loads the configuration, sets up
//! logging and calls into the library. `anyhow` lives only here.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use mqsync::config::{Config, LogFormat};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokio::sync::watch;

/// How long `run` waits for its folders to say goodbye after SIGTERM or Ctrl-C.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(8);

#[derive(Parser)]
#[command(
    name = "mqsync",
    version,
    about = "Multi-master folder sync over an MQTT-over-TLS broker"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `debug` or `mqsync=debug`.
    #[arg(
        long,
        global = true,
        env = "MQSYNC_LOG",
        default_value = "info,rumqttd=warn,rumqttc=warn,notify=warn"
    )]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: sync every configured folder.
    Run(RunArgs),
    /// Run the embedded MQTT-over-TLS broker (mutual TLS) on its own.
    Broker(BrokerArgs),
    /// Create certificates and the group key.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Ask nodes to compare complete state with their peers and repair every
    /// difference; also applies deletions held by the mass-delete guard and reverts
    /// local changes on receive-only folders.
    Resync {
        /// A node's configuration file, for the broker address and credentials (the
        /// group key is not needed).
        #[arg(long, short, env = "MQSYNC_CONFIG")]
        config: Option<PathBuf>,
        /// Folder id (default: every folder of the configuration).
        #[arg(long)]
        folder: Option<String>,
        /// Node id to resync (default: every node).
        #[arg(long, default_value = "*")]
        node: String,
    },
    /// A table of every node of every folder, read from the retained status topics.
    Status {
        /// A node's configuration file, for the broker address and credentials (the
        /// group key is not needed).
        #[arg(long, short, env = "MQSYNC_CONFIG")]
        config: Option<PathBuf>,
        /// Print JSON (an array of status documents) instead of a table.
        #[arg(long)]
        json: bool,
        /// Keep updating until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Block until every online node of the folder(s) reports the same state with
    /// nothing pending (for deploy scripts); exit 1 with the reason on timeout.
    Wait {
        /// A node's configuration file, for the broker address and credentials (the
        /// group key is not needed).
        #[arg(long, short, env = "MQSYNC_CONFIG")]
        config: Option<PathBuf>,
        /// Folder id (default: every folder of the configuration).
        #[arg(long)]
        folder: Option<String>,
        /// Seconds to wait at most.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Exit 0 when the local daemon is connected and not failing (Docker HEALTHCHECK);
    /// reads the status files the daemon keeps in state_dir/health.
    Healthcheck {
        /// The daemon's configuration file (for state_dir and the folders).
        #[arg(long, short, env = "MQSYNC_CONFIG")]
        config: Option<PathBuf>,
        /// Seconds a failure the daemon keeps retrying (an apply on a full disk, a
        /// permission, an index write) may last before the node counts as unhealthy.
        #[arg(long, value_name = "S", default_value_t = mqsync::ops::status::DEFAULT_ERROR_GRACE_MS / 1000)]
        error_grace: u64,
    },
    /// A local demo: embedded broker plus three nodes syncing sub-folders of DIR.
    Demo {
        /// Demo directory (folders DIR/a, DIR/b, DIR/c; state in DIR/.state).
        #[arg(default_value = "mqsync-demo")]
        dir: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Configuration file (TOML). Without it: defaults plus MQSYNC_* variables.
    #[arg(long, short, env = "MQSYNC_CONFIG")]
    config: Option<PathBuf>,
    /// Override `node_id`.
    #[arg(long)]
    node_id: Option<String>,
    /// Override `state_dir`.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Override `broker.url` (mqtts://HOST:PORT).
    #[arg(long)]
    broker_url: Option<String>,
    /// Allow a plain-TCP `mqtt://` broker URL (logs a warning).
    #[arg(long)]
    insecure_plaintext: bool,
}

#[derive(Args)]
struct BrokerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8883", conflicts_with = "config")]
    listen: std::net::SocketAddr,
    /// Directory written by `mqsync certs init` (ca.pem, broker.pem, broker.key).
    #[arg(long, required_unless_present = "config")]
    certs: Option<PathBuf>,
    /// A rumqttd-style TOML file instead (see broker/rumqttd.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Nodes share one client certificate (e.g. a Swarm global service): let any
    /// client publish as any node id. By default a client may publish only under the
    /// node id its certificate names (docs/SECURITY.md).
    #[arg(long, env = "MQSYNC_BROKER_SHARED_NODE_CERT")]
    shared_node_cert: bool,
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Write a CA, a broker certificate, one client certificate per node and a group
    /// key into DIR (an existing CA there is reused).
    Init {
        #[arg(long)]
        out: PathBuf,
        /// Node ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// Names and addresses clients use to reach the broker.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
        hosts: Vec<String>,
    },
}

/// Logs to stderr; ANSI colours only when stderr is a terminal and `NO_COLOR` is unset
/// or empty (<https://no-color.org>).
fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

fn load_config(path: Option<&Path>, overrides: HashMap<&'static str, String>) -> Result<Config> {
    let env = |k: &str| overrides.get(k).cloned().or_else(|| std::env::var(k).ok());
    let cfg = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            Config::from_toml(&text, p, &env)?
        }
        None => Config::from_env_only(&env)?,
    };
    Ok(cfg)
}

/// Resolves on Ctrl-C or SIGTERM (what `docker stop` sends).
async fn shutdown_signal() {
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

fn main() -> Result<()> {
    mqsync::sys::heap::tune_allocator();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Run(a) => {
            let mut o = HashMap::new();
            if let Some(v) = a.node_id {
                o.insert("MQSYNC_NODE_ID", v);
            }
            if let Some(v) = a.state_dir {
                o.insert("MQSYNC_STATE_DIR", v.display().to_string());
            }
            if let Some(v) = a.broker_url {
                o.insert("MQSYNC_BROKER_URL", v);
            }
            if a.insecure_plaintext {
                o.insert("MQSYNC_BROKER_INSECURE_PLAINTEXT", "true".into());
            }
            let cfg = load_config(a.config.as_deref(), o)?;
            cfg.validate_for_run()?;
            init_logging(&cli.log, cfg.log_format);
            // Raised outside the log macro: its fields are not evaluated when the level
            // is filtered out.
            let open_files = mqsync::sys::rlimit::raise_open_files();
            tracing::info!(node = %cfg.node_id, folders = cfg.folders.len(), ?open_files, "mqsync {} starting", env!("CARGO_PKG_VERSION"));
            let progress: Vec<_> = cfg
                .folders
                .iter()
                .map(|f| (f.id.clone(), cfg.state_dir.clone(), f.id.clone()))
                .collect();
            rt.block_on(async {
                let (tx, rx) = watch::channel(false);
                let mut daemon = tokio::spawn(mqsync::daemon::run(cfg, rx));
                tokio::spawn(mqsync::cli::progress::initial_sync(progress));
                tokio::select! {
                    r = &mut daemon => return r?.map_err(anyhow::Error::from),
                    _ = shutdown_signal() => {}
                }
                tracing::info!("shutting down");
                let _ = tx.send(true);
                // Every folder removes its temp files, records what it applied, publishes
                // its offline status and disconnects; bounded, so a stuck broker
                // connection cannot hold the exit.
                match tokio::time::timeout(SHUTDOWN_GRACE, daemon).await {
                    Ok(r) => r?.map_err(anyhow::Error::from),
                    Err(_) => {
                        tracing::warn!("shutdown took longer than {SHUTDOWN_GRACE:?}; exiting");
                        Ok(())
                    }
                }
            })
        }
        Cmd::Resync {
            config,
            folder,
            node,
        } => {
            let cfg = load_config(config.as_deref(), HashMap::new())?;
            init_logging(&cli.log, cfg.log_format);
            let folders = folder_ids(&cfg, folder)?;
            let connect = mqsync::daemon::connect_settings(&cfg)?;
            let topics: Vec<String> = folders
                .iter()
                .map(|f| format!("{}/{f}/cmd", cfg.broker.topic_prefix))
                .collect();
            let payload = mqsync::ops::control::resync_command(&node);
            rt.block_on(mqsync::ops::control::publish(&connect, &topics, &payload))?;
            println!(
                "resync requested for node {node} on folder(s) {}",
                folders.join(", ")
            );
            Ok(())
        }
        Cmd::Status {
            config,
            json,
            watch,
        } => {
            let cfg = load_config(config.as_deref(), HashMap::new())?;
            init_logging(&cli.log, cfg.log_format);
            let connect = mqsync::daemon::connect_settings(&cfg)?;
            let keys = status_keys(&cfg);
            let prefix = cfg.broker.topic_prefix.clone();
            rt.block_on(async {
                if !watch {
                    let map = mqsync::ops::control::read_status(
                        &connect,
                        &prefix,
                        keys.as_ref(),
                        std::time::Duration::from_millis(500),
                    )
                    .await?;
                    print_status(&map, json)?;
                    return Ok(());
                }
                let (tx, mut rx) = tokio::sync::mpsc::channel(64);
                let task = tokio::spawn(async move {
                    mqsync::ops::control::watch_status(&connect, &prefix, keys.as_ref(), tx).await
                });
                let clear = std::io::IsTerminal::is_terminal(&std::io::stdout()) && !json;
                loop {
                    tokio::select! {
                        m = rx.recv() => match m {
                            Some(map) => {
                                if clear {
                                    print!("\x1b[2J\x1b[H");
                                }
                                print_status(&map, json)?;
                            }
                            None => break,
                        },
                        _ = shutdown_signal() => return Ok(()),
                    }
                }
                match task.await {
                    Ok(Err(e)) => Err(e.into()),
                    _ => Ok(()),
                }
            })
        }
        Cmd::Wait {
            config,
            folder,
            timeout,
        } => {
            let cfg = load_config(config.as_deref(), HashMap::new())?;
            init_logging(&cli.log, cfg.log_format);
            let folders = folder_ids(&cfg, folder)?;
            let connect = mqsync::daemon::connect_settings(&cfg)?;
            let keys = status_keys(&cfg);
            let prefix = cfg.broker.topic_prefix.clone();
            let limit = std::time::Duration::from_secs(timeout);
            rt.block_on(async {
                let (tx, mut rx) = tokio::sync::mpsc::channel(64);
                let task = tokio::spawn(async move {
                    mqsync::ops::control::watch_status(&connect, &prefix, keys.as_ref(), tx).await
                });
                let deadline = tokio::time::Instant::now() + limit;
                // In sync must hold for a moment: a change may not have reached anyone.
                let settle = std::time::Duration::from_secs(1);
                let mut last = String::from("no status received yet");
                let mut map = mqsync::ops::control::StatusMap::new();
                loop {
                    let check = folders
                        .iter()
                        .map(|f| mqsync::ops::control::folder_in_sync(&map, f))
                        .collect::<Result<Vec<_>, _>>();
                    let wait = match &check {
                        Ok(_) => settle,
                        Err(e) => {
                            last = e.clone();
                            std::time::Duration::from_secs(3600)
                        }
                    };
                    tokio::select! {
                        m = rx.recv() => match m {
                            Some(m) => map = m,
                            None => break,
                        },
                        _ = tokio::time::sleep(wait) => {
                            if let Ok(counts) = check {
                                println!("in sync: {}", folders.iter().zip(counts).map(|(f, n)| format!("{f} ({n} nodes)")).collect::<Vec<_>>().join(", "));
                                task.abort();
                                return Ok(());
                            }
                        }
                        _ = tokio::time::sleep_until(deadline) => {
                            task.abort();
                            bail!("not in sync after {timeout} s: {last}");
                        }
                    }
                }
                match task.await {
                    Ok(Err(e)) => Err(e.into()),
                    _ => bail!("status subscription ended: {last}"),
                }
            })
        }
        Cmd::Healthcheck {
            config,
            error_grace,
        } => {
            let cfg = load_config(config.as_deref(), HashMap::new())?;
            let mut ids: Vec<String> = cfg.folders.iter().map(|f| f.id.clone()).collect();
            if cfg.docker.volume_plugin {
                // Docker volumes are folders `vol.NAME` that the daemon runs as they come.
                ids.extend(mqsync::volumes::health_ids(&cfg.state_dir));
            }
            if ids.is_empty() && !cfg.docker.volume_plugin {
                bail!("no [[folder]] in the configuration: nothing to check");
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let mut problems = vec![];
            for id in &ids {
                let path = mqsync::ops::status::health_file(&cfg.state_dir, id);
                let doc = std::fs::read(&path)
                    .map_err(|e| {
                        format!(
                            "folder {id}: {}: {e} (is the daemon running?)",
                            path.display()
                        )
                    })
                    .and_then(|b| {
                        serde_json::from_slice::<mqsync::ops::status::FolderStatus>(&b)
                            .map_err(|e| format!("folder {id}: {}: {e}", path.display()))
                    });
                match doc {
                    Ok(d) => {
                        if let Some(p) = mqsync::ops::status::unhealthy(
                            &d,
                            now,
                            error_grace.saturating_mul(1000),
                        ) {
                            problems.push(p);
                        }
                    }
                    Err(e) => problems.push(e),
                }
            }
            if problems.is_empty() {
                println!("healthy: {} folder(s)", ids.len());
                Ok(())
            } else {
                bail!("unhealthy:\n  {}", problems.join("\n  "))
            }
        }
        Cmd::Broker(a) => {
            init_logging(&cli.log, LogFormat::Text);
            let open_files = mqsync::sys::rlimit::raise_open_files();
            tracing::debug!(?open_files, "open-file limit");
            let handle = match (&a.config, &a.certs) {
                (Some(c), _) => mqsync::broker::start_from_file(c, a.shared_node_cert)?,
                (None, Some(dir)) => mqsync::broker::start(&mqsync::broker::BrokerSettings {
                    shared_node_cert: a.shared_node_cert,
                    ..mqsync::broker::BrokerSettings::with_certs_dir(a.listen, dir)
                })?,
                (None, None) => bail!("give --certs DIR or --config FILE"),
            };
            for addr in handle.listen_addrs() {
                tracing::info!(%addr, "broker listening (MQTT 3.1.1 over TLS, client certificates required)");
            }
            rt.block_on(shutdown_signal());
            Ok(())
        }
        Cmd::Certs(CertsCmd::Init { out, nodes, hosts }) => {
            mqsync::broker::certs::init(&out, &nodes, &hosts)?;
            println!(
                "wrote certificates for {} into {}",
                nodes.join(", "),
                out.display()
            );
            println!("  ca.pem            CA certificate (give to every node and the broker)");
            println!(
                "  broker.pem/.key   broker certificate for: {}",
                hosts.join(", ")
            );
            for n in &nodes {
                println!("  {n}.pem/.key       client certificate of node {n}");
            }
            println!("  group.key         shared secret that authenticates sync messages");
            Ok(())
        }
        Cmd::Demo { dir } => {
            init_logging(&cli.log, LogFormat::Text);
            let dir = std::env::current_dir()?.join(dir);
            rt.block_on(async {
                let (tx, rx) = watch::channel(false);
                let (layout, tasks) = mqsync::cli::demo::start(&dir, rx).await?;
                let f = &layout.folders;
                println!();
                println!(
                    "mqsync demo: broker on mqtts://{} with three nodes",
                    layout.listen
                );
                for (n, p) in mqsync::cli::demo::DEMO_NODES.iter().zip(f) {
                    println!("  node {n}: {}", p.display());
                }
                println!();
                println!("Try, in another terminal:");
                println!(
                    "  echo hello > {}/hello.txt && cat {}/hello.txt",
                    f[0].display(),
                    f[1].display()
                );
                println!(
                    "  mkdir -p {}/docs && cp /etc/os-release {}/docs/",
                    f[1].display(),
                    f[1].display()
                );
                println!(
                    "  mv {}/hello.txt {}/renamed.txt; ls {}",
                    f[2].display(),
                    f[2].display(),
                    f[0].display()
                );
                println!("  rm -r {}/docs; ls {}", f[0].display(), f[2].display());
                println!(
                    "Ctrl-C stops the demo (the files stay in {}).",
                    layout.dir.display()
                );
                tokio::spawn(mqsync::cli::progress::initial_sync(
                    mqsync::cli::demo::DEMO_NODES
                        .iter()
                        .map(|n| {
                            let state = layout.dir.join(".state").join(n);
                            (format!("{n}/demo"), state, "demo".to_string())
                        })
                        .collect(),
                ));
                shutdown_signal().await;
                let _ = tx.send(true);
                for t in tasks {
                    let _ = t.await;
                }
                Ok(())
            })
        }
    }
}

/// The folder given on the command line, or else every folder of the configuration.
/// The group key for checking status MACs, when this user can read it. Without it
/// `status` and `wait` still work but cannot tell a forged status, so they say so.
fn status_keys(cfg: &Config) -> Option<mqsync::protocol::wire::Keys> {
    match mqsync::daemon::status_keys(cfg) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!("status MACs are not checked: {e}");
            None
        }
    }
}

fn folder_ids(cfg: &Config, folder: Option<String>) -> Result<Vec<String>> {
    let folders: Vec<String> = match folder {
        Some(f) => vec![f],
        None => cfg.folders.iter().map(|f| f.id.clone()).collect(),
    };
    if folders.is_empty() {
        bail!("no folder: give --folder ID or a configuration with [[folder]] tables");
    }
    Ok(folders)
}

/// Prints statuses as a table (or JSON), marking nodes whose digest differs from the
/// most common one among the folder's online nodes.
fn print_status(map: &mqsync::ops::control::StatusMap, json: bool) -> Result<()> {
    if json {
        let docs: Vec<_> = map.values().collect();
        println!("{}", serde_json::to_string_pretty(&docs)?);
        return Ok(());
    }
    let mut majority: HashMap<&str, &str> = HashMap::new();
    let mut counts: HashMap<(&str, &str), usize> = HashMap::new();
    for d in map
        .values()
        .filter(|d| d.state != mqsync::ops::status::State::Offline)
    {
        *counts
            .entry((d.folder.as_str(), d.digest.as_str()))
            .or_default() += 1;
    }
    for ((f, dg), n) in &counts {
        let best = majority.get(f).map(|b| counts[&(*f, *b)]).unwrap_or(0);
        if *n > best || (*n == best && majority.get(f).is_some_and(|b| dg < b)) {
            majority.insert(f, dg);
        }
    }
    println!(
        "{:<16} {:<16} {:<9} {:>8} {:>12} {:>8} {:<8} {:<17} LAST ERROR",
        "FOLDER", "NODE", "STATE", "FILES", "BYTES", "PENDING", "IN SYNC", "DIGEST"
    );
    for d in map.values() {
        let state = serde_json::to_value(d.state)?
            .as_str()
            .unwrap_or("?")
            .to_string();
        let in_sync = d.state != mqsync::ops::status::State::Offline
            && d.pending == 0
            && majority.get(d.folder.as_str()) == Some(&d.digest.as_str());
        println!(
            "{:<16} {:<16} {:<9} {:>8} {:>12} {:>8} {:<8} {:<17} {}",
            d.folder,
            d.node,
            state,
            d.files,
            d.bytes,
            d.pending,
            if in_sync { "yes" } else { "no" },
            d.digest,
            match (&d.last_error, d.insecure_plaintext) {
                (Some(e), true) => format!("PLAINTEXT; {e}"),
                (Some(e), false) => e.clone(),
                (None, true) => "PLAINTEXT (insecure_plaintext: not encrypted)".to_string(),
                (None, false) => String::new(),
            }
        );
    }
    if map.is_empty() {
        println!("(no status received: no node has published under this topic prefix yet)");
    }
    Ok(())
}
