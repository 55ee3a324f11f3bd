//! mqsync: a multi-master folder synchronizer that uses an MQTT-over-TLS broker as its
//! only transport. The binary (`src/main.rs`) only parses the command line and
//! dispatches to [`cli`]; everything else is this library.
//!
//! # Layout
//!
//! - [`engine`]: the pure sync logic (versions, conflicts, digests, retries, timers,
//!   the mass-delete guard); no I/O, time only as an argument.
//! - [`protocol`]: messages, codec, MAC keys, chunking of bytes, deltas and topic
//!   names; no file I/O.
//! - [`fs`]: the folder on disk: watch, scan, apply, chunking files and reading chunks
//!   back, chunk locations, case folding.
//! - [`store`]: the redb index.
//! - [`transfer`]: flow control and compression of chunk data.
//! - [`transport`]: the MQTT client connections and TLS.
//! - [`broker`]: the embedded broker, its TLS front, ACL and certificates.
//! - [`node`]: the per-folder driver that connects the parts above, made of parts that
//!   own their state (local side, applies, inbound, outbound, records, health).
//! - [`ops`]: status, control commands, metrics, hooks.
//! - [`config`], [`daemon`] (the composition root), [`volumes`] (the Docker volume
//!   plugin), [`cli`] (the commands: clap arguments, one module per command, the demo
//!   and progress bars), [`sys`] (process limits).
//!
//! Arrows point from the driver outwards: `node` uses `engine`, `protocol`, `fs`,
//! `store`, `transfer`, `transport` and `ops`; `engine` uses nothing but `protocol`'s
//! path and string types. See docs/ARCHITECTURE.md.

pub mod broker;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod fs;
pub mod node;
pub mod ops;
pub mod protocol;
pub mod store;
pub mod sys;
pub mod transfer;
pub mod transport;
pub mod volumes;
