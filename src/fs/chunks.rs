//! Chunk data on disk: chunks a local file the way `crate::protocol::chunker` cuts
//! bytes, and reads one chunk back at its offset, checked against its hash when asked
//! (a local file may have changed since it was indexed).

use crate::engine::{Chunks, Hash};
use crate::protocol::chunker;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes read from a file at a time. Several chunks are cut and hashed in place from
/// one block; only the tail that may still grow into a chunk is moved to the front.
const BLOCK: usize = 4 << 20;

thread_local! {
    /// One read buffer per scanning thread: allocating a block per file would make
    /// a tree of small files pay for a fresh mapping each time.
    static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Chunks and hashes an open file from its start. Returns the chunks and total size.
///
/// The cut points are exactly those of fastcdc's `StreamCDC` with the same
/// parameters (which the wire protocol depends on): see [`chunker::cut`].
pub fn chunk_file(file: &File) -> io::Result<(Chunks, u64)> {
    BUFFER.with(|b| {
        let mut buf = b.borrow_mut();
        if buf.len() < BLOCK {
            buf.resize(BLOCK, 0);
        }
        chunk_reader(file, &mut buf)
    })
}

/// Fills `buf` (at least `MAX_CHUNK` bytes) from `file` and cuts what it holds until
/// the end of the file.
fn chunk_reader(mut file: impl Read, buf: &mut [u8]) -> io::Result<(Chunks, u64)> {
    let mut chunks = Chunks::new();
    let mut size = 0u64;
    let mut len = 0;
    let mut eof = false;
    loop {
        while !eof && len < buf.len() {
            match file.read(&mut buf[len..]) {
                Ok(0) => eof = true,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let start = chunker::cut(&buf[..len], eof, &mut chunks);
        size += start as u64;
        buf.copy_within(start..len, 0);
        len -= start;
        if eof && len == 0 {
            // Kept for as long as the file is indexed: no spare capacity, and one chunk
            // moves back inline.
            chunks.shrink_to_fit();
            return Ok((chunks, size));
        }
    }
}

pub fn chunk_path(path: &Path) -> io::Result<(Chunks, u64)> {
    chunk_file(&File::open(path)?)
}

/// Reads `len` bytes at `offset` and returns them only if they hash to `want`
/// (a local file may have changed since it was indexed).
pub fn read_verified(path: &Path, offset: u64, len: u32, want: &Hash) -> Option<Vec<u8>> {
    read_chunk(&File::open(path).ok()?, offset, len, Some(want))
}

/// Reads `len` bytes at `offset` of an open file; with `verify`, only if they hash to it.
pub fn read_chunk(f: &File, offset: u64, len: u32, verify: Option<&Hash>) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).ok()?;
    verify
        .is_none_or(|want| chunker::hash(&buf) == *want)
        .then_some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ChunkRef;
    use crate::protocol::chunker::{
        MAX_CHUNK, MIN_CHUNK, SIZES, assert_within_bounds, hash, offsets,
    };
    use rand::{Rng, SeedableRng};
    use std::io::Write;

    fn write_tmp(data: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(data).unwrap();
        f
    }

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
            assert_within_bounds(&chunks);
            for (off, c) in offsets(&chunks) {
                let got = read_verified(f.path(), off, c.len, &c.hash).unwrap();
                assert_eq!(&got[..], &data[off as usize..off as usize + c.len as usize]);
            }
        }
    }

    #[test]
    fn reads_check_the_hash_only_when_asked() {
        let f = write_tmp(b"0123456789");
        let file = File::open(f.path()).unwrap();
        let right = hash(b"2345");
        assert_eq!(
            read_chunk(&file, 2, 4, Some(&right)).as_deref(),
            Some(&b"2345"[..])
        );
        assert_eq!(read_chunk(&file, 3, 4, Some(&right)), None);
        assert_eq!(read_chunk(&file, 3, 4, None).as_deref(), Some(&b"3456"[..]));
        // Past the end is never a chunk.
        assert_eq!(read_chunk(&file, 8, 4, None), None);
    }

    /// The cut points and hashes are those of fastcdc's `StreamCDC`, which earlier
    /// versions used: a difference would make every node see every file as changed.
    #[test]
    fn chunks_match_fastcdc_stream_chunking() {
        use crate::protocol::chunker::AVG_CHUNK;
        use fastcdc::v2020::{Normalization, StreamCDC};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut sizes = SIZES.to_vec();
        sizes.extend([BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12_345, 9_000_000]);
        for n in sizes {
            // Half random, half repetitive text: both kinds of cut decisions.
            let mut data = vec![0u8; n];
            rng.fill(&mut data[..n / 2]);
            for (i, b) in data[n / 2..].iter_mut().enumerate() {
                *b = b"the quick brown fox jumps over the lazy dog "[i % 44];
            }
            let want: Vec<ChunkRef> = StreamCDC::with_level(
                &data[..],
                MIN_CHUNK as usize,
                AVG_CHUNK as usize,
                MAX_CHUNK as usize,
                Normalization::Level1,
            )
            .map(|c| {
                let c = c.unwrap();
                ChunkRef {
                    hash: hash(&c.data),
                    len: c.length as u32,
                }
            })
            .collect();
            let (got, size) = chunk_path(write_tmp(&data).path()).unwrap();
            assert_eq!(size as usize, n);
            assert_eq!(got.to_vec(), want, "{n} bytes");
            // A reader that returns a few bytes at a time cuts the same way.
            let mut small = vec![0u8; BLOCK];
            let (got, _) = chunk_reader(Trickle(&data[..]), &mut small).unwrap();
            assert_eq!(got.to_vec(), want, "{n} bytes, read in small pieces");
        }
    }

    /// Returns at most 1,000 bytes per read.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(self.0.len()).min(1_000);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
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
