//! The configuration as written in the TOML file: every key optional. The file is
//! walked key by key, so that every unknown key (with a "did you mean") and every value
//! of the wrong type is collected with its line, not just the first. The environment
//! overlay edits these values and validation alone turns them into a
//! [`Config`](super::Config); nothing here checks a value beyond its TOML type.

use std::path::PathBuf;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::Errors;
use crate::ops::hook::Hook;

#[derive(Debug, Default)]
pub(super) struct RawConfig {
    pub(super) node_id: Option<String>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) log_format: Option<String>,
    pub(super) metrics_listen: Option<String>,
    pub(super) broker: RawBroker,
    pub(super) security: RawSecurity,
    pub(super) folders: Vec<RawFolder>,
    pub(super) docker: RawDocker,
}

#[derive(Debug, Default)]
pub(super) struct RawDocker {
    pub(super) volume_plugin: Option<bool>,
    pub(super) volumes_root: Option<PathBuf>,
    pub(super) plugin_socket: Option<PathBuf>,
}

#[derive(Debug, Default)]
pub(super) struct RawBroker {
    pub(super) url: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) topic_prefix: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) keepalive_s: Option<u64>,
    pub(super) insecure_plaintext: Option<bool>,
    pub(super) embedded_listen: Option<String>,
    pub(super) shared_node_cert: Option<bool>,
    pub(super) max_message_bytes: Option<u64>,
}

#[derive(Debug, Default)]
pub(super) struct RawSecurity {
    pub(super) group_key_file: Option<PathBuf>,
}

#[derive(Debug, Default)]
pub(super) struct RawFolder {
    pub(super) id: Option<String>,
    pub(super) path: Option<PathBuf>,
    pub(super) create: Option<bool>,
    pub(super) mode: Option<String>,
    pub(super) ignore: Option<Vec<String>>,
    pub(super) debounce_ms: Option<u64>,
    pub(super) max_delete_percent: Option<u64>,
    pub(super) tombstone_days: Option<u64>,
    pub(super) on_change: Option<Hook>,
    pub(super) compression: Option<String>,
    pub(super) ownership: Option<String>,
    pub(super) xattrs: Option<bool>,
    pub(super) watch: Option<String>,
    pub(super) poll_interval_s: Option<u64>,
}

/// The keys of each table, for "did you mean" and for naming the table a misplaced key
/// belongs in.
const TOP: &[&str] = &[
    "node_id",
    "state_dir",
    "log_format",
    "metrics_listen",
    "broker",
    "security",
    "folder",
    "docker",
];
const BROKER: &[&str] = &[
    "url",
    "ca_file",
    "cert_file",
    "key_file",
    "topic_prefix",
    "client_id",
    "keepalive_s",
    "insecure_plaintext",
    "embedded_listen",
    "shared_node_cert",
    "max_message_bytes",
];
const SECURITY: &[&str] = &["group_key_file"];
const DOCKER: &[&str] = &["volume_plugin", "volumes_root", "plugin_socket"];
const FOLDER: &[&str] = &[
    "id",
    "path",
    "create",
    "mode",
    "ignore",
    "debounce_ms",
    "max_delete_percent",
    "tombstone_days",
    "on_change",
    "compression",
    "ownership",
    "xattrs",
    "watch",
    "poll_interval_s",
];
/// Each table's header and keys.
const TABLES: &[(&str, &[&str])] = &[
    ("the top level (before any [table])", TOP),
    ("[broker]", BROKER),
    ("[security]", SECURITY),
    ("[docker]", DOCKER),
    ("[[folder]]", FOLDER),
];

