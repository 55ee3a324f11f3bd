//! Folders inotify cannot fully watch, and ignore rules the nodes share:
//! - a node with `watch = "poll"` on a FUSE (exFAT) mount runs no watcher, finds what
//!   is written there by polling, and says so in its status;
//! - a node out of inotify watches (run in its own user namespace, whose watch limit
//!   the test sets low: the machine's `fs.inotify.max_user_watches` is never touched)
//!   polls the unwatched part of its tree, says how much in its status, and watches it
//!   again once the limit is raised;
//! - `.mqsyncignore`: synced, in force on every node, reloaded when it changes; a
//!   newly ignored file stays on every disk and stops syncing, a file no longer
//!   ignored is sent.

mod common;

use common::exfat::ExfatMount;
use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

/// `mqsync status` (the table) as node n1's configuration reads it.
fn status_table(c: &Cluster) -> String {
    let cfg = c.path("n1.toml");
    mqsync_out(&["status", "--config", cfg.to_str().unwrap()]).1
}

fn wait_ok(c: &Cluster) -> (bool, String) {
    let cfg = c.path("n1.toml");
    let (ok, out, err) =
        mqsync_out(&["wait", "--timeout", "60", "--config", cfg.to_str().unwrap()]);
    (ok, format!("{out}{err}"))
}

/// Node `i`'s configuration with `keys` added to its folder.
fn folder_keys(c: &Cluster, i: usize, keys: &str) {
    c.write_config(i, |t| format!("{t}{keys}\n"));
}

/// The `polled` member of `node`'s status.
fn polled(c: &Cluster, node: &str) -> serde_json::Value {
    status_of(c, node)["polled"].clone()
}

#[test]
fn a_polled_folder_on_a_fuse_mount_finds_changes_made_behind_its_back() {
    let mut c = Cluster::new(2);
    let mount = ExfatMount::new(&c.path("exfat.img"), &c.folder(1));
    fs::write(
        mount.dir.join("before.txt"),
        b"on the mount before the start",
    )
    .unwrap();
    folder_keys(&c, 1, "watch = \"poll\"\npoll_interval_s = 1");
    c.start_node(0);
    c.start_node(1);
    let a = c.folder(0);
    assert!(
        wait_until(T, || a.join("before.txt").exists()),
        "the first scan's file did not reach n1"
    );
    // No watcher runs: what is written on the mount is found by the next poll.
    let log = c.nodes[1].as_ref().unwrap().log_text();
    assert!(
        log.contains("watch = \"poll\": scanning the folder every 1 s"),
        "{log}"
    );
    fs::create_dir_all(mount.dir.join("sub")).unwrap();
    fs::write(mount.dir.join("sub/behind.txt"), b"written while n2 polls").unwrap();
    fs::write(mount.dir.join("before.txt"), b"changed while n2 polls").unwrap();
    let ok = wait_until(T, || {
        fs::read(a.join("sub/behind.txt")).is_ok_and(|d| d == b"written while n2 polls")
            && fs::read(a.join("before.txt")).is_ok_and(|d| d == b"changed while n2 polls")
    });
    assert!(
        ok,
        "n2's changes did not reach n1\n{}",
        c.nodes[1].as_ref().unwrap().log_text()
    );
    // The other way: n1's change is applied on the mount.
    fs::write(a.join("from-n1.txt"), b"from n1").unwrap();
    assert!(
        wait_until(T, || fs::read(mount.dir.join("from-n1.txt"))
            .is_ok_and(|d| d == b"from n1")),
        "n1's change did not reach the mount"
    );
    // The status says that n2 polls everything, and why.
    let ok = wait_until(T, || {
        let p = polled(&c, "n2");
        p["reason"] == "watch = \"poll\""
            && p["dirs"] == 2
            && p["of_dirs"] == 2
            && p["interval_s"] == 1
    });
    assert!(ok, "n2 status: {}", status_of(&c, "n2"));
    assert_eq!(polled(&c, "n1"), serde_json::Value::Null);
    let (ok, out) = wait_ok(&c);
    assert!(ok, "wait: {out}");
    let table = status_table(&c);
    assert!(
        table.contains("yes*") && table.contains("node n2 polls all 2 directories every 1 s"),
        "{table}"
    );
    c.stop_node(0);
    c.stop_node(1);
    drop(mount);
}

