//! Every example config under `config/` must load and validate (paths need not exist).

use std::path::Path;

use mqsync::config::Config;

#[test]
fn every_example_config_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    let entries = std::fs::read_dir(&dir).expect("config/ exists");
    for entry in entries {
        let path = entry.expect("readable dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable example");
        // A fixed node id so the test does not depend on this machine's hostname.
        let env = |name: &str| (name == "MQSYNC_NODE_ID").then(|| "example-node".to_owned());
        let config = Config::from_toml(&text, &path, &env)
            .unwrap_or_else(|e| panic!("{} does not validate:\n{e}", path.display()));
        config
            .validate_for_run()
            .unwrap_or_else(|e| panic!("{} is not runnable:\n{e}", path.display()));
        seen += 1;
    }
    assert!(
        seen >= 2,
        "expected mqsync.toml and minimal.toml, found {seen}"
    );
}

#[test]
fn full_example_sets_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mqsync.toml");
    let text = std::fs::read_to_string(&path).expect("readable example");
    let config = Config::from_toml(&text, &path, &|_| None).expect("valid");
    assert_eq!(config.node_id, "node-1");
    assert!(config.broker.url.is_some());
    assert!(config.broker.cert_file.is_some() && config.broker.key_file.is_some());
    assert!(config.security.group_key_file.is_some());
    for key in [
        "node_id",
        "state_dir",
        "log_format",
        "url",
        "ca_file",
        "cert_file",
        "key_file",
        "topic_prefix",
        "client_id",
        "keepalive_s",
        "insecure_plaintext",
        "embedded_listen",
        "shared_node_cert",
        "group_key_file",
        "id",
        "path",
        "create",
        "mode",
        "ignore",
        "debounce_ms",
        "volume_plugin",
        "volumes_root",
        "plugin_socket",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{key} ="))),
            "config/mqsync.toml does not show `{key}`"
        );
    }
}
