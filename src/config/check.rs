//! What `mqsync run` checks on this machine before it starts anything, collected with
//! the other problems of the configuration: at least one folder, every file a key names
//! (CA, client certificate and key, group key) readable, every folder's path an
//! existing directory unless the folder says `create = true`, and the program of an
//! argument-list `on_change` hook, when given as an absolute path, executable. The
//! broker's clients (`status`, `wait`, …) check the TLS files only.

use std::io;
use std::path::Path;

use super::error::Errors;
use super::{Config, ENV_FOLDERS};
use crate::ops::hook::Hook;

/// Why `mqsync run` has nothing to do, if it has not.
pub(super) fn no_folder(config: &Config) -> Option<String> {
    (config.folders.is_empty() && !config.docker.volume_plugin).then(|| {
        format!(
            "no folder configured: add a [[folder]] table with id and path, or set {ENV_FOLDERS}=\"id=/path\" (or serve Docker volumes with [docker] volume_plugin = true)"
        )
    })
}

/// Pushes every problem `mqsync run` would meet with `config` on this machine.
/// `folder_keys` names each folder as validation did (`folder[1]`, `MQSYNC_FOLDERS[x]`).
pub(super) fn for_run(config: &Config, folder_keys: &[String], errors: &mut Errors) {
    if let Some(problem) = no_folder(config) {
        errors.push("folder", problem);
    }
    tls_files(config, errors);
    let b = &config.broker;
    match &config.security.group_key_file {
        Some(path) => match std::fs::read(path) {
            Err(e) => errors.push("security.group_key_file", cannot_read(path, &e)),
            Ok(bytes) if bytes.trim_ascii().is_empty() => errors.push(
                "security.group_key_file",
                format!("{} is empty: it must hold the group key", path.display()),
            ),
            Ok(_) => {}
        },
        None if b.url.is_some() => errors.push(
            "security.group_key_file",
            "missing: required with an external broker, since every node of a folder needs the same key (`mqsync certs init` writes group.key)",
        ),
        None => {}
    }
    for (i, f) in config.folders.iter().enumerate() {
        if f.path.as_os_str().is_empty() {
            continue; // reported by validation
        }
        let key = folder_keys
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("folder[{i}]"));
        match std::fs::metadata(&f.path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => errors.push(
                format!("{key}.path"),
                format!("{} is not a directory", f.path.display()),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound && f.create => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => errors.push(
                format!("{key}.path"),
                format!(
                    "{} does not exist: create it (or mount the volume), or set create = true in this [[folder]] to have mqsync create it",
                    f.path.display()
                ),
            ),
            Err(e) => errors.push(format!("{key}.path"), cannot_read(&f.path, &e)),
        }
        if let Some(Hook::Exec(argv)) = &f.on_change
            && let Some(program) = argv.first().map(Path::new)
            && program.is_absolute()
            && let Err(why) = executable(program)
        {
            errors.push(format!("{key}.on_change"), why);
        }
    }
}

/// Whether `program` is a file this process may execute (a hook's argument list is run
/// without a shell, so a missing program would only show at the first change).
fn executable(program: &Path) -> Result<(), String> {
    match std::fs::metadata(program) {
        Ok(m) if !m.is_file() => Err(format!("{} is not a file", program.display())),
        Ok(_) => rustix::fs::access(program, rustix::fs::Access::EXEC_OK).map_err(|e| {
            format!(
                "{}: not executable by the user mqsync runs as ({e})",
                program.display()
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "{}: no such program (the argument list is executed directly, without a shell)",
            program.display()
        )),
        Err(e) => Err(cannot_read(program, &e)),
    }
}

/// Pushes a problem for each TLS file of an external `mqtts://` broker that this
/// process cannot read. The embedded broker's are made in `state_dir/certs` on first
/// start, so they are not checked.
pub(super) fn tls_files(config: &Config, errors: &mut Errors) {
    let b = &config.broker;
    if b.url.as_ref().is_some_and(|u| u.tls) {
        for (key, path) in [
            ("broker.ca_file", &b.ca_file),
            ("broker.cert_file", &b.cert_file),
            ("broker.key_file", &b.key_file),
        ] {
            if let Some(path) = path
                && let Err(why) = readable(path)
            {
                errors.push(key, why);
            }
        }
    }
}

/// Whether `path` is a file this process can open for reading.
fn readable(path: &Path) -> Result<(), String> {
    match std::fs::File::open(path).and_then(|f| f.metadata()) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("{} is not a file", path.display())),
        Err(e) => Err(cannot_read(path, &e)),
    }
}

fn cannot_read(path: &Path, e: &io::Error) -> String {
    let why = match e.kind() {
        io::ErrorKind::NotFound => "no such file".to_owned(),
        io::ErrorKind::PermissionDenied => {
            "permission denied (it must be readable by the user mqsync runs as)".to_owned()
        }
        _ => e.to_string(),
    };
    format!("{}: cannot read: {why}", path.display())
}
