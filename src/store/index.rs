//! The persisted index of one folder (redb in `state_dir`): for every path, the
//! confirmed entry and the local file metadata it was computed from. The metadata is
//! the fast path of the start-up scan: a file whose size, mtime, inode and mode are
//! unchanged is not read again. Writes are batched into one ACID transaction.

use crate::engine::{Entry, Hash};
use crate::protocol::delta::Signature;
use crate::protocol::relpath::RelPath;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries_v1");
/// Block signatures of large chunks this node pushed or received, by chunk hash
/// ([`crate::protocol::delta::Signature`]): what lets it send a later edit as a delta.
const SIGNATURES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("signatures_v1");

/// redb's page cache. Its default (1 GiB) kept every page read by the start-up load
/// resident: 135 bytes per file with a million files, for pages read once. The
/// folder's state lives in memory anyway; the cache only serves write transactions,
/// which write in path order and touch few pages besides their own. At 16 MiB it was
/// 17 bytes per file with a million files, and the start-up load still filled it.
const CACHE_BYTES: usize = 4 << 20;

/// What the scanner saw on disk for a path, to detect changes without hashing.
#[derive(Debug, Clone, Copy, Eq, Serialize, Deserialize)]
pub struct LocalMeta {
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
    pub mode: u32,
    /// The inode's change time: a chown, a chmod or an extended attribute moves it
    /// without touching the mtime. Stored after the record (see [`Index::load`]); 0
    /// in records of the previous version, where it is not compared.
    #[serde(skip)]
    pub ctime_ns: i64,
}

impl PartialEq for LocalMeta {
    fn eq(&self, o: &Self) -> bool {
        self.size == o.size
            && self.mtime_ns == o.mtime_ns
            && self.ino == o.ino
            && self.mode == o.mode
            && (self.ctime_ns == o.ctime_ns || self.ctime_ns == 0 || o.ctime_ns == 0)
    }
}

impl LocalMeta {
    /// The same file with the same content, though perhaps renamed since (a rename
    /// moves the ctime and nothing else).
    pub fn same_but_ctime(&self, o: &Self) -> bool {
        LocalMeta {
            ctime_ns: 0,
            ..*self
        } == *o
    }
}

