//! The `nodes` workload's tables: one line per scenario (amplification, requests,
//! time, broker egress, issue 25's goals), then the bytes each receiver got by message
//! kind.

use super::{Measured, fmt_count, median};
use std::collections::BTreeSet;
use std::fmt::Write as _;

fn mb(b: f64) -> String {
    format!("{:.2} MB", b / 1e6)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// Sorted values of one figure over the receivers.
fn sorted(m: &Measured, f: impl Fn(&super::Receiver) -> f64) -> Vec<f64> {
    let mut v: Vec<f64> = m.receivers.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn max(v: &[f64]) -> f64 {
    v.last().copied().unwrap_or(0.0)
}

/// Both tables, for the results file.
pub fn markdown(ms: &[Measured]) -> String {
    let mut s = String::new();
    if ms.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "\nRepair traffic with many nodes (issue 25), the `nodes` workload: bytes each \
         receiver got (its `mqsync_bytes_received_total`) per byte of the folder, or of \
         what it lacked; requests are the receivers' request messages, at most one per \
         64 chunks asked as the goal (every file here is one chunk); \"all nodes sent\" \
         counts every node's messages and bytes published; broker out is its TCP bytes \
         to the nodes (TLS included):\n"
    );
    let _ = writeln!(
        s,
        "| scenario | folder | each receiver lacked | receivers | converged (still) | got per byte lacked: max / median | got per receiver: max / median | messages got (median) | requests sent per receiver: max (goal) | all nodes sent | broker out | goal: got per byte lacked |"
    );
    let _ = writeln!(
        s,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for m in ms {
        let ratios = m.ratios();
        let bytes = sorted(m, |r| r.bytes);
        let msgs = sorted(m, |r| r.messages);
        let reqs = sorted(m, |r| r.requests);
        let req_goal = m.lacked.0.div_ceil(64) as f64;
        let sent_msgs: f64 = m.sent.values().sum();
        let goal = m.goal.map_or("–".into(), |g| {
            format!("≤ {g}×: {}", verdict(max(&ratios) <= g))
        });
        let _ = writeln!(
            s,
            "| {} | {} files, {} | {} files, {} | {} | {:.1} s ({:.1} s) | {:.2}× / {:.2}× | {} / {} | {} | {:.0} (≤ {:.0}: {}) | {} messages, {} | {} | {goal} |",
            m.scenario,
            fmt_count(m.folder.0),
            mb(m.folder.1 as f64),
            fmt_count(m.lacked.0),
            mb(m.lacked.1 as f64),
            m.receivers.len(),
            m.converged.as_secs_f64(),
            m.settled.as_secs_f64(),
            max(&ratios),
            median(&ratios),
            mb(max(&bytes)),
            mb(median(&bytes)),
            fmt_count(median(&msgs) as usize),
            max(&reqs),
            req_goal,
            verdict(max(&reqs) <= req_goal),
            fmt_count(sent_msgs as usize),
            mb(m.sent_bytes),
            m.wire.map_or("–".into(), |(_, out)| mb(out as f64)),
        );
    }
    let _ = writeln!(
        s,
        "\nBy message kind, per receiver: what the other nodes published while the \
         scenario ran (from a passive subscriber on the data topics), which the broker \
         had to deliver to it; a receiver got less where the share at the end is over \
         100 %. \"All nodes sent\" from `mqsync_messages_sent_total`:\n"
    );
    let _ = writeln!(
        s,
        "| scenario | kind | messages got (median) | got (median / max) | per byte lacked (median) | all nodes sent (messages) |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
    for m in ms {
        let kinds: BTreeSet<&String> = m
            .receivers
            .iter()
            .flat_map(|r| r.kinds.keys())
            .chain(m.sent.keys())
            .collect();
        for k in kinds {
            let of = |r: &super::Receiver| r.kinds.get(k).copied().unwrap_or_default();
            let msgs = sorted(m, |r| of(r).0 as f64);
            let bytes = sorted(m, |r| of(r).1 as f64);
            let sent = m.sent.get(k).copied().unwrap_or(0.0);
            if max(&bytes) == 0.0 && sent == 0.0 {
                continue;
            }
            let _ = writeln!(
                s,
                "| {} | {k} | {} | {} / {} | {:.3}× | {} |",
                m.scenario,
                fmt_count(median(&msgs) as usize),
                mb(median(&bytes)),
                mb(max(&bytes)),
                median(&bytes) / m.lacked.1.max(1) as f64,
                fmt_count(sent as usize),
            );
        }
    }
    let cover: Vec<String> = ms
        .iter()
        .map(|m| format!("{} {:.0} %", m.scenario, m.coverage * 100.0))
        .collect();
    let _ = writeln!(
        s,
        "\nThe subscriber saw these shares of the bytes the receivers counted: about \
         100 % when every receiver got every message; more when receivers missed some, \
         while connecting or because the broker skipped messages for a subscriber that \
         fell behind (rumqttd, 32 MiB; its log says \"Read cursor start jumped\"): {}.",
        cover.join("; ")
    );
    s
}
