//! The conflict copies in a folder, found by their names (`NAME.sync-conflict-
//! YYYYMMDD-HHMMSS-NODE.EXT`, see [`crate::engine::conflict_name`]): each with the path
//! it was copied from, the node whose version lost and when that version was written.
//! Conflict copies sync like any file, so every node of a folder holds the same ones.

use crate::fs::ignore::Ignore;
use crate::protocol::relpath::RelPath;
use std::path::Path;

const INFIX: &str = ".sync-conflict-";
/// `YYYYMMDD-HHMMSS`.
const STAMP_LEN: usize = 15;

/// One conflict copy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConflictCopy {
    pub folder: String,
    /// The copy's path in the folder.
    pub copy: String,
    /// The path whose conflict made it: the winner is there.
    pub original: String,
    /// The node that wrote the version that lost (kept as the copy).
    pub lost_by: String,
    /// When the losing version was written (its mtime), UTC, RFC 3339.
    pub written: String,
}

/// The original path, the losing node and the UTC time of a conflict copy's name;
/// `exists` tells which reading to prefer when a node id holds a dot (`n1.example`
/// and an extension-less original read the same as `n1` and an extension).
pub fn parse(
    copy: &RelPath,
    exists: impl Fn(&RelPath) -> bool,
) -> Option<(RelPath, String, String)> {
    let name = copy.file_name();
    let at = name.find(INFIX)?;
    let (stem, rest) = (&name[..at], &name[at + INFIX.len()..]);
    let stamp = rest.get(..STAMP_LEN)?;
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if stem.is_empty() || !digits(&stamp[..8]) || &stamp[8..9] != "-" || !digits(&stamp[9..]) {
        return None;
    }
    let tail = rest.get(STAMP_LEN..)?.strip_prefix('-')?;
    let written = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &stamp[..4],
        &stamp[4..6],
        &stamp[6..8],
        &stamp[9..11],
        &stamp[11..13],
        &stamp[13..15]
    );
    // The extension is the original's last dot and what follows it.
    let with_ext = tail
        .rfind('.')
        .filter(|&i| i > 0)
        .map(|i| (&tail[..i], &tail[i..]));
    let without = (tail, "");
    let original = |(_, ext): (&str, &str)| copy.with_file_name(&format!("{stem}{ext}")).ok();
    let choice = match with_ext {
        Some(w) if original(w).is_some_and(|p| exists(&p)) => w,
        Some(w) if !original(without).is_some_and(|p| exists(&p)) => w,
        _ => without,
    };
    if choice.0.is_empty() {
        return None;
    }
    Some((original(choice)?, choice.0.to_string(), written))
}

/// Every conflict copy under `root` (not following symlinks, skipping what `ignore`
/// names), sorted by path. Directories that cannot be read are skipped.
pub fn find(root: &Path, folder: &str, ignore: &Ignore) -> Vec<ConflictCopy> {
    let mut out = vec![];
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(rel) = RelPath::from_local(root, &path) else {
                continue;
            };
            if ignore.is_ignored(&rel) {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => dirs.push(path),
                Ok(_) if rel.file_name().contains(INFIX) => {
                    let exists = |p: &RelPath| p.to_local(root).symlink_metadata().is_ok();
                    if let Some((original, lost_by, written)) = parse(&rel, exists) {
                        out.push(ConflictCopy {
                            folder: folder.to_string(),
                            copy: rel.to_string(),
                            original: original.to_string(),
                            lost_by,
                            written,
                        });
                    }
                }
                _ => {}
            }
        }
    }
    out.sort_by(|a, b| a.copy.cmp(&b.copy));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Content, Entry, VersionVector, conflict_name, intern::node_id};

    fn copy_of(path: &str, node: &str, mtime_s: i64) -> RelPath {
        let loser = Entry {
            attrs: None,
            path: RelPath::new(path).expect("path"),
            version: VersionVector::new(),
            modified_by: node_id(node),
            changed_ms: 0,
            content: Content::File {
                size: 1,
                mode: 0o644,
                mtime_ns: mtime_s * 1_000_000_000,
                chunks: Default::default(),
            },
        };
        conflict_name(&loser).expect("conflict name")
    }

    #[test]
    fn the_names_the_engine_makes_read_back() {
        let none = |_: &RelPath| false;
        let c = copy_of("docs/report.final.txt", "node-2", 1_700_000_000);
        assert_eq!(
            c.as_str(),
            "docs/report.final.sync-conflict-20231114-221320-node-2.txt"
        );
        let (original, node, written) = parse(&c, none).expect("parsed");
        assert_eq!(original.as_str(), "docs/report.final.txt");
        assert_eq!(node, "node-2");
        assert_eq!(written, "2023-11-14T22:13:20Z");

        let c = copy_of("Makefile", "n1", 0);
        let (original, node, _) = parse(&c, none).expect("parsed");
        assert_eq!((original.as_str(), node.as_str()), ("Makefile", "n1"));

        // A dotted node id of an extension-less file: the original on disk decides.
        let c = copy_of("Makefile", "n1.example", 0);
        let on_disk = |p: &RelPath| p.as_str() == "Makefile";
        let (original, node, _) = parse(&c, on_disk).expect("parsed");
        assert_eq!(
            (original.as_str(), node.as_str()),
            ("Makefile", "n1.example")
        );
    }

    #[test]
    fn other_names_are_not_conflict_copies() {
        let none = |_: &RelPath| false;
        for name in [
            "plain.txt",
            "a.sync-conflict-2023.txt",
            "a.sync-conflict-20231114x221320-n1.txt",
            ".sync-conflict-20231114-221320-n1.txt",
            "a.sync-conflict-20231114-221320.txt",
        ] {
            assert_eq!(
                parse(&RelPath::new(name).expect("path"), none),
                None,
                "{name}"
            );
        }
    }
}
