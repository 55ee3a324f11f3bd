use super::*;
use crate::engine::ChunkRef;
use crate::fs::meta::local_meta;
use crate::protocol::chunker;
use std::fs::File;
use std::os::unix::fs::symlink;

fn entry(path: &str, content: Content) -> Entry {
    Entry {
        attrs: None,
        path: RelPath::new(path).unwrap(),
        version: VersionVector::new().incremented("r"),
        modified_by: "r".into(),
        changed_ms: 0,
        content,
    }
}

fn file_content(parts: &[&[u8]], mode: u32) -> (Content, Vec<(Hash, Vec<u8>)>) {
    let chunks: crate::engine::Chunks = parts
        .iter()
        .map(|p| ChunkRef {
            hash: chunker::hash(p),
            len: p.len() as u32,
        })
        .collect();
    let size = parts.iter().map(|p| p.len() as u64).sum();
    let data = parts
        .iter()
        .map(|p| (chunker::hash(p), p.to_vec()))
        .collect();
    (
        Content::File {
            size,
            mode,
            mtime_ns: 1_600_000_000_123_456_789,
            chunks,
        },
        data,
    )
}

fn assert_unsafe_parent(out: &Outcome) {
    assert!(
        matches!(
            out,
            Outcome::Failed {
                error: ApplyError::UnsafeParent(_),
                ..
            }
        ),
        "{out:?}"
    );
}

fn no_ignore() -> Ignore {
    Ignore::new(&[]).unwrap()
}

fn none(_: &Hash) -> Option<Vec<u8>> {
    None
}

/// Commits staged files, as the node does after each batch of events.
fn committed(a: &mut Applier, out: Vec<Outcome>) -> Vec<Outcome> {
    let mut res: Vec<Outcome> = out
        .into_iter()
        .filter(|o| !matches!(o, Outcome::Staged))
        .collect();
    res.extend(a.commit());
    res
}

fn committed_one(a: &mut Applier, out: Outcome) -> Outcome {
    match out {
        Outcome::Staged => a.commit().pop().expect("one staged file"),
        o => o,
    }
}

#[test]
fn staged_files_appear_only_at_commit_and_a_batch_commits_together() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Applier::new(d.path().to_path_buf(), no_ignore());
    let mut map: HashMap<Hash, Vec<u8>> = HashMap::new();
    for i in 0..5 {
        let body = format!("file {i}");
        let (c, data) = file_content(&[body.as_bytes()], 0o640);
        map.extend(data);
        let out = a.start(entry(&format!("d/f{i}"), c), None, None, "n1", &|h| {
            map.get(h).cloned()
        });
        assert!(matches!(out, Outcome::Staged), "{out:?}");
        assert!(a.is_fetching(&RelPath::new(format!("d/f{i}")).unwrap()));
    }
    assert!(!d.path().join("d/f0").exists(), "visible before the commit");
    // A staged file cancelled before the commit leaves nothing behind.
    a.cancel(&RelPath::new("d/f4").unwrap());
    let out: Vec<Outcome> = a.commit();
    assert_eq!(out.len(), 4);
    assert!(
        out.iter().all(|o| matches!(o, Outcome::Done { .. })),
        "{out:?}"
    );
    for i in 0..4 {
        assert_eq!(
            fs::read(d.path().join(format!("d/f{i}"))).unwrap(),
            format!("file {i}").as_bytes()
        );
    }
    assert_eq!(
        fs::read_dir(d.path().join("d")).unwrap().count(),
        4,
        "no temp file or cancelled file left"
    );
    assert!(a.commit().is_empty());
}

#[test]
fn assembles_from_chunks_in_any_order_atomically() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Applier::new(d.path().to_path_buf(), no_ignore());
    let (c, data) = file_content(&[b"hello ", b"world", b"hello "], 0o755);
    let e = entry("sub/dir/f.sh", c);
    assert!(matches!(
        a.start(e, None, None, "n1", &none),
        Outcome::Waiting
    ));
    let target = d.path().join("sub/dir/f.sh");
    assert!(!target.exists(), "nothing visible under the real name");
    assert!(
        a.on_chunk([9; 32], b"junk".to_vec()).is_empty(),
        "bad hash dropped"
    );
    assert!(a.on_chunk(data[1].0, data[1].1.clone()).is_empty());
    let done = a.on_chunk(data[0].0, data[0].1.clone());
    let done = committed(&mut a, done);
    assert!(
        matches!(done.as_slice(), [Outcome::Done { .. }]),
        "{done:?}"
    );
    assert_eq!(fs::read(&target).unwrap(), b"hello worldhello ");
    let md = fs::metadata(&target).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o755);
    assert_eq!(crate::fs::meta::mtime_ns(&md), 1_600_000_000_123_456_789);
    let leftovers: Vec<_> = fs::read_dir(d.path().join("sub/dir")).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temp file left");
}

