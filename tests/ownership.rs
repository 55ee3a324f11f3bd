//! Owners, groups, extended attributes and ACLs between real node processes: by name
//! (each node sees its own /etc/passwd and /etc/group, bind-mounted in a mount
//! namespace of its own, so a name can have other ids, or be missing, on a receiver),
//! by number, not at all, from a daemon that is not root, and without a chunk sent.
//! Needs root (the suite runs as root); says SKIPPED otherwise.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

/// The users and groups each node sees. alice and web have other ids on n2; bob and
/// ops exist on n1 only.
const PASSWD_N1: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1501:1501::/:/bin/false\nbob:x:1502:1502::/:/bin/false\n";
const GROUP_N1: &str = "root:x:0:\nweb:x:1700:\nops:x:1701:\n";
const PASSWD_N2: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1601:1601::/:/bin/false\n";
const GROUP_N2: &str = "root:x:0:\nweb:x:1800:\n";

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Writes node `i`'s passwd and group files; returns the shell prefix that mounts
/// them over /etc in a fresh mount namespace.
fn etc_of(c: &Cluster, i: usize, passwd: &str, group: &str) -> String {
    let dir = c.path(&format!("etc-{}", c.names[i]));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("passwd"), passwd).unwrap();
    fs::write(dir.join("group"), group).unwrap();
    format!(
        "mount --bind {d}/passwd /etc/passwd && mount --bind {d}/group /etc/group",
        d = dir.display()
    )
}

/// Starts node `i` in its own mount namespace, with `etc` (from [`etc_of`]) run first.
fn start_in_namespace(c: &mut Cluster, i: usize, etc: &str) {
    let cfg = c.path(&format!("{}.toml", c.names[i]));
    let script = format!("{etc} && exec {BIN} run --config {}", cfg.display());
    let log = c.path(&format!("{}.log", c.names[i]));
    // unshare and sh exec: the process stopped on drop is the daemon itself.
    c.nodes[i] = Some(Proc::spawn_program(
        "unshare",
        &["-m", "--propagation", "private", "sh", "-c", &script],
        &log,
    ));
}

/// Runs `cmd` with node `i`'s view of users and groups (from [`etc_of`]).
fn run_as_seen_by(etc: &str, cmd: &str) {
    let ok = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!("{etc} && {cmd}"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "{cmd}");
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "{cmd}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn connected(c: &Cluster, i: usize) -> bool {
    fs::read_to_string(c.path(&format!("state/{}/health/shared.json", c.names[i])))
        .is_ok_and(|t| t.contains("\"connected\":true"))
}

fn owner(path: &Path) -> Option<(u32, u32)> {
    fs::symlink_metadata(path).ok().map(|m| (m.uid(), m.gid()))
}

/// Chunk data (whole or as deltas) and chunk requests node `port` has sent.
fn transfers(port: u16) -> f64 {
    let s = scrape_metrics(port);
    ["chunks", "deltas", "request"]
        .iter()
        .map(|k| {
            metric_value(
                &s,
                &format!("mqsync_messages_sent_total{{folder=\"shared\",kind=\"{k}\"}}"),
            )
            .unwrap_or(0.0)
        })
        .sum()
}

/// Two nodes with their own users and groups, metrics on, `extra` added to each
/// folder's configuration; returns the cluster, the metrics ports and each node's
/// /etc setup.
fn two_nodes(extra: &str) -> (Cluster, Vec<u16>, Vec<String>) {
    let mut c = Cluster::new(2);
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let etc = vec![
        etc_of(&c, 0, PASSWD_N1, GROUP_N1),
        etc_of(&c, 1, PASSWD_N2, GROUP_N2),
    ];
    for i in 0..2 {
        let port = ports[i];
        c.write_config(i, |t| {
            format!("metrics_listen = \"127.0.0.1:{port}\"\n{t}{extra}\n")
        });
        start_in_namespace(&mut c, i, &etc[i]);
    }
    assert!(wait_until(T, || (0..2).all(|i| connected(&c, i))));
    (c, ports, etc)
}

/// Runs `step`, then waits until node 2's `path` has `want` as owner and group, and
/// checks that neither node sent a chunk or a request for it.
fn metadata_step(
    c: &Cluster,
    ports: &[u16],
    what: &str,
    step: impl FnOnce(),
    path: &str,
    want: (u32, u32),
) {
    let before: Vec<f64> = ports.iter().map(|&p| transfers(p)).collect();
    step();
    let target = c.folder(1).join(path);
    assert!(
        wait_until(T, || owner(&target) == Some(want)),
        "{what}: node 2 holds {path} as {:?}, not {want:?}",
        owner(&target)
    );
    // A late request (a stalled fetch asks after 3 s) would show by now.
    std::thread::sleep(Duration::from_secs(4));
    let after: Vec<f64> = ports.iter().map(|&p| transfers(p)).collect();
    assert_eq!(before, after, "{what}: chunk or request messages were sent");
}

