//! Interactive parts of the command line: the local demo ([`demo`]) and progress bars
//! ([`progress`]). Argument parsing and dispatch live in `main.rs`.

pub mod demo;
pub mod progress;
