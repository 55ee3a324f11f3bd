//! What an apply reports: [`Outcome`] for each started or advanced apply, and
//! [`ApplyError`] for why one failed, with whether a retry is worth it.

use crate::engine::{Entry, VersionVector};
use crate::protocol::relpath::RelPath;
use crate::store::index::LocalMeta;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: a parent is a symlink or not a directory; refusing to write through it")]
    UnsafeParent(PathBuf),
    #[error("{0}: changed locally since it was indexed; rescanning")]
    ChangedLocally(PathBuf),
    #[error("{0}: directory not empty yet")]
    NotEmpty(PathBuf),
    /// Checked by the node before an apply; retried, since the twin may go away.
    #[error("{0}")]
    CaseCollision(crate::fs::casefold::Collision),
    /// A fetch that no node served for [`super::fetch::GIVE_UP_REQUESTS`] requests: the
    /// version is given up (its chunks may exist nowhere any more), and the node asks
    /// its peers to compare, which offers whatever version they hold now.
    #[error(
        "{path}: no node served {chunks} missing chunk(s) after {requests} requests; given up until a peer offers it again"
    )]
    Unavailable {
        path: RelPath,
        chunks: usize,
        requests: u32,
    },
}

impl ApplyError {
    /// Worth trying again later without new information (e.g. a full disk).
    pub fn retryable(&self) -> bool {
        !matches!(
            self,
            ApplyError::ChangedLocally(_)
                | ApplyError::UnsafeParent(_)
                | ApplyError::Unavailable { .. }
        )
    }

    /// The file system (or the user's quota) is full: a retry is worth it only once
    /// space is back.
    pub fn no_space(&self) -> bool {
        matches!(self, ApplyError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
    }
}

/// Wraps an I/O error on `path`.
pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ApplyError + '_ {
    move |source| ApplyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The result of starting or advancing an apply.
#[derive(Debug)]
pub enum Outcome {
    Done {
        path: RelPath,
        version: VersionVector,
        /// What is now on disk (`None`: absent).
        meta: Option<LocalMeta>,
        /// Where the local loser of a conflict was moved.
        conflict_copy: Option<RelPath>,
    },
    /// The entry and conflict copy come back with the error, so a failure worth
    /// retrying (a full disk) can be tried again wherever it surfaced.
    Failed {
        entry: Entry,
        conflict_copy: Option<RelPath>,
        error: ApplyError,
    },
    /// Waiting for chunks from the network.
    Waiting,
    /// Written to its temp file; [`super::Applier::commit`] makes it durable and renames it
    /// into place, together with the other files staged since the last commit.
    Staged,
}
