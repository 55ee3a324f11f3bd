//! Renames, moves and copies cost about what their manifests cost: the other nodes
//! rebuild the files from data they hold, so no node pushes a chunk or asks for one.
//! Counted through every node's metrics (messages sent, by kind) with real processes.

mod common;

use common::*;
use rand::{Rng, RngCore, SeedableRng};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(180);

/// Three nodes, each serving metrics; returns the cluster and the metrics ports.
fn cluster() -> (Cluster, Vec<u16>) {
    let mut c = Cluster::new(3);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for (i, port) in ports.iter().enumerate() {
        c.write_config(i, |t| format!("metrics_listen = \"127.0.0.1:{port}\"\n{t}"));
        c.start_node(i);
    }
    // Connected, so every node hears the changes live from the first.
    let connected = |i: usize| {
        fs::read_to_string(c.path(&format!("state/{}/health/shared.json", c.names[i])))
            .is_ok_and(|t| t.contains("\"connected\":true"))
    };
    assert!(wait_until(T, || (0..3).all(connected)));
    (c, ports)
}

/// Messages of `kind` node `port` has sent so far.
fn sent(port: u16, kind: &str) -> f64 {
    metric_value(
        &scrape_metrics(port),
        &format!("mqsync_messages_sent_total{{folder=\"shared\",kind=\"{kind}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Chunk data (whole or as deltas) and chunk requests sent by every node so far.
fn transfers(ports: &[u16]) -> Vec<(u16, f64, f64)> {
    ports
        .iter()
        .map(|&p| (p, sent(p, "chunks") + sent(p, "deltas"), sent(p, "request")))
        .collect()
}

/// Runs `step` on node 1's folder, waits until all three trees are equal and `done`
/// holds, and asserts that no node sent a chunk or a request meanwhile.
fn costs_no_chunks(
    c: &Cluster,
    ports: &[u16],
    what: &str,
    step: impl FnOnce(&Path),
    done: impl Fn(&std::collections::BTreeMap<String, String>) -> bool,
) {
    let before = transfers(ports);
    step(&c.folder(0));
    c.converge(&[0, 1, 2], T, done);
    // Anything late (a stalled fetch asks after 3 s) would show by now.
    std::thread::sleep(Duration::from_secs(4));
    c.converge(&[0, 1, 2], T, |_| true);
    let after = transfers(ports);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            a.1 == b.1 && a.2 == b.2,
            "{what}: node {} sent {} chunk and {} request messages",
            i + 1,
            a.1 - b.1,
            a.2 - b.2
        );
    }
    for i in 0..3 {
        let log = c.nodes[i].as_ref().unwrap().log_text();
        assert!(
            !log.contains("deleted locally"),
            "{what}: node {} took applied deletions for local ones",
            i + 1
        );
    }
    let temps = (0..3)
        .flat_map(|i| walk(&c.folder(i)))
        .filter(|(rel, _)| rel.contains(".mqsync-tmp-"))
        .count();
    assert_eq!(temps, 0, "{what}: temp files left behind");
}

fn cp_r(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// Renames, moves into another directory and copies `name` on node 1, each step
/// checked to send no chunk and no request.
fn rename_move_copy(c: &Cluster, ports: &[u16], name: &str, files: usize) {
    let count = |s: &std::collections::BTreeMap<String, String>, prefix: &str| {
        s.keys()
            .filter(|k| k.starts_with(prefix) && s[*k].starts_with("file"))
            .count()
    };
    let renamed = format!("{name}-renamed");
    costs_no_chunks(
        c,
        ports,
        &format!("rename of {name}"),
        |a| fs::rename(a.join(name), a.join(&renamed)).unwrap(),
        |s| count(s, &format!("{renamed}/")) == files && count(s, &format!("{name}/")) == 0,
    );
    let moved = format!("elsewhere/{name}");
    costs_no_chunks(
        c,
        ports,
        &format!("move of {name} into another directory"),
        |a| {
            fs::create_dir_all(a.join("elsewhere")).unwrap();
            fs::rename(a.join(&renamed), a.join(&moved)).unwrap();
        },
        |s| count(s, &format!("{moved}/")) == files && count(s, &format!("{renamed}/")) == 0,
    );
    let copy = format!("{name}-copy");
    costs_no_chunks(
        c,
        ports,
        &format!("copy of {name}"),
        |a| cp_r(&a.join(&moved), &a.join(&copy)),
        |s| count(s, &format!("{copy}/")) == files && count(s, &format!("{moved}/")) == files,
    );
}

#[test]
fn a_renamed_moved_and_copied_tree_of_small_files_sends_no_chunk() {
    let (c, ports) = cluster();
    let a = c.folder(0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(30);
    // More files than a node applies at once (256), so applies queue.
    let files = 2_000;
    for k in 0..files {
        let mut data = vec![0u8; rng.random_range(1024..8192)];
        rng.fill_bytes(&mut data);
        let p = a.join(format!("tree/d{:02}/f{k:05}", k % 20));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    c.converge(&[0, 1, 2], T, |s| s.len() == files + 21);
    rename_move_copy(&c, &ports, "tree", files);
}

#[test]
fn a_renamed_moved_and_copied_directory_of_large_files_sends_no_chunk() {
    let (c, ports) = cluster();
    let a = c.folder(0);
    fs::create_dir_all(a.join("big")).unwrap();
    for k in 0..3u64 {
        let mut data = vec![0u8; 12 << 20];
        rand::rngs::StdRng::seed_from_u64(k).fill_bytes(&mut data);
        fs::write(a.join(format!("big/f{k}.bin")), data).unwrap();
    }
    c.converge(&[0, 1, 2], T, |s| s.len() == 4);
    rename_move_copy(&c, &ports, "big", 3);
}

/// How Ansible, rsync and editors write: a hidden temp file in the same directory,
/// renamed over the target. No receiver may need to ask for a chunk, and the temp
/// files' deletions (ten times the folder's file count) are moves, not a mass delete.
#[test]
fn files_written_through_a_temp_file_and_renamed_need_no_request() {
    let (c, ports) = cluster();
    let a = c.folder(0);
    fs::create_dir_all(a.join("etc")).unwrap();
    let before = transfers(&ports);
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let mut last = vec![];
    for k in 0..100 {
        let mut data = vec![0u8; rng.random_range(200..6000)];
        rng.fill_bytes(&mut data);
        let name = format!("conf{}.yml", k % 10);
        let tmp = a.join(format!("etc/.{name}.{k:04}.tmp"));
        fs::write(&tmp, &data).unwrap();
        fs::rename(&tmp, a.join("etc").join(&name)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        last.push((name, data));
    }
    let want: std::collections::BTreeMap<_, _> = last.into_iter().collect();
    assert!(
        wait_until(T, || (1..3).all(|i| want
            .iter()
            .all(
                |(n, d)| fs::read(c.folder(i).join("etc").join(n)).is_ok_and(|got| &got == d)
            ))),
        "the files never arrived"
    );
    c.converge(&[0, 1, 2], T, |s| s.len() == 11);
    let after = transfers(&ports);
    for i in 1..3 {
        let requests = after[i].2 - before[i].2;
        assert_eq!(requests, 0.0, "node {} asked for chunks", i + 1);
        let log = c.nodes[i].as_ref().unwrap().log_text();
        assert!(
            !log.contains("requesting chunks"),
            "node {} waited for a re-request",
            i + 1
        );
    }
}
