//! Process-level knobs of the operating system: the open-file limit ([`rlimit`]),
//! returning freed heap memory ([`heap`]) and telling systemd the daemon is ready
//! ([`notify`]).

pub mod heap;
pub mod notify;
pub mod rlimit;
