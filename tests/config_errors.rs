//! A bad configuration as `mqsync run` meets it: every problem (unknown keys, values of
//! the wrong type, bad values, files that cannot be read, folders that do not exist)
//! listed at once with file, line or key, before anything starts; and a missing folder
//! created only when the folder says `create = true`.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `mqsync run --config CFG`, which must exit by itself: its exit code and stderr
/// (killed after 30 s if it does not, with the exit code `None`).
fn run_refused(cfg: &Path) -> (Option<i32>, String) {
    let log = cfg.with_extension("stderr");
    let mut child = Command::new(BIN)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("MQSYNC_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut code = None;
    let exited = wait_until(Duration::from_secs(30), || match child.try_wait() {
        Ok(Some(status)) => {
            code = status.code();
            true
        }
        _ => false,
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    (code, fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn run_lists_every_problem_at_once_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certs_init(&d.join("certs"), "n1");
    fs::create_dir(d.join("media")).unwrap();
    let cfg = d.join("n1.toml");
    fs::write(
        &cfg,
        r#"node_id = "n1"
state_dir = "state"

[broker]
url = "mqtts://127.0.0.1:1"
ca_file = "certs/ca.pem"
cert_file = "certs/absent.pem"
key_file = "certs/n1.key"

[security]
group_key_file = "certs/no-group.key"

[[folder]]
id = "media"
path = "media"
ingore = ["*.tmp"]

[[folder]]
id = "docs"
path = "dcos"
debounce = 100
mode = "sideways"
"#,
    )
    .unwrap();
    let (code, err) = run_refused(&cfg);
    assert_eq!(code, Some(1), "{err}");
    let file = cfg.display().to_string();
    for line in [
        format!("{file}:16: folder[0].ingore: unknown key; did you mean `ignore`?"),
        format!("{file}:21: folder[1].debounce: unknown key; did you mean `debounce_ms`?"),
        format!("{file}: folder[1].mode: unknown mode \"sideways\""),
        format!(
            "{file}: broker.cert_file: {}: cannot read: no such file",
            d.join("certs/absent.pem").display()
        ),
        format!(
            "{file}: security.group_key_file: {}: cannot read: no such file",
            d.join("certs/no-group.key").display()
        ),
        format!(
            "{file}: folder[1].path: {} does not exist",
            d.join("dcos").display()
        ),
    ] {
        assert!(err.contains(&line), "missing {line:?} in:\n{err}");
    }
    // Nothing started, and no message is repeated as its own cause.
    assert!(!err.contains("starting"), "{err}");
    assert_eq!(err.matches("absent.pem").count(), 1, "{err}");
    assert!(!d.join("state").exists(), "state_dir made before refusing");
    assert!(!d.join("dcos").exists(), "the mistyped folder was created");
}

#[test]
fn a_missing_folder_is_refused_unless_it_says_create() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let cfg = d.join("a.toml");
    let text = format!(
        "node_id = \"a\"\nstate_dir = \"state\"\n[broker]\nembedded_listen = \"127.0.0.1:{port}\"\n[[folder]]\nid = \"f\"\npath = \"data\"\n"
    );
    fs::write(&cfg, &text).unwrap();
    let (code, err) = run_refused(&cfg);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}: folder[0].path: {} does not exist",
            cfg.display(),
            d.join("data").display()
        )) && err.contains("create = true"),
        "{err}"
    );
    assert!(!d.join("data").exists());

    // With create = true the node makes it and joins.
    fs::write(&cfg, format!("{text}create = true\n")).unwrap();
    let mut p = Proc::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        &d.join("a.log"),
    );
    assert!(
        wait_until(Duration::from_secs(60), || d.join("data/.mqsync").exists()),
        "{}",
        p.log_text()
    );
    assert!(p.is_running());
    p.stop();
}

