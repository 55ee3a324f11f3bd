//! `mqsync-bench`: mqsync side by side with rsync (over SSH and through its daemon),
//! lsyncd and Syncthing, and against the MQTT transport floor, on the same data and the
//! same machine in one run (issues 6 and 24). Run on demand, never part of the tests:
//!
//! ```text
//! cargo run --release -p mqsync-bench -- [--quick] [--only latency,patterns,bulk,floor,small,delta,fanout,scale,rename,nodes]
//! ```
//!
//! It builds the release `mqsync`, installs missing peers from Debian (root), generates
//! its data from fixed seeds, runs every workload for every system into fresh
//! directories, checks the received bytes, and writes `bench/results/results.md` (with
//! the table of issue 24's targets at its end) and
//! `bench/results/chart.png` (a partial or quick run writes `results-TAG.md` and
//! `chart-TAG.png` instead, so it never overwrites the full run's).

mod data;
mod floor;
mod mqsync;
mod observer;
mod peers;
mod proc;
mod report;
mod ssh;
mod targets;
mod workloads;

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use workloads::{Ctx, Row, rename};

struct Args {
    quick: bool,
    only: Vec<String>,
    work: PathBuf,
    out: PathBuf,
    trials: usize,
    slow_trials: usize,
    mqsync: Option<PathBuf>,
    systems: Vec<String>,
    scale_files: Option<usize>,
    nodes: usize,
    nodes_files: Option<usize>,
}

const WORKLOADS: [&str; 10] = [
    "latency", "patterns", "bulk", "floor", "small", "delta", "fanout", "scale", "rename", "nodes",
];
const SYSTEMS: [&str; 5] = ["mqsync", "ssh", "rsync", "lsyncd", "syncthing"];

const USAGE: &str = "usage: mqsync-bench [--quick]
       [--only latency,patterns,bulk,floor,small,delta,fanout,scale,rename,nodes]
       [--systems mqsync,ssh,rsync,lsyncd,syncthing] [--work DIR] [--out DIR] [--trials N]
       [--slow-trials N] [--scale-files N] [--nodes N] [--nodes-files N] [--mqsync PATH]

  --quick        smaller data (8 x 4 MiB, 2,000 small files, 64 MiB delta, 50,000 files
                 for scale, 2,000 files to rename) to try the harness
  --only LIST    workloads to run (default: all)
  --systems LIST systems to run (default: all; ssh is rsync over SSH; fanout, floor,
                 scale and nodes are mqsync only, rename has no lsyncd or ssh row)
  --work DIR     data and run directories (default: target/mqsync-bench)
  --out DIR      where the results go (default: bench/results): results.md and chart.png
                 for a full run of everything, results-TAG.md and chart-TAG.png for a
                 quick or partial one (TAG: quick, the workloads, the systems)
  --trials N     latency trials per system (default 50)
  --slow-trials N  trials for the slow watchers: lsyncd at its default 15 s delay and
                 Syncthing at its default 10 s (default 5)
  --scale-files N  files for the scale workload (default 1,000,000; --quick 50,000)
  --nodes N      mqsync node processes at once in the nodes workload (default 12, at
                 least 3)
  --nodes-files N  files of the nodes workload's large folder, about 1,350 bytes each
                 (default 20,000, 27 MB; --quick 5,000)
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
        systems: vec![],
        scale_files: None,
        nodes: 12,
        nodes_files: None,
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
            // Absolute: the nodes' configs name paths below it and run in other directories.
            "--work" => a.work = std::path::absolute(value()?).context("--work")?,
            "--out" => a.out = value()?.into(),
            "--trials" => a.trials = value()?.parse().context("--trials")?,
            "--slow-trials" => a.slow_trials = value()?.parse().context("--slow-trials")?,
            "--mqsync" => a.mqsync = Some(value()?.into()),
            "--systems" => a.systems = value()?.split(',').map(str::to_lowercase).collect(),
            "--scale-files" => a.scale_files = Some(value()?.parse().context("--scale-files")?),
            "--nodes" => a.nodes = value()?.parse().context("--nodes")?,
            "--nodes-files" => a.nodes_files = Some(value()?.parse().context("--nodes-files")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    for w in &a.only {
        if !WORKLOADS.contains(&w.as_str()) {
            bail!("unknown workload {w}\n{USAGE}");
        }
    }
    for w in &a.systems {
        if !SYSTEMS.contains(&w.as_str()) {
            bail!("unknown system {w}\n{USAGE}");
        }
    }
    Ok(a)
}

