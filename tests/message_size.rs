//! Messages that fit a broker's packet limit: nodes behind a Mosquitto that refuses
//! packets over 256 KiB (`max_packet_size 262144`, a client sending more is
//! disconnected) converge when `broker.max_message_bytes` matches it, with files of
//! several MiB (chunks of up to 1 MiB, sent in parts) and many small ones; and a node
//! left at a larger limit says why the broker keeps closing its connection, in its log,
//! its status and its healthcheck, naming the key to set.

mod common;

use common::*;
use rand::{RngCore, SeedableRng};
use std::fs;
use std::time::Duration;

const T: Duration = Duration::from_secs(300);
/// The broker's limit, and the nodes' `broker.max_message_bytes` where it matches.
const LIMIT: usize = 262_144;

/// A cluster of `n` nodes on a Mosquitto that refuses packets over [`LIMIT`] bytes.
fn limited_cluster(n: usize) -> Cluster {
    let mut c = Cluster::with_broker(n, BrokerKind::Mosquitto);
    c.kill_broker();
    c.broker = Some(c.spawn_mosquitto("broker", c.port, &format!("max_packet_size {LIMIT}\n")));
    c
}

fn with_limit(t: String) -> String {
    t.replace(
        "[security]",
        &format!("max_message_bytes = {LIMIT}\n\n[security]"),
    )
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

#[test]
fn nodes_behind_a_broker_with_a_256_kib_packet_limit_converge() {
    let mut c = limited_cluster(3);
    for i in 0..3 {
        c.write_config(i, with_limit);
    }
    let (a, b) = (c.folder(0), c.folder(2));
    // Already there at start: large incompressible files and many small ones, whose
    // manifest answers and chunk requests also have to be split.
    for (k, mib) in [3usize, 5, 1].into_iter().enumerate() {
        fs::write(
            a.join(format!("big{k}.bin")),
            random_bytes(mib << 20, k as u64),
        )
        .unwrap();
    }
    for i in 0..1_500 {
        let dir = a.join(format!("small/d{:02}", i % 15));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("f{i:04}.txt")), format!("file {i}\n")).unwrap();
    }
    for i in 0..3 {
        c.start_node(i);
    }
    c.converge(&[0, 1, 2], T, |s| {
        s.len() > 1_500
            && s.get("big1.bin")
                .is_some_and(|v| v.contains(&format!(" {} ", 5u64 << 20)))
    });
    // Live changes on both sides: a new large file, an edit in the middle of one.
    fs::write(b.join("live.bin"), random_bytes(4 << 20, 9)).unwrap();
    let mut edited = fs::read(a.join("big0.bin")).unwrap();
    edited[1 << 20..(1 << 20) + 4096].copy_from_slice(&random_bytes(4096, 10));
    fs::write(a.join("big0.bin"), &edited).unwrap();
    c.converge(&[0, 1, 2], T, |s| s.contains_key("live.bin"));
    for i in 0..3 {
        assert_eq!(fs::read(c.folder(i).join("big0.bin")).unwrap(), edited);
    }
    // Nothing was refused: no node saw the broker close its connection.
    for (i, n) in c.nodes.iter().enumerate() {
        let log = n.as_ref().unwrap().log_text();
        assert!(
            !log.contains("connection to") && !log.contains("max_message_bytes ("),
            "node {i} lost its connection:\n{log}"
        );
    }
    let broker = c.broker.as_ref().unwrap().log_text();
    assert!(
        !broker.to_lowercase().contains("oversize") && !broker.contains("exceeded"),
        "{broker}"
    );
}

#[test]
fn a_node_sending_more_than_the_broker_accepts_names_the_key_to_set() {
    let mut c = limited_cluster(2);
    // n1 keeps the default (1,000,000 bytes); n2 matches the broker.
    c.write_config(0, |t| t);
    c.write_config(1, with_limit);
    fs::write(c.folder(0).join("big.bin"), random_bytes(3 << 20, 1)).unwrap();
    c.start_node(0);
    c.start_node(1);
    let cfg = c.path("n1.toml");
    let mut last = String::new();
    let said = wait_until(T, || {
        let log = c.nodes[0].as_ref().unwrap().log_text();
        let status = status_of(&c, "n1");
        let (ok, out, err) = mqsync_out(&["healthcheck", "--config", cfg.to_str().unwrap()]);
        last = format!("status: {status}\nhealthcheck: {ok} {out}{err}");
        log.contains("MQSYNC_BROKER_MAX_MESSAGE_BYTES")
            && status["state"] == "error"
            && status["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("broker.max_message_bytes"))
            && !ok
            && format!("{out}{err}").contains("broker.max_message_bytes")
    });
    assert!(
        said,
        "n1 never reported the broker's packet limit\n{last}\n{}",
        c.nodes[0].as_ref().unwrap().log_text()
    );
    // The broker did refuse oversized packets (the cause the node names).
    let broker = c.broker.as_ref().unwrap().log_text();
    assert!(
        broker.contains("mqsync-n1-shared-pub disconnected due to oversize packet"),
        "{broker}"
    );
}
