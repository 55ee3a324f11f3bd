//! `mqsync-campaign`: a fault campaign in the manner of Jepsen. Real `mqsync run`
//! processes and a real broker run a seeded workload while a seeded nemesis injects
//! faults; the campaign runs in rounds (20 to 40 s of workload and faults, then every
//! fault healed), and after each round the checker waits for the trees to converge
//! and checks the history (checker.rs). Figures at the end (report.rs); the exit code
//! is 0 on a pass, 1 on a failed check, 2 when the campaign could not run.
//!
//! The seed fixes every random draw (the workload's and the nemesis's from separate
//! streams); the daemons run in real time, so a replay repeats the schedule of faults
//! and the draws, not the interleaving. docs/RELIABILITY.md explains more.
//!
//! Environment: `MQSYNC_CAMPAIGN_LOG` sets the nodes' `MQSYNC_LOG` (for example
//! `info,mqsync=debug` for a post-mortem).

mod checker;
mod cluster;
mod history;
mod nemesis;
mod proxy;
mod report;
mod workload;

use cluster::{BrokerKind, Cluster};
use nemesis::Nemesis;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use workload::Workload;

const USAGE: &str = "usage: mqsync-campaign [--minutes M] [--seed S] [--broker embedded|mosquitto] [--nodes N] [--bin PATH] [--dir DIR] [--keep]";

/// How long one round may take to converge once healed.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(300);

struct Args {
    minutes: f64,
    seed: u64,
    broker: BrokerKind,
    nodes: usize,
    bin: PathBuf,
    dir: Option<PathBuf>,
    keep: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        minutes: 3.0,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000)
            .unwrap_or(1),
        broker: BrokerKind::Embedded,
        nodes: 5,
        bin: PathBuf::from(
            std::env::var("MQSYNC_BIN").unwrap_or_else(|_| "target/debug/mqsync".into()),
        ),
        dir: None,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--minutes" => a.minutes = val()?.parse().map_err(|e| format!("--minutes: {e}"))?,
            "--seed" => a.seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--nodes" => a.nodes = val()?.parse().map_err(|e| format!("--nodes: {e}"))?,
            "--bin" => a.bin = val()?.into(),
            "--dir" => a.dir = Some(val()?.into()),
            "--keep" => a.keep = true,
            "--broker" => {
                a.broker = match val()?.as_str() {
                    "embedded" => BrokerKind::Embedded,
                    "mosquitto" => BrokerKind::Mosquitto,
                    other => return Err(format!("--broker {other}: embedded or mosquitto")),
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if !(2..=8).contains(&a.nodes) {
        return Err("--nodes: 2 to 8".into());
    }
    if a.minutes.is_nan() || a.minutes <= 0.0 {
        return Err("--minutes: more than 0".into());
    }
    Ok(a)
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "mqsync-campaign-{}-{}",
            args.seed,
            std::process::id()
        ))
    });
    let code = match run(&args, &dir) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("campaign: {e}");
            2
        }
    };
    if code == 0 && !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("campaign directory kept (logs, trees): {}", dir.display());
    }
    std::process::exit(code);
}

