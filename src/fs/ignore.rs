//! Which paths of a folder are not synced: the folder's ignore patterns, the marker
//! file at its root, and the temp files the applier writes next to their targets
//! (their names are recognised everywhere: scanner, watcher, applier, case probe).

use crate::protocol::relpath::RelPath;
use globset::{Glob, GlobSet, GlobSetBuilder};

/// Marker file at a folder's root: its absence means the volume is not mounted.
pub const MARKER: &str = ".mqsync";
/// Infix of the temp files the applier writes next to their target.
pub const TEMP_INFIX: &str = ".mqsync-tmp-";

pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_INFIX)
}

/// The folder's ignore rules plus the built-in ones (marker and temp files).
#[derive(Clone)]
pub struct Ignore {
    set: GlobSet,
}

impl Ignore {
    pub fn new(patterns: &[String]) -> Result<Self, globset::Error> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            b.add(Glob::new(p)?);
        }
        Ok(Ignore { set: b.build()? })
    }

    pub fn is_ignored(&self, rel: &RelPath) -> bool {
        let s = rel.as_str();
        s == MARKER || is_temp_name(rel.file_name()) || self.set.is_match(s)
    }
}
