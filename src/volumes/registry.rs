//! What a node knows about Docker volumes, as pure logic: the latest announcement of
//! every volume (last writer wins, removals kept as tombstones), the containers that
//! mount each volume here, and the mount reports of the other nodes. The manager feeds
//! it requests and messages and carries out the changes it returns.

use crate::engine::Mode;
use crate::fs::attrs::Ownership;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Longest volume name: the folder id `vol.NAME` must fit in 64 characters.
pub const MAX_NAME_LEN: usize = 60;
/// Most containers one volume may be mounted by on one node (bounds the state file).
pub const MAX_MOUNTS_PER_VOLUME: usize = 4096;

/// The retained, signed document on `{prefix}/v1/volumes/{name}`: the volume exists
/// (with these settings) or was removed. The newest by `(updated_ms, node)` wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub name: String,
    /// Random hex id of this incarnation: a volume removed and created again under the
    /// same name is a new generation, and old copies are wiped, not merged into it.
    pub generation: String,
    pub present: bool,
    /// `send-receive`, or `receive-only` (only `creator` writes; the others replicate).
    pub mode: Mode,
    pub ignore: Vec<String>,
    /// Whether owners are kept (`-o ownership=`). Absent from documents of earlier
    /// versions, which read as the default; they ignore it in newer documents.
    #[serde(default)]
    pub ownership: Ownership,
    /// Whether extended attributes and ACLs are kept (`-o xattrs=true`).
    #[serde(default)]
    pub xattrs: bool,
    /// The node whose `docker volume create` made this generation.
    pub creator: String,
    pub created_ms: u64,
    /// The node that published this state (creator, or the node that removed it).
    pub node: String,
    pub updated_ms: u64,
}

impl Announcement {
    fn stamp(&self) -> (u64, &str, &str) {
        (self.updated_ms, &self.node, &self.generation)
    }

    /// This node's folder mode for the volume.
    pub fn mode_on(&self, node: &str) -> Mode {
        if self.creator == node {
            Mode::SendReceive
        } else {
            self.mode
        }
    }
}

/// The retained, signed document on `{prefix}/v1/volume-mounts/{node}`: which volumes
/// that node's containers mount, and how many containers mount each.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MountReport {
    pub node: String,
    pub mounted: BTreeMap<String, usize>,
    pub updated_ms: u64,
}

/// Options of `docker volume create -o KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeOptions {
    pub mode: Option<Mode>,
    pub ignore: Option<Vec<String>>,
    pub ownership: Option<Ownership>,
    pub xattrs: Option<bool>,
}

/// Why a request was refused; the text is what `docker` prints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    #[error(
        "invalid volume name {0:?}: 1 to {MAX_NAME_LEN} characters of A-Z, a-z, 0-9, '_', '.' and '-', starting with a letter or digit"
    )]
    BadName(String),
    #[error("unknown option {0:?} (mqsync volumes take mode, ignore, ownership and xattrs)")]
    UnknownOption(String),
    #[error("option ownership={0:?}: expected names, numeric or none")]
    BadOwnership(String),
    #[error("option xattrs={0:?}: expected true or false")]
    BadXattrs(String),
    #[error("option mode={0:?}: expected send-receive or receive-only")]
    BadMode(String),
    #[error("option ignore: {0}")]
    BadIgnore(String),
    #[error("volume {name} exists with other options ({existing}); remove it first")]
    OptionsDiffer { name: String, existing: String },
    #[error("no such volume: {0}")]
    NoSuchVolume(String),
    #[error("volume {0} is mounted by containers on this node; stop them first")]
    MountedHere(String),
    #[error("volume {name} is mounted on node(s) {nodes}; stop the containers there first")]
    MountedElsewhere { name: String, nodes: String },
    #[error("volume {0} is mounted by too many containers")]
    TooManyMounts(String),
    #[error(
        "volume {0} was removed and created again elsewhere while containers here mount the old one; it is replaced when they stop"
    )]
    Stale(String),
    #[error("volume {name} is taken by the configured folder {id}")]
    FolderTaken { name: String, id: String },
}

/// Checks a Docker volume name.
pub fn check_name(name: &str) -> Result<(), VolumeError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(VolumeError::BadName(name.chars().take(80).collect()))
    }
}

/// The folder id of a volume: it names the volume's topics, index and status.
pub fn folder_id(name: &str) -> String {
    format!("vol.{name}")
}

