//! A real broker cluster: three RabbitMQ members (Debian's `rabbitmq-server` with its
//! MQTT plugin over mutual TLS, the certificates of `mqsync certs init`), joined with
//! `rabbitmqctl join_cluster`, each node of mqsync connected to a different member.
//! Files written on any node, a large one among them, and a deletion converge on all.
//! The members run on 127.0.0.1 with their own node names, ports, data directories,
//! Erlang cookie and epmd, so nothing of the machine's own RabbitMQ is touched. Says
//! SKIPPED when rabbitmq-server is not installed (scripts/test installs it).

mod common;

use common::*;
use rand::{RngCore, SeedableRng};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(300);
/// How long a member may take to start, or a `rabbitmqctl` command to finish, on a
/// busy machine.
const START: Duration = Duration::from_secs(180);
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// One member: its node name, ports, and the process group of its Erlang VM.
struct Member {
    name: String,
    mqtt: u16,
    log: PathBuf,
    child: Option<Child>,
}

/// A RabbitMQ cluster of three members and their own epmd, all killed on drop (each in
/// its own process group, so the VM and its helper processes go with it).
struct Rabbit {
    dir: PathBuf,
    epmd_port: u16,
    epmd: Option<Child>,
    members: Vec<Member>,
}

impl Rabbit {
    fn start(dir: &Path, certs: &Path) -> Rabbit {
        fs::create_dir_all(dir).unwrap();
        // The cookie Erlang nodes and rabbitmqctl authenticate with, read from $HOME.
        let cookie = dir.join(".erlang.cookie");
        fs::write(&cookie, "mqsynctestcookie").unwrap();
        fs::set_permissions(&cookie, fs::Permissions::from_mode(0o400)).unwrap();
        let epmd_port = free_port();
        let mut r = Rabbit {
            dir: dir.to_path_buf(),
            epmd_port,
            epmd: None,
            members: Vec::new(),
        };
        r.epmd = Some(
            Command::new("epmd")
                .args(["-port", &epmd_port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("epmd (erlang-base) not found"),
        );
        assert!(wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", epmd_port)).is_ok()
        }));
        for i in 1..=3 {
            let m = r.spawn_member(&format!("r{i}"), certs);
            r.members.push(m);
        }
        for m in &r.members {
            r.wait_log(m, "Server startup complete");
        }
        // r2 and r3 join r1's cluster, the documented way.
        for m in &r.members[1..] {
            for args in [
                vec!["stop_app"],
                vec!["join_cluster", "r1@localhost"],
                vec!["start_app"],
            ] {
                r.ctl(&m.name, &args);
            }
        }
        let status = r.ctl("r1", &["cluster_status"]);
        let running = status.split("Running Nodes").nth(1).unwrap_or_default();
        for m in &r.members {
            assert!(
                running.contains(&format!("{}@localhost", m.name)),
                "{} is not a running member:\n{status}",
                m.name
            );
        }
        for m in &r.members {
            let port = m.mqtt;
            assert!(
                wait_until(START, || std::net::TcpStream::connect(("127.0.0.1", port))
                    .is_ok()),
                "MQTT listener of {} did not come up",
                m.name
            );
        }
        r
    }

