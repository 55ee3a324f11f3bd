//! Unit tests of the configuration: parsing, the environment overlay, validation and
//! error messages, all through the public entry points.

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

const ORIGIN: &str = "/etc/mqsync/mqsync.toml";

fn load(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new(ORIGIN), env)
}

fn invalid(err: ConfigError) -> Vec<KeyError> {
    match err {
        ConfigError::Invalid { file, errors } => {
            assert_eq!(file, Path::new(ORIGIN));
            errors
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn has(errors: &[KeyError], key: &str, needle: &str) -> bool {
    errors
        .iter()
        .any(|e| e.key == key && e.reason.contains(needle))
}

const BASIC: &str = r#"
node_id = "n1"
state_dir = "/var/lib/mqsync"
[broker]
url = "mqtts://broker.example:8884"
ca_file = "/run/secrets/ca.pem"
[[folder]]
id = "media"
path = "/srv/media"
"#;

#[test]
fn defaults_and_basic_values() {
    let c = load(BASIC, &no_env).expect("valid");
    assert_eq!(c.node_id, "n1");
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(
        c.broker.url,
        Some(BrokerUrl {
            host: "broker.example".into(),
            port: 8884,
            tls: true
        })
    );
    assert_eq!(c.broker.topic_prefix, "mqsync");
    assert_eq!(c.broker.keepalive_s, 30);
    assert_eq!(
        c.broker.embedded_listen,
        "127.0.0.1:8883".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(c.client_id(), "mqsync-n1");
    let f = &c.folders[0];
    assert_eq!(f.mode, Mode::SendReceive);
    assert_eq!(f.debounce_ms, 100);
    assert!(c.validate_for_run().is_ok());
}

#[test]
fn url_forms() {
    let u: BrokerUrl = "mqtts://h".parse().expect("url");
    assert_eq!((u.port, u.tls), (8883, true));
    let u: BrokerUrl = "mqtt://h".parse().expect("url");
    assert_eq!((u.port, u.tls), (1883, false));
    let u: BrokerUrl = "mqtts://[::1]:9000".parse().expect("url");
    assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
    assert!("https://h".parse::<BrokerUrl>().is_err());
    assert!("mqtts://h:0".parse::<BrokerUrl>().is_err());
    assert!("mqtts://h:99999".parse::<BrokerUrl>().is_err());
    assert!("mqtts://:8883".parse::<BrokerUrl>().is_err());
    assert!("mqtts://h/path".parse::<BrokerUrl>().is_err());
}

#[test]
fn unknown_top_level_table_is_named_with_file_and_line() {
    let text = "node_id = \"n1\"\n[brokr]\nurl = \"mqtts://h\"\n";
    let err = load(text, &no_env).expect_err("unknown key");
    let shown = err.to_string();
    let errors = invalid(err);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key, "brokr");
    assert_eq!(errors[0].line, Some(2));
    assert!(
        errors[0].reason.contains("did you mean `broker`"),
        "{errors:?}"
    );
    assert!(
        shown.starts_with("/etc/mqsync/mqsync.toml:2: brokr: unknown key"),
        "{shown}"
    );
}

#[test]
fn unknown_nested_key_and_type_error_are_named() {
    let text = "[broker]\nurll = \"x\"\n";
    let errors = invalid(load(text, &no_env).expect_err("unknown key"));
    assert!(
        errors
            .iter()
            .any(|e| e.key == "broker.urll" && e.line == Some(2)),
        "{errors:?}"
    );

    let text = "[[folder]]\nid = \"a\"\npath = \"/a\"\n[[folder]]\nid = \"b\"\npath = \"/b\"\ndebounce_ms = \"fast\"\n";
    let errors = invalid(load(text, &no_env).expect_err("type error"));
    let e = errors
        .iter()
        .find(|e| e.key == "folder[1].debounce_ms")
        .unwrap_or_else(|| panic!("{errors:?}"));
    assert_eq!(e.line, Some(7));
    assert!(
        e.reason
            .contains("expected a whole number, found a string (\"fast\")"),
        "{e:?}"
    );
}

#[test]
fn every_unknown_key_and_wrong_type_is_listed_with_the_value_errors() {
    let text = r#"
node_id = "n"
[broker]
url = "mqtts://h"
group_key_file = "/run/secrets/gk"
keepalive_s = -3
[[folder]]
id = "a"
path = "/srv/a"
[[folder]]
id = "b"
path = "/srv/b"
ingore = ["*.tmp"]
debounce = 100
mode = "sideways"
ignore = ["*.swp", 7]
max_delete_percent = "half"
"#;
    let err = load(text, &no_env).expect_err("many errors");
    let shown = err.to_string();
    let errors = invalid(err);
    for (key, line, needle) in [
        ("broker.group_key_file", Some(5), "belongs in [security]"),
        ("broker.keepalive_s", Some(6), "found an integer (-3)"),
        ("folder[1].ingore", Some(13), "did you mean `ignore`?"),
        (
            "folder[1].debounce",
            Some(14),
            "did you mean `debounce_ms`?",
        ),
        ("folder[1].ignore[1]", Some(16), "expected a string"),
        ("folder[1].max_delete_percent", Some(17), "\"half\""),
        ("folder[1].mode", None, "unknown mode \"sideways\""),
        ("broker.ca_file", None, "required"),
    ] {
        assert!(
            errors
                .iter()
                .any(|e| e.key == key && e.line == line && e.reason.contains(needle)),
            "{key} (line {line:?}): {needle} not in {errors:?}"
        );
    }
    // A value of the wrong type is reported once, not again as missing or invalid.
    assert_eq!(
        errors
            .iter()
            .filter(|e| e.key.starts_with("broker.keepalive_s"))
            .count(),
        1,
        "{errors:?}"
    );
    assert_eq!(errors.len(), 8, "{errors:?}");
    // File lines first, in file order, each line naming file, line and key.
    assert!(
        shown
            .lines()
            .next()
            .is_some_and(|l| l
                .starts_with("/etc/mqsync/mqsync.toml:5: broker.group_key_file: unknown key here")),
        "{shown}"
    );
}

#[test]
fn a_syntax_error_stops_with_file_line_and_column() {
    let text = "node_id = \"n\"\n[broker\nurl = 1\n";
    let err = load(text, &no_env).expect_err("syntax");
    assert!(
        matches!(&err, ConfigError::Parse { line: 2, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("/etc/mqsync/mqsync.toml:2:"),
        "{err}"
    );
}

#[test]
fn bad_mode_is_named() {
    let text = "node_id = \"n\"\n[[folder]]\nid = \"m\"\npath = \"/srv/m\"\nmode = \"sendonly\"\n";
    let errors = invalid(load(text, &no_env).expect_err("bad mode"));
    assert!(
        has(&errors, "folder[0].mode", "unknown mode \"sendonly\""),
        "{errors:?}"
    );
}

#[test]
fn watch_and_poll_interval_are_checked_together_and_overridable() {
    let text = "node_id = \"n\"\n[[folder]]\nid = \"m\"\npath = \"/srv/m\"\nwatch = \"fanotify\"\npoll_interval_s = 0\n";
    let errors = invalid(load(text, &no_env).expect_err("bad watch"));
    assert!(
        has(&errors, "folder[0].watch", "unknown watch \"fanotify\"")
            && has(&errors, "folder[0].poll_interval_s", "from 1 to 86400"),
        "{errors:?}"
    );
    let env = env_of(&[
        ("MQSYNC_FOLDER_M_WATCH", "poll"),
        ("MQSYNC_FOLDER_M_POLL_INTERVAL_S", "30"),
    ]);
    let c = load(text, &env).expect("valid with the overrides");
    let m = c.folder("m").expect("m");
    assert_eq!(m.watch, crate::fs::watcher::WatchMode::Poll);
    assert_eq!(m.poll_interval_s, 30);
    let c = load(BASIC, &no_env).expect("valid");
    let media = c.folder("media").expect("media");
    assert_eq!(
        (media.watch, media.poll_interval_s),
        (crate::fs::watcher::WatchMode::Inotify, 10)
    );
}

#[test]
fn several_errors_reported_at_once() {
    let text = r#"
node_id = "bad id!"
state_dir = "/srv/media/.state"
log_format = "xml"
[broker]
url = "mqtts://h"
cert_file = "/run/secrets/c.pem"
topic_prefix = "/a/#"
keepalive_s = 0
embedded_listen = "localhost"
[[folder]]
id = "media"
path = "/srv/media"
ignore = ["*.tmp", "a[b", "!keep.tmp"]
debounce_ms = 60001
compression = "fast"
ownership = "byname"
[[folder]]
id = "media"
path = "/srv/media/sub"
"#;
    let err = load(text, &no_env).expect_err("many errors");
    let shown = err.to_string();
    let errors = invalid(err);
    for (key, needle) in [
        ("node_id", "contains ' '"),
        ("state_dir", "inside folder[0]"),
        ("log_format", "xml"),
        ("broker.ca_file", "required"),
        ("broker.key_file", "missing"),
        ("broker.topic_prefix", "wildcard"),
        ("broker.keepalive_s", "out of range"),
        ("broker.embedded_listen", "localhost"),
        (
            "folder[0].ignore[1]",
            "folder \"media\": invalid glob pattern \"a[b\"",
        ),
        (
            "folder[0].ignore[2]",
            "negation (a leading `!`) is not supported",
        ),
        ("folder[0].debounce_ms", "60001"),
        ("folder[0].compression", "\"fast\" is not one of"),
        ("folder[0].ownership", "unknown ownership \"byname\""),
        ("folder[1].id", "duplicate folder id"),
        ("folder[1].path", "inside folder[0]"),
    ] {
        assert!(
            has(&errors, key, needle),
            "{key}: {needle} not in {errors:?}"
        );
    }
    assert_eq!(shown.lines().count(), errors.len());
    assert!(
        shown
            .lines()
            .all(|l| l.starts_with("/etc/mqsync/mqsync.toml: "))
    );
}

#[test]
fn max_message_bytes_defaults_to_fit_a_1_mb_broker_and_is_checked() {
    let c = load(BASIC, &no_env).expect("valid");
    assert_eq!(c.broker.max_message_bytes, 1_000_000);
    let env = env_of(&[("MQSYNC_BROKER_MAX_MESSAGE_BYTES", "262144")]);
    assert_eq!(load(BASIC, &env).unwrap().broker.max_message_bytes, 262_144);
    let with = |n: &str| BASIC.replace("[broker]", &format!("[broker]\nmax_message_bytes = {n}"));
    assert_eq!(
        load(&with("32768"), &no_env)
            .unwrap()
            .broker
            .max_message_bytes,
        32_768
    );
    for bad in ["1000", "32767", "4259841"] {
        let errors = invalid(load(&with(bad), &no_env).expect_err(bad));
        assert!(
            has(
                &errors,
                "broker.max_message_bytes",
                "out of range 32768..=4259840"
            ) && has(&errors, "broker.max_message_bytes", "max_packet_size"),
            "{errors:?}"
        );
    }
    let env = env_of(&[("MQSYNC_BROKER_MAX_MESSAGE_BYTES", "1MB")]);
    let errors = invalid(load(BASIC, &env).expect_err("not a number"));
    assert!(
        has(
            &errors,
            "MQSYNC_BROKER_MAX_MESSAGE_BYTES",
            "not a non-negative integer"
        ),
        "{errors:?}"
    );
}

#[test]
fn plaintext_needs_explicit_opt_in() {
    let text = "node_id = \"n\"\n[broker]\nurl = \"mqtt://h\"\n";
    let errors = invalid(load(text, &no_env).expect_err("plaintext"));
    assert!(
        has(&errors, "broker.url", "broker.insecure_plaintext"),
        "{errors:?}"
    );
    let text = "node_id = \"n\"\n[broker]\nurl = \"mqtt://h\"\ninsecure_plaintext = true\n";
    let c = load(text, &no_env).expect("allowed");
    assert_eq!(c.broker.url.map(|u| u.port), Some(1883));
    // The opt-in also works from the environment.
    let env = env_of(&[("MQSYNC_BROKER_INSECURE_PLAINTEXT", "yes")]);
    let text = "node_id = \"n\"\n[broker]\nurl = \"mqtt://h\"\n";
    assert!(load(text, &env).is_ok());
}

#[test]
fn env_overrides_win_over_the_file() {
    let env = env_of(&[
        ("MQSYNC_NODE_ID", "from-env"),
        ("MQSYNC_LOG_FORMAT", "json"),
        ("MQSYNC_BROKER_URL", "mqtts://other:9999"),
        ("MQSYNC_BROKER_KEEPALIVE_S", "60"),
        ("MQSYNC_SECURITY_GROUP_KEY_FILE", "/run/secrets/gk"),
        ("MQSYNC_FOLDER_MEDIA_PATH", "/data/media"),
        ("MQSYNC_FOLDER_MEDIA_MODE", "receive-only"),
        ("MQSYNC_FOLDER_MEDIA_IGNORE", "*.swp, *.tmp"),
        ("MQSYNC_FOLDERS", "conf-2=/etc/app"),
        ("MQSYNC_FOLDER_CONF_2_DEBOUNCE_MS", "250"),
        ("MQSYNC_FOLDER_MEDIA_OWNERSHIP", "numeric"),
        ("MQSYNC_FOLDER_MEDIA_XATTRS", "true"),
    ]);
    let c = load(BASIC, &env).expect("valid");
    assert_eq!(c.node_id, "from-env");
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.broker.url.as_ref().map(|u| u.port), Some(9999));
    assert_eq!(c.broker.keepalive_s, 60);
    assert_eq!(
        c.security.group_key_file.as_deref(),
        Some(Path::new("/run/secrets/gk"))
    );
    let media = c.folder("media").expect("media");
    assert_eq!(media.path, Path::new("/data/media"));
    assert_eq!(media.mode, Mode::ReceiveOnly);
    assert_eq!(media.ignore, ["*.swp", "*.tmp"]);
    assert_eq!(media.ownership, crate::fs::attrs::Ownership::Numeric);
    assert!(media.xattrs);
    let conf = c.folder("conf-2").expect("declared by env");
    // Owners by name, no extended attributes: what `rsync -a` as root keeps.
    assert_eq!(conf.ownership, crate::fs::attrs::Ownership::Names);
    assert!(!conf.xattrs);
    assert_eq!(conf.path, Path::new("/etc/app"));
    assert_eq!(conf.debounce_ms, 250);

    // Empty URL selects the embedded broker.
    let c = load(BASIC, &env_of(&[("MQSYNC_BROKER_URL", "")])).expect("valid");
    assert_eq!(c.broker.url, None);
}

#[test]
fn unparsable_env_value_names_the_variable() {
    let env = env_of(&[
        ("MQSYNC_BROKER_KEEPALIVE_S", "soon"),
        ("MQSYNC_BROKER_INSECURE_PLAINTEXT", "maybe"),
        ("MQSYNC_FOLDERS", "nopath"),
    ]);
    let errors = invalid(load(BASIC, &env).expect_err("bad env"));
    assert!(
        has(&errors, "MQSYNC_BROKER_KEEPALIVE_S", "soon"),
        "{errors:?}"
    );
    assert!(has(&errors, "MQSYNC_BROKER_INSECURE_PLAINTEXT", "maybe"));
    assert!(has(&errors, "MQSYNC_FOLDERS", "nopath"));
}

#[test]
fn relative_paths_resolve_against_the_config_dir() {
    let text = r#"
node_id = "n"
state_dir = "state"
[broker]
url = "mqtts://h"
ca_file = "certs/ca.pem"
[security]
group_key_file = "../secrets/gk"
[[folder]]
id = "m"
path = "./data/m"
"#;
    let c = load(text, &no_env).expect("valid");
    assert_eq!(c.state_dir, Path::new("/etc/mqsync/state"));
    assert_eq!(
        c.broker.ca_file.as_deref(),
        Some(Path::new("/etc/mqsync/certs/ca.pem"))
    );
    assert_eq!(
        c.security.group_key_file.as_deref(),
        Some(Path::new("/etc/secrets/gk"))
    );
    assert_eq!(c.folders[0].path, Path::new("/etc/mqsync/data/m"));
}

#[test]
fn env_only_and_run_validation() {
    let c = Config::from_env_only(&env_of(&[("MQSYNC_NODE_ID", "n")])).expect("defaults");
    assert!(c.folders.is_empty());
    assert_eq!(c.broker.url, None);
    assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
    let err = c.validate_for_run().expect_err("no folder");
    assert!(
        err.to_string().contains("folder: no folder configured"),
        "{err}"
    );

    let env = env_of(&[
        ("MQSYNC_NODE_ID", "n"),
        ("MQSYNC_FOLDERS", "media=/srv/media,conf=/etc/app"),
    ]);
    let c = Config::from_env_only(&env).expect("env folders");
    assert_eq!(c.folders.len(), 2);
    assert!(c.validate_for_run().is_ok());
}

#[test]
fn folder_paths_and_state_dir_must_not_overlap() {
    let text = r#"
node_id = "n"
state_dir = "/srv"
[[folder]]
id = "a"
path = "/data/a"
[[folder]]
id = "b"
path = "/data/a"
[[folder]]
id = "c"
path = "/srv/c"
[[folder]]
id = "d-1"
path = "/data/d1"
[[folder]]
id = "d.1"
path = "/data/d2"
"#;
    let errors = invalid(load(text, &no_env).expect_err("overlap"));
    assert!(
        has(&errors, "folder[1].path", "also the path of folder[0]"),
        "{errors:?}"
    );
    assert!(
        has(&errors, "folder[2].path", "inside state_dir"),
        "{errors:?}"
    );
    assert!(
        has(&errors, "folder[4].id", "MQSYNC_FOLDER_D_1_"),
        "{errors:?}"
    );
    // "/data/ab" is not inside "/data/a".
    let text = "node_id = \"n\"\n[[folder]]\nid = \"a\"\npath = \"/data/a\"\n[[folder]]\nid = \"b\"\npath = \"/data/ab\"\n";
    assert!(load(text, &no_env).is_ok());
}

#[test]
fn docker_volume_plugin() {
    // Volumes only: no [[folder]] needed, defaults filled in, env overrides.
    let text = "node_id = \"n\"\nstate_dir = \"/var/lib/mqsync\"\n[docker]\nvolume_plugin = true\nvolumes_root = \"/var/lib/vols\"\n";
    let c = load(text, &no_env).expect("valid");
    assert!(c.docker.volume_plugin);
    assert_eq!(
        c.docker.volumes_root.as_deref(),
        Some(Path::new("/var/lib/vols"))
    );
    assert_eq!(c.docker.plugin_socket, Path::new(DEFAULT_PLUGIN_SOCKET));
    assert!(c.validate_for_run().is_ok());
    let env = |k: &str| match k {
        "MQSYNC_DOCKER_PLUGIN_SOCKET" => Some("/tmp/p.sock".to_string()),
        "MQSYNC_DOCKER_VOLUME_PLUGIN" => Some("off".to_string()),
        _ => None,
    };
    let c = load(text, &env).expect("valid");
    assert!(!c.docker.volume_plugin);
    assert_eq!(c.docker.plugin_socket, Path::new("/tmp/p.sock"));
    assert!(c.validate_for_run().is_err(), "no folder and no volumes");

    let errors = invalid(
        load("node_id = \"n\"\n[docker]\nvolume_plugin = true\n", &no_env).expect_err("no root"),
    );
    assert!(has(&errors, "docker.volumes_root", "missing"), "{errors:?}");
    let text = "node_id = \"n\"\nstate_dir = \"/srv/state\"\n[docker]\nvolumes_root = \"/srv\"\n[[folder]]\nid = \"a\"\npath = \"/srv/vols/a\"\n";
    let errors = invalid(load(text, &no_env).expect_err("overlaps"));
    assert!(
        has(&errors, "docker.volumes_root", "state_dir"),
        "{errors:?}"
    );
    assert!(
        has(&errors, "docker.volumes_root", "folder[0]"),
        "{errors:?}"
    );
    let err =
        load("node_id = \"n\"\n[docker]\nsocket = \"x\"\n", &no_env).expect_err("unknown key");
    assert!(err.to_string().contains("socket"), "{err}");
}

#[test]
fn folder_without_id_or_path() {
    let text = "node_id = \"n\"\n[[folder]]\nmode = \"send-only\"\n";
    let errors = invalid(load(text, &no_env).expect_err("missing"));
    assert!(has(&errors, "folder[0].id", "missing"));
    assert!(has(&errors, "folder[0].path", "missing"));
}

/// A directory with the files `run` reads: the CA, certificate, key and group key, and
/// one existing folder.
fn run_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    for f in ["ca.pem", "n.pem", "n.key"] {
        std::fs::write(d.path().join(f), "x").expect("write");
    }
    std::fs::write(d.path().join("group.key"), "secret\n").expect("write");
    std::fs::create_dir(d.path().join("a")).expect("mkdir");
    d
}

fn load_for_run(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_checked(text, &dir.join("mqsync.toml"), &no_env, Checks::Run)
}

const RUN_OK: &str = r#"
node_id = "n"
state_dir = "state"
[broker]
url = "mqtts://h"
ca_file = "ca.pem"
cert_file = "n.pem"
key_file = "n.key"
[security]
group_key_file = "group.key"
[[folder]]
id = "a"
path = "a"
"#;

#[test]
fn run_checks_pass_when_every_file_and_folder_is_there() {
    let d = run_dir();
    let c = load_for_run(d.path(), RUN_OK).expect("valid for run");
    assert!(!c.folders[0].create);
    // The same text without the run checks needs nothing on disk.
    assert!(load(RUN_OK, &no_env).is_ok());
}

#[test]
fn run_checks_name_every_missing_file_and_folder_with_the_other_problems() {
    let d = run_dir();
    for f in ["n.pem", "group.key", "ca.pem"] {
        std::fs::remove_file(d.path().join(f)).expect("rm");
    }
    std::fs::write(d.path().join("n.key"), "").expect("write");
    let text = RUN_OK.replace("path = \"a\"", "path = \"typo\"\ndebounce = 1");
    let err = load_for_run(d.path(), &text).expect_err("missing files");
    let ConfigError::Invalid { errors, .. } = &err else {
        panic!("expected Invalid, got {err:?}");
    };
    for (key, needle) in [
        ("folder[0].debounce", "did you mean `debounce_ms`?"),
        ("broker.ca_file", "ca.pem: cannot read: no such file"),
        ("broker.cert_file", "n.pem: cannot read: no such file"),
        (
            "security.group_key_file",
            "group.key: cannot read: no such file",
        ),
        ("folder[0].path", "typo does not exist"),
        ("folder[0].path", "create = true"),
    ] {
        assert!(
            has(errors, key, needle),
            "{key}: {needle} not in {errors:?}"
        );
    }
    // Each problem once, on its own line.
    assert_eq!(errors.len(), 5, "{errors:?}");
    assert_eq!(err.to_string().lines().count(), 5, "{err}");

    // An empty group key, and none at all with an external broker.
    std::fs::write(d.path().join("group.key"), " \n").expect("write");
    for f in ["n.pem", "ca.pem"] {
        std::fs::write(d.path().join(f), "x").expect("write");
    }
    let errors = invalid_in(load_for_run(d.path(), RUN_OK).expect_err("empty key"));
    assert!(
        has(&errors, "security.group_key_file", "is empty"),
        "{errors:?}"
    );
    let text = RUN_OK.replace("[security]\ngroup_key_file = \"group.key\"\n", "");
    let errors = invalid_in(load_for_run(d.path(), &text).expect_err("no key"));
    assert!(
        has(
            &errors,
            "security.group_key_file",
            "required with an external broker"
        ),
        "{errors:?}"
    );
}

#[test]
fn a_missing_folder_is_created_only_when_the_folder_says_so() {
    let d = run_dir();
    let text = RUN_OK.replace("path = \"a\"", "path = \"new\"\ncreate = true");
    let c = load_for_run(d.path(), &text).expect("create = true");
    assert!(c.folders[0].create);
    // From the environment too, for folders declared there.
    let env = env_of(&[
        ("MQSYNC_FOLDERS", "b=/nonexistent/mqsync-test-b"),
        ("MQSYNC_FOLDER_B_CREATE", "true"),
    ]);
    let c = Config::from_toml_checked(RUN_OK, &d.path().join("mqsync.toml"), &env, Checks::Run)
        .expect("env create");
    assert!(c.folder("b").is_some_and(|f| f.create));
    let env = env_of(&[("MQSYNC_FOLDERS", "b=/nonexistent/mqsync-test-b")]);
    let errors = invalid_in(
        Config::from_toml_checked(RUN_OK, &d.path().join("mqsync.toml"), &env, Checks::Run)
            .expect_err("missing"),
    );
    assert!(
        has(&errors, "MQSYNC_FOLDERS[b].path", "does not exist"),
        "{errors:?}"
    );
    // A file is not a folder, create or not.
    let text = RUN_OK.replace("path = \"a\"", "path = \"ca.pem\"\ncreate = true");
    let errors = invalid_in(load_for_run(d.path(), &text).expect_err("a file"));
    assert!(
        has(&errors, "folder[0].path", "is not a directory"),
        "{errors:?}"
    );
}

fn invalid_in(err: ConfigError) -> Vec<KeyError> {
    match err {
        ConfigError::Invalid { errors, .. } => errors,
        other => panic!("expected Invalid, got {other:?}"),
    }
}
