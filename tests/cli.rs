//! The command line as a user meets it: the demo, `run` with the embedded broker,
//! configuration errors, and hostile messages on the internal topics.

mod common;

use common::*;
use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[test]
fn demo_syncs_its_folders_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let mut p = Proc::spawn(
        &["demo", demo.to_str().unwrap()],
        &dir.path().join("demo.log"),
    );
    let (a, b, c) = (demo.join("a"), demo.join("b"), demo.join("c"));
    assert!(
        wait_until(T, || p.log_text().contains("Ctrl-C stops the demo")),
        "demo did not start: {}",
        p.log_text()
    );
    assert!(wait_until(T, || c.join(".mqsync").exists()));
    fs::write(a.join("hello.txt"), b"hello").unwrap();
    assert!(wait_until(T, || fs::read(b.join("hello.txt"))
        .is_ok_and(|d| d == b"hello")));
    assert!(wait_until(T, || fs::read(c.join("hello.txt"))
        .is_ok_and(|d| d == b"hello")));
    let child = p.child.as_mut().unwrap();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let mut status = None;
    assert!(wait_until(Duration::from_secs(20), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    }));
    assert!(
        status.unwrap().success(),
        "demo exit: {status:?}\n{}",
        p.log_text()
    );
}

#[test]
fn run_without_a_broker_url_starts_the_embedded_broker() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    fs::write(
        d.join("a.toml"),
        format!(
            "node_id = \"a\"\nstate_dir = \"state-a\"\n[broker]\nembedded_listen = \"127.0.0.1:{port}\"\n[[folder]]\nid = \"f\"\npath = \"data-a\"\ncreate = true\n"
        ),
    )
    .unwrap();
    let mut a = Proc::spawn(
        &["run", "--config", d.join("a.toml").to_str().unwrap()],
        &d.join("a.log"),
    );
    let certs = d.join("state-a/certs");
    assert!(wait_until(T, || certs.join("group.key").exists()
        && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()));
    // A second node joins with a certificate from the same CA.
    certs_init(&certs, "b");
    let c = certs.display();
    fs::create_dir(d.join("data-b")).unwrap();
    fs::write(
        d.join("b.toml"),
        format!(
            "node_id = \"b\"\nstate_dir = \"state-b\"\n[broker]\nurl = \"mqtts://localhost:{port}\"\nca_file = \"{c}/ca.pem\"\ncert_file = \"{c}/b.pem\"\nkey_file = \"{c}/b.key\"\n[security]\ngroup_key_file = \"{c}/group.key\"\n[[folder]]\nid = \"f\"\npath = \"data-b\"\n"
        ),
    )
    .unwrap();
    let _b = Proc::spawn(
        &["run", "--config", d.join("b.toml").to_str().unwrap()],
        &d.join("b.log"),
    );
    assert!(wait_until(T, || d.join("data-b/.mqsync").exists()));
    fs::write(d.join("data-a/from-a.txt"), b"a").unwrap();
    fs::write(d.join("data-b/from-b.txt"), b"b").unwrap();
    let ok = wait_until(T, || {
        d.join("data-b/from-a.txt").exists() && d.join("data-a/from-b.txt").exists()
    });
    assert!(ok, "a: {}\nb: {}", a.log_text(), _b.log_text());
    assert!(a.is_running());
}

#[test]
fn a_bad_config_is_refused_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    fs::write(
        &cfg,
        "node_id = \"x\"\n[[folder]]\nid = \"f\"\npath = \"/tmp/x\"\nmode = \"sendonly\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("folder[0].mode") && err.contains("bad.toml") && err.contains("sendonly"),
        "{err}"
    );

    fs::write(&cfg, "node_id = \"x\"\n[brokr]\nurl = \"mqtts://h:1\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("brokr"));
}

#[test]
fn malformed_and_forged_messages_are_logged_and_dropped() {
    let mut c = Cluster::new(3);
    c.start_node(0);
    c.start_node(1);
    assert!(wait_until(T, || c.folder(1).join(".mqsync").exists()));
    // Subscribed (the node logs this on its SubAck): the messages below are not
    // retained, so a node that subscribes after them would never see them.
    assert!(wait_until(T, || c.nodes[1]
        .as_ref()
        .unwrap()
        .log_text()
        .contains("connected to broker")));
    // A client holding a valid broker certificate (n3's) but not speaking for the group.
    let topic = "mqsync/shared/v1/n3";
    let forged_key = mqsync::protocol::wire::Keys::new(vec![mqsync::protocol::wire::Keys::derive(
        b"not the group key",
    )])
    .unwrap();
    let forged = mqsync::protocol::wire::encode(
        &mqsync::protocol::wire::Envelope {
            from: "n3".into(),
            msg: mqsync::protocol::wire::Message::Request {
                to: "*".into(),
                hashes: vec![],
            },
        },
        topic,
        &forged_key,
    )
    .unwrap();
    // Larger than any mqsync message but within the broker's packet limit.
    let oversized = vec![0u8; mqsync::protocol::wire::MAX_MESSAGE_BYTES + 1000];
    rogue_publish(
        &c,
        &[
            (topic, b"garbage".to_vec()),
            (topic, forged),
            (topic, oversized),
        ],
        false,
    );
    assert!(
        wait_until(T, || {
            let log = c.nodes[1].as_ref().unwrap().log_text();
            log.contains("dropping message")
                && log.contains("MAC does not verify")
                && log.contains("exceeds")
        }),
        "{}",
        c.nodes[1].as_ref().unwrap().log_text()
    );
    fs::write(c.folder(0).join("after.txt"), b"still syncing").unwrap();
    c.converge(&[0, 1], T, |s| s.contains_key("after.txt"));
}

