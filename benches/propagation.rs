//! Propagation benchmark (run on demand, never part of the tests):
//! `cargo bench --bench propagation [-- latency|bulk|small|all] [--trials N]`.
//! Three release-built `mqsync run` processes and an `mqsync broker` process on
//! 127.0.0.1 with mutual TLS, as in tests/sync.rs. Prints a Markdown table of the time
//! from a write on node 1 until the data is visible on nodes 2 and 3.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use rand::{RngCore, SeedableRng};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

fn wait_fast(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    None
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn same(path: &Path, data: &[u8]) -> bool {
    fs::read(path).is_ok_and(|d| d == data)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let which = args
        .first()
        .map(String::as_str)
        .unwrap_or("all")
        .to_string();
    let trials: usize = args
        .iter()
        .position(|a| a == "--trials")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let mut c = Cluster::new(3);
    for i in 0..3 {
        c.start_node(i);
    }
    let (a, b, n3) = (c.folder(0), c.folder(1), c.folder(2));
    assert!(wait_until(Duration::from_secs(30), || (0..3)
        .all(|i| c.folder(i).join(".mqsync").exists())));
    std::thread::sleep(Duration::from_secs(1));
    let mut rows: Vec<(String, String, String)> = vec![];

    if which == "latency" || which == "all" {
        let mut ms = vec![];
        for t in 0..trials {
            let data = format!("trial {t} {}\n", "x".repeat(100));
            let name = format!("lat-{t}.txt");
            let start = Instant::now();
            fs::write(a.join(&name), &data).unwrap();
            let ok = wait_fast(Duration::from_secs(30), || {
                same(&b.join(&name), data.as_bytes()) && same(&n3.join(&name), data.as_bytes())
            });
            let Some(_) = ok else {
                panic!("trial {t} did not propagate");
            };
            ms.push(start.elapsed().as_secs_f64() * 1000.0);
            std::thread::sleep(Duration::from_millis(50));
        }
        ms.sort_by(|x, y| x.total_cmp(y));
        rows.push((
            format!("small file to 2 receivers ({trials} trials)"),
            format!(
                "p50 {:.1} ms, p99 {:.1} ms",
                percentile(&ms, 0.5),
                percentile(&ms, 0.99)
            ),
            format!("min {:.1} ms, max {:.1} ms", ms[0], ms[ms.len() - 1]),
        ));
    }

    if which == "bulk" || which == "all" {
        let mut big = vec![0u8; 100 << 20];
        rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut big);
        // Written beside the folder, then moved in: the clock starts when the file is
        // complete and visible to mqsync.
        let staging = c.path("staging.bin");
        fs::write(&staging, &big).unwrap();
        let start = Instant::now();
        fs::rename(&staging, a.join("big.bin")).unwrap();
        let len = big.len() as u64;
        let t = wait_fast(Duration::from_secs(600), || {
            [&b, &n3]
                .iter()
                .all(|d| fs::metadata(d.join("big.bin")).is_ok_and(|m| m.len() == len))
        })
        .expect("100 MiB file did not propagate");
        assert!(same(&b.join("big.bin"), &big) && same(&n3.join("big.bin"), &big));
        rows.push((
            "100 MiB random file to 2 receivers".into(),
            format!("{:.2} s", t.as_secs_f64()),
            format!(
                "{:.0} MB/s per receiver",
                len as f64 / t.as_secs_f64() / 1e6
            ),
        ));
        let _ = start;
    }

    if which == "small" || which == "all" {
        let start = Instant::now();
        for i in 0..2000 {
            let d = a.join(format!("small/d{:02}", i % 20));
            fs::create_dir_all(&d).unwrap();
            fs::write(
                d.join(format!("f{i:04}.txt")),
                format!("small file {i}\n").repeat(1 + i % 50),
            )
            .unwrap();
        }
        let written = start.elapsed();
        let count = |root: &Path| {
            (0..20)
                .map(|k| {
                    fs::read_dir(root.join(format!("small/d{k:02}")))
                        .map(|r| r.count())
                        .unwrap_or(0)
                })
                .sum::<usize>()
        };
        let t = wait_fast(Duration::from_secs(600), || {
            count(&b) == 2000 && count(&n3) == 2000
        })
        .expect("2,000 files did not propagate");
        rows.push((
            "2,000 small files (1-8 KiB, 20 dirs) to 2 receivers".into(),
            format!("{:.2} s", (written + t).as_secs_f64()),
            format!("writing took {:.2} s of it", written.as_secs_f64()),
        ));
    }

    println!("\n| workload | result | notes |\n| --- | --- | --- |");
    for (w, r, n) in rows {
        println!("| {w} | {r} | {n} |");
    }
}
