//! The Docker volume plugin (`[docker] volume_plugin = true`, docs/VOLUMES.md): three
//! mqsync processes, each with its own volumes root and plugin socket, against the
//! embedded broker. Node n1's socket sits in `/run/docker/plugins`, so this machine's
//! Docker engine uses it as a volume driver; n2 and n3 are reached through their
//! sockets directly, as the engines of other hosts would.

mod common;

use common::{
    Cluster, plugin_call as call, plugin_exchange as exchange, rogue_publish, wait_until,
};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// The `Status` that a node's `VolumeDriver.Get` reports for `vol`.
fn volume_status(sock: &Path, vol: &str) -> Value {
    let (_, g) = call(sock, "VolumeDriver.Get", &format!(r#"{{"Name":"{vol}"}}"#));
    g["Volume"]["Status"].clone()
}

fn err_of(v: &Value) -> &str {
    v["Err"].as_str().unwrap_or("")
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docker_available() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Volumes {
    cluster: Cluster,
    sockets: Vec<PathBuf>,
    roots: Vec<PathBuf>,
    /// n1's plugin id when it runs as a managed plugin: its output is in dockerd's log.
    plugin_id: Option<String>,
}

impl Volumes {
    /// Three nodes serving volumes as processes; n1's socket is `n1_socket`.
    fn start(n1_socket: PathBuf) -> Volumes {
        Volumes::start_nodes(n1_socket, &[0, 1, 2])
    }

    /// Configures three nodes and starts those in `run` as processes (a node left out
    /// runs elsewhere, e.g. as a managed plugin).
    fn start_nodes(n1_socket: PathBuf, run: &[usize]) -> Volumes {
        let mut cluster = Cluster::new(3);
        let mut sockets = vec![n1_socket];
        for i in 1..3 {
            sockets.push(cluster.path(&format!("{}.sock", cluster.names[i])));
        }
        let mut roots = Vec::new();
        for (i, sock) in sockets.iter().enumerate() {
            let root = cluster.path(&format!("volumes/{}", cluster.names[i]));
            roots.push(root.clone());
            let sock = sock.clone();
            cluster.write_config(i, |t| {
                // No [[folder]]: a node may serve volumes only.
                let head = t.split("[[folder]]").next().unwrap_or_default().to_string();
                format!(
                    "{head}[docker]\nvolume_plugin = true\nvolumes_root = \"{}\"\nplugin_socket = \"{}\"\n",
                    root.display(),
                    sock.display()
                )
            });
            if run.contains(&i) {
                cluster.start_node(i);
            }
        }
        for &i in run {
            let s = &sockets[i];
            assert!(
                wait_until(WAIT, || UnixStream::connect(s).is_ok()),
                "plugin socket {} did not appear",
                s.display()
            );
        }
        Volumes {
            cluster,
            sockets,
            roots,
            plugin_id: None,
        }
    }

    fn root(&self, i: usize) -> PathBuf {
        self.roots[i].clone()
    }

    fn all_running(&mut self) -> bool {
        self.cluster
            .nodes
            .iter_mut()
            .all(|n| n.as_mut().is_some_and(|p| p.is_running()))
    }

    fn logs(&self) -> String {
        let mut logs: Vec<String> = self
            .cluster
            .nodes
            .iter()
            .flatten()
            .map(|p| p.log_text())
            .collect();
        // dockerd logs a managed plugin's output with its id; where dockerd's log is
        // depends on how it was started (this is where the CI machine's goes).
        if let Some(id) = &self.plugin_id {
            let dockerd = std::fs::read_to_string("/var/log/dockerd.log").unwrap_or_default();
            logs.push(format!("n1 (plugin {id}), from /var/log/dockerd.log:"));
            logs.extend(
                dockerd
                    .lines()
                    .filter(|l| l.contains(id.as_str()))
                    .map(String::from),
            );
        }
        logs.join("\n")
    }
}

#[test]
fn the_plugin_answers_malformed_requests_with_errors_and_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = Volumes::start(dir.path().join("n1.sock"));
    let s = v.sockets[0].clone();

    let (code, body) = call(&s, "Plugin.Activate", "");
    assert_eq!(code, 200);
    assert_eq!(body["Implements"][0], "VolumeDriver");
    let (code, body) = call(&s, "VolumeDriver.Capabilities", "{}");
    assert_eq!(
        (code, &body["Capabilities"]["Scope"]),
        (200, &Value::from("global"))
    );

    // Every malformed or refused request gets {"Err": "..."} with a reason.
    let cases: Vec<(&str, String, &str)> = vec![
        ("VolumeDriver.Create", "{".into(), "malformed request body"),
        ("VolumeDriver.Create", "{}".into(), "malformed request body"),
        (
            "VolumeDriver.Create",
            r#"{"Name":7}"#.into(),
            "malformed request body",
        ),
        (
            "VolumeDriver.Create",
            r#"{"Name":"../etc"}"#.into(),
            "invalid volume name",
        ),
        (
            "VolumeDriver.Create",
            r#"{"Name":"a/b"}"#.into(),
            "invalid volume name",
        ),
        (
            "VolumeDriver.Create",
            format!(r#"{{"Name":"{}"}}"#, "x".repeat(300)),
            "invalid volume name",
        ),
        (
            "VolumeDriver.Create",
            r#"{"Name":"ok","Opts":{"size":"1G"}}"#.into(),
            "unknown option",
        ),
        (
            "VolumeDriver.Create",
            r#"{"Name":"ok","Opts":{"mode":"sideways"}}"#.into(),
            "option mode",
        ),
        (
            "VolumeDriver.Create",
            r#"{"Name":"ok","Opts":{"ignore":"a["}}"#.into(),
            "option ignore",
        ),
        (
            "VolumeDriver.Mount",
            r#"{"Name":"nope","ID":"c1"}"#.into(),
            "no such volume",
        ),
        (
            "VolumeDriver.Mount",
            r#"{"Name":"nope"}"#.into(),
            "ID must be",
        ),
        (
            "VolumeDriver.Remove",
            r#"{"Name":"nope"}"#.into(),
            "no such volume",
        ),
        (
            "VolumeDriver.Get",
            r#"{"Name":"nope"}"#.into(),
            "no such volume",
        ),
        (
            "VolumeDriver.Path",
            "[1,2]".into(),
            "malformed request body",
        ),
        ("VolumeDriver.Explode", "{}".into(), "unknown endpoint"),
    ];
    for (endpoint, body, want) in &cases {
        let (code, reply) = call(&s, endpoint, body);
        assert!(code >= 400, "{endpoint} {body}: status {code}");
        assert!(
            err_of(&reply).contains(want),
            "{endpoint} {body}: Err {:?} lacks {want:?}",
            err_of(&reply)
        );
    }
    // Not POST; a body over the limit; bytes that are not HTTP at all.
    let (code, reply) = exchange(
        &s,
        b"GET /Plugin.Activate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 405);
    assert!(err_of(&reply).contains("POST"));
    let big = format!(r#"{{"Name":"{}"}}"#, "a".repeat(200_000));
    let (code, reply) = call(&s, "VolumeDriver.Create", &big);
    assert_eq!(code, 413);
    assert!(err_of(&reply).contains("over"));
    let mut junk = UnixStream::connect(&s).unwrap();
    junk.write_all(b"\x00\xffnot http\r\n\r\n").unwrap();
    junk.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    let _ = junk.read_to_end(&mut sink);
    // A client that connects and says nothing does not block the others.
    let _idle = UnixStream::connect(&s).unwrap();

    // Forged documents from a client with a broker certificate but not the group key:
    // an announcement, junk, and a mount report that would block every removal.
    let (code, _) = call(&s, "VolumeDriver.Create", r#"{"Name":"real"}"#);
    assert_eq!(code, 200);
    // Once "real" is everywhere, every node is subscribed and sees what comes next.
    for i in 0..3 {
        assert!(
            wait_until(WAIT, || v.root(i).join("real/.mqsync").exists()),
            "volume real missing on node {i}"
        );
    }
    let forged = [
        ("mqsync/v1/volumes/evil", forged_announcement("evil")),
        ("mqsync/v1/volumes/junk", b"\xff not json".to_vec()),
        ("mqsync/v1/volume-mounts/n3", forged_mounts("n3", "real")),
    ];
    rogue_publish(&v.cluster, &forged, true);
    // Clear the retained junk so it does not outlive the test's broker.
    let cleared: Vec<(&str, Vec<u8>)> = forged.iter().map(|(t, _)| (*t, Vec::new())).collect();
    rogue_publish(&v.cluster, &cleared, true);
    assert!(
        wait_until(WAIT, || v.logs().matches("dropping volume message").count()
            >= 6),
        "forged volume messages were not all dropped:\n{}",
        v.logs()
    );
    for i in 0..3 {
        assert!(
            !v.root(i).join("evil").exists(),
            "forged volume created on node {i}"
        );
    }
    let (code, reply) = call(&v.sockets[1], "VolumeDriver.Remove", r#"{"Name":"real"}"#);
    assert_eq!(
        (code, err_of(&reply)),
        (200, ""),
        "the forged mount report counted"
    );

    assert!(v.all_running(), "a node exited:\n{}", v.logs());
    let (code, reply) = call(&s, "VolumeDriver.List", "{}");
    assert_eq!(code, 200, "{reply}");
    assert_eq!(err_of(&reply), "");
    assert_eq!(reply["Volumes"], Value::Array(vec![]));
    // The refusals were logged.
    assert!(
        wait_until(WAIT, || v.logs().contains("plugin request refused")),
        "no refusal logged"
    );
}

fn rogue_key() -> mqsync::protocol::wire::Keys {
    mqsync::protocol::wire::Keys::new(vec![mqsync::protocol::wire::Keys::derive(
        b"not the group key",
    )])
    .unwrap()
}

fn forged_announcement(name: &str) -> Vec<u8> {
    let a = mqsync::volumes::registry::Announcement {
        name: name.into(),
        generation: "0".into(),
        present: true,
        mode: mqsync::config::Mode::SendReceive,
        ignore: vec![],
        ownership: Default::default(),
        xattrs: false,
        creator: "n3".into(),
        created_ms: u64::MAX / 2,
        node: "n3".into(),
        updated_ms: u64::MAX / 2,
    };
    mqsync::volumes::messages::encode_announcement(&a, "mqsync", &rogue_key())
}

fn forged_mounts(node: &str, volume: &str) -> Vec<u8> {
    let mut r = mqsync::volumes::registry::MountReport {
        node: node.into(),
        ..Default::default()
    };
    r.mounted.insert(volume.into(), 1);
    mqsync::volumes::messages::encode_mounts(&r, "mqsync", &rogue_key())
}

/// The volume on every node, driven through the plugin API alone (no engine needed):
/// create on n2, write on n3, refuse removal while n1 mounts it, remove everywhere.
#[test]
fn a_volume_created_on_one_node_syncs_everywhere_and_is_removed_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = Volumes::start(dir.path().join("n1.sock"));
    let (code, r) = call(
        &v.sockets[1],
        "VolumeDriver.Create",
        r#"{"Name":"web","Opts":{"ignore":"*.tmp"}}"#,
    );
    assert_eq!((code, err_of(&r)), (200, ""), "{r}");
    for i in [0, 2] {
        assert!(
            wait_until(WAIT, || v.root(i).join("web").join(".mqsync").exists()),
            "volume did not appear on node {i}:\n{}",
            v.logs()
        );
        let (_, r) = call(&v.sockets[i], "VolumeDriver.List", "{}");
        assert_eq!(r["Volumes"][0]["Name"], "web", "{r}");
    }
    // Creating it again with the same options is fine; with others it is refused.
    let (code, _) = call(&v.sockets[0], "VolumeDriver.Create", r#"{"Name":"web"}"#);
    assert_eq!(code, 200);
    let (code, r) = call(
        &v.sockets[0],
        "VolumeDriver.Create",
        r#"{"Name":"web","Opts":{"mode":"receive-only"}}"#,
    );
    assert_eq!(code, 500);
    assert!(err_of(&r).contains("other options"), "{r}");

    std::fs::write(v.root(2).join("web/index.html"), b"<h1>from n3</h1>\n").unwrap();
    std::fs::write(v.root(2).join("web/skip.tmp"), b"ignored").unwrap();
    for i in [0, 1] {
        let f = v.root(i).join("web/index.html");
        assert!(
            wait_until(WAIT, || std::fs::read(&f).ok().as_deref()
                == Some(b"<h1>from n3</h1>\n")),
            "index.html did not reach node {i}"
        );
        assert!(
            !v.root(i).join("web/skip.tmp").exists(),
            "ignored file was synced"
        );
    }

    let (code, r) = call(
        &v.sockets[0],
        "VolumeDriver.Mount",
        r#"{"Name":"web","ID":"c1"}"#,
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["Mountpoint"].as_str(), v.root(0).join("web").to_str());
    // Containers keep their mounts while mqsync restarts: n1 remembers its mount.
    v.cluster.stop_node(0);
    v.cluster.start_node(0);
    assert!(wait_until(WAIT, || UnixStream::connect(&v.sockets[0]).is_ok()));
    let (_, g) = call(&v.sockets[0], "VolumeDriver.Get", r#"{"Name":"web"}"#);
    assert_eq!(g["Volume"]["Status"]["mounts_here"], 1, "{g}");
    assert!(
        wait_until(
            WAIT,
            || volume_status(&v.sockets[1], "web")["mounted_on_other_nodes"] == "n1"
        ),
        "n2 never saw n1's mount"
    );
    let (code, r) = call(&v.sockets[1], "VolumeDriver.Remove", r#"{"Name":"web"}"#);
    assert_eq!(code, 500);
    assert!(err_of(&r).contains("mounted on node(s) n1"), "{r}");
    assert!(
        v.root(1).join("web/index.html").exists(),
        "refused removal deleted data"
    );

    let (code, _) = call(
        &v.sockets[0],
        "VolumeDriver.Unmount",
        r#"{"Name":"web","ID":"c1"}"#,
    );
    assert_eq!(code, 200);
    assert!(
        wait_until(
            WAIT,
            || volume_status(&v.sockets[1], "web")["mounted_on_other_nodes"] == ""
        ),
        "n2 never saw the unmount"
    );
    let (code, r) = call(&v.sockets[1], "VolumeDriver.Remove", r#"{"Name":"web"}"#);
    assert_eq!((code, err_of(&r)), (200, ""), "{r}");
    for i in 0..3 {
        assert!(
            wait_until(WAIT, || !v.root(i).join("web").exists()),
            "volume not deleted on node {i}:\n{}",
            v.logs()
        );
        let (_, r) = call(&v.sockets[i], "VolumeDriver.List", "{}");
        assert_eq!(r["Volumes"], Value::Array(vec![]), "node {i}: {r}");
    }
    // Created again: a new, empty generation on every node.
    let (code, _) = call(&v.sockets[2], "VolumeDriver.Create", r#"{"Name":"web"}"#);
    assert_eq!(code, 200);
    for i in 0..3 {
        assert!(
            wait_until(WAIT, || v.root(i).join("web/.mqsync").exists()),
            "re-created volume missing on node {i}"
        );
        assert!(!v.root(i).join("web/index.html").exists());
    }
}

/// Cleans up what the engine test creates, on every exit path.
struct DockerGuard {
    container: String,
    volume: String,
    image: String,
}

impl Drop for DockerGuard {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.container]);
        let _ = docker(&["volume", "rm", "-f", &self.volume]);
        let _ = docker(&["rmi", "-f", &self.image]);
    }
}

/// Node n1 as a managed Docker plugin (compose/build-plugin, docs/VOLUMES.md), which
/// `docker plugin rm` takes out of the engine for good. A legacy plugin (a bare socket
/// in /run/docker/plugins) stays registered in the engine until dockerd restarts, and
/// once its socket is gone the engine retries it for 15 s on every volume lookup: that
/// broke later `docker-compose up` runs on the same engine.
struct ManagedPlugin {
    name: String,
    id: String,
}

impl ManagedPlugin {
    /// Builds the plugin from this build's binary, points its mounts at n1's files and
    /// enables it; returns n1's plugin socket and volumes root as the host sees them.
    fn install(name: &str, v: &Volumes) -> (ManagedPlugin, PathBuf, PathBuf) {
        // A run that was killed may have left the plugin behind.
        let _ = docker(&["plugin", "disable", "-f", name]);
        let _ = docker(&["plugin", "rm", "-f", name]);
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(repo.join("compose/build-plugin"))
            .args(["--name", name, "--binary", env!("CARGO_BIN_EXE_mqsync")])
            .output()
            .expect("compose/build-plugin runs");
        assert!(
            out.status.success(),
            "compose/build-plugin failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut plugin = ManagedPlugin {
            name: name.to_string(),
            id: String::new(),
        };
        // The plugin sees the test directory at /etc/mqsync (read-only) and keeps its
        // state in a directory of its own; config.json sets state_dir and [docker].
        let dir = v.cluster.dir.path();
        let text = std::fs::read_to_string(v.cluster.path("n1.toml")).unwrap();
        let text = text.replace(dir.to_str().unwrap(), "/etc/mqsync");
        std::fs::write(v.cluster.path("mqsync.toml"), text).unwrap();
        let state = v.cluster.path("state/n1-plugin");
        std::fs::create_dir_all(&state).unwrap();
        docker_ok(&[
            "plugin",
            "set",
            name,
            &format!("config.source={}", dir.display()),
            &format!("state.source={}", state.display()),
        ]);
        docker_ok(&["plugin", "enable", name]);
        plugin.id = docker_ok(&["plugin", "inspect", "--format", "{{.Id}}", name])
            .trim()
            .to_string();
        let id = plugin.id.as_str();
        let docker_root = docker_ok(&["info", "--format", "{{.DockerRootDir}}"]);
        let socket = PathBuf::from(format!("/run/docker/plugins/{id}/mqsync.sock"));
        let root = Path::new(docker_root.trim())
            .join("plugins")
            .join(id)
            .join("propagated-mount");
        assert!(
            wait_until(WAIT, || UnixStream::connect(&socket).is_ok()),
            "the plugin's socket {} did not appear",
            socket.display()
        );
        (plugin, socket, root)
    }
}

impl Drop for ManagedPlugin {
    fn drop(&mut self) {
        let _ = docker(&["plugin", "disable", "-f", &self.name]);
        let _ = docker(&["plugin", "rm", "-f", &self.name]);
    }
}

/// Holds an exclusive lock on the engine test until dropped.
fn engine_lock() -> std::fs::File {
    let f = std::fs::File::create(std::env::temp_dir().join("mqsync-volume-test.lock")).unwrap();
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    f
}

/// A tiny image from Debian's static busybox (no registry is reachable).
fn import_busybox(image: &str, dir: &Path) {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (scripts/test installs it)");
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let tar = dir.join("rootfs.tar");
    let ok = Command::new("tar")
        .args([
            "-C",
            root.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar failed");
    docker_ok(&["import", tar.to_str().unwrap(), image]);
}

#[test]
fn docker_volume_create_mount_and_rm_through_the_engine() {
    if !docker_available() {
        eprintln!("skipped: no Docker engine answers (CI machines have one)");
        return;
    }
    // One plugin name per engine; the lock keeps concurrent runs on it apart.
    let _lock = engine_lock();
    let id = std::process::id();
    let mut v = Volumes::start_nodes(PathBuf::new(), &[1, 2]);
    let (plugin, socket, root) = ManagedPlugin::install("mqsync-test", &v);
    v.sockets[0] = socket;
    v.roots[0] = root;
    v.plugin_id = Some(plugin.id.clone());
    // Users name the plugin without its tag; the engine lists it with one.
    let (driver, listed_as) = ("mqsync-test", "mqsync-test:latest");
    // Declared after the plugin, so it is dropped first, while the plugin still answers
    // the engine's unmount and remove calls.
    let guard = DockerGuard {
        container: format!("mqsync-voltest-{id}"),
        volume: format!("demo{id}"),
        image: format!("mqsync-voltest-busybox:{id}"),
    };
    let dir = tempfile::tempdir().unwrap();
    import_busybox(&guard.image, dir.path());
    let vol = guard.volume.as_str();

    let t0 = Instant::now();
    docker_ok(&["volume", "create", "-d", driver, vol]);
    let created = t0.elapsed();
    let listed = docker_ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert!(
        listed.contains(&format!("{listed_as} {vol}")),
        "docker volume ls:\n{listed}"
    );
    for i in [1, 2] {
        assert!(
            wait_until(WAIT, || v.root(i).join(vol).join(".mqsync").exists()),
            "volume did not appear on node {i}:\n{}",
            v.logs()
        );
    }
    eprintln!(
        "docker volume create took {created:?}; the volume existed on the other nodes {:?} after it started",
        t0.elapsed()
    );

    // A container writes into the volume; the file reaches the other nodes.
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &guard.container,
        "-v",
        &format!("{vol}:/data"),
        &guard.image,
        "/bin/sh",
        "-c",
        "echo hello from the container > /data/from-container.txt; while true; do sleep 1; done",
    ]);
    let want = b"hello from the container\n";
    for i in 0..3 {
        let f = v.root(i).join(vol).join("from-container.txt");
        assert!(
            wait_until(WAIT, || std::fs::read(&f).ok().as_deref()
                == Some(&want[..])),
            "the container's file did not reach node {i}:\n{}",
            v.logs()
        );
    }
    // A change on another node appears inside the container's mount.
    std::fs::write(v.root(2).join(vol).join("from-n3.txt"), b"written on n3\n").unwrap();
    assert!(
        wait_until(WAIT, || {
            let out = docker(&["exec", &guard.container, "cat", "/data/from-n3.txt"]);
            out.status.success() && out.stdout == b"written on n3\n"
        }),
        "n3's file never appeared in the container"
    );

    // Refused while a container uses it (the engine's own check) ...
    let out = docker(&["volume", "rm", vol]);
    assert!(!out.status.success(), "volume removed while in use");
    // ... and while another node reports it mounted (mqsync's check).
    let (code, _) = call(
        &v.sockets[1],
        "VolumeDriver.Mount",
        &format!(r#"{{"Name":"{vol}","ID":"on-n2"}}"#),
    );
    assert_eq!(code, 200);
    docker_ok(&["rm", "-f", &guard.container]);
    assert!(
        wait_until(WAIT, || {
            let st = volume_status(&v.sockets[0], vol);
            st["mounted_on_other_nodes"] == "n2" && st["mounts_here"] == 0
        }),
        "n1 never saw n2's mount or the container's unmount"
    );
    let out = docker(&["volume", "rm", vol]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "volume removed while mounted on n2");
    assert!(
        stderr.contains("mounted on node(s) n2"),
        "docker said: {stderr}"
    );
    call(
        &v.sockets[1],
        "VolumeDriver.Unmount",
        &format!(r#"{{"Name":"{vol}","ID":"on-n2"}}"#),
    );
    assert!(
        wait_until(
            WAIT,
            || volume_status(&v.sockets[0], vol)["mounted_on_other_nodes"] == ""
        ),
        "n1 never saw n2's unmount"
    );
    docker_ok(&["volume", "rm", vol]);
    for i in 0..3 {
        assert!(
            wait_until(WAIT, || !v.root(i).join(vol).exists()),
            "volume not deleted on node {i}"
        );
    }
    let listed = docker_ok(&["volume", "ls", "--format", "{{.Name}}"]);
    assert!(!listed.lines().any(|l| l == vol), "still listed:\n{listed}");
    drop(guard);
    drop(plugin);
    drop(v);
}
