//! What the workload did, as the checker judges it: every write (node, path, content
//! hash, time, whether it completed and whether a fault was active), and every content
//! a node saw and then replaced or deleted.
//!
//! The workload never overwrites or deletes content it has not seen: it takes the old
//! content out of the path atomically (`renameat2(RENAME_EXCHANGE)`, or a rename to a
//! private name before reading it and unlinking it), or reads it through the very file
//! descriptor it then writes. So "node X replaced content H" is a fact, and any write
//! made after it is causally later than H. Contents are unique (each write embeds its
//! id), so a hash names one write.

use std::collections::HashSet;

pub type Hash = [u8; 32];

pub fn hash(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

pub fn hex(h: &Hash) -> String {
    h.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Now, as UTC time of day (`HH:MM:SS.mmm`), to match the daemons' log lines.
pub fn clock_now() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

#[derive(Debug, Clone)]
pub struct Write {
    pub id: u64,
    pub node: usize,
    pub path: String,
    pub hash: Hash,
    pub len: u64,
    /// Milliseconds since the campaign began.
    pub at_ms: u64,
    /// Wall-clock time of the write, ms since the epoch (to read beside the logs).
    pub wall_ms: u64,
    /// The write call returned and the file at `path` is the inode written. A write
    /// that failed (a full disk) or whose inode was replaced under it by an apply
    /// (`orphaned`) is not completed and need not survive.
    pub completed: bool,
    pub orphaned: bool,
    /// A fault was active when the write was made.
    pub during_fault: bool,
    pub kind: &'static str,
}

#[derive(Default)]
pub struct History {
    pub writes: Vec<Write>,
    /// Contents some node saw and then replaced or deleted (causally superseded).
    pub superseded: HashSet<Hash>,
    pub failed_writes: u64,
    pub bytes: u64,
}

impl History {
    pub fn record(&mut self, w: Write) {
        if w.completed {
            self.bytes += w.len;
        } else if !w.orphaned {
            self.failed_writes += 1;
        }
        self.writes.push(w);
    }

    pub fn supersede(&mut self, h: Hash) {
        self.superseded.insert(h);
    }

    /// One line per write and one per superseded content, tab-separated, for a
    /// post-mortem beside the logs (`history.tsv` in the campaign directory).
    pub fn dump(&self) -> String {
        let mut out = String::from(
            "id\tnode\tpath\thash\tlen\tat_ms\twall_ms\tcompleted\torphaned\tduring_fault\tkind\tsuperseded\n",
        );
        for w in &self.writes {
            out += &format!(
                "{}\tn{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                w.id,
                w.node + 1,
                w.path,
                hex(&w.hash),
                w.len,
                w.at_ms,
                w.wall_ms,
                w.completed,
                w.orphaned,
                w.during_fault,
                w.kind,
                self.superseded.contains(&w.hash)
            );
        }
        out
    }

    pub fn completed(&self) -> usize {
        self.writes.iter().filter(|w| w.completed).count()
    }

    pub fn orphaned(&self) -> usize {
        self.writes.iter().filter(|w| w.orphaned).count()
    }

    /// Completed writes whose content is nowhere in `present` and that no node
    /// replaced or deleted after seeing them: lost.
    pub fn lost<'a>(&'a self, present: &'a HashSet<Hash>) -> impl Iterator<Item = &'a Write> {
        // An empty file has no id in it: its hash names every empty write, so empty
        // writes are counted but not followed.
        self.writes.iter().filter(move |w| {
            w.completed
                && w.len > 0
                && !present.contains(&w.hash)
                && !self.superseded.contains(&w.hash)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(id: u64, data: &[u8], completed: bool) -> Write {
        Write {
            id,
            node: 0,
            path: format!("f{id}"),
            hash: hash(data),
            len: data.len() as u64,
            at_ms: id,
            wall_ms: id,
            completed,
            orphaned: false,
            during_fault: false,
            kind: "create",
        }
    }

    #[test]
    fn a_write_is_lost_only_when_absent_and_not_superseded() {
        let mut h = History::default();
        h.record(write(1, b"present", true));
        h.record(write(2, b"superseded", true));
        h.record(write(3, b"gone", true));
        h.record(write(4, b"failed", false));
        h.record(write(5, b"", true));
        h.supersede(hash(b"superseded"));
        let present: HashSet<Hash> = [hash(b"present")].into();
        let lost: Vec<u64> = h.lost(&present).map(|w| w.id).collect();
        assert_eq!(lost, vec![3]);
        assert_eq!(h.failed_writes, 1);
        assert_eq!(h.bytes, 7 + 10 + 4);
    }
}