/// Parses `text` into raw values. A TOML syntax error stops at once and is returned;
/// every unknown key and every value of the wrong type is pushed to `errors` (with its
/// line) and that key is left unset, so validation still checks all the others.
pub(super) fn parse(text: &str, errors: &mut Errors) -> Result<RawConfig, toml::de::Error> {
    let doc = DeTable::parse(text)?;
    let mut top = Table::new(text, doc.get_ref(), String::new(), TOP);
    let mut raw = RawConfig {
        node_id: top.string("node_id", errors),
        state_dir: top.string("state_dir", errors).map(PathBuf::from),
        log_format: top.string("log_format", errors),
        metrics_listen: top.string("metrics_listen", errors),
        ..RawConfig::default()
    };
    if let Some(mut t) = top.table("broker", BROKER, errors) {
        raw.broker = RawBroker {
            url: t.string("url", errors),
            ca_file: t.string("ca_file", errors).map(PathBuf::from),
            cert_file: t.string("cert_file", errors).map(PathBuf::from),
            key_file: t.string("key_file", errors).map(PathBuf::from),
            topic_prefix: t.string("topic_prefix", errors),
            client_id: t.string("client_id", errors),
            keepalive_s: t.u64("keepalive_s", errors),
            insecure_plaintext: t.bool("insecure_plaintext", errors),
            embedded_listen: t.string("embedded_listen", errors),
            shared_node_cert: t.bool("shared_node_cert", errors),
            max_message_bytes: t.u64("max_message_bytes", errors),
        };
        t.finish(errors);
    }
    if let Some(mut t) = top.table("security", SECURITY, errors) {
        raw.security.group_key_file = t.string("group_key_file", errors).map(PathBuf::from);
        t.finish(errors);
    }
    if let Some(mut t) = top.table("docker", DOCKER, errors) {
        raw.docker = RawDocker {
            volume_plugin: t.bool("volume_plugin", errors),
            volumes_root: t.string("volumes_root", errors).map(PathBuf::from),
            plugin_socket: t.string("plugin_socket", errors).map(PathBuf::from),
        };
        t.finish(errors);
    }
    for mut t in top.tables("folder", FOLDER, errors) {
        raw.folders.push(RawFolder {
            id: t.string("id", errors),
            path: t.string("path", errors).map(PathBuf::from),
            create: t.bool("create", errors),
            mode: t.string("mode", errors),
            ignore: t.strings("ignore", errors),
            debounce_ms: t.u64("debounce_ms", errors),
            max_delete_percent: t.u64("max_delete_percent", errors),
            tombstone_days: t.u64("tombstone_days", errors),
            on_change: t.hook("on_change", errors),
            compression: t.string("compression", errors),
            ownership: t.string("ownership", errors),
            xattrs: t.bool("xattrs", errors),
            watch: t.string("watch", errors),
            poll_interval_s: t.u64("poll_interval_s", errors),
        });
        t.finish(errors);
    }
    top.finish(errors);
    Ok(raw)
}

/// One table of the file being walked: its keys are taken one by one, and
/// [`Table::finish`] reports the ones nobody took.
struct Table<'a, 'i> {
    text: &'a str,
    entries: &'a DeTable<'i>,
    /// `""`, `"broker."`, `"folder[1]."`: what goes before a key in messages.
    prefix: String,
    known: &'static [&'static str],
}

