//! Content-defined chunking (FastCDC 2020) with BLAKE3 hashes. The parameters decide
//! every chunk boundary, so they are part of the wire protocol: changing them makes
//! every node see every file as new. An insert or edit in the middle of a large file
//! changes only the chunks around it, which is what makes deltas and renames cheap.

use crate::engine::{ChunkRef, Hash};
use fastcdc::v2020::{Normalization, StreamCDC};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const MIN_CHUNK: u32 = 64 * 1024;
pub const AVG_CHUNK: u32 = 256 * 1024;
pub const MAX_CHUNK: u32 = 1024 * 1024;

pub fn hash(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

/// Chunks and hashes an open file from its start. Returns the chunks and total size.
pub fn chunk_file(file: &File) -> io::Result<(Vec<ChunkRef>, u64)> {
    let reader = io::BufReader::with_capacity(MAX_CHUNK as usize, file);
    let cdc = StreamCDC::with_level(
        reader,
        MIN_CHUNK as usize,
        AVG_CHUNK as usize,
        MAX_CHUNK as usize,
        Normalization::Level1,
    );
    let mut chunks = Vec::new();
    let mut size = 0u64;
    for c in cdc {
        let c = c.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => e,
            other => io::Error::other(other.to_string()),
        })?;
        size += c.length as u64;
        chunks.push(ChunkRef {
            hash: hash(&c.data),
            len: c.length as u32,
        });
    }
    Ok((chunks, size))
}

pub fn chunk_path(path: &Path) -> io::Result<(Vec<ChunkRef>, u64)> {
    chunk_file(&File::open(path)?)
}

/// Reads `len` bytes at `offset` and returns them only if they hash to `want`
/// (a local file may have changed since it was indexed).
pub fn read_verified(path: &Path, offset: u64, len: u32, want: &Hash) -> Option<Vec<u8>> {
    let f = File::open(path).ok()?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).ok()?;
    (hash(&buf) == *want).then_some(buf)
}

/// Byte offset of each chunk in file order.
pub fn offsets(chunks: &[ChunkRef]) -> impl Iterator<Item = (u64, &ChunkRef)> {
    chunks.iter().scan(0u64, |off, c| {
        let at = *off;
        *off += u64::from(c.len);
        Some((at, c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::io::Write;

    fn write_tmp(data: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(data).unwrap();
        f
    }

    /// Sizes around the chunking bounds, where off-by-one errors live.
    const SIZES: &[usize] = &[
        0, 1, 65_535, 65_536, 65_537, 262_144, 1_048_575, 1_048_576, 1_048_577, 3_000_001,
    ];

    #[test]
    fn chunks_cover_the_file_within_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for &n in SIZES {
            let mut data = vec![0u8; n];
            rng.fill(&mut data[..]);
            let f = write_tmp(&data);
            let (chunks, size) = chunk_path(f.path()).unwrap();
            assert_eq!(size as usize, n);
            assert_eq!(chunks.iter().map(|c| c.len as usize).sum::<usize>(), n);
            for (i, (off, c)) in offsets(&chunks).enumerate() {
                assert!(c.len <= MAX_CHUNK);
                if i + 1 < chunks.len() {
                    assert!(c.len >= MIN_CHUNK);
                }
                let got = read_verified(f.path(), off, c.len, &c.hash).unwrap();
                assert_eq!(&got[..], &data[off as usize..off as usize + c.len as usize]);
            }
        }
    }

    #[test]
    fn an_edit_in_the_middle_changes_few_chunks() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut data = vec![0u8; 8 << 20];
        rng.fill(&mut data[..]);
        let (a, _) = chunk_path(write_tmp(&data).path()).unwrap();
        for b in &mut data[4 << 20..(4 << 20) + 100_000] {
            *b = b.wrapping_add(1);
        }
        let (b, _) = chunk_path(write_tmp(&data).path()).unwrap();
        let changed = b.iter().filter(|c| !a.contains(c)).count();
        assert!(changed <= 3, "{changed} chunks changed");
    }
}
