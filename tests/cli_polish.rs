//! What a new operator meets on the command line (issue 23): a broker log free of
//! noise after the day-2 commands and a clean stop, messages without Rust debug
//! formatting, `resync` answered per node, `status --watch` without an empty first
//! frame, `wait` on every folder, `status` explaining what it needs, and `broker`
//! reading its configuration like the other commands.

mod common;

use common::*;
use std::fs;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Starts node 0 of `c` and waits until `status` shows it idle.
fn start_idle(c: &mut Cluster, i: usize) {
    c.start_node(i);
    let name = c.names[i].clone();
    assert!(
        wait_until(T, || status_of(c, &name)["state"] == "idle"),
        "node {name} did not become idle: {}",
        c.nodes[i].as_ref().unwrap().log_text()
    );
}

fn config(c: &Cluster, i: usize) -> String {
    c.path(&format!("{}.toml", c.names[i]))
        .to_str()
        .unwrap()
        .to_string()
}

/// Runs `status`, `wait`, `resync` and `pending` against `kind`, stops the node
/// cleanly, and reads the broker's log: none of them may leave a warning or error.
fn broker_log_stays_quiet(kind: BrokerKind) {
    let mut c = Cluster::with_broker(1, kind);
    start_idle(&mut c, 0);
    let cfg = config(&c, 0);
    for args in [
        vec!["status", "--config", &cfg],
        vec!["status", "--json", "--config", &cfg],
        vec!["wait", "--config", &cfg, "--timeout", "60"],
        vec!["resync", "--config", &cfg],
        vec!["pending", "--config", &cfg],
    ] {
        let (ok, out, err) = mqsync_out(&args);
        assert!(ok, "{args:?}: {out}\n{err}");
    }
    c.stop_node(0);
    // Give the broker time to log whatever the closes made it log.
    std::thread::sleep(Duration::from_secs(2));
    let log = c.broker.as_ref().unwrap().log_text();
    let noise: Vec<&str> = log
        .lines()
        // The fixture's own probes while the broker starts (bare TCP connects, no TLS
        // handshake); every mqsync client completes its handshake.
        .filter(|l| !l.contains("Client connection from 127.0.0.1 failed"))
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            [
                "close_notify",
                "unexpected eof",
                "router-drop",
                "openssl error",
                "socket error",
                "closed its connection",
                "without mqtt disconnect",
                " warn ",
                " error ",
            ]
            .iter()
            .any(|n| l.contains(n))
        })
        .collect();
    assert!(noise.is_empty(), "broker log:\n{log}");
    // The commands did reach the broker: its log names their clients.
    if kind == BrokerKind::Mosquitto {
        assert!(log.contains("n1-ctl-"), "{log}");
        assert!(log.contains("n1-status-"), "{log}");
    }
}

#[test]
fn cli_commands_and_a_clean_stop_leave_no_noise_in_the_embedded_broker_log() {
    broker_log_stays_quiet(BrokerKind::Embedded);
}

#[test]
fn cli_commands_and_a_clean_stop_leave_no_noise_in_the_mosquitto_log() {
    broker_log_stays_quiet(BrokerKind::Mosquitto);
}

#[test]
fn messages_carry_no_rust_debug_formatting() {
    let mut c = Cluster::new(1);
    start_idle(&mut c, 0);
    let log = c.nodes[0].as_ref().unwrap().log_text();
    let starting = log.lines().find(|l| l.contains("starting")).unwrap_or("");
    assert!(
        starting.contains("open_files=") && !starting.contains("Some("),
        "{starting}"
    );
    c.stop_node(0);
    // The stopped node's health file says offline: healthcheck names the state as the
    // status JSON does.
    let (ok, _, err) = mqsync_out(&["healthcheck", "--config", &config(&c, 0)]);
    assert!(!ok);
    assert!(err.contains("state offline"), "{err}");
    assert!(!err.contains("Offline"), "{err}");
}

