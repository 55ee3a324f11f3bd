//! Raw bytes from the broker → `wire::decode` under the fixed key. Must never panic;
//! any `Result` is fine (without the key nothing should get past the MAC).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqsync::protocol::wire;
use mqsync_fuzz::{NODE, TOPIC, keys};
use std::sync::LazyLock;

static KEYS: LazyLock<wire::Keys> = LazyLock::new(keys);

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = wire::decode(data, TOPIC, NODE, &KEYS) {
        // Only a correctly signed message (a seed) can decode; it must name its sender.
        assert_eq!(env.from, NODE);
    }
});