#[test]
fn owners_travel_by_name_and_fall_back_to_the_number() {
    if !is_root() {
        eprintln!("SKIPPED: needs root (chown, mount namespaces)");
        return;
    }
    let (c, ports, etc) = two_nodes("");
    let a = c.folder(0);
    fs::write(a.join("key.pem"), b"secret").unwrap();
    fs::create_dir(a.join("www")).unwrap();
    std::os::unix::fs::symlink("../key.pem", a.join("www/link")).unwrap();
    c.converge(&[0, 1], T, |s| {
        s.contains_key("key.pem") && s.contains_key("www/link")
    });

    let key = a.join("key.pem").display().to_string();
    metadata_step(
        &c,
        &ports,
        "chown by name",
        || {
            run_as_seen_by(
                &etc[0],
                &format!("chown alice:web {key} && chmod 640 {key}"),
            )
        },
        "key.pem",
        (1601, 1800),
    );
    assert_eq!(owner(&a.join("key.pem")), Some((1501, 1700)));
    assert_eq!(
        fs::metadata(c.folder(1).join("key.pem")).unwrap().mode() & 0o7777,
        0o640
    );
    metadata_step(
        &c,
        &ports,
        "chown to a name node 2 lacks",
        || run_as_seen_by(&etc[0], &format!("chown bob:ops {key}")),
        "key.pem",
        (1502, 1701),
    );
    metadata_step(
        &c,
        &ports,
        "chgrp by number",
        || sh(&format!("chgrp 4242 {key}")).truncate(0),
        "key.pem",
        (1502, 4242),
    );
    let dir = a.join("www").display().to_string();
    metadata_step(
        &c,
        &ports,
        "chown of a directory and a symlink",
        || {
            sh(&format!(
                "chown 1501:1700 {dir} && chown -h 1501:1700 {dir}/link"
            ))
            .truncate(0)
        },
        "www/link",
        (1601, 1800),
    );
    assert_eq!(owner(&c.folder(1).join("www")), Some((1601, 1800)));
    // Node 2 holds alice as 1601: it must not send that back as a change.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(owner(&a.join("www")), Some((1501, 1700)));
    assert_eq!(owner(&a.join("key.pem")), Some((1502, 4242)));

    // A change on node 2 travels back by name.
    let b_key = c.folder(1).join("key.pem").display().to_string();
    run_as_seen_by(&etc[1], &format!("chown alice:web {b_key}"));
    assert!(
        wait_until(T, || owner(&a.join("key.pem")) == Some((1501, 1700))),
        "node 1 holds {:?}",
        owner(&a.join("key.pem"))
    );
    // New files arrive with their owner.
    fs::write(a.join("new.txt"), b"new").unwrap();
    sh(&format!("chown 1502:1701 {}", a.join("new.txt").display()));
    assert!(wait_until(T, || owner(&c.folder(1).join("new.txt"))
        == Some((1502, 1701))));
}

#[test]
fn numeric_ownership_keeps_the_numbers_and_none_keeps_nothing() {
    if !is_root() {
        eprintln!("SKIPPED: needs root (chown, mount namespaces)");
        return;
    }
    let (mut c, _ports, etc) = two_nodes("ownership = \"numeric\"");
    let a = c.folder(0);
    fs::write(a.join("f"), b"x").unwrap();
    run_as_seen_by(
        &etc[0],
        &format!("chown alice:web {}", a.join("f").display()),
    );
    assert!(
        wait_until(T, || owner(&c.folder(1).join("f")) == Some((1501, 1700))),
        "node 2 holds {:?}",
        owner(&c.folder(1).join("f"))
    );
    // With "none", a receiver leaves what it writes to the daemon's user (root), and
    // its edits keep the owner the other nodes gave the file.
    c.stop_node(1);
    c.write_config(1, |t| format!("{t}ownership = \"none\"\n"));
    start_in_namespace(&mut c, 1, &etc[1]);
    assert!(wait_until(T, || connected(&c, 1)));
    fs::write(a.join("g"), b"y").unwrap();
    sh(&format!("chown 1501:1700 {}", a.join("g").display()));
    c.converge(&[0, 1], T, |s| s.contains_key("g"));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(owner(&c.folder(1).join("g")), Some((0, 0)));
    fs::write(c.folder(1).join("g"), b"edited on n2").unwrap();
    c.converge(&[0, 1], T, |_| {
        fs::read(a.join("g")).is_ok_and(|b| b == b"edited on n2")
    });
    assert_eq!(owner(&a.join("g")), Some((1501, 1700)));
}