fn run(args: &Args, dir: &std::path::Path) -> Result<bool, String> {
    let bin = std::fs::canonicalize(&args.bin)
        .map_err(|e| format!("{}: {e} (build it, or pass --bin)", args.bin.display()))?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let full_node = rng.random_range(0..args.nodes);
    eprintln!(
        "campaign: seed {} broker {} nodes {} minutes {} in {}",
        args.seed,
        args.broker.name(),
        args.nodes,
        args.minutes,
        dir.display()
    );
    let mut c = Cluster::new(
        dir,
        &bin,
        args.broker,
        args.nodes,
        args.seed,
        full_node,
        1024,
    )?;
    for i in 0..args.nodes {
        c.start_node(i)?;
    }
    checker::converge(&c, CONVERGE_TIMEOUT)?;
    c.mqsync_wait(120)
        .map_err(|e| format!("the cluster never came up: {e}"))?;
    // Once every node runs, so its state directory is part of the baseline.
    let outside = checker::outside_baseline(&c).map_err(|e| format!("sentinels: {e}"))?;
    let roots: Vec<PathBuf> = c.nodes.iter().map(|n| n.folder.clone()).collect();
    let mut w = Workload::new(StdRng::seed_from_u64(args.seed ^ 0x5eed_0001), args.nodes);
    let full = c.tmpfs.as_ref().map(|_| full_node);
    let mut nem = Nemesis::new(
        StdRng::seed_from_u64(args.seed ^ 0x5eed_0002),
        args.nodes,
        full,
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.minutes * 60.0);
    let (mut heal, mut fails, mut rounds) = (vec![], vec![], 0);
    let mut last = None;
    let mut checked_rounds = 0;
    while Instant::now() < deadline {
        rounds += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let len =
            Duration::from_secs(rng.random_range(20..=40)).min(left.max(Duration::from_secs(10)));
        let round_start = Instant::now();
        nem.plan(round_start, len);
        while round_start.elapsed() < len {
            nem.tick(&mut c, &mut w);
            c.reap(&format!("{:.1} s", w.elapsed_ms() as f64 / 1000.0));
            w.step(&roots, nem.any_active());
            std::thread::sleep(Duration::from_millis(rng.random_range(20..300)));
        }
        nem.heal_all(&mut c, &mut w);
        let healed_at = history::clock_now();
        let conv = match checker::converge(&c, CONVERGE_TIMEOUT) {
            Ok(conv) => conv,
            Err(e) => {
                fails.push(format!("round {rounds}: {e}"));
                c.dump_stacks();
                break;
            }
        };
        heal.push(conv.after);
        checked_rounds += 1;
        nem.log.push(format!(
            "round {rounds} healed at {healed_at}; converged {:.1} s later",
            conv.after.as_secs_f64()
        ));
        if let Err(e) = c.mqsync_wait(120) {
            fails.push(format!(
                "round {rounds}: the trees agree but `mqsync wait` does not: {e}"
            ));
        }
        c.reap("end of round");
        fails.extend(
            checker::check_round(&c, &w.history, &nem, &conv, &outside)
                .into_iter()
                .map(|f| format!("round {rounds}: {f}")),
        );
        eprintln!(
            "round {rounds}: converged {:.1} s after healing; {} files, {} conflict copies, {} writes so far",
            conv.after.as_secs_f64(),
            conv.files,
            conv.conflict_copies,
            w.history.completed()
        );
        last = Some(conv);
        if !fails.is_empty() {
            c.dump_stacks();
            break;
        }
    }
    for l in &nem.log {
        eprintln!("nemesis: {l}");
    }
    let overflows_seen = (0..args.nodes)
        .map(|i| c.node_logs(i).matches("inotify queue overflow").count())
        .sum();
    // Lost writes are judged against the last converged tree, which covers every
    // write only if the last round converged.
    let (lost, conflicts, files) = match &last {
        Some(l) if checked_rounds == rounds => (
            Some(checker::lost_count(&w.history, l)),
            l.conflict_copies,
            l.files,
        ),
        Some(l) => (None, l.conflict_copies, l.files),
        None => (None, 0, 0),
    };
    let figures = report::Figures {
        pass: fails.is_empty() && last.is_some(),
        seed: args.seed,
        broker: args.broker.name(),
        nodes: args.nodes,
        minutes: args.minutes,
        ran: started.elapsed(),
        rounds,
        faults: nem.counts.clone(),
        ops: w.ops.clone(),
        writes: w.history.completed(),
        failed_writes: w.history.failed_writes,
        orphaned_writes: w.history.orphaned(),
        bytes: w.history.bytes,
        lost,
        conflicts,
        files,
        heal,
        overflows_seen,
        bursts: nem.bursts.iter().sum(),
        disk_full_reported: (
            nem.disk_full.iter().filter(|d| d.reported).count(),
            nem.disk_full.len(),
        ),
    };
    for f in &fails {
        eprintln!("FAIL {f}");
    }
    let _ = std::fs::write(dir.join("history.tsv"), w.history.dump());
    let _ = std::fs::write(dir.join("nemesis.log"), nem.log.join("\n") + "\n");
    figures.print();
    Ok(figures.pass)
}