    /// The environment that makes the packaged scripts use this test's files only.
    fn env(&self, cmd: &mut Command, name: &str) {
        let d = self.dir.join(name);
        cmd.env("HOME", &self.dir)
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_NODENAME", format!("{name}@localhost"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_GENERATED_CONFIG_DIR", d.join("generated"))
            .env("RABBITMQ_SCHEMA_DIR", d.join("schema"))
            .env("RABBITMQ_LOGS", "-");
    }

    fn spawn_member(&self, name: &str, certs: &Path) -> Member {
        let d = self.dir.join(name);
        fs::create_dir_all(&d).unwrap();
        let (amqp, dist, mqtt) = (free_port(), free_port(), free_port());
        let c = certs.display();
        // MQTT over mutual TLS only; clients authenticate by certificate and log in as
        // the default user (mqsync sends no user name).
        let conf = format!(
            "listeners.tcp.default = 127.0.0.1:{amqp}\n\
             mqtt.listeners.tcp = none\n\
             mqtt.listeners.ssl.default = 127.0.0.1:{mqtt}\n\
             ssl_options.cacertfile = {c}/ca.pem\n\
             ssl_options.certfile = {c}/broker.pem\n\
             ssl_options.keyfile = {c}/broker.key\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n\
             mqtt.allow_anonymous = true\n\
             loopback_users = none\n"
        );
        fs::write(d.join("rabbitmq.conf"), conf).unwrap();
        fs::write(d.join("enabled_plugins"), "[rabbitmq_mqtt].\n").unwrap();
        let log = self.dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).unwrap();
        let mut cmd = Command::new(SERVER);
        self.env(&mut cmd, name);
        let child = cmd
            .env("RABBITMQ_NODE_PORT", amqp.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap();
        Member {
            name: name.to_string(),
            mqtt,
            log,
            child: Some(child),
        }
    }

    fn wait_log(&self, m: &Member, line: &str) {
        let ok = wait_until(START, || {
            fs::read_to_string(&m.log).is_ok_and(|l| l.contains(line))
        });
        assert!(
            ok,
            "{} did not log {line:?}:\n{}",
            m.name,
            fs::read_to_string(&m.log).unwrap_or_default()
        );
    }

    /// `rabbitmqctl -n NAME@localhost ARGS`, which must succeed within [`START`].
    fn ctl(&self, name: &str, args: &[&str]) -> String {
        let mut cmd = Command::new(CTL);
        self.env(&mut cmd, name);
        let mut child = cmd
            .args(["-n", &format!("{name}@localhost")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + START;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                kill_group(&mut child);
                panic!("rabbitmqctl {args:?} on {name} did not finish within {START:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} on {name}: {text}"
        );
        text
    }
}

fn kill_group(child: &mut Child) {
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                kill_group(&mut c);
            }
        }
        if let Some(mut e) = self.epmd.take() {
            kill_group(&mut e);
        }
    }
}

#[test]
fn nodes_on_three_members_of_a_rabbitmq_cluster_converge() {
    if !Path::new(SERVER).exists() {
        eprintln!(
            "SKIPPED: rabbitmq-server is not installed (scripts/test installs it: \
             apt-get install --no-install-recommends rabbitmq-server)"
        );
        return;
    }
    let mut c = Cluster::new(3);
    // The nodes use the cluster, not the broker the fixture starts.
    c.kill_broker();
    let rabbit = Rabbit::start(&c.path("rabbitmq"), &c.path("certs"));
    for i in 0..3 {
        let port = rabbit.members[i].mqtt;
        let old = format!("127.0.0.1:{}", c.port);
        c.write_config(i, |t| t.replace(&old, &format!("127.0.0.1:{port}")));
        c.start_node(i);
    }
    let (a, b, n3) = (c.folder(0), c.folder(1), c.folder(2));
    assert!(wait_until(T, || (0..3).all(|i| c.folder(i).join(".mqsync").exists())));
    for i in 0..200 {
        fs::write(
            a.join(format!("a{i:03}.txt")),
            format!("from r1's node {i}\n"),
        )
        .unwrap();
    }
    fs::create_dir_all(b.join("dir/sub")).unwrap();
    fs::write(b.join("dir/sub/from-b.txt"), b"b").unwrap();
    let mut big = vec![0u8; 12 << 20];
    rand::rngs::StdRng::seed_from_u64(3).fill_bytes(&mut big);
    fs::write(n3.join("big.bin"), &big).unwrap();
    c.converge(&[0, 1, 2], T, |s| {
        s.contains_key("a199.txt")
            && s.contains_key("dir/sub/from-b.txt")
            && s.get("big.bin")
                .is_some_and(|v| v.contains(&format!(" {} ", 12u64 << 20)))
    });
    assert_eq!(fs::read(a.join("big.bin")).unwrap(), big);
    // A deletion and an edit, from nodes on different members.
    fs::remove_file(n3.join("a000.txt")).unwrap();
    fs::write(a.join("dir/sub/from-b.txt"), b"edited on r1's node").unwrap();
    c.converge(&[0, 1, 2], T, |s| {
        !s.contains_key("a000.txt")
            && s.get("dir/sub/from-b.txt")
                .is_some_and(|v| v.contains(&format!(" {} ", 19)))
    });
    for i in 0..3 {
        c.stop_node(i);
    }
}
