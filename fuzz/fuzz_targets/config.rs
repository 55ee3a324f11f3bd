//! TOML text → `Config::from_toml` with an empty environment. Must never panic, and
//! every error must render (the messages slice the input at toml's spans).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqsync::config::Config;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, Path::new("/etc/mqsync/mqsync.toml"), &|_| None) {
        Ok(cfg) => {
            let _ = cfg.client_id();
            let _ = cfg.validate_for_run();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