/// Parses `-o` options.
pub fn parse_options(opts: &BTreeMap<String, String>) -> Result<VolumeOptions, VolumeError> {
    let mut out = VolumeOptions::default();
    for (k, v) in opts {
        match k.as_str() {
            "mode" => {
                out.mode = Some(match v.as_str() {
                    "send-receive" => Mode::SendReceive,
                    "receive-only" => Mode::ReceiveOnly,
                    _ => return Err(VolumeError::BadMode(v.clone())),
                })
            }
            "ignore" => {
                let globs: Vec<String> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(str::to_string)
                    .collect();
                crate::fs::ignore::Ignore::new(&globs)
                    .map_err(|e| VolumeError::BadIgnore(e.to_string()))?;
                out.ignore = Some(globs);
            }
            "ownership" => {
                out.ownership = Some(
                    v.parse()
                        .map_err(|_| VolumeError::BadOwnership(v.chars().take(80).collect()))?,
                )
            }
            "xattrs" => {
                out.xattrs = Some(match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(VolumeError::BadXattrs(v.chars().take(80).collect())),
                })
            }
            _ => return Err(VolumeError::UnknownOption(k.chars().take(80).collect())),
        }
    }
    Ok(out)
}

/// What the manager must do after a change of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Start syncing this volume (create its directory).
    Start(Announcement),
    /// The volume was removed and created again: drop the local copy and index of the
    /// old generation, then start the new one.
    Replace(Announcement),
    /// Stop syncing and delete the local copy and index.
    Remove(Announcement),
    /// The volume was removed elsewhere but containers here still mount it: keep it
    /// until the last one unmounts.
    RemoveDeferred(Announcement),
    /// A new generation arrived while containers here still mount the old one: keep the
    /// old copy under them (stopped) until the last one unmounts, then replace it.
    ReplaceDeferred(Announcement),
}

/// The state of all volumes as one node sees it.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    node: String,
    volumes: BTreeMap<String, Announcement>,
    mounts: BTreeMap<String, BTreeSet<String>>,
    remote: BTreeMap<String, MountReport>,
    /// Volumes whose local copy is of an older generation, kept for its mounts.
    stale: BTreeSet<String>,
}

impl Registry {
    pub fn new(node: String) -> Self {
        Registry {
            node,
            ..Registry::default()
        }
    }

    /// Restores what the state file held.
    pub fn restore(
        &mut self,
        volumes: Vec<Announcement>,
        mounts: BTreeMap<String, BTreeSet<String>>,
        stale: BTreeSet<String>,
    ) {
        for a in volumes {
            self.volumes.insert(a.name.clone(), a);
        }
        self.mounts = mounts;
        self.mounts.retain(|_, ids| !ids.is_empty());
        self.stale = stale;
        self.stale.retain(|name| self.mounts.contains_key(name));
    }

    /// Volumes whose local copy is an older generation kept for its mounts: not synced.
    pub fn stale(&self) -> &BTreeSet<String> {
        &self.stale
    }

    /// Every known announcement, removals included (for the state file and for
    /// republishing after a broker lost its retained messages).
    pub fn announcements(&self) -> impl Iterator<Item = &Announcement> {
        self.volumes.values()
    }

    /// The volumes that exist.
    pub fn present(&self) -> impl Iterator<Item = &Announcement> {
        self.volumes.values().filter(|a| a.present)
    }

    pub fn get(&self, name: &str) -> Option<&Announcement> {
        self.volumes.get(name).filter(|a| a.present)
    }

    pub fn local_mounts(&self) -> &BTreeMap<String, BTreeSet<String>> {
        &self.mounts
    }

    pub fn mount_count(&self, name: &str) -> usize {
        self.mounts.get(name).map_or(0, BTreeSet::len)
    }

    /// Nodes other than this one that report `name` mounted.
    pub fn mounted_elsewhere(&self, name: &str) -> Vec<&str> {
        self.remote
            .values()
            .filter(|r| r.node != self.node && r.mounted.get(name).is_some_and(|&n| n > 0))
            .map(|r| r.node.as_str())
            .collect()
    }

    /// This node's mount report.
    pub fn mount_report(&self, now_ms: u64) -> MountReport {
        MountReport {
            node: self.node.clone(),
            mounted: self
                .mounts
                .iter()
                .map(|(name, ids)| (name.clone(), ids.len()))
                .collect(),
            updated_ms: now_ms,
        }
    }

