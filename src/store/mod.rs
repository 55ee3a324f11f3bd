//! What a node keeps on disk between runs: the per-folder redb index ([`index`]).

pub mod index;
