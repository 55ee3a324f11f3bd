//! What the index remembers of a path on disk (`LocalMeta`: size, mtime, inode, mode,
//! ctime),
//! read from `std` metadata or a raw `stat`: the scan compares it to skip unchanged
//! files, and the applier checks it before replacing one.

use crate::store::index::LocalMeta;
use rustix::fs::FileType;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

pub fn local_meta(md: &Metadata) -> LocalMeta {
    let is_dir = md.is_dir();
    LocalMeta {
        size: if is_dir { 0 } else { md.len() },
        // Directory mtimes move with every child and are not synced.
        mtime_ns: if is_dir { 0 } else { mtime_ns(md) },
        ino: md.ino(),
        mode: md.mode(),
        ctime_ns: md
            .ctime()
            .saturating_mul(1_000_000_000)
            .saturating_add(md.ctime_nsec()),
    }
}

/// `local_meta` from a raw `stat`, for the fast path of the walk.
pub(crate) fn meta_of_stat(st: &rustix::fs::Stat) -> LocalMeta {
    let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
    LocalMeta {
        size: if is_dir { 0 } else { st.st_size as u64 },
        mtime_ns: if is_dir {
            0
        } else {
            st.st_mtime
                .saturating_mul(1_000_000_000)
                .saturating_add(st.st_mtime_nsec as i64)
        },
        ino: st.st_ino,
        mode: st.st_mode,
        ctime_ns: st
            .st_ctime
            .saturating_mul(1_000_000_000)
            .saturating_add(st.st_ctime_nsec as i64),
    }
}

pub fn mtime_ns(md: &Metadata) -> i64 {
    md.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.mtime_nsec())
}
