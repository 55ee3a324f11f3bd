//! The targets of issue 24 checked against one run's rows: each one as the ratio of
//! mqsync's figure to its reference (a peer, the transport floor or a fixed limit),
//! marked met or missed, or "not run" when the run lacked a row it needs.

use crate::workloads::Row;
use crate::workloads::patterns::UNDER_LOAD;
use crate::workloads::ssh::{FloorBroker, SSH_FSYNC_SYSTEM, SSH_SYSTEM, floor_system};
use std::fmt::Write as _;

/// One line of the targets table.
struct Check {
    target: String,
    mqsync: String,
    reference: String,
    /// mqsync's figure over the reference; met when at most `goal`.
    ratio: Option<f64>,
    goal: Option<f64>,
    /// Met only below the goal, not at it (the latency limits say "under").
    strict: bool,
}

fn find<'a>(rows: &'a [Row], workload: &str, system: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.workload == workload && r.system == system)
}

fn secs(r: Option<&Row>) -> String {
    r.map_or("not run".into(), |r| format!("{:.2} s", r.value))
}

/// mqsync's time against a reference's, on the same workload.
fn time_check(target: &str, m: Option<&Row>, reference: Option<&Row>, goal: f64) -> Check {
    Check {
        target: target.into(),
        mqsync: secs(m),
        reference: reference.map_or("not run".into(), |r| {
            format!("{}: {:.2} s", r.system, r.value)
        }),
        ratio: m.zip(reference).map(|(m, r)| m.value / r.value),
        goal: Some(goal),
        strict: false,
    }
}

/// A latency against a fixed limit in milliseconds.
fn limit_check(target: String, ms: f64, limit: f64) -> Check {
    Check {
        target,
        mqsync: format!("{ms:.1} ms"),
        reference: format!("limit {limit:.0} ms"),
        ratio: Some(ms / limit),
        goal: Some(1.0),
        strict: true,
    }
}

fn checks(rows: &[Row]) -> Vec<Check> {
    let mut out = vec![];
    let floor = find(rows, "floor", floor_system(FloorBroker::Mqsync));
    let bulk = find(rows, "bulk", "mqsync");
    out.push(time_check(
        "bulk: at most 0.67× rsync over SSH",
        bulk,
        find(rows, "bulk", SSH_SYSTEM),
        0.67,
    ));
    out.push(time_check(
        "bulk: at most 1.5× the transport floor (mqsync's efficiency)",
        bulk,
        floor,
        1.5,
    ));
    let mosquitto = find(rows, "floor", floor_system(FloorBroker::Mosquitto));
    let mut c = time_check(
        "bulk against the floor through Mosquitto (no target)",
        bulk,
        mosquitto,
        f64::NAN,
    );
    c.goal = None;
    out.push(c);
    out.push(time_check(
        "small files: at most 0.5× rsync over SSH",
        find(rows, "small files", "mqsync"),
        find(rows, "small files", SSH_SYSTEM),
        0.5,
    ));
    // Durable on arrival, as mqsync is: for information, no target.
    for (workload, name) in [
        ("bulk", "bulk against rsync --fsync over SSH (no target)"),
        (
            "small files",
            "small files against rsync --fsync over SSH (no target)",
        ),
    ] {
        let mut c = time_check(
            name,
            find(rows, workload, "mqsync"),
            find(rows, workload, SSH_FSYNC_SYSTEM),
            f64::NAN,
        );
        c.goal = None;
        out.push(c);
    }
    let dm = find(rows, "delta", "mqsync");
    let ds = find(rows, "delta", SSH_SYSTEM);
    // rsync over SSH sends the delta once per receiver; mqsync's writer sends it once
    // to the broker. The stricter comparison: against one receiver's share.
    let per_receiver = |r: &Row| r.bytes.map(|b| b as f64 / r.receivers.max(1) as f64);
    out.push(Check {
        target: "delta: bytes at most rsync's (per receiver)".into(),
        mqsync: dm
            .and_then(|r| r.bytes)
            .map_or("not run".into(), |b| format!("{:.2} MB", b as f64 / 1e6)),
        reference: ds.and_then(per_receiver).map_or("not run".into(), |b| {
            format!("{SSH_SYSTEM}: {:.2} MB", b / 1e6)
        }),
        ratio: dm
            .and_then(|r| r.bytes)
            .zip(ds.and_then(per_receiver))
            .map(|(m, s)| m as f64 / s),
        goal: Some(1.0),
        strict: false,
    });
    out.push(time_check(
        "delta: time at most rsync over SSH",
        dm,
        ds,
        1.0,
    ));
    let mut latency: Vec<(String, &Row)> = rows
        .iter()
        .filter(|r| r.workload == "patterns")
        .filter_map(|r| Some((r.system.strip_prefix("mqsync: ")?.to_string(), r)))
        .collect();
    if latency.is_empty()
        && let Some(r) = find(rows, "latency", "mqsync")
    {
        latency.push(("in place".into(), r));
    }
    for (label, r) in latency {
        let (p50, p99) = if label.starts_with(UNDER_LOAD) {
            (25.0, 100.0)
        } else {
            (10.0, 50.0)
        };
        out.push(limit_check(
            format!("latency p50 under {p50:.0} ms: {label}"),
            r.value,
            p50,
        ));
        if let Some(ms) = r.p99 {
            out.push(limit_check(
                format!("latency p99 under {p99:.0} ms: {label}"),
                ms,
                p99,
            ));
        }
    }
    for (workload, syncthing) in [
        ("latency", "Syncthing, watcher delay 10 s"),
        ("bulk", "Syncthing"),
        ("small files", "Syncthing"),
    ] {
        let (m, s) = (
            find(rows, workload, "mqsync"),
            find(rows, workload, syncthing),
        );
        if m.is_some() && s.is_some() {
            let mut c = time_check(&format!("{workload}: ahead of Syncthing"), m, s, 1.0);
            c.strict = true;
            if workload == "latency" {
                c.mqsync = m.map_or(String::new(), |r| format!("{:.1} ms", r.value));
                c.reference = s.map_or(String::new(), |r| {
                    format!("{}: {:.1} ms", r.system, r.value)
                });
            }
            out.push(c);
        }
    }
    out
}

