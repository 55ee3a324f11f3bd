//! Hostile input against real node processes and real brokers: a rogue MQTT client with
//! a broker certificate but no group key, a key holder sending escaping paths and
//! bombs, idle connections to the embedded broker, and the shipped topic ACLs.

mod common;

use common::*;
use mqsync::engine::{ChunkRef, Content, Entry, VersionVector};
use mqsync::ops::status::{FolderStatus, State};
use mqsync::protocol::relpath::RelPath;
use mqsync::protocol::wire::{self, Envelope, Keys, Message};
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An MQTT client with node certificate `cert`, polled on its own runtime, recording
/// what it receives and how many of its QoS 1 publishes the broker acknowledged.
struct Client {
    rt: tokio::runtime::Runtime,
    client: AsyncClient,
    got: Received,
    acks: Arc<AtomicUsize>,
}

impl Client {
    fn connect(c: &Cluster, port: u16, id: &str, cert: &str, subscribe: Option<&str>) -> Client {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let certs = c.path("certs");
        let tls = mqsync::transport::tls::client_config(
            &certs.join("ca.pem"),
            Some(&certs.join(format!("{cert}.pem"))),
            Some(&certs.join(format!("{cert}.key"))),
        )
        .unwrap();
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
        ));
        opts.set_max_packet_size(8 << 20, 8 << 20);
        let (client, mut el) = AsyncClient::new(opts, 1000);
        let got: Received = Arc::new(Mutex::new(Vec::new()));
        let acks = Arc::new(AtomicUsize::new(0));
        let subscribed = Arc::new(AtomicBool::new(subscribe.is_none()));
        if let Some(filter) = subscribe {
            let client = client.clone();
            let filter = filter.to_string();
            rt.block_on(async move { client.subscribe(filter, QoS::AtLeastOnce).await.unwrap() });
        }
        let (g, a, s) = (got.clone(), acks.clone(), subscribed.clone());
        rt.spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        g.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => s.store(true, Ordering::SeqCst),
                    Ok(_) => {}
                    Err(_) => {
                        // rumqttc reconnects on the next poll.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        assert!(
            wait_until(T, || subscribed.load(Ordering::SeqCst)),
            "{id}: no SubAck"
        );
        Client {
            rt,
            client,
            got,
            acks,
        }
    }

    fn publish(&self, topic: &str, qos: QoS, payload: Vec<u8>) {
        let client = self.client.clone();
        let topic = topic.to_string();
        self.rt
            .block_on(async move { client.publish(topic, qos, false, payload).await.unwrap() });
    }

    /// Publishes everything with QoS 1 and waits until the broker acknowledged it all.
    fn publish_acked(&self, msgs: &[(String, Vec<u8>)]) {
        let before = self.acks.load(Ordering::SeqCst);
        for (topic, payload) in msgs {
            self.publish(topic, QoS::AtLeastOnce, payload.clone());
        }
        assert!(
            wait_until(T, || self.acks.load(Ordering::SeqCst)
                >= before + msgs.len()),
            "broker did not acknowledge {} publishes",
            msgs.len()
        );
    }

    fn publish_retained(&self, topic: &str, payload: Vec<u8>) {
        let client = self.client.clone();
        let topic = topic.to_string();
        let before = self.acks.load(Ordering::SeqCst);
        self.rt.block_on(async move {
            client
                .publish(topic, QoS::AtLeastOnce, true, payload)
                .await
                .unwrap()
        });
        assert!(wait_until(T, || self.acks.load(Ordering::SeqCst) > before));
    }

    fn received(&self) -> Vec<(String, Vec<u8>)> {
        self.got.lock().unwrap().clone()
    }
}

fn data_topic(node: &str) -> String {
    format!("mqsync/shared/v1/{node}")
}

fn log_count(p: &Proc, needle: &str) -> usize {
    p.log_text().matches(needle).count()
}

fn node_log(c: &Cluster, i: usize) -> String {
    c.nodes[i].as_ref().unwrap().log_text()
}

