//! `snapfs mirror add` and `mirror remove`: changing the mirror set, and resilvering
//! (filling) a new or returning mirror from the others.
//!
//! A mirror being filled is recorded as `filling`: it is trusted neither for reads nor
//! for dedup until every chunk is in it and synced; then it becomes `complete`. An
//! interrupted fill continues when `mirror add` is run again on the same folder.
//!
//! On a mounted repository (`add_mounted`, `remove_mounted`, `reinstate_lost`) the
//! same happens beside the requests the mount serves: the new mirror joins the
//! mount's store at once, last in read order, so every chunk written from then on
//! reaches it; the fill copies what it lacks (the catalog's per-chunk mirror bits
//! say what it holds) in batches, each marked in one short transaction. A lost
//! mirror that scrub refilled comes back the same way, without a remount.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Error, Result};
use crate::fs::Fs;
use crate::repo::Repo;
use crate::store::{DirStore, MirrorSet, MirrorState, ObjectStore};
use crate::types::{ChunkId, MirrorId};

/// What adding (or refilling) a mirror did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResilverReport {
    pub mirror: u32,
    pub chunks: u64,
    /// Chunks copied into it (the others were there already).
    pub copied: u64,
    pub bytes: u64,
}

/// Adds the folder `dir` as a new mirror (or continues filling it, when it is one
/// already), copies every chunk into it from the other mirrors, and marks it complete.
pub fn add(
    repo: &mut Repo,
    dir: &Path,
    now_ns: i64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ResilverReport> {
    let dir = std::path::absolute(dir).map_err(Error::io_with(format!("resolving {}", dir.display())))?;
    let known = repo.catalog.mirrors()?.into_iter().find(|m| m.path == dir);
    let (id, store) = match known {
        Some(m) => {
            let store = match DirStore::open(&dir, repo.settings.repo_id, m.id) {
                Ok(s) => s,
                Err(_) => DirStore::create(&dir, repo.settings.repo_id, m.id)?,
            };
            repo.catalog.set_mirror_state(m.id, "filling")?;
            (m.id, store)
        }
        None => {
            if let Some((other, _)) = crate::store::read_identity(&dir)? {
                return Err(Error::ForeignMirror {
                    path: dir.clone(),
                    other: other.to_string(),
                });
            }
            let id = repo.catalog.add_mirror(&dir, now_ns)?;
            match DirStore::create(&dir, repo.settings.repo_id, id) {
                Ok(s) => (id, s),
                Err(e) => {
                    repo.catalog.remove_mirror(id)?;
                    return Err(e);
                }
            }
        }
    };
    let report = fill(repo, id, &store, progress)?;
    repo.catalog.set_mirror_state(id, "complete")?;
    Ok(report)
}

fn fill(
    repo: &mut Repo,
    id: MirrorId,
    target: &DirStore,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ResilverReport> {
    let total = repo.catalog.chunk_totals(None)?.chunks;
    let mut report = ResilverReport {
        mirror: id.0,
        chunks: 0,
        copied: 0,
        bytes: 0,
    };
    let sources: Vec<MirrorId> = repo
        .catalog
        .mirrors()?
        .into_iter()
        .filter(|m| m.id != id)
        .map(|m| m.id)
        .collect();
    let mut cursor = None;
    loop {
        let batch = repo.catalog.chunks_after(cursor, 1024)?;
        let Some(last) = batch.last().map(|c| c.id) else {
            break;
        };
        let mut done = Vec::new();
        for chunk in &batch {
            report.chunks += 1;
            let present = target
                .get_frame(&chunk.id)?
                .is_some_and(|f| codec::decode(&chunk.id, &f).is_ok());
            if !present {
                let frame = sources
                    .iter()
                    .filter_map(|m| repo.store.store(*m))
                    .filter_map(|s| s.get_frame(&chunk.id).ok().flatten())
                    .find(|f| codec::decode(&chunk.id, f).is_ok());
                let Some(frame) = frame else {
                    if chunk.refs > 0 {
                        return Err(Error::CorruptChunk {
                            id: chunk.id,
                            mirror: "every mirror".into(),
                            reason: "no good copy to fill the new mirror from; run snapfs scrub".into(),
                        });
                    }
                    continue;
                };
                target.put(&chunk.id, &frame)?;
                report.copied += 1;
                report.bytes += frame.len() as u64;
            }
            done.push(chunk.id);
        }
        // Durable in the mirror before the catalog says so.
        target.sync()?;
        let _ = repo.catalog.mark_chunks_in_mirror(&done, id)?;
        cursor = Some(last);
        progress(report.chunks, total);
    }
    Ok(report)
}

/// Removes the mirror at `dir` from the repository (its files stay). Refused when no
/// other complete mirror would be left.
pub fn remove(repo: &mut Repo, dir: &Path) -> Result<u32> {
    let dir = std::path::absolute(dir).map_err(Error::io_with(format!("resolving {}", dir.display())))?;
    let mirrors = repo.catalog.mirrors()?;
    let target = mirrors
        .iter()
        .find(|m| m.path == dir)
        .ok_or_else(|| Error::NotFound(format!("mirror {} (see snapfs status)", dir.display())))?;
    let others_complete = mirrors
        .iter()
        .filter(|m| m.id != target.id && m.state == "complete")
        .count();
    if others_complete == 0 {
        return Err(Error::InvalidArgument(format!(
            "removing {} would leave no complete mirror; add another first (snapfs mirror add)",
            dir.display()
        )));
    }
    repo.catalog.remove_mirror(target.id)?;
    Ok(target.id.0)
}

/// Chunks a mounted fill looks at per batch (one short transaction each).
const MOUNTED_BATCH: usize = 1024;

/// `add` on a mounted repository: records the folder (or a known one) as
/// `filling`, attaches it to the mount's store, then copies into it every chunk it
/// lacks, in batches, while the mount serves, and marks it complete. A chunk whose
/// bit says the mirror holds it is only checked for presence (scrub verifies
/// bytes); any other is copied unless a good copy is already there.
pub fn add_mounted(
    fs: &Fs,
    dir: &Path,
    now_ns: i64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ResilverReport> {
    let dir = std::path::absolute(dir).map_err(Error::io_with(format!("resolving {}", dir.display())))?;
    let (id, repo_id, known) = fs.with_catalog(|cat, _, _| {
        let repo_id = cat.settings()?.repo_id;
        match cat.mirrors()?.into_iter().find(|m| m.path == dir) {
            Some(m) => {
                cat.set_mirror_state(m.id, "filling")?;
                Ok((m.id, repo_id, true))
            }
            None => {
                if let Some((other, _)) = crate::store::read_identity(&dir)? {
                    return Err(Error::ForeignMirror {
                        path: dir.clone(),
                        other: other.to_string(),
                    });
                }
                Ok((cat.add_mirror(&dir, now_ns)?, repo_id, false))
            }
        }
    })?;
    // As `add`: a known mirror is opened (or given its identity again when its
    // folder came back empty); a new one must be an empty or new folder.
    let opened = match known {
        true => DirStore::open(&dir, repo_id, id).or_else(|_| DirStore::create(&dir, repo_id, id)),
        false => DirStore::create(&dir, repo_id, id),
    };
    let target = match opened {
        Ok(s) => s,
        Err(e) => {
            if !known {
                fs.with_catalog(|cat, _, _| cat.remove_mirror(id))?;
            }
            return Err(e);
        }
    };
    let store = fs.store();
    store.attach(id, Box::new(target))?;
    fs.reload_mirror_paths()?;
    let report = fill_mounted(fs, id, progress).inspect_err(|e| {
        store.mark_lost(id, format!("filling it failed: {e}"));
    })?;
    fs.with_catalog(|cat, _, _| cat.set_mirror_state(id, "complete"))?;
    log::info!(
        "mirror {id} at {} is complete: {} chunks, {} copied",
        dir.display(),
        report.chunks,
        report.copied
    );
    Ok(report)
}

fn fill_mounted(fs: &Fs, id: MirrorId, progress: &mut dyn FnMut(u64, u64)) -> Result<ResilverReport> {
    let store = fs.store();
    let target = store
        .store(id)
        .ok_or_else(|| Error::NotFound(format!("mirror {id}")))?;
    // Everything put before the attach is committed now (with its mirror bits), so
    // what the bits say below is all the fill must copy.
    let total = fs.with_catalog(|cat, _, _| Ok(cat.chunk_totals(None)?.chunks))?;
    let mut report = ResilverReport {
        mirror: id.0,
        chunks: 0,
        copied: 0,
        bytes: 0,
    };
    let mut cursor: Option<ChunkId> = None;
    let only_target = {
        let mut set = MirrorSet::EMPTY;
        set.insert(id);
        set
    };
    loop {
        let batch = fs.with_catalog(|cat, _, _| cat.chunks_after(cursor, MOUNTED_BATCH))?;
        let Some(last) = batch.last().map(|c| c.id) else {
            break;
        };
        let (mut marked, mut copied, mut unsourced) = (Vec::new(), Vec::new(), Vec::new());
        for chunk in &batch {
            report.chunks += 1;
            let present = if MirrorSet(chunk.mirrors).contains(id) {
                target.contains(&chunk.id)?
            } else {
                target
                    .get_frame(&chunk.id)?
                    .is_some_and(|f| codec::decode(&chunk.id, &f).is_ok())
            };
            if !present {
                let frame = store
                    .status()
                    .iter()
                    .filter(|m| m.id != id && m.state == MirrorState::Healthy)
                    .filter_map(|m| store.store(m.id))
                    .filter_map(|s| s.get_frame(&chunk.id).ok().flatten())
                    .find(|f| codec::decode(&chunk.id, f).is_ok());
                let Some(frame) = frame else {
                    unsourced.push(chunk);
                    continue;
                };
                // Waits for a gc deleting this chunk, like any put.
                if !store.put_to(&chunk.id, &frame, only_target)?.contains(id) {
                    return Err(Error::NoMirror {
                        reason: format!("mirror {id} failed while being filled"),
                    });
                }
                report.copied += 1;
                report.bytes += frame.len() as u64;
                copied.push(chunk.id);
            }
            marked.push(chunk.id);
        }
        // Durable in the mirror before the catalog says so.
        target.sync()?;
        let gone = fs.with_catalog(|cat, _, _| cat.mark_chunks_in_mirror(&marked, id))?;
        // A copy of a chunk gc deleted meanwhile would be an object nobody knows.
        for chunk in copied.iter().filter(|c| gone.contains(c)) {
            let _ = target.remove(chunk);
        }
        // No good copy elsewhere: fine for a chunk gc has deleted since (or one
        // nothing references), a hole to report otherwise.
        for chunk in unsourced.iter().filter(|c| c.refs > 0) {
            if fs.with_catalog(|cat, _, _| cat.chunk(&chunk.id))?.is_some() {
                return Err(Error::CorruptChunk {
                    id: chunk.id,
                    mirror: "every other mirror".into(),
                    reason: "no good copy to fill the mirror from; run snapfs scrub".into(),
                });
            }
        }
        cursor = Some(last);
        progress(report.chunks, total.max(report.chunks));
    }
    Ok(report)
}

/// `remove` on a mounted repository: the mount stops using the mirror at once
/// (requests already running finish with it) and the catalog forgets it.
pub fn remove_mounted(fs: &Fs, dir: &Path) -> Result<u32> {
    let dir = std::path::absolute(dir).map_err(Error::io_with(format!("resolving {}", dir.display())))?;
    let store = fs.store();
    let id = fs.with_catalog(|cat, _, _| {
        let mirrors = cat.mirrors()?;
        let target = mirrors
            .iter()
            .find(|m| m.path == dir)
            .ok_or_else(|| Error::NotFound(format!("mirror {} (see snapfs status)", dir.display())))?;
        let healthy = store.healthy();
        let others = mirrors
            .iter()
            .filter(|m| m.id != target.id && m.state == "complete" && healthy.contains(m.id))
            .count();
        if others == 0 {
            return Err(Error::InvalidArgument(format!(
                "removing {} would leave no complete, healthy mirror; add another first (snapfs mirror add)",
                dir.display()
            )));
        }
        // Not trusted from here on, should the removal stop half-way.
        cat.set_mirror_state(target.id, "filling")?;
        Ok(target.id)
    })?;
    store.detach(id)?;
    fs.reload_mirror_paths()?;
    // Detached, the mirror gets no new bits: clear the old ones a page per turn of
    // the catalog lock (the mount serves between pages), then drop the row.
    let mut cursor = None;
    while let Some(last) = fs.with_catalog(|cat, _, _| cat.clear_mirror_bits(id, cursor, MOUNTED_BATCH))? {
        cursor = Some(last);
    }
    fs.with_catalog(|cat, _, _| cat.remove_mirror_row(id))?;
    Ok(id.0)
}

/// Brings back every mirror the mount has set aside that can be opened again (a
/// disk that returned, a folder scrub refilled): each is attached and filled with
/// what it lacks, as `add_mounted` does. Returns what each fill did; a mirror that
/// still cannot be opened stays lost and is skipped.
pub fn reinstate_lost(fs: &Fs, progress: &mut dyn FnMut(u64, u64)) -> Result<Vec<ResilverReport>> {
    let lost: Vec<MirrorId> = fs
        .mirror_status()
        .into_iter()
        .filter(|m| matches!(m.state, MirrorState::Lost { .. }))
        .map(|m| m.id)
        .collect();
    let records = fs.with_catalog(|cat, _, _| cat.mirrors())?;
    let mut reports = Vec::new();
    for id in lost {
        let Some(record) = records.iter().find(|m| m.id == id) else {
            continue;
        };
        let repo_id = fs.settings().repo_id;
        if let Err(e) = DirStore::open(&record.path, repo_id, id) {
            log::info!("mirror {id} ({}) is still lost: {e}", record.path.display());
            continue;
        }
        reports.push(add_mounted(fs, &record.path, crate::ops::now_ns(), progress)?);
    }
    Ok(reports)
}
