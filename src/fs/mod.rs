//! The folder on disk: finding changes ([`watcher`], [`scanner`]), making remote changes
//! real ([`applier`]), chunking files and reading chunks back ([`chunks`]), where local
//! chunks can be read ([`locations`]), which paths are not synced ([`ignore`]: patterns,
//! marker, temp names), what the index keeps of a path on disk ([`meta`]), owners and
//! extended attributes ([`attrs`]), and case-folding file systems ([`casefold`]).

pub mod applier;
pub mod attrs;
pub mod casefold;
pub mod chunks;
pub mod ignore;
pub mod locations;
pub mod meta;
pub mod scanner;
pub mod watcher;