    /// `docker volume create`: a new generation, or nothing when the volume exists
    /// with compatible options.
    pub fn create(
        &mut self,
        name: &str,
        opts: &VolumeOptions,
        generation: String,
        now_ms: u64,
    ) -> Result<Option<Announcement>, VolumeError> {
        check_name(name)?;
        if let Some(a) = self.get(name) {
            let same_mode = opts.mode.is_none_or(|m| m == a.mode);
            let same_ignore = opts.ignore.as_ref().is_none_or(|i| *i == a.ignore);
            let same_owners = opts.ownership.is_none_or(|o| o == a.ownership)
                && opts.xattrs.is_none_or(|x| x == a.xattrs);
            if same_mode && same_ignore && same_owners {
                return Ok(None);
            }
            return Err(VolumeError::OptionsDiffer {
                name: name.into(),
                existing: format!(
                    "mode={} ignore={} ownership={} xattrs={}",
                    a.mode,
                    a.ignore.join(","),
                    a.ownership,
                    a.xattrs
                ),
            });
        }
        // Later than any earlier state of the name, whatever this node's clock says.
        let updated_ms = self
            .volumes
            .get(name)
            .map_or(now_ms, |old| now_ms.max(old.updated_ms + 1));
        let a = Announcement {
            name: name.into(),
            generation,
            present: true,
            mode: opts.mode.unwrap_or(Mode::SendReceive),
            ignore: opts.ignore.clone().unwrap_or_default(),
            ownership: opts.ownership.unwrap_or_default(),
            xattrs: opts.xattrs.unwrap_or(false),
            creator: self.node.clone(),
            created_ms: updated_ms,
            node: self.node.clone(),
            updated_ms,
        };
        self.volumes.insert(name.into(), a.clone());
        Ok(Some(a))
    }

    /// `docker volume rm`: refused while any node mounts the volume.
    pub fn remove(&mut self, name: &str, now_ms: u64) -> Result<Announcement, VolumeError> {
        let Some(a) = self.get(name) else {
            return Err(VolumeError::NoSuchVolume(name.into()));
        };
        if self.mount_count(name) > 0 {
            return Err(VolumeError::MountedHere(name.into()));
        }
        let nodes = self.mounted_elsewhere(name);
        if !nodes.is_empty() {
            return Err(VolumeError::MountedElsewhere {
                name: name.into(),
                nodes: nodes.join(", "),
            });
        }
        let removed = Announcement {
            present: false,
            node: self.node.clone(),
            updated_ms: now_ms.max(a.updated_ms + 1),
            ..a.clone()
        };
        self.volumes.insert(name.into(), removed.clone());
        Ok(removed)
    }

    /// A container mounts the volume; `true` when the mount report changed.
    pub fn mount(&mut self, name: &str, id: &str) -> Result<bool, VolumeError> {
        if self.get(name).is_none() {
            return Err(VolumeError::NoSuchVolume(name.into()));
        }
        if self.stale.contains(name) {
            return Err(VolumeError::Stale(name.into()));
        }
        let ids = self.mounts.entry(name.into()).or_default();
        if ids.len() >= MAX_MOUNTS_PER_VOLUME && !ids.contains(id) {
            return Err(VolumeError::TooManyMounts(name.into()));
        }
        Ok(ids.insert(id.into()))
    }

    /// A container unmounts it. Returns whether the report changed, and what was
    /// deferred while the volume was mounted here (a removal or a new generation), to
    /// carry out now that the last container is gone.
    pub fn unmount(&mut self, name: &str, id: &str) -> (bool, Option<Change>) {
        let Some(ids) = self.mounts.get_mut(name) else {
            return (false, None);
        };
        let changed = ids.remove(id);
        if !ids.is_empty() {
            return (changed, None);
        }
        self.mounts.remove(name);
        let stale = self.stale.remove(name);
        let deferred = self
            .volumes
            .get(name)
            .and_then(|a| match (a.present, stale) {
                (false, _) => Some(Change::Remove(a.clone())),
                (true, true) => Some(Change::Replace(a.clone())),
                (true, false) => None,
            });
        (changed, deferred)
    }

