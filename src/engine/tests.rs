//! Engine unit tests: several engines wired through an in-memory "network" and
//! "disks" until nobody has anything left to do.

use super::*;
use std::collections::BTreeMap;

fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

fn file(data: u8, mtime_s: i64) -> Content {
    Content::File {
        size: 1,
        mode: 0o644,
        mtime_ns: mtime_s * 1_000_000_000,
        chunks: [ChunkRef {
            hash: [data; 32],
            len: 1,
        }]
        .into(),
    }
}

/// A node: an engine plus the disk it manages.
struct Node {
    engine: Engine,
    disk: BTreeMap<RelPath, Content>,
}

/// A published message: sender, entries, or a step of the repair exchange.
type Msg = (usize, Vec<Entry>, Option<Effect>);

struct Net {
    nodes: Vec<Node>,
}

impl Net {
    fn new(n: usize) -> Self {
        Net {
            nodes: (0..n)
                .map(|i| Node {
                    engine: Engine::new(format!("n{i}"), Mode::SendReceive, []),
                    disk: BTreeMap::new(),
                })
                .collect(),
        }
    }

    fn write(&mut self, i: usize, path: &str, c: Content) {
        let n = &mut self.nodes[i];
        if c.is_deleted() {
            n.disk.remove(&p(path));
        } else {
            n.disk.insert(p(path), c.clone());
        }
        n.engine.handle_local(p(path), c);
    }