impl Args {
    fn wants(&self, workload: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == workload)
    }

    fn runs(&self, system: &str) -> bool {
        self.systems.is_empty() || self.systems.iter().any(|s| s == system)
    }

    /// `results`/`chart` for a full run of everything; otherwise a suffix naming what
    /// ran, so a partial run never overwrites the committed full results.
    fn tag(&self) -> Option<String> {
        let mut parts = vec![];
        if self.quick {
            parts.push("quick".to_string());
        }
        parts.extend(self.only.iter().cloned());
        parts.extend(self.systems.iter().cloned());
        (!parts.is_empty()).then(|| parts.join("-"))
    }
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

/// `mqsync --version` of the binary under test, for the results' header.
fn version(bin: &std::path::Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "version unknown".into())
}

fn main() -> Result<()> {
    let args = parse()?;
    let wants = |w: &str| args.wants(w);
    let runs = |s: &str| args.runs(s);
    let mut tools = vec![("time", "time")];
    if runs("rsync")
        && ["bulk", "small", "delta", "rename"]
            .iter()
            .any(|w| wants(w))
    {
        tools.push(("rsync", "rsync"));
    }
    let ssh_tools = [
        ("rsync", "rsync"),
        ("sshd", "openssh-server"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
    ];
    if runs("ssh") && ["bulk", "small", "delta"].iter().any(|w| wants(w)) {
        tools.extend(ssh_tools);
    }
    if runs("lsyncd") && (wants("latency") || wants("patterns")) {
        tools.extend(ssh_tools);
        tools.push(("lsyncd", "lsyncd"));
    }
    if runs("mqsync") && wants("floor") {
        tools.push(("mosquitto", "mosquitto"));
    }
    if runs("syncthing")
        && ["latency", "bulk", "small", "rename"]
            .iter()
            .any(|w| wants(w))
    {
        tools.push(("syncthing", "syncthing"));
    }
    peers::ensure_installed(&tools)?;
    let mqsync = match &args.mqsync {
        Some(p) => p.clone(),
        None if runs("mqsync") => build_mqsync()?,
        None => PathBuf::new(),
    };
    let sizes = if args.quick {
        data::Sizes::quick()
    } else {
        data::Sizes::full()
    };
    eprintln!("generating data in {} ({sizes:?})", args.work.display());
    let data_dir = args.work.join("data");
    let set = data::generate(&data_dir, sizes, |part| match part {
        // The floor's messages and the patterns' load are the bulk files.
        "bulk" => {
            wants("bulk")
                || wants("patterns")
                || (runs("mqsync") && (wants("fanout") || wants("floor")))
        }
        part => wants(part),
    })?;
    let scale_files = args
        .scale_files
        .unwrap_or(if args.quick { 50_000 } else { 1_000_000 });
    let scale = if wants("scale") && runs("mqsync") {
        eprintln!("generating {scale_files} files for the scale workload (once)");
        Some(data::generate_scale(&data_dir, scale_files)?)
    } else {
        None
    };
    // The rename workload's tree: 10,000 files of 1-8 KiB in 100 directories, one
    // top directory above them all (issue: "10,000 files renamed").
    let (rename_files, rename_dirs) = if args.quick {
        (2_000, 20)
    } else {
        (10_000, 100)
    };
    let rename = if wants("rename") {
        Some(data::generate_rename(&data_dir, rename_files, rename_dirs)?)
    } else {
        None
    };
    let ctx = Ctx::new(
        mqsync.clone(),
        args.work.clone(),
        (set, sizes),
        args.trials,
        args.slow_trials,
    );
    let mut rows: Vec<Row> = vec![];
    let mut nodes_runs: Vec<workloads::nodes::Measured> = vec![];
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
        if runs("mqsync") {
            record("latency mqsync", workloads::latency_mqsync(&ctx));
        }
        if runs("lsyncd") {
            record(
                "latency lsyncd rsyncssh delay 0",
                workloads::patterns::latency_lsyncd_ssh(&ctx),
            );
            record("latency lsyncd delay 0", workloads::latency_lsyncd(&ctx, 0));
            record("latency lsyncd delay 1", workloads::latency_lsyncd(&ctx, 1));
            record(
                "latency lsyncd delay 15",
                workloads::latency_lsyncd(&ctx, 15),
            );
        }
        if runs("syncthing") {
            record(
                "latency syncthing",
                workloads::syncthing::latency_syncthing(&ctx),
            );
        }
    }
    if wants("patterns") {
        type Patterns = fn(&Ctx) -> Result<Vec<Row>>;
        let systems: [(&str, Patterns); 2] = [
            ("mqsync", workloads::patterns::patterns_mqsync),
            ("lsyncd", workloads::patterns::patterns_lsyncd),
        ];
        for (system, run) in systems {
            if !runs(system) {
                continue;
            }
            match run(&ctx) {
                Ok(rs) => {
                    for r in rs {
                        record(&format!("patterns {}", r.system), Ok(r));
                    }
                }
                Err(e) => record(&format!("patterns {system}"), Err(e)),
            }
        }
    }
    if wants("bulk") {
        let src = ctx.data.bulk.clone();
        if runs("mqsync") {
            record(
                "bulk mqsync x2",
                workloads::tree_mqsync(&ctx, "bulk", &src, 2),
            );
        }
        if runs("rsync") {
            record(
                "bulk rsync -a",
                workloads::tree_rsync(&ctx, "bulk", &src, &["-a"]),
            );
            record(
                "bulk rsync -a --fsync",
                workloads::tree_rsync(&ctx, "bulk", &src, &["-a", "--fsync"]),
            );
            record(
                "bulk rsync -az",
                workloads::tree_rsync(&ctx, "bulk", &src, &["-az"]),
            );
        }
        if runs("ssh") {
            record(
                "bulk rsync -a over SSH x2",
                workloads::ssh::tree_ssh(&ctx, "bulk", &src, false),
            );
            record(
                "bulk rsync -a --fsync over SSH x2",
                workloads::ssh::tree_ssh(&ctx, "bulk", &src, true),
            );
        }
        if runs("syncthing") {
            record(
                "bulk syncthing x2",
                workloads::syncthing::tree_syncthing(&ctx, "bulk", &src),
            );
        }
    }
    if wants("floor") && runs("mqsync") {
        use workloads::ssh::{FloorBroker, floor_run};
        match floor::messages(&ctx.data.bulk) {
            Ok(msgs) => {
                for b in [FloorBroker::Mqsync, FloorBroker::Mosquitto] {
                    record(&format!("floor {b:?}"), floor_run(&ctx, b, &msgs));
                }
            }
            Err(e) => record("floor", Err(e)),
        }
    }
    if wants("small") {
        let src = ctx.data.small.clone();
        if runs("mqsync") {
            record(
                "small mqsync x2",
                workloads::tree_mqsync(&ctx, "small files", &src, 2),
            );
        }
        if runs("rsync") {
            record(
                "small rsync -a",
                workloads::tree_rsync(&ctx, "small files", &src, &["-a"]),
            );
            record(
                "small rsync -a --fsync",
                workloads::tree_rsync(&ctx, "small files", &src, &["-a", "--fsync"]),
            );
        }
        if runs("ssh") {
            record(
                "small rsync -a over SSH x2",
                workloads::ssh::tree_ssh(&ctx, "small files", &src, false),
            );
            record(
                "small rsync -a --fsync over SSH x2",
                workloads::ssh::tree_ssh(&ctx, "small files", &src, true),
            );
        }
        if runs("syncthing") {
            record(
                "small syncthing x2",
                workloads::syncthing::tree_syncthing(&ctx, "small files", &src),
            );
        }
    }
    if wants("delta") {
        if runs("mqsync") {
            record("delta mqsync", workloads::delta::delta_mqsync(&ctx));
        }
        if runs("rsync") {
            record("delta rsync", workloads::delta::delta_rsync(&ctx));
        }
        if runs("ssh") {
            record("delta rsync over SSH", workloads::delta::delta_ssh(&ctx));
        }
    }
    if wants("fanout") && runs("mqsync") {
        for n in [1, 2, 4] {
            record(
                &format!("fan-out mqsync x{n}"),
                workloads::fanout_mqsync(&ctx, n),
            );
        }
    }
    if let Some(src) = &scale {
        match workloads::scale_mqsync(&ctx, src) {
            Ok(rs) => {
                for r in rs {
                    record(&format!("scale {}", r.system), Ok(r));
                }
            }
            Err(e) => record("scale mqsync", Err(e)),
        }
    }
    if let Some(src) = &rename {
        type Rename = fn(&Ctx, &std::path::Path) -> Result<rename::RenameRun>;
        let systems: [(&str, Rename); 3] = [
            ("mqsync", rename::rename_mqsync),
            ("rsync", rename::rename_rsync),
            ("syncthing", rename::rename_syncthing),
        ];
        for (system, run) in systems {
            if !runs(system) {
                continue;
            }
            match run(&ctx, src) {
                Ok(r) => {
                    for row in r.rows {
                        let what = format!("rename {}", row.system);
                        record(&what, Ok(row));
                    }
                    // A rename that timed out keeps its rows and fails the run.
                    if let Some(why) = r.timed_out {
                        record(&format!("rename {system}"), Err(anyhow::anyhow!(why)));
                    }
                }
                Err(e) => record(&format!("rename {system}"), Err(e)),
            }
        }
    }
    if wants("nodes") && runs("mqsync") {
        let opts = workloads::nodes::NodesOpts {
            nodes: args.nodes,
            files: args
                .nodes_files
                .unwrap_or(if args.quick { 5_000 } else { 20_000 }),
        };
        for (what, r) in workloads::nodes::nodes_mqsync(&ctx, opts) {
            match r {
                Ok(m) => {
                    record(&what, Ok(m.row()));
                    nodes_runs.push(m);
                }
                Err(e) => record(&what, Err(e)),
            }
        }
    }
    // MQSYNC_BENCH_KEEP=1 keeps every run's directory (logs, trees) for a post-mortem.
    if std::env::var_os("MQSYNC_BENCH_KEEP").is_none() {
        let _ = workloads::remove_runs(&args.work);
    }

    let mut options = String::new();
    if wants("nodes") {
        options.push_str(&format!(" --nodes {}", args.nodes));
        if let Some(n) = args.nodes_files {
            options.push_str(&format!(" --nodes-files {n}"));
        }
    }
    if let Some(p) = &args.mqsync {
        options.push_str(&format!(" --mqsync {}", p.display()));
    }
    let header = format!(
        "# mqsync-bench results\n\nData: {}. Machine: {} cores. Command: `cargo run --release -p mqsync-bench --{}{}{}{options}`. mqsync: {}.",
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
        if args.systems.is_empty() {
            String::new()
        } else {
            format!(" --systems {}", args.systems.join(","))
        },
        version(&mqsync),
    );
    let mut md = report::markdown(&rows, &header);
    // Issue 24's targets need its workloads; a run of the nodes workload alone has
    // issue 25's goals in its own table.
    if rows.iter().any(|r| r.workload != "nodes") {
        md.push_str(&targets::markdown(&rows));
    }
    md.push_str(&workloads::nodes::markdown(&nodes_runs));
    if !failures.is_empty() {
        md.push_str("\nFailed runs:\n\n");
        for f in &failures {
            md.push_str(&format!("- {f}\n"));
        }
    }
    println!("{md}");
    std::fs::create_dir_all(&args.out)?;
    let (md_name, png_name) = match args.tag() {
        None => ("results.md".to_string(), "chart.png".to_string()),
        Some(t) => (format!("results-{t}.md"), format!("chart-{t}.png")),
    };
    std::fs::write(args.out.join(&md_name), &md)?;
    if !rows.is_empty() {
        report::chart(&rows, &args.out.join(&png_name))?;
    }
    eprintln!("wrote {md_name} and {png_name} in {}", args.out.display());
    if !failures.is_empty() {
        bail!("{} run(s) failed", failures.len());
    }
    Ok(())
}
