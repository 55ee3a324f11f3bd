//! `mqsync demo`: the embedded broker plus several nodes in one process, each syncing
//! its own sub-folder of a demo directory, so a newcomer can watch files propagate
//! without writing any configuration. [`demo`] is the command: it prints what to try
//! and runs until Ctrl-C.

use super::args::DemoArgs;
use super::{init_logging, shutdown_signal};
use crate::broker::certs;
use crate::broker::{self, BrokerSettings};
use crate::config::LogFormat;
use crate::daemon::{DaemonError, MAX_PACKET, read_group_key};
use crate::engine::Mode;
use crate::node::{self, FolderSettings, NodeSettings};
use crate::transport::ConnectSettings;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::watch;

pub const DEMO_NODES: &[&str] = &["a", "b", "c"];

/// Port 8883 when free, otherwise any free port.
pub fn free_port() -> u16 {
    for port in [8883, 0] {
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port))
            && let Ok(addr) = l.local_addr()
        {
            return addr.port();
        }
    }
    8883
}

/// Everything the demo set up, for printing.
pub struct DemoLayout {
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub folders: Vec<PathBuf>,
}

/// Starts the broker and the nodes; returns once they are running (the node tasks
/// keep going until `shutdown` turns true).
pub async fn start(
    dir: &Path,
    shutdown: watch::Receiver<bool>,
) -> Result<(DemoLayout, Vec<tokio::task::JoinHandle<()>>), DaemonError> {
    let state = dir.join(".state");
    let certs_dir = state.join("certs");
    let nodes: Vec<String> = DEMO_NODES.iter().map(|s| s.to_string()).collect();
    certs::init(
        &certs_dir,
        &nodes,
        &["localhost".into(), "127.0.0.1".into()],
    )?;
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _broker = broker::start(&BrokerSettings::with_certs_dir(listen, &certs_dir))?;
    let keys = read_group_key(&certs_dir.join(certs::GROUP_KEY))?;
    let mut tasks = vec![];
    let mut folders = vec![];
    for n in &nodes {
        let path = dir.join(n);
        folders.push(path.clone());
        let tls = crate::transport::tls::client_config(
            &certs_dir.join(certs::CA_CERT),
            Some(&certs_dir.join(format!("{n}.pem"))),
            Some(&certs_dir.join(format!("{n}.key"))),
        )?;
        let settings = NodeSettings {
            node_id: n.clone(),
            state_dir: state.join(n),
            topic_prefix: "mqsync".into(),
            connect: ConnectSettings {
                host: "127.0.0.1".into(),
                port: listen.port(),
                tls: Some(Arc::new(tls)),
                client_id: format!("mqsync-{n}"),
                keepalive: Duration::from_secs(30),
                max_packet: MAX_PACKET,
            },
            keys: keys.clone(),
            client_cert_expires_ms: None,
            folders: vec![FolderSettings {
                id: "demo".into(),
                path,
                mode: Mode::SendReceive,
                ignore: vec!["*.swp".into(), "*~".into()],
                debounce: Duration::from_millis(100),
                rescan_interval: Duration::from_secs(3600),
                digest_interval: Duration::from_secs(30),
                status_interval: Duration::from_secs(10),
                max_delete_percent: crate::config::DEFAULT_MAX_DELETE_PERCENT,
                tombstone_ttl: Some(Duration::from_secs(
                    crate::config::DEFAULT_TOMBSTONE_DAYS * 86_400,
                )),
                on_change: None,
                compression: Default::default(),
            }],
        };
        let sd = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = node::run(settings, sd).await {
                tracing::error!("demo node: {e}");
            }
        }));
    }
    Ok((
        DemoLayout {
            dir: dir.to_path_buf(),
            listen,
            folders,
        },
        tasks,
    ))
}

/// `mqsync demo`: starts everything in `a.dir` (relative to the working directory),
/// prints the layout and a few commands to try, and stops the nodes on Ctrl-C.
pub fn demo(rt: &Runtime, log: &str, a: DemoArgs) -> anyhow::Result<()> {
    init_logging(log, LogFormat::Text);
    let dir = std::env::current_dir()?.join(a.dir);
    rt.block_on(async {
        let (tx, rx) = watch::channel(false);
        let (layout, tasks) = start(&dir, rx).await?;
        let f = &layout.folders;
        println!();
        println!(
            "mqsync demo: broker on mqtts://{} with three nodes",
            layout.listen
        );
        for (n, p) in DEMO_NODES.iter().zip(f) {
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
        tokio::spawn(super::progress::initial_sync(
            DEMO_NODES
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
