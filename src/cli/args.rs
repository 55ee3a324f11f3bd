//! The command line's shape: every subcommand, flag, default and help text, parsed by
//! clap into [`Cli`]. Only declarations live here; `main.rs` dispatches each command
//! to its module under `cli`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mqsync",
    version,
    about = "Multi-master folder sync over an MQTT-over-TLS broker"
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `debug` or `mqsync=debug`.
    #[arg(
        long,
        global = true,
        env = "MQSYNC_LOG",
        default_value = "info,rumqttd=warn,rumqttc=warn,notify=warn"
    )]
    pub log: String,
    #[command(subcommand)]
    pub cmd: Cmd,
}

// The argument structs carry no `///` comment: clap would take it as the command's
// about text in place of the variant's.
#[derive(Subcommand)]
pub enum Cmd {
    /// Run the daemon: sync every configured folder.
    ///
    /// SIGTERM or Ctrl-C stops it cleanly; SIGHUP reads the group key file and the
    /// TLS files again and restarts the folders with them (key and certificate
    /// rotation without a restart).
    Run(RunArgs),
    /// Run the embedded MQTT-over-TLS broker (mutual TLS) on its own: from a
    /// certificates directory (--certs), an mqsync configuration (-c or MQSYNC_CONFIG)
    /// or a rumqttd-style file (-c).
    Broker(BrokerArgs),
    /// Create certificates and the group key.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Ask nodes to compare complete state with their peers and repair every
    /// difference; also applies deletions held by the mass-delete guard and reverts
    /// local changes on receive-only folders.
    ///
    /// Prints per node whether it accepted the command or ignored it (a node resyncs
    /// at most once every 10 s), or is offline; exits 1 unless every targeted node
    /// accepted.
    Resync(ResyncArgs),
    /// A table of every node of every folder, read from the retained status topics.
    ///
    /// Needs a node's configuration for the broker's address and a client certificate
    /// (--config, MQSYNC_CONFIG, or MQSYNC_BROKER_URL, MQSYNC_BROKER_CA_FILE,
    /// MQSYNC_BROKER_CERT_FILE and MQSYNC_BROKER_KEY_FILE).
    Status(StatusArgs),
    /// Block until every online node of the folder(s) reports the same state with
    /// nothing pending, every status verifies under the group key and the ignore
    /// rules agree, and every node that polls (watch = "poll", or out of inotify
    /// watches) has polled since wait started (for deploy scripts); exit 1 with the
    /// reason on timeout.
    Wait(WaitArgs),
    /// Per node, the paths it has not brought in sync and why (waiting for chunks,
    /// apply failing, held by the mass-delete guard, local change not sent), read
    /// from the retained pending lists.
    Pending(PendingArgs),
    /// List the conflict copies in the folders of this node, with the path each was
    /// copied from, the node whose version lost and when it was written.
    Conflicts(ConflictsArgs),
    /// Exit 0 when the local daemon is connected and not failing (Docker HEALTHCHECK);
    /// reads the status files the daemon keeps in state_dir/health.
    Healthcheck(HealthcheckArgs),
    /// A local demo: embedded broker plus three nodes syncing sub-folders of DIR.
    Demo(DemoArgs),
    /// Remove a node that left for good: clear its retained status, pending and mount
    /// documents so it no longer shows in `status`. Needs an operator certificate
    /// (`certs init --operator NAME`); refuses a node that is online unless --force.
    Forget(ForgetArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// Configuration file (TOML). Without it: defaults plus MQSYNC_* variables.
    #[arg(long, short, env = "MQSYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override `node_id`.
    #[arg(long)]
    pub node_id: Option<String>,
    /// Override `state_dir`.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Override `broker.url` (mqtts://HOST:PORT).
    #[arg(long)]
    pub broker_url: Option<String>,
    /// Allow a plain-TCP `mqtt://` broker URL (logs a warning).
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Only check the configuration and the files and folders it names, as `run` would
    /// at start, print every problem and exit (0: it would start). For deploy tools:
    /// Ansible's `validate: mqsync run --check --config %s`.
    #[arg(long)]
    pub check: bool,
}

#[derive(Args)]
pub struct BrokerArgs {
    /// Address to listen on [default: 0.0.0.0:8883 with --certs; broker.embedded_listen
    /// with an mqsync configuration].
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Directory written by `mqsync certs init` (ca.pem, broker.pem, broker.key). Wins
    /// over --config.
    #[arg(long)]
    pub certs: Option<PathBuf>,
    /// An mqsync configuration file (the broker `run` would embed: listen on
    /// broker.embedded_listen with the certificates in state_dir/certs), or a
    /// rumqttd-style TOML file (see broker/rumqttd.toml).
    #[arg(long, short, env = "MQSYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Nodes share one client certificate (e.g. a Swarm global service): let any
    /// client publish as any node id. By default a client may publish only under the
    /// node id its certificate names (docs/SECURITY.md).
    #[arg(long, env = "MQSYNC_BROKER_SHARED_NODE_CERT")]
    pub shared_node_cert: bool,
}

#[derive(Subcommand)]
pub enum CertsCmd {
    /// Write a CA, a broker certificate, one client certificate per node, operator
    /// certificates and a group key into DIR. Existing files are kept (an existing CA
    /// signs what is added); the output says, file by file, what was created and what
    /// was kept.
    Init(CertsInitArgs),
    /// Re-issue existing node, operator or broker certificates from the CA in DIR
    /// before they expire: same key, same names, new validity; the CA and the group
    /// key are not touched. Then send SIGHUP to each daemon (docs/DEPLOY.md).
    Renew(CertsRenewArgs),
}

#[derive(Args)]
pub struct CertsInitArgs {
    /// Directory to write into (created if missing): ca.pem/.key, broker.pem/.key,
    /// NODE.pem/.key per node, NAME.pem/.key per operator, group.key.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Node ids, comma-separated: one client certificate each (its CN is the node id).
    #[arg(long, value_delimiter = ',', required_unless_present = "operator")]
    pub nodes: Vec<String>,
    /// Names and addresses clients use to reach the broker [default: localhost,127.0.0.1].
    /// A kept broker certificate is not changed: the output says when its names differ.
    #[arg(long, value_delimiter = ',')]
    pub hosts: Option<Vec<String>>,
    /// Operator names, comma-separated: one operator certificate each (NAME.pem/.key,
    /// CN mqsync-operator), which the shipped ACLs allow to run `mqsync forget`.
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub operator: Vec<String>,
    /// Give this group read access to broker.key (mode 0640), for a broker running as
    /// its own user, e.g. `--group mosquitto`.
    #[arg(long)]
    pub group: Option<String>,
    /// Validity in days of the certificates created now (for tests).
    #[arg(long, hide = true, default_value_t = crate::broker::certs::LEAF_VALIDITY_DAYS)]
    pub days: i64,
}

#[derive(Args)]
pub struct CertsRenewArgs {
    /// Directory written by `mqsync certs init` (its CA signs the new certificates).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Node ids whose certificates to re-issue, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Operator names whose certificates to re-issue, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub operator: Vec<String>,
    /// Re-issue the broker certificate too.
    #[arg(long)]
    pub broker: bool,
    /// New names for the broker certificate (default: the ones it has).
    #[arg(long, value_delimiter = ',', requires = "broker")]
    pub hosts: Option<Vec<String>>,
    /// Validity in days of the new certificates (for tests).
    #[arg(long, hide = true, default_value_t = crate::broker::certs::LEAF_VALIDITY_DAYS)]
    pub days: i64,
}

#[derive(Args)]
pub struct ForgetArgs {
    /// The node to remove: its retained status, pending and Docker mount documents
    /// are cleared on every folder.
    #[arg(value_name = "NODE")]
    pub node: String,
    /// A configuration file, for the broker address, CA and topic prefix.
    #[arg(long, short, env = "MQSYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Operator certificate (from `certs init --operator NAME`); default:
    /// broker.cert_file of the configuration.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The operator certificate's key.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Forget the node even though its status says it is online.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct ResyncArgs {
    /// A node's configuration file, for the broker address and credentials (the
    /// group key is not needed).
    #[arg(long, short, env = "MQSYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Folder id (default: every folder of the configuration).
    #[arg(long)]
    pub folder: Option<String>,
    /// Node id to resync (default: every node).
    #[arg(long, default_value = "*")]
    pub node: String,
}

#[derive(Args)]
pub struct ConflictsArgs {
    /// A node's configuration file: the folders to look in.
    #[arg(long, short, env = "MQSYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Folder id (default: every folder of the configuration).
    #[arg(long)]
    pub folder: Option<String>,
    /// Print JSON (an array of {folder, copy, original, lost_by, written}).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    /// A node's configuration file, for the broker address and credentials (the
    /// group key is not needed).
    #[arg(long, short, env = "MQSYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print JSON (an array of status documents) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Keep updating until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Args)]
pub struct PendingArgs {
    /// A node's configuration file, for the broker address and credentials (with the
    /// group key, lists that do not verify are left out).
    #[arg(long, short, env = "MQSYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Only this folder id.
    #[arg(long)]
    pub folder: Option<String>,
    /// Only this node id.
    #[arg(long)]
    pub node: Option<String>,
    /// Print JSON (an array of pending documents) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct WaitArgs {
    /// A node's configuration file, for the broker address and credentials (the
    /// group key is not needed).
    #[arg(long, short, env = "MQSYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Folder id (default: every folder of the configuration, or, when it has no
    /// [[folder]], every folder an online node reports).
    #[arg(long)]
    pub folder: Option<String>,
    /// Seconds to wait at most.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

#[derive(Args)]
pub struct HealthcheckArgs {
    /// The daemon's configuration file (for state_dir and the folders).
    #[arg(long, short, env = "MQSYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Seconds a failure the daemon keeps retrying (an apply on a full disk, a
    /// permission, an index write, a peer none of whose messages verify) may last
    /// before the node counts as unhealthy.
    #[arg(long, value_name = "S", default_value_t = crate::ops::status::DEFAULT_ERROR_GRACE_MS / 1000)]
    pub error_grace: u64,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Demo directory (folders DIR/a, DIR/b, DIR/c; state in DIR/.state).
    #[arg(default_value = "mqsync-demo")]
    pub dir: PathBuf,
    /// Stop after SECONDS, as Ctrl-C would, printing what each node holds (for scripts
    /// and tests). Without it the demo runs until Ctrl-C.
    #[arg(long = "for", value_name = "SECONDS")]
    pub run_for: Option<u64>,
}
