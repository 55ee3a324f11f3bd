//! Certificates as an operator meets them: what `certs init` says it did on a re-run,
//! `certs renew` and the daemon's reload, days left in `status` and `healthcheck`, a
//! `node_id` the certificate does not name, and `forget` with an operator certificate
//! against the embedded broker and Mosquitto with the shipped ACL (issue 23).

mod common;

use common::*;
use mqsync::broker::certs::read_cert;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The line of `out` that names `file`.
fn line_of<'a>(out: &'a str, file: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(file))
        .unwrap_or_else(|| panic!("no line for {file} in:\n{out}"))
}

#[test]
fn init_says_per_file_what_it_created_and_what_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let (ok, first, err) = mqsync_out(&[
        "certs",
        "init",
        "--out",
        s(&out),
        "--nodes",
        "node-1",
        "--hosts",
        "broker,localhost,127.0.0.1",
    ]);
    assert!(ok, "{err}");
    assert!(line_of(&first, "node-1.pem").contains("created"), "{first}");

    let (ok, again, err) = mqsync_out(&[
        "certs",
        "init",
        "--out",
        s(&out),
        "--nodes",
        "node-1,node-5",
        "--hosts",
        "localhost,127.0.0.1",
    ]);
    assert!(ok, "{err}");
    for kept in ["ca.pem", "broker.pem", "node-1.pem", "group.key"] {
        assert!(line_of(&again, kept).contains("kept"), "{kept}: {again}");
    }
    assert!(line_of(&again, "node-5.pem").contains("created"), "{again}");
    // The kept broker certificate's real names, and how to change them.
    assert!(
        line_of(&again, "broker.pem").contains("broker, localhost, 127.0.0.1"),
        "{again}"
    );
    assert!(
        again.contains("mqsync certs renew --out")
            && again.contains("--broker --hosts localhost,127.0.0.1"),
        "{again}"
    );
    assert!(!again.contains("wrote certificates for"), "{again}");

    // Without --hosts a kept broker certificate is not compared with the default.
    let (ok, quiet, _) = mqsync_out(&["certs", "init", "--out", s(&out), "--nodes", "node-1"]);
    assert!(ok && !quiet.contains("certs renew"), "{quiet}");
}

