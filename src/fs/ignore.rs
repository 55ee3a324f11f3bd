//! Which paths of a folder are not synced: the folder's ignore patterns (gitignore's
//! rules, matched with `globset`), the marker file at its root, and the temp files the
//! applier writes next to their targets (their names are recognised everywhere:
//! scanner, watcher, applier, case probe).
//!
//! Patterns follow gitignore: a pattern without a `/` (other than a trailing one)
//! matches a name at any depth (`*.swp`, `.cache`); a pattern with a `/` at its start
//! or in its middle is anchored at the folder root (`/build`, `docs/*.pdf`); `*`, `?`
//! and `[...]` never match a `/`, and `**` matches any number of directories (`**/tmp`,
//! `logs/**`, `a/**/b`). A matched directory's whole content is ignored. A trailing `/`
//! (`.cache/`) matches only what is inside a directory of that name: the matcher sees
//! paths, not file types, so a *file* named `.cache` is synced, and so is the (empty)
//! directory itself. Negation (`!pattern`) is refused: list only what to ignore.
//!
//! The folder's shared rules live in [`IGNORE_FILE`] at its root (synced like any file,
//! never ignored itself): one pattern per line, blank lines and `#` comments skipped.

use crate::protocol::relpath::RelPath;
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// Marker file at a folder's root: its absence means the volume is not mounted.
pub const MARKER: &str = ".mqsync";
/// The ignore file at a folder's root whose patterns every node applies.
pub const IGNORE_FILE: &str = ".mqsyncignore";
/// Bytes of [`IGNORE_FILE`] read at most: more is reported and left out.
pub const MAX_IGNORE_FILE_BYTES: u64 = 64 * 1024;
/// Infix of the temp files the applier writes next to their target.
pub const TEMP_INFIX: &str = ".mqsync-tmp-";

pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_INFIX)
}

/// Why an ignore pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("invalid ignore pattern {0:?}: it matches nothing (or, `/` alone, everything)")]
    Empty(String),
    #[error(
        "invalid ignore pattern {0:?}: negation (a leading `!`) is not supported; list only what to ignore (`\\!` for a name that starts with `!`)"
    )]
    Negation(String),
    #[error("invalid glob pattern {pattern:?}: {kind}")]
    Glob {
        pattern: String,
        /// globset's reason, which names no pattern of ours.
        kind: String,
    },
}

/// Checks one pattern as [`Ignore::new`] would take it.
pub fn check_pattern(pattern: &str) -> Result<(), PatternError> {
    globs(pattern).map(|_| ())
}

/// The globs that together match what the gitignore-style `pattern` matches: the
/// path itself (unless the pattern ends in `/`) and everything under it.
fn globs(pattern: &str) -> Result<Vec<Glob>, PatternError> {
    if pattern.starts_with('!') {
        return Err(PatternError::Negation(pattern.to_owned()));
    }
    let (dir_only, body) = match pattern.strip_suffix('/') {
        Some(body) => (true, body),
        None => (false, pattern),
    };
    let (anchored, body) = match body.strip_prefix('/') {
        Some(body) => (true, body),
        None => (body.contains('/'), body),
    };
    if body.is_empty() {
        return Err(PatternError::Empty(pattern.to_owned()));
    }
    let base = if anchored {
        body.to_owned()
    } else {
        format!("**/{body}")
    };
    let build = |glob: &str| {
        GlobBuilder::new(glob)
            .literal_separator(true)
            .build()
            .map_err(|e| PatternError::Glob {
                pattern: pattern.to_owned(),
                kind: e.kind().to_string(),
            })
    };
    let mut out = Vec::with_capacity(2);
    if !dir_only {
        out.push(build(&base)?);
    }
    if !base.ends_with("/**") {
        out.push(build(&format!("{base}/**"))?);
    }
    Ok(out)
}

/// The patterns of an [`IGNORE_FILE`]'s text, and the problems of the lines left out
/// (numbered from 1).
pub fn parse_ignore_file(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut patterns, mut problems) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let p = line.trim();
        if p.is_empty() || p.starts_with('#') {
            continue;
        }
        match check_pattern(p) {
            Ok(()) => patterns.push(p.to_owned()),
            Err(e) => problems.push(format!("{IGNORE_FILE} line {}: {e}", i + 1)),
        }
    }
    (patterns, problems)
}

/// The patterns of the [`IGNORE_FILE`] in `root` and the problems of the lines left
/// out (or why it cannot be read); none when it is absent.
pub fn read_ignore_file(root: &std::path::Path) -> (Vec<String>, Vec<String>) {
    use std::io::Read;
    let path = root.join(IGNORE_FILE);
    let mut text = String::new();
    let res = std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_IGNORE_FILE_BYTES).read_to_string(&mut text));
    match res {
        Ok(n) => {
            let (patterns, mut problems) = parse_ignore_file(&text);
            if n as u64 >= MAX_IGNORE_FILE_BYTES {
                problems.push(format!(
                    "{IGNORE_FILE}: only its first {MAX_IGNORE_FILE_BYTES} bytes are read"
                ));
            }
            (patterns, problems)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (vec![], vec![]),
        Err(e) => (vec![], vec![format!("cannot read {}: {e}", path.display())]),
    }
}

/// The folder's ignore rules plus the built-in ones (marker and temp files).
#[derive(Clone)]
pub struct Ignore {
    set: GlobSet,
}