/// What a record holds beyond the previous version's layout, stored after it: older
/// versions read the record and stop before this, and this version reads records
/// written without it (their attributes unknown, their ctime not compared).
#[derive(Debug, Default, Serialize, Deserialize)]
struct RecordExt {
    attrs: Option<crate::engine::Attrs>,
    ctime_ns: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub entry: Entry,
    /// `None` for tombstones and for entries whose disk state is unknown.
    pub local: Option<LocalMeta>,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("index database: {0}")]
    Db(String),
    #[error("index record for {path:?} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for IndexError {
            fn from(e: $t) -> Self {
                IndexError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub struct Index {
    /// `None` only between a failed write's close and a failed reopen.
    db: Option<Database>,
    path: PathBuf,
    /// A write failed (a full disk): redb refuses every later write with
    /// `PreviousIo` until the database is opened again, so the next write reopens it.
    reopen: bool,
}

impl Index {
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        Ok(Index {
            db: Some(Self::open_db(path)?),
            path: path.to_path_buf(),
            reopen: false,
        })
    }

    fn open_db(path: &Path) -> Result<Database, IndexError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|source| IndexError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let tx = db.begin_write()?;
        tx.open_table(ENTRIES)?;
        tx.open_table(SIGNATURES)?;
        tx.commit()?;
        Ok(db)
    }

    fn db(&self) -> Result<&Database, IndexError> {
        self.db
            .as_ref()
            .ok_or_else(|| IndexError::Db("not open after a failed write".into()))
    }

    /// Runs a write transaction's body; after a failed one, first opens the database
    /// again (the failed transaction left nothing behind: redb is ACID).
    fn write<T>(
        &mut self,
        body: impl FnOnce(&Database) -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        if self.reopen {
            // Closed first: redb locks its file, so a second handle cannot be opened.
            self.db = None;
            self.db = Some(Self::open_db(&self.path)?);
            self.reopen = false;
            tracing::debug!("index database {} opened again", self.path.display());
        }
        let res = body(self.db()?);
        self.reopen = res.is_err();
        res
    }

    /// Every record. A corrupt record is an error, not silently skipped: the caller
    /// decides (the folder is then rescanned from scratch).
    pub fn load(&self) -> Result<Vec<Record>, IndexError> {
        let tx = self.db()?.begin_read()?;
        let table = tx.open_table(ENTRIES)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let corrupt = |e: postcard::Error| IndexError::Corrupt {
                path: k.value().to_string(),
                reason: e.to_string(),
            };
            let (mut rec, rest): (Record, _) =
                postcard::take_from_bytes(v.value()).map_err(corrupt)?;
            if !rest.is_empty() {
                let ext: RecordExt = postcard::from_bytes(rest).map_err(corrupt)?;
                rec.entry.attrs = ext.attrs.and_then(crate::engine::Attrs::shared);
                if let Some(l) = &mut rec.local {
                    l.ctime_ns = ext.ctime_ns;
                }
            }
            out.push(rec);
        }
        Ok(out)
    }

    /// Writes a batch of records in one transaction.
    pub fn put(&mut self, records: &[Record]) -> Result<(), IndexError> {
        if records.is_empty() {
            return Ok(());
        }
        self.write(|db| {
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(ENTRIES)?;
                for r in records {
                    let ext = RecordExt {
                        attrs: r.entry.attrs.as_deref().cloned(),
                        ctime_ns: r.local.map_or(0, |l| l.ctime_ns),
                    };
                    let mut bytes =
                        postcard::to_allocvec(r).map_err(|e| IndexError::Db(e.to_string()))?;
                    bytes.extend_from_slice(
                        &postcard::to_allocvec(&ext).map_err(|e| IndexError::Db(e.to_string()))?,
                    );
                    table.insert(r.entry.path.as_str(), bytes.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Stores chunk signatures in one transaction, without waiting for the disk: a
    /// signature lost in a crash only costs a whole chunk instead of a delta later, and
    /// the next write of entries makes them durable.
    pub fn put_signatures(&mut self, sigs: &[(Hash, Signature)]) -> Result<(), IndexError> {
        if sigs.is_empty() {
            return Ok(());
        }
        self.write(|db| {
            let mut tx = db.begin_write()?;
            if let Err(e) = tx.set_durability(redb::Durability::None) {
                tracing::debug!("signatures written durably: {e}");
            }
            {
                let mut table = tx.open_table(SIGNATURES)?;
                for (hash, sig) in sigs {
                    table.insert(&hash[..], sig.to_bytes().as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// The stored signature of a chunk; an unreadable one counts as missing (it only
    /// costs a full transfer).
    pub fn signature(&self, hash: &Hash) -> Result<Option<Signature>, IndexError> {
        let tx = self.db()?.begin_read()?;
        let table = tx.open_table(SIGNATURES)?;
        Ok(table
            .get(&hash[..])?
            .and_then(|v| Signature::from_bytes(v.value())))
    }

    /// Drops the signatures of chunks `keep` rejects. Returns how many were dropped.
    pub fn retain_signatures(&mut self, keep: impl Fn(&Hash) -> bool) -> Result<usize, IndexError> {
        self.write(|db| {
            let tx = db.begin_write()?;
            let n;
            {
                let mut table = tx.open_table(SIGNATURES)?;
                let before = table.len()?;
                table.retain(|k, _| <&Hash>::try_from(k).is_ok_and(&keep))?;
                n = before - table.len()?;
            }
            tx.commit()?;
            Ok(n as usize)
        })
    }

    pub fn remove(&mut self, paths: &[RelPath]) -> Result<(), IndexError> {
        self.write(|db| {
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(ENTRIES)?;
                for p in paths {
                    table.remove(p.as_str())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Content, VersionVector};

    #[test]
    fn put_load_roundtrip_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.redb");
        let rec = Record {
            entry: Entry {
                attrs: None,
                path: RelPath::new("a/b").unwrap(),
                version: VersionVector::new().incremented("n"),
                modified_by: "n".into(),
                changed_ms: 0,
                content: Content::Dir { mode: 0o755 },
            },
            local: Some(LocalMeta {
                size: 1,
                mtime_ns: 2,
                ino: 3,
                mode: 0o40755,
                ctime_ns: 4,
            }),
        };
        {
            let mut idx = Index::open(&path).unwrap();
            idx.put(std::slice::from_ref(&rec)).unwrap();
        }
        let mut idx = Index::open(&path).unwrap();
        assert_eq!(idx.load().unwrap(), vec![rec.clone()]);
        idx.remove(std::slice::from_ref(&rec.entry.path)).unwrap();
        assert!(idx.load().unwrap().is_empty());
    }

    #[test]
    fn signatures_are_kept_until_their_chunk_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = Index::open(&dir.path().join("f.redb")).unwrap();
        let sig = |b: u8| Signature::of(&vec![b; 100_000]).unwrap();
        idx.put_signatures(&[([1; 32], sig(1)), ([2; 32], sig(2))])
            .unwrap();
        assert_eq!(idx.signature(&[1; 32]).unwrap(), Some(sig(1)));
        assert_eq!(idx.signature(&[3; 32]).unwrap(), None);
        assert_eq!(idx.retain_signatures(|h| h[0] == 2).unwrap(), 1);
        assert_eq!(idx.signature(&[1; 32]).unwrap(), None);
        assert_eq!(idx.signature(&[2; 32]).unwrap(), Some(sig(2)));
    }
}