#[test]
fn local_chunks_need_no_network() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Applier::new(d.path().to_path_buf(), no_ignore());
    let (c, data) = file_content(&[b"abc", b"def"], 0o644);
    let map: HashMap<Hash, Vec<u8>> = data.into_iter().collect();
    let out = a.start(entry("copy", c), None, None, "n1", &|h| map.get(h).cloned());
    let out = committed_one(&mut a, out);
    assert!(matches!(out, Outcome::Done { .. }));
    assert_eq!(fs::read(d.path().join("copy")).unwrap(), b"abcdef");
}

/// A chunk repeated in a file is read locally once; its repeats are copied from the
/// temp file, and arrive whole.
#[test]
fn repeated_local_chunks_are_read_once() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Applier::new(d.path().to_path_buf(), no_ignore());
    let (c, data) = file_content(&[b"zero", b"one", b"zero", b"zero"], 0o644);
    let map: HashMap<Hash, Vec<u8>> = data.into_iter().collect();
    let reads = std::cell::Cell::new(0);
    let out = a.start(entry("rep", c), None, None, "n1", &|h| {
        reads.set(reads.get() + 1);
        map.get(h).cloned()
    });
    let out = committed_one(&mut a, out);
    assert!(matches!(out, Outcome::Done { .. }));
    assert_eq!(fs::read(d.path().join("rep")).unwrap(), b"zeroonezerozero");
    assert_eq!(reads.get(), 2);
}

#[test]
fn refuses_to_write_through_a_symlinked_parent() {
    let d = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    symlink(outside.path(), d.path().join("evil")).unwrap();
    let mut a = Applier::new(d.path().to_path_buf(), no_ignore());
    let (c, data) = file_content(&[b"x"], 0o644);
    let map: HashMap<Hash, Vec<u8>> = data.into_iter().collect();
    let out = a.start(entry("evil/f", c), None, None, "n1", &|h| {
        map.get(h).cloned()
    });
    assert_unsafe_parent(&out);
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn a_symlink_swapped_in_during_an_apply_is_not_followed() {
    let d = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let mut a = Applier::new(d.path().to_path_buf(), no_ignore());
    // The fetch waits for its chunk while the parent directory is swapped for a
    // symlink to a directory outside the root.
    let (c, data) = file_content(&[b"payload"], 0o644);
    let out = a.start(entry("dir/sub/f", c), None, None, "n1", &none);
    assert!(matches!(out, Outcome::Waiting), "{out:?}");
    fs::rename(d.path().join("dir"), d.path().join("moved")).unwrap();
    symlink(outside.path(), d.path().join("dir")).unwrap();
    fs::create_dir(outside.path().join("sub")).unwrap();
    let done = a.on_chunk(data[0].0, data[0].1.clone());
    let done = committed(&mut a, done);
    assert!(
        matches!(done.as_slice(), [Outcome::Done { .. }]),
        "{done:?}"
    );
    assert_eq!(fs::read(d.path().join("moved/sub/f")).unwrap(), b"payload");
    assert_eq!(fs::read_dir(outside.path().join("sub")).unwrap().count(), 0);

    // A directory entry: the new directory is made and chmodded where it was checked.
    fs::remove_file(d.path().join("dir")).unwrap();
    symlink(outside.path(), d.path().join("dir")).unwrap();
    let out = a.start(
        entry("dir/x", Content::Dir { mode: 0o700 }),
        None,
        None,
        "n1",
        &none,
    );
    assert_unsafe_parent(&out);
    assert!(!outside.path().join("x").exists());
}

#[test]
fn conflict_copy_moves_the_loser_aside() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("f.txt"), b"mine").unwrap();
    let expected = Some(local_meta(
        &fs::symlink_metadata(d.path().join("f.txt")).unwrap(),
    ));
    let mut a = Applier::new(d.path().to_path_buf(), no_ignore());
    let (c, data) = file_content(&[b"theirs"], 0o644);
    let map: HashMap<Hash, Vec<u8>> = data.into_iter().collect();
    let cc = RelPath::new("f.sync-conflict-x.txt").unwrap();
    let out = a.start(entry("f.txt", c), Some(cc), expected, "n1", &|h| {
        map.get(h).cloned()
    });
    let out = committed_one(&mut a, out);
    assert!(matches!(out, Outcome::Done { .. }), "{out:?}");
    assert_eq!(fs::read(d.path().join("f.txt")).unwrap(), b"theirs");
    assert_eq!(
        fs::read(d.path().join("f.sync-conflict-x.txt")).unwrap(),
        b"mine"
    );
    // A file already at the copy's name (an earlier copy the engine did not know yet)
    // is never replaced: the apply reports a local change and leaves both alone.
    let expected = Some(local_meta(
        &fs::symlink_metadata(d.path().join("f.txt")).unwrap(),
    ));
    let (c, data) = file_content(&[b"a third"], 0o644);
    let map: HashMap<Hash, Vec<u8>> = data.into_iter().collect();
    let cc = RelPath::new("f.sync-conflict-x.txt").unwrap();
    let out = a.start(entry("f.txt", c), Some(cc), expected, "n2", &|h| {
        map.get(h).cloned()
    });
    let out = committed_one(&mut a, out);
    assert!(
        matches!(
            &out,
            Outcome::Failed {
                error: ApplyError::ChangedLocally(_),
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(fs::read(d.path().join("f.txt")).unwrap(), b"theirs");
    assert_eq!(
        fs::read(d.path().join("f.sync-conflict-x.txt")).unwrap(),
        b"mine"
    );
    assert_eq!(
        fs::read_dir(d.path()).unwrap().count(),
        2,
        "no temp file left"
    );
}

#[test]
fn never_overwrites_an_unindexed_local_change() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("f"), b"fresh local edit").unwrap();
    let mut a = Applier::new(d.path().to_path_buf(), no_ignore());
    let (c, data) = file_content(&[b"remote"], 0o644);
    let map: HashMap<Hash, Vec<u8>> = data.into_iter().collect();
    let out = a.start(entry("f", c), None, None, "n1", &|h| map.get(h).cloned());
    let out = committed_one(&mut a, out);
    assert!(matches!(
        out,
        Outcome::Failed {
            error: ApplyError::ChangedLocally(_),
            ..
        }
    ));
    assert_eq!(fs::read(d.path().join("f")).unwrap(), b"fresh local edit");
    let del = a.start(entry("f", Content::Deleted), None, None, "n1", &none);
    assert!(matches!(del, Outcome::Failed { .. }));
    assert!(d.path().join("f").exists());
}

