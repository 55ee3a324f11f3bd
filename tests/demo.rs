//! `mqsync demo` as a newcomer meets it: files already in `a` reach `b` and `c`, each
//! applied batch is printed (`b ← a: hello.txt, 2 more`), new files and deletions too,
//! and the final bars count the files each node holds. `--for` stops it by itself.

mod common;

use common::{BIN, Proc, wait_until};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Starts `mqsync demo DIR ARGS` with stdout and stderr in files of their own.
fn spawn_demo(dir: &Path, args: &[&str], out: &Path) -> Proc {
    let err = out.with_extension("err");
    let child = Command::new(BIN)
        .arg("demo")
        .arg(dir)
        .args(args)
        .env("MQSYNC_LOG", "info")
        .stdin(Stdio::null())
        .stdout(fs::File::create(out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    Proc {
        child: Some(child),
        log: err,
    }
}

/// The changes `to ← from` lines name: each line's first path and how many changes
/// it stands for (`, N more`), for written (or, with `deleted`, deleted) paths.
fn batches(out: &str, to: &str, from: &str, deleted: bool) -> Vec<(String, usize)> {
    let prefix = format!("{to} ← {from}: ");
    out.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|rest| !rest.starts_with("conflict on "))
        .filter_map(|rest| match rest.strip_prefix("deleted ") {
            Some(r) if deleted => Some(r),
            None if !deleted => Some(rest),
            _ => None,
        })
        .map(|rest| match rest.split_once(", ") {
            Some((path, more)) => {
                let n: usize = more
                    .strip_suffix(" more")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("bad line: {rest}"));
                (path.to_string(), 1 + n)
            }
            None => (rest.to_string(), 1),
        })
        .collect()
}

fn total(b: &[(String, usize)]) -> usize {
    b.iter().map(|(_, n)| n).sum()
}

/// Every node's status file says `files` entries and the same digest.
fn settled(dir: &Path, files: u64) -> bool {
    let docs: Vec<serde_json::Value> = ["a", "b", "c"]
        .iter()
        .filter_map(|n| {
            let f = dir.join(".state").join(n).join("health").join("demo.json");
            serde_json::from_slice(&fs::read(f).ok()?).ok()
        })
        .collect();
    docs.len() == 3
        && docs.iter().all(|d| {
            d["files"] == files && d["state"] == "idle" && d["digest"] == docs[0]["digest"]
        })
}

#[test]
fn demo_prints_each_applied_batch_and_counts_files() {
    let tmp = tempfile::tempdir().unwrap();

    // --for: the demo stops by itself and prints what each node holds.
    let quick = tmp.path().join("quick");
    let out = tmp.path().join("quick.out");
    let mut p = spawn_demo(&quick, &["--for", "2"], &out);
    assert!(
        wait_until(T, || !p.is_running()),
        "demo --for 2 still running"
    );
    let status = p.child.take().unwrap().wait().unwrap();
    let text = fs::read_to_string(&out).unwrap();
    assert!(status.success(), "{text}\n{}", p.log_text());
    assert!(text.contains("Demo stopped. The nodes held:"), "{text}");
    for n in ["a", "b", "c"] {
        assert!(text.contains(&format!("\n  {n}: ")), "{text}");
    }
    assert!(text.contains("sleep 2"), "the deletes' second: {text}");

    // Files already in `a` before the demo starts.
    let dir = tmp.path().join("demo");
    fs::create_dir_all(dir.join("a/sub")).unwrap();
    fs::write(dir.join("a/hello.txt"), "hello\n").unwrap();
    fs::write(dir.join("a/notes.txt"), "notes\n").unwrap();
    fs::write(dir.join("a/sub/deep.txt"), "deep\n").unwrap();
    let out = tmp.path().join("demo.out");
    let mut p = spawn_demo(&dir, &["--for", "600"], &out);
    let text = || fs::read_to_string(&out).unwrap_or_default();
    let fail = |what: &str, p: &Proc| -> String {
        format!(
            "{what}\n--- stdout\n{}\n--- stderr\n{}",
            text(),
            p.log_text()
        )
    };
    let initial = ["hello.txt", "notes.txt", "sub", "sub/deep.txt"];
    for to in ["b", "c"] {
        // Three files and a directory, in one or more batches.
        let ok = wait_until(T, || total(&batches(&text(), to, "a", false)) >= 4);
        assert!(ok, "{}", fail(&format!("{to} did not print a's files"), &p));
        let b = batches(&text(), to, "a", false);
        assert_eq!(total(&b), 4, "{}", fail("counts", &p));
        for (path, _) in &b {
            assert!(initial.contains(&path.as_str()), "{}", fail(path, &p));
        }
        assert!(dir.join(to).join("sub/deep.txt").exists());
    }
    assert!(
        wait_until(T, || settled(&dir, 4)),
        "{}",
        fail("status files", &p)
    );

    // A new file in `a`, a deleted directory in `b`.
    fs::write(dir.join("a/new.txt"), "new\n").unwrap();
    for to in ["b", "c"] {
        let ok = wait_until(T, || {
            batches(&text(), to, "a", false).contains(&("new.txt".to_string(), 1))
        });
        assert!(ok, "{}", fail(&format!("{to} ← a: new.txt"), &p));
    }
    fs::remove_dir_all(dir.join("b/sub")).unwrap();
    for to in ["a", "c"] {
        let ok = wait_until(T, || total(&batches(&text(), to, "b", true)) >= 2);
        assert!(ok, "{}", fail(&format!("{to} ← b: deleted"), &p));
        let d = batches(&text(), to, "b", true);
        assert_eq!(total(&d), 2, "{}", fail("deleted counts", &p));
        assert!(!dir.join(to).join("sub").exists());
    }
    assert!(
        wait_until(T, || settled(&dir, 3)),
        "{}",
        fail("status files after the changes", &p)
    );

    // Ctrl-C: the final bars count what each node holds.
    p.signal(libc::SIGINT);
    assert!(wait_until(T, || !p.is_running()), "{}", fail("Ctrl-C", &p));
    let final_text = text();
    let summary = final_text
        .split_once("Demo stopped. The nodes held:")
        .map(|(_, s)| s.to_string())
        .unwrap_or_else(|| panic!("{}", fail("no summary", &p)));
    for n in ["a", "b", "c"] {
        assert!(
            summary.contains(&format!("\n  {n}: in sync · 3 files, 16 B")),
            "{}",
            fail(&format!("final bar of {n}"), &p)
        );
    }
}
