//! Deletes that must not run, through real processes: a mass deletion held by the guard
//! ends without a resync when the files come back, and a directory deleted elsewhere
//! that holds files ignored on this node is kept with them, its delete done.

mod common;

use common::*;
use std::fs;
use std::time::Duration;

const T: Duration = Duration::from_secs(180);

fn held(doc: &serde_json::Value) -> u64 {
    doc["held_deletes"].as_u64().unwrap_or(0)
}

#[test]
fn a_held_mass_delete_ends_when_the_files_are_moved_back() {
    let mut c = Cluster::new(2);
    for i in 0..2 {
        c.start_node(i);
    }
    let (a, b) = (c.folder(0), c.folder(1));
    assert!(wait_until(T, || (0..2).all(|i| c.folder(i).join(".mqsync").exists())));
    fs::create_dir(a.join("docs")).unwrap();
    for i in 0..30 {
        fs::write(a.join(format!("docs/f{i:02}.txt")), format!("{i}")).unwrap();
    }
    fs::write(a.join("keep.txt"), b"stays").unwrap();
    c.converge(&[0, 1], T, |s| s.len() == 32);
    let before = snapshot(&a);

    // An accidental move of the whole directory out of the folder: held, not mirrored.
    let outside = c.path("moved-out");
    fs::rename(b.join("docs"), &outside).unwrap();
    let mut last = serde_json::Value::Null;
    assert!(
        wait_until(T, || {
            last = status_of(&c, "n2");
            held(&last) > 0
                && last["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("holding the deletions"))
        }),
        "no held deletions in the status: {last}\n{}",
        c.nodes[1].as_ref().unwrap().log_text()
    );

    // Moved back: the hold ends by itself, the error goes, nothing was deleted.
    fs::rename(&outside, b.join("docs")).unwrap();
    assert!(
        wait_until(T, || {
            last = status_of(&c, "n2");
            last["state"] == "idle" && held(&last) == 0 && last["last_error"].is_null()
        }),
        "the hold did not end: {last}\n{}",
        c.nodes[1].as_ref().unwrap().log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    c.converge(&[0, 1], T, |s| s.len() == 32);
    assert_eq!(snapshot(&a), before, "something was deleted");
    let log = c.nodes[1].as_ref().unwrap().log_text();
    assert!(!log.contains("resync requested"), "{log}");

    // The hold is really over: a later small delete goes out as usual.
    fs::remove_file(b.join("keep.txt")).unwrap();
    c.converge(&[0, 1], T, |s| s.len() == 31);
}

#[test]
fn a_directory_deleted_elsewhere_is_kept_for_files_ignored_here() {
    let mut c = Cluster::new(3);
    for i in 0..3 {
        c.start_node(i);
    }
    let (a, b) = (c.folder(0), c.folder(1));
    assert!(wait_until(T, || (0..3).all(|i| c.folder(i).join(".mqsync").exists())));
    for d in ["dir", "dir/sub", "ren"] {
        fs::create_dir(a.join(d)).unwrap();
    }
    fs::write(a.join("dir/a.txt"), b"a").unwrap();
    fs::write(a.join("dir/sub/b.txt"), b"b").unwrap();
    fs::write(a.join("ren/c.txt"), b"c").unwrap();
    c.converge(&[0, 1, 2], T, |s| {
        s.contains_key("ren/c.txt") && s.len() == 6
    });
    // Editor swap files, ignored on every node, exist on node 1 only.
    fs::write(a.join("dir/sub/x.swp"), b"swap").unwrap();
    fs::write(a.join("ren/y.swp"), b"swap").unwrap();
    std::thread::sleep(Duration::from_secs(1));

    // Node 2 deletes one directory and renames the other.
    fs::remove_dir_all(b.join("dir")).unwrap();
    fs::rename(b.join("ren"), b.join("renamed")).unwrap();

    let gone = |i: usize| {
        let s = snapshot(&c.folder(i));
        !s.keys()
            .any(|k| k.starts_with("dir") || k.starts_with("ren/"))
            && s.contains_key("renamed/c.txt")
    };
    assert!(wait_until(T, || gone(1) && gone(2)));
    let mut docs = Vec::new();
    assert!(
        wait_until(T, || {
            docs = ["n1", "n2", "n3"].map(|n| status_of(&c, n)).to_vec();
            docs.iter()
                .all(|d| d["state"] == "idle" && d["pending"] == 0)
                && docs.iter().all(|d| d["digest"] == docs[0]["digest"])
                && !a.join("dir/a.txt").exists()
                && a.join("renamed/c.txt").exists()
        }),
        "node 1 did not settle: {docs:?}\n{}",
        c.nodes[0].as_ref().unwrap().log_text()
    );
    // The ignored files and their directories stay on node 1, each said once in its
    // log (dir/sub, then dir for it, and ren).
    assert_eq!(fs::read(a.join("dir/sub/x.swp")).unwrap(), b"swap");
    assert_eq!(fs::read(a.join("ren/y.swp")).unwrap(), b"swap");
    let log = c.nodes[0].as_ref().unwrap().log_text();
    assert_eq!(log.matches("kept a directory").count(), 3, "{log}");
    // And they are not synced back: the other nodes stay without them.
    fs::write(a.join("dir/sub/x.swp"), b"swap, edited").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(gone(1) && gone(2), "a kept directory came back");
    let docs = ["n1", "n2", "n3"].map(|n| status_of(&c, n));
    assert!(
        docs.iter()
            .all(|d| d["pending"] == 0 && d["digest"] == docs[0]["digest"]),
        "{docs:?}"
    );
}
