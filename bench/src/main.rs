//! `mqsync-bench`: mqsync side by side with rsync and lsyncd on the same data and the
//! same machine in one run (issue 6). Run on demand, never part of the tests:
//!
//! ```text
//! cargo run --release -p mqsync-bench -- [--quick] [--only latency,bulk,small,delta]
//! ```
//!
//! It builds the release `mqsync`, installs missing peers from Debian (root), generates
//! its data from fixed seeds, runs every workload for every system into fresh
//! directories, checks the received bytes, and writes `bench/results/results.md` and
//! `bench/results/chart.png`.

mod data;
mod mqsync;
mod peers;
mod proc;
mod report;
mod workloads;

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use workloads::{Ctx, Row};

struct Args {
    quick: bool,
    only: Vec<String>,
    work: PathBuf,
    out: PathBuf,
    trials: usize,
    slow_trials: usize,
    mqsync: Option<PathBuf>,
}

const USAGE: &str = "usage: mqsync-bench [--quick] [--only latency,bulk,small,delta] \
[--work DIR] [--out DIR] [--trials N] [--slow-trials N] [--mqsync PATH]

  --quick        smaller data (8 x 4 MiB, 2,000 small files, 64 MiB delta) to try the harness
  --only LIST    workloads to run (default: all)
  --work DIR     data and run directories (default: target/mqsync-bench)
  --out DIR      where results.md and chart.png go (default: bench/results)
  --trials N     latency trials per system (default 50)
  --slow-trials N  trials for lsyncd at its default 15 s delay (default 5)
  --mqsync PATH  the mqsync binary (default: build target/release/mqsync)";

fn parse() -> Result<Args> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut a = Args {
        quick: false,
        only: vec![],
        work: root.join("target/mqsync-bench"),
        out: root.join("bench/results"),
        trials: 50,
        slow_trials: 5,
        mqsync: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--only" => a.only = value()?.split(',').map(str::to_string).collect(),
            "--work" => a.work = value()?.into(),
            "--out" => a.out = value()?.into(),
            "--trials" => a.trials = value()?.parse().context("--trials")?,
            "--slow-trials" => a.slow_trials = value()?.parse().context("--slow-trials")?,
            "--mqsync" => a.mqsync = Some(value()?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    for w in &a.only {
        if !["latency", "bulk", "small", "delta"].contains(&w.as_str()) {
            bail!("unknown workload {w}\n{USAGE}");
        }
    }
    Ok(a)
}

fn build_mqsync() -> Result<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    eprintln!("building the release mqsync");
    let ok = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "mqsync",
            "--bin",
            "mqsync",
        ])
        .current_dir(&root)
        .status()?
        .success();
    if !ok {
        bail!("cargo build --release failed");
    }
    Ok(root.join("target/release/mqsync"))
}

fn main() -> Result<()> {
    let args = parse()?;
    let wants = |w: &str| args.only.is_empty() || args.only.iter().any(|o| o == w);
    peers::ensure_installed(&[("rsync", "rsync"), ("lsyncd", "lsyncd"), ("time", "time")])?;
    let mqsync = match &args.mqsync {
        Some(p) => p.clone(),
        None => build_mqsync()?,
    };
    let sizes = if args.quick {
        data::Sizes::quick()
    } else {
        data::Sizes::full()
    };
    eprintln!("generating data in {} ({sizes:?})", args.work.display());
    let set = data::generate(&args.work.join("data"), sizes)?;
    let ctx = Ctx::new(
        mqsync,
        args.work.clone(),
        (set, sizes),
        args.trials,
        args.slow_trials,
    );
    let mut rows: Vec<Row> = vec![];
    let mut failures: Vec<String> = vec![];
    let mut record = |what: &str, r: Result<Row>| match r {
        Ok(row) => {
            eprintln!("{what}: {:.3} {} ({})", row.value, row.unit, row.detail);
            rows.push(row);
        }
        Err(e) => {
            eprintln!("{what}: FAILED: {e:#}");
            failures.push(format!("{what}: {e:#}"));
        }
    };
    if wants("latency") {
        record("latency mqsync", workloads::latency_mqsync(&ctx));
        record("latency lsyncd delay 0", workloads::latency_lsyncd(&ctx, 0));
        record("latency lsyncd delay 1", workloads::latency_lsyncd(&ctx, 1));
        record(
            "latency lsyncd delay 15",
            workloads::latency_lsyncd(&ctx, 15),
        );
    }
    if wants("bulk") {
        let src = ctx.data.bulk.clone();
        record(
            "bulk mqsync x2",
            workloads::tree_mqsync(&ctx, "bulk", &src, 2),
        );
        record(
            "bulk rsync -a",
            workloads::tree_rsync(&ctx, "bulk", &src, "-a"),
        );
        record(
            "bulk rsync -az",
            workloads::tree_rsync(&ctx, "bulk", &src, "-az"),
        );
    }
    if wants("small") {
        let src = ctx.data.small.clone();
        record(
            "small mqsync x2",
            workloads::tree_mqsync(&ctx, "small files", &src, 2),
        );
        record(
            "small rsync -a",
            workloads::tree_rsync(&ctx, "small files", &src, "-a"),
        );
    }
    if wants("delta") {
        record("delta mqsync", workloads::delta_mqsync(&ctx));
        record("delta rsync", workloads::delta_rsync(&ctx));
    }
    // MQSYNC_BENCH_KEEP=1 keeps every run's directory (logs, trees) for a post-mortem.
    if std::env::var_os("MQSYNC_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(args.work.join("runs"));
    }

    let header = format!(
        "# mqsync-bench results\n\nData: {}. Machine: {} cores. Command: `cargo run --release -p mqsync-bench --{}{}`.",
        if args.quick {
            "quick sizes"
        } else {
            "full sizes"
        },
        std::thread::available_parallelism().map_or(0, usize::from),
        if args.quick { " --quick" } else { "" },
        if args.only.is_empty() {
            String::new()
        } else {
            format!(" --only {}", args.only.join(","))
        },
    );
    let mut md = report::markdown(&rows, &header);
    if !failures.is_empty() {
        md.push_str("\nFailed runs:\n\n");
        for f in &failures {
            md.push_str(&format!("- {f}\n"));
        }
    }
    println!("{md}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("results.md"), &md)?;
    if !rows.is_empty() {
        report::chart(&rows, &args.out.join("chart.png"))?;
    }
    eprintln!("wrote {}", args.out.display());
    if !failures.is_empty() {
        bail!("{} run(s) failed", failures.len());
    }
    Ok(())
}
