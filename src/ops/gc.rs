//! Garbage collection: dropping the chunks that nothing references any more, and
//! deleting the packs that hold nothing live.
//!
//! A chunk goes in one short catalog transaction: its row is dropped, so no write can
//! count on it any more (a write of the same bytes stores a fresh entry), and its
//! entry's bytes count as dead in its pack (schema.sql's triggers). A pack whose
//! bytes are all dead goes next: the packs to delete are chosen with every write
//! committed (offline, or inside the mount under its lock after a flush), so no
//! unfinished commit can name one (the pack being filled is closed first if it is
//! one of them); their files are
//! deleted once every read that started before has finished, with no lock of the
//! mount held; then their rows go. So gc never deletes a chunk that is referenced or
//! in flight (DESIGN §2.5) by construction, not by timing. A crash between the steps
//! leaves a dead pack that the next gc deletes. Partly dead packs are compaction's
//! (`ops::compact`), which gc runs after deleting the dead ones (freeing space
//! first, for a full disk), and whose emptied packs it then deletes the same way.
//!
//! Time is in proportion to the garbage: the catalog keeps a list of unreferenced
//! chunks (`chunk_garbage`) and counts each pack's live bytes, so gc never walks the
//! repository, except a sweep (which lists every pack file to find those no catalog
//! row knows: left by a crash or a failed commit).

use serde::{Deserialize, Serialize};

use super::compact;
use crate::catalog::Catalog;
use crate::error::Result;
use crate::fs::Fs;
use crate::store::Redundancy;
use crate::types::PackId;

/// Chunks condemned per transaction: one batch holds the mount's writer for about
/// 10 µs a chunk, so this bounds what a `stat` beside a big gc waits.
pub const BATCH: usize = 1000;

/// What gc freed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct GcStats {
    pub chunks: u64,
    /// Stored bytes of those chunks (per mirror): what their entries held.
    pub bytes: u64,
    /// Packs deleted because nothing in them was live any more (compacted ones
    /// among them).
    #[serde(default)]
    pub packs: u64,
    /// Sparse packs whose live entries were copied out by compaction, and the
    /// chunks and entry bytes copied.
    #[serde(default)]
    pub compacted_packs: u64,
    #[serde(default)]
    pub moved_chunks: u64,
    #[serde(default)]
    pub moved_bytes: u64,
    /// Pack files no catalog row knows (left by a crash or a failed commit), removed
    /// from all mirrors together; only counted when the sweep ran.
    pub orphans: u64,
    /// Whether the mirrors were swept for such files (O(repository), so only when
    /// something may have left them, or when asked).
    pub swept: bool,
    pub dry_run: bool,
    /// Catalog rows no generation saw (left by older versions), deleted by the sweep
    /// before the garbage was counted, or with `dry_run` only counted.
    #[serde(default)]
    pub unseen_rows: u64,
}

/// Drops up to `limit` unreferenced chunks' rows in one transaction. It is committed,
/// not yet durable: the deletion of dead packs makes the catalog durable first (a
/// power cut after a pack's deletion must not bring back rows naming it), so the
/// commit costs no fsync under the mount's lock. Refuses (and changes nothing) if one
/// is referenced again. Returns the chunks and their stored bytes.
pub fn condemn(catalog: &mut Catalog, limit: usize) -> Result<(u64, u64)> {
    let chunks = catalog.garbage_first(limit)?;
    if chunks.is_empty() {
        return Ok((0, 0));
    }
    let ids: Vec<_> = chunks.iter().map(|c| c.id).collect();
    catalog.drop_chunks(&ids)?;
    Ok((chunks.len() as u64, chunks.iter().map(|c| c.stored_size).sum()))
}

/// The packs gc may delete now: those with no live entry. The pack being filled is
/// one of them when every entry in it is dead: it is closed first, so the next
/// write starts a new pack. Call with every write committed and none able to start
/// (offline, or under the mount's lock), so no unfinished commit can name one.
pub fn dead_packs(catalog: &Catalog, store: &dyn Redundancy) -> Result<Vec<PackId>> {
    let dead = catalog.dead_packs()?;
    if store.open_pack().is_some_and(|open| dead.contains(&open)) {
        store.close_pack();
    }
    Ok(dead)
}

