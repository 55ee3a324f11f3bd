//! A node whose folder is on a real case-insensitive file system (exFAT through FUSE,
//! on a loop device) receiving names that differ only in case from a case-sensitive
//! node: the collision is refused and reported, nothing is overwritten, and once the
//! other side renames, the nodes converge. Needs root, a loop device and /dev/fuse;
//! scripts/test installs exfat-fuse and exfatprogs.

mod common;

use common::exfat::ExfatMount;
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

/// Names as listed on disk (their real spelling) with content hashes; modes and times
/// are left out because exFAT keeps neither permission bits nor nanoseconds.
fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (rel, p) in walk(root) {
        if p.is_dir() {
            out.insert(rel, "dir".into());
        } else if let Ok(data) = fs::read(&p) {
            out.insert(rel, blake3::hash(&data).to_hex()[..16].to_string());
        }
    }
    out
}

#[test]
fn names_differing_only_in_case_are_refused_and_reported_on_a_case_insensitive_node() {
    let mut c = Cluster::new(2);
    let mount = ExfatMount::new(&c.path("exfat.img"), &c.folder(1));
    assert!(
        mqsync::fs::casefold::probe(&mount.dir).unwrap(),
        "exFAT should fold case"
    );

    let a = c.folder(0);
    fs::create_dir_all(a.join("Docs")).unwrap();
    fs::create_dir_all(a.join("docs")).unwrap();
    fs::write(a.join("Readme.md"), b"readme, mixed case").unwrap();
    fs::write(a.join("README.md"), b"README, upper case").unwrap();
    fs::write(a.join("Docs/a.txt"), b"in Docs").unwrap();
    fs::write(a.join("docs/b.txt"), b"in docs").unwrap();
    fs::write(a.join("Notes.txt"), b"notes").unwrap();
    let before = snapshot(&a);
    c.start_node(0);
    c.start_node(1);

    // n2 holds one spelling of each pair, with that spelling's own content, and reports
    // the collision.
    let ok = wait_until(T, || {
        let l = listing(&c.folder(1));
        let readmes = l
            .keys()
            .filter(|k| k.eq_ignore_ascii_case("readme.md"))
            .count();
        let dirs = l.keys().filter(|k| k.eq_ignore_ascii_case("docs")).count();
        l.contains_key("Notes.txt") && readmes == 1 && dirs == 1 && l.len() == 4
    });
    assert!(ok, "n2 holds {:?}", listing(&c.folder(1)));
    let ok = wait_until(T, || {
        status_of(&c, "n2")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("case collision"))
    });
    assert!(ok, "n2 status: {}", status_of(&c, "n2"));
    let theirs = listing(&a);
    for (name, hash) in listing(&c.folder(1)) {
        assert_eq!(
            theirs.get(&name),
            Some(&hash),
            "{name} on n2 does not match n1's {name}"
        );
    }
    let log = c.nodes[1].as_ref().unwrap().log_text();
    assert!(log.contains("case-insensitive file system"), "{log}");
    assert!(log.contains("case collision"), "{log}");
    // Nothing n2 refused came back to n1 as a change.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(snapshot(&a), before, "{}", diff(&before, &snapshot(&a)));

    // n1 resolves the pairs and renames a file in case only: both sides converge.
    fs::remove_file(a.join("README.md")).unwrap();
    fs::rename(a.join("docs/b.txt"), a.join("Docs/b.txt")).unwrap();
    fs::remove_dir(a.join("docs")).unwrap();
    fs::rename(a.join("Notes.txt"), a.join("NOTES.txt")).unwrap();
    let ok = wait_until(T, || listing(&c.folder(1)) == listing(&a));
    assert!(
        ok,
        "n1 {:?} vs n2 {:?}\n{}",
        listing(&a),
        listing(&c.folder(1)),
        c.nodes[1].as_ref().unwrap().log_text()
    );
    let out = Command::new(BIN)
        .args(["wait", "--timeout", "90", "--config"])
        .arg(c.path("n1.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The error clears with the apply that resolved it; the status document shows it
    // at its next publication (on a change, at least every 10 s).
    let ok = wait_until(T, || status_of(&c, "n2")["last_error"].is_null());
    assert!(ok, "n2 status: {}", status_of(&c, "n2"));
    c.stop_node(0);
    c.stop_node(1);
    drop(mount);
}