impl Ignore {
    pub fn new(patterns: &[String]) -> Result<Self, PatternError> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            for g in globs(p)? {
                b.add(g);
            }
        }
        let set = b.build().map_err(|e| PatternError::Glob {
            pattern: patterns.join(", "),
            kind: e.kind().to_string(),
        })?;
        Ok(Ignore { set })
    }

    pub fn is_ignored(&self, rel: &RelPath) -> bool {
        let s = rel.as_str();
        s != IGNORE_FILE && (s == MARKER || is_temp_name(rel.file_name()) || self.set.is_match(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which of `paths` the patterns ignore.
    fn ignored(patterns: &[&str], paths: &[&'static str]) -> Vec<&'static str> {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        let ignore = Ignore::new(&patterns).expect("valid patterns");
        paths
            .iter()
            .copied()
            .filter(|p| ignore.is_ignored(&RelPath::new(*p).expect("relpath")))
            .collect()
    }

    const PATHS: &[&str] = &[
        "a.swp",
        "x/y/a.swp",
        ".cache",
        ".cache/x",
        "src/.cache/x",
        "src/.cache/deep/y",
        "build",
        "build/out.o",
        "src/build/out.o",
        "docs/a.pdf",
        "docs/sub/b.pdf",
        "other/docs/a.pdf",
        "notes.txt",
    ];

    #[test]
    fn a_pattern_without_a_slash_matches_at_any_depth() {
        assert_eq!(ignored(&["*.swp"], PATHS), ["a.swp", "x/y/a.swp"]);
        assert_eq!(
            ignored(&[".cache"], PATHS),
            [".cache", ".cache/x", "src/.cache/x", "src/.cache/deep/y"]
        );
        assert_eq!(
            ignored(&["build"], PATHS),
            ["build", "build/out.o", "src/build/out.o"]
        );
    }

    #[test]
    fn a_leading_or_middle_slash_anchors_at_the_root() {
        assert_eq!(ignored(&["/build"], PATHS), ["build", "build/out.o"]);
        assert_eq!(ignored(&["docs/*.pdf"], PATHS), ["docs/a.pdf"]);
        // As before this change: `.cache/**` is anchored, only the root's .cache.
        assert_eq!(ignored(&[".cache/**"], PATHS), [".cache/x"]);
        assert_eq!(ignored(&["/a.swp"], PATHS), ["a.swp"]);
    }

    #[test]
    fn a_trailing_slash_matches_what_is_inside_directories_of_that_name() {
        assert_eq!(
            ignored(&[".cache/"], PATHS),
            [".cache/x", "src/.cache/x", "src/.cache/deep/y"]
        );
        assert_eq!(ignored(&["/build/"], PATHS), ["build/out.o"]);
    }

    #[test]
    fn double_star_matches_any_number_of_directories() {
        assert_eq!(
            ignored(&["**/docs/*.pdf"], PATHS),
            ["docs/a.pdf", "other/docs/a.pdf"]
        );
        assert_eq!(
            ignored(&["docs/**/*.pdf"], PATHS),
            ["docs/a.pdf", "docs/sub/b.pdf"]
        );
        assert_eq!(
            ignored(&["src/**"], PATHS),
            ["src/.cache/x", "src/.cache/deep/y", "src/build/out.o"]
        );
        // `*` stops at a slash.
        assert_eq!(
            ignored(&["docs/*"], PATHS),
            ["docs/a.pdf", "docs/sub/b.pdf"]
        );
        assert_eq!(ignored(&["x/*.swp"], PATHS), Vec::<&str>::new());
    }

    #[test]
    fn negation_and_empty_patterns_are_refused() {
        assert!(matches!(
            check_pattern("!keep.swp"),
            Err(PatternError::Negation(_))
        ));
        assert!(check_pattern("\\!literal").is_ok());
        assert!(matches!(check_pattern(""), Err(PatternError::Empty(_))));
        assert!(matches!(check_pattern("/"), Err(PatternError::Empty(_))));
        let e = check_pattern("a[b").expect_err("unclosed class");
        assert!(
            e.to_string().starts_with("invalid glob pattern \"a[b\": "),
            "{e}"
        );
        assert!(Ignore::new(&["*.swp".into(), "!x".into()]).is_err());
    }

    #[test]
    fn the_ignore_file_is_parsed_line_by_line_and_never_ignored() {
        let (patterns, problems) = parse_ignore_file("# logs\n*.log\n\n  /build/ \n!keep\n");
        assert_eq!(patterns, ["*.log", "/build/"]);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with(".mqsyncignore line 5: "),
            "{problems:?}"
        );
        let ignore = Ignore::new(&[".*".into()]).expect("valid");
        assert!(!ignore.is_ignored(&RelPath::new(IGNORE_FILE).expect("relpath")));
        assert!(ignore.is_ignored(&RelPath::new(".other").expect("relpath")));
    }

    #[test]
    fn marker_and_temp_files_are_always_ignored() {
        let ignore = Ignore::new(&[]).expect("empty");
        for p in [MARKER, "d/.f.mqsync-tmp-1"] {
            assert!(ignore.is_ignored(&RelPath::new(p).expect("relpath")), "{p}");
        }
        assert!(!ignore.is_ignored(&RelPath::new("d/.mqsync").expect("relpath")));
    }
}
