//! Convergence through real processes against both brokers (the embedded rumqttd and
//! Mosquitto with required client certificates): concurrent edits resolve to the same
//! winner and conflict copy everywhere, and a node that was offline while thousands of
//! files changed catches up through digests, not broker queues.

mod common;

use common::*;
use std::fs;
use std::time::Duration;

const T: Duration = Duration::from_secs(180);

fn set_mtime(path: &std::path::Path, secs: i64) {
    filetime::set_file_mtime(path, filetime::FileTime::from_unix_time(secs, 0)).unwrap();
}

fn concurrent_edits(kind: BrokerKind) {
    let mut c = Cluster::with_broker(3, kind);
    for i in 0..3 {
        c.start_node(i);
    }
    let (a, b) = (c.folder(0), c.folder(1));
    fs::create_dir_all(&a).unwrap();
    assert!(wait_until(T, || a.join(".mqsync").exists()));
    fs::write(a.join("doc.txt"), b"original").unwrap();
    c.converge(&[0, 1, 2], T, |s| s.contains_key("doc.txt"));

    // Node 2 edits while its daemon is stopped; node 1 edits meanwhile. Neither saw
    // the other's version: they are concurrent, and the later mtime (node 2's) wins.
    c.stop_node(1);
    fs::write(b.join("doc.txt"), b"edit from n2 (later)").unwrap();
    set_mtime(&b.join("doc.txt"), 1_700_000_100);
    fs::write(a.join("doc.txt"), b"edit from n1 (earlier)").unwrap();
    set_mtime(&a.join("doc.txt"), 1_700_000_000);
    c.converge(&[0, 2], T, |s| {
        s.get("doc.txt")
            .is_some_and(|v| v.contains("mtime 1700000000"))
    });
    c.start_node(1);
    let copy = "doc.sync-conflict-20231114-221320-n1.txt";
    c.converge(&[0, 1, 2], T, |s| {
        s.contains_key(copy)
            && s.get("doc.txt")
                .is_some_and(|v| v.contains("mtime 1700000100"))
    });
    for i in 0..3 {
        let f = c.folder(i);
        assert_eq!(
            fs::read(f.join("doc.txt")).unwrap(),
            b"edit from n2 (later)",
            "winner on node {i}"
        );
        assert_eq!(
            fs::read(f.join(copy)).unwrap(),
            b"edit from n1 (earlier)",
            "loser kept on node {i}"
        );
        let conflicts = fs::read_dir(&f)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("sync-conflict"))
            .count();
        assert_eq!(conflicts, 1, "exactly one conflict copy on node {i}");
    }
}

fn offline_catch_up(kind: BrokerKind, files: usize) {
    let mut c = Cluster::with_broker(3, kind);
    for i in 0..3 {
        c.start_node(i);
    }
    let a = c.folder(0);
    assert!(wait_until(T, || (0..3).all(|i| c.folder(i).join(".mqsync").exists())));
    fs::write(a.join("old.txt"), b"old").unwrap();
    c.converge(&[0, 1, 2], T, |s| s.contains_key("old.txt"));
    c.stop_node(2);
    for i in 0..files {
        let d = a.join(format!("batch/d{:02}", i % 30));
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join(format!("f{i}.txt")),
            format!("file {i}\n").repeat(1 + i % 20),
        )
        .unwrap();
    }
    fs::remove_file(a.join("old.txt")).unwrap();
    let count = |s: &std::collections::BTreeMap<String, String>| {
        s.keys()
            .filter(|k| k.ends_with(".txt") && k.starts_with("batch/"))
            .count()
    };
    c.converge(&[0, 1], T, |s| {
        count(s) == files && !s.contains_key("old.txt")
    });
    let start = std::time::Instant::now();
    c.start_node(2);
    c.converge(&[0, 1, 2], T, |s| {
        count(s) == files && !s.contains_key("old.txt")
    });
    eprintln!(
        "{kind:?}: offline node caught up on {files} files in {:.2?}",
        start.elapsed()
    );
}

#[test]
fn concurrent_edits_resolve_identically_embedded_broker() {
    concurrent_edits(BrokerKind::Embedded);
}

#[test]
fn concurrent_edits_resolve_identically_mosquitto() {
    concurrent_edits(BrokerKind::Mosquitto);
}

#[test]
fn offline_node_catches_up_on_3000_files_embedded_broker() {
    offline_catch_up(BrokerKind::Embedded, 3000);
}

#[test]
fn offline_node_catches_up_on_3000_files_mosquitto() {
    offline_catch_up(BrokerKind::Mosquitto, 3000);
}
