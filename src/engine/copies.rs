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
    /// its numbered names that no other file holds here. `None` when one of them
    /// holds the loser's data already (the same copy, made on another node first):
    /// nothing needs moving aside then, and moving it there would have to replace it.
    pub(super) fn free_copy_name(&self, loser: &Entry, first: RelPath) -> Option<RelPath> {
        // Whether `name` holds nothing, the loser's data, or something else.
        let held = |name: &RelPath| {
            let live = |e: &Entry| (!e.content.is_deleted()).then(|| e.same_data(loser));
            let pending = self.pending.get(name).map(|p| &p.entry);
            pending.or(self.entries.get(name)).and_then(live)
        };
        let mut name = first;
        for n in 2..=TRIES {
            match held(&name) {
                None => return Some(name),
                Some(true) => return None,
                Some(false) => {}
            }
            match conflict_name_nth(loser, n) {
                Some(next) => name = next,
                None => break,
            }
        }
        Some(name)
    }
}
