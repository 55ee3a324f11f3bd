//! Why a configuration was refused: [`ConfigError`], the per-key [`KeyError`] and the
//! collector that gathers every one of them, and the mapping of a TOML parse error to
//! file, line, column and dotted key.

use std::path::{Path, PathBuf};

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// The key (`folder[1].mode`, `broker.url`) or environment variable name.
    pub key: String,
    /// The line of the config file the problem is on, when it is one of the file's
    /// lines (unknown keys and values of the wrong type).
    pub line: Option<usize>,
    /// What is wrong and what to do.
    pub reason: String,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{}: cannot read config file: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML (unknown keys and values of the wrong type are
    /// [`ConfigError::Invalid`], listed with every other problem).
    #[error("{}:{line}:{column}: {key}: {message}", file.display())]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The offending key, as far as it could be determined (`?` otherwise).
        key: String,
        /// The parser's message.
        message: String,
    },
    /// The keys or values are wrong; every problem found is listed.
    #[error("{}", render_invalid(file, errors))]
    Invalid {
        /// The file (or `<environment>`).
        file: PathBuf,
        /// Every problem, in key order of discovery.
        errors: Vec<KeyError>,
    },
}

fn render_invalid(file: &Path, errors: &[KeyError]) -> String {
    errors
        .iter()
        .map(|e| match e.line {
            Some(line) => format!("{}:{line}: {}: {}", file.display(), e.key, e.reason),
            None => format!("{}: {}: {}", file.display(), e.key, e.reason),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Collects every problem found.
#[derive(Default)]
pub(super) struct Errors(pub(super) Vec<KeyError>);

impl Errors {
    pub(super) fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(KeyError {
            key: key.into(),
            line: None,
            reason: reason.into(),
        });
    }

    /// A problem on line `line` of the file.
    pub(super) fn push_at(
        &mut self,
        line: usize,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.0.push(KeyError {
            key: key.into(),
            line: Some(line),
            reason: reason.into(),
        });
    }
}

/// Turns a toml/serde error into [`ConfigError::Parse`], naming the key from the span.
pub(super) fn parse_error(text: &str, file: &Path, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_owned();
    let Some(span) = e.span() else {
        return ConfigError::Parse {
            file: file.to_owned(),
            line: 1,
            column: 1,
            key: "?".into(),
            message,
        };
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line_idx = before.matches('\n').count();
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    let column = text[line_start..start].chars().count() + 1;
    let key = key_at(text, line_idx, &message);
    ConfigError::Parse {
        file: file.to_owned(),
        line: line_idx + 1,
        column,
        key,
        message,
    }
}

/// Best-effort dotted key (`broker.url`, `folder[1].mode`) for an error on line
/// `line_idx` (0-based), from the table headers above it and the `key =` on the line.
fn key_at(text: &str, line_idx: usize, message: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next())
        .map(str::to_owned);
    let Some(line) = lines.get(line_idx).map(|l| l.trim()) else {
        return unknown.unwrap_or_else(|| "?".into());
    };
    // The error is on a table header: the header names the key.
    if line.starts_with('[') {
        let name = line.trim_matches(|c| c == '[' || c == ']' || c == ' ');
        return match unknown {
            Some(u) if !name.ends_with(&u) => format!("{name}.{u}"),
            _ => name.to_owned(),
        };
    }
    // Section from the headers above.
    let mut section = String::new();
    let mut folder_count = 0usize;
    for l in lines.iter().take(line_idx).map(|l| l.trim()) {
        if l.starts_with("[[") {
            let name = l.trim_matches(|c| c == '[' || c == ']' || c == ' ');
            if name == "folder" {
                section = format!("folder[{folder_count}]");
                folder_count += 1;
            } else {
                section = name.to_owned();
            }
        } else if l.starts_with('[') {
            section = l
                .trim_matches(|c| c == '[' || c == ']' || c == ' ')
                .to_owned();
        }
    }
    let leaf = unknown.or_else(|| {
        line.split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_owned())
            .filter(|k| !k.is_empty())
    });
    match (section.is_empty(), leaf) {
        (true, Some(leaf)) => leaf,
        (false, Some(leaf)) => format!("{section}.{leaf}"),
        (true, None) => "?".into(),
        (false, None) => section,
    }
}