#[test]
fn a_daemon_that_is_not_root_syncs_contents_and_says_it_cannot_chown() {
    if !is_root() {
        eprintln!("SKIPPED: needs root (setpriv)");
        return;
    }
    const UID: u32 = 54_321;
    let mut c = Cluster::new(2);
    for i in 0..2 {
        c.write_config(i, |t| t);
    }
    // Node 2 runs as UID: its folder, state and certificate files are its own, and
    // the test directory can be entered.
    let root = c.dir.path().to_path_buf();
    let path = |p: &str| root.join(p).display().to_string();
    sh(&format!(
        "chmod 755 {root} {root}/certs {root}/data && mkdir -p {state} && chown -R {UID}:{UID} {folder} {state} {certs}/n2.pem {certs}/n2.key && chmod 644 {certs}/group.key {certs}/ca.pem {cfg}",
        root = c.dir.path().display(),
        state = path("state/n2"),
        folder = c.folder(1).display(),
        certs = path("certs"),
        cfg = path("n2.toml"),
    ));
    c.start_node(0);
    let cfg = path("n2.toml");
    let uid = UID.to_string();
    c.nodes[1] = Some(Proc::spawn_program(
        "setpriv",
        &[
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            BIN,
            "run",
            "--config",
            &cfg,
        ],
        &c.path("n2.log"),
    ));
    assert!(wait_until(T, || (0..2).all(|i| connected(&c, i))));
    let a = c.folder(0);
    fs::write(a.join("f.txt"), b"contents").unwrap();
    sh(&format!("chown 1234:1234 {}", a.join("f.txt").display()));
    c.converge(&[0, 1], T, |s| s.contains_key("f.txt"));
    assert_eq!(owner(&c.folder(1).join("f.txt")), Some((UID, UID)));
    let log = c.nodes[1].as_ref().unwrap().log_text();
    assert_eq!(
        log.matches("does not run as root").count(),
        1,
        "said once: {log}"
    );
    let health = fs::read_to_string(c.path("state/n2/health/shared.json")).unwrap();
    assert!(health.contains("does not run as root"), "{health}");
    let (ok, out, _) = mqsync_out(&["status", "--config", &path("n1.toml")]);
    assert!(ok && out.contains("does not run as root"), "{out}");
    // Contents keep syncing both ways, and an edit on node 2 keeps the owner node 1
    // gave the file: node 2's own user never travels as a change of owner.
    fs::write(c.folder(1).join("back.txt"), b"from n2").unwrap();
    fs::write(c.folder(1).join("f.txt"), b"edited on n2").unwrap();
    c.converge(&[0, 1], T, |s| {
        s.contains_key("back.txt") && fs::read(a.join("f.txt")).is_ok_and(|b| b == b"edited on n2")
    });
    assert_eq!(owner(&a.join("f.txt")), Some((1234, 1234)));
}

#[test]
fn attributes_and_acls_travel_when_enabled_and_not_otherwise() {
    if !is_root() {
        eprintln!("SKIPPED: needs root (security.* attributes, mount namespaces)");
        return;
    }
    let mut c = Cluster::new(3);
    let port = free_port();
    for i in 0..3 {
        c.write_config(i, |t| match i {
            0 => format!("metrics_listen = \"127.0.0.1:{port}\"\n{t}xattrs = true\n"),
            1 => format!("{t}xattrs = true\n"),
            _ => t,
        });
        c.start_node(i);
    }
    assert!(wait_until(T, || (0..3).all(|i| connected(&c, i))));
    let a = c.folder(0);
    fs::write(a.join("f"), b"data").unwrap();
    fs::create_dir(a.join("d")).unwrap();
    c.converge(&[0, 1, 2], T, |s| {
        s.contains_key("f") && s.contains_key("d")
    });
    let before = transfers(port);
    let f = a.join("f").display().to_string();
    let d = a.join("d").display().to_string();
    sh(&format!(
        "setfattr -n user.origin -v node-1 {f} && setfacl -m u:1234:r {f} && setfacl -d -m g:1700:rx {d}"
    ));
    let get = |i: usize, what: &str| {
        let p = c.folder(i).join(what).display().to_string();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "getfattr -d {p} 2>/dev/null; getfacl -n -p {p} 2>/dev/null"
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        wait_until(T, || {
            let (f, d) = (get(1, "f"), get(1, "d"));
            f.contains("user.origin=\"node-1\"")
                && f.contains("user:1234:r--")
                && d.contains("default:group:1700:r-x")
        }),
        "node 2: {} {}",
        get(1, "f"),
        get(1, "d")
    );
    // Node 3 keeps no attributes: the same content, none of them.
    c.converge(&[0, 1, 2], T, |_| true);
    let (f3, d3) = (get(2, "f"), get(2, "d"));
    assert!(
        !f3.contains("user.origin") && !f3.contains("1234") && !d3.contains("1700"),
        "{f3} {d3}"
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(transfers(port), before, "attributes alone sent chunks");
    // Removing an attribute travels too.
    sh(&format!("setfattr -x user.origin {f}"));
    assert!(
        wait_until(T, || !get(1, "f").contains("user.origin")),
        "{}",
        get(1, "f")
    );
}
