//! `snapfs mirror add` and `mirror remove`: changing the mirror set, and resilvering
//! (filling) a new or returning mirror from the others.
//!
//! A mirror being filled is recorded as `filling`: it is trusted neither for reads nor
//! for dedup until every chunk is in it and synced; then it becomes `complete`. An
//! interrupted fill continues when `mirror add` is run again on the same folder.

use std::path::Path;

use serde::Serialize;

use crate::codec;
use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::store::{DirStore, ObjectStore};
use crate::types::MirrorId;

/// What adding (or refilling) a mirror did.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
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
        repo.catalog.mark_chunks_in_mirror(&done, id)?;
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