/// The targets table, in Markdown, for the end of the results.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nTargets of issue 24 (ratio: mqsync over the reference):\n"
    );
    let _ = writeln!(s, "| target | mqsync | reference | ratio | goal | result |");
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
    for c in checks(rows) {
        let result = match (c.ratio, c.goal) {
            (None, _) => "not run",
            (Some(_), None) => "–",
            (Some(r), Some(g)) if (c.strict && r < g) || (!c.strict && r <= g) => "met",
            (Some(_), Some(_)) => "**missed**",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {result} |",
            c.target,
            c.mqsync,
            c.reference,
            c.ratio.map_or("–".into(), |r| format!("{r:.2}")),
            c.goal.map_or("–".into(), |g| format!(
                "{} {g:.2}",
                if c.strict { "<" } else { "≤" }
            )),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(workload: &'static str, system: &str, value: f64) -> Row {
        Row {
            workload,
            system: system.into(),
            receivers: 2,
            value,
            ..Row::default()
        }
    }

    #[test]
    fn ratios_are_marked_against_their_goals() {
        let mut under = row("patterns", "mqsync: under load, in place while …", 30.0);
        under.p99 = Some(80.0);
        let rows = vec![
            row("bulk", "mqsync", 6.0),
            row("bulk", SSH_SYSTEM, 6.0),
            row("floor", floor_system(FloorBroker::Mqsync), 5.0),
            under,
        ];
        let md = markdown(&rows);
        let line = |start: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| {start}")))
                .unwrap_or_else(|| panic!("no line {start} in {md}"))
                .to_string()
        };
        assert!(line("bulk: at most 0.67").ends_with("| 1.00 | ≤ 0.67 | **missed** |"));
        assert!(line("bulk: at most 1.5").ends_with("| 1.20 | ≤ 1.50 | met |"));
        assert!(line("small files").ends_with("| not run |"));
        assert!(line("latency p50 under 25 ms").ends_with("| 1.20 | < 1.00 | **missed** |"));
        assert!(line("latency p99 under 100 ms").ends_with("| 0.80 | < 1.00 | met |"));
    }
}