fn mqsync(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn status_wait_and_healthcheck_report_the_cluster() {
    let mut c = Cluster::new(2);
    c.start_node(0);
    c.start_node(1);
    assert!(wait_until(T, || c.folder(0).join(".mqsync").exists()
        && c.folder(1).join(".mqsync").exists()));
    let cfg = c.path("n1.toml");
    let cfg = cfg.to_str().unwrap();
    for i in 0..50 {
        fs::write(c.folder(0).join(format!("f{i}.txt")), vec![b'x'; 1000 + i]).unwrap();
    }
    // Once the writer reports its new state, `wait` must hold out for the other node.
    let writer_reports_50 = || {
        let out = mqsync(&["status", "--config", cfg, "--json"]);
        let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        docs.iter().any(|d| d["node"] == "n1" && d["files"] == 50)
    };
    assert!(wait_until(T, writer_reports_50));
    let out = mqsync(&["wait", "--config", cfg, "--timeout", "120"]);
    assert!(
        out.status.success(),
        "wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        snapshot(&c.folder(0)),
        snapshot(&c.folder(1)),
        "wait returned before the trees were equal"
    );

    let out = mqsync(&["status", "--config", cfg, "--json"]);
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(docs.len(), 2, "{docs:?}");
    assert!(
        docs.iter()
            .all(|d| d["files"] == 50 && d["state"] == "idle" && d["connected"] == true),
        "{docs:?}"
    );
    assert_eq!(docs[0]["digest"], docs[1]["digest"]);
    let table = mqsync(&["status", "--config", cfg]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("IN SYNC") && table.lines().filter(|l| l.contains(" yes ")).count() == 2,
        "{table}"
    );

    let out = mqsync(&["healthcheck", "--config", cfg]);
    assert!(
        out.status.success(),
        "healthcheck: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.stop_node(0);
    let out = mqsync(&["healthcheck", "--config", cfg]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("state offline"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The stopped node's last will / goodbye marks it offline for everyone.
    let out = mqsync(&[
        "status",
        "--config",
        c.path("n2.toml").to_str().unwrap(),
        "--json",
    ]);
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        docs.iter()
            .any(|d| d["node"] == "n1" && d["state"] == "offline"),
        "{docs:?}"
    );
}

#[test]
fn status_wait_and_resync_need_no_group_key_and_read_mqsync_config() {
    let mut c = Cluster::new(1);
    c.start_node(0);
    assert!(wait_until(T, || c.folder(0).join(".mqsync").exists()));
    // An operator's copy of the node's configuration, without the group key file.
    let missing = c.path("certs/missing-group.key");
    let text = fs::read_to_string(c.path("n1.toml")).unwrap().replace(
        &c.path("certs/group.key").display().to_string(),
        missing.to_str().unwrap(),
    );
    assert!(text.contains("missing-group.key") && !missing.exists());
    let ops = c.path("ops.toml");
    fs::write(&ops, text).unwrap();
    let ops = ops.to_str().unwrap();
    let reports_n1 = |out: &std::process::Output| {
        let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        out.status.success() && docs.iter().any(|d| d["node"] == "n1")
    };
    let mut out = None;
    let ok = wait_until(T, || {
        let o = mqsync(&["status", "--config", ops, "--json"]);
        let ok = reports_n1(&o);
        out = Some(o);
        ok
    });
    let out = out.unwrap();
    assert!(ok, "status: {}", String::from_utf8_lossy(&out.stderr));
    // Without the key it cannot check status MACs, and says so.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("status MACs are not checked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // MQSYNC_CONFIG stands for --config.
    let out = Command::new(BIN)
        .args(["status", "--json"])
        .env("MQSYNC_CONFIG", ops)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        reports_n1(&out),
        "status with MQSYNC_CONFIG: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mqsync(&["wait", "--config", ops, "--timeout", "60"]);
    assert!(
        out.status.success(),
        "wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mqsync(&["resync", "--config", ops]);
    assert!(
        out.status.success(),
        "resync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The daemon itself still refuses to run without its key.
    let out = mqsync(&["run", "--config", ops]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing-group.key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = mqsync(&["status", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("MQSYNC_CONFIG"));
}

#[test]
fn the_on_change_hook_gets_the_changed_paths_and_its_failure_is_not_fatal() {
    let mut c = Cluster::new(2);
    let hook_log = c.path("hook.log");
    let hook = format!("cat >> {}; test ! -e fail", hook_log.display());
    c.write_config(1, |t| {
        t.replace("ignore = [", &format!("on_change = \"{hook}\"\nignore = ["))
    });
    c.start_node(0);
    c.start_node(1);
    let (a, b) = (c.folder(0), c.folder(1));
    assert!(wait_until(T, || a.join(".mqsync").exists()
        && b.join(".mqsync").exists()));
    fs::create_dir_all(a.join("conf")).unwrap();
    fs::write(a.join("conf/app.yml"), b"x: 1").unwrap();
    fs::write(a.join("top.txt"), b"t").unwrap();
    let seen = || fs::read_to_string(&hook_log).unwrap_or_default();
    assert!(
        wait_until(T, || seen().contains("conf/app.yml\n")
            && seen().contains("top.txt\n")),
        "hook saw: {:?}",
        seen()
    );
    // A failing hook is reported and syncing goes on.
    fs::write(a.join("fail"), b"make the hook fail").unwrap();
    let n2 = c.nodes[1].as_ref().unwrap();
    assert!(
        wait_until(T, || n2.log_text().contains("on_change hook failed")),
        "{}",
        n2.log_text()
    );
    fs::write(a.join("after.txt"), b"still syncing").unwrap();
    c.converge(&[0, 1], T, |s| s.contains_key("after.txt"));
    assert!(c.nodes[1].as_mut().unwrap().is_running());
}

#[test]
fn an_argument_list_hook_runs_without_a_shell() {
    let mut c = Cluster::new(2);
    let hook_log = c.path("hook.log");
    // Shell syntax in an argument reaches the program as it is: tee appends the
    // changed paths to both files, the second one named literally.
    let literal = c.path("literal $HOME; ls.log");
    c.write_config(1, |t| {
        t.replace(
            "ignore = [",
            &format!(
                "on_change = [\"/usr/bin/tee\", \"-a\", {:?}, {:?}]\nignore = [",
                hook_log.display().to_string(),
                literal.display().to_string()
            ),
        )
    });
    c.start_node(0);
    c.start_node(1);
    let (a, b) = (c.folder(0), c.folder(1));
    assert!(wait_until(T, || a.join(".mqsync").exists()
        && b.join(".mqsync").exists()));
    fs::write(a.join("mosquitto.acl"), b"user probe\n").unwrap();
    let seen = || fs::read_to_string(&hook_log).unwrap_or_default();
    assert!(
        wait_until(T, || seen().contains("mosquitto.acl\n")),
        "hook saw: {:?}\n{}",
        seen(),
        c.nodes[1].as_ref().unwrap().log_text()
    );
    assert!(
        wait_until(T, || fs::read_to_string(&literal)
            .is_ok_and(|l| l.contains("mosquitto.acl\n"))),
        "no file named {}",
        literal.display()
    );
    assert!(c.nodes[1].as_mut().unwrap().is_running());
}

#[test]
fn prometheus_metrics_count_what_was_synced() {
    let mut c = Cluster::new(2);
    let port = free_port();
    c.write_config(1, |t| format!("metrics_listen = \"127.0.0.1:{port}\"\n{t}"));
    c.start_node(0);
    c.start_node(1);
    assert!(wait_until(T, || c.folder(1).join(".mqsync").exists()));
    for i in 0..5 {
        fs::write(c.folder(0).join(format!("m{i}.txt")), b"metric").unwrap();
    }
    c.converge(&[0, 1], T, |s| s.len() == 5);
    let scrape = || scrape_metrics(port);
    let applied =
        |m: &str| metric_value(m, "mqsync_applied_total{folder=\"shared\"}").unwrap_or(0.0);
    assert!(wait_until(T, || applied(&scrape()) >= 5.0), "{}", scrape());
    // Gauges follow the status, refreshed a few times a second.
    assert!(
        wait_until(T, || scrape().contains("mqsync_files{folder=\"shared\"} 5")),
        "{}",
        scrape()
    );
    let m = scrape();
    for name in [
        "mqsync_messages_received_total",
        "mqsync_bytes_received_total",
        "mqsync_apply_seconds",
        "mqsync_files{folder=\"shared\"} 5",
        "mqsync_connected{folder=\"shared\"} 1",
    ] {
        assert!(m.contains(name), "{name} missing from:\n{m}");
    }
}