fn group_keys(c: &Cluster) -> Keys {
    mqsync::daemon::read_group_key(&c.path("certs/group.key")).unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn entry(path: &str, by: &str, counter: u64, content: Content) -> Entry {
    let mut version = VersionVector::new();
    for _ in 0..counter {
        version = version.incremented(by);
    }
    Entry {
        attrs: None,
        path: RelPath::new(path).unwrap(),
        version,
        modified_by: by.into(),
        changed_ms: now_ms(),
        content,
    }
}

fn manifest(from: &str, entries: Vec<Entry>) -> Envelope {
    Envelope {
        from: from.into(),
        msg: Message::Manifest {
            live: true,
            entries,
        },
    }
}

/// Resident memory high-water mark of a node process, in KiB.
fn peak_rss_kib(p: &Proc) -> u64 {
    let pid = p.child.as_ref().unwrap().id();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn start_pair(c: &mut Cluster) {
    c.start_node(0);
    c.start_node(1);
    assert!(wait_until(T, || c.folder(0).join(".mqsync").exists()
        && c.folder(1).join(".mqsync").exists()));
}

/// Mosquitto without an ACL: a client holding a valid certificate (n3's) reaches every
/// internal topic, so only the group key stands between it and the files.
#[test]
fn a_rogue_client_without_the_group_key_changes_nothing() {
    let mut c = Cluster::with_broker(3, BrokerKind::Mosquitto);
    start_pair(&mut c);
    let rogue = Client::connect(&c, c.port, "rogue", "n3", Some("mqsync/#"));

    fs::write(c.folder(0).join("victim.txt"), b"version one").unwrap();
    fs::write(c.folder(0).join("other.txt"), vec![b'o'; 3000]).unwrap();
    c.converge(&[0, 1], T, |s| s.contains_key("victim.txt"));
    // Captured traffic of node n1: its manifests and chunks of version one.
    assert!(wait_until(T, || rogue
        .received()
        .iter()
        .any(|(t, _)| t == &data_topic("n1"))));
    let captured: Vec<(String, Vec<u8>)> = rogue
        .received()
        .into_iter()
        .filter(|(t, _)| t == &data_topic("n1"))
        .take(10)
        .collect();
    fs::write(c.folder(0).join("victim.txt"), b"version two, final").unwrap();
    assert!(wait_until(T, || fs::read(c.folder(1).join("victim.txt"))
        .is_ok_and(|d| d == b"version two, final")));
    c.converge(&[0, 1], T, |_| true);
    let before = snapshot(&c.folder(1));

    let forged_key = Keys::new(vec![Keys::derive(b"a guessed key")]).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut bad_data: Vec<(String, Vec<u8>)> = Vec::new();
    // Forged manifests deleting the victim with a version that dominates everything.
    for node in ["n1", "n2", "n3"] {
        let mut gone = entry("victim.txt", node, 1000, Content::Deleted);
        gone.version = gone.version.incremented("n1").incremented("n2");
        let env = manifest(node, vec![gone]);
        let topic = data_topic(node);
        bad_data.push((
            topic.clone(),
            wire::encode(&env, &topic, &forged_key).unwrap(),
        ));
    }
    // Captured messages with one flipped byte: in the header, the body, the MAC.
    for (topic, payload) in &captured {
        for at in [4, payload.len() / 2, payload.len() - 1] {
            let mut p = payload.clone();
            p[at] ^= 0x20;
            bad_data.push((topic.clone(), p));
        }
    }
    // Random bytes and oversized payloads on every node's data topic.
    for node in ["n1", "n2", "n3"] {
        for _ in 0..3 {
            let len = rng.random_range(1..5000);
            let junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            bad_data.push((data_topic(node), junk));
        }
        bad_data.push((data_topic(node), vec![0x4d; wire::MAX_MESSAGE_BYTES + 1000]));
    }
    let expect_dropped = |me: &str| {
        bad_data
            .iter()
            .filter(|(t, _)| *t != data_topic(me))
            .count()
    };
    let dropped_before = [
        log_count(c.nodes[0].as_ref().unwrap(), "dropping message"),
        log_count(c.nodes[1].as_ref().unwrap(), "dropping message"),
    ];
    let mut all = bad_data.clone();
    // Verbatim replays of version one must not roll the victim back.
    all.extend(captured.iter().cloned());
    // Junk on the status and command topics.
    for topic in [
        "mqsync/shared/status/n1",
        "mqsync/shared/status/n2",
        "mqsync/shared/cmd",
    ] {
        all.push((topic.to_string(), b"\x00\xffnot json".to_vec()));
        all.push((topic.to_string(), br#"{"op":"delete-everything"}"#.to_vec()));
    }
    rogue.publish_acked(&all);

    for (i, me) in ["n1", "n2"].iter().enumerate() {
        let want = dropped_before[i] + expect_dropped(me);
        assert!(
            wait_until(T, || log_count(
                c.nodes[i].as_ref().unwrap(),
                "dropping message"
            ) >= want),
            "{me} logged {} of {want} rejections:\n{}",
            log_count(c.nodes[i].as_ref().unwrap(), "dropping message"),
            node_log(&c, i)
        );
        let log = node_log(&c, i);
        for reason in [
            "MAC does not verify",
            "exceeds",
            "malformed command",
            "unknown command",
        ] {
            assert!(log.contains(reason), "{me}: no {reason:?} in\n{log}");
        }
        // A burst of forgeries is no peer on another group key: the node stays healthy.
        assert!(!log.contains("fail verification"), "{me}:\n{log}");
        let health = c.path(&format!("state/{me}/health/shared.json"));
        let health = fs::read_to_string(health).unwrap();
        assert!(!health.contains("fail verification"), "{me}: {health}");
    }
    // The nodes keep syncing, and nothing the rogue sent changed a file.
    fs::write(c.folder(1).join("after.txt"), b"still syncing").unwrap();
    c.converge(&[0, 1], T, |s| s.contains_key("after.txt"));
    let mut after = snapshot(&c.folder(0));
    after.remove("after.txt");
    assert_eq!(after, before, "{}", diff(&before, &after));
    assert_eq!(
        fs::read(c.folder(0).join("victim.txt")).unwrap(),
        b"version two, final"
    );

    // A forged retained status for n3 (the rogue holds its certificate) claiming another
    // state: `status` and `wait` with the group key take nothing it claims (no digest):
    // n3 shows as unverified and `wait` fails naming it, so it can neither hide a node
    // nor fake agreement.
    let status_topic = "mqsync/shared/status/n3";
    let fake = FolderStatus {
        node: "n3".into(),
        folder: "shared".into(),
        state: State::Idle,
        version: "0.1.0".into(),
        files: 1,
        bytes: 1,
        pending: 0,
        digest: "forged".into(),
        local_changes: 0,
        last_error: None,
        failing_since_ms: None,
        connected: true,
        insecure_plaintext: false,
        updated_ms: now_ms(),
        resync: None,
        ignore: None,
        held_deletes: 0,
        cert_days_left: None,
        notes: vec![],
        polled: None,
    };
    let forged = mqsync::ops::status::signed_json(&fake, status_topic, &forged_key).unwrap();
    rogue.publish_retained(status_topic, forged);
    let cfg = c.path("n1.toml");
    let out = cli(&["status", "--config", cfg.to_str().unwrap(), "--json"]);
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        docs.iter()
            .any(|d| d["node"] == "n3" && d["state"] == "unverified")
            && !docs.iter().any(|d| d["digest"] == "forged")
            && docs.len() == 3,
        "{docs:?}"
    );
    assert!(
        stderr.contains("unverified status") && stderr.contains("MAC does not verify"),
        "{stderr}"
    );
    let out = cli(&["wait", "--config", cfg.to_str().unwrap(), "--timeout", "10"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("node n3 is unverified"),
        "wait: {stderr}"
    );
    // Without the key the same status is shown: it did reach the readers.
    let text = fs::read_to_string(&cfg).unwrap().replace(
        &c.path("certs/group.key").display().to_string(),
        c.path("certs/absent.key").to_str().unwrap(),
    );
    let keyless = c.path("keyless.toml");
    fs::write(&keyless, text).unwrap();
    let out = cli(&["status", "--config", keyless.to_str().unwrap(), "--json"]);
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        docs.iter()
            .any(|d| d["node"] == "n3" && d["digest"] == "forged"),
        "{docs:?}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("status MACs are not checked"));
    // Once the forgery is cleared (an empty retained message), `wait` succeeds again.
    rogue.publish_retained(status_topic, vec![]);
    let out = cli(&["wait", "--config", cfg.to_str().unwrap(), "--timeout", "60"]);
    assert!(
        out.status.success(),
        "wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// Hashes a directory tree that must not change.
fn tree_digest(root: &Path) -> String {
    let snap = snapshot(root);
    format!("{:?}", blake3::hash(format!("{snap:?}").as_bytes()))
}

/// A group member (the test signs with the group key) sends paths that escape the
/// folder, symlink tricks, a zstd bomb and a file whose size its chunks do not back.
#[test]
fn signed_messages_cannot_escape_the_folder_or_exhaust_memory() {
    let mut c = Cluster::new(3);
    start_pair(&mut c);
    let outside = c.path("outside");
    fs::create_dir_all(outside.join("etc")).unwrap();
    fs::write(outside.join("etc/passwd"), b"root:x:0:0\n").unwrap();
    let outside_before = tree_digest(&outside);
    let keys = group_keys(&c);
    // n3's certificate may publish on n3's topic under the broker's ACL.
    let n3 = Client::connect(&c, c.port, "n3-test", "n3", None);
    let topic = data_topic("n3");
    let sign = |env: &Envelope| wire::encode(env, &topic, &keys).unwrap();

    // RelPath refuses to build these, so a valid manifest is patched byte for byte.
    let escaping = [
        "../outside/etc/passwd",
        "/tmp/mqsync-abs-escape",
        "a/../../outside/x",
        "ok/\0/nul",
        "a//b",
        "./dot",
    ];
    let mut msgs = Vec::new();
    for evil in escaping {
        let placeholder = "p".repeat(evil.len());
        let env = manifest(
            "n3",
            vec![entry(&placeholder, "n3", 1, Content::Dir { mode: 0o755 })],
        );
        let mut body = postcard::to_allocvec(&env).unwrap();
        let at = body
            .windows(placeholder.len())
            .position(|w| w == placeholder.as_bytes())
            .unwrap();
        body[at..at + evil.len()].copy_from_slice(evil.as_bytes());
        msgs.push((
            topic.clone(),
            wire::sign_raw(1, false, body.len() as u32, &body, &topic, &keys),
        ));
    }
    // A zstd bomb: 256 MiB of zeros in a few KiB, declared as the largest body allowed.
    let bomb = zstd::bulk::compress(&vec![0u8; 256 << 20], 3).unwrap();
    msgs.push((
        topic.clone(),
        wire::sign_raw(2, true, wire::MAX_BODY_BYTES as u32, &bomb, &topic, &keys),
    ));
    // A 1 PiB file backed by one chunk.
    let huge = Content::File {
        size: 1 << 50,
        mode: 0o644,
        mtime_ns: 0,
        chunks: [ChunkRef {
            hash: [3; 32],
            len: 1 << 20,
        }]
        .into(),
    };
    msgs.push((
        topic.clone(),
        sign(&manifest("n3", vec![entry("huge.bin", "n3", 1, huge)])),
    ));
    let rejected = msgs.len();
    let dropped_before = log_count(c.nodes[1].as_ref().unwrap(), "dropping message");
    n3.publish_acked(&msgs);
    assert!(
        wait_until(T, || log_count(
            c.nodes[1].as_ref().unwrap(),
            "dropping message"
        ) >= dropped_before + rejected),
        "{}",
        node_log(&c, 1)
    );
    let log = node_log(&c, 1);
    for reason in [
        "malformed body",
        "decompression failed",
        "claims 1125899906842624 bytes",
    ] {
        assert!(log.contains(reason), "no {reason:?} in\n{log}");
    }

    // Valid paths through a symlink: the link itself syncs (never followed), what would
    // be written through it is refused.
    let link = entry(
        "esc",
        "n3",
        1,
        Content::Symlink {
            target: outside.join("etc").display().to_string(),
        },
    );
    let through = vec![
        entry(
            "esc/pwned.txt",
            "n3",
            1,
            Content::File {
                size: 0,
                mode: 0o644,
                mtime_ns: 0,
                chunks: Default::default(),
            },
        ),
        entry("esc/newdir", "n3", 1, Content::Dir { mode: 0o777 }),
        entry("esc/passwd", "n3", 5, Content::Deleted),
    ];
    n3.publish_acked(&[(topic.clone(), sign(&manifest("n3", vec![link])))]);
    assert!(wait_until(T, || fs::symlink_metadata(
        c.folder(0).join("esc")
    )
    .is_ok()
        && fs::symlink_metadata(c.folder(1).join("esc")).is_ok()));
    n3.publish_acked(&[(topic.clone(), sign(&manifest("n3", through)))]);
    assert!(
        wait_until(T, || node_log(&c, 0)
            .contains("refusing to write through it")
            && node_log(&c, 1).contains("refusing to write through it")),
        "{}",
        node_log(&c, 1)
    );

    // Memory stayed bounded: the bomb never expanded beyond the body limit.
    for i in 0..2 {
        let kib = peak_rss_kib(c.nodes[i].as_ref().unwrap());
        assert!(kib < 300 * 1024, "node {i} peaked at {kib} KiB");
    }
    fs::write(c.folder(0).join("after.txt"), b"still syncing").unwrap();
    c.converge(&[0, 1], T, |s| s.contains_key("after.txt"));
    assert_eq!(
        fs::read(outside.join("etc/passwd")).unwrap(),
        b"root:x:0:0\n"
    );
    assert_eq!(
        tree_digest(&outside),
        outside_before,
        "the sibling directory changed"
    );
    assert!(!Path::new("/tmp/mqsync-abs-escape").exists());
    assert_eq!(fs::read_dir(outside.join("etc")).unwrap().count(), 1);
}

/// rumqttd handshakes inside its accept loop: without mqsync's own TLS front, one idle
/// connection would keep every node out.
#[test]
fn idle_and_half_open_connections_do_not_keep_nodes_out() {
    let mut c = Cluster::new(2);
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(std::net::TcpStream::connect(("127.0.0.1", c.port)).unwrap());
    }
    // One that stops in the middle of a TLS ClientHello.
    let mut half = std::net::TcpStream::connect(("127.0.0.1", c.port)).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    idle.push(half);
    start_pair(&mut c);
    fs::write(c.folder(0).join("through.txt"), b"past the idle ones").unwrap();
    c.converge(&[0, 1], T, |s| s.contains_key("through.txt"));
    drop(idle);
}

/// n1's certificate publishes under its own id and under n2's: a subscriber sees only
/// the first.
fn acl_check(c: &Cluster, port: u16) {
    let watcher = Client::connect(c, port, "watcher", "n3", Some("mqsync/#"));
    let n1 = Client::connect(c, port, "n1-test", "n1", None);
    n1.publish(&data_topic("n1"), QoS::AtMostOnce, b"own".to_vec());
    assert!(wait_until(T, || watcher
        .received()
        .iter()
        .any(|(_, p)| p == b"own")));
    for topic in [data_topic("n2"), "mqsync/shared/status/n2".to_string()] {
        n1.publish(&topic, QoS::AtMostOnce, b"as n2".to_vec());
    }
    // A fresh connection (the embedded broker closes one that breaks the rule) proves
    // the rule, not a dead connection, stopped the forged ones.
    let again = Client::connect(c, port, "n1-again", "n1", None);
    again.publish(&data_topic("n1"), QoS::AtMostOnce, b"own again".to_vec());
    assert!(wait_until(T, || watcher
        .received()
        .iter()
        .any(|(_, p)| p == b"own again")));
    std::thread::sleep(Duration::from_millis(500));
    let got = watcher.received();
    assert!(
        !got.iter().any(|(_, p)| p == b"as n2"),
        "a publish under n2 got through: {got:?}"
    );
}

#[test]
fn the_shipped_mosquitto_acl_keeps_n1_out_of_n2s_topics() {
    let mut c = Cluster::with_broker(3, BrokerKind::Mosquitto);
    let port = free_port();
    let _broker = shipped_mosquitto(&c, port);
    acl_check(&c, port);
    // Everything mqsync itself publishes (data, status, last will) passes the ACL.
    // Both nodes also serve Docker volumes, whose announcements and mount reports must
    // pass the ACL too.
    let other = format!("127.0.0.1:{}", c.port);
    let sockets: Vec<_> = (0..2).map(|i| c.path(&format!("plugin{i}.sock"))).collect();
    for (i, sock) in sockets.iter().enumerate() {
        let root = c.path(&format!("volumes/{i}"));
        c.write_config(i, |t| {
            let t = t.replace(&other, &format!("127.0.0.1:{port}"));
            // [docker] before the [[folder]] table it would otherwise belong to.
            t.replacen(
                "[[folder]]",
                &format!(
                    "[docker]\nvolume_plugin = true\nvolumes_root = \"{}\"\nplugin_socket = \"{}\"\n\n[[folder]]",
                    root.display(),
                    sock.display()
                ),
                1,
            )
        });
    }
    start_pair(&mut c);
    fs::write(c.folder(1).join("acl.txt"), b"allowed").unwrap();
    c.converge(&[0, 1], T, |s| s.contains_key("acl.txt"));
    assert!(wait_until(T, || std::os::unix::net::UnixStream::connect(
        &sockets[1]
    )
    .is_ok()));
    let (code, _) = plugin_call(&sockets[0], "VolumeDriver.Create", r#"{"Name":"aclvol"}"#);
    assert_eq!(code, 200);
    assert!(
        wait_until(T, || c.path("volumes/1/aclvol/.mqsync").exists()),
        "the volume announcement did not pass the ACL"
    );
    let (code, _) = plugin_call(
        &sockets[1],
        "VolumeDriver.Mount",
        r#"{"Name":"aclvol","ID":"c"}"#,
    );
    assert_eq!(code, 200);
    assert!(
        wait_until(T, || {
            let (_, g) = plugin_call(&sockets[0], "VolumeDriver.Get", r#"{"Name":"aclvol"}"#);
            g["Volume"]["Status"]["mounted_on_other_nodes"] == "n2"
        }),
        "n2's mount report did not pass the ACL"
    );
    let watcher = Client::connect(&c, port, "status-watcher", "n3", Some("mqsync/+/status/+"));
    assert!(wait_until(T, || {
        let got = watcher.received();
        got.iter().any(|(t, _)| t.ends_with("/status/n1"))
            && got.iter().any(|(t, _)| t.ends_with("/status/n2"))
    }));
}

#[test]
fn the_embedded_broker_keeps_n1_out_of_n2s_topics() {
    let c = Cluster::new(3);
    acl_check(&c, c.port);
    let log = c.broker.as_ref().unwrap().log_text();
    assert!(log.contains("outside the topics of"), "{log}");
}

/// A node's own data messages do not come back to its connections (MQTT 3.1.1 has no
/// "no local"): the front drops them and acknowledges them to rumqttd in the node's
/// stead, so more of them than rumqttd's in-flight window (500) never stall the rest.
#[test]
fn the_embedded_broker_does_not_echo_a_nodes_own_data() {
    let c = Cluster::new(2);
    let sub = Client::connect(&c, c.port, "n1-sub", "n1", Some("mqsync/#"));
    let n1 = Client::connect(&c, c.port, "n1-pub", "n1", None);
    let n2 = Client::connect(&c, c.port, "n2-pub", "n2", None);
    let own: Vec<(String, Vec<u8>)> = (0..600)
        .map(|i| (data_topic("n1"), format!("own {i}").into_bytes()))
        .collect();
    n1.publish_acked(&own);
    // Interleaved with n2's messages, whose acknowledgements the subscriber sends
    // itself: rumqttd takes acks only in the order it sent the messages, and drops
    // the connection (losing messages) otherwise.
    for i in 0..300 {
        n1.publish(&data_topic("n1"), QoS::AtLeastOnce, b"own again".to_vec());
        n2.publish(
            &data_topic("n2"),
            QoS::AtLeastOnce,
            format!("n2 {i}").into_bytes(),
        );
    }
    assert!(
        wait_until(T, || sub
            .received()
            .iter()
            .filter(|(_, p)| p.starts_with(b"n2 "))
            .count()
            == 300),
        "n1's subscriber got {} of n2's 300 messages",
        sub.received()
            .iter()
            .filter(|(_, p)| p.starts_with(b"n2 "))
            .count()
    );
    n1.publish(&data_topic("n1"), QoS::AtMostOnce, b"own at QoS 0".to_vec());
    n1.publish_acked(&[("mqsync/shared/status/n1".to_string(), b"status".to_vec())]);
    n2.publish_acked(&[(data_topic("n2"), b"from n2".to_vec())]);
    assert!(
        wait_until(T, || {
            let got = sub.received();
            got.iter().any(|(_, p)| p == b"from n2") && got.iter().any(|(_, p)| p == b"status")
        }),
        "n1's subscriber missed n2's data or its own status: {:?}",
        sub.received()
    );
    let echoed: Vec<_> = sub
        .received()
        .into_iter()
        .filter(|(t, _)| *t == data_topic("n1"))
        .collect();
    assert!(echoed.is_empty(), "{} own messages came back", echoed.len());
    // Another node's certificate still receives n1's data.
    let other = Client::connect(&c, c.port, "n2-sub", "n2", Some("mqsync/+/v1/+"));
    n1.publish_acked(&[(data_topic("n1"), b"for n2".to_vec())]);
    assert!(wait_until(T, || other
        .received()
        .iter()
        .any(|(_, p)| p == b"for n2")));
}

/// Plain TCP only when asked for, and then said in the log and in status.
#[test]
fn plaintext_is_refused_unless_asked_for_and_then_reported() {
    let mut c = Cluster::with_broker(1, BrokerKind::Mosquitto);
    let port = free_port();
    let conf = c.path("plain.conf");
    fs::write(
        &conf,
        format!("user root\nlistener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .unwrap();
    let _plain = Proc::spawn_program(
        &mosquitto_bin(),
        &["-c", conf.to_str().unwrap()],
        &c.path("plain.log"),
    );
    assert!(wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    let tls_url = format!("mqtts://127.0.0.1:{}", c.port);
    let plain_url = format!("mqtt://127.0.0.1:{port}");
    let cfg = c.write_config(0, |t| t.replace(&tls_url, &plain_url));
    let out = std::process::Command::new(BIN)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("insecure_plaintext"), "{err}");

    c.write_config(0, |t| {
        t.replace(&tls_url, &plain_url)
            .replace("[broker]\n", "[broker]\ninsecure_plaintext = true\n")
    });
    c.start_node(0);
    let health = c.path("state/n1/health/shared.json");
    assert!(
        wait_until(T, || fs::read(&health)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(
                |d| d["insecure_plaintext"] == true && d["connected"] == true
            )),
        "{}",
        node_log(&c, 0)
    );
    assert!(node_log(&c, 0).contains("traffic is not encrypted"));
}

/// A group member's edit of a file as a patch of its chunk list plus a chunk delta:
/// receivers holding the base rebuild the chunk and apply it; a patch of a version they
/// do not hold makes them compare digests instead, and a delta that does not rebuild to
/// its hash makes them ask for the chunk whole. Nothing is written wrong meanwhile.
#[test]
fn patches_and_deltas_apply_only_against_what_a_node_holds() {
    use mqsync::protocol::delta::{ChunkDelta, DeltaOp};
    let mut c = Cluster::new(3);
    start_pair(&mut c);
    let mut old = vec![0u8; 3 << 20];
    rand::rngs::StdRng::seed_from_u64(31).fill(&mut old[..]);
    // Moved in whole: one version, {n1: 1}.
    fs::write(c.path("p.tmp"), &old).unwrap();
    fs::rename(c.path("p.tmp"), c.folder(0).join("p.bin")).unwrap();
    assert!(wait_until(T, || fs::read(c.folder(1).join("p.bin"))
        .is_ok_and(|d| d == old)));
    let (chunks, _) = mqsync::fs::chunks::chunk_path(&c.folder(1).join("p.bin")).unwrap();
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    let last = *chunks.last().unwrap();
    let last_at = old.len() - last.len as usize;
    // n3 rewrites the second half of the last chunk.
    let half = last.len as usize / 2;
    let mut new = old.clone();
    rand::rngs::StdRng::seed_from_u64(32).fill(&mut new[last_at + half..]);
    let new_last = ChunkRef {
        hash: mqsync::protocol::chunker::hash(&new[last_at..]),
        len: last.len,
    };
    let version = |n3: u64| {
        let mut v = VersionVector::new();
        for _ in 0..50 {
            v = v.incremented("n1");
        }
        for _ in 0..n3 {
            v = v.incremented("n3");
        }
        v
    };
    let patch = |base: [u8; 32], version: VersionVector, chunk: ChunkRef| wire::FilePatch {
        path: RelPath::new("p.bin").unwrap(),
        version,
        modified_by: "n3".into(),
        changed_ms: now_ms(),
        size: old.len() as u64,
        mode: 0o644,
        mtime_ns: 1_700_000_000_000_000_000,
        base,
        keep_front: chunks.len() as u32 - 1,
        keep_back: 0,
        chunks: vec![chunk],
        attrs: None,
    };
    let keys = group_keys(&c);
    let n3 = Client::connect(&c, c.port, "n3-test", "n3", None);
    let topic = data_topic("n3");
    let sign = |msg: Message| {
        let env = Envelope {
            from: "n3".into(),
            msg,
        };
        (topic.clone(), wire::encode(&env, &topic, &keys).unwrap())
    };
    let base = wire::chunk_list_id(&chunks);

    // A patch of a list nobody holds changes nothing.
    n3.publish_acked(&[sign(Message::Patch {
        patches: vec![patch([7; 32], version(1), new_last)],
    })]);
    for i in 0..2 {
        assert!(
            wait_until(T, || node_log(&c, i)
                .contains("patch of a version this node does not hold")),
            "{}",
            node_log(&c, i)
        );
    }
    // The real base, and the changed chunk as a delta of the old one.
    let delta = |hash: [u8; 32], data: Vec<u8>| ChunkDelta {
        hash,
        len: last.len,
        bases: vec![last.hash],
        ops: vec![
            DeltaOp::Copy {
                base: 0,
                offset: 0,
                len: half as u32,
            },
            DeltaOp::Data(data),
        ],
    };
    n3.publish_acked(&[
        sign(Message::Patch {
            patches: vec![patch(base, version(2), new_last)],
        }),
        sign(Message::Deltas {
            deltas: vec![delta(new_last.hash, new[last_at + half..].to_vec())],
        }),
    ]);
    for i in 0..2 {
        assert!(
            wait_until(T, || fs::read(c.folder(i).join("p.bin"))
                .is_ok_and(|d| d == new)),
            "node {i} never applied the patch\n{}",
            node_log(&c, i)
        );
    }
    // A delta whose bytes do not hash to its chunk is refused, and the chunk asked for.
    let mut wrong = new.clone();
    wrong[last_at + half] ^= 1;
    let third = ChunkRef {
        hash: [9; 32],
        len: last.len,
    };
    let (new_chunks, _) = mqsync::fs::chunks::chunk_path(&c.folder(1).join("p.bin")).unwrap();
    n3.publish_acked(&[
        sign(Message::Patch {
            patches: vec![patch(wire::chunk_list_id(&new_chunks), version(3), third)],
        }),
        sign(Message::Deltas {
            deltas: vec![delta(third.hash, wrong[last_at + half..].to_vec())],
        }),
    ]);
    for i in 0..2 {
        assert!(
            wait_until(T, || node_log(&c, i).contains("asking for it whole")),
            "{}",
            node_log(&c, i)
        );
        assert_eq!(fs::read(c.folder(i).join("p.bin")).unwrap(), new);
        assert!(c.nodes[i].as_mut().unwrap().is_running());
    }
    // A delta that arrives before the patch that needs it is kept: this writer never
    // answers a chunk request, so the file only arrives if the rebuilt chunk waited.
    let mut newer = new.clone();
    rand::rngs::StdRng::seed_from_u64(33).fill(&mut newer[last_at..last_at + half]);
    let newer_last = ChunkRef {
        hash: mqsync::protocol::chunker::hash(&newer[last_at..]),
        len: last.len,
    };
    let early = ChunkDelta {
        hash: newer_last.hash,
        len: last.len,
        bases: vec![new_last.hash],
        ops: vec![
            DeltaOp::Data(newer[last_at..last_at + half].to_vec()),
            DeltaOp::Copy {
                base: 0,
                offset: half as u32,
                len: last.len - half as u32,
            },
        ],
    };
    n3.publish_acked(&[
        sign(Message::Deltas {
            deltas: vec![early],
        }),
        sign(Message::Patch {
            patches: vec![patch(
                wire::chunk_list_id(&new_chunks),
                version(4),
                newer_last,
            )],
        }),
    ]);
    for i in 0..2 {
        assert!(
            wait_until(T, || fs::read(c.folder(i).join("p.bin"))
                .is_ok_and(|d| d == newer)),
            "node {i} dropped a delta that came before its patch\n{}",
            node_log(&c, i)
        );
    }
}
