//! The figures printed at the end: one summary line (grep-able, the same fields as
//! the table) and a table: faults by kind, writes, bytes, lost writes, conflicts,
//! heal-to-convergence times (p50, p99, max) and the seed to replay.

use crate::nemesis::Kind;
use std::collections::BTreeMap;
use std::time::Duration;

pub struct Figures {
    pub pass: bool,
    pub seed: u64,
    pub broker: &'static str,
    pub nodes: usize,
    pub minutes: f64,
    pub ran: Duration,
    pub rounds: usize,
    pub faults: BTreeMap<Kind, u64>,
    pub ops: BTreeMap<&'static str, u64>,
    pub writes: usize,
    pub failed_writes: u64,
    pub orphaned_writes: usize,
    pub bytes: u64,
    /// None when the last round did not converge (nothing to judge against).
    pub lost: Option<usize>,
    pub conflicts: usize,
    pub files: usize,
    pub heal: Vec<Duration>,
    pub overflows_seen: usize,
    pub bursts: u32,
    pub disk_full_reported: (usize, usize),
}

/// The `q` quantile (nearest rank) of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

impl Figures {
    pub fn print(&self) {
        let mut heal = self.heal.clone();
        heal.sort();
        let (p50, p99, max) = (
            quantile(&heal, 0.5),
            quantile(&heal, 0.99),
            heal.last().copied().unwrap_or_default(),
        );
        let faults: u64 = self.faults.values().sum();
        let lost = self
            .lost
            .map_or("unknown (no convergence)".to_string(), |n| n.to_string());
        println!(
            "campaign {}: seed {} broker {} nodes {} minutes {} rounds {} faults {} writes {} bytes {} lost {} conflicts {} heal p50 {:.1} s p99 {:.1} s max {:.1} s",
            if self.pass { "PASS" } else { "FAIL" },
            self.seed,
            self.broker,
            self.nodes,
            self.minutes,
            self.rounds,
            faults,
            self.writes,
            self.bytes,
            lost,
            self.conflicts,
            p50.as_secs_f64(),
            p99.as_secs_f64(),
            max.as_secs_f64()
        );
        println!();
        println!("| figure | value |");
        println!("| --- | --- |");
        let row = |k: &str, v: String| println!("| {k} | {v} |");
        row("result", (if self.pass { "pass" } else { "FAIL" }).into());
        row(
            "seed (replay)",
            format!(
                "{} (`scripts/campaign --seed {} --broker {} --nodes {} --minutes {}`)",
                self.seed, self.seed, self.broker, self.nodes, self.minutes
            ),
        );
        row(
            "ran",
            format!(
                "{:.1} min, {} rounds",
                self.ran.as_secs_f64() / 60.0,
                self.rounds
            ),
        );
        for (k, n) in &self.faults {
            row(&format!("faults: {}", k.name()), n.to_string());
        }
        row("faults in all", faults.to_string());
        row(
            "operations",
            self.ops
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        row("writes completed", self.writes.to_string());
        row(
            "writes that failed (full disk) / replaced under the writer",
            format!("{} / {}", self.failed_writes, self.orphaned_writes),
        );
        row(
            "bytes written",
            format!("{} ({})", self.bytes, mib(self.bytes)),
        );
        row("lost writes", lost.clone());
        row(
            "conflict copies in the final tree",
            self.conflicts.to_string(),
        );
        row("files in the final tree", self.files.to_string());
        row(
            "inotify overflows detected / bursts",
            format!("{} / {}", self.overflows_seen, self.bursts),
        );
        row(
            "full disks reported / injected",
            format!(
                "{} / {}",
                self.disk_full_reported.0, self.disk_full_reported.1
            ),
        );
        row(
            "heal to convergence",
            format!(
                "p50 {:.1} s, p99 {:.1} s, max {:.1} s ({} heals)",
                p50.as_secs_f64(),
                p99.as_secs_f64(),
                max.as_secs_f64(),
                heal.len()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_secs).collect();
        assert_eq!(quantile(&d, 0.5), Duration::from_secs(50));
        assert_eq!(quantile(&d, 0.99), Duration::from_secs(99));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
        assert_eq!(quantile(&d[..1], 0.99), Duration::from_secs(1));
    }
}
