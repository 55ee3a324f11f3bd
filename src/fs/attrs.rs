//! Owner, group and extended attributes on disk, as a folder keeps them (`ownership`,
//! `xattrs`): read for the scanner, written by the applier on the temp file before it
//! is renamed into place. Names map to ids through this node's /etc/passwd and
//! /etc/group, read directly (a `FROM scratch` image has no NSS), like rsync's mapping.

use crate::engine::{Attrs, Owner, SharedAttrs, Xattr};
use crate::protocol::wire::extension::{MAX_XATTR_BYTES, MAX_XATTRS, synced_xattr_name};
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How a folder keeps who owns its files (`ownership`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Ownership {
    /// Owner and group travel as names and ids; a receiver maps the names to its own
    /// ids, or takes the id when it has no such name (as `rsync -a` run as root).
    #[default]
    Names,
    /// Owner and group travel as numeric ids only (`rsync --numeric-ids`).
    Numeric,
    /// Not kept: received files belong to the daemon's user.
    None,
}

impl std::fmt::Display for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ownership::Names => "names",
            Ownership::Numeric => "numeric",
            Ownership::None => "none",
        })
    }
}

impl std::str::FromStr for Ownership {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "names" => Ok(Ownership::Names),
            "numeric" => Ok(Ownership::Numeric),
            "none" => Ok(Ownership::None),
            other => Err(format!(
                "unknown ownership {other:?} (expected \"names\", \"numeric\" or \"none\")"
            )),
        }
    }
}

/// What a folder keeps besides contents and permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Keep {
    pub ownership: Ownership,
    pub xattrs: bool,
    /// Owners are not read here (`ownership = "none"`, or a daemon that is not root
    /// and cannot set them): a path changed here keeps the owner its entry names, so
    /// that this node's own user never travels as a change of owner.
    pub carry_owner: bool,
}

impl Keep {
    /// The attributes of a path with metadata `md` (`full`: its path, not followed).
    pub fn read(&self, full: &Path, md: &std::fs::Metadata) -> SharedAttrs {
        let owner = match self.ownership {
            Ownership::None => None,
            o => Some(Owner {
                uid: md.uid(),
                gid: md.gid(),
                user: (o == Ownership::Names)
                    .then(|| names().user_name(md.uid()))
                    .flatten(),
                group: (o == Ownership::Names)
                    .then(|| names().group_name(md.gid()))
                    .flatten(),
            }),
        };
        let xattrs = self.xattrs.then(|| read_xattrs(full));
        Attrs { owner, xattrs }.shared()
    }

    /// `seen` (just read from disk) as the engine should take it, given `known`, the
    /// confirmed entry's attributes (perhaps from another node): an owner that maps to
    /// the same ids here is kept as named (a name with other ids on this node, or a
    /// number fallen back to, is no change), and what this node does not read (see
    /// `carry_owner`; attributes when it does not keep them) is carried over, so that
    /// a node that does not keep them never sends them away.
    pub fn settle(&self, seen: SharedAttrs, known: &SharedAttrs) -> SharedAttrs {
        let Some(k) = known else {
            return seen;
        };
        let s = seen.as_deref().cloned().unwrap_or_default();
        let owner = match (s.owner, &k.owner) {
            (None, Some(ko)) if self.carry_owner => Some(ko.clone()),
            (Some(so), Some(ko)) if so != *ko && self.local_ids(ko) == (so.uid, so.gid) => {
                Some(ko.clone())
            }
            (o, _) => o,
        };
        let xattrs = match (s.xattrs, &k.xattrs) {
            (None, Some(kx)) if !self.xattrs => Some(kx.clone()),
            (x, _) => x,
        };
        Attrs { owner, xattrs }.shared()
    }

    /// The ids `owner` stands for on this node.
    pub fn local_ids(&self, owner: &Owner) -> (u32, u32) {
        if self.ownership != Ownership::Names {
            return (owner.uid, owner.gid);
        }
        let n = names();
        (
            owner
                .user
                .as_deref()
                .and_then(|u| n.uid(u))
                .unwrap_or(owner.uid),
            owner
                .group
                .as_deref()
                .and_then(|g| n.gid(g))
                .unwrap_or(owner.gid),
        )
    }