/// Deletes `packs` (chosen by `dead_packs`, after the reads that might still use
/// them) from every disk, then forgets their rows. First makes every commit durable
/// (the drops and moves that made them dead), so no power cut can bring back a row
/// naming a deleted pack.
pub fn delete_packs(catalog: &mut Catalog, store: &dyn Redundancy, packs: &[PackId]) -> Result<u64> {
    if packs.is_empty() {
        return Ok(0);
    }
    catalog.sync()?;
    store.delete_packs(packs)?;
    catalog.drop_pack_rows(packs)?;
    Ok(packs.len() as u64)
}

/// Deletes every chunk no extent references, from every mirror, batch by batch, on
/// a repository no mount serves (the caller holds the lock). With `sweep`, also
/// lists every mirror and deletes object files the catalog does not know. Stops at
/// the first error.
pub fn gc(catalog: &mut Catalog, store: &dyn Redundancy, dry_run: bool, sweep: bool) -> Result<GcStats> {
    gc_with_progress(catalog, store, dry_run, sweep, &mut |_, _| {})
}

/// `gc`, calling `progress(chunks deleted, chunks to delete)` after each batch.
pub fn gc_with_progress(
    catalog: &mut Catalog,
    store: &dyn Redundancy,
    dry_run: bool,
    sweep: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<GcStats> {
    let unseen_rows = match (sweep, dry_run) {
        (false, _) => 0,
        (true, true) => catalog.count_unseen_rows()?,
        (true, false) => catalog.drop_unseen_rows()?,
    };
    let (chunks, bytes) = catalog.garbage_totals()?;
    let mut stats = if dry_run {
        GcStats {
            chunks,
            bytes,
            ..Default::default()
        }
    } else {
        let mut stats = GcStats::default();
        loop {
            let batch = condemn(catalog, BATCH)?;
            if batch.0 == 0 {
                break;
            }
            add(&mut stats, batch);
            progress(stats.chunks, chunks.max(stats.chunks));
        }
        let dead = dead_packs(catalog, store)?;
        stats.packs = delete_packs(catalog, store, &dead)?;
        if let Some(done) = compaction(compact::compact(catalog, store))? {
            note_compacted(&mut stats, done);
            let dead = dead_packs(catalog, store)?;
            stats.packs += delete_packs(catalog, store, &dead)?;
        }
        stats
    };
    stats.dry_run = dry_run;
    stats.unseen_rows = unseen_rows;
    if sweep {
        stats.orphans = sweep_unknown(catalog, store, dry_run)?;
        stats.swept = true;
    }
    log_stats(&stats);
    Ok(stats)
}

/// gc on a mounted repository, beside the requests it serves, of the garbage there
/// was when it started: each batch is condemned under the core's lock with writes
/// committed first (one short transaction); then the dead packs, chosen under the
/// lock, are deleted with no lock held, after the reads that might still use them. A
/// sweep (rare: after a crash or a failed commit) chooses under the lock too, since
/// it must see no uncommitted entry.
pub fn gc_mounted(
    fs: &Fs,
    dry_run: bool,
    sweep: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<GcStats> {
    // Big deleted files drop their extents first, so that their chunks count (in a
    // dry run too: it finishes a deletion the user already made).
    fs.finish_removals()?;
    if dry_run {
        return fs.with_catalog(|cat, store, _| gc(cat, store, true, sweep));
    }
    let unseen_rows = match sweep {
        true => fs.with_catalog(|cat, _, _| cat.drop_unseen_rows())?,
        false => 0,
    };
    let (total, _) = fs.with_catalog(|cat, _, _| cat.garbage_totals())?;
    let store = fs.store();
    let mut stats = GcStats {
        unseen_rows,
        ..GcStats::default()
    };
    // As many chunks as were garbage when the run started: writers that go on making
    // garbage (overwrites) cannot keep the run going without end; what they leave is
    // the next run's (background reclaim's).
    while stats.chunks < total {
        let limit = BATCH.min((total - stats.chunks) as usize);
        let batch = fs.with_catalog(|cat, _, _| condemn(cat, limit))?;
        if batch.0 == 0 {
            break;
        }
        add(&mut stats, batch);
        progress(stats.chunks, total);
    }
    stats.packs = delete_dead_mounted(fs)?;
    if let Some(done) = compaction(compact::compact_mounted(fs))? {
        note_compacted(&mut stats, done);
        stats.packs += delete_dead_mounted(fs)?;
    }
    if sweep {
        let unknown = fs.with_catalog(|cat, store, _| unknown_packs(cat, store))?;
        fs.wait_for_older_reads();
        store.delete_packs(&unknown)?;
        stats.orphans = unknown.len() as u64;
        stats.swept = true;
    }
    log_stats(&stats);
    Ok(stats)
}

/// Deletes the dead packs of a mounted repository: chosen under the core's lock, then,
/// with no lock held, the catalog's commits made durable (as `delete_packs` does) and
/// the packs deleted after every read that might still use them. The packs deleted.
fn delete_dead_mounted(fs: &Fs) -> Result<u64> {
    let (dead, wal) = fs.with_catalog(|cat, store, _| Ok((dead_packs(cat, store)?, cat.wal_sync())))?;
    if dead.is_empty() {
        return Ok(0);
    }
    wal.sync()?;
    fs.wait_for_older_reads();
    fs.store().delete_packs(&dead)?;
    fs.with_catalog(|cat, _, _| cat.drop_pack_rows(&dead))?;
    Ok(dead.len() as u64)
}

/// A compaction's outcome for gc: a full disk stops it with a warning (gc has freed
/// what it could; the next run goes on), any other error is gc's.
fn compaction(result: Result<compact::Compacted>) -> Result<Option<compact::Compacted>> {
    match result {
        Ok(done) => Ok(Some(done)),
        Err(e) if e.is_no_space() => {
            log::warn!("compaction stopped: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn note_compacted(stats: &mut GcStats, done: compact::Compacted) {
    stats.compacted_packs += done.packs;
    stats.moved_chunks += done.chunks;
    stats.moved_bytes += done.bytes;
}

/// Background reclaim in a mount: `gc_mounted` when there is garbage or a pack to
/// compact (two cheap queries when there is neither), never a sweep.
pub fn reclaim(fs: &Fs) -> Result<GcStats> {
    fs.finish_removals()?;
    let wanted = fs.with_catalog(|cat, _, _| Ok(cat.garbage_totals()?.0 > 0 || compact::wanted(cat)?))?;
    if !wanted {
        return Ok(GcStats::default());
    }
    gc_mounted(fs, false, false, &mut |_, _| {})
}

fn add(total: &mut GcStats, (chunks, bytes): (u64, u64)) {
    total.chunks += chunks;
    total.bytes += bytes;
}

/// Pack files some disk holds that no catalog row knows, leaving out the pack being
/// filled. Call with every write committed. O(packs): only when something may have
/// left them.
fn unknown_packs(catalog: &Catalog, store: &dyn Redundancy) -> Result<Vec<PackId>> {
    let known: std::collections::BTreeSet<PackId> = catalog.packs()?.iter().map(|p| p.id).collect();
    let open = store.open_pack();
    Ok(store
        .pack_ids()?
        .into_iter()
        .filter(|p| !known.contains(p) && Some(*p) != open)
        .collect())
}

/// Deletes (or with `dry_run` counts) the pack files no catalog row knows.
fn sweep_unknown(catalog: &Catalog, store: &dyn Redundancy, dry_run: bool) -> Result<u64> {
    let unknown = unknown_packs(catalog, store)?;
    if !dry_run {
        store.delete_packs(&unknown)?;
    }
    Ok(unknown.len() as u64)
}

fn log_stats(stats: &GcStats) {
    log::debug!(
        "gc{}: {} unreferenced chunks ({} stored bytes), {} dead packs, {} packs compacted \
         ({} chunks, {} bytes copied), {} unknown packs",
        if stats.dry_run { " (dry run)" } else { "" },
        stats.chunks,
        stats.bytes,
        stats.packs,
        stats.compacted_packs,
        stats.moved_chunks,
        stats.moved_bytes,
        stats.orphans
    );
}
