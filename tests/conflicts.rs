//! `mqsync conflicts` lists the conflict copies a real concurrent edit left, on every
//! node, with the path each was copied from and the node whose version lost.

mod common;

use common::*;
use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn conflicts(cfg: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mqsync"))
        .args(["conflicts", "--config", cfg.to_str().unwrap()])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn conflicts_lists_the_copies_a_concurrent_edit_left_on_every_node() {
    let mut c = Cluster::new(2);
    c.start_node(0);
    c.start_node(1);
    let (a, b) = (c.folder(0), c.folder(1));
    assert!(wait_until(T, || a.join(".mqsync").exists()
        && b.join(".mqsync").exists()));
    let (ok, text) = conflicts(&c.path("n1.toml"), &[]);
    assert!(ok, "{text}");
    assert!(text.contains("no conflict copies in shared"), "{text}");

    fs::create_dir_all(a.join("etc")).unwrap();
    fs::write(a.join("etc/app.conf"), b"original").unwrap();
    c.converge(&[0, 1], T, |s| s.contains_key("etc/app.conf"));
    // Both edit while node 2's daemon is stopped: concurrent, node 2's later mtime wins.
    c.stop_node(1);
    fs::write(b.join("etc/app.conf"), b"from n2").unwrap();
    filetime::set_file_mtime(
        b.join("etc/app.conf"),
        filetime::FileTime::from_unix_time(1_700_000_100, 0),
    )
    .unwrap();
    fs::write(a.join("etc/app.conf"), b"from n1").unwrap();
    filetime::set_file_mtime(
        a.join("etc/app.conf"),
        filetime::FileTime::from_unix_time(1_700_000_000, 0),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    c.start_node(1);
    let copy = "etc/app.sync-conflict-20231114-221320-n1.conf";
    c.converge(&[0, 1], T, |s| s.contains_key(copy));

    for node in ["n1", "n2"] {
        let cfg = c.path(&format!("{node}.toml"));
        let (ok, text) = conflicts(&cfg, &[]);
        assert!(ok, "{text}");
        let row = text
            .lines()
            .find(|l| l.contains(copy))
            .unwrap_or_else(|| panic!("{node}: no row for {copy}:\n{text}"));
        for field in ["shared", "etc/app.conf", "n1", "2023-11-14T22:13:20Z"] {
            assert!(row.contains(field), "{node}: {field} missing in {row:?}");
        }
        let (ok, json) = conflicts(&cfg, &["--json", "--folder", "shared"]);
        assert!(ok, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        let list = v.as_array().expect("array");
        assert_eq!(list.len(), 1, "{json}");
        assert_eq!(list[0]["original"], "etc/app.conf");
        assert_eq!(list[0]["copy"], copy);
        assert_eq!(list[0]["lost_by"], "n1");
    }
    let (ok, text) = conflicts(&c.path("n1.toml"), &["--folder", "nope"]);
    assert!(!ok && text.contains("nope"), "{text}");
    c.stop_node(0);
    c.stop_node(1);
}
