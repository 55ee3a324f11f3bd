//! Deltas within chunks: rsync's algorithm, applied to one changed chunk against the
//! chunks it replaced. A node keeps a small signature of every large chunk it pushed or
//! received (a rolling checksum and a 64-bit hash per 4 KiB block); when a local edit
//! replaces chunks, it sends each new chunk as the blocks of the old chunks it reuses
//! plus the bytes that are new, and the receiver rebuilds it from its own copy of the
//! old chunks. The rebuilt chunk is checked against its BLAKE3 hash like any other.

use crate::engine::{ChunkRef, Hash};
use crate::protocol::chunker::offsets;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use xxhash_rust::xxh3::xxh3_64;

/// Bytes per signature block: an edit costs at most two partial blocks beyond itself.
pub const BLOCK: usize = 4096;
/// Chunks smaller than this get no signature: a delta would save little.
pub const MIN_SIGNED_CHUNK: usize = 64 * 1024;
/// Most old chunks one delta may copy from.
pub const MAX_BASES: usize = 4;
/// Bytes per block in an encoded signature: the rolling hash and the block hash.
const SIG_ENTRY: usize = 16;

/// The signature of one chunk: its length and, per block from its start (the last
/// may be short), the rolling hash of its end and a 64-bit hash of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    len: u32,
    blocks: Vec<(u64, u64)>,
}

/// Random 64-bit values per byte value (splitmix64 from a fixed seed): the gear table
/// of the rolling hash. Part of the signature format.
const GEAR: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut x: u64 = 0x6d71_7379_6e63_6431;
    let mut i = 0;
    while i < 256 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
};

/// Bytes the rolling hash covers: a block is found by the hash of its last 64 bytes
/// and confirmed by its 64-bit hash.
const GEAR_SPAN: usize = 64;

/// The gear hash of the last [`GEAR_SPAN`] bytes before `end`. Each step shifts the
/// previous bytes one bit left, so bytes further back fall off by themselves: the hash
/// rolls forward one byte at a time with [`gear_step`], with nothing to take out.
fn gear_at(data: &[u8], end: usize) -> u64 {
    data[end.saturating_sub(GEAR_SPAN)..end]
        .iter()
        .fold(0, |g, &x| gear_step(g, x))
}

fn gear_step(g: u64, x: u8) -> u64 {
    (g << 1).wrapping_add(GEAR[usize::from(x)])
}

impl Signature {
    /// The signature of a chunk's bytes, or `None` for a chunk too small to be worth one.
    pub fn of(data: &[u8]) -> Option<Self> {
        if data.len() < MIN_SIGNED_CHUNK || data.len() > u32::MAX as usize {
            return None;
        }
        let blocks = data
            .chunks(BLOCK)
            .map(|b| (gear_at(b, b.len()), xxh3_64(b)))
            .collect();
        Some(Signature {
            len: data.len() as u32,
            blocks,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.blocks.len() * SIG_ENTRY);
        out.extend_from_slice(&self.len.to_le_bytes());
        for (weak, strong) in &self.blocks {
            out.extend_from_slice(&weak.to_le_bytes());
            out.extend_from_slice(&strong.to_le_bytes());
        }
        out
    }

    /// Reads what [`Signature::to_bytes`] wrote; `None` if it does not fit together.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len);
        if rest.len() % SIG_ENTRY != 0 || rest.len() / SIG_ENTRY != (len as usize).div_ceil(BLOCK) {
            return None;
        }
        let blocks = rest
            .chunks_exact(SIG_ENTRY)
            .map(|e| {
                let (w, s) = e.split_at(8);
                let weak = u64::from_le_bytes(w.try_into().unwrap_or_default());
                let strong = u64::from_le_bytes(s.try_into().unwrap_or_default());
                (weak, strong)
            })
            .collect();
        Some(Signature { len, blocks })
    }

    /// Length of the block at `i`.
    fn block_len(&self, i: usize) -> usize {
        (self.len as usize - i * BLOCK).min(BLOCK)
    }
}

