//! `mqsync pending` with real nodes: a file whose apply fails on one node (its
//! directory made immutable) is listed for that node with the error, and the node
//! shows clear once the apply succeeds.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn chattr(flag: &str, dir: &Path) -> bool {
    Command::new("chattr")
        .args([flag, dir.to_str().unwrap()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Lifts the immutable flag however the test ends, so the cluster dir can be removed.
struct Immutable(PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        chattr("-i", &self.0);
    }
}

/// n2's pending list for folder `shared`, as `mqsync pending --json` prints it.
fn n2_doc(cfg: &str) -> Option<serde_json::Value> {
    let (_, out, _) = mqsync_out(&["pending", "--config", cfg, "--node", "n2", "--json"]);
    let docs: Vec<serde_json::Value> = serde_json::from_str(&out).ok()?;
    docs.into_iter().find(|d| d["node"] == "n2")
}

#[test]
fn a_failing_apply_is_listed_with_its_error_until_it_succeeds() {
    let mut c = Cluster::new(2);
    for i in 0..2 {
        c.start_node(i);
    }
    assert!(wait_until(T, || (0..2).all(|i| c.folder(i).join(".mqsync").exists())));
    fs::create_dir(c.folder(0).join("locked")).unwrap();
    fs::write(c.folder(0).join("locked/first.txt"), b"first").unwrap();
    let locked = c.folder(1).join("locked");
    assert!(wait_until(T, || locked.join("first.txt").is_file()));
    if !chattr("+i", &locked) {
        eprintln!("skipped: chattr +i does not work here (needs root and ext4/xfs)");
        return;
    }
    let _guard = Immutable(locked.clone());
    fs::write(c.folder(0).join("locked/f.txt"), b"blocked").unwrap();
    let cfg = c.path("n1.toml");
    let cfg = cfg.to_str().unwrap();

    let mut last = None;
    assert!(
        wait_until(T, || {
            last = n2_doc(cfg);
            last.as_ref().is_some_and(|d| {
                d["paths"].as_array().is_some_and(|ps| {
                    ps.iter().any(|p| {
                        p["path"] == "locked/f.txt"
                            && p["reason"] == "apply_failed"
                            && p["detail"]
                                .as_str()
                                .is_some_and(|e| e.contains("not permitted"))
                    })
                })
            })
        }),
        "n2 does not list the failing apply: {last:?}"
    );
    let (ok, table, err) = mqsync_out(&["pending", "--config", cfg]);
    assert!(ok, "{err}");
    assert!(
        table.lines().any(|l| l.starts_with("n2")
            && l.contains("locked/f.txt")
            && l.contains("apply_failed")
            && l.contains("not permitted")),
        "{table}"
    );
    assert!(table.contains("n2 (shared): "), "{table}");

    assert!(chattr("-i", &locked));
    assert!(wait_until(T, || fs::read(locked.join("f.txt"))
        .ok()
        .as_deref()
        == Some(&b"blocked"[..])));
    assert!(
        wait_until(T, || {
            last = n2_doc(cfg);
            last.as_ref().is_some_and(|d| {
                d["total"] == 0 && d["paths"].as_array().is_some_and(|p| p.is_empty())
            })
        }),
        "n2 not clear once the file arrived: {last:?}"
    );
    let (_, table, _) = mqsync_out(&["pending", "--config", cfg, "--node", "n2"]);
    assert!(
        table.contains("n2 (shared): 0 pending, showing 0"),
        "{table}"
    );
}