    /// Takes an announcement from the broker; returns what to do, if anything.
    pub fn merge(&mut self, a: Announcement) -> Option<Change> {
        let old = self.volumes.get(&a.name);
        if old.is_some_and(|old| old.stamp() >= a.stamp()) {
            return None;
        }
        let change = match (old, a.present) {
            (Some(old), true) if old.present && old.generation != a.generation => {
                Some(if self.mount_count(&a.name) > 0 {
                    self.stale.insert(a.name.clone());
                    Change::ReplaceDeferred(a.clone())
                } else {
                    Change::Replace(a.clone())
                })
            }
            (Some(old), true) if old.present => None,
            (_, true) => Some(Change::Start(a.clone())),
            (Some(old), false) if old.present => Some(if self.mount_count(&a.name) > 0 {
                Change::RemoveDeferred(a.clone())
            } else {
                Change::Remove(a.clone())
            }),
            (_, false) => None,
        };
        self.volumes.insert(a.name.clone(), a);
        change
    }

    /// Takes another node's mount report (`None`: the retained report was cleared).
    pub fn merge_mounts(&mut self, node: &str, report: Option<MountReport>) {
        if node == self.node {
            return;
        }
        match report {
            Some(r) => {
                self.remote.insert(node.into(), r);
            }
            None => {
                self.remote.remove(node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Volume "demo" with the default options, created on `r`: its announcement.
    fn created(r: &mut Registry, generation: &str, ms: u64) -> Announcement {
        r.create("demo", &opts(), generation.into(), ms)
            .unwrap()
            .unwrap()
    }

    fn opts() -> VolumeOptions {
        VolumeOptions::default()
    }

    #[test]
    fn names() {
        for good in ["demo", "a", "My_vol-1.2", &"x".repeat(MAX_NAME_LEN)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            "a/b",
            "a b",
            "a+b",
            "a#",
            "é",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(folder_id("demo"), "vol.demo");
    }

    #[test]
    fn options() {
        let mut o = BTreeMap::new();
        o.insert("mode".to_string(), "receive-only".to_string());
        o.insert("ignore".to_string(), "*.tmp, cache/**".to_string());
        let p = parse_options(&o).unwrap();
        assert_eq!(p.mode, Some(Mode::ReceiveOnly));
        assert_eq!(p.ignore.unwrap(), vec!["*.tmp", "cache/**"]);
        o.insert("mode".into(), "send-only".into());
        assert!(matches!(parse_options(&o), Err(VolumeError::BadMode(_))));
        o.remove("mode");
        o.insert("ignore".into(), "a[".into());
        assert!(matches!(parse_options(&o), Err(VolumeError::BadIgnore(_))));
        let mut o = BTreeMap::new();
        o.insert("ownership".to_string(), "numeric".to_string());
        o.insert("xattrs".to_string(), "true".to_string());
        let p = parse_options(&o).unwrap();
        assert_eq!(p.ownership, Some(Ownership::Numeric));
        assert_eq!(p.xattrs, Some(true));
        o.insert("xattrs".into(), "yes".into());
        assert!(matches!(parse_options(&o), Err(VolumeError::BadXattrs(_))));
        o.insert("xattrs".into(), "false".into());
        o.insert("ownership".into(), "by-name".into());
        assert!(matches!(
            parse_options(&o),
            Err(VolumeError::BadOwnership(_))
        ));
        let mut o = BTreeMap::new();
        o.insert("size".to_string(), "1G".to_string());
        assert!(matches!(
            parse_options(&o),
            Err(VolumeError::UnknownOption(_))
        ));
    }

    #[test]
    fn create_is_idempotent_and_options_must_match() {
        let mut r = Registry::new("n1".into());
        let a = created(&mut r, "g1", 10);
        assert!(a.present);
        assert_eq!(a.creator, "n1");
        assert_eq!(r.create("demo", &opts(), "g2".into(), 11), Ok(None));
        let ro = VolumeOptions {
            mode: Some(Mode::ReceiveOnly),
            ..opts()
        };
        assert!(matches!(
            r.create("demo", &ro, "g3".into(), 12),
            Err(VolumeError::OptionsDiffer { .. })
        ));
        assert_eq!(r.present().count(), 1);
        assert_eq!(a.mode_on("n1"), Mode::SendReceive);
        assert_eq!(
            Announcement {
                mode: Mode::ReceiveOnly,
                ..a.clone()
            }
            .mode_on("n2"),
            Mode::ReceiveOnly
        );
    }

    #[test]
    fn remove_is_refused_while_mounted_anywhere() {
        let mut r = Registry::new("n1".into());
        r.create("demo", &opts(), "g1".into(), 10).unwrap();
        assert_eq!(r.mount("demo", "c1"), Ok(true));
        assert_eq!(r.mount("demo", "c1"), Ok(false));
        assert_eq!(
            r.remove("demo", 20),
            Err(VolumeError::MountedHere("demo".into()))
        );
        assert_eq!(r.unmount("demo", "c1"), (true, None));
        let mut report = MountReport {
            node: "n2".into(),
            ..Default::default()
        };
        report.mounted.insert("demo".into(), 2);
        r.merge_mounts("n2", Some(report));
        assert!(matches!(
            r.remove("demo", 20),
            Err(VolumeError::MountedElsewhere { ref nodes, .. }) if nodes == "n2"
        ));
        r.merge_mounts("n2", None);
        let gone = r.remove("demo", 5).unwrap();
        assert!(!gone.present);
        assert!(gone.updated_ms > 10, "a removal is newer than the creation");
        assert!(r.get("demo").is_none());
        assert_eq!(
            r.remove("demo", 30),
            Err(VolumeError::NoSuchVolume("demo".into()))
        );
        assert_eq!(
            r.mount("demo", "c2"),
            Err(VolumeError::NoSuchVolume("demo".into()))
        );
        // Created again: a later stamp than the removal, even with a clock behind it.
        let again = created(&mut r, "g2", 1);
        assert!(again.updated_ms > gone.updated_ms);
    }

    #[test]
    fn merge_is_last_writer_wins() {
        let mut creator = Registry::new("n1".into());
        let a = created(&mut creator, "g1", 10);
        let mut r = Registry::new("n2".into());
        assert_eq!(r.merge(a.clone()), Some(Change::Start(a.clone())));
        assert_eq!(r.merge(a.clone()), None, "duplicates change nothing");
        let gone = creator.remove("demo", 20).unwrap();
        assert_eq!(r.merge(gone.clone()), Some(Change::Remove(gone.clone())));
        assert_eq!(r.merge(a.clone()), None, "an older state is ignored");
        assert!(r.get("demo").is_none());
        let again = created(&mut creator, "g2", 30);
        assert_eq!(r.merge(again.clone()), Some(Change::Start(again.clone())));
        // A node that missed the removal sees a new generation replace its copy.
        let mut late = Registry::new("n3".into());
        late.merge(a.clone());
        assert_eq!(late.merge(again.clone()), Some(Change::Replace(again)));
    }

    #[test]
    fn a_removal_waits_for_local_mounts() {
        let mut creator = Registry::new("n1".into());
        let a = created(&mut creator, "g1", 10);
        let mut r = Registry::new("n2".into());
        r.merge(a);
        r.mount("demo", "c1").unwrap();
        let gone = creator.remove("demo", 20).unwrap();
        assert_eq!(
            r.merge(gone.clone()),
            Some(Change::RemoveDeferred(gone.clone()))
        );
        assert_eq!(r.unmount("demo", "c1"), (true, Some(Change::Remove(gone))));
        assert!(r.local_mounts().is_empty());
    }

    #[test]
    fn a_new_generation_waits_for_local_mounts_of_the_old_one() {
        let mut creator = Registry::new("n1".into());
        let a = created(&mut creator, "g1", 10);
        let mut r = Registry::new("n2".into());
        r.merge(a);
        r.mount("demo", "c1").unwrap();
        // n2 missed the removal; the new generation arrives while c1 mounts the old.
        creator.remove("demo", 20).unwrap();
        let again = created(&mut creator, "g2", 30);
        assert_eq!(
            r.merge(again.clone()),
            Some(Change::ReplaceDeferred(again.clone()))
        );
        assert_eq!(
            r.mount("demo", "c2"),
            Err(VolumeError::Stale("demo".into()))
        );
        assert_eq!(
            r.unmount("demo", "c1"),
            (true, Some(Change::Replace(again)))
        );
        assert_eq!(r.mount("demo", "c2"), Ok(true));
        assert_eq!(r.unmount("demo", "c2"), (true, None));
    }

    #[test]
    fn own_mount_reports_are_not_remote() {
        let mut r = Registry::new("n1".into());
        r.create("demo", &opts(), "g1".into(), 10).unwrap();
        let mut mine = MountReport {
            node: "n1".into(),
            ..Default::default()
        };
        mine.mounted.insert("demo".into(), 1);
        r.merge_mounts("n1", Some(mine));
        assert!(r.mounted_elsewhere("demo").is_empty());
        assert!(r.remove("demo", 20).is_ok());
    }
}