#[test]
fn dirs_symlinks_and_deletes() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Applier::new(d.path().to_path_buf(), no_ignore());
    assert!(matches!(
        a.start(
            entry("e/mpty", Content::Dir { mode: 0o700 }),
            None,
            None,
            "n",
            &none
        ),
        Outcome::Done { .. }
    ));
    assert_eq!(
        fs::metadata(d.path().join("e/mpty"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o700
    );
    let l = entry(
        "e/link",
        Content::Symlink {
            target: "../../outside".into(),
        },
    );
    assert!(matches!(
        a.start(l, None, None, "n", &none),
        Outcome::Done { .. }
    ));
    assert_eq!(
        fs::read_link(d.path().join("e/link")).unwrap(),
        Path::new("../../outside")
    );
    let md = local_meta(&fs::symlink_metadata(d.path().join("e/link")).unwrap());
    // A removed file (or link) is reported at the commit that makes it durable.
    let out = a.start(
        entry("e/link", Content::Deleted),
        None,
        Some(md),
        "n",
        &none,
    );
    assert!(matches!(out, Outcome::Staged), "{out:?}");
    assert!(matches!(committed_one(&mut a, out), Outcome::Done { .. }));
    assert!(matches!(
        a.start(entry("e/mpty", Content::Deleted), None, None, "n", &none),
        Outcome::Done { .. }
    ));
    assert!(!d.path().join("e/mpty").exists());
    assert!(!d.path().join("e/link").exists());
}

/// A directory to delete that holds only ignored files (also in subdirectories) is
/// kept with them and its delete done; one that still holds a synced file waits.
#[test]
fn a_directory_holding_only_ignored_files_is_kept_and_its_delete_done() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Applier::new(
        d.path().to_path_buf(),
        Ignore::new(&["*.swp".into()]).unwrap(),
    );
    fs::create_dir_all(d.path().join("dir/sub")).unwrap();
    fs::write(d.path().join("dir/sub/x.swp"), b"swap").unwrap();
    fs::write(d.path().join("dir/a"), b"synced").unwrap();
    let out = a.start(entry("dir", Content::Deleted), None, None, "n", &none);
    assert!(
        matches!(
            &out,
            Outcome::Failed {
                error: ApplyError::NotEmpty(_),
                ..
            }
        ),
        "{out:?}"
    );
    fs::remove_file(d.path().join("dir/a")).unwrap();
    let out = a.start(entry("dir", Content::Deleted), None, None, "n", &none);
    assert!(matches!(out, Outcome::Done { meta: None, .. }), "{out:?}");
    assert_eq!(fs::read(d.path().join("dir/sub/x.swp")).unwrap(), b"swap");
    assert!(holds_only_ignored(
        d.path(),
        &RelPath::new("dir").unwrap(),
        &a.ignore
    ));
    // An empty directory holds no ignored file: it is simply removed.
    fs::create_dir(d.path().join("empty")).unwrap();
    assert!(!holds_only_ignored(
        d.path(),
        &RelPath::new("empty").unwrap(),
        &a.ignore
    ));
    let out = a.start(entry("empty", Content::Deleted), None, None, "n", &none);
    assert!(matches!(out, Outcome::Done { .. }), "{out:?}");
    assert!(!d.path().join("empty").exists());
}

