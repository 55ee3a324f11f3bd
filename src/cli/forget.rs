//! `mqsync forget NODE`: removes a node that left for good by clearing its retained
//! documents (status, pending list, Docker mount report) with an operator certificate,
//! then says what it cleared. The MQTT side is in `ops::forget`.

use super::args::ForgetArgs;
use super::{init_logging, load_config_checked};
use crate::config::Checks;
use crate::ops::forget::{self, ForgetError};
use anyhow::{Result, bail};
use std::collections::HashMap;
use std::time::Duration;
use tokio::runtime::Runtime;

pub fn forget(rt: &Runtime, log: &str, a: ForgetArgs) -> Result<()> {
    crate::broker::certs::validate_node_id(&a.node)?;
    let mut o = HashMap::new();
    if let (Some(cert), Some(key)) = (&a.cert, &a.key) {
        o.insert("MQSYNC_BROKER_CERT_FILE", cert.display().to_string());
        o.insert("MQSYNC_BROKER_KEY_FILE", key.display().to_string());
    }
    let cfg = load_config_checked(a.config.as_deref(), o, Checks::Broker)?;
    init_logging(log, cfg.log_format);
    if cfg.broker.url.is_none() {
        bail!(
            "forget needs broker.url in the configuration (or MQSYNC_BROKER_URL): it talks to \
             the cluster's broker with an operator certificate"
        );
    }
    let connect = crate::daemon::connect_settings(&cfg)?;
    let prefix = &cfg.broker.topic_prefix;
    let found = rt.block_on(forget::find(
        &connect,
        prefix,
        &a.node,
        Duration::from_millis(800),
    ))?;
    if found.topics.is_empty() {
        println!(
            "nothing to forget: no retained document of node {} under {prefix}/",
            a.node
        );
        return Ok(());
    }
    if !found.online.is_empty() && !a.force {
        bail!(
            "node {} is online (folder(s) {}): stop it first, or give --force (a running node \
             publishes its status again)",
            a.node,
            found.online.join(", ")
        );
    }
    let cleared = rt.block_on(forget::clear(&connect, &found.topics));
    if let Err(e @ ForgetError::Control(_)) = cleared {
        return Err(e.into());
    }
    // Read them again: Mosquitto acknowledges a publish its ACL drops.
    let after = rt.block_on(forget::find(
        &connect,
        prefix,
        &a.node,
        Duration::from_millis(800),
    ))?;
    let left: Vec<&String> = found
        .topics
        .iter()
        .filter(|t| after.topics.contains(t))
        .collect();
    if !left.is_empty() {
        bail!(
            "the broker did not let this certificate clear {} of node {}'s documents ({}): \
             clearing another node's topics needs an operator certificate the ACL allows \
             (mqsync certs init --operator NAME, then mqsync forget --cert NAME.pem --key \
             NAME.key; docs/SECURITY.md){}",
            left.len(),
            a.node,
            left.iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if a.force && !found.online.is_empty() {
                ", or the node is running and published them again"
            } else {
                ""
            }
        );
    }
    println!("forgot node {}: cleared", a.node);
    for t in &found.topics {
        println!("  {t}");
    }
    Ok(())
}