    /// Gives the open file or directory `fd` the owner and attributes of `attrs` that
    /// this folder keeps. `chown`: the daemon may change owners (it runs as root).
    /// `replaced`: the owner of the file `fd` replaces, kept when `attrs` names none
    /// (its author does not keep owners, or runs the previous version).
    /// Before the permission bits are set: a chown clears set-id bits.
    pub fn apply_fd(
        &self,
        fd: impl AsFd,
        attrs: &SharedAttrs,
        chown: bool,
        replaced: Option<(u32, u32)>,
    ) -> std::io::Result<()> {
        let owner = attrs.as_ref().and_then(|a| a.owner.as_ref());
        let ids = owner.map(|o| self.local_ids(o)).or(replaced);
        if let (Some((u, g)), true) = (ids, chown && self.ownership != Ownership::None) {
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(u)),
                Some(rustix::fs::Gid::from_raw(g)),
            )?;
        }
        let Some(a) = attrs else {
            return Ok(());
        };
        if let (Some(want), true) = (&a.xattrs, self.xattrs) {
            let mut buf = vec![0u8; MAX_XATTR_BYTES];
            let n = match rustix::fs::flistxattr(&fd, &mut buf[..]) {
                Ok(n) => n,
                Err(rustix::io::Errno::NOTSUP) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            for name in names_in(&buf[..n]) {
                if !want.iter().any(|x| x.name == name) {
                    rustix::fs::fremovexattr(&fd, name)?;
                }
            }
            for x in want {
                match rustix::fs::fsetxattr(
                    &fd,
                    &*x.name,
                    &x.value,
                    rustix::fs::XattrFlags::empty(),
                ) {
                    Ok(()) => {}
                    // `security.*` and ACLs need privileges or support this node may
                    // lack: the rest is still kept.
                    Err(rustix::io::Errno::PERM | rustix::io::Errno::NOTSUP)
                        if !x.name.starts_with("user.") =>
                    {
                        tracing::debug!("extended attribute {} not set", x.name);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Gives the symlink `name` in directory `dir` its owner, or that of the link it
    /// replaces (as [`Keep::apply_fd`]); links hold no `user.*` attributes, and their
    /// permission bits mean nothing.
    pub fn apply_link(
        &self,
        dir: impl AsFd,
        name: &str,
        attrs: &SharedAttrs,
        chown: bool,
        replaced: Option<(u32, u32)>,
    ) -> std::io::Result<()> {
        let owner = attrs.as_ref().and_then(|a| a.owner.as_ref());
        let Some((u, g)) = owner.map(|o| self.local_ids(o)).or(replaced) else {
            return Ok(());
        };
        if !chown || self.ownership == Ownership::None {
            return Ok(());
        }
        rustix::fs::chownat(
            dir,
            name,
            Some(rustix::fs::Uid::from_raw(u)),
            Some(rustix::fs::Gid::from_raw(g)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }
}

/// Whether this process may give files to other users (it runs as root).
pub fn may_chown() -> bool {
    rustix::process::geteuid().is_root()
}

/// The synced attributes of `full` (not followed), sorted by name, at most
/// [`MAX_XATTRS`] and [`MAX_XATTR_BYTES`] in all: more are left out and logged.
fn read_xattrs(full: &Path) -> Vec<Xattr> {
    let mut buf = vec![0u8; MAX_XATTR_BYTES];
    let Ok(n) = rustix::fs::llistxattr(full, &mut buf[..]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut total = 0;
    let mut value = vec![0u8; MAX_XATTR_BYTES];
    for name in names_in(&buf[..n]).filter(|n| synced_xattr_name(n)) {
        let Ok(len) = rustix::fs::lgetxattr(full, name, &mut value[..]) else {
            continue;
        };
        if out.len() == MAX_XATTRS || total + len > MAX_XATTR_BYTES {
            tracing::warn!(path = %full.display(), "extended attribute {name} not synced: more than {MAX_XATTRS} attributes or {MAX_XATTR_BYTES} bytes");
            continue;
        }
        total += len;
        out.push(Xattr {
            name: name.to_string(),
            value: value[..len].to_vec(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The UTF-8 names of a `listxattr` answer (NUL-separated).
fn names_in(list: &[u8]) -> impl Iterator<Item = &str> {
    list.split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .filter_map(|n| std::str::from_utf8(n).ok())
}

/// Users and groups of this node, from /etc/passwd and /etc/group.
#[derive(Default)]
pub struct Names {
    users: HashMap<u32, String>,
    uids: HashMap<String, u32>,
    groups: HashMap<u32, String>,
    gids: HashMap<String, u32>,
}

/// How long the files read are trusted: a user added while the daemon runs is
/// known within this time.
const NAMES_FRESH: Duration = Duration::from_secs(5);

/// This node's names, read again when older than [`NAMES_FRESH`].
pub fn names() -> std::sync::Arc<Names> {
    static CACHE: Mutex<Option<(Instant, std::sync::Arc<Names>)>> = Mutex::new(None);
    let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, n)) = &*c
        && at.elapsed() < NAMES_FRESH
    {
        return n.clone();
    }
    let n = std::sync::Arc::new(Names::read(Path::new("/etc")));
    *c = Some((Instant::now(), n.clone()));
    n
}

impl Names {
    /// The passwd and group files in `etc`; missing files hold no names.
    pub fn read(etc: &Path) -> Names {
        let table = |file: &str| -> Vec<(String, u32)> {
            std::fs::read_to_string(etc.join(file))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let mut f = l.split(':');
                    let name = f.next()?.to_string();
                    let id: u32 = f.nth(1)?.parse().ok()?;
                    (!name.is_empty() && !name.starts_with('#') && id != u32::MAX)
                        .then_some((name, id))
                })
                .collect()
        };
        let mut n = Names::default();
        for (name, id) in table("passwd") {
            n.users.entry(id).or_insert_with(|| name.clone());
            n.uids.entry(name).or_insert(id);
        }
        for (name, id) in table("group") {
            n.groups.entry(id).or_insert_with(|| name.clone());
            n.gids.entry(name).or_insert(id);
        }
        n
    }

    pub fn user_name(&self, uid: u32) -> Option<String> {
        self.users.get(&uid).cloned()
    }
    pub fn group_name(&self, gid: u32) -> Option<String> {
        self.groups.get(&gid).cloned()
    }
    pub fn uid(&self, name: &str) -> Option<u32> {
        self.uids.get(name).copied()
    }
    pub fn gid(&self, name: &str) -> Option<u32> {
        self.gids.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_passwd_and_group_first_entry_wins() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/false\nalias:x:33:33::/:/bin/false\nbroken\n",
        )
        .unwrap();
        std::fs::write(d.path().join("group"), "root:x:0:\nweb:x:1500:a,b\n").unwrap();
        let n = Names::read(d.path());
        assert_eq!(n.user_name(33).as_deref(), Some("www-data"));
        assert_eq!(n.uid("alias"), Some(33));
        assert_eq!(n.gid("web"), Some(1500));
        assert_eq!(n.group_name(7), None);
        assert_eq!(Names::read(&d.path().join("none")).uid("root"), None);
    }

    #[test]
    fn settle_keeps_an_owner_that_maps_here_and_carries_what_is_not_read() {
        let owner = |uid, user: Option<&str>| {
            Some(Owner {
                uid,
                gid: uid,
                user: user.map(Into::into),
                group: user.map(Into::into),
            })
        };
        let a = |owner, xattrs| Attrs { owner, xattrs }.shared();
        let names = Keep {
            ownership: Ownership::Names,
            xattrs: true,
            carry_owner: false,
        };
        // root is uid 0 on this node, whatever id the sender had for it.
        let known = a(owner(7, Some("root")), Some(vec![]));
        assert_eq!(names.settle(a(owner(0, None), Some(vec![])), &known), known);
        let other = a(owner(5, None), Some(vec![]));
        assert_eq!(names.settle(other.clone(), &known), other);
        let numeric = Keep {
            ownership: Ownership::Numeric,
            ..names
        };
        let zero = a(owner(0, None), Some(vec![]));
        assert_eq!(numeric.settle(zero.clone(), &known), zero);
        // A node that reads neither carries both.
        let blind = Keep {
            ownership: Ownership::None,
            xattrs: false,
            carry_owner: true,
        };
        let x = Some(vec![Xattr {
            name: "user.a".into(),
            value: b"1".to_vec(),
        }]);
        let known = a(owner(7, Some("root")), x);
        assert_eq!(blind.settle(None, &known), known);
    }
}
