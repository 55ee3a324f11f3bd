//! Keys rotate without a restart: a running node reads its group key file (and its
//! TLS files) again on SIGHUP, and a file that does not load is reported while the
//! keys in use are kept. Real node processes through the embedded broker.

mod common;

use common::*;
use std::fs;
use std::time::Duration;

#[test]
fn sighup_reloads_the_group_key_so_keys_rotate_without_a_restart() {
    let mut c = Cluster::new(2);
    let keys = [c.path("n1-group.key"), c.path("n2-group.key")];
    for (i, key) in keys.iter().enumerate() {
        fs::write(key, "alpha\n").unwrap();
        let key = key.display().to_string();
        c.write_config(i, |t| {
            t.replace(&format!("{}/group.key", c.path("certs").display()), &key)
        });
        c.start_node(i);
    }
    fs::create_dir_all(c.folder(0)).unwrap();
    fs::write(c.folder(0).join("a.txt"), "under alpha").unwrap();
    c.converge(&[0, 1], Duration::from_secs(30), |s| {
        s.contains_key("a.txt")
    });

    // Node 2 learns the new key (still signing with the old one) by SIGHUP alone.
    fs::write(&keys[1], "alpha\nbeta\n").unwrap();
    c.nodes[1].as_ref().unwrap().signal(libc::SIGHUP);
    let n2_log = |c: &Cluster| c.nodes[1].as_ref().unwrap().log_text();
    assert!(
        wait_until(Duration::from_secs(20), || n2_log(&c)
            .contains("group key and certificates read again")),
        "node 2 did not reload:\n{}",
        n2_log(&c)
    );
    // Node 1 moves to the new key: what it signs now verifies on node 2 only because
    // node 2 reloaded (without the reload, node 2 drops it as forged).
    fs::write(&keys[0], "beta\n").unwrap();
    c.stop_node(0);
    c.start_node(0);
    fs::write(c.folder(0).join("b.txt"), "under beta").unwrap();
    c.converge(&[0, 1], Duration::from_secs(30), |s| {
        s.contains_key("b.txt")
    });

    // A key file that does not load is reported; the keys in use stay.
    fs::write(&keys[1], "\n").unwrap();
    c.nodes[1].as_ref().unwrap().signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(20), || n2_log(&c)
            .contains("keeping the group key and certificates in use")),
        "node 2 did not report the bad key file:\n{}",
        n2_log(&c)
    );
    fs::write(c.folder(0).join("c.txt"), "still beta").unwrap();
    c.converge(&[0, 1], Duration::from_secs(30), |s| {
        s.contains_key("c.txt")
    });
    assert_eq!(
        fs::read_to_string(c.folder(1).join("c.txt")).unwrap(),
        "still beta"
    );
    c.stop_node(0);
    c.stop_node(1);
}