#[test]
fn resync_says_per_node_whether_it_was_accepted_or_ignored() {
    let mut c = Cluster::new(2);
    start_idle(&mut c, 0);
    start_idle(&mut c, 1);
    let cfg = config(&c, 0);
    let (ok, out, err) = mqsync_out(&["resync", "--config", &cfg]);
    assert!(ok, "{out}\n{err}");
    for n in ["n1", "n2"] {
        assert!(
            out.contains(&format!("folder shared: node {n}: accepted")),
            "{out}"
        );
    }
    // At once again: both are within their rate limit and say so; the command fails.
    let (ok, out, err) = mqsync_out(&["resync", "--config", &cfg, "--node", "n2"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("folder shared: node n2: ignored: rate limit"),
        "{out}"
    );
    assert!(!out.contains("node n1"), "{out}");
    assert!(err.contains("not accepted"), "{err}");
    // The answer is in n2's status document for monitoring tools too.
    let doc = status_of(&c, "n2");
    assert_eq!(doc["resync"]["accepted"], false, "{doc}");
    // A node that is not running did not get the command, and resync says so.
    c.stop_node(1);
    assert!(wait_until(T, || status_of(&c, "n2")["state"] == "offline"));
    let (ok, out, _) = mqsync_out(&["resync", "--config", &cfg, "--node", "n2"]);
    assert!(!ok);
    assert!(
        out.contains("node n2: not reached: the node is offline"),
        "{out}"
    );
}

#[test]
fn status_watch_shows_the_retained_statuses_in_its_first_frame() {
    let mut c = Cluster::new(1);
    start_idle(&mut c, 0);
    let cfg = config(&c, 0);
    let mut watch = Proc::spawn(
        &["status", "--watch", "--json", "--config", &cfg],
        &c.path("watch.log"),
    );
    assert!(
        wait_until(T, || watch.log_text().contains("\"node\": \"n1\"")),
        "{}",
        watch.log_text()
    );
    watch.stop();
    let text = watch.log_text();
    let first = text
        .lines()
        .find(|l| l.starts_with('['))
        .unwrap_or_default();
    assert_eq!(first, "[", "the first frame is empty:\n{text}");
}

#[test]
fn wait_without_folder_waits_for_every_folder() {
    let mut c = Cluster::new(1);
    start_idle(&mut c, 0);
    // An operator's configuration without [[folder]]: every folder a node reports.
    let ops = c.path("ops.toml");
    let node_cfg = fs::read_to_string(config(&c, 0)).unwrap();
    let head = node_cfg.split("[[folder]]").next().unwrap();
    fs::write(&ops, head).unwrap();
    let (ok, out, err) =
        mqsync_out(&["wait", "--config", ops.to_str().unwrap(), "--timeout", "60"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("in sync: shared (1 nodes)"), "{out}");
    // A configuration's folders all count: one no node reports keeps it waiting.
    let two = c.path("two.toml");
    fs::write(
        &two,
        format!(
            "{node_cfg}\n[[folder]]\nid = \"other\"\npath = \"{}\"\n",
            c.path("other").display()
        ),
    )
    .unwrap();
    let (ok, out, err) = mqsync_out(&["wait", "--config", two.to_str().unwrap(), "--timeout", "3"]);
    assert!(!ok, "{out}");
    assert!(err.contains("no online node reports folder other"), "{err}");
}

#[test]
fn status_without_a_configuration_says_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .arg("status")
        .env_remove("MQSYNC_CONFIG")
        .env("MQSYNC_STATE_DIR", dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needed in ["--config", "MQSYNC_CONFIG", "MQSYNC_BROKER_URL", "ca.pem"] {
        assert!(err.contains(needed), "{needed}: {err}");
    }
}

#[test]
fn broker_reads_an_mqsync_configuration_from_c_or_mqsync_config() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certs_init(&d.join("state/certs"), "n1");
    let port = free_port();
    let cfg = d.join("n1.toml");
    fs::write(
        &cfg,
        format!(
            "node_id = \"n1\"\nstate_dir = \"{}\"\n[broker]\nembedded_listen = \"127.0.0.1:{port}\"\n",
            d.join("state").display()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    for via_env in [false, true] {
        let log = d.join(format!("broker-{via_env}.log"));
        let mut broker = if via_env {
            let child = std::process::Command::new(BIN)
                .arg("broker")
                .env("MQSYNC_CONFIG", cfg)
                .stdin(std::process::Stdio::null())
                .stdout(fs::File::create(&log).unwrap())
                .stderr(fs::File::create(d.join("broker-env.err")).unwrap())
                .spawn()
                .unwrap();
            Proc {
                child: Some(child),
                log: d.join("broker-env.err"),
            }
        } else {
            Proc::spawn(&["broker", "-c", cfg], &log)
        };
        assert!(
            wait_until(T, || std::net::TcpStream::connect(("127.0.0.1", port))
                .is_ok()),
            "broker (env: {via_env}) did not listen: {}",
            broker.log_text()
        );
        // A client with the same configuration gets through its TLS.
        let (ok, out, err) = mqsync_out(&["status", "--config", cfg]);
        assert!(ok, "{out}\n{err}\n{}", broker.log_text());
        broker.stop();
    }
}
