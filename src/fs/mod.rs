//! The folder on disk: finding changes ([`watcher`], [`scanner`]), making remote changes
//! real ([`applier`]), chunking files and reading chunks back ([`chunks`]), where local
//! chunks can be read ([`locations`]), and case-folding file systems ([`casefold`]).

pub mod applier;
pub mod casefold;
pub mod chunks;
pub mod locations;
pub mod scanner;
pub mod watcher;