/// Whether this kernel gives a child user namespace its own inotify watch limit.
fn user_namespace_limits() -> Result<(), String> {
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "sh", "-c"])
        .arg(
            "echo 7 > /proc/sys/user/max_inotify_watches && cat /proc/sys/user/max_inotify_watches",
        )
        .output()
        .map_err(|e| format!("unshare: {e}"))?;
    let said = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && said.trim() == "7" {
        Ok(())
    } else {
        Err(format!(
            "unshare --user with its own max_inotify_watches failed: {} {}",
            said.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Sets the inotify watch limit of the user namespace of process `pid`.
fn set_watch_limit(pid: u32, limit: u64) {
    let st = Command::new("nsenter")
        .args(["--user", "--target", &pid.to_string(), "sh", "-c"])
        .arg(format!("echo {limit} > /proc/sys/user/max_inotify_watches"))
        .status()
        .expect("nsenter");
    assert!(st.success(), "nsenter could not raise the limit");
}

#[test]
fn a_node_out_of_inotify_watches_polls_the_unwatched_part_and_says_so() {
    if let Err(e) = user_namespace_limits() {
        eprintln!(
            "SKIPPED: {e}: this kernel or sandbox cannot give a node its own inotify watch limit"
        );
        return;
    }
    let mut c = Cluster::new(2);
    let b = c.folder(1);
    for i in 0..300 {
        fs::create_dir_all(b.join(format!("d{i:03}/inner"))).unwrap();
    }
    fs::write(b.join("d000/first.txt"), b"first").unwrap();
    folder_keys(&c, 1, "poll_interval_s = 1");
    c.start_node(0);
    // n2 in a user namespace of its own, allowed 150 watches for 601 directories.
    let cfg = c.path("n2.toml");
    let log = c.path("n2.0.log");
    let script = "echo 150 > /proc/sys/user/max_inotify_watches && exec \"$0\" run --config \"$1\"";
    c.nodes[1] = Some(Proc::spawn_program(
        "unshare",
        &[
            "--user",
            "--map-root-user",
            "sh",
            "-c",
            script,
            BIN,
            cfg.to_str().unwrap(),
        ],
        &log,
    ));
    let a = c.folder(0);
    assert!(
        wait_until(T, || a.join("d000/first.txt").exists()),
        "first.txt did not reach n1"
    );
    let ok = wait_until(T, || {
        let p = polled(&c, "n2");
        p["reason"] == "out of inotify watches"
            && p["dirs"].as_u64().is_some_and(|d| d > 0 && d < 601)
            && p["of_dirs"] == 601
    });
    assert!(ok, "n2 status: {}", status_of(&c, "n2"));
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("out of inotify watches"), "{text}");

    // Files in every directory, watched or not, and in a new directory (no watch is
    // left for it), reach n1.
    for i in 0..300 {
        fs::write(b.join(format!("d{i:03}/inner/f.txt")), format!("file {i}")).unwrap();
    }
    fs::create_dir_all(b.join("d150/new/deeper")).unwrap();
    fs::write(b.join("d150/new/deeper/g.txt"), b"in a new directory").unwrap();
    let ok = wait_until(T, || {
        (0..300).all(|i| fs::read(a.join(format!("d{i:03}/inner/f.txt"))).is_ok())
            && a.join("d150/new/deeper/g.txt").exists()
    });
    assert!(
        ok,
        "n2's files did not all reach n1\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    let table = status_table(&c);
    assert!(
        table.contains("yes*") && table.contains("raise fs.inotify.max_user_watches"),
        "{table}"
    );
    let (ok, out) = wait_ok(&c);
    assert!(ok, "wait: {out}");

    // Raised, the limit is used at the next poll: nothing is polled any more.
    let pid = c.nodes[1].as_ref().unwrap().child.as_ref().unwrap().id();
    set_watch_limit(pid, 100_000);
    assert!(
        wait_until(T, || status_of(&c, "n2")["polled"].is_null()
            && status_of(&c, "n2")["node"] == "n2"),
        "n2 status: {}",
        status_of(&c, "n2")
    );
    c.stop_node(0);
    c.stop_node(1);
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| format!("({e})"))
}

/// The patterns `node`'s status reports.
fn patterns(c: &Cluster, node: &str) -> Vec<String> {
    status_of(c, node)["ignore"]["patterns"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn mqsyncignore_is_shared_reloaded_and_keeps_newly_ignored_files_on_disk() {
    let mut c = Cluster::new(2);
    let (a, b) = (c.folder(0), c.folder(1));
    fs::create_dir_all(a.join("cache")).unwrap();
    fs::write(a.join("app.log"), b"log v1").unwrap();
    fs::write(a.join("cache/x"), b"cache v1").unwrap();
    fs::write(a.join("keep.txt"), b"keep").unwrap();
    c.start_node(0);
    c.start_node(1);
    c.converge(&[0, 1], T, |s| {
        s.contains_key("cache/x") && s.contains_key("app.log")
    });

    // Written on n1, the file reaches n2 and both nodes apply it.
    fs::write(a.join(".mqsyncignore"), "# shared rules\n*.log\ncache/\n").unwrap();
    let ok = wait_until(T, || {
        ["n1", "n2"].iter().all(|n| {
            let p = patterns(&c, n);
            p.contains(&"*.log".to_string()) && p.contains(&"cache/".to_string())
        })
    });
    assert!(
        ok,
        "n1 {:?}, n2 {:?}",
        patterns(&c, "n1"),
        patterns(&c, "n2")
    );
    assert_eq!(
        read(&b.join(".mqsyncignore")),
        read(&a.join(".mqsyncignore"))
    );
    // Newly ignored: changed or deleted on n1, untouched on n2; nothing is deleted.
    fs::write(a.join("app.log"), b"log v2, ignored").unwrap();
    fs::remove_file(a.join("cache/x")).unwrap();
    fs::write(a.join("marker1.txt"), b"after the ignored changes").unwrap();
    assert!(
        wait_until(T, || b.join("marker1.txt").exists()),
        "marker1 did not reach n2"
    );
    assert_eq!(read(&b.join("app.log")), "log v1");
    assert_eq!(read(&b.join("cache/x")), "cache v1");
    fs::write(b.join("app.log"), b"log on n2, ignored").unwrap();
    fs::write(b.join("marker2.txt"), b"after n2's ignored change").unwrap();
    assert!(
        wait_until(T, || a.join("marker2.txt").exists()),
        "marker2 did not reach n1"
    );
    assert_eq!(read(&a.join("app.log")), "log v2, ignored");
    let (ok, out) = wait_ok(&c);
    assert!(ok, "wait: {out}");

    // Edited on n2 to drop `*.log`: n1 reloads it, and the logs are sent again (each
    // node had its own; the newer one wins, the other is kept as a conflict copy).
    fs::write(b.join(".mqsyncignore"), "cache/\n").unwrap();
    let ok = wait_until(T, || {
        ["n1", "n2"]
            .iter()
            .all(|n| !patterns(&c, n).contains(&"*.log".to_string()))
    });
    assert!(
        ok,
        "n1 {:?}, n2 {:?}",
        patterns(&c, "n1"),
        patterns(&c, "n2")
    );
    fs::write(a.join("new.log"), b"a log written once logs sync").unwrap();
    let ok = wait_until(T, || {
        read(&b.join("new.log")) == "a log written once logs sync"
            && read(&a.join("app.log")) == read(&b.join("app.log"))
    });
    assert!(
        ok,
        "logs did not sync again: n1 app.log {:?}, n2 app.log {:?}",
        read(&a.join("app.log")),
        read(&b.join("app.log"))
    );
    // cache/ is still ignored: n2 keeps its cache/x, n1 has none.
    assert_eq!(read(&b.join("cache/x")), "cache v1");
    assert!(!a.join("cache/x").exists());
    let (ok, out) = wait_ok(&c);
    assert!(ok, "wait: {out}");
    c.stop_node(0);
    c.stop_node(1);
}