#[test]
fn a_fetch_nobody_serves_is_given_up_after_its_requests() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Applier::new(d.path().to_path_buf(), no_ignore());
    let (c, _) = file_content(&[b"zzz"], 0o644);
    a.start(entry("f", c), None, None, "n7", &none);
    let t0 = Instant::now();
    let step = Duration::from_secs(3);
    for i in 1..=fetch::GIVE_UP_REQUESTS {
        let now = t0 + step * i;
        assert!(a.abandoned(now, step).is_empty(), "request {i}");
        assert_eq!(a.stalled(now, step).len(), 1, "request {i}");
    }
    let now = t0 + step * (fetch::GIVE_UP_REQUESTS + 1);
    assert!(a.stalled(now, step).is_empty(), "no request after the last");
    let out = a.abandoned(now, step);
    assert!(
        matches!(
            &out[..],
            [Outcome::Failed {
                error: ApplyError::Unavailable { chunks: 1, .. },
                ..
            }]
        ),
        "{out:?}"
    );
    assert_eq!(a.in_flight(), 0);
    assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0, "temp removed");
}

#[test]
fn stalled_fetches_ask_their_source_then_everyone() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Applier::new(d.path().to_path_buf(), no_ignore());
    let (c, _) = file_content(&[b"zzz"], 0o644);
    a.start(entry("f", c), None, None, "n7", &none);
    let t0 = Instant::now();
    assert!(a.stalled(t0, Duration::from_secs(3600)).is_empty());
    let later = t0 + Duration::from_secs(10);
    assert_eq!(a.stalled(later, Duration::from_secs(1))[0].0, "n7");
    assert_eq!(
        a.stalled(later + Duration::from_secs(10), Duration::from_secs(1))[0].0,
        "n7"
    );
    assert_eq!(
        a.stalled(later + Duration::from_secs(20), Duration::from_secs(1))[0].0,
        "*"
    );
    a.cancel(&RelPath::new("f").unwrap());
    assert_eq!(a.in_flight(), 0);
    assert_eq!(
        fs::read_dir(d.path()).unwrap().count(),
        0,
        "temp removed on cancel"
    );
}

/// Chunks arrive in the order their files started fetching: once a later file from the
/// same source gets one, an earlier file's missing chunks are asked for at once, once.
#[test]
fn a_fetch_overtaken_by_a_later_one_asks_at_once() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Applier::new(d.path().to_path_buf(), no_ignore());
    let (first, _) = file_content(&[b"lost", b"kept"], 0o644);
    let (second, data) = file_content(&[b"later"], 0o644);
    let (other, _) = file_content(&[b"elsewhere"], 0o644);
    a.start(entry("first", first), None, None, "n1", &none);
    a.start(entry("other", other), None, None, "n2", &none);
    a.start(entry("second", second), None, None, "n1", &none);
    let now = Instant::now();
    assert!(a.overtaken(now).is_empty(), "nothing arrived yet");
    let (h, bytes) = data.into_iter().next().unwrap();
    assert_eq!(a.on_chunk(h, bytes).len(), 1, "the later file completes");
    let asked = a.overtaken(now);
    assert_eq!(asked.len(), 1, "only n1's earlier fetch: {asked:?}");
    assert_eq!(asked[0].0, "n1");
    let mut want = vec![chunker::hash(b"lost"), chunker::hash(b"kept")];
    want.sort();
    assert_eq!(asked[0].1, want);
    assert!(a.overtaken(now).is_empty(), "asked once");
    // The stall fallback still applies afterwards (to both sources' fetches).
    let stalled = a.stalled(now + Duration::from_secs(10), Duration::from_secs(1));
    assert!(stalled.iter().any(|(to, _)| to == "n1"), "{stalled:?}");
}

