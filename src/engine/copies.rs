//! Names for conflict copies that never land on another copy: a second loser of the
//! same author within the same second would get the first one's name, and moving it
//! aside there would replace (lose) the first copy.

use super::resolve::conflict_name_nth;
use super::{Engine, Entry, RelPath};

/// Names tried before the last one is taken anyway (the applier then refuses to
/// replace a file there, and the conflict is decided again once it is scanned).
const TRIES: u32 = 100;

impl Engine {
    /// The name for the conflict copy of `loser`, proposed as `first`: the first of
    /// its numbered names that no other file holds here (a copy of the same data may
    /// be there already: the same copy, made again).
    pub(super) fn free_copy_name(&self, loser: &Entry, first: RelPath) -> RelPath {
        let taken = |name: &RelPath| {
            let other = |e: &Entry| !e.content.is_deleted() && !e.same_data(loser);
            self.entries.get(name).is_some_and(other)
                || self.pending.get(name).is_some_and(|p| other(&p.entry))
        };
        if !taken(&first) {
            return first;
        }
        let mut last = first;
        for n in 2..=TRIES {
            match conflict_name_nth(loser, n) {
                Some(name) if !taken(&name) => return name,
                Some(name) => last = name,
                None => break,
            }
        }
        last
    }
}
