//! Prometheus metrics on an optional HTTP listener (`metrics_listen`, `GET /metrics`).
//! The sync path records through the `metrics` facade, which costs nothing when no
//! listener is configured. [`METRICS`] lists every metric (docs/MONITORING.md; the
//! dashboard and alert rules in deploy/monitoring/ use only these), and every series
//! of a folder exists from its start, at 0 ([`register_folder`]).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
#[error("metrics listener on {addr}: {reason}")]
pub struct MetricsError {
    addr: SocketAddr,
    reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric: name, kind, help. All but the certificate's are labelled `folder`.
pub const METRICS: &[(&str, Kind, &str)] = &[
    (
        "mqsync_messages_sent_total",
        Kind::Counter,
        "messages published, by kind",
    ),
    (
        "mqsync_bytes_sent_total",
        Kind::Counter,
        "bytes published on the internal topics",
    ),
    (
        "mqsync_messages_received_total",
        Kind::Counter,
        "messages received from peers",
    ),
    (
        "mqsync_bytes_received_total",
        Kind::Counter,
        "bytes received from peers",
    ),
    (
        "mqsync_messages_rejected_total",
        Kind::Counter,
        "messages dropped: malformed, oversized or not authenticated",
    ),
    (
        "mqsync_applied_total",
        Kind::Counter,
        "remote changes applied to the disk",
    ),
    (
        "mqsync_apply_errors_total",
        Kind::Counter,
        "applies that failed or were refused",
    ),
    (
        "mqsync_conflicts_total",
        Kind::Counter,
        "conflicts that moved a local version aside",
    ),
    (
        "mqsync_index_errors_total",
        Kind::Counter,
        "index writes that failed (retried)",
    ),
    (
        "mqsync_apply_seconds",
        Kind::Histogram,
        "time from accepting a remote change to having it on disk",
    ),
    (
        "mqsync_files",
        Kind::Gauge,
        "files, directories and symlinks present",
    ),
    ("mqsync_bytes", Kind::Gauge, "bytes of the files present"),
    (
        "mqsync_pending",
        Kind::Gauge,
        "remote changes accepted but not on disk yet",
    ),
    (
        "mqsync_connected",
        Kind::Gauge,
        "1 while connected to the broker",
    ),
    (
        "mqsync_tree_digest",
        Kind::Gauge,
        "the first 48 bits of the folder's digest (status `digest`) as a number: nodes with equal values hold the same tree",
    ),
    (
        CERT_EXPIRY,
        Kind::Gauge,
        "when the node's client certificate expires (notAfter), in seconds since the Unix epoch",
    ),
];

/// The node's certificate expiry (not per folder).
pub const CERT_EXPIRY: &str = "mqsync_certificate_expires_timestamp_seconds";

/// The `kind` label of `mqsync_messages_sent_total` (node/outbound.rs).
pub const MESSAGE_KINDS: &[&str] = &[
    "manifest", "chunks", "digest", "summary", "descent", "request", "progress", "deltas", "patch",
];

/// Buckets of `mqsync_apply_seconds`: 1 ms to 60 s.
pub const APPLY_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The exporter as mqsync configures it: `mqsync_apply_seconds` is a histogram.
fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("mqsync_apply_seconds".into()),
            APPLY_SECONDS_BUCKETS,
        )
        // Not empty: cannot fail.
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

/// Starts the listener (needs a tokio runtime) and describes every metric.
pub fn install(addr: SocketAddr) -> Result<(), MetricsError> {
    // Bind first for a clear error: the exporter only logs a failed bind.
    std::net::TcpListener::bind(addr).map_err(|e| MetricsError {
        addr,
        reason: e.to_string(),
    })?;
    builder()
        .with_http_listener(addr)
        .install()
        .map_err(|e| MetricsError {
            addr,
            reason: e.to_string(),
        })?;
    describe();
    Ok(())
}

fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// Creates every series of `folder` at 0, so that a counter such as
/// `mqsync_conflicts_total` is there before the first conflict (`rate()` and alerts
/// need the 0).
pub fn register_folder(folder: &str) {
    for &(name, kind, _) in METRICS {
        if name == CERT_EXPIRY {
            continue;
        }
        let folder = folder.to_string();
        match kind {
            Kind::Counter if name == "mqsync_messages_sent_total" => {
                for &k in MESSAGE_KINDS {
                    metrics::counter!(name, "folder" => folder.clone(), "kind" => k).increment(0);
                }
            }
            Kind::Counter => metrics::counter!(name, "folder" => folder).increment(0),
            // A gauge is 0 until set, a histogram empty until recorded.
            Kind::Gauge => drop(metrics::gauge!(name, "folder" => folder)),
            Kind::Histogram => drop(metrics::histogram!(name, "folder" => folder)),
        }
    }
}

/// The status digest (hex) as the number `mqsync_tree_digest` carries: its first 48
/// bits, which a float holds exactly.
pub fn digest_value(hex: &str) -> Option<f64> {
    let head = hex.get(..12)?;
    u64::from_str_radix(head, 16).ok().map(|v| v as f64)
}

/// Sets [`CERT_EXPIRY`] to when the node's client certificate expires (ms since the
/// epoch, as `daemon::check_client_cert` read it).
pub fn set_certificate_expiry(expires_ms: u64) {
    metrics::gauge!(CERT_EXPIRY).set(expires_ms as f64 / 1000.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_of_a_folder_is_there_from_zero() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            register_folder("media");
            metrics::histogram!("mqsync_apply_seconds", "folder" => "media").record(0.003);
        });
        let text = handle.render();
        for series in [
            "mqsync_conflicts_total{folder=\"media\"} 0",
            "mqsync_apply_errors_total{folder=\"media\"} 0",
            "mqsync_index_errors_total{folder=\"media\"} 0",
            "mqsync_messages_sent_total{folder=\"media\",kind=\"patch\"} 0",
            "mqsync_pending{folder=\"media\"} 0",
            "mqsync_tree_digest{folder=\"media\"} 0",
            // A histogram, not a summary, with buckets from 1 ms to 60 s.
            "# TYPE mqsync_apply_seconds histogram",
            "mqsync_apply_seconds_bucket{folder=\"media\",le=\"0.001\"} 0",
            "mqsync_apply_seconds_bucket{folder=\"media\",le=\"0.005\"} 1",
            "mqsync_apply_seconds_bucket{folder=\"media\",le=\"60\"} 1",
            "mqsync_apply_seconds_count{folder=\"media\"} 1",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
        assert!(!text.contains("quantile"), "{text}");
    }

    #[test]
    fn digest_values_are_exact() {
        assert_eq!(digest_value("0000000000ff1234"), Some(255.0));
        assert_eq!(
            digest_value("ffffffffffff0000"),
            Some(((1u64 << 48) - 1) as f64)
        );
        assert_eq!(digest_value("abc"), None);
    }
}
