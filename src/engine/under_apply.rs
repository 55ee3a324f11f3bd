//! A local change found under an unfinished apply of the same path: the two versions
//! conflict. Settled as `resolve` settles any conflict, so that the result is what the
//! peers compute too, and published where only this node can know it.

use super::{
    Chunks, Decision, Effect, Engine, Entry, Origin, Pending, beats, conflict_name, resolve,
};

impl Engine {
    /// Settles `local` (just seen on disk) against `p` (being written, now taken
    /// from the pending set). Returns `false` when `local` simply wins: the caller
    /// then records and announces it as any local change.
    pub(super) fn changed_under_apply(
        &mut self,
        local: &Entry,
        p: Pending,
        previous: Option<Chunks>,
    ) -> bool {
        // Identical data merges as it would on any node.
        if beats(&p.entry, local) || p.entry.same_data(local) {
            match resolve(&self.node, Some(local), &p.entry) {
                Decision::Install {
                    entry,
                    conflict_copy,
                }
                | Decision::Resolve {
                    entry,
                    conflict_copy,
                } => {
                    // The disk holds `local` now: record it, so that the confirmed
                    // state never claims data the disk lost, but do not announce it
                    // (it lost); then install the winner, keeping `local` as a
                    // conflict copy. A version made here (now or when `p` was
                    // decided) is published once written: no peer knows it.
                    // A version that claims to follow `local` cannot have seen it (it was
                    // just made here): only a counter this node reused makes that claim
                    // (found by the fault campaign: the local write was replaced without
                    // a copy). It is settled as a conflict, so the write is kept.
                    let (entry, conflict_copy) = match conflict_copy {
                        None if !p.entry.same_data(local) && local.content.is_file_like() => {
                            let version = local.version.merged(&entry.version);
                            let entry = Entry {
                                version: version.incremented(&self.node),
                                ..entry
                            };
                            (entry, conflict_name(local))
                        }
                        cc => (entry, cc),
                    };
                    let conflict_copy = conflict_copy.and_then(|cc| self.free_copy_name(local, cc));
                    let publish = p.publish || entry.version != p.entry.version;
                    self.confirm(local.clone());
                    self.start_apply(entry, conflict_copy, Origin::any(), publish);
                    return true;
                }
                Decision::Adopt(merged) => {
                    // The same data: the disk already holds the merged version.
                    self.effects.push_back(Effect::Cancel(local.path.clone()));
                    self.confirm(merged.clone());
                    self.effects.push_back(Effect::Announce {
                        entry: merged,
                        previous,
                    });
                    return true;
                }
                Decision::Ignore => {}
            }
        }
        self.effects.push_back(Effect::Cancel(local.path.clone()));
        false
    }
}