#[test]
fn init_group_lets_a_broker_user_read_its_key_and_out_is_described() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    // Root may give the key to any group; anyone else to their own.
    let gid = if unsafe { libc::geteuid() } == 0 {
        1
    } else {
        unsafe { libc::getgid() }
    };
    let (ok, stdout, err) = mqsync_out(&[
        "certs",
        "init",
        "--out",
        s(&out),
        "--nodes",
        "a",
        "--group",
        &gid.to_string(),
    ]);
    assert!(ok, "{err}");
    let key = fs::metadata(out.join("broker.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o640);
    assert_eq!(key.gid(), gid);
    assert!(stdout.contains("broker.key: readable by group"), "{stdout}");
    // Other keys stay private.
    let a = fs::metadata(out.join("a.key")).unwrap();
    assert_eq!(a.permissions().mode() & 0o777, 0o600);
    let (_, help, _) = mqsync_out(&["certs", "init", "--help"]);
    assert!(
        help.lines()
            .any(|l| l.trim_start().starts_with("--out <DIR>")
                && l.contains("Directory to write into")),
        "{help}"
    );
    let (ok, _, err) = mqsync_out(&[
        "certs",
        "init",
        "--out",
        s(&out),
        "--nodes",
        "a",
        "--group",
        "no-such-group-here",
    ]);
    assert!(!ok && err.contains("no-such-group-here"), "{err}");
}

/// `mqsync certs renew --out DIR ARGS...`, which must succeed.
fn renew(c: &Cluster, args: &[&str]) -> String {
    let certs = c.path("certs");
    let mut all = vec!["certs", "renew", "--out", s(&certs)];
    all.extend_from_slice(args);
    let (ok, out, err) = mqsync_out(&all);
    assert!(ok, "certs renew {args:?}: {err}");
    out
}

fn cert_days(doc: &serde_json::Value) -> Option<i64> {
    doc["cert_days_left"].as_i64()
}

#[test]
fn renewed_certificates_are_accepted_and_the_status_shows_days_left() {
    let mut c = Cluster::new(2);
    let ca = fs::read(c.path("certs/ca.pem")).unwrap();
    let key = fs::read(c.path("certs/n2.key")).unwrap();
    // n2's certificate expires in 10 days: a status note, a healthcheck warning.
    renew(&c, &["--nodes", "n2", "--days", "10"]);
    let short = read_cert(&c.path("certs/n2.pem")).unwrap();
    c.start_node(0);
    c.start_node(1);
    assert!(
        wait_until(T, || {
            status_of(&c, "n2")["state"] == "idle" && status_of(&c, "n1")["state"] == "idle"
        }),
        "n1 {} n2 {}",
        status_of(&c, "n1"),
        status_of(&c, "n2")
    );
    let n2 = status_of(&c, "n2");
    assert!(matches!(cert_days(&n2), Some(9 | 10)), "{n2}");
    assert!(cert_days(&status_of(&c, "n1")).is_some_and(|d| d > 800));

    let n1_cfg = c.path("n1.toml");
    let (ok, table, err) = mqsync_out(&["status", "--config", s(&n1_cfg)]);
    assert!(ok, "{err}");
    let note = line_of(&table, "node n2: its client certificate");
    assert!(
        note.contains("expires in") && note.contains("certs renew"),
        "{table}"
    );
    assert!(
        !table.contains("node n1: its client certificate"),
        "{table}"
    );

    let n2_cfg = c.path("n2.toml");
    let (ok, health, err) = mqsync_out(&["healthcheck", "--config", s(&n2_cfg)]);
    assert!(
        ok,
        "a certificate that still works is a warning: {health}{err}"
    );
    assert!(
        line_of(&health, "warning: node n2: its client certificate").contains("expires in"),
        "{health}"
    );
    let (ok, health1, _) = mqsync_out(&["healthcheck", "--config", s(&n1_cfg)]);
    assert!(ok && !health1.contains("warning"), "{health1}");

    // Renew from the same CA, same key; SIGHUP makes the daemon use it.
    let out = renew(&c, &["--nodes", "n2"]);
    assert!(out.contains("n2.pem"), "{out}");
    let long = read_cert(&c.path("certs/n2.pem")).unwrap();
    assert!(long.not_after > short.not_after + 800 * 86_400, "{long:?}");
    assert_eq!(fs::read(c.path("certs/ca.pem")).unwrap(), ca);
    assert_eq!(fs::read(c.path("certs/n2.key")).unwrap(), key);
    c.nodes[1].as_ref().unwrap().signal(libc::SIGHUP);
    assert!(
        wait_until(T, || {
            let d = status_of(&c, "n2");
            d["state"] == "idle" && d["connected"] == true && cert_days(&d) > Some(800)
        }),
        "{}",
        status_of(&c, "n2")
    );
    // The broker (which trusts only ca.pem) accepts the new certificate: a file syncs.
    fs::write(c.folder(1).join("after-renew.txt"), b"renewed").unwrap();
    c.converge(&[0, 1], T, |t| t.contains_key("after-renew.txt"));
    let (ok, health, _) = mqsync_out(&["healthcheck", "--config", s(&n2_cfg)]);
    assert!(ok && !health.contains("warning"), "{health}");

    // The broker certificate keeps its names unless told otherwise.
    let before = read_cert(&c.path("certs/broker.pem")).unwrap();
    renew(&c, &["--broker"]);
    let after = read_cert(&c.path("certs/broker.pem")).unwrap();
    assert_eq!(after.sans, before.sans);
    c.kill_broker();
    c.start_broker();
    fs::write(c.folder(0).join("after-broker.txt"), b"new broker cert").unwrap();
    c.converge(&[0, 1], T, |t| t.contains_key("after-broker.txt"));
}

#[test]
fn a_node_id_its_certificate_does_not_name_is_refused_at_start() {
    let mut c = Cluster::new(2);
    let certs = c.path("certs");
    let mismatched = |t: String| {
        t.replace(
            &format!("{}/n1.pem", certs.display()),
            &format!("{}/n2.pem", certs.display()),
        )
        .replace(
            &format!("{}/n1.key", certs.display()),
            &format!("{}/n2.key", certs.display()),
        )
    };
    let cfg = c.write_config(0, mismatched);
    // Spawned, not waited for: a node that does not refuse runs on.
    let mut p = Proc::spawn(&["run", "--config", s(&cfg)], &c.path("mismatch.log"));
    assert!(
        wait_until(T, || !p.is_running()),
        "a node with n2's certificate as n1 kept running: {}",
        p.log_text()
    );
    let err = p.log_text();
    for want in ["node_id \"n1\"", "\"n2\"", "broker.cert_file", "n2.pem"] {
        assert!(err.contains(want), "{want}: {err}");
    }

    // A shared certificate, with a broker that allows it, is not refused.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _shared = Proc::spawn(
        &[
            "broker",
            "--listen",
            &listen,
            "--certs",
            s(&certs),
            "--shared-node-cert",
        ],
        &c.path("shared-broker.log"),
    );
    assert!(wait_until(T, || std::net::TcpStream::connect((
        "127.0.0.1",
        port
    ))
    .is_ok()));
    let old_port = format!("127.0.0.1:{}", c.port);
    c.write_config(0, |t| {
        mismatched(t)
            .replace(&old_port, &listen)
            .replace("[broker]", "[broker]\nshared_node_cert = true")
    });
    c.start_node(0);
    assert!(
        wait_until(T, || {
            let out = std::process::Command::new(BIN)
                .args(["status", "--json", "--config", s(&c.path("n1.toml"))])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("\"idle\"")
        }),
        "n1 with n2's shared certificate did not come up: {}",
        c.nodes[0].as_ref().unwrap().log_text()
    );
}

