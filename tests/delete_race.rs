//! A directory deleted on a node while a file in it is still arriving there: the
//! delete did not know the file, so by the rule that an edit beats a concurrent delete
//! the file is written again with its directory, on every node, and the node says so
//! in its log instead of reporting a failed apply.

mod common;

use common::*;
use std::fs;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(90);

#[test]
fn a_directory_deleted_while_a_file_arrives_comes_back_with_the_file_and_says_why() {
    let mut c = Cluster::new(2);
    c.start_node(0);
    c.start_node(1);
    let (a, b) = (c.folder(0), c.folder(1));
    assert!(wait_until(T, || a.join(".mqsync").exists()
        && b.join(".mqsync").exists()));
    fs::create_dir_all(a.join("docs")).unwrap();
    fs::write(a.join("docs/small.txt"), b"seen by both").unwrap();
    c.converge(&[0, 1], T, |s| s.contains_key("docs/small.txt"));

    // A large file starts arriving on node 2; its directory is deleted there as soon
    // as the temp file shows up.
    let data: Vec<u8> = (0..256u32 << 20 >> 2)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    fs::write(a.join("docs/big.bin"), &data).unwrap();
    let started = Instant::now();
    let mut caught = false;
    while started.elapsed() < Duration::from_secs(30) {
        let temp = fs::read_dir(b.join("docs"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("mqsync-tmp"));
        if temp {
            fs::remove_dir_all(b.join("docs")).unwrap();
            caught = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(caught, "never saw big.bin arrive on node 2");

    // The file and its directory come back everywhere; the small file, which the
    // delete did know, stays deleted.
    c.converge(&[0, 1], T, |s| {
        s.contains_key("docs/big.bin") && !s.contains_key("docs/small.txt")
    });
    assert_eq!(fs::read(b.join("docs/big.bin")).unwrap(), data);
    let log = c.nodes[1].as_ref().unwrap().log_text();
    assert!(
        log.contains("an edit beats a concurrent delete"),
        "node 2 did not say why the file came back:\n{log}"
    );
    assert!(
        !log.contains("apply failed, will retry"),
        "a concurrent delete was reported as a failure:\n{log}"
    );
    c.stop_node(0);
    c.stop_node(1);
}
