//! `snapfs upgrade`: converts a storage-format-1 repository (one object file per chunk
//! per mirror, schema 1-3) to format 2 (packs, schema 4) in place.
//!
//! Steps, each safe to interrupt at any point and resumed by running the command again:
//! 1. The catalog is migrated to schema 4 in one transaction: every chunk row gets
//!    empty place columns, and `settings.upgrade` marks the repository as being
//!    upgraded (it is refused by everything else until the end).
//! 2. Batch by batch, the chunks without a place are read from the object files (the
//!    first copy that verifies), appended to packs on every mirror, made durable, and
//!    only then given their places in one transaction. An interruption leaves packs
//!    no row names: the sweep the upgrade asks for deletes them.
//! 3. With every chunk placed, `chunks.mirrors` and the mark go (one transaction),
//!    then the object folders are deleted and fresh catalog copies are written to the
//!    mirrors (the old copies are format 1).
//!
//! Nothing is deleted before its replacement is durable and recorded, so nothing is
//! lost. The object files stay readable until step 3 (by an older snapfs, after
//! restoring a catalog copy); this snapfs reads the repository once it is done.

use std::path::Path;

use serde::Serialize;

use crate::catalog::Catalog;
use crate::codec;
use crate::error::{Error, Result};
use crate::repo::{self, RepoLock, CATALOG_FILE};
use crate::store::{DirStore, ObjectStore};
use crate::types::ChunkId;

/// Chunks moved per batch (one pack append and sync, one transaction).
const BATCH: usize = 512;

/// The folder of a format-1 mirror that holds its object files.
const OBJECTS_DIR: &str = "objects";

/// What an upgrade did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct UpgradeReport {
    /// False when the repository was format 2 already (leftover object folders of an
    /// upgrade interrupted at its very end are still deleted).
    pub converted: bool,
    /// Chunks moved into packs by this run, and their stored bytes.
    pub chunks: u64,
    pub bytes: u64,
    /// Unreferenced chunks that had no good copy left: their rows were dropped.
    pub dropped: u64,
    /// Mirror object folders deleted.
    pub object_folders_deleted: u64,
}

/// Upgrades the repository at `repo_path` (see the module doc), calling
/// `progress(chunks moved, chunks to move)` after each batch. Takes the lock.
pub fn upgrade(repo_path: &Path, now_ns: i64, progress: &mut dyn FnMut(u64, u64)) -> Result<UpgradeReport> {
    if !repo::exists(repo_path) {
        return Err(Error::NotARepository {
            path: repo_path.to_path_buf(),
        });
    }
    let _lock = RepoLock::acquire(repo_path, "upgrading the storage format (snapfs upgrade)")?;
    let mut catalog = Catalog::open_for_upgrade(&repo_path.join(CATALOG_FILE))?;
    let mut report = UpgradeReport::default();
    let records = catalog.mirrors()?;
    if catalog.upgrade_unfinished()? {
        report.converted = true;
        // Packs an interrupted batch left are named by no row: the next gc sweeps.
        repo::mark_sweep_needed(repo_path)?;
        let settings = catalog.settings()?;
        let sources: Vec<DirStore> = records
            .iter()
            .filter_map(|m| DirStore::open(&m.path, settings.repo_id, m.id).ok())
            .collect();
        let store = repo::open_store(&catalog, settings.repo_id)?;
        let total = catalog.unplaced_count()?;
        loop {
            let batch = catalog.unplaced_chunks(BATCH)?;
            if batch.is_empty() {
                break;
            }
            let mut frames: Vec<(ChunkId, Vec<u8>)> = Vec::new();
            let mut lost: Vec<ChunkId> = Vec::new();
            for chunk in &batch {
                match good_frame(&sources, &chunk.id)? {
                    Some(frame) => frames.push((chunk.id, frame)),
                    None if chunk.refs == 0 => lost.push(chunk.id),
                    None => {
                        return Err(Error::CorruptChunk {
                            id: chunk.id,
                            mirror: "every mirror".into(),
                            reason: format!(
                                "no good copy to move into a pack; used by {}",
                                describe_users(&catalog, &chunk.id)?
                            ),
                        })
                    }
                }
            }
            let refs: Vec<(ChunkId, &[u8])> = frames.iter().map(|(id, f)| (*id, f.as_slice())).collect();
            let places = store.put(&refs)?;
            store.sync()?;
            let moves: Vec<_> = frames.iter().map(|(id, _)| *id).zip(places).collect();
            catalog.set_locations(&moves, &store.untrusted())?;
            if !lost.is_empty() {
                catalog.drop_chunks(&lost)?;
                report.dropped += lost.len() as u64;
            }
            report.chunks += frames.len() as u64;
            report.bytes += frames.iter().map(|(_, f)| f.len() as u64).sum::<u64>();
            progress(report.chunks, total.max(report.chunks));
        }
        catalog.sync()?;
        catalog.finish_upgrade()?;
        catalog.sync()?;
        log::info!(
            "upgraded {} to storage format 2: {} chunks moved into packs",
            repo_path.display(),
            report.chunks
        );
    }
    for m in &records {
        let objects = m.path.join(OBJECTS_DIR);
        if objects.is_dir() {
            std::fs::remove_dir_all(&objects)
                .map_err(Error::io_with(format!("deleting {}", objects.display())))?;
            report.object_folders_deleted += 1;
        }
    }
    if report.converted {
        drop(catalog);
        let mirrors: Vec<_> = records.into_iter().map(|m| m.path).collect();
        crate::ops::recover::save_copies(repo_path, &mirrors, now_ns)?;
    }
    Ok(report)
}

/// The first copy of `id` in `sources` that verifies; `None` when none does.
fn good_frame(sources: &[DirStore], id: &ChunkId) -> Result<Option<Vec<u8>>> {
    for source in sources {
        if let Some(frame) = source.get_frame(id)? {
            if codec::decode(id, &frame).is_ok() {
                return Ok(Some(frame));
            }
        }
    }
    Ok(None)
}

fn describe_users(catalog: &Catalog, id: &ChunkId) -> Result<String> {
    let users: Vec<String> = catalog
        .chunk_users(id)?
        .into_iter()
        .map(|(view, path)| format!("{view}:{path}"))
        .collect();
    Ok(users.join(", "))
}
