//! What crosses the wire: message schema, codec, bounds and MAC keys ([`wire`]), the
//! content-defined chunking whose parameters every node must share ([`chunker`]), deltas
//! within chunks ([`delta`]), the checked relative paths messages carry ([`relpath`]),
//! and the name of every topic ([`topics`]). Nothing here reads or writes files:
//! `crate::fs` does, with these types.

pub mod chunker;
pub mod delta;
pub mod relpath;
pub mod shared_str;
pub mod topics;
pub mod wire;
