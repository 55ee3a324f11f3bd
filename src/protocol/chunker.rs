//! Content-defined chunking (FastCDC 2020) with BLAKE3 hashes. The parameters decide
//! every chunk boundary, so they are part of the wire protocol: changing them makes
//! every node see every file as new. An insert or edit in the middle of a large file
//! changes only the chunks around it, which is what makes deltas and renames cheap.
//! Only bytes in memory here: reading files to chunk them is `crate::fs::chunks`'s job.

use crate::engine::{ChunkRef, Chunks, Hash};
use fastcdc::v2020::{FastCDC, Normalization};

pub const MIN_CHUNK: u32 = 64 * 1024;
pub const AVG_CHUNK: u32 = 256 * 1024;
pub const MAX_CHUNK: u32 = 1024 * 1024;

pub fn hash(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

/// Cuts and hashes the chunks that `buf` (bytes from a chunk boundary on) already
/// decides, appends them to `chunks` and returns how many bytes of `buf` they cover.
///
/// The cut points are exactly those of fastcdc's `StreamCDC` with the same parameters
/// (which the wire protocol depends on): a cut is only searched while `buf` holds at
/// least `MAX_CHUNK` bytes past the chunk start, unless `last` says that `buf` is the
/// rest of the data, which is then cut to its end. A caller reading a stream keeps the
/// uncovered tail, appends more bytes to it and calls again.
pub fn cut(buf: &[u8], last: bool, chunks: &mut Chunks) -> usize {
    let len = buf.len();
    let cdc = FastCDC::with_level(
        buf,
        MIN_CHUNK as usize,
        AVG_CHUNK as usize,
        MAX_CHUNK as usize,
        Normalization::Level1,
    );
    let mut start = 0;
    while start < len && (last || len - start >= MAX_CHUNK as usize) {
        let (_, end) = cdc.cut(start, len - start);
        chunks.push(ChunkRef {
            hash: hash(&buf[start..end]),
            len: (end - start) as u32,
        });
        start = end;
    }
    start
}

/// Byte offset of each chunk in file order.
pub fn offsets(chunks: &[ChunkRef]) -> impl Iterator<Item = (u64, &ChunkRef)> {
    chunks.iter().scan(0u64, |off, c| {
        let at = *off;
        *off += u64::from(c.len);
        Some((at, c))
    })
}

/// Sizes around the chunking bounds, where off-by-one errors live; for every chunking
/// test.
#[cfg(test)]
pub(crate) const SIZES: &[usize] = &[
    0, 1, 65_535, 65_536, 65_537, 262_144, 1_048_575, 1_048_576, 1_048_577, 3_000_001,
];

/// Asserts that every chunk is within the bounds: at most `MAX_CHUNK`, and at least
/// `MIN_CHUNK` but for the last.
#[cfg(test)]
pub(crate) fn assert_within_bounds(chunks: &[ChunkRef]) {
    for (i, c) in chunks.iter().enumerate() {
        assert!(c.len <= MAX_CHUNK);
        if i + 1 < chunks.len() {
            assert!(c.len >= MIN_CHUNK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_last_cut_covers_the_data_within_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for &n in SIZES {
            let mut data = vec![0u8; n];
            rng.fill(&mut data[..]);
            let mut chunks = Chunks::new();
            assert_eq!(cut(&data, true, &mut chunks), n);
            assert_within_bounds(&chunks);
            for (off, c) in offsets(&chunks) {
                assert_eq!(hash(&data[off as usize..][..c.len as usize]), c.hash);
            }
        }
    }

    #[test]
    fn a_cut_before_the_end_keeps_a_tail_that_may_grow() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let mut data = vec![0u8; 3 * MAX_CHUNK as usize];
        rng.fill(&mut data[..]);
        let mut chunks = Chunks::new();
        let done = cut(&data, false, &mut chunks);
        assert!(data.len() - done < MAX_CHUNK as usize);
        assert_eq!(chunks.iter().map(|c| c.len as usize).sum::<usize>(), done);
        // Too little for a cut that more bytes could still move.
        assert_eq!(cut(&data[..MAX_CHUNK as usize - 1], false, &mut chunks), 0);
    }
}
