//! The bounds a decoded message must meet before anything acts on it: item counts per
//! message, chunks per file entry, chunk sizes, version counters, and the shape of
//! deltas and patches. A sender cannot make a receiver reserve space it does not need.

use super::codec::DecodeError;
use super::{FilePatch, Message};
use crate::protocol::delta::{ChunkDelta, DeltaOp};

/// Most entries in one manifest.
pub const MAX_ENTRIES: usize = 20_000;
/// Most chunk deltas in one message: each may make the receiver read four old chunks.
pub const MAX_DELTAS: usize = 64;
/// Most chunk hashes in one request.
pub const MAX_REQUEST_HASHES: usize = 20_000;
/// Chunks one file entry may list: 100,000 chunks of at most 1 MiB (about 100 GiB);
/// one entry must also fit in a single message.
pub const MAX_CHUNKS_PER_FILE: usize = 100_000;
/// Most regions in one `Descent`: every leaf once, plus their buckets and groups.
pub const MAX_REGIONS: usize =
    crate::engine::LEAVES + crate::engine::BUCKETS + crate::engine::GROUPS;
/// Largest version counter accepted from the wire (2^53: a change per nanosecond for
/// 100 days); the engine adds one to the largest counter it holds.
pub const MAX_VERSION_COUNTER: u64 = 1 << 53;

/// The per-kind item counts of a decoded message, then each entry, patch and delta.
pub(super) fn check_message(msg: &Message) -> Result<(), DecodeError> {
    match msg {
        Message::Manifest { entries, .. } if entries.len() > MAX_ENTRIES => {
            return Err(DecodeError::TooMany(entries.len()));
        }
        Message::Request { hashes, .. } if hashes.len() > MAX_REQUEST_HASHES => {
            return Err(DecodeError::TooMany(hashes.len()));
        }
        Message::Digest { buckets, .. } if buckets.len() != crate::engine::BUCKETS => {
            return Err(DecodeError::TooMany(buckets.len()));
        }
        Message::Summary { groups, .. } if groups.len() != crate::engine::GROUPS => {
            return Err(DecodeError::TooMany(groups.len()));
        }
        Message::Descent { items, .. } if items.len() > MAX_REGIONS => {
            return Err(DecodeError::TooMany(items.len()));
        }
        Message::Descent { items, .. } if !items.iter().all(|r| r.is_valid()) => {
            return Err(DecodeError::BadRegion);
        }
        Message::Patch { patches } if patches.len() > MAX_ENTRIES => {
            return Err(DecodeError::TooMany(patches.len()));
        }
        Message::Deltas { deltas } if deltas.len() > MAX_DELTAS => {
            return Err(DecodeError::TooMany(deltas.len()));
        }
        Message::Part {
            total,
            offset,
            data,
            ..
        } => {
            let end = (*offset as usize).saturating_add(data.len());
            if data.is_empty()
                || *total as usize > super::MAX_MESSAGE_BYTES
                || end > *total as usize
            {
                return Err(DecodeError::BadPart);
            }
        }
        Message::Manifest { entries, .. } => {
            for e in entries {
                check_entry(e)?;
            }
        }
        Message::Patch { patches } => {
            for p in patches {
                check_patch(p)?;
            }
        }
        Message::Deltas { deltas } => {
            for d in deltas {
                check_delta(d)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A patch's own bounds; the entry it expands to is checked in full then.
fn check_patch(p: &FilePatch) -> Result<(), DecodeError> {
    let bad = |reason: String| DecodeError::BadEntry {
        path: p.path.to_string(),
        reason,
    };
    let total = (p.keep_front as usize)
        .saturating_add(p.keep_back as usize)
        .saturating_add(p.chunks.len());
    if total > MAX_CHUNKS_PER_FILE {
        return Err(bad(format!(
            "{total} chunks, more than {MAX_CHUNKS_PER_FILE}"
        )));
    }
    if let Some(c) = p
        .chunks
        .iter()
        .find(|c| c.len == 0 || c.len > crate::protocol::chunker::MAX_CHUNK)
    {
        return Err(bad(format!("chunk of {} bytes", c.len)));
    }
    Ok(())
}

/// A delta rebuilds one chunk of at most `MAX_CHUNK` bytes from at most
/// [`crate::protocol::delta::MAX_BASES`] distinct others, in at most two steps per block of it
/// (a copy and new bytes), none of them empty; [`crate::protocol::delta::patch`] bounds the rest.
fn check_delta(d: &ChunkDelta) -> Result<(), DecodeError> {
    let most_ops = 2 * (d.len as usize).div_ceil(crate::protocol::delta::BLOCK) + 2;
    let distinct = d
        .bases
        .iter()
        .enumerate()
        .all(|(i, b)| !d.bases[..i].contains(b));
    let reason = if d.len == 0 || d.len > crate::protocol::chunker::MAX_CHUNK {
        format!("chunk of {} bytes", d.len)
    } else if d.bases.len() > crate::protocol::delta::MAX_BASES || !distinct {
        format!(
            "{} bases, more than {} or repeated",
            d.bases.len(),
            crate::protocol::delta::MAX_BASES
        )
    } else if d.ops.len() > most_ops {
        format!("{} steps, more than {most_ops}", d.ops.len())
    } else if d.ops.iter().any(|o| match o {
        DeltaOp::Copy { base, len, .. } => *len == 0 || usize::from(*base) >= d.bases.len(),
        DeltaOp::Data(data) => data.is_empty(),
    }) {
        "an empty step or a copy from a base it does not name".to_string()
    } else {
        return Ok(());
    };
    Err(DecodeError::BadEntry {
        path: format!("delta of chunk {}", blake3::Hash::from(d.hash).to_hex()),
        reason,
    })
}

/// Version counters must be at most [`MAX_VERSION_COUNTER`]. A file entry's size must be exactly what its chunk list covers, with chunks no larger
/// than the chunker makes: a sender cannot make a receiver reserve space or wait for
/// data that the manifest does not describe.
pub fn check_entry(e: &crate::engine::Entry) -> Result<(), DecodeError> {
    let bad = |reason: String| DecodeError::BadEntry {
        path: e.path.to_string(),
        reason,
    };
    // Counters grow by one per change; one near the top of u64 can only be forged, and
    // would overflow the next increment.
    if let Some((node, c)) = e.version.iter().find(|(_, c)| *c > MAX_VERSION_COUNTER) {
        return Err(bad(format!(
            "version counter {c} of {node} is out of range"
        )));
    }
    let crate::engine::Content::File { size, chunks, .. } = &e.content else {
        return Ok(());
    };
    if chunks.len() > MAX_CHUNKS_PER_FILE {
        return Err(bad(format!(
            "{} chunks, more than {MAX_CHUNKS_PER_FILE}",
            chunks.len()
        )));
    }
    let mut total = 0u64;
    for c in chunks {
        if c.len == 0 || c.len > crate::protocol::chunker::MAX_CHUNK {
            return Err(bad(format!("chunk of {} bytes", c.len)));
        }
        total += u64::from(c.len);
    }
    if total != *size {
        return Err(bad(format!(
            "claims {size} bytes but its chunks hold {total}"
        )));
    }
    Ok(())
}