/// Adds an operator certificate `ops` to the cluster's certificates.
fn add_operator(c: &Cluster) -> (String, String) {
    let certs = c.path("certs");
    let (ok, out, err) = mqsync_out(&["certs", "init", "--out", s(&certs), "--operator", "ops"]);
    assert!(ok, "{err}");
    assert!(line_of(&out, "ops.pem").contains("created"), "{out}");
    (
        certs.join("ops.pem").display().to_string(),
        certs.join("ops.key").display().to_string(),
    )
}

/// n1 and n2 running and idle, then n2 stopped (it leaves an offline status): n2 is
/// forgotten only with the operator certificate, and no longer shows in `status`.
fn forget_a_stopped_node(c: &mut Cluster) {
    let (cert, key) = add_operator(c);
    c.start_node(0);
    c.start_node(1);
    assert!(
        wait_until(T, || status_of(c, "n1")["state"] == "idle"
            && status_of(c, "n2")["state"] == "idle"),
        "{}",
        status_of(c, "n2")
    );
    let cfg = c.path("n1.toml");
    let forget = |extra: &[&str]| {
        let mut args = vec!["forget", "n2", "--config", s(&cfg)];
        args.extend_from_slice(extra);
        mqsync_out(&args)
    };
    let op = ["--cert", cert.as_str(), "--key", key.as_str()];
    let (ok, _, err) = forget(&op);
    assert!(!ok && err.contains("online"), "an online node: {err}");

    c.stop_node(1);
    assert!(
        wait_until(T, || status_of(c, "n2")["state"] == "offline"),
        "{}",
        status_of(c, "n2")
    );
    // n1's own certificate may not clear n2's documents.
    let (ok, _, err) = forget(&[]);
    assert!(!ok && err.contains("operator certificate"), "{err}");
    assert_eq!(status_of(c, "n2")["state"], "offline");

    let (ok, out, err) = forget(&op);
    assert!(ok, "{err}");
    assert!(out.contains("mqsync/shared/status/n2"), "{out}");
    assert!(
        wait_until(T, || status_of(c, "n2").is_null()
            && status_of(c, "n1")["state"] == "idle"),
        "{}",
        status_of(c, "n2")
    );
    let (ok, out, _) = forget(&op);
    assert!(ok && out.contains("nothing to forget"), "{out}");
}

#[test]
fn forget_clears_a_stopped_node_with_an_operator_certificate() {
    let mut c = Cluster::new(2);
    forget_a_stopped_node(&mut c);
}

#[test]
fn forget_works_through_the_shipped_mosquitto_acl() {
    let mut c = Cluster::new(2);
    c.kill_broker();
    let port = c.port;
    c.broker = Some(shipped_mosquitto(&c, port));
    forget_a_stopped_node(&mut c);
}
