//! The conflict rule as one pure function: given what a node holds for a path and an
//! incoming version, decide whether to ignore it, take it, or resolve a conflict, and
//! where the losing content goes. Every node evaluates the same rule on the same data,
//! so every node picks the same winner and names the same conflict copy.

use super::entry::{Content, Entry};
use super::version::Causality;
use crate::protocol::relpath::RelPath;

/// What to do with an incoming entry, relative to the entry a node has on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The incoming entry is older, equal, or loses a conflict: keep what we have.
    /// (When it loses, the node holding it resolves on its side and keeps its copy.)
    Ignore,
    /// Record `Entry` without touching the disk: the data is already there.
    Adopt(Entry),
    /// Make the disk hold `entry`; when `conflict_copy` is set, first move the local
    /// loser aside under that name so nothing is lost.
    Install {
        entry: Entry,
        conflict_copy: Option<RelPath>,
    },
    /// A conflict the incoming entry wins: like `Install`, but `entry` is a new version
    /// made here (the merged vector plus a fresh counter of this node), which no peer
    /// has heard of. Once written it must be published: the peers holding the winner
    /// then record it at once instead of at the next digest exchange.
    Resolve {
        entry: Entry,
        conflict_copy: Option<RelPath>,
    },
}

/// `true` when `a` beats `b` in a conflict. Total and deterministic: an edit beats a
/// deletion, then the later modification time, then the larger node id, then the
/// larger fingerprint (only reached by corrupt or hand-made data).
pub fn beats(a: &Entry, b: &Entry) -> bool {
    let (ad, bd) = (a.content.is_deleted(), b.content.is_deleted());
    if ad != bd {
        return bd;
    }
    let (am, bm) = (a.content.mtime_ns(), b.content.mtime_ns());
    if am != bm {
        return am > bm;
    }
    if a.modified_by != b.modified_by {
        return a.modified_by > b.modified_by;
    }
    a.fingerprint() > b.fingerprint()
}

/// Decides what an incoming `remote` entry means for a node (`node`) whose disk holds
/// `local`.
///
/// A resolved conflict gets the merged vector plus a fresh counter of the resolving
/// node: without it, two nodes resolving different pairs could produce the same vector
/// for different data, and versions would no longer identify content. The counter must
/// be the resolving node's own: a counter of another node (say the winner's author)
/// would collide with that node's next edit, made without knowledge of the resolution,
/// and the resolution would then claim to descend from an edit it never saw. So two
/// nodes resolving the same conflict make different versions of the same data; they
/// publish them ([`Decision::Resolve`]), and versions of identical data merge into one
/// (their vectors joined, the other fields from the same winner), whatever the order.
pub fn resolve(node: &str, local: Option<&Entry>, remote: &Entry) -> Decision {
    let Some(local) = local else {
        return if remote.content.is_deleted() {
            Decision::Adopt(remote.clone())
        } else {
            Decision::Install {
                entry: remote.clone(),
                conflict_copy: None,
            }
        };
    };
    match remote.version.compare(&local.version) {
        Causality::Equal | Causality::Less => Decision::Ignore,
        Causality::Greater => {
            if local.same_state(remote) {
                Decision::Adopt(remote.clone())
            } else {
                Decision::Install {
                    entry: remote.clone(),
                    conflict_copy: None,
                }
            }
        }
        Causality::Concurrent => {
            let version = local.version.merged(&remote.version);
            if local.same_data(remote) {
                // Identical data never conflicts; only the mtime may differ.
                let winner = if beats(remote, local) { remote } else { local };
                let entry = Entry {
                    version,
                    ..winner.clone()
                };
                return if winner.same_state(local) {
                    Decision::Adopt(entry)
                } else {
                    Decision::Install {
                        entry,
                        conflict_copy: None,
                    }
                };
            }
            if !beats(remote, local) {
                return Decision::Ignore;
            }
            let entry = Entry {
                version: version.incremented(node),
                ..remote.clone()
            };
            let conflict_copy = match local.content {
                Content::File { .. } | Content::Symlink { .. } => conflict_name(local),
                Content::Dir { .. } | Content::Deleted => None,
            };
            Decision::Resolve {
                entry,
                conflict_copy,
            }
        }
    }
}

