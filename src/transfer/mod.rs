//! How chunk data moves: flow control against the slowest receiver ([`push_window`]) and
//! whether chunk data is compressed ([`compression`]).

pub mod compression;
pub mod push_window;
