//! Garbage collection: deleting the chunks that nothing references any more.
//!
//! A chunk goes in two steps. **Condemn**, in one short catalog transaction: its row
//! is dropped, so no write can count on it any more (a write of the same bytes stores
//! a fresh copy), and the store is told it is going (a put of it waits until the
//! deletion is over). **Delete**, with no lock of the mount held: once every read
//! that started before the condemnation has finished, its objects go from every
//! mirror. So gc never deletes a chunk that is referenced or in flight (DESIGN §2.5)
//! by construction, not by timing, and the mount serves requests throughout, waiting
//! only for a batch's transaction. A crash between the steps leaves unknown objects,
//! which a sweep removes (the other order could leave rows naming deleted objects).
//!
//! Time is in proportion to the garbage: the catalog keeps a list of unreferenced
//! chunks (`chunk_garbage`), so gc never walks the repository, except a sweep.

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, ChunkInfo};
use crate::error::Result;
use crate::fs::Fs;
use crate::store::{MirrorStore, ObjectStore, RemovalGuard};

/// Chunks condemned per transaction: one batch holds the mount's writer for about
/// 10 µs a chunk, so this bounds what a `stat` beside a big gc waits.
pub const BATCH: usize = 1000;

/// What gc freed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct GcStats {
    pub chunks: u64,
    /// Stored bytes per mirror.
    pub bytes: u64,
    /// Object files no catalog row knows (left by a crash or a failed commit), removed
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

/// Chunks whose rows are gone and whose objects are about to be: the result of
/// `condemn`, consumed by `delete`.
#[must_use = "condemned chunks must be deleted (or left for a sweep)"]
pub struct Condemned {
    chunks: Vec<ChunkInfo>,
    _going: RemovalGuard,
}

impl Condemned {
    /// True when there was no garbage left to condemn.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Deletes the condemned chunks' objects from every mirror (no lock needed), then
    /// lets puts of them go ahead. The caller has waited for older reads.
    pub fn delete(self, store: &MirrorStore) -> Result<GcStats> {
        for c in &self.chunks {
            store.remove(&c.id)?;
        }
        Ok(GcStats {
            chunks: self.chunks.len() as u64,
            bytes: self.chunks.iter().map(|c| c.stored_size).sum(),
            ..Default::default()
        })
    }
}

/// Condemns up to `limit` unreferenced chunks: drops their rows in one transaction
/// and tells `store` they are going. Refuses (and changes nothing) if one is
/// referenced again. Runs with no write in flight (offline, or inside the mount with
/// writes committed first).
pub fn condemn(catalog: &mut Catalog, store: &MirrorStore, limit: usize) -> Result<Condemned> {
    let chunks = catalog.garbage_first(limit)?;
    let ids: Vec<_> = chunks.iter().map(|c| c.id).collect();
    // Puts wait from before the rows go: a put that started earlier belongs to a
    // write committed before this transaction (the caller flushed), so none is
    // running for these ids now.
    let going = store.begin_removal(&ids);
    catalog.drop_chunks(&ids)?;
    // The rows' removal must be durable before any object goes: a mount commits
    // without syncing, and a power cut after the deletion would bring back rows
    // naming objects that are gone. (A cut before it leaves unknown objects, which
    // a sweep removes.)
    catalog.sync()?;
    Ok(Condemned {
        chunks,
        _going: going,
    })
}

/// Deletes every chunk no extent references, from every mirror, batch by batch, on
/// a repository no mount serves (the caller holds the lock). With `sweep`, also
/// lists every mirror and deletes object files the catalog does not know. Stops at
/// the first error.
pub fn gc(catalog: &mut Catalog, store: &MirrorStore, dry_run: bool, sweep: bool) -> Result<GcStats> {
    gc_with_progress(catalog, store, dry_run, sweep, &mut |_, _| {})
}

/// `gc`, calling `progress(chunks deleted, chunks to delete)` after each batch.
pub fn gc_with_progress(
    catalog: &mut Catalog,
    store: &MirrorStore,
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
            let batch = condemn(catalog, store, BATCH)?;
            if batch.is_empty() {
                break;
            }
            add(&mut stats, batch.delete(store)?);
            progress(stats.chunks, chunks.max(stats.chunks));
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
/// was when it started: each batch is
/// condemned under the core's lock with writes committed first (one short
/// transaction), then deleted with no lock held, after the reads that might still
/// fetch its chunks. A sweep (rare: after a crash or a failed commit) runs under the
/// lock, since it must see no uncommitted object.
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
        let batch = fs.with_catalog(|cat, store, _| condemn(cat, store, limit))?;
        if batch.is_empty() {
            break;
        }
        fs.wait_for_older_reads();
        add(&mut stats, batch.delete(&store)?);
        progress(stats.chunks, total);
    }
    if sweep {
        stats.orphans = fs.with_catalog(|cat, store, _| sweep_unknown(cat, store, false))?;
        stats.swept = true;
    }
    log_stats(&stats);
    Ok(stats)
}

/// Background reclaim in a mount: `gc_mounted` when there is garbage (one cheap
/// query when there is none), never a sweep.
pub fn reclaim(fs: &Fs) -> Result<GcStats> {
    fs.finish_removals()?;
    let (garbage, _) = fs.with_catalog(|cat, _, _| cat.garbage_totals())?;
    if garbage == 0 {
        return Ok(GcStats::default());
    }
    gc_mounted(fs, false, false, &mut |_, _| {})
}

fn add(total: &mut GcStats, batch: GcStats) {
    total.chunks += batch.chunks;
    total.bytes += batch.bytes;
}

/// Deletes (or with `dry_run` counts) the object files of every mirror that the
/// catalog does not know. O(repository): only when something may have left them.
fn sweep_unknown(catalog: &Catalog, store: &MirrorStore, dry_run: bool) -> Result<u64> {
    let mut orphans = std::collections::BTreeSet::new();
    for m in catalog.mirrors()? {
        let Some(mirror) = store.store(m.id) else { continue };
        for id in mirror.list()? {
            if catalog.chunk(&id)?.is_none() {
                orphans.insert(id);
            }
        }
    }
    if !dry_run {
        for id in &orphans {
            store.remove(id)?;
        }
    }
    Ok(orphans.len() as u64)
}

fn log_stats(stats: &GcStats) {
    log::debug!(
        "gc{}: {} unreferenced chunks ({} stored bytes), {} unknown objects",
        if stats.dry_run { " (dry run)" } else { "" },
        stats.chunks,
        stats.bytes,
        stats.orphans
    );
}