#[test]
fn other_commands_list_unknown_keys_and_wrong_types_too() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    fs::write(
        &cfg,
        "node_id = \"n\"\n[broker]\nurll = \"mqtts://h\"\nkeepalive_s = \"30\"\n[[folder]]\nid = \"f\"\npath = \"/srv/f\"\n",
    )
    .unwrap();
    let (ok, _, err) = mqsync_out(&["status", "--config", cfg.to_str().unwrap()]);
    assert!(!ok);
    let file = cfg.display();
    assert!(
        err.contains(&format!(
            "{file}:3: broker.urll: unknown key; did you mean `url`?"
        )) && err.contains(&format!(
            "{file}:4: broker.keepalive_s: expected a whole number, found a string (\"30\")"
        )),
        "{err}"
    );
}

/// The broker's clients check the TLS files they open, by key, all at once, before
/// connecting; they do not need the group key or the folders.
#[test]
fn broker_clients_name_unreadable_tls_files_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let ca = dir.path().join("ca.pem");
    fs::write(&ca, "not checked for content here\n").unwrap();
    let missing = dir.path().join("n.pem");
    fs::write(
        &cfg,
        format!(
            "node_id = \"n\"\n[broker]\nurl = \"mqtts://127.0.0.1:1\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n[[folder]]\nid = \"f\"\npath = \"/nonexistent/f\"\n",
            ca.display(),
            missing.display(),
            dir.path().display(),
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    for cmd in [
        vec!["status", "--config", c],
        vec!["wait", "--config", c, "--timeout", "1"],
        vec!["pending", "--config", c],
        vec!["resync", "--config", c],
    ] {
        let (ok, _, err) = mqsync_out(&cmd);
        assert!(!ok, "{cmd:?}");
        assert!(
            err.contains(&format!(
                "broker.cert_file: {}: cannot read: no such file",
                missing.display()
            )) && err.contains(&format!(
                "broker.key_file: {} is not a file",
                dir.path().display()
            )),
            "{cmd:?}: {err}"
        );
        assert!(
            !err.contains("ca_file") && !err.contains("group_key_file") && !err.contains("folder"),
            "{cmd:?}: only the unreadable TLS files: {err}"
        );
    }
}

#[test]
fn hooks_are_checked_before_starting_and_run_check_reports_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    for f in ["a", "b", "c", "d"] {
        fs::create_dir(d.join(f)).unwrap();
    }
    let head = format!(
        "node_id = \"n\"\nstate_dir = \"state\"\n[broker]\nembedded_listen = \"127.0.0.1:{port}\"\n"
    );
    let cfg = d.join("hooks.toml");
    fs::write(
        &cfg,
        format!(
            r#"{head}
[[folder]]
id = "a"
path = "a"
on_change = []

[[folder]]
id = "b"
path = "b"
on_change = ["/nonexistent/reload-broker", "-HUP"]

[[folder]]
id = "c"
path = "c"
on_change = 5

[[folder]]
id = "d"
path = "d"
on_change = ["/usr/bin/kill", "-HUP", "1"]
"#
        ),
    )
    .unwrap();
    let (code, err) = run_refused(&cfg);
    assert_eq!(code, Some(1), "{err}");
    let file = cfg.display().to_string();
    for line in [
        format!("{file}: folder[0].on_change: the argument list needs a program first"),
        format!(
            "{file}: folder[1].on_change: /nonexistent/reload-broker: no such program (the argument list is executed directly, without a shell)"
        ),
        format!(
            "{file}:19: folder[2].on_change: expected a string (run with sh -c) or an array of strings (program and arguments), found an integer (5)"
        ),
    ] {
        assert!(err.contains(&line), "missing {line:?} in:\n{err}");
    }
    assert!(!err.contains("folder[3]"), "{err}");

    // Fixed, `run --check` says so and exits without starting anything.
    let text = fs::read_to_string(&cfg).unwrap();
    let text = text
        .replace("on_change = []", "on_change = \"true\"")
        .replace("/nonexistent/reload-broker", "/usr/bin/true")
        .replace("on_change = 5", "on_change = [\"true\"]");
    fs::write(&cfg, text).unwrap();
    let (ok, out, err) = mqsync_out(&["run", "--check", "--config", cfg.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("configuration OK: node n, 4 folder(s)"),
        "{out}"
    );
    assert!(!d.join("state").exists(), "--check made state_dir");
}
