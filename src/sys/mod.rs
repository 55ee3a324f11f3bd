//! Process-level knobs of the operating system: the open-file limit ([`rlimit`]) and
//! returning freed heap memory ([`heap`]).

pub mod heap;
pub mod rlimit;
