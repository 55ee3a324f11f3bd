//! Divergences that must show, with real nodes: a node holding another group key, and
//! ignore rules that differ between nodes. `status`, `wait` and `healthcheck` name the
//! node and say why, instead of leaving it out or waiting forever on two digests.

mod common;

use common::*;
use std::fs;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn start_all(c: &mut Cluster) {
    for i in 0..c.names.len() {
        c.start_node(i);
    }
    assert!(wait_until(T, || (0..c.names.len())
        .all(|i| c.folder(i).join(".mqsync").exists())));
}

#[test]
fn a_node_with_another_group_key_is_named_by_status_wait_and_healthcheck() {
    let mut c = Cluster::new(3);
    fs::write(c.path("certs/other.key"), "another group's secret\n").unwrap();
    let n3 = c.write_config(2, |t| t.replace("group.key", "other.key"));
    start_all(&mut c);
    let cfg = c.path("n1.toml");
    let cfg = cfg.to_str().unwrap();

    // n1 and n2 sync as ever; n3 verifies none of it.
    fs::write(c.folder(0).join("a.txt"), b"for the group").unwrap();
    c.converge(&[0, 1], T, |s| s.contains_key("a.txt"));

    // `status` shows n3, as unverified, taking nothing its document claims.
    let mut last = String::new();
    assert!(
        wait_until(T, || {
            let (_, out, _) = mqsync_out(&["status", "--config", cfg, "--json"]);
            last = out;
            let docs: Vec<serde_json::Value> = serde_json::from_str(&last).unwrap_or_default();
            docs.len() == 3
                && docs.iter().any(|d| {
                    d["node"] == "n3"
                        && d["state"] == "unverified"
                        && d["digest"] == ""
                        && d["last_error"]
                            .as_str()
                            .is_some_and(|e| e.contains("group key differs"))
                })
        }),
        "n3 not shown as unverified: {last}"
    );
    let (_, table, _) = mqsync_out(&["status", "--config", cfg]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("n3") && l.contains("unverified") && l.contains(" no ")),
        "{table}"
    );

    // `wait` fails and names it.
    let (ok, _, err) = mqsync_out(&["wait", "--config", cfg, "--timeout", "10"]);
    assert!(!ok, "wait passed with n3 on another key");
    assert!(err.contains("node n3 is unverified"), "{err}");

    // n3 itself: none of its peers' messages verify, so it says so and fails its
    // healthcheck.
    let mut last = String::new();
    assert!(
        wait_until(T, || {
            let (ok, out, err) = mqsync_out(&[
                "healthcheck",
                "--error-grace",
                "0",
                "--config",
                n3.to_str().unwrap(),
            ]);
            last = format!("{out}{err}");
            !ok && last.contains("fail verification") && last.contains("group key differs")
        }),
        "n3's healthcheck: {last}\n{}",
        c.nodes[2].as_ref().unwrap().log_text()
    );
    assert!(
        last.contains("n1") || last.contains("n2"),
        "names a peer: {last}"
    );
    // Judged per sender, the other way round too: n1 names n3.
    let n1_health = c.path("state/n1/health/shared.json");
    assert!(
        wait_until(T, || fs::read_to_string(&n1_health)
            .is_ok_and(|h| h.contains("messages from n3 fail verification"))),
        "n1: {:?}",
        fs::read_to_string(&n1_health)
    );
    // n1 still verifies n2: it names n3 but is healthy (one misconfigured node must
    // not fail every healthy node's healthcheck).
    let (ok, out, err) = mqsync_out(&["healthcheck", "--error-grace", "0", "--config", cfg]);
    assert!(ok, "n1's healthcheck failed: {out}{err}");
    assert!(!c.folder(2).join("a.txt").exists());
}

#[test]
fn differing_ignore_rules_are_named_by_status_and_wait() {
    let mut c = Cluster::new(2);
    c.write_config(1, |t| {
        t.replace(r#"ignore = ["*.swp"]"#, r#"ignore = ["*.swp", "*.log"]"#)
    });
    start_all(&mut c);
    let cfg = c.path("n1.toml");
    let cfg = cfg.to_str().unwrap();
    fs::write(c.folder(0).join("build.log"), b"n2 ignores this").unwrap();
    fs::write(c.folder(0).join("a.txt"), b"both sync this").unwrap();
    assert!(wait_until(T, || c.folder(1).join("a.txt").exists()));

    let mut last = String::new();
    assert!(
        wait_until(T, || {
            let (_, out, _) = mqsync_out(&["status", "--config", cfg]);
            last = out;
            last.contains("ignore rules differ")
        }),
        "status: {last}"
    );
    assert!(
        last.contains(r#"node n2 ignores "*.log" (n1 does not)"#),
        "names node and pattern: {last}"
    );

    let (ok, _, err) = mqsync_out(&["wait", "--config", cfg, "--timeout", "10"]);
    assert!(!ok, "wait passed with differing ignore rules");
    assert!(
        err.contains("ignore rules differ") && err.contains(r#"node n2 ignores "*.log""#),
        "{err}"
    );
    assert!(!c.folder(1).join("build.log").exists());
}
