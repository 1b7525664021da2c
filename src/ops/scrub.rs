//! `snapfs scrub`: read every chunk on every mirror, verify it, rewrite bad or
//! missing copies from a good one, and name the files hurt by chunks that have no
//! good copy left.
//!
//! Scrub changes only object files, never the catalog, so it runs beside a mount
//! (objects are immutable under their id; a repair writes the same bytes the daemon
//! would). It walks chunks in id order and keeps its place in `REPO/scrub.cursor`,
//! so an interrupted scrub continues where it stopped. A mirror folder that vanished
//! and came back empty is given its identity again and filled.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::catalog::{Catalog, MirrorRecord};
use crate::codec;
use crate::error::{Error, Result};
use crate::store::{DirStore, ObjectStore};
use crate::types::{ChunkId, RepoId};

/// File in the repository that remembers where an interrupted scrub stopped.
pub const CURSOR_FILE: &str = "scrub.cursor";

/// One mirror's part of a scrub.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct MirrorScrub {
    pub id: u32,
    pub path: PathBuf,
    pub good: u64,
    pub corrupt: u64,
    pub missing: u64,
    pub repaired: u64,
    /// Why the mirror could not be read or repaired at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// A chunk with no good copy anywhere, and where it is used.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Damage {
    pub chunk: String,
    /// (snapshot name or "live", path) pairs.
    pub used_by: Vec<(String, String)>,
}

/// What a scrub found and did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ScrubReport {
    pub chunks: u64,
    /// True when this run continued an interrupted one.
    pub resumed: bool,
    pub mirrors: Vec<MirrorScrub>,
    pub unrepairable: Vec<Damage>,
}

impl ScrubReport {
    /// True when something is still broken (unrepairable chunks or unusable mirrors).
    pub fn damaged(&self) -> bool {
        !self.unrepairable.is_empty() || self.mirrors.iter().any(|m| m.problem.is_some())
    }
}

/// Progress: chunks done, chunks in all.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Opens a mirror for scrubbing; an empty or missing folder gets its identity back.
fn open_for_scrub(m: &MirrorRecord, repo_id: RepoId) -> Result<DirStore> {
    match DirStore::open(&m.path, repo_id, m.id) {
        Ok(s) => Ok(s),
        Err(open_err) => DirStore::create(&m.path, repo_id, m.id).map_err(|_| open_err),
    }
}

/// Scrubs every chunk of the repository at `repo` (whose catalog is `catalog`).
pub fn scrub(repo: &Path, catalog: &Catalog, progress: Progress<'_>) -> Result<ScrubReport> {
    let settings = catalog.settings()?;
    let records = catalog.mirrors()?;
    let mut report = ScrubReport::default();
    let mut stores: Vec<Option<DirStore>> = Vec::new();
    for m in &records {
        let mut entry = MirrorScrub {
            id: m.id.0,
            path: m.path.clone(),
            ..Default::default()
        };
        match open_for_scrub(m, settings.repo_id) {
            Ok(s) => stores.push(Some(s)),
            Err(e) => {
                entry.problem = Some(e.to_string());
                stores.push(None);
            }
        }
        report.mirrors.push(entry);
    }
    let cursor_path = repo.join(CURSOR_FILE);
    let mut cursor = std::fs::read_to_string(&cursor_path)
        .ok()
        .and_then(|s| ChunkId::from_hex(s.trim()));
    report.resumed = cursor.is_some();
    let total = catalog.chunk_totals(None)?.chunks;
    let mut done = 0u64;
    if let Some(c) = cursor {
        done = catalog.count_chunks_upto(&c)?;
    }
    loop {
        let batch = catalog.chunks_after(cursor, 512)?;
        let Some(last) = batch.last().map(|c| c.id) else {
            break;
        };
        for chunk in &batch {
            scrub_chunk(catalog, &chunk.id, &stores, &mut report)?;
            done += 1;
            report.chunks += 1;
        }
        progress(done, total);
        cursor = Some(last);
        std::fs::write(&cursor_path, last.to_hex())
            .map_err(Error::io_with(format!("writing {}", cursor_path.display())))?;
    }
    // Repairs are durable before the scrub says it is done.
    for store in stores.iter().flatten() {
        store.sync()?;
    }
    let _ = std::fs::remove_file(&cursor_path);
    Ok(report)
}

fn scrub_chunk(
    catalog: &Catalog,
    id: &ChunkId,
    stores: &[Option<DirStore>],
    report: &mut ScrubReport,
) -> Result<()> {
    let mut good: Option<Vec<u8>> = None;
    let mut bad = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        let Some(store) = store else { continue };
        let frame = match store.get_frame(id) {
            Ok(f) => f,
            Err(e) => {
                report.mirrors[i].problem.get_or_insert_with(|| e.to_string());
                continue;
            }
        };
        match frame {
            Some(f) if codec::decode(id, &f).is_ok() => {
                report.mirrors[i].good += 1;
                if good.is_none() {
                    good = Some(f);
                }
            }
            Some(_) => {
                report.mirrors[i].corrupt += 1;
                bad.push(i);
            }
            None => {
                report.mirrors[i].missing += 1;
                bad.push(i);
            }
        }
    }
    match good {
        Some(frame) => {
            for i in bad {
                let Some(store) = &stores[i] else { continue };
                match store.put(id, &frame) {
                    Ok(()) => report.mirrors[i].repaired += 1,
                    Err(e) => {
                        report.mirrors[i]
                            .problem
                            .get_or_insert_with(|| format!("repair failed: {e}"));
                    }
                }
            }
        }
        None => report.unrepairable.push(Damage {
            chunk: id.to_hex(),
            used_by: catalog.chunk_users(id)?,
        }),
    }
    Ok(())
}
