//! Compaction: giving back the dead bytes of packs that are partly dead. gc drops
//! chunk rows, and their entries' bytes count as dead in their packs; a pack whose
//! live share falls below `COMPACT_BELOW_PERCENT` has its live entries copied into the
//! pack being filled, and is then a dead pack, which gc deletes like any other.
//!
//! The steps, each safe to stop after (a crash between them leaves either unnamed
//! copies in a live pack, or a dead pack the next gc deletes):
//! 1. choose: the sparsest packs, with every write committed and none able to start
//!    (offline, or under the mount's lock), closing the pack being filled if it is
//!    one of them, so that no unfinished commit can name a chosen pack;
//! 2. copy: read each live entry's frame (verified, repaired on the way) and put it
//!    again, then sync the store: the copies are durable before any row names them
//!    (DESIGN.md §2.1). No lock is held: this is the slow part;
//! 3. move: one catalog transaction points each row that is still where it was read
//!    at its copy (a row gc dropped meanwhile stays dropped). gc makes it durable
//!    before the old pack can go (the pack's deletion must not outlive the move), with
//!    no lock of the mount held.
//!
//! Reads that took the old place before the move go on reading the old pack: gc
//! deletes it only after every older read has finished (`Fs::wait_for_older_reads`).
//! Work is in proportion to the garbage: the packs table says which packs are sparse,
//! and only their live entries are read and written, at most `PACKS_PER_RUN` packs
//! a run (a live share below one half means a byte written for each byte freed, or
//! less).

use crate::catalog::{Catalog, ChunkInfo};
use crate::error::Result;
use crate::fs::Fs;
use crate::store::Redundancy;
use crate::types::{ChunkId, Location, MirrorId, PackId};

/// A pack is compacted once its live entries are less than this share (in percent)
/// of its bytes: copying its live half frees at least as many bytes as it writes.
pub const COMPACT_BELOW_PERCENT: u64 = 50;

/// Packs compacted in one run (gc or background reclaim): with 16 MiB packs at most
/// 8 MiB read and written each, so a run is seconds, and the rest is the next run's.
pub const PACKS_PER_RUN: usize = 64;

/// Frames put together in one batch while copying a pack's live entries.
const COPY_BATCH_BYTES: usize = 4 << 20;

/// What compaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Packs whose live entries were all copied out (dead now, for gc to delete).
    pub packs: u64,
    /// Chunks copied and moved, and their entry bytes.
    pub chunks: u64,
    pub bytes: u64,
}

/// A chunk's move: its id, where it was read, where its copy lies.
pub type Move = (ChunkId, Location, Location);

/// What step 2 made durable: the moves to record, and the disks that were not
/// trusted when the copies were synced (they may lack the copies; the record marks
/// them incomplete).
#[derive(Clone, Debug, Default)]
pub struct Copied {
    pub moves: Vec<Move>,
    pub untrusted: Vec<MirrorId>,
}

/// Step 1: up to `limit` packs to compact, the sparsest first. The pack being filled
/// is closed if it is one of them. Call with every write committed and none able to
/// start (offline, or under the mount's lock).
pub fn choose(catalog: &Catalog, store: &dyn Redundancy, limit: usize) -> Result<Vec<PackId>> {
    let sparse: Vec<PackId> = catalog
        .sparse_packs(COMPACT_BELOW_PERCENT, limit)?
        .iter()
        .map(|p| p.id)
        .collect();
    if store.open_pack().is_some_and(|open| sparse.contains(&open)) {
        store.close_pack();
    }
    Ok(sparse)
}