/// Which old chunks to send a file's new chunks as deltas of, after a local edit
/// turned chunk list `old` into `new`: the first and the last new chunk of the region
/// the edit changed (between the chunks both lists share at either end) against the
/// replaced chunks at the same distance from the region's start, respectively its end.
/// Those two are where an edit leaves old bytes behind; the chunks between them hold
/// the edit itself (a whole rewrite of the file would otherwise search every chunk).
pub fn bases(old: &[ChunkRef], new: &[ChunkRef]) -> Vec<(Hash, Vec<Hash>)> {
    let front = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let back = old[front..]
        .iter()
        .rev()
        .zip(new[front..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let (old, new) = (&old[front..old.len() - back], &new[front..new.len() - back]);
    let (Some(first), Some(last)) = (new.first(), new.last()) else {
        return vec![];
    };
    let old_len: u64 = old.iter().map(|c| u64::from(c.len)).sum();
    let signed = |c: &&ChunkRef| c.len as usize >= MIN_SIGNED_CHUNK;
    // Old chunks overlapping the first `n` bytes of the old region, and its last `n`.
    let head = |n: u64| -> Vec<Hash> {
        offsets(old)
            .filter(|(at, _)| *at < n)
            .map(|(_, c)| c)
            .filter(signed)
            .map(|c| c.hash)
            .take(MAX_BASES)
            .collect()
    };
    let tail = |n: u64| -> Vec<Hash> {
        let mut v: Vec<Hash> = offsets(old)
            .filter(|(at, c)| at + u64::from(c.len) > old_len.saturating_sub(n))
            .map(|(_, c)| c)
            .filter(signed)
            .map(|c| c.hash)
            .collect();
        v.drain(..v.len().saturating_sub(MAX_BASES));
        v
    };
    let mut out = vec![];
    if new.len() == 1 {
        let mut b = head(u64::from(first.len));
        for h in tail(u64::from(first.len)) {
            if !b.contains(&h) {
                b.push(h);
            }
        }
        b.truncate(MAX_BASES);
        out.push((first.hash, b));
    } else {
        out.push((first.hash, head(u64::from(first.len))));
        out.push((last.hash, tail(u64::from(last.len))));
    }
    out.retain(|(_, b)| !b.is_empty());
    out
}

/// One step of rebuilding a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaOp {
    /// `len` bytes at `offset` of base chunk number `base`.
    Copy { base: u8, offset: u32, len: u32 },
    /// Bytes the bases do not hold.
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// A chunk described as edits of chunks the receiver holds (`bases`, by hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkDelta {
    pub hash: Hash,
    pub len: u32,
    pub bases: Vec<Hash>,
    pub ops: Vec<DeltaOp>,
}

impl ChunkDelta {
    /// Bytes of new data it carries.
    pub fn data_len(&self) -> usize {
        self.ops
            .iter()
            .map(|o| match o {
                DeltaOp::Data(d) => d.len(),
                DeltaOp::Copy { .. } => 0,
            })
            .sum()
    }
}

/// Block hashes computed in vain per [`REGION`] of the new chunk before [`diff`] stops
/// checking candidates there: repetitive data (the same 64 bytes again and again)
/// could otherwise make every position a candidate. A 4 KiB page of zero-padded data
/// whose start changed costs about 4,000 (every position until the next page lines
/// up), so the budget is per region, not per chunk: at most 64 MiB hashed per MiB.
const MISSES_PER_REGION: usize = 4096;
const REGION: usize = 64 * 1024;

/// Describes `data` as copies from the chunks whose signatures are given (at most
/// [`MAX_BASES`]) and new bytes: rsync's search, one byte position at a time, for old
/// blocks anywhere in the new chunk.
pub fn diff(data: &[u8], bases: &[&Signature]) -> Vec<DeltaOp> {
    let bases = &bases[..bases.len().min(MAX_BASES)];
    let mut by_weak: HashMap<u64, Vec<(u8, u32)>> = HashMap::new();
    for (j, s) in bases.iter().enumerate() {
        for (i, (weak, _)) in s.blocks.iter().enumerate() {
            if s.block_len(i) == BLOCK {
                by_weak.entry(*weak).or_default().push((j as u8, i as u32));
            }
        }
    }
    // One bit per value of the hash's top 16 bits: most positions are turned away
    // without a map lookup.
    let mut maybe = vec![0u64; 1024];
    for weak in by_weak.keys() {
        maybe[(weak >> 54) as usize] |= 1 << ((weak >> 48) & 63);
    }
    let mut ops = Ops::default();
    let mut literal = 0;
    let (mut region, mut misses) = (0, 0);
    // `end` is where the candidate block ends; `g` the rolling hash of the bytes before.
    let mut end = BLOCK;
    let mut g = if end <= data.len() {
        gear_at(data, end)
    } else {
        0
    };
    while end <= data.len() {
        if end / REGION != region {
            (region, misses) = (end / REGION, 0);
        }
        let start = end - BLOCK;
        let bit =
            misses < MISSES_PER_REGION && maybe[(g >> 54) as usize] & (1 << ((g >> 48) & 63)) != 0;
        let found = bit.then(|| by_weak.get(&g)).flatten().and_then(|cands| {
            let strong = xxh3_64(&data[start..end]);
            let hit = cands
                .iter()
                .find(|&&(j, i)| bases[j as usize].blocks[i as usize].1 == strong);
            misses += usize::from(hit.is_none());
            hit
        });
        if let Some(&(j, i)) = found {
            ops.data(&data[literal..start]);
            ops.copy(j, i * BLOCK as u32, BLOCK as u32);
            literal = end;
            end += BLOCK;
            if end <= data.len() {
                g = gear_at(data, end);
            }
            continue;
        }
        if end < data.len() {
            g = gear_step(g, data[end]);
        }
        end += 1;
    }
    // A base's short last block can only match the end of the new chunk (an edit
    // before a cut point that stayed where it was).
    let rest = &data[literal..];
    let tail = bases.iter().enumerate().find_map(|(j, s)| {
        let i = s.blocks.len().checked_sub(1)?;
        let n = s.block_len(i);
        let (weak, strong) = s.blocks[i];
        let end = rest.get(rest.len().checked_sub(n)?..)?;
        (n < BLOCK && gear_at(end, n) == weak && xxh3_64(end) == strong).then_some((
            j as u8,
            (i * BLOCK) as u32,
            n,
        ))
    });
    match tail {
        Some((j, offset, n)) => {
            ops.data(&rest[..rest.len() - n]);
            ops.copy(j, offset, n as u32);
        }
        None => ops.data(rest),
    }
    ops.0
}

/// Builds the op list, merging a copy that continues the previous one.
#[derive(Default)]
struct Ops(Vec<DeltaOp>);

impl Ops {
    fn data(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.0.push(DeltaOp::Data(bytes.to_vec()));
        }
    }

    fn copy(&mut self, base: u8, offset: u32, len: u32) {
        if let Some(DeltaOp::Copy {
            base: b,
            offset: o,
            len: l,
        }) = self.0.last_mut()
            && *b == base
            && *o + *l == offset
        {
            *l += len;
            return;
        }
        self.0.push(DeltaOp::Copy { base, offset, len });
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeltaError {
    #[error("a copy reaches outside base chunk {0}")]
    OutOfBase(u8),
    #[error("the rebuilt chunk is longer than its declared {0} bytes")]
    TooLong(u32),
    #[error("the rebuilt chunk does not match its hash")]
    Mismatch,
}

/// Rebuilds a chunk from `delta` and the bytes of its bases (in the order of
/// `delta.bases`), checking length and hash.
pub fn patch(delta: &ChunkDelta, bases: &[&[u8]]) -> Result<Vec<u8>, DeltaError> {
    let want = delta.len as usize;
    let mut out = Vec::with_capacity(want.min(crate::protocol::chunker::MAX_CHUNK as usize));
    for op in &delta.ops {
        let piece = match op {
            DeltaOp::Copy { base, offset, len } => bases
                .get(usize::from(*base))
                .and_then(|b| {
                    b.get(*offset as usize..(*offset as usize).checked_add(*len as usize)?)
                })
                .ok_or(DeltaError::OutOfBase(*base))?,
            DeltaOp::Data(d) => &d[..],
        };
        if out.len() + piece.len() > want {
            return Err(DeltaError::TooLong(delta.len));
        }
        out.extend_from_slice(piece);
    }
    if out.len() != want || crate::protocol::chunker::hash(&out) != delta.hash {
        return Err(DeltaError::Mismatch);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(seed: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        rand::rngs::StdRng::seed_from_u64(seed).fill(&mut v[..]);
        v
    }

    fn delta(new: &[u8], bases: &[&[u8]]) -> ChunkDelta {
        let sigs: Vec<Signature> = bases.iter().map(|b| Signature::of(b).unwrap()).collect();
        ChunkDelta {
            hash: crate::protocol::chunker::hash(new),
            len: new.len() as u32,
            bases: bases
                .iter()
                .map(|b| crate::protocol::chunker::hash(b))
                .collect(),
            ops: diff(new, &sigs.iter().collect::<Vec<_>>()),
        }
    }

    fn rebuilt(d: &ChunkDelta, bases: &[&[u8]]) -> Vec<u8> {
        patch(d, bases).unwrap()
    }

    #[test]
    fn the_gear_hash_rolls_to_the_hash_of_the_next_window() {
        let data = random(1, 3 * BLOCK);
        let mut g = gear_at(&data, BLOCK);
        for end in BLOCK + 1..=3 * BLOCK {
            g = gear_step(g, data[end - 1]);
            assert_eq!(g, gear_at(&data, end), "at {end}");
        }
    }

    /// Data of one repeated pattern makes every position a candidate whose block hash
    /// misses: the search gives up after a bounded number of them.
    #[test]
    fn repetitive_data_does_not_make_the_search_quadratic() {
        let pattern: Vec<u8> = (0..64u8).collect();
        let mut old: Vec<u8> = pattern.iter().copied().cycle().take(300_000).collect();
        old[BLOCK - 1] = 0xff; // every old block differs from the new data's
        let new: Vec<u8> = pattern.iter().copied().cycle().take(300_000).collect();
        let d = delta(&new, &[&old]);
        assert_eq!(rebuilt(&d, &[&old]), new);
    }

    /// Pages of a few bytes and zero padding (database pages, images): every position
    /// in the padding is a candidate, and a changed page must not make the search give
    /// up on the pages after it.
    #[test]
    fn a_changed_page_of_padded_data_costs_about_a_page() {
        let page = |seed: u64| {
            let mut p = random(seed, 100);
            p.resize(BLOCK, 0);
            p
        };
        let old: Vec<u8> = (0..64).flat_map(page).collect();
        let mut new = old.clone();
        new[10 * BLOCK..10 * BLOCK + 100].copy_from_slice(&random(99, 100));
        let d = delta(&new, &[&old]);
        assert_eq!(rebuilt(&d, &[&old]), new);
        assert!(d.data_len() <= 2 * BLOCK, "{} bytes", d.data_len());
    }

    #[test]
    fn signatures_survive_their_encoding_and_reject_a_torn_one() {
        let s = Signature::of(&random(2, 300_001)).unwrap();
        let bytes = s.to_bytes();
        assert_eq!(Signature::from_bytes(&bytes), Some(s));
        assert_eq!(Signature::from_bytes(&bytes[..bytes.len() - 1]), None);
        assert_eq!(
            Signature::from_bytes(&bytes[..bytes.len() - SIG_ENTRY]),
            None
        );
        assert!(Signature::of(&random(2, MIN_SIGNED_CHUNK - 1)).is_none());
    }

    /// An overwrite in the middle of a chunk: only the changed bytes and the two partial
    /// blocks around them travel.
    #[test]
    fn an_overwrite_costs_its_bytes_and_at_most_two_blocks() {
        let old = random(3, 262_144 + 123);
        let mut new = old.clone();
        new[100_000..110_000].copy_from_slice(&random(4, 10_000));
        let d = delta(&new, &[&old]);
        assert_eq!(rebuilt(&d, &[&old]), new);
        assert!(d.data_len() <= 10_000 + 2 * BLOCK, "{} bytes", d.data_len());
    }

    /// An insertion shifts what follows; the rolling search finds the old blocks at
    /// their new offsets, and the short last block at the end.
    #[test]
    fn an_insertion_finds_the_shifted_blocks() {
        let old = random(5, 200_000 + 77);
        let mut new = old[..50_001].to_vec();
        new.extend_from_slice(&random(6, 999));
        new.extend_from_slice(&old[50_001..]);
        let d = delta(&new, &[&old]);
        assert_eq!(rebuilt(&d, &[&old]), new);
        assert!(d.data_len() <= 999 + 2 * BLOCK, "{} bytes", d.data_len());
    }

    /// A new chunk that starts inside one old chunk and ends with the next (the edit
    /// moved a cut point): it copies from both.
    #[test]
    fn a_chunk_spanning_two_old_chunks_copies_from_both() {
        let a = random(7, 150_000);
        let b = random(8, 180_000 + 5);
        let mut new = a[..60_000].to_vec();
        new.extend_from_slice(&random(9, 30_000));
        new.extend_from_slice(&b[40_000..]);
        let d = delta(&new, &[&a, &b]);
        assert_eq!(rebuilt(&d, &[&a, &b]), new);
        assert!(d.data_len() <= 30_000 + 3 * BLOCK, "{} bytes", d.data_len());
        assert!(
            d.ops
                .iter()
                .any(|o| matches!(o, DeltaOp::Copy { base: 1, .. }))
        );
    }

    fn chunk(b: u8, len: u32) -> ChunkRef {
        ChunkRef { hash: [b; 32], len }
    }

    /// An overwrite across a cut point: the first new chunk is paired with the old
    /// chunks from the region's start, the last with those before its end.
    #[test]
    fn the_edges_of_a_changed_region_are_paired_with_the_chunks_they_replaced() {
        const K: u32 = 1024;
        let old = [
            chunk(1, 300 * K),
            chunk(2, 200 * K),
            chunk(3, 250 * K),
            chunk(4, 100 * K),
        ];
        let new = [
            chunk(1, 300 * K),
            chunk(5, 120 * K),
            chunk(6, 180 * K),
            chunk(7, 150 * K),
            chunk(4, 100 * K),
        ];
        assert_eq!(
            bases(&old, &new),
            vec![([5; 32], vec![[2; 32]]), ([7; 32], vec![[3; 32]])]
        );
        // One new chunk in place of two old ones: both are its bases.
        let new = [chunk(1, 300 * K), chunk(8, 450 * K), chunk(4, 100 * K)];
        assert_eq!(bases(&old, &new), vec![([8; 32], vec![[2; 32], [3; 32]])]);
        // Old chunks too small to have a signature are no bases; an unchanged list has
        // nothing to pair.
        let old = [chunk(1, 300 * K), chunk(2, 10 * K)];
        let new = [chunk(1, 300 * K), chunk(9, 11 * K)];
        assert_eq!(bases(&old, &new), vec![]);
        assert_eq!(bases(&old, &old), vec![]);
    }

    #[test]
    fn unrelated_data_is_all_new_bytes() {
        let old = random(10, 100_000);
        let new = random(11, 100_000);
        let d = delta(&new, &[&old]);
        assert_eq!(d.ops, vec![DeltaOp::Data(new.clone())]);
        assert_eq!(rebuilt(&d, &[&old]), new);
    }

    #[test]
    fn a_forged_or_mismatched_delta_is_refused() {
        let old = random(12, 100_000);
        let mut new = old.clone();
        new[0] ^= 1;
        let d = delta(&new, &[&old]);
        // The receiver's base differs from the sender's: the hash catches it.
        let mut other = old.clone();
        other[50_000] ^= 1;
        assert_eq!(patch(&d, &[&other[..]]), Err(DeltaError::Mismatch));
        let reach = ChunkDelta {
            ops: vec![DeltaOp::Copy {
                base: 0,
                offset: 99_999,
                len: 2,
            }],
            ..d.clone()
        };
        assert_eq!(patch(&reach, &[&old[..]]), Err(DeltaError::OutOfBase(0)));
        let missing = ChunkDelta {
            ops: vec![DeltaOp::Copy {
                base: 1,
                offset: 0,
                len: 1,
            }],
            ..d.clone()
        };
        assert_eq!(patch(&missing, &[&old[..]]), Err(DeltaError::OutOfBase(1)));
        let long = ChunkDelta {
            ops: vec![DeltaOp::Data(vec![0; 100_001])],
            ..d
        };
        assert_eq!(patch(&long, &[&old[..]]), Err(DeltaError::TooLong(100_000)));
    }
}
