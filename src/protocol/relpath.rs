//! Validated folder-relative paths: the only path type that crosses the wire.
//! A `RelPath` is `/`-separated, non-empty, has no `.`/`..`/empty components, no NUL,
//! no backslash-free escapes, and bounded lengths, so joining it to a folder root can
//! never leave that root (symlinks on the way are the applier's job).

use crate::protocol::shared_str::SharedStr;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// Longest path accepted from the wire or the disk, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest single component, the limit of every common Linux filesystem.
pub const MAX_COMPONENT_BYTES: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("absolute path")]
    Absolute,
    #[error("path component {0:?} is not allowed")]
    BadComponent(String),
    #[error("path component longer than {MAX_COMPONENT_BYTES} bytes")]
    ComponentTooLong,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path is not valid UTF-8")]
    NotUtf8,
}

/// A validated path relative to a folder root, with `/` as separator.
///
/// Immutable and shared: a folder holds the same path in several maps (entries, local
/// metadata, chunk locations), and with a million files one allocation per path instead
/// of one per map is most of the difference in memory. The handle is one pointer wide
/// (the length lives in the allocation), 8 bytes less than an `Arc<str>` in each map.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(SharedStr);

impl RelPath {
    pub fn new(s: impl Into<String>) -> Result<Self, PathError> {
        let s = s.into();
        validate(&s)?;
        Ok(RelPath(SharedStr::new(&s)))
    }

    /// Builds a `RelPath` from a path below `root` found on the local disk.
    pub fn from_local(root: &Path, full: &Path) -> Result<Self, PathError> {
        let rel = full.strip_prefix(root).map_err(|_| PathError::Absolute)?;
        let s = rel.to_str().ok_or(PathError::NotUtf8)?;
        RelPath::new(s)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The path on the local disk below `root`.
    pub fn to_local(&self, root: &Path) -> PathBuf {
        let mut p = root.to_path_buf();
        for c in self.as_str().split('/') {
            p.push(c);
        }
        p
    }

    /// Parent path, or `None` at the top level.
    pub fn parent(&self) -> Option<RelPath> {
        let s = self.as_str();
        s.rfind('/').map(|i| RelPath(SharedStr::new(&s[..i])))
    }

    pub fn file_name(&self) -> &str {
        let s = self.as_str();
        s.rsplit('/').next().unwrap_or(s)
    }

    /// True when `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        let (s, o) = (self.as_str(), other.as_str());
        s == o || (s.len() > o.len() && s.starts_with(o) && s.as_bytes()[o.len()] == b'/')
    }

    pub fn depth(&self) -> usize {
        self.as_str().split('/').count()
    }

    /// A sibling path with another final component.
    pub fn with_file_name(&self, name: &str) -> Result<RelPath, PathError> {
        match self.parent() {
            Some(p) => RelPath::new(format!("{p}/{name}")),
            None => RelPath::new(name),
        }
    }
}

fn validate(s: &str) -> Result<(), PathError> {
    if s.is_empty() {
        return Err(PathError::Empty);
    }
    if s.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if s.contains('\0') {
        return Err(PathError::Nul);
    }
    if s.starts_with('/') {
        return Err(PathError::Absolute);
    }
    for c in s.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(PathError::BadComponent(c.to_string()));
        }
        if c.len() > MAX_COMPONENT_BYTES {
            return Err(PathError::ComponentTooLong);
        }
    }
    Ok(())
}

impl Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, so that a format that lends its bytes (postcard from a slice) costs
        // no temporary String per path.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RelPath;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a relative path")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RelPath, E> {
                validate(s).map_err(E::custom)?;
                Ok(RelPath(SharedStr::new(s)))
            }
        }
        d.deserialize_str(V)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_paths() {
        for ok in ["a", "a/b", ".hidden", "a/.b/c..d", "with space/ü"] {
            assert!(RelPath::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_escapes() {
        let long = "x".repeat(256);
        let cases: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("../x", PathError::BadComponent("..".into())),
            ("a/../../x", PathError::BadComponent("..".into())),
            ("a//b", PathError::BadComponent("".into())),
            ("a/./b", PathError::BadComponent(".".into())),
            ("a/", PathError::BadComponent("".into())),
            ("a\0b", PathError::Nul),
            (&long, PathError::ComponentTooLong),
        ];
        for (p, e) in cases {
            assert_eq!(RelPath::new(*p).unwrap_err(), *e, "{p:?}");
        }
        assert_eq!(
            RelPath::new("a/".repeat(3000)).unwrap_err(),
            PathError::TooLong
        );
    }

    #[test]
    fn deserialize_validates() {
        let bytes = postcard::to_allocvec(&"../../etc/passwd").unwrap();
        assert!(postcard::from_bytes::<RelPath>(&bytes).is_err());
    }

    #[test]
    fn prefix_and_parent() {
        let a = RelPath::new("a/b/c").unwrap();
        assert!(a.starts_with(&RelPath::new("a/b").unwrap()));
        assert!(!a.starts_with(&RelPath::new("a/bc").unwrap()));
        assert!(
            !RelPath::new("a/bc")
                .unwrap()
                .starts_with(&RelPath::new("a/b").unwrap())
        );
        assert_eq!(a.parent().unwrap().as_str(), "a/b");
        assert_eq!(a.file_name(), "c");
        assert_eq!(RelPath::new("x").unwrap().parent(), None);
    }
}