    /// Delivers every effect until quiet; `connected[i]` false drops node i's traffic.
    fn run(&mut self, connected: &[bool]) {
        for _ in 0..1000 {
            let mut msgs: Vec<Msg> = vec![];
            let mut any = false;
            for i in 0..self.nodes.len() {
                while let Some(eff) = self.nodes[i].engine.poll_effect() {
                    any = true;
                    match eff {
                        Effect::Announce { entry: e, .. } => msgs.push((i, vec![e], None)),
                        Effect::SendEntries(es) => msgs.push((i, es, None)),
                        Effect::SendDigest { .. } => {}
                        e @ (Effect::SendSummary { .. } | Effect::SendDescent { .. }) => {
                            msgs.push((i, vec![], Some(e)))
                        }
                        Effect::Store(_) | Effect::Cancel(_) | Effect::Forget(_) => {}
                        Effect::Apply {
                            entry,
                            conflict_copy,
                            ..
                        } => {
                            let n = &mut self.nodes[i];
                            if n.engine.pending_entry(&entry.path) != Some(&entry) {
                                // Cancelled (replaced) by a message that came after it.
                                continue;
                            }
                            if let Some(cc) = conflict_copy {
                                if let Some(old) = n.disk.remove(&entry.path) {
                                    n.disk.insert(cc.clone(), old.clone());
                                    n.engine.handle_local(cc, old);
                                }
                            }
                            if entry.content.is_deleted() {
                                n.disk.remove(&entry.path);
                            } else {
                                n.disk.insert(entry.path.clone(), entry.content.clone());
                            }
                            n.engine.handle_applied(&entry.path, &entry.version, true);
                        }
                    }
                }
            }
            let now = Instant::now();
            for (from, entries, repair) in msgs {
                let sender = format!("n{from}");
                if !connected[from] {
                    continue;
                }
                for (j, node) in self.nodes.iter_mut().enumerate() {
                    if j == from || !connected[j] {
                        continue;
                    }
                    for e in &entries {
                        node.engine.handle_remote(e.clone());
                    }
                    match &repair {
                        Some(Effect::SendSummary {
                            to,
                            reply,
                            round,
                            groups,
                        }) => {
                            let s = Summary {
                                to,
                                reply: *reply,
                                round: *round,
                                groups,
                            };
                            node.engine.handle_summary(&sender, &s, now)
                        }
                        Some(Effect::SendDescent { to, items }) => {
                            node.engine.handle_descent(&sender, to, items, now)
                        }
                        _ => {}
                    }
                }
            }
            if !any {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn gossip(&mut self) {
        for n in &mut self.nodes {
            n.engine.send_summary(true, Instant::now());
        }
    }

    fn assert_converged(&self) {
        let d0 = &self.nodes[0].disk;
        for (i, n) in self.nodes.iter().enumerate() {
            let files = n.disk.len() as u64;
            assert_eq!(n.engine.present().0, files, "present count of node {i}");
            assert_eq!(&n.disk, d0, "disk of node {i} differs");
            assert_eq!(
                n.engine.digest(),
                self.nodes[0].engine.digest(),
                "digest of node {i} differs"
            );
        }
    }
}

#[test]
fn a_write_reaches_everyone_without_echo() {
    let mut net = Net::new(3);
    net.write(0, "a.txt", file(1, 10));
    net.run(&[true; 3]);
    net.assert_converged();
    assert_eq!(net.nodes[2].disk.get(&p("a.txt")), Some(&file(1, 10)));
    // Applying a remote change must not announce it again.
    for n in &mut net.nodes {
        assert!(n.engine.poll_effect().is_none());
    }
}

#[test]
fn delete_propagates_as_tombstone() {
    let mut net = Net::new(3);
    net.write(0, "a.txt", file(1, 10));
    net.run(&[true; 3]);
    net.write(1, "a.txt", Content::Deleted);
    net.run(&[true; 3]);
    net.assert_converged();
    assert!(net.nodes[0].disk.is_empty());
    assert!(
        net.nodes[0]
            .engine
            .entry(&p("a.txt"))
            .unwrap()
            .content
            .is_deleted()
    );
}

#[test]
fn concurrent_edits_keep_a_conflict_copy_everywhere() {
    let mut net = Net::new(3);
    net.write(0, "doc.txt", file(1, 10));
    net.run(&[true; 3]);
    // Both edit while cut off from each other.
    net.write(0, "doc.txt", file(2, 20));
    net.write(1, "doc.txt", file(3, 30));
    net.run(&[false, false, true]);
    net.gossip();
    net.run(&[true; 3]);
    net.gossip();
    net.run(&[true; 3]);
    net.assert_converged();
    let disk = &net.nodes[2].disk;
    assert_eq!(
        disk.get(&p("doc.txt")),
        Some(&file(3, 30)),
        "later edit wins"
    );
    let copy = p("doc.sync-conflict-19700101-000020-n0.txt");
    assert_eq!(disk.get(&copy), Some(&file(2, 20)), "loser kept: {disk:?}");
    assert_eq!(disk.len(), 2);
}

/// Two losers of one author within the same second: the second copy gets a numbered
/// name instead of replacing the first (found by the fault campaign: the first copy,
/// the only place its write survived, was renamed over).
#[test]
fn a_second_loser_in_the_same_second_gets_its_own_copy() {
    let mut net = Net::new(3);
    net.write(0, "doc.txt", file(1, 10));
    net.run(&[true; 3]);
    // Both write at once: the announcements cross, and each node settles the conflict.
    for (mine, theirs) in [(2, 3), (4, 5)] {
        net.write(0, "doc.txt", file(mine, 20));
        net.write(1, "doc.txt", file(theirs, 30));
        net.run(&[true; 3]);
    }
    net.assert_converged();
    let disk = &net.nodes[2].disk;
    assert_eq!(disk.get(&p("doc.txt")), Some(&file(5, 30)), "{disk:?}");
    let first = p("doc.sync-conflict-19700101-000020-n0.txt");
    let second = p("doc.sync-conflict-19700101-000020-n0-2.txt");
    assert_eq!(disk.get(&first), Some(&file(2, 20)), "{disk:?}");
    assert_eq!(disk.get(&second), Some(&file(4, 20)), "{disk:?}");
    assert_eq!(disk.len(), 3, "{disk:?}");
}

/// The loser's data already kept under its copy's name (made by another node first):
/// nothing is moved aside, since moving the loser there would have to replace a file.
#[test]
fn a_loser_already_kept_as_a_copy_is_not_moved_aside_again() {
    let mut e = Engine::new("n0".to_string(), Mode::SendReceive, []);
    e.handle_local(p("doc.txt"), file(2, 20));
    e.handle_local(p("doc.sync-conflict-19700101-000020-n0.txt"), file(2, 20));
    while e.poll_effect().is_some() {}
    e.handle_remote(Entry {
        path: p("doc.txt"),
        version: VersionVector::new().incremented("n1"),
        modified_by: "n1".into(),
        changed_ms: 0,
        content: file(3, 30),
        attrs: None,
    });
    let copies: Vec<Option<RelPath>> = std::iter::from_fn(|| e.poll_effect())
        .filter_map(|eff| match eff {
            Effect::Apply { conflict_copy, .. } => Some(conflict_copy),
            _ => None,
        })
        .collect();
    assert_eq!(copies, vec![None]);
}

/// A local write found under an apply whose version claims to follow it (possible
/// only through a counter this node reused) is kept as a conflict copy, under a new
/// version, instead of being replaced (found by the fault campaign).
#[test]
fn a_local_write_under_an_apply_claiming_to_follow_it_is_kept_as_a_copy() {
    let mut e = Engine::new("n0".to_string(), Mode::SendReceive, []);
    e.handle_local(p("doc.txt"), file(1, 10));
    while e.poll_effect().is_some() {}
    let claimed = VersionVector::new()
        .incremented("n0")
        .incremented("n0")
        .incremented("n1");
    e.handle_remote(Entry {
        path: p("doc.txt"),
        version: claimed.clone(),
        modified_by: "n1".into(),
        changed_ms: 0,
        content: file(5, 50),
        attrs: None,
    });
    while e.poll_effect().is_some() {}
    e.handle_local(p("doc.txt"), file(7, 20));
    let applies: Vec<(VersionVector, Option<RelPath>)> = std::iter::from_fn(|| e.poll_effect())
        .filter_map(|eff| match eff {
            Effect::Apply {
                entry,
                conflict_copy,
                ..
            } => Some((entry.version, conflict_copy)),
            _ => None,
        })
        .collect();
    assert_eq!(applies.len(), 1, "{applies:?}");
    let (version, copy) = &applies[0];
    assert_eq!(
        copy.as_ref().map(|c| c.as_str()),
        Some("doc.sync-conflict-19700101-000020-n0.txt")
    );
    assert_eq!(version.compare(&claimed), Causality::Greater);
    // The engine's pending version is the new one: a failure report of the old
    // version does not drop it.
    e.handle_applied(&p("doc.txt"), &claimed, false);
    assert_eq!(
        e.pending_entry(&p("doc.txt")).map(|x| &x.version),
        Some(version)
    );
}

/// A conflict settles in the live exchange: the node holding the loser publishes its
/// resolution, so no digest round is needed for the entries (not only the files) to
/// agree, also when every node takes part (three concurrent edits, every one of them
/// resolved on two nodes, in whatever order the versions arrive).
#[test]
fn conflicts_settle_without_a_digest_round() {
    for writers in [2, 3] {
        for order in 0..2 {
            let mut net = Net::new(3);
            for w in 0..writers {
                // `order` flips which writer has the later mtime (the winner).
                let mtime = if order == 0 { 10 + w } else { 20 - w };
                net.write(w, "doc.txt", file(w as u8 + 1, mtime as i64));
            }
            net.run(&[true; 3]);
            net.assert_converged();
            let disk = &net.nodes[0].disk;
            assert_eq!(disk.len(), writers, "winner and a copy per loser: {disk:?}");
            let doc = net.nodes[0].engine.entry(&p("doc.txt")).unwrap();
            for n in &net.nodes {
                assert_eq!(n.engine.entry(&p("doc.txt")), Some(doc), "same entry");
            }
        }
    }
}

/// The resolving node counts the resolution itself: a counter of the winner's author
/// would collide with that author's next edit, made before it heard of the conflict,
/// and the resolution would then claim to descend from an edit it never saw.
#[test]
fn a_resolution_never_claims_a_later_edit_of_the_winner() {
    let mut net = Net::new(2);
    net.write(0, "doc.txt", file(1, 10));
    net.write(1, "doc.txt", file(2, 20));
    // n1 edits again before anything arrives: its second version must not be taken
    // as older than n0's resolution of the first.
    net.write(1, "doc.txt", file(3, 30));
    net.run(&[true; 2]);
    net.assert_converged();
    assert_eq!(net.nodes[0].disk.get(&p("doc.txt")), Some(&file(3, 30)));
    assert!(
        net.nodes[0].disk.values().any(|c| c == &file(1, 10)),
        "n0's edit kept as a copy: {:?}",
        net.nodes[0].disk
    );
}

#[test]
fn edit_beats_concurrent_delete() {
    let mut net = Net::new(2);
    net.write(0, "f", file(1, 10));
    net.run(&[true; 2]);
    net.write(0, "f", Content::Deleted);
    net.write(1, "f", file(2, 5));
    net.run(&[false, false]);
    net.gossip();
    net.run(&[true; 2]);
    net.gossip();
    net.run(&[true; 2]);
    net.assert_converged();
    assert_eq!(net.nodes[0].disk.get(&p("f")), Some(&file(2, 5)));
}

#[test]
fn identical_concurrent_writes_do_not_conflict() {
    let mut net = Net::new(2);
    net.write(0, "f", file(7, 10));
    net.write(1, "f", file(7, 10));
    net.run(&[true; 2]);
    net.gossip();
    net.run(&[true; 2]);
    net.assert_converged();
    assert_eq!(net.nodes[0].disk.len(), 1);
}

#[test]
fn offline_node_catches_up_through_digests() {
    let mut net = Net::new(3);
    net.write(0, "keep", file(1, 1));
    net.run(&[true; 3]);
    for i in 0..50 {
        net.write(0, &format!("d/f{i}"), file(i as u8, 2));
    }
    net.write(0, "keep", Content::Deleted);
    net.run(&[true, true, false]);
    assert_ne!(net.nodes[2].disk, net.nodes[0].disk);
    // Node 2 reconnects and asks for a comparison.
    net.nodes[2].engine.send_summary(true, Instant::now());
    net.run(&[true; 3]);
    net.assert_converged();
}

#[test]
fn older_and_duplicate_messages_are_harmless() {
    let mut e = Engine::new("b", Mode::SendReceive, []);
    let mut a = Engine::new("a", Mode::SendReceive, []);
    a.handle_local(p("f"), file(1, 1));
    a.handle_local(p("f"), file(2, 2));
    let mut announced = vec![];
    while let Some(eff) = a.poll_effect() {
        if let Effect::Announce { entry: en, .. } = eff {
            announced.push(en);
        }
    }
    // Newest first, then the stale one, then a duplicate.
    e.handle_remote(announced[1].clone());
    e.handle_remote(announced[0].clone());
    e.handle_remote(announced[1].clone());
    let applies: Vec<_> = std::iter::from_fn(|| e.poll_effect())
        .filter(|x| matches!(x, Effect::Apply { .. }))
        .collect();
    assert_eq!(applies.len(), 1);
}

#[test]
fn receive_only_does_not_announce_and_send_only_does_not_apply() {
    let mut r = Engine::new("r", Mode::ReceiveOnly, []);
    r.handle_local(p("f"), file(1, 1));
    assert!(r.poll_effect().is_none());
    assert_eq!(r.local_change_count(), 1);
    let mut s = Engine::new("s", Mode::SendOnly, []);
    let mut a = Engine::new("a", Mode::SendReceive, []);
    a.handle_local(p("f"), file(1, 1));
    while let Some(eff) = a.poll_effect() {
        if let Effect::Announce { entry: en, .. } = eff {
            s.handle_remote(en);
        }
    }
    assert!(s.poll_effect().is_none());
}

#[test]
fn resync_reverts_local_changes_of_a_replica() {
    let mut r = Engine::new("r", Mode::ReceiveOnly, []);
    let mut a = Engine::new("a", Mode::SendReceive, []);
    a.handle_local(p("f"), file(1, 1));
    while let Some(eff) = a.poll_effect() {
        if let Effect::Announce { entry: en, .. } = eff {
            r.handle_remote(en);
        }
    }
    let mut applied = vec![];
    while let Some(eff) = r.poll_effect() {
        if let Effect::Apply { entry, .. } = eff {
            applied.push(entry);
        }
    }
    let e = applied.pop().unwrap();
    r.handle_applied(&e.path, &e.version, true);
    while r.poll_effect().is_some() {}
    // The replica's disk is edited, and a stray file created.
    r.handle_local(p("f"), file(9, 9));
    r.handle_local(p("stray"), file(8, 8));
    assert_eq!(r.local_change_count(), 2);
    r.handle_resync();
    let mut reverts: Vec<Entry> = std::iter::from_fn(|| r.poll_effect())
        .filter_map(|x| match x {
            Effect::Apply { entry, .. } => Some(entry),
            _ => None,
        })
        .collect();
    reverts.sort_by(|x, y| x.path.cmp(&y.path));
    assert_eq!(
        reverts[0].content,
        file(1, 1),
        "the synced version comes back"
    );
    assert!(reverts[1].content.is_deleted(), "the stray file goes");
    let digest = r.digest().clone();
    for e in &reverts {
        r.handle_applied(&e.path, &e.version, true);
    }
    assert_eq!(r.digest(), &digest, "a revert changes no recorded state");
}

#[test]
fn tombstones_expire_by_their_own_age_and_are_not_taken_back() {
    const DAY: u64 = 86_400_000;
    let mut a = Engine::new("a", Mode::SendReceive, []).with_tombstone_ttl(30 * DAY);
    let mut b = Engine::new("b", Mode::SendReceive, []).with_tombstone_ttl(30 * DAY);
    a.set_clock(DAY);
    a.handle_local(p("f"), file(1, 1));
    a.set_clock(2 * DAY);
    a.handle_local(p("f"), Content::Deleted);
    let tomb = a.entry(&p("f")).unwrap().clone();
    assert_eq!(tomb.changed_ms, 2 * DAY);
    a.set_clock(20 * DAY);
    assert_eq!(a.collect_tombstones(), 0, "young tombstones stay");
    a.set_clock(40 * DAY);
    assert_eq!(a.collect_tombstones(), 1);
    assert!(a.entry(&p("f")).is_none());
    assert!(std::iter::from_fn(|| a.poll_effect()).any(|e| e == Effect::Forget(p("f"))));
    // A peer offering the expired tombstone does not bring it back.
    b.set_clock(40 * DAY);
    b.handle_remote(tomb);
    assert!(b.entry(&p("f")).is_none());
}

fn owned_by(uid: u32) -> SharedAttrs {
    Attrs {
        owner: Some(Owner {
            uid,
            gid: uid,
            user: None,
            group: None,
        }),
        xattrs: None,
    }
    .shared()
}

fn announced(e: &mut Engine) -> Vec<Entry> {
    std::iter::from_fn(|| e.poll_effect())
        .filter_map(|eff| match eff {
            Effect::Announce { entry, .. } => Some(entry),
            _ => None,
        })
        .collect()
}

/// A chown alone is a new version with the same content; seeing the same owner again
/// is no change.
#[test]
fn an_owner_change_alone_is_a_new_version() {
    let mut e = Engine::new("n1", Mode::SendReceive, []);
    e.handle_local_with(p("f"), file(1, 1), owned_by(33));
    let first = announced(&mut e);
    assert_eq!(first.len(), 1);
    e.handle_local_with(p("f"), file(1, 1), owned_by(33));
    assert!(announced(&mut e).is_empty());
    e.handle_local_with(p("f"), file(1, 1), owned_by(34));
    let second = announced(&mut e);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].content, first[0].content);
    assert_eq!(second[0].attrs, owned_by(34));
    assert_eq!(
        second[0].version.compare(&first[0].version),
        Causality::Greater
    );
}

/// A chown on one node and an edit on another, concurrent: a conflict like any other,
/// settled the same way on both nodes with a conflict copy.
#[test]
fn a_concurrent_chown_and_edit_conflict() {
    let base = Entry {
        path: p("f"),
        version: VersionVector::new().incremented("n0"),
        modified_by: "n0".into(),
        changed_ms: 1,
        content: file(1, 1),
        attrs: owned_by(33),
    };
    let mut a = Engine::new("a", Mode::SendReceive, [base.clone()]);
    let mut b = Engine::new("b", Mode::SendReceive, [base]);
    a.handle_local_with(p("f"), file(1, 1), owned_by(34));
    b.handle_local_with(p("f"), file(2, 2), owned_by(33));
    let (ea, eb) = (announced(&mut a), announced(&mut b));
    a.handle_remote(eb[0].clone());
    b.handle_remote(ea[0].clone());
    let copies: Vec<RelPath> = [&mut a, &mut b]
        .into_iter()
        .flat_map(|e| std::iter::from_fn(|| e.poll_effect()).collect::<Vec<_>>())
        .filter_map(|eff| match eff {
            Effect::Apply { conflict_copy, .. } => conflict_copy,
            _ => None,
        })
        .collect();
    assert_eq!(copies.len(), 1, "one side keeps the loser: {copies:?}");
}
