//! Case collisions on case-insensitive file systems (exFAT, FAT, casefolded ext4).
//! There `README.md` and `Readme.md` are one file, so applying the second would
//! silently overwrite the first. [`CaseFolds`] maps each name present on disk by its
//! folded form, so a node can refuse and report such an apply instead.

use crate::protocol::relpath::RelPath;
use std::collections::HashMap;
use std::io;
use std::path::Path;

/// The form two names share when a case-insensitive file system treats them as one.
/// Unicode lower case: close to what exFAT's up-case table and ext4's casefold do for
/// the names people write; exotic foldings (ß/SS) are not covered.
pub fn fold(s: &str) -> String {
    s.to_lowercase()
}

/// Whether names in `dir` are case-insensitive: creates a probe file and looks it up
/// under another spelling. The probe is named like an mqsync temp file, so a scan
/// never syncs it and the first full scan removes one a crash left behind.
pub fn probe(dir: &Path) -> io::Result<bool> {
    let name = format!(
        ".CaseProbe{}{}",
        crate::fs::ignore::TEMP_INFIX,
        std::process::id()
    );
    let upper = dir.join(&name);
    std::fs::write(&upper, b"")?;
    let insensitive = std::fs::symlink_metadata(dir.join(name.to_lowercase())).is_ok();
    std::fs::remove_file(&upper)?;
    Ok(insensitive)
}

/// The names present on disk (files, directories, symlinks), by folded path.
#[derive(Debug, Default)]
pub struct CaseFolds {
    by_fold: HashMap<String, RelPath>,
}

/// `path` (or its ancestor `wanted`) would land on `existing`, spelled differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    pub wanted: RelPath,
    pub existing: RelPath,
}

impl std::fmt::Display for Collision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "case collision: {} and {} are one name on this case-insensitive file system; \
             keeping {} (rename one of them on the other nodes)",
            self.wanted, self.existing, self.existing
        )
    }
}

impl CaseFolds {
    pub fn new<'a>(present: impl IntoIterator<Item = &'a RelPath>) -> Self {
        let mut f = CaseFolds::default();
        for p in present {
            f.insert(p);
        }
        f
    }

    pub fn insert(&mut self, path: &RelPath) {
        self.by_fold.insert(fold(path.as_str()), path.clone());
    }

    pub fn remove(&mut self, path: &RelPath) {
        let key = fold(path.as_str());
        if self.by_fold.get(&key) == Some(path) {
            self.by_fold.remove(&key);
        }
    }

    /// The present name that `path` or one of its ancestors would overwrite or enter
    /// under another spelling, if any.
    pub fn collision(&self, path: &RelPath) -> Option<Collision> {
        let s = path.as_str();
        let ends = s
            .char_indices()
            .filter(|&(_, c)| c == '/')
            .map(|(i, _)| i)
            .chain([s.len()]);
        for end in ends {
            let prefix = &s[..end];
            if let Some(existing) = self.by_fold.get(&fold(prefix))
                && existing.as_str() != prefix
            {
                return Some(Collision {
                    wanted: RelPath::new(prefix).ok()?,
                    existing: existing.clone(),
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn finds_twins_of_the_name_and_of_its_directories() {
        let mut f = CaseFolds::new(&[p("Readme.md"), p("docs"), p("docs/a.txt")]);
        assert_eq!(f.collision(&p("Readme.md")), None);
        assert_eq!(f.collision(&p("other")), None);
        assert_eq!(
            f.collision(&p("README.md")),
            Some(Collision {
                wanted: p("README.md"),
                existing: p("Readme.md")
            })
        );
        // A file under `Docs/` would land in `docs/`.
        assert_eq!(
            f.collision(&p("Docs/b.txt")),
            Some(Collision {
                wanted: p("Docs"),
                existing: p("docs")
            })
        );
        assert_eq!(f.collision(&p("docs/b.txt")), None);
        assert_eq!(
            f.collision(&p("docs/A.TXT")).unwrap().existing,
            p("docs/a.txt")
        );
        // Removing under another spelling does not forget the name on disk.
        f.remove(&p("README.md"));
        assert!(f.collision(&p("README.md")).is_some());
        f.remove(&p("Readme.md"));
        assert_eq!(f.collision(&p("README.md")), None);
        f.insert(&p("Ünïcode"));
        assert!(f.collision(&p("üNÏCODE")).is_some());
    }

    #[test]
    fn probe_tells_this_file_system() {
        let dir = tempfile::tempdir().unwrap();
        // Linux file systems under a temp dir are case-sensitive.
        assert!(!probe(dir.path()).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
