//! The metrics endpoint of a running node as docs/MONITORING.md describes it: every
//! series of a folder from 0, `mqsync_apply_seconds` a histogram (1 ms to 60 s), the
//! certificate's expiry; and the Grafana dashboard and Prometheus alert rules in
//! deploy/monitoring/ use only metrics that endpoint exports (checked by `promtool`
//! too, when Debian's prometheus package has installed it).

mod common;

use common::{Cluster, free_port, metric_value, scrape_metrics, wait_until};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const T: Duration = Duration::from_secs(60);

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/monitoring")
        .join(file)
}

/// The series names a scrape shows (histograms as `_bucket`, `_sum`, `_count`), and
/// the metric family names of its `# TYPE` lines.
fn exported(scrape: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let series = scrape
        .lines()
        .filter(|l| l.starts_with("mqsync_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let families = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .map(str::to_string)
        .collect();
    (series, families)
}

/// Every `mqsync_…` name in `text` (PromQL, or descriptions that name a metric).
fn names_in(text: &str) -> BTreeSet<String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("mqsync_") {
        if text[..i].chars().next_back().is_some_and(word) {
            continue;
        }
        let name: String = text[i..].chars().take_while(|&c| word(c)).collect();
        out.insert(name);
    }
    out
}

/// Every PromQL expression of the dashboard's panels (the template query
/// `label_values(…)` is Grafana's, not PromQL; the name check reads the whole file).
fn dashboard_exprs(dash: &serde_json::Value) -> Vec<String> {
    let mut out = vec![];
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            out.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    out
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn metrics_are_exported_from_zero_and_the_dashboard_uses_only_them() {
    let mut c = Cluster::new(1);
    let port = free_port();
    c.write_config(0, |t| format!("metrics_listen = \"127.0.0.1:{port}\"\n{t}"));
    c.start_node(0);
    let scrape = || scrape_metrics(port);
    assert!(
        wait_until(T, || scrape()
            .contains("mqsync_connected{folder=\"shared\"} 1")),
        "{}\n{}",
        scrape(),
        c.nodes[0].as_ref().unwrap().log_text()
    );
    let m = scrape();

    // Nothing has happened yet: the counters are there, at 0.
    for series in [
        "mqsync_conflicts_total{folder=\"shared\"} 0",
        "mqsync_apply_errors_total{folder=\"shared\"} 0",
        "mqsync_applied_total{folder=\"shared\"} 0",
        "mqsync_index_errors_total{folder=\"shared\"} 0",
        "mqsync_messages_rejected_total{folder=\"shared\"} 0",
        "mqsync_pending{folder=\"shared\"} 0",
        "# TYPE mqsync_apply_seconds histogram",
        "mqsync_apply_seconds_bucket{folder=\"shared\",le=\"0.001\"} 0",
        "mqsync_apply_seconds_bucket{folder=\"shared\",le=\"60\"} 0",
        "mqsync_apply_seconds_count{folder=\"shared\"} 0",
    ] {
        assert!(m.contains(series), "{series} missing from:\n{m}");
    }
    assert!(!m.contains("quantile="), "a summary:\n{m}");
    // The node's certificate from `certs init`: about 825 days.
    let expiry = metric_value(&m, "mqsync_certificate_expires_timestamp_seconds")
        .unwrap_or_else(|| panic!("no certificate expiry:\n{m}"));
    let days = (expiry - now_s()) / 86_400.0;
    assert!((800.0..900.0).contains(&days), "{days} days");
    let (series, families) = exported(&m);
    let any_name: BTreeSet<String> = series.union(&families).cloned().collect();

    // Every metric is documented.
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/MONITORING.md"))
            .unwrap();
    for f in &families {
        assert!(
            doc.contains(&format!("| `{f}` |")),
            "{f} not in docs/MONITORING.md"
        );
    }

    // The dashboard: its panels, and every metric its expressions name.
    let dash_text = std::fs::read_to_string(monitoring("grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash_text).expect("dashboard JSON");
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for t in [
        "Nodes connected",
        "Distinct trees",
        "Pending changes",
        "Apply errors (1 h)",
        "Conflicts (24 h)",
        "Traffic",
        "Bytes held",
        "Apply latency",
        "Certificate days left",
    ] {
        assert!(titles.contains(&t), "no panel {t}: {titles:?}");
    }
    let exprs = dashboard_exprs(&dash);
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("histogram_quantile") && e.contains("mqsync_apply_seconds_bucket")),
        "{exprs:?}"
    );
    let rules = std::fs::read_to_string(monitoring("mqsync-alerts.yml")).unwrap();
    for alert in [
        "MqsyncNodeDisconnected",
        "MqsyncPendingGrowing",
        "MqsyncApplyErrors",
        "MqsyncCertificateExpiresSoon",
    ] {
        assert!(rules.contains(&format!("alert: {alert}\n")), "{alert}");
    }
    let rule_exprs: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(str::to_string)
        .collect();
    let template = dash["templating"].to_string();
    // Expressions may name only series a scrape has; any text (a description) may also
    // name a histogram by its family name.
    for (what, text, known) in [
        (
            "dashboard expressions",
            exprs.join("\n") + &template,
            &series,
        ),
        ("alert expressions", rule_exprs.join("\n"), &series),
        ("dashboard", dash_text.clone(), &any_name),
        ("alert rules", rules.clone(), &any_name),
    ] {
        let used = names_in(&text);
        assert!(used.len() >= 6, "{what}: {used:?}");
        let unknown: Vec<_> = used.difference(known).collect();
        assert!(
            unknown.is_empty(),
            "{what} name metrics mqsync does not export: {unknown:?}\nexported: {known:?}"
        );
    }

    // promtool: the rules, and the dashboard's expressions as recording rules.
    let Ok(out) = Command::new("promtool").arg("--version").output() else {
        eprintln!("promtool SKIPPED: not installed (apt-get install prometheus)");
        return;
    };
    assert!(out.status.success());
    let check = |path: &Path| {
        let out = Command::new("promtool")
            .args(["check", "rules"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check rules {}:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    check(&monitoring("mqsync-alerts.yml"));
    let mut recording = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        // Grafana's variables, as Grafana fills them in.
        let e = e.replace("$folder", ".*");
        let quoted = serde_json::to_string(&e).unwrap();
        recording.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: {quoted}\n"
        ));
    }
    let path = c.path("dashboard-rules.yml");
    std::fs::write(&path, recording).unwrap();
    check(&path);
}
