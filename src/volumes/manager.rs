//! The volume service's task: answers the plugin's calls, publishes and reads the
//! volume documents, and runs one mqsync folder per volume (`vol.NAME` in
//! `volumes_root/NAME`), starting, replacing and deleting them as the registry says.
//! Volumes and local mounts survive restarts in `state_dir/volumes.json`.

use super::messages::{self, MessageError};
use super::plugin::{self, Call, Request};
use super::registry::{Announcement, Change, Registry, VolumeError, folder_id, parse_options};
use super::{VolumeServiceError, VolumeSettings};
use crate::config::FolderConfig;
use crate::config::{
    DEFAULT_DEBOUNCE_MS, DEFAULT_MAX_DELETE_PERCENT, DEFAULT_POLL_INTERVAL_S,
    DEFAULT_TOMBSTONE_DAYS,
};
use crate::node::{self, NodeError};
use crate::protocol::topics::{self, Topics};
use crate::transport::{self, NetEvent, Publisher};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

/// After connecting, how long retained documents may take to arrive before this node
/// republishes the ones the broker lacks (an embedded broker forgets them on restart).
const REPUBLISH_AFTER: Duration = Duration::from_secs(3);
/// How long a stopping folder may take to say goodbye.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Delay before restarting a volume's folder that stopped on an error.
const RESTART_DELAY: Duration = Duration::from_secs(5);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `state_dir/volumes.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    volumes: Vec<Announcement>,
    mounts: BTreeMap<String, BTreeSet<String>>,
    #[serde(default)]
    stale: BTreeSet<String>,
}

struct Running {
    generation: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), NodeError>>,
}

struct Manager {
    s: VolumeSettings,
    registry: Registry,
    running: HashMap<String, Running>,
    /// Volumes whose folder could not start, with why (reported by Get and Mount).
    failed: HashMap<String, (String, Instant)>,
    publisher: Publisher,
    state_file: PathBuf,
    /// What the broker holds, as far as its messages told: name → (updated_ms, node).
    on_broker: HashMap<String, (u64, String)>,
    republish_at: Option<Instant>,
}

/// Runs the volume service: the plugin API on `listener` (from [`super::prepare`])
/// and the volumes' folders, until `shutdown` turns true.
pub async fn run(
    s: VolumeSettings,
    listener: tokio::net::UnixListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), VolumeServiceError> {
    let prefix = &s.node.topic_prefix;
    let connect = transport::ConnectSettings {
        client_id: format!("{}-volumes", s.node.connect.client_id),
        ..s.node.connect.clone()
    };
    let (publisher, mut net) = transport::connect(
        &connect,
        vec![
            topics::volumes_filter(prefix),
            topics::mounts_filter(prefix),
        ],
        None,
        None,
    );
    let (calls_tx, mut calls) = mpsc::channel::<Call>(16);
    let server = tokio::spawn(plugin::serve(
        listener,
        s.socket.clone(),
        calls_tx,
        shutdown.clone(),
    ));
    info!(socket = %s.socket.display(), root = %s.root.display(), "Docker volume plugin listening");

    let mut m = Manager {
        registry: Registry::new(s.node.node_id.clone()),
        running: HashMap::new(),
        failed: HashMap::new(),
        publisher,
        state_file: s.node.state_dir.join("volumes.json"),
        on_broker: HashMap::new(),
        republish_at: None,
        s,
    };
    m.load();
    let present: Vec<Announcement> = m
        .registry
        .present()
        .filter(|a| !m.registry.stale().contains(&a.name))
        .cloned()
        .collect();
    for a in &present {
        m.start(a);
    }

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            Some((req, reply)) = calls.recv() => {
                let answer = m.call(req).await;
                let _ = reply.send(answer);
            }
            ev = net.recv() => match ev {
                Some(ev) => m.on_net(ev).await,
                None => break,
            },
            _ = tick.tick() => m.on_tick().await,
            _ = shutdown.changed() => break,
        }
    }
    let names: Vec<String> = m.running.keys().cloned().collect();
    for name in names {
        m.stop(&name).await;
    }
    m.publisher.disconnect().await;
    let _ = server.await;
    Ok(())
}

impl Manager {
    fn prefix(&self) -> &str {
        &self.s.node.topic_prefix
    }

    fn node(&self) -> &str {
        &self.s.node.node_id
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.s.root.join(name)
    }

    fn load(&mut self) {
        let bytes = match std::fs::read(&self.state_file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                error!(file = %self.state_file.display(), "cannot read the volume state: {e}; the broker's announcements will restore the volumes");
                return;
            }
        };
        match serde_json::from_slice::<StateFile>(&bytes) {
            Ok(st) => self.registry.restore(st.volumes, st.mounts, st.stale),
            Err(e) => {
                let aside = self.state_file.with_extension("json.bad");
                error!(file = %self.state_file.display(), "volume state is corrupt ({e}); kept as {} and starting from the broker's announcements", aside.display());
                let _ = std::fs::rename(&self.state_file, aside);
            }
        }
    }

    /// Writes the state file (temp file, fsync, rename): it must survive a crash, since
    /// containers keep their mounts while mqsync restarts.
    fn save(&self) {
        let st = StateFile {
            volumes: self.registry.announcements().cloned().collect(),
            mounts: self.registry.local_mounts().clone(),
            stale: self.registry.stale().clone(),
        };
        let write = || -> std::io::Result<()> {
            let tmp = self.state_file.with_extension("json.tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&st).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.state_file)
        };
        if let Err(e) = write() {
            error!(file = %self.state_file.display(), "cannot save the volume state: {e}");
        }
    }

    fn publish_announcement(&mut self, a: &Announcement) {
        let topic = topics::volume(self.prefix(), &a.name);
        let bytes = messages::encode_announcement(a, self.prefix(), &self.s.node.keys);
        self.publisher.publish(topic, bytes, true);
    }

    fn publish_mounts(&self) {
        let report = self.registry.mount_report(now_ms());
        let topic = topics::mounts(self.prefix(), self.node());
        let bytes = messages::encode_mounts(&report, self.prefix(), &self.s.node.keys);
        self.publisher.publish(topic, bytes, true);
    }

    async fn call(&mut self, req: Request) -> Result<Value, String> {
        match req {
            Request::Activate => Ok(json!({ "Implements": ["VolumeDriver"] })),
            Request::Capabilities => Ok(json!({ "Capabilities": { "Scope": "global" } })),
            Request::Create { name, opts } => self.create(&name, &opts).map(|()| json!({})),
            Request::Remove { name } => self.remove(&name).await.map(|()| json!({})),
            Request::Mount { name, id } => self.mount(&name, &id).await,
            Request::Unmount { name, id } => self.unmount(&name, &id).await.map(|()| json!({})),
            Request::Path { name } => match self.registry.get(&name) {
                Some(_) => Ok(json!({ "Mountpoint": self.path_of(&name) })),
                None => Err(VolumeError::NoSuchVolume(name).to_string()),
            },
            Request::Get { name } => match self.registry.get(&name) {
                Some(a) => Ok(json!({ "Volume": self.describe(a) })),
                None => Err(VolumeError::NoSuchVolume(name).to_string()),
            },
            Request::List => {
                let list: Vec<Value> = self
                    .registry
                    .present()
                    .map(|a| json!({ "Name": a.name, "Mountpoint": self.path_of(&a.name) }))
                    .collect();
                Ok(json!({ "Volumes": list }))
            }
        }
    }

    /// The `Volume` object of Get: what `docker volume inspect` shows.
    fn describe(&self, a: &Announcement) -> Value {
        let created =
            time::OffsetDateTime::from_unix_timestamp_nanos(a.created_ms as i128 * 1_000_000)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
        let mut status = json!({
            "folder": folder_id(&a.name),
            "generation": a.generation,
            "creator": a.creator,
            "mode": a.mode_on(self.node()).to_string(),
            "ignore": a.ignore.join(","),
            "mounts_here": self.registry.mount_count(&a.name),
            "mounted_on_other_nodes": self.registry.mounted_elsewhere(&a.name).join(","),
            "syncing": self.running.contains_key(&a.name),
        });
        if let Some((why, _)) = self.failed.get(&a.name) {
            status["error"] = Value::String(why.clone());
        }
        json!({
            "Name": a.name,
            "Mountpoint": self.path_of(&a.name),
            "CreatedAt": created,
            "Status": status,
        })
    }

    fn create(&mut self, name: &str, opts: &BTreeMap<String, String>) -> Result<(), String> {
        super::registry::check_name(name).map_err(|e| e.to_string())?;
        let id = folder_id(name);
        if self.s.node.folders.iter().any(|f| f.id == id) {
            return Err(VolumeError::FolderTaken {
                name: name.into(),
                id,
            }
            .to_string());
        }
        let opts = parse_options(opts).map_err(|e| e.to_string())?;
        let generation = format!("{:016x}", rand::random::<u64>());
        match self
            .registry
            .create(name, &opts, generation, now_ms())
            .map_err(|e| e.to_string())?
        {
            None => Ok(()),
            Some(a) => {
                info!(volume = name, generation = %a.generation, "volume created; announcing it");
                self.save();
                self.publish_announcement(&a);
                self.start(&a);
                Ok(())
            }
        }
    }

    async fn remove(&mut self, name: &str) -> Result<(), String> {
        let gone = self
            .registry
            .remove(name, now_ms())
            .map_err(|e| e.to_string())?;
        info!(volume = name, "volume removed; announcing it");
        self.save();
        self.publish_announcement(&gone);
        self.delete_local(name).await;
        Ok(())
    }

    async fn mount(&mut self, name: &str, id: &str) -> Result<Value, String> {
        if let Some((why, _)) = self.failed.get(name) {
            return Err(format!("volume {name} is not syncing on this node: {why}"));
        }
        let changed = self.registry.mount(name, id).map_err(|e| e.to_string())?;
        let path = self.path_of(name);
        if let Err(e) = std::fs::create_dir_all(&path) {
            let _ = self.registry.unmount(name, id);
            return Err(format!("cannot create {}: {e}", path.display()));
        }
        if changed {
            info!(
                volume = name,
                mounts = self.registry.mount_count(name),
                "mounted"
            );
            self.save();
            self.publish_mounts();
        }
        Ok(json!({ "Mountpoint": path }))
    }

    async fn unmount(&mut self, name: &str, id: &str) -> Result<(), String> {
        let (changed, deferred) = self.registry.unmount(name, id);
        if changed {
            info!(
                volume = name,
                mounts = self.registry.mount_count(name),
                "unmounted"
            );
            self.save();
            self.publish_mounts();
        }
        match deferred {
            Some(Change::Remove(a)) => {
                info!(volume = name, by = %a.node, "last local mount gone; carrying out the removal");
                self.delete_local(name).await;
            }
            Some(Change::Replace(a)) => {
                info!(volume = name, generation = %a.generation, "last local mount gone; replacing the old generation");
                self.delete_local(name).await;
                self.start(&a);
            }
            _ => {}
        }
        Ok(())
    }

    /// Starts the volume's folder unless it runs already.
    fn start(&mut self, a: &Announcement) {
        if self.running.contains_key(&a.name) {
            return;
        }
        let path = self.path_of(&a.name);
        if let Err(e) = std::fs::create_dir_all(&path) {
            warn!(volume = %a.name, "cannot create {}: {e}", path.display());
        }
        let folder = FolderConfig {
            id: folder_id(&a.name),
            path,
            // Made above: the volume's directory is the plugin's own.
            create: true,
            mode: a.mode_on(self.node()),
            ignore: a.ignore.clone(),
            debounce_ms: DEFAULT_DEBOUNCE_MS,
            max_delete_percent: DEFAULT_MAX_DELETE_PERCENT,
            tombstone_days: DEFAULT_TOMBSTONE_DAYS,
            on_change: None,
            compression: Default::default(),
            ownership: a.ownership,
            xattrs: a.xattrs,
            // A volume lives on this node's own disk, under volumes_root: inotify.
            watch: Default::default(),
            poll_interval_s: DEFAULT_POLL_INTERVAL_S,
        };
        let (stop, stopped) = watch::channel(false);
        match node::spawn_folder(&self.s.node, &node::folder_settings(&folder), stopped) {
            Ok(task) => {
                self.failed.remove(&a.name);
                self.running.insert(
                    a.name.clone(),
                    Running {
                        generation: a.generation.clone(),
                        stop,
                        task,
                    },
                );
            }
            Err(e) => {
                error!(volume = %a.name, "cannot start syncing the volume: {e}");
                self.failed
                    .insert(a.name.clone(), (e.to_string(), Instant::now()));
            }
        }
    }

    async fn stop(&mut self, name: &str) {
        let Some(r) = self.running.remove(name) else {
            return;
        };
        let _ = r.stop.send(true);
        if tokio::time::timeout(STOP_TIMEOUT, r.task).await.is_err() {
            warn!(volume = name, "folder did not stop in time");
        }
    }

    /// Stops the volume's folder and deletes its copy, index and retained status.
    async fn delete_local(&mut self, name: &str) {
        self.stop(name).await;
        self.failed.remove(name);
        let path = self.path_of(name);
        let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("{}: {e}", path.display()))
            }
            _ => Ok(()),
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = removed {
            error!(volume = name, "cannot delete the volume's copy: {e}");
        }
        let id = folder_id(name);
        if let Err(e) = node::forget_folder(&self.s.node.state_dir, &id) {
            error!(volume = name, "cannot delete the volume's index: {e}");
        }
        let status = Topics::new(self.prefix(), &id).status(self.node());
        // An empty retained message clears the folder's status from `mqsync status`.
        self.publisher.publish(status, Vec::new(), true);
        info!(volume = name, "volume deleted on this node");
    }

    async fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Connected => {
                self.republish_at = Some(Instant::now() + REPUBLISH_AFTER);
                self.publish_mounts();
            }
            NetEvent::Disconnected { reason, .. } => {
                warn!("volume service lost the broker: {reason}");
            }
            NetEvent::PacketLimit(Some(report)) => error!("volume service: {report}"),
            NetEvent::PacketLimit(None) => {}
            NetEvent::Message { topic, payload } => {
                let prefix = self.prefix().to_string();
                if topics::volume_name(&prefix, &topic).is_some() {
                    if payload.is_empty() {
                        // A cleared announcement: the nodes' own records stand (and are
                        // republished at the next connect).
                        return;
                    }
                    match messages::decode_announcement(&payload, &topic, &self.s.node.keys) {
                        Ok(a) => self.on_announcement(a).await,
                        Err(e) => drop_message(&topic, &e),
                    }
                } else if let Some(node) = topics::mounts_node(&prefix, &topic) {
                    match messages::decode_mounts(&payload, &topic, &self.s.node.keys) {
                        Ok(r) => self.registry.merge_mounts(node, r),
                        Err(e) => drop_message(&topic, &e),
                    }
                }
            }
        }
    }

    async fn on_announcement(&mut self, a: Announcement) {
        let stamp = (a.updated_ms, a.node.clone());
        let seen = self
            .on_broker
            .entry(a.name.clone())
            .or_insert((0, String::new()));
        if stamp > *seen {
            *seen = stamp;
        }
        let name = a.name.clone();
        let Some(change) = self.registry.merge(a) else {
            return;
        };
        self.save();
        match change {
            Change::Start(a) => {
                info!(volume = %a.name, by = %a.creator, "volume announced; syncing it");
                self.start(&a);
            }
            Change::Replace(a) => {
                info!(volume = %a.name, generation = %a.generation, "volume was removed and created again; replacing the local copy");
                self.delete_local(&name).await;
                self.start(&a);
            }
            Change::Remove(a) => {
                info!(volume = %a.name, by = %a.node, "volume removed");
                self.delete_local(&name).await;
            }
            Change::ReplaceDeferred(a) => {
                warn!(volume = %a.name, generation = %a.generation, mounts = self.registry.mount_count(&name), "volume was removed and created again elsewhere while mounted here; keeping the old copy (no longer synced) until the last container unmounts");
                self.stop(&name).await;
            }
            Change::RemoveDeferred(a) => {
                warn!(volume = %a.name, by = %a.node, mounts = self.registry.mount_count(&name), "volume removed on another node but mounted here; deleting it when the last container unmounts");
                self.stop(&name).await;
            }
        }
    }

    async fn on_tick(&mut self) {
        if self.republish_at.is_some_and(|t| Instant::now() >= t) {
            self.republish_at = None;
            let stale: Vec<Announcement> = self
                .registry
                .announcements()
                .filter(|a| {
                    self.on_broker
                        .get(&a.name)
                        .is_none_or(|seen| *seen < (a.updated_ms, a.node.clone()))
                })
                .cloned()
                .collect();
            for a in stale {
                info!(volume = %a.name, "the broker lacks this volume's announcement; republishing it");
                self.publish_announcement(&a);
            }
        }
        // A volume's folder that stopped on its own (an error) is restarted.
        let ended: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| r.task.is_finished())
            .map(|(n, _)| n.clone())
            .collect();
        for name in ended {
            if let Some(r) = self.running.remove(&name) {
                let why = match r.task.await {
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(())) => "its connection closed".to_string(),
                    Err(e) => e.to_string(),
                };
                warn!(volume = %name, generation = %r.generation, "the volume's folder stopped ({why}); restarting it in {} s", RESTART_DELAY.as_secs());
                self.failed.insert(name, (why, Instant::now()));
            }
        }
        let retry: Vec<Announcement> = self
            .failed
            .iter()
            .filter(|(_, (_, at))| at.elapsed() >= RESTART_DELAY)
            .filter_map(|(n, _)| self.registry.get(n).cloned())
            .collect();
        for a in retry {
            self.failed.remove(&a.name);
            self.start(&a);
        }
    }
}

fn drop_message(topic: &str, e: &MessageError) {
    warn!(%topic, "dropping volume message: {e}");
}
