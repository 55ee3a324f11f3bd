//! What a new operator meets on the command line (issue 23): a broker log free of
//! noise after the day-2 commands and a clean stop, messages without Rust debug
//! formatting, `resync` answered per node, `status --watch` without an empty first
//! frame, `wait` on every folder, `status` explaining what it needs, and `broker`
//! reading its configuration like the other commands.

mod common;

use common::*;
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
