//! End-to-end sync through real `mqsync` processes: an embedded broker process and
//! three nodes on 127.0.0.1 with mutual TLS, checked by comparing the trees on disk.

mod common;

use common::*;
use rand::{RngCore, SeedableRng};
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn write(path: &std::path::Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, data).unwrap();
}

#[test]
fn three_nodes_keep_one_folder_identical() {
    let mut c = Cluster::new(3);
    for i in 0..3 {
        c.start_node(i);
    }
    let (a, b, n3) = (c.folder(0), c.folder(1), c.folder(2));
    assert!(wait_until(T, || a.join(".mqsync").exists()
        && b.join(".mqsync").exists()
        && n3.join(".mqsync").exists()));

    // Create on node 1: nested dirs, an empty dir, a symlink, an executable, ignored file.
    write(&a.join("docs/readme.txt"), b"hello from n1\n");
    write(&a.join("docs/deep/er/file.bin"), &[7u8; 300_000]);
    fs::create_dir_all(a.join("empty/dir")).unwrap();
    symlink("../docs/readme.txt", a.join("empty/link")).unwrap();
    symlink("/etc/passwd", a.join("abs-link")).unwrap();
    write(&a.join("run.sh"), b"#!/bin/sh\necho hi\n");
    fs::set_permissions(a.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    write(&a.join("notes.swp"), b"ignored");
    c.converge(&[0, 1, 2], T, |s| {
        s.contains_key("docs/deep/er/file.bin")
            && s.contains_key("empty/link")
            && s.contains_key("run.sh")
    });
    let snap = snapshot(&n3);
    assert!(
        snap["run.sh"].starts_with("file 755"),
        "{:?}",
        snap["run.sh"]
    );
    assert_eq!(snap["empty/link"], "link -> ../docs/readme.txt");
    assert_eq!(snap["abs-link"], "link -> /etc/passwd");
    assert!(snap["empty/dir"].starts_with("dir"));
    assert!(
        !b.join("notes.swp").exists(),
        "ignored file must not be sent"
    );
    assert!(a.join("notes.swp").exists());

    // Modify on node 2, delete on node 3.
    write(&b.join("docs/readme.txt"), b"edited on n2\n");
    fs::remove_dir_all(n3.join("docs/deep")).unwrap();
    c.converge(&[0, 1, 2], T, |s| {
        !s.contains_key("docs/deep") && s.get("docs/readme.txt").is_some_and(|v| v.contains(" 13 "))
    });
    assert_eq!(
        fs::read(a.join("docs/readme.txt")).unwrap(),
        b"edited on n2\n"
    );

    // Rename a file and a directory on node 1.
    fs::rename(a.join("run.sh"), a.join("start.sh")).unwrap();
    fs::rename(a.join("docs"), a.join("documents")).unwrap();
    c.converge(&[0, 1, 2], T, |s| {
        s.contains_key("start.sh")
            && !s.contains_key("run.sh")
            && s.contains_key("documents/readme.txt")
            && !s.contains_key("docs")
    });

    // A 100 MiB file of random bytes on node 2.
    let mut big = vec![0u8; 100 << 20];
    rand::rngs::StdRng::seed_from_u64(42).fill_bytes(&mut big);
    write(&b.join("big/random.bin"), &big);
    drop(big);
    c.converge(&[0, 1, 2], Duration::from_secs(300), |s| {
        s.get("big/random.bin")
            .is_some_and(|v| v.contains(&format!(" {} ", 100u64 << 20)))
    });

    // Renaming and copying the big file moves no content: every node rebuilds it from
    // its own chunks (the writer pushes nothing, nobody requests anything).
    let log_count = |c: &Cluster, i: usize, what: &str| {
        c.nodes[i]
            .as_ref()
            .unwrap()
            .log_text()
            .matches(what)
            .count()
    };
    let pushes: Vec<_> = (0..3)
        .map(|i| log_count(&c, i, "pushing new chunks"))
        .collect();
    let requests: Vec<_> = (0..3)
        .map(|i| log_count(&c, i, "requesting chunks"))
        .collect();
    // (Copied beside the folder and moved in, so no half-written copy is ever scanned.)
    fs::copy(a.join("big/random.bin"), c.path("staging.bin")).unwrap();
    fs::rename(c.path("staging.bin"), a.join("big-copy.bin")).unwrap();
    c.converge(&[0, 1, 2], Duration::from_secs(300), |s| {
        s.contains_key("big-copy.bin")
    });
    fs::rename(n3.join("big/random.bin"), n3.join("big/renamed.bin")).unwrap();
    c.converge(&[0, 1, 2], Duration::from_secs(300), |s| {
        s.contains_key("big/renamed.bin") && !s.contains_key("big/random.bin")
    });
    assert_eq!(
        pushes,
        (0..3)
            .map(|i| log_count(&c, i, "pushing new chunks"))
            .collect::<Vec<_>>(),
        "content was re-sent"
    );
    assert_eq!(
        requests,
        (0..3)
            .map(|i| log_count(&c, i, "requesting chunks"))
            .collect::<Vec<_>>(),
        "content was requested"
    );

    // 2,000 small files on node 3.
    for i in 0..2000 {
        let data = format!("small file {i}\n").repeat(1 + i % 50);
        write(
            &n3.join(format!("many/d{:02}/f{i:04}.txt", i % 20)),
            data.as_bytes(),
        );
    }
    c.converge(&[0, 1, 2], Duration::from_secs(300), |s| {
        s.keys()
            .filter(|k| k.starts_with("many/") && k.ends_with(".txt"))
            .count()
            == 2000
    });

    // Nothing ping-pongs: after convergence no node keeps publishing changes.
    let before: Vec<_> = (0..3).map(|i| log_count(&c, i, "announce")).collect();
    std::thread::sleep(Duration::from_secs(2));
    let after: Vec<_> = (0..3).map(|i| log_count(&c, i, "announce")).collect();
    assert_eq!(before, after, "nodes keep announcing after convergence");
}

#[test]
fn a_node_that_was_down_catches_up_and_sends_its_offline_writes() {
    let mut c = Cluster::new(3);
    for i in 0..3 {
        c.start_node(i);
    }
    let (a, b, n3) = (c.folder(0), c.folder(1), c.folder(2));
    write(&a.join("before.txt"), b"before");
    c.converge(&[0, 1, 2], T, |s| s.contains_key("before.txt"));

    // Node 3 is down while node 1 changes the folder.
    c.stop_node(2);
    for i in 0..200 {
        write(
            &a.join(format!("while-down/{i}.txt")),
            format!("{i}").as_bytes(),
        );
    }
    fs::remove_file(a.join("before.txt")).unwrap();
    c.converge(&[0, 1], T, |s| {
        s.keys().filter(|k| k.starts_with("while-down/")).count() == 200
            && !s.contains_key("before.txt")
    });
    // Meanwhile someone edits node 3's folder with its daemon stopped.
    write(
        &n3.join("offline-edit.txt"),
        b"written while the daemon was stopped",
    );
    c.start_node(2);
    c.converge(&[0, 1, 2], T, |s| {
        s.contains_key("offline-edit.txt")
            && s.keys().filter(|k| k.starts_with("while-down/")).count() == 200
    });
    assert!(!n3.join("before.txt").exists());
    assert_eq!(
        fs::read(b.join("offline-edit.txt")).unwrap(),
        b"written while the daemon was stopped"
    );
}

#[test]
fn nodes_with_a_wrong_ca_or_no_client_certificate_are_refused() {
    let mut c = Cluster::new(3);
    c.start_node(0);
    // Node 2 trusts a CA that did not sign the broker's certificate.
    let other = c.path("other-certs");
    certs_init(&other, "n2");
    let certs = c.path("certs");
    c.write_config(1, |t| {
        t.replace(
            &format!("{}/ca.pem", certs.display()),
            &format!("{}/ca.pem", other.display()),
        )
    });
    c.start_node(1);
    // Node 3 sends no client certificate.
    c.write_config(2, |t| {
        t.lines()
            .filter(|l| !l.starts_with("cert_file") && !l.starts_with("key_file"))
            .collect::<Vec<_>>()
            .join("\n")
    });
    c.start_node(2);

    write(&c.folder(0).join("secret.txt"), b"only for the group");
    let refused = |i: usize, words: &[&str]| {
        let n = c.nodes[i].as_ref().unwrap();
        wait_until(Duration::from_secs(60), || {
            let log = n.log_text().to_lowercase();
            words.iter().all(|w| log.contains(w))
        })
    };
    assert!(
        refused(1, &["certificate", "ca"]),
        "node 2 log: {}",
        c.nodes[1].as_ref().unwrap().log_text()
    );
    assert!(
        refused(2, &["certificate"]),
        "node 3 log: {}",
        c.nodes[2].as_ref().unwrap().log_text()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(!c.folder(1).join("secret.txt").exists());
    assert!(!c.folder(2).join("secret.txt").exists());
    assert!(
        c.nodes[1].as_mut().unwrap().is_running(),
        "a refused node keeps retrying, it does not crash"
    );
}

/// A receiver whose open-file limit (512, soft and hard, so it cannot raise it) is far
/// below the number of files arriving at once: applies wait for free slots instead of
/// failing with "Too many open files".
#[test]
fn thousands_of_files_arrive_within_a_low_open_file_limit() {
    let mut c = Cluster::new(2);
    let a = c.folder(0);
    for i in 0..3_000 {
        write(
            &a.join(format!("d{:02}/f{i:05}.txt", i % 30)),
            format!("file {i}\n").as_bytes(),
        );
    }
    c.start_node(0);
    let cfg = c.write_config(1, |t| t);
    let log = c.path("n2.limited.log");
    c.nodes[1] = Some(Proc::spawn_program(
        "prlimit",
        &[
            "--nofile=512:512",
            BIN,
            "run",
            "--config",
            cfg.to_str().unwrap(),
        ],
        &log,
    ));
    c.converge(&[0, 1], T, |s| {
        s.keys().filter(|k| k.ends_with(".txt")).count() == 3_000
    });
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("Too many open files"),
        "the receiver ran out of file descriptors"
    );
    assert_eq!(
        fs::read(c.folder(1).join("d07/f02407.txt")).unwrap(),
        b"file 2407\n"
    );
}

/// A writer that starts with a full folder pushes its chunks from the end of its first
/// scan; it must read its receivers' progress while it does, or it pushes everything
/// before it learns that a receiver stopped (one pump once pushed 148 MB unchecked).
#[test]
fn a_writer_starting_with_a_full_folder_waits_for_a_paused_receiver() {
    let mut c = Cluster::new(2);
    c.start_node(1);
    assert!(
        wait_until(T, || c.nodes[1]
            .as_ref()
            .unwrap()
            .log_text()
            .contains("connected to broker")),
        "the receiver never connected"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut files = vec![];
    fs::create_dir_all(c.folder(0).join("big")).unwrap();
    for i in 0..12 {
        let mut data = vec![0u8; 16 << 20];
        rng.fill_bytes(&mut data);
        let name = format!("big/{i:02}.bin");
        write(&c.folder(0).join(&name), &data);
        files.push((name, data));
    }
    c.start_node(0);
    pause_receiver_and_check_nothing_was_lost(&c, &files, 0);
}

/// A receiver that stops reading for a while (SIGSTOP for 1.5 s, under the 3 s after
/// which it would ask for chunks itself) loses nothing: its writer waits for it instead
/// of pushing on past what the broker keeps for a lagging subscriber (32 MiB), so it
/// never has to request a chunk.
#[test]
fn a_paused_receiver_holds_its_writer_back_instead_of_losing_chunks() {
    let mut c = Cluster::new(2);
    c.start_node(0);
    c.start_node(1);
    write(&c.folder(0).join("ready.txt"), b"ready");
    c.converge(&[0, 1], T, |s| s.contains_key("ready.txt"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut files = vec![];
    for i in 0..12 {
        let mut data = vec![0u8; 16 << 20];
        rng.fill_bytes(&mut data);
        files.push((format!("big/{i:02}.bin"), data));
    }
    // Only what happens from here counts (the first file may have been fetched by
    // request, as an answer to a digest).
    let log_before = c.nodes[1].as_ref().unwrap().log_text().len();
    // Written beside the folder and moved in whole, so no scan sees half a file.
    let staging = c.path("staging");
    fs::create_dir_all(&staging).unwrap();
    fs::create_dir_all(c.folder(0).join("big")).unwrap();
    for (name, data) in &files {
        let tmp = staging.join(name.replace('/', "_"));
        write(&tmp, data);
        fs::rename(&tmp, c.folder(0).join(name)).unwrap();
    }
    pause_receiver_and_check_nothing_was_lost(&c, &files, log_before);
}

/// Node 1 receives the 12 files `big/NN.bin` of 16 MiB from node 0: once it has the
/// first, it is stopped for 1.5 s (under the 3 s after which it would ask for chunks
/// itself). Every byte must arrive, the receiver's log from byte `log_before` on must
/// hold no chunk request, and the writer must have waited for it (so the pause tested
/// the window).
fn pause_receiver_and_check_nothing_was_lost(
    c: &Cluster,
    files: &[(String, Vec<u8>)],
    log_before: usize,
) {
    let first = c.folder(1).join("big/00.bin");
    assert!(wait_until(T, || fs::metadata(&first)
        .is_ok_and(|m| m.len() == 16 << 20)));
    let receiver = c.nodes[1].as_ref().unwrap();
    receiver.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1500));
    receiver.signal(libc::SIGCONT);
    c.converge(&[0, 1], T, |s| {
        s.keys().filter(|k| k.starts_with("big/")).count() == 12
    });
    for (name, data) in files {
        assert!(
            fs::read(c.folder(1).join(name)).unwrap() == *data,
            "{name} differs"
        );
    }
    let log = c.nodes[1].as_ref().unwrap().log_text();
    let log = String::from_utf8_lossy(&log.as_bytes()[log_before.min(log.len())..]).into_owned();
    assert!(
        !log.contains("requesting chunks"),
        "the receiver lost chunks and asked for them again: {}",
        log.lines()
            .filter(|l| l.contains("requesting chunks"))
            .take(3)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let writer = c.nodes[0].as_ref().unwrap().log_text();
    assert!(
        writer.contains("waiting for receivers to catch up"),
        "the writer never had to wait for the paused receiver"
    );
}

/// An edit of a few KiB in the middle of a 16 MiB file travels as a patch of the
/// manifest and deltas of the chunks it touched: the writer sends a fraction of one
/// chunk (at least 64 KiB whole), and both receivers end with the same bytes.
#[test]
fn an_edit_in_a_large_file_sends_little_more_than_the_edit() {
    let mut c = Cluster::new(3);
    let port = free_port();
    c.write_config(0, |t| format!("metrics_listen = \"127.0.0.1:{port}\"\n{t}"));
    let started = std::time::Instant::now();
    for i in 0..3 {
        c.start_node(i);
    }
    let mut data = vec![0u8; 16 << 20];
    rand::rngs::StdRng::seed_from_u64(21).fill_bytes(&mut data);
    let file = c.folder(0).join("big.bin");
    write(&file, &data);
    let same = |data: &[u8]| {
        (1..3).all(|i| fs::read(c.folder(i).join("big.bin")).is_ok_and(|d| d == data))
    };
    assert!(wait_until(T, || same(&data)), "the file never arrived");
    let sent = || {
        metric_value(
            &scrape_metrics(port),
            "mqsync_bytes_sent_total{folder=\"shared\"}",
        )
    };
    // Let the initial push settle, then count from here: past the confirming summary
    // each node sends 5 s after connecting (engine::ANSWER_TIMEOUT) and a stalled
    // fetch's 3 s, whose late answers belong to the first transfer, not to the edit.
    std::thread::sleep(
        (started + mqsync::engine::ANSWER_TIMEOUT + Duration::from_secs(2))
            .saturating_duration_since(std::time::Instant::now()),
    );
    let mut before = sent();
    assert!(wait_until(T, || {
        std::thread::sleep(Duration::from_millis(500));
        let now = sent();
        let settled = now.is_some() && now == before;
        before = now;
        settled
    }));
    let before = before.unwrap();
    let logs_before: Vec<usize> = (0..3)
        .map(|i| c.nodes[i].as_ref().unwrap().log_text().len())
        .collect();
    let log_since = |i: usize| {
        let log = c.nodes[i].as_ref().unwrap().log_text();
        String::from_utf8_lossy(&log.as_bytes()[logs_before[i].min(log.len())..]).into_owned()
    };
    // 12 KiB overwritten in place, across a block boundary.
    let at = (8 << 20) + 1000;
    let mut rng = rand::rngs::StdRng::seed_from_u64(22);
    rng.fill_bytes(&mut data[at..at + 12 * 1024]);
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(&data[at..at + 12 * 1024], at as u64)
            .unwrap();
    }
    assert!(wait_until(T, || same(&data)), "the edit never arrived");
    let sent = sent().unwrap() - before;
    assert!(
        sent < 48_000.0,
        "{sent} bytes sent for a 12 KiB edit (a whole chunk is at least 64 KiB)"
    );
    let writer = log_since(0);
    assert!(writer.contains("sending patches"), "no patch in\n{writer}");
    assert!(
        writer.contains("pushing chunks as deltas"),
        "no delta in\n{writer}"
    );
    for i in 1..3 {
        let log = log_since(i);
        assert!(
            !log.contains("requesting chunks"),
            "node {i} asked for chunks:\n{log}"
        );
        assert!(
            !log.contains("comparing digests"),
            "node {i} missed the base:\n{log}"
        );
    }
}

/// Ignore patterns follow gitignore: `.cache/` ignores what is inside every `.cache`
/// directory, at any depth, `/build` only the root's `build`, and `*.swp` any name.
#[test]
fn ignore_patterns_follow_gitignore_at_any_depth() {
    let mut c = Cluster::new(2);
    for i in 0..2 {
        c.write_config(i, |t| {
            t.replace(
                r#"ignore = ["*.swp"]"#,
                r#"ignore = ["*.swp", ".cache/", "/build"]"#,
            )
        });
        c.start_node(i);
    }
    let (a, b) = (c.folder(0), c.folder(1));
    assert!(wait_until(T, || b.join(".mqsync").exists()));
    for p in [
        ".cache/x",
        "src/.cache/x",
        "src/deep/.cache/sub/y",
        "build/out.o",
        "src/deep/n.swp",
    ] {
        write(&a.join(p), b"ignored");
    }
    let kept = ["src/build/kept.o", "src/deep/kept.txt", "last.txt"];
    for p in kept {
        write(&a.join(p), b"synced");
    }
    // Not `converge`: the trees differ by the ignored files. The files beside them,
    // written after them, arrived: an ignored file that were sent would have too.
    assert!(
        wait_until(T, || kept.iter().all(|p| b.join(p).exists())),
        "{:?}",
        snapshot(&b).keys()
    );
    let got: Vec<String> = snapshot(&b).into_keys().collect();
    for p in [
        ".cache/x",
        "src/.cache/x",
        "src/deep/.cache/sub/y",
        "build/out.o",
    ] {
        assert!(!b.join(p).exists(), "{p} was synced: {got:?}");
    }
}
