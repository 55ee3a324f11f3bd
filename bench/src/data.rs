//! The benchmark's data, generated from fixed seeds so every run and every system gets
//! the same bytes: bulk files (half random, half text-like), many small files, a
//! large file with a changed middle for the delta workload, and the trees of the
//! scale and rename workloads.

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Sizes of the workloads; `quick` shrinks them for a smoke run of the harness.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub bulk_files: usize,
    pub bulk_file_bytes: usize,
    pub small_files: usize,
    pub small_dirs: usize,
    pub delta_bytes: usize,
    pub delta_change: usize,
}

impl Sizes {
    pub fn full() -> Sizes {
        Sizes {
            bulk_files: 64,
            bulk_file_bytes: 16 << 20,
            small_files: 20_000,
            small_dirs: 200,
            delta_bytes: 512 << 20,
            delta_change: 1 << 20,
        }
    }

    pub fn quick() -> Sizes {
        Sizes {
            bulk_files: 8,
            bulk_file_bytes: 4 << 20,
            small_files: 2_000,
            small_dirs: 20,
            delta_bytes: 64 << 20,
            delta_change: 1 << 20,
        }
    }
}

/// Text-like bytes: words from a fixed vocabulary, compressible about as well as prose.
fn text_like(rng: &mut StdRng, len: usize) -> Vec<u8> {
    const SYLLABLES: [&str; 24] = [
        "con", "fig", "ser", "ver", "node", "sync", "da", "ta", "ment", "ing", "tion", "al", "re",
        "pro", "cess", "port", "host", "name", "key", "val", "ue", "log", "er", "in",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        for _ in 0..rng.random_range(1..4) {
            out.extend_from_slice(SYLLABLES[rng.random_range(0..SYLLABLES.len())].as_bytes());
        }
        out.push(if rng.random_ratio(1, 12) { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

fn random(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Makes `dir` once (kept between runs when its stamp matches the sizes).
fn once(dir: &Path, stamp: &str, make: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let stamp_file = dir.with_extension("done");
    if fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) && dir.is_dir() {
        return Ok(());
    }
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    make(dir)?;
    fs::write(stamp_file, stamp)?;
    Ok(())
}

pub struct DataSet {
    pub bulk: PathBuf,
    pub small: PathBuf,
    /// One file, `big.bin`, and the same with its middle changed.
    pub delta_base: PathBuf,
    pub delta_changed: PathBuf,
}

/// Generates (or finds, from an earlier run) the parts of the data set that `wanted`
/// names: `bulk`, `small`, `delta`.
pub fn generate(root: &Path, s: Sizes, wanted: impl Fn(&str) -> bool) -> Result<DataSet> {
    let set = DataSet {
        bulk: root.join("bulk"),
        small: root.join("small"),
        delta_base: root.join("delta-base"),
        delta_changed: root.join("delta-changed"),
    };
    let once = |part: &str, dir: &Path, make: &dyn Fn(&Path) -> Result<()>| {
        if wanted(part) {
            once(dir, &format!("{s:?}"), make)
        } else {
            Ok(())
        }
    };
    once("bulk", &set.bulk, &|dir| {
        for i in 0..s.bulk_files {
            let mut rng = StdRng::seed_from_u64(1000 + i as u64);
            let data = if i % 2 == 0 {
                random(&mut rng, s.bulk_file_bytes)
            } else {
                text_like(&mut rng, s.bulk_file_bytes)
            };
            fs::write(dir.join(format!("bulk-{i:02}.bin")), data)?;
        }
        Ok(())
    })?;
    once("small", &set.small, &|dir| {
        small_files(dir, s.small_files, s.small_dirs, 2)
    })?;
    once("delta", &set.delta_base, &|dir| {
        let mut rng = StdRng::seed_from_u64(3);
        let mut f = fs::File::create(dir.join("big.bin"))?;
        let mut left = s.delta_bytes;
        while left > 0 {
            let n = left.min(8 << 20);
            f.write_all(&random(&mut rng, n))?;
            left -= n;
        }
        Ok(())
    })?;
    once("delta", &set.delta_changed, &|dir| {
        let file = dir.join("big.bin");
        fs::copy(set.delta_base.join("big.bin"), &file)?;
        let (at, len) = delta_change_range(s);
        let mut rng = StdRng::seed_from_u64(4);
        fs::OpenOptions::new()
            .write(true)
            .open(&file)?
            .write_all_at(&random(&mut rng, len), at)?;
        Ok(())
    })?;
    Ok(set)
}

/// The scale workload's tree: `files` files of 100 to 200 text-like bytes, 1,000 to a
/// directory (each directory from its own seed, so two threads write them and the bytes
/// stay the same). Made once, in `root/scale-FILES`.
pub fn generate_scale(root: &Path, files: usize) -> Result<PathBuf> {
    const PER_DIR: usize = 1000;
    let dir = root.join(format!("scale-{files}"));
    once(
        &dir,
        &format!("scale {files} files, {PER_DIR} per directory"),
        |dir| {
            let dirs = files.div_ceil(PER_DIR);
            let write_dir = |d: usize| -> Result<()> {
                let mut rng = StdRng::seed_from_u64(5_000_000 + d as u64);
                let sub = dir.join(format!("d{d:04}"));
                fs::create_dir_all(&sub)?;
                for i in d * PER_DIR..((d + 1) * PER_DIR).min(files) {
                    let len = rng.random_range(100..=200);
                    fs::write(sub.join(format!("f{i:07}.txt")), text_like(&mut rng, len))?;
                }
                Ok(())
            };
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..2)
                    .map(|w| s.spawn(move || (w..dirs).step_by(2).try_for_each(write_dir)))
                    .collect();
                workers
                    .into_iter()
                    .try_for_each(|h| h.join().expect("scale writer panicked"))
            })
        },
    )?;
    Ok(dir)
}

/// `files` files of 1 to 8 KiB (half random, half text-like) spread evenly over `dirs`
/// directories `d000`, `d001`, … of `dir`, from `seed`.
fn small_files(dir: &Path, files: usize, dirs: usize, seed: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let per_dir = files.div_ceil(dirs);
    for i in 0..files {
        let d = dir.join(format!("d{:03}", i / per_dir));
        if i % per_dir == 0 {
            fs::create_dir_all(&d)?;
        }
        let len = rng.random_range(1024..=8192);
        let data = if i % 2 == 0 {
            random(&mut rng, len)
        } else {
            text_like(&mut rng, len)
        };
        fs::write(d.join(format!("f{i:05}.txt")), data)?;
    }
    Ok(())
}

/// The top directory of the rename workload's tree, as generated (the workload moves it).
pub const RENAME_TOP: &str = "tree";

/// The rename workload's data: `files` small files (as the small-files set, its own
/// seed) in `dirs` directories, all below one top directory [`RENAME_TOP`], so that one
/// `mv` of that directory renames every file. Made once, in `root/rename-FILES`, with
/// its own stamp (the other sets' stamps, the whole `Sizes`, stay as they were).
pub fn generate_rename(root: &Path, files: usize, dirs: usize) -> Result<PathBuf> {
    let dir = root.join(format!("rename-{files}"));
    once(
        &dir,
        &format!("rename {files} files of 1-8 KiB in {dirs} directories below {RENAME_TOP}"),
        |dir| small_files(&dir.join(RENAME_TOP), files, dirs, 6),
    )?;
    Ok(dir)
}

/// A tree for the `nodes` workload: `files` files (half random, half text-like) of
/// `mean / 2` to `3 * mean / 2` bytes, 100 to a directory `d0000`, `d0001`, …, from
/// `seed`. Made once, in `root/nodes-FILES-MEAN-SEED`.
pub fn generate_nodes(root: &Path, files: usize, mean: usize, seed: u64) -> Result<PathBuf> {
    const PER_DIR: usize = 100;
    let dir = root.join(format!("nodes-{files}-{mean}-{seed}"));
    once(
        &dir,
        &format!("nodes {files} files of about {mean} bytes, {PER_DIR} per directory"),
        |dir| {
            let mut rng = StdRng::seed_from_u64(seed);
            for i in 0..files {
                let d = dir.join(format!("d{:04}", i / PER_DIR));
                if i % PER_DIR == 0 {
                    fs::create_dir_all(&d)?;
                }
                let len = rng.random_range(mean / 2..=mean * 3 / 2);
                let data = if i % 2 == 0 {
                    random(&mut rng, len)
                } else {
                    text_like(&mut rng, len)
                };
                fs::write(d.join(format!("f{seed}-{i:06}.dat")), data)?;
            }
            Ok(())
        },
    )?;
    Ok(dir)
}

/// Where the delta workload changes its file: offset and length (the middle).
pub fn delta_change_range(s: Sizes) -> (u64, usize) {
    ((s.delta_bytes / 2) as u64, s.delta_change)
}

/// Every regular file below `root` (relative path → size), skipping names that start
/// with a dot (sync tools' temp files and markers).
pub fn listing(root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(t) = e.file_type() else { continue };
            let p = e.path();
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file()
                && let Ok(md) = e.metadata()
            {
                let rel = p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .to_string();
                out.insert(rel, md.len());
            }
        }
    }
    out
}

/// A hash of every file's path and content below `root` (dot names skipped).
pub fn tree_hash(root: &Path) -> Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    for rel in listing(root).keys() {
        h.update(rel.as_bytes());
        h.update_reader(fs::File::open(root.join(rel))?)?;
    }
    Ok(h.finalize())
}

/// Hard-links every file of `from` into `to` (same file system): instant, and the
/// source tree is then read by the system under test, as rsync reads its source.
pub fn link_tree(from: &Path, to: &Path) -> Result<()> {
    for rel in listing(from).keys() {
        let dst = to.join(rel);
        if let Some(p) = dst.parent() {
            fs::create_dir_all(p)?;
        }
        fs::hard_link(from.join(rel), dst)?;
    }
    Ok(())
}

/// Total bytes of a listing.
pub fn total(l: &BTreeMap<String, u64>) -> u64 {
    l.values().sum()
}