/// Starts a fetch into a/ that waits for its chunk (holding the directory open), and
/// moves a/ to b/ meanwhile.
fn hold_a_and_move_it_to_b(a: &mut Applier, root: &Path) {
    let (c1, _) = file_content(&[b"first"], 0o644);
    let out = a.start(entry("a/f", c1), None, None, "n1", &none);
    assert!(matches!(out, Outcome::Waiting), "{out:?}");
    fs::rename(root.join("a"), root.join("b")).unwrap();
}

/// Applies a/g, which needs no chunk from the network.
fn apply_a_g(a: &mut Applier) {
    let (c2, data) = file_content(&[b"second"], 0o644);
    let map: HashMap<Hash, Vec<u8>> = data.into_iter().collect();
    let out = a.start(entry("a/g", c2), None, None, "n1", &|h| map.get(h).cloned());
    let out = committed_one(a, out);
    assert!(matches!(out, Outcome::Done { .. }), "{out:?}");
}

#[test]
fn a_directory_moved_away_is_opened_again_once_forgotten() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Applier::new(d.path().to_path_buf(), no_ignore());
    hold_a_and_move_it_to_b(&mut a, d.path());
    // Without forgetting it, a file arriving into a/ within a second would follow the
    // held descriptor into b/.
    a.forget_dir(&RelPath::new("a").unwrap());
    apply_a_g(&mut a);
    assert_eq!(fs::read(d.path().join("a/g")).unwrap(), b"second");
    assert!(!d.path().join("b/g").exists());
}

#[test]
fn files_into_one_directory_share_its_descriptor() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Applier::new(d.path().to_path_buf(), no_ignore());
    hold_a_and_move_it_to_b(&mut a, d.path());
    // Not forgotten (the watcher has not reported the move yet): the next file into
    // a/ goes where the open directory is, still below the root.
    apply_a_g(&mut a);
    assert_eq!(fs::read(d.path().join("b/g")).unwrap(), b"second");
}

/// How many of the file's pages are in the page cache (`mincore` of a mapping, which
/// faults nothing in).
fn resident_pages(path: &Path) -> (usize, usize) {
    let f = File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    let page = 4096;
    let pages = len.div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: a read-only shared mapping of an open file, of its length, unmapped
    // below; mincore writes one byte per page into `vec`, which has that many.
    unsafe {
        use std::os::fd::AsRawFd;
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED);
        assert_eq!(libc::mincore(addr, len, vec.as_mut_ptr()), 0);
        libc::munmap(addr, len);
    }
    (vec.iter().filter(|b| *b & 1 == 1).count(), pages)
}

/// A large received file leaves the page cache once durable (its pages would evict
/// the applications' own); a small one stays cached, for whoever reads it next.
#[test]
fn large_files_leave_the_page_cache_once_durable() {
    // Not a tmpfs /tmp, whose pages cannot be dropped: beside the build.
    let under = concat!(env!("CARGO_MANIFEST_DIR"), "/target");
    fs::create_dir_all(under).unwrap();
    let d = tempfile::tempdir_in(under).unwrap();
    let mut a = Applier::new(d.path().to_path_buf(), no_ignore());
    let parts: Vec<Vec<u8>> = (0..5u8)
        .map(|i| {
            (0..(3u32 << 20))
                .map(|j| (j.wrapping_mul(2_654_435_761) >> 13) as u8 ^ i)
                .collect()
        })
        .collect();
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    let (big, chunks) = file_content(&refs, 0o644);
    let (small, small_chunks) = file_content(&[&parts[0][..64 << 10]], 0o644);
    let out = a.start(entry("big", big), None, None, "n1", &none);
    assert!(matches!(out, Outcome::Waiting), "{out:?}");
    let out = a.start(entry("small", small), None, None, "n1", &none);
    assert!(matches!(out, Outcome::Waiting), "{out:?}");
    let mut outs = vec![];
    for (h, data) in chunks.into_iter().chain(small_chunks) {
        outs.extend(a.on_chunk(h, data));
    }
    let outs = committed(&mut a, outs);
    assert_eq!(outs.len(), 2, "{outs:?}");
    assert!(
        outs.iter().all(|o| matches!(o, Outcome::Done { .. })),
        "{outs:?}"
    );
    let (resident, pages) = resident_pages(&d.path().join("big"));
    assert!(
        resident * 4 < pages,
        "{resident} of the large file's {pages} pages still cached"
    );
    let (resident, pages) = resident_pages(&d.path().join("small"));
    assert_eq!(resident, pages, "the small file left the cache");
    assert_eq!(fs::read(d.path().join("big")).unwrap(), parts.concat());
    assert_eq!(
        fs::read(d.path().join("small")).unwrap(),
        &parts[0][..64 << 10]
    );
}

