//! mqsync: a multi-master folder synchronizer that uses an MQTT-over-TLS broker as its
//! only transport. The binary (`src/main.rs`) is a thin shell over this library.

pub mod applier;
pub mod broker;
pub mod casefold;
pub mod certs;
pub mod chunker;
pub mod compression;
pub mod config;
pub mod control;
pub mod daemon;
pub mod delta;
pub mod demo;
pub mod engine;
pub mod heap;
pub mod hook;
pub mod index;
pub mod locations;
pub mod metrics;
pub mod node;
pub mod progress;
pub mod push_window;
pub mod relpath;
pub mod rlimit;
pub mod scanner;
pub mod shared_str;
pub mod status;
pub mod tls;
pub mod transport;
pub mod volumes;
pub mod watcher;
pub mod wire;