/// `NAME.sync-conflict-YYYYMMDD-HHMMSS-NODE.EXT` beside the original, from the loser's
/// own modification time and author, so every node derives the same name.
pub fn conflict_name(loser: &Entry) -> Option<RelPath> {
    conflict_name_nth(loser, 1)
}

/// The `n`th name for a conflict copy of `loser`: [`conflict_name`] for 1, then
/// `NAME.sync-conflict-YYYYMMDD-HHMMSS-NODE-N.EXT`, for a second loser of the same
/// author within the same second (whose copy must not replace the first's).
pub fn conflict_name_nth(loser: &Entry, n: u32) -> Option<RelPath> {
    let name = loser.path.file_name();
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let stamp = format_utc(loser.content.mtime_ns().div_euclid(1_000_000_000));
    let mut node: String = loser
        .modified_by
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    node.truncate(64);
    if n > 1 {
        node.push_str(&format!("-{n}"));
    }
    let mut stem = stem.to_string();
    // Keep the result within the 255-byte component limit.
    let fixed = ".sync-conflict-".len() + stamp.len() + 1 + node.len() + ext.len();
    while stem.len() + fixed > 255 && !stem.is_empty() {
        stem.pop();
    }
    loser
        .path
        .with_file_name(&format!("{stem}.sync-conflict-{stamp}-{node}{ext}"))
        .ok()
}