#[test]
fn a_local_write_after_the_check_is_swapped_back_not_replaced() {
    use super::commit::{Installed, install};
    use super::parent::ParentDir;
    let d = tempfile::tempdir().unwrap();
    let rel = RelPath::new("f").unwrap();
    let parent = ParentDir::open(d.path(), &rel, true).unwrap();
    fs::write(d.path().join("f"), b"old").unwrap();
    let checked = parent.meta("f").unwrap();
    // The local write lands after the check, before the rename.
    fs::write(d.path().join("f"), b"local edit").unwrap();
    fs::write(d.path().join(".f.tmp"), b"remote").unwrap();
    let res = install(&parent, ".f.tmp", "f", checked);
    assert!(matches!(res, Err(Installed::Changed)));
    assert_eq!(fs::read(d.path().join("f")).unwrap(), b"local edit");
    assert_eq!(fs::read(d.path().join(".f.tmp")).unwrap(), b"remote");
    // Unchanged since the check: installed, the old file gone.
    let checked = parent.meta("f").unwrap();
    assert!(install(&parent, ".f.tmp", "f", checked).is_ok());
    assert_eq!(fs::read(d.path().join("f")).unwrap(), b"remote");
    assert!(!d.path().join(".f.tmp").exists());
    // Absent when checked, created since: not replaced.
    fs::write(d.path().join("g"), b"new local file").unwrap();
    fs::write(d.path().join(".g.tmp"), b"remote").unwrap();
    let res = install(&parent, ".g.tmp", "g", None);
    assert!(matches!(res, Err(Installed::Changed)));
    assert_eq!(fs::read(d.path().join("g")).unwrap(), b"new local file");
}

#[test]
fn a_local_write_right_after_the_rename_is_not_recorded_as_the_applied_version() {
    use super::commit::attributed;
    use super::parent::ParentDir;
    let d = tempfile::tempdir().unwrap();
    let rel = RelPath::new("f").unwrap();
    let parent = ParentDir::open(d.path(), &rel, true).unwrap();
    fs::write(d.path().join(".f.tmp"), b"remote").unwrap();
    let staged = parent.meta(".f.tmp").unwrap();
    fs::rename(d.path().join(".f.tmp"), d.path().join("f")).unwrap();
    // Nothing changed it: what the disk shows (the rename's ctime included).
    let placed = parent.meta("f").unwrap();
    assert_eq!(attributed(staged, placed), placed);
    // A local write landed between the rename and the look at the result: the staged
    // file's metadata is recorded, which differs from the disk's, so a scan reads it.
    fs::write(d.path().join("f"), b"a local edit, longer").unwrap();
    let placed = parent.meta("f").unwrap();
    let recorded = attributed(staged, placed);
    assert_eq!(recorded, staged);
    assert_ne!(recorded, placed);
}

#[test]
fn a_remote_delete_keeps_a_local_write_that_landed_after_the_check() {
    use super::commit::{Installed, remove_checked};
    use super::parent::ParentDir;
    let d = tempfile::tempdir().unwrap();
    let rel = RelPath::new("f").unwrap();
    let parent = ParentDir::open(d.path(), &rel, true).unwrap();
    fs::write(d.path().join("f"), b"old").unwrap();
    let checked = parent.meta("f").unwrap().unwrap();
    fs::write(d.path().join("f"), b"local edit").unwrap();
    assert!(matches!(
        remove_checked(&parent, "f", checked),
        Err(Installed::Changed)
    ));
    assert_eq!(fs::read(d.path().join("f")).unwrap(), b"local edit");
    // Unchanged since the check: removed, nothing left beside it.
    let checked = parent.meta("f").unwrap().unwrap();
    assert!(remove_checked(&parent, "f", checked).is_ok());
    assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
}
