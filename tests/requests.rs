//! Chunk requests are batched: an empty node joining one that holds many small files
//! asks for their chunks in a few request messages (one per addressee and turn of its
//! loop, each carrying many hashes), not one per file. Counted through the joiner's
//! metrics with real processes.

mod common;

use common::*;
use rand::{Rng, RngCore, SeedableRng};
use std::fs;
use std::time::Duration;

const T: Duration = Duration::from_secs(300);
/// Files on the first node: each of 1–4 KiB, so one chunk each.
const FILES: usize = 2_000;

#[test]
fn a_joining_node_asks_for_many_chunks_per_request_message() {
    let mut c = Cluster::new(2);
    let root = c.folder(0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(25);
    for i in 0..FILES {
        let dir = root.join(format!("d{:02}", i % 20));
        fs::create_dir_all(&dir).unwrap();
        let mut data = vec![0u8; rng.random_range(1024..=4096)];
        rng.fill_bytes(&mut data);
        // Distinct content for sure: the index leads every file.
        data[..8].copy_from_slice(&(i as u64).to_le_bytes());
        fs::write(dir.join(format!("f{i:04}.bin")), data).unwrap();
    }
    c.write_config(0, |t| t);
    c.start_node(0);
    // n1 has scanned its tree before the joiner asks anything.
    let idle = |c: &Cluster| status_of(c, "n1")["state"] == "idle";
    assert!(wait_until(T, || idle(&c)), "n1 never became idle");

    let port = free_port();
    c.write_config(1, |t| format!("metrics_listen = \"127.0.0.1:{port}\"\n{t}"));
    let joined = std::time::Instant::now();
    c.start_node(1);
    let files = |s: &std::collections::BTreeMap<String, String>| {
        s.values().filter(|v| v.starts_with("file")).count()
    };
    c.converge(&[0, 1], T, |s| files(s) == FILES);
    println!("the joiner was in sync after {:?}", joined.elapsed());
    // A stalled fetch asks again after 3 s: any such request would count by now.
    std::thread::sleep(Duration::from_secs(4));
    c.converge(&[0, 1], T, |s| files(s) == FILES);

    let requests = metric_value(
        &scrape_metrics(port),
        "mqsync_messages_sent_total{folder=\"shared\",kind=\"request\"}",
    )
    .expect("the joiner exports its request count");
    let bound = FILES / 64 + 16;
    println!("the joiner sent {requests} request messages for {FILES} chunks (bound {bound})");
    assert!(
        requests >= 1.0 && requests <= bound as f64,
        "the joiner sent {requests} request messages for {FILES} chunks, more than {bound}"
    );
    let temps = walk(&c.folder(1))
        .into_iter()
        .filter(|(rel, _)| rel.contains(".mqsync-tmp-"))
        .count();
    assert_eq!(temps, 0, "temp files left behind");
}