/// `YYYYMMDD-HHMMSS` in UTC, from seconds since the epoch (civil-from-days algorithm).
fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::entry::ChunkRef;
    use crate::engine::version::VersionVector;

    fn vv(pairs: &[(&str, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for (k, n) in pairs {
            for _ in 0..*n {
                v = v.incremented(k);
            }
        }
        v
    }

    fn file(path: &str, v: VersionVector, by: &str, data: u8, mtime_s: i64) -> Entry {
        Entry {
            attrs: None,
            path: RelPath::new(path).unwrap(),
            version: v,
            modified_by: by.into(),
            changed_ms: 0,
            content: Content::File {
                size: 1,
                mode: 0o644,
                mtime_ns: mtime_s * 1_000_000_000,
                chunks: [ChunkRef {
                    hash: [data; 32],
                    len: 1,
                }]
                .into(),
            },
        }
    }

    fn deleted(path: &str, v: VersionVector, by: &str) -> Entry {
        Entry {
            attrs: None,
            path: RelPath::new(path).unwrap(),
            version: v,
            modified_by: by.into(),
            changed_ms: 0,
            content: Content::Deleted,
        }
    }

    #[test]
    fn table() {
        let a1 = vv(&[("a", 1)]);
        let b1 = vv(&[("b", 1)]);
        let a1b1 = a1.merged(&b1);
        let local = file("x.txt", a1.clone(), "a", 1, 100);
        struct Case {
            name: &'static str,
            local: Option<Entry>,
            remote: Entry,
            want: Decision,
        }
        let remote_newer = file("x.txt", a1.incremented("b"), "b", 2, 50);
        let remote_conc_later = file("x.txt", b1.clone(), "b", 2, 200);
        let remote_conc_earlier = file("x.txt", b1.clone(), "b", 2, 50);
        let remote_conc_same = file("x.txt", b1.clone(), "b", 1, 100);
        let remote_delete = deleted("x.txt", b1.clone(), "b");
        let cases = vec![
            Case {
                name: "new path",
                local: None,
                remote: remote_newer.clone(),
                want: Decision::Install {
                    entry: remote_newer.clone(),
                    conflict_copy: None,
                },
            },
            Case {
                name: "tombstone for unknown path is recorded",
                local: None,
                remote: remote_delete.clone(),
                want: Decision::Adopt(remote_delete.clone()),
            },
            Case {
                name: "older is ignored",
                local: Some(file("x.txt", a1.incremented("a"), "a", 1, 100)),
                remote: local.clone(),
                want: Decision::Ignore,
            },
            Case {
                name: "equal is ignored",
                local: Some(local.clone()),
                remote: local.clone(),
                want: Decision::Ignore,
            },
            Case {
                name: "newer is installed",
                local: Some(local.clone()),
                remote: remote_newer.clone(),
                want: Decision::Install {
                    entry: remote_newer.clone(),
                    conflict_copy: None,
                },
            },
            Case {
                name: "concurrent, remote later: remote wins, local kept as copy",
                local: Some(local.clone()),
                remote: remote_conc_later.clone(),
                want: Decision::Resolve {
                    entry: Entry {
                        version: a1b1.incremented("a"),
                        ..remote_conc_later.clone()
                    },
                    conflict_copy: Some(
                        RelPath::new("x.sync-conflict-19700101-000140-a.txt").unwrap(),
                    ),
                },
            },
            Case {
                name: "concurrent, remote earlier: local wins",
                local: Some(local.clone()),
                remote: remote_conc_earlier,
                want: Decision::Ignore,
            },
            Case {
                name: "concurrent identical data: merged, no conflict",
                local: Some(local.clone()),
                remote: remote_conc_same.clone(),
                want: Decision::Adopt(Entry {
                    version: a1b1.clone(),
                    ..remote_conc_same
                }),
            },
            Case {
                name: "edit beats concurrent delete",
                local: Some(local.clone()),
                remote: remote_delete,
                want: Decision::Ignore,
            },
            Case {
                name: "concurrent edit beats local delete, no copy of a tombstone",
                local: Some(deleted("x.txt", a1.clone(), "a")),
                remote: remote_conc_earlier_clone(&b1),
                want: Decision::Resolve {
                    entry: Entry {
                        version: a1b1.incremented("a"),
                        ..remote_conc_earlier_clone(&b1)
                    },
                    conflict_copy: None,
                },
            },
        ];
        for c in cases {
            assert_eq!(
                resolve("a", c.local.as_ref(), &c.remote),
                c.want,
                "{}",
                c.name
            );
        }
    }

    fn remote_conc_earlier_clone(b1: &VersionVector) -> Entry {
        file("x.txt", b1.clone(), "b", 2, 50)
    }

    #[test]
    fn resolution_is_symmetric() {
        // Each side resolving the other's entry must agree on the winner.
        let a = file("f", vv(&[("a", 1)]), "a", 1, 100);
        let b = file("f", vv(&[("b", 1)]), "b", 2, 100);
        let at_a = resolve("a", Some(&a), &b);
        let at_b = resolve("b", Some(&b), &a);
        match (at_a, at_b) {
            (Decision::Resolve { entry, .. }, Decision::Ignore) => {
                assert_eq!(&*entry.modified_by, "b")
            }
            (Decision::Ignore, Decision::Resolve { entry, .. }) => {
                assert_eq!(&*entry.modified_by, "a")
            }
            other => panic!("sides disagree: {other:?}"),
        }
    }

    #[test]
    fn conflict_names() {
        let mut e = file(
            "dir/photo.tar.gz",
            vv(&[("a", 1)]),
            "node-2",
            1,
            1_700_000_000,
        );
        assert_eq!(
            conflict_name(&e).unwrap().as_str(),
            "dir/photo.tar.sync-conflict-20231114-221320-node-2.gz"
        );
        e.path = RelPath::new(".bashrc").unwrap();
        assert_eq!(
            conflict_name(&e).unwrap().as_str(),
            ".bashrc.sync-conflict-20231114-221320-node-2"
        );
        e.path = RelPath::new("x".repeat(255)).unwrap();
        assert!(conflict_name(&e).unwrap().as_str().len() <= 255);
    }
}
