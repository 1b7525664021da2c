//! `snapfs scrub`: read every chunk on every mirror, verify it, rewrite bad or
//! missing copies from a good one, and name the files hurt by chunks that have no
//! good copy left.
//!
//! Scrub changes only pack files, never the catalog, so it runs beside a mount (a
//! repair writes the same bytes at the same place, which every mirror holds). It
//! walks chunks in place order (pack, then offset) and keeps its place in
//! `REPO/scrub.cursor`, so an interrupted scrub continues where it stopped. A mirror
//! folder that vanished and came back empty is given its identity again and filled.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::catalog::{Catalog, MirrorRecord};
use crate::error::{Error, Result};
use crate::store::{MirrorState, PackMirrors, Redundancy, TARGET_PACK_BYTES};
use crate::types::{Location, MirrorId, PackId, RepoId};

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

/// Gives every mirror folder that vanished or came back empty its identity again,
/// so that the store opens it and scrub fills it; a folder that holds something
/// else is left alone (and reported lost by the store).
fn reclaim_empty_folders(records: &[MirrorRecord], repo_id: RepoId) {
    for m in records {
        if crate::store::check_folder(&m.path, repo_id, m.id).is_err() {
            let _ = crate::store::claim_folder(&m.path, repo_id, m.id);
        }
    }
}

/// Scrubs every chunk of the repository at `repo` (whose catalog is `catalog`).
pub fn scrub(repo: &Path, catalog: &Catalog, progress: Progress<'_>) -> Result<ScrubReport> {
    let settings = catalog.settings()?;
    let records = catalog.mirrors()?;
    reclaim_empty_folders(&records, settings.repo_id);
    // Every mirror counts as complete here: scrub reads and repairs them all.
    let folders: Vec<(MirrorId, PathBuf, bool)> =
        records.iter().map(|m| (m.id, m.path.clone(), true)).collect();
    let store = PackMirrors::open(
        settings.repo_id,
        &folders,
        catalog.next_pack_id()?,
        TARGET_PACK_BYTES,
    )?;
    let mut report = ScrubReport::default();
    for m in &records {
        let problem = store
            .status()
            .into_iter()
            .find(|s| s.id == m.id)
            .and_then(|s| match s.state {
                MirrorState::Lost { reason } => Some(reason),
                _ => None,
            });
        report.mirrors.push(MirrorScrub {
            id: m.id.0,
            path: m.path.clone(),
            problem,
            ..Default::default()
        });
    }
    let slot = |id: MirrorId| records.iter().position(|m| m.id == id);
    let cursor_path = repo.join(CURSOR_FILE);
    let mut cursor = std::fs::read_to_string(&cursor_path)
        .ok()
        .and_then(|s| parse_cursor(s.trim()));
    report.resumed = cursor.is_some();
    let total = catalog.chunk_totals()?.chunks;
    let mut done = 0u64;
    if let Some(c) = cursor {
        done = catalog.count_chunks_placed_upto(c)?;
    }
    loop {
        let batch = catalog.chunks_by_place(cursor, 512)?;
        let Some(last) = batch.last().and_then(|c| c.location) else {
            break;
        };
        for chunk in &batch {
            let Some(at) = chunk.location else { continue };
            let mut found = store.scrub(&chunk.id, at, true);
            if found.good.is_empty() {
                // Beside a mount, gc may have dropped the chunk since the batch was
                // listed, or compaction moved it and deleted its old pack.
                match catalog.chunk(&chunk.id)?.map(|c| c.location) {
                    None => continue,
                    Some(Some(now)) if now != at => found = store.scrub(&chunk.id, now, true),
                    Some(_) => {}
                }
            }
            let mut count = |ids: &[MirrorId], f: fn(&mut MirrorScrub) -> &mut u64| {
                for i in ids.iter().filter_map(|id| slot(*id)) {
                    *f(&mut report.mirrors[i]) += 1;
                }
            };
            count(&found.good, |m| &mut m.good);
            count(&found.corrupt, |m| &mut m.corrupt);
            count(&found.missing, |m| &mut m.missing);
            count(&found.repaired, |m| &mut m.repaired);
            for (id, why) in &found.failed {
                if let Some(i) = slot(*id) {
                    report.mirrors[i]
                        .problem
                        .get_or_insert_with(|| format!("repair failed: {why}"));
                }
            }
            if found.good.is_empty() {
                report.unrepairable.push(Damage {
                    chunk: chunk.id.to_hex(),
                    used_by: catalog.chunk_users(&chunk.id)?,
                });
            }
            done += 1;
            report.chunks += 1;
        }
        progress(done, total);
        cursor = Some(last);
        std::fs::write(&cursor_path, format!("{} {}", last.pack.0, last.offset))
            .map_err(Error::io_with(format!("writing {}", cursor_path.display())))?;
    }
    // Repairs are durable when made (each one fdatasyncs what it wrote).
    let _ = std::fs::remove_file(&cursor_path);
    Ok(report)
}

/// A saved cursor: "<pack> <offset>"; an older scrub's (a chunk id) starts over.
fn parse_cursor(text: &str) -> Option<Location> {
    let (pack, offset) = text.split_once(' ')?;
    Some(Location {
        pack: PackId(pack.parse().ok()?),
        offset: offset.parse().ok()?,
        len: 0,
    })
}

/// After a whole scrub (not a resumed one) of a repository no mount serves, every
/// mirror the catalog counts as filling that the scrub found or made whole (no
/// problem, every bad copy on it repaired) is complete again: a lost mirror refilled
/// by scrub is used without a `mirror add`. Returns those mirrors. Takes the lock;
/// a mount holding it takes the mirrors back itself (`Request::Reinstate`).
pub fn mark_refilled_complete(repo: &Path, report: &ScrubReport) -> Result<Vec<u32>> {
    if report.resumed {
        return Ok(Vec::new());
    }
    let whole: Vec<u32> = report
        .mirrors
        .iter()
        .filter(|m| m.problem.is_none() && m.corrupt + m.missing == m.repaired)
        .map(|m| m.id)
        .collect();
    let _lock = crate::repo::RepoLock::acquire(repo, "marking refilled mirrors complete (snapfs scrub)")?;
    let mut catalog = Catalog::open(&repo.join(crate::repo::CATALOG_FILE))?;
    let mut done = Vec::new();
    for m in catalog.mirrors()? {
        if m.state == "filling" && whole.contains(&m.id.0) {
            catalog.set_mirror_state(m.id, "complete")?;
            done.push(m.id.0);
        }
    }
    Ok(done)
}