impl<'a, 'i> Table<'a, 'i> {
    fn new(
        text: &'a str,
        entries: &'a DeTable<'i>,
        prefix: String,
        known: &'static [&'static str],
    ) -> Self {
        Table {
            text,
            entries,
            prefix,
            known,
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Records that `value` (at `key`) is not what was `expected`.
    fn wrong(
        &self,
        key: String,
        value: &Spanned<DeValue<'_>>,
        expected: &str,
        errors: &mut Errors,
    ) {
        let found = match value.get_ref().type_str() {
            t @ ("integer" | "array") => format!("an {t}"),
            t => format!("a {t}"),
        };
        let shown = shown(self.text, value);
        errors.push_at(
            line_of(self.text, value.span().start),
            key,
            format!("expected {expected}, found {found} ({shown})"),
        );
    }

    fn get(&self, name: &'static str) -> Option<&'a Spanned<DeValue<'i>>> {
        debug_assert!(self.known.contains(&name), "{name} not listed");
        self.entries.get(name)
    }

    fn string(&mut self, name: &'static str, errors: &mut Errors) -> Option<String> {
        let v = self.get(name)?;
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.wrong(self.key(name), v, "a string", errors);
                None
            }
        }
    }

    fn bool(&mut self, name: &'static str, errors: &mut Errors) -> Option<bool> {
        let v = self.get(name)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong(self.key(name), v, "true or false", errors);
                None
            }
        }
    }

    fn u64(&mut self, name: &'static str, errors: &mut Errors) -> Option<u64> {
        let v = self.get(name)?;
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix()).ok(),
            _ => None,
        };
        if parsed.is_none() {
            let expected = if v.get_ref().is_integer() {
                "a whole number from 0 to 18446744073709551615"
            } else {
                "a whole number"
            };
            self.wrong(self.key(name), v, expected, errors);
        }
        parsed
    }

    /// An array of strings; each element of another type is reported as `key[j]`.
    fn strings(&mut self, name: &'static str, errors: &mut Errors) -> Option<Vec<String>> {
        let v = self.get(name)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong(self.key(name), v, "an array of strings", errors);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (j, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::String(s) => out.push(s.to_string()),
                _ => self.wrong(format!("{}[{j}]", self.key(name)), item, "a string", errors),
            }
        }
        Some(out)
    }

    /// A hook: a string (a shell command) or an array of strings (an argument list).
    fn hook(&mut self, name: &'static str, errors: &mut Errors) -> Option<Hook> {
        let v = self.get(name)?;
        match v.get_ref() {
            DeValue::String(s) => Some(Hook::Shell(s.to_string())),
            DeValue::Array(_) => self.strings(name, errors).map(Hook::Exec),
            _ => {
                self.wrong(
                    self.key(name),
                    v,
                    "a string (run with sh -c) or an array of strings (program and arguments)",
                    errors,
                );
                None
            }
        }
    }

    /// The table `name` (`[broker]`), if present and a table.
    fn table(
        &mut self,
        name: &'static str,
        known: &'static [&'static str],
        errors: &mut Errors,
    ) -> Option<Table<'a, 'i>> {
        let v = self.get(name)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(Table::new(
                self.text,
                t,
                format!("{}.", self.key(name)),
                known,
            )),
            _ => {
                self.wrong(self.key(name), v, &format!("a table ([{name}])"), errors);
                None
            }
        }
    }

    /// The array of tables `name` (`[[folder]]`), each as `name[i]`.
    fn tables(
        &mut self,
        name: &'static str,
        known: &'static [&'static str],
        errors: &mut Errors,
    ) -> Vec<Table<'a, 'i>> {
        let Some(v) = self.get(name) else {
            return vec![];
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong(self.key(name), v, &format!("[[{name}]] tables"), errors);
            return vec![];
        };
        let mut out = vec![];
        for (i, item) in items.iter().enumerate() {
            let key = format!("{}[{i}]", self.key(name));
            match item.get_ref() {
                DeValue::Table(t) => out.push(Table::new(self.text, t, format!("{key}."), known)),
                _ => self.wrong(key, item, &format!("a [[{name}]] table"), errors),
            }
        }
        out
    }

    /// Reports every key of this table that is not one of its known keys, with the
    /// closest known key or the table it belongs in.
    fn finish(self, errors: &mut Errors) {
        for (k, _) in self.entries.iter() {
            let name: &str = k.get_ref();
            if self.known.contains(&name) {
                continue;
            }
            errors.push_at(
                line_of(self.text, k.span().start),
                self.key(name),
                unknown_key_reason(name, self.known),
            );
        }
    }
}

/// "unknown key", with the closest known key of the same table, or else the table
/// where a key of that name belongs.
fn unknown_key_reason(name: &str, known: &[&str]) -> String {
    let closest = known
        .iter()
        .map(|k| (strsim::jaro_winkler(name, k), *k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, k)) = closest {
        return format!("unknown key; did you mean `{k}`?");
    }
    if let Some((table, _)) = TABLES.iter().find(|(_, keys)| keys.contains(&name)) {
        return format!("unknown key here; `{name}` belongs in {table}");
    }
    format!("unknown key (known keys here: {})", known.join(", "))
}

/// 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.get(..at.min(text.len()))
        .unwrap_or(text)
        .matches('\n')
        .count()
        + 1
}

/// The value as written, shortened for a message.
fn shown(text: &str, value: &Spanned<DeValue<'_>>) -> String {
    let span = value.span();
    let written = text.get(span.start..span.end).unwrap_or("?").trim();
    let mut out: String = written.chars().take(40).collect();
    if out.len() < written.len() {
        out.push('…');
    }
    out.replace('\n', " ")
}
