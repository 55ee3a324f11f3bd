//! A node whose disk fills up: its folder, or its state directory, on a small tmpfs the
//! test mounts. While the disk is full the node says so (status and healthcheck); once
//! space is back it completes every file by itself, fetching again what it dropped.
//! Skipped, with a message, where mounting is not allowed.

mod common;

use common::*;
use rand::{RngCore, SeedableRng};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

/// A tmpfs of `mib` MiB mounted on a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here ({}); the disk-full test needs root",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, mib: u64) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "remount: {out:?}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// Writes `path` until the file system holding it is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = fs::File::create(path).unwrap();
    let block = vec![0u8; 64 << 10];
    for _ in 0..100_000 {
        if f.write_all(&block).is_err() {
            return;
        }
    }
    panic!("{} never filled up", path.display());
}

/// `mqsync healthcheck` of node `i`: whether it passed, and what it printed.
fn healthcheck(c: &Cluster, i: usize) -> (bool, String) {
    let cfg = c.path(&format!("{}.toml", c.names[i]));
    // A short grace period, so the test sees the healthcheck fail soon.
    let out = Command::new(BIN)
        .args([
            "healthcheck",
            "--error-grace",
            "5",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The status document node `i` keeps for `mqsync healthcheck`.
fn health_doc(c: &Cluster, i: usize) -> serde_json::Value {
    let p = c.path(&format!("state/{}/health/shared.json", c.names[i]));
    fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Node 3's `full` (its folder or its state directory) is a 48 MiB tmpfs; node 1 gets
/// ten 8 MiB files. Node 3 reports the full disk, then catches up once it has room.
fn fills_then_catches_up(full_state: bool) {
    let mut c = Cluster::new(3);
    let small = if full_state {
        c.path("state/n3")
    } else {
        c.folder(2)
    };
    let Some(fs_) = Tmpfs::mount(&small, 48) else {
        return;
    };
    for i in 0..3 {
        c.start_node(i);
    }
    let a = c.folder(0);
    assert!(wait_until(T, || (0..3).all(|i| c.folder(i).join(".mqsync").exists())));
    if full_state {
        // Leave the index no room: the folder itself is on the large disk.
        fill(&small.join("filler"));
    }
    fs::create_dir_all(a.join("big")).unwrap();
    let files: Vec<Vec<u8>> = (0..10).map(|k| random(8 << 20, k)).collect();
    for (k, data) in files.iter().enumerate() {
        fs::write(a.join(format!("big/r{k:04}.bin")), data).unwrap();
    }
    c.converge(&[0, 1], T, |s| s.len() == 11);
    // Node 3 fills up: it says so in its status and its healthcheck fails.
    assert!(
        wait_until(T, || health_doc(&c, 2)["last_error"].as_str().is_some_and(
            |e| e.contains("No space left") || e.contains("space") || e.contains("os error 28")
        )),
        "node 3 does not report the full disk: {}",
        health_doc(&c, 2)
    );
    assert!(
        wait_until(T, || !healthcheck(&c, 2).0),
        "node 3's healthcheck passes with a full disk: {}",
        healthcheck(&c, 2).1
    );
    let (_, text) = healthcheck(&c, 2);
    assert!(text.contains("space"), "healthcheck says why: {text}");
    // Space comes back: node 3 completes by itself, and is healthy again.
    if full_state {
        fs::remove_file(small.join("filler")).unwrap();
    }
    fs_.resize(256);
    c.converge(&[0, 1, 2], T, |s| s.len() == 11);
    for (k, data) in files.iter().enumerate() {
        let got = fs::read(c.folder(2).join(format!("big/r{k:04}.bin"))).unwrap();
        assert!(got == *data, "r{k:04}.bin differs on node 3");
    }
    assert!(
        wait_until(T, || healthcheck(&c, 2).0
            && health_doc(&c, 2)["pending"] == 0
            && health_doc(&c, 2)["last_error"].is_null()),
        "node 3 did not recover: {} {}",
        healthcheck(&c, 2).1,
        health_doc(&c, 2)
    );
    // Its index is consistent: a restart loads every entry (none is taken for a
    // local change) and finds nothing to fetch.
    c.stop_node(2);
    c.start_node(2);
    let log = || c.nodes[2].as_ref().unwrap().log_text();
    assert!(
        wait_until(T, || log().contains("connected to broker")
            && health_doc(&c, 2)["state"] == "idle"),
        "node 3 after restart: {}",
        health_doc(&c, 2)
    );
    let text = log();
    assert!(
        text.contains("index loaded folder=shared records=11"),
        "{text}"
    );
    assert!(!text.contains("requesting chunks"), "{text}");
    c.converge(&[0, 1, 2], T, |s| s.len() == 11);
    for i in 0..3 {
        c.stop_node(i);
    }
    drop(fs_);
}

#[test]
fn a_node_whose_folder_filled_up_catches_up_once_space_is_back() {
    fills_then_catches_up(false);
}

#[test]
fn a_node_whose_state_directory_filled_up_catches_up_once_space_is_back() {
    fills_then_catches_up(true);
}
