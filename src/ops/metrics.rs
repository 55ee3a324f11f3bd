//! Prometheus metrics on an optional HTTP listener (`metrics_listen`, `GET /metrics`).
//! The sync path records through the `metrics` facade, which costs nothing when no
//! listener is configured.

use metrics_exporter_prometheus::PrometheusBuilder;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
#[error("metrics listener on {addr}: {reason}")]
pub struct MetricsError {
    addr: SocketAddr,
    reason: String,
}

/// Starts the listener (needs a tokio runtime) and describes every metric.
pub fn install(addr: SocketAddr) -> Result<(), MetricsError> {
    // Bind first for a clear error: the exporter only logs a failed bind.
    std::net::TcpListener::bind(addr).map_err(|e| MetricsError {
        addr,
        reason: e.to_string(),
    })?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| MetricsError {
            addr,
            reason: e.to_string(),
        })?;
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("mqsync_messages_sent_total", "messages published, by kind");
    describe_counter!(
        "mqsync_bytes_sent_total",
        "bytes published on the internal topics"
    );
    describe_counter!(
        "mqsync_messages_received_total",
        "messages received from peers"
    );
    describe_counter!("mqsync_bytes_received_total", "bytes received from peers");
    describe_counter!(
        "mqsync_messages_rejected_total",
        "messages dropped: malformed, oversized or not authenticated"
    );
    describe_counter!("mqsync_applied_total", "remote changes applied to the disk");
    describe_counter!(
        "mqsync_apply_errors_total",
        "applies that failed or were refused"
    );
    describe_counter!(
        "mqsync_conflicts_total",
        "conflicts that moved a local version aside"
    );
    describe_histogram!(
        "mqsync_apply_seconds",
        "time from accepting a remote change to having it on disk"
    );
    describe_gauge!("mqsync_files", "files, directories and symlinks present");
    describe_gauge!("mqsync_bytes", "bytes of the files present");
    describe_gauge!(
        "mqsync_pending",
        "remote changes accepted but not on disk yet"
    );
    describe_gauge!("mqsync_connected", "1 while connected to the broker");
    Ok(())
}