/// Step 2: copies the entries of `chunks` (one pack's rows) to new places and makes
/// the copies durable; the moves to record. A chunk no disk holds a good copy of is
/// left where it is, with a warning (its pack stays; scrub names it). No lock needed.
pub fn copy(store: &dyn Redundancy, chunks: &[ChunkInfo]) -> Result<Copied> {
    let mut moves = Vec::with_capacity(chunks.len());
    let mut batch: Vec<(ChunkId, Location, Vec<u8>)> = Vec::new();
    let mut batch_bytes = 0;
    for chunk in chunks {
        let Some(from) = chunk.location else { continue };
        match store.read_frame(&chunk.id, from) {
            Ok(frame) => {
                batch_bytes += frame.len();
                batch.push((chunk.id, from, frame));
            }
            Err(e) if e.is_data_loss() => {
                log::warn!("compaction leaves chunk {} in pack {}: {e}", chunk.id, from.pack);
            }
            Err(e) => return Err(e),
        }
        if batch_bytes >= COPY_BATCH_BYTES {
            put_batch(store, &mut batch, &mut moves)?;
            batch_bytes = 0;
        }
    }
    put_batch(store, &mut batch, &mut moves)?;
    if moves.is_empty() {
        return Ok(Copied::default());
    }
    store.sync()?;
    Ok(Copied {
        moves,
        untrusted: store.untrusted(),
    })
}

fn put_batch(
    store: &dyn Redundancy,
    batch: &mut Vec<(ChunkId, Location, Vec<u8>)>,
    moves: &mut Vec<Move>,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let frames: Vec<(ChunkId, &[u8])> = batch.iter().map(|(id, _, f)| (*id, f.as_slice())).collect();
    let placed = store.put(&frames)?;
    moves.extend(
        batch
            .iter()
            .zip(placed)
            .map(|((id, from, _), to)| (*id, *from, to)),
    );
    batch.clear();
    Ok(())
}

/// Step 3: records the moves in one transaction (with the untrusted disks marked
/// incomplete). Committed, not yet durable: gc makes the catalog durable before it
/// deletes the emptied pack. Returns the chunks moved and their entry bytes.
pub fn record(catalog: &mut Catalog, copied: &Copied) -> Result<(u64, u64)> {
    if copied.moves.is_empty() {
        return Ok((0, 0));
    }
    let moved = catalog.move_chunks(&copied.moves, &copied.untrusted)?;
    let bytes = copied.moves.iter().map(|(_, from, _)| u64::from(from.len)).sum();
    Ok((moved, bytes))
}

fn add(total: &mut Compacted, pack_done: bool, (chunks, bytes): (u64, u64)) {
    total.packs += u64::from(pack_done);
    total.chunks += chunks;
    total.bytes += bytes;
}

/// Compacts the sparse packs of a repository no mount serves (the caller holds the
/// lock). The packs it empties are dead: gc deletes them next.
pub fn compact(catalog: &mut Catalog, store: &dyn Redundancy) -> Result<Compacted> {
    let mut done = Compacted::default();
    for pack in choose(catalog, store, PACKS_PER_RUN)? {
        let chunks = catalog.chunks_in_pack(pack)?;
        let copied = copy(store, &chunks)?;
        let moved = record(catalog, &copied)?;
        add(&mut done, copied.moves.len() == chunks.len(), moved);
    }
    Ok(done)
}

/// `compact` in a mount, beside the requests it serves: choosing, listing a pack's
/// rows and recording its moves are short steps under the core's lock; reading and
/// writing the entries holds no lock of the mount.
pub fn compact_mounted(fs: &Fs) -> Result<Compacted> {
    let mut done = Compacted::default();
    let packs = fs.with_catalog(|cat, store, _| choose(cat, store, PACKS_PER_RUN))?;
    let store = fs.store();
    for pack in packs {
        let chunks = fs.with_catalog(|cat, _, _| cat.chunks_in_pack(pack))?;
        let copied = copy(&*store, &chunks)?;
        let moved = fs.with_catalog(|cat, _, _| record(cat, &copied))?;
        add(&mut done, copied.moves.len() == chunks.len(), moved);
    }
    Ok(done)
}

/// Whether a run would find a pack to compact (one cheap query).
pub fn wanted(catalog: &Catalog) -> Result<bool> {
    Ok(!catalog.sparse_packs(COMPACT_BELOW_PERCENT, 1)?.is_empty())
}
