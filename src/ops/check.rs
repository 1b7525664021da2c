//! `snapfs check`: the catalog's invariants, then every chunk's pack entry present
//! on every complete mirror, and with `read_data` every copy read and verified
//! (scrub's verification, without repair). A mirror being filled (new, or back after
//! it was set aside) is not trusted yet: what it still lacks is a note, not a
//! problem, since a good copy of each chunk must be on a complete mirror. Read-only. `repair` mends the catalog's findings
//! (never chunk data), offline, after saving a copy of the catalog beside it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::catalog::{self, Catalog};
use crate::error::{Error, Result};
use crate::repo::{RepoLock, CATALOG_FILE};
use crate::store::MirrorState;
use crate::types::{MirrorId, PackId};

/// What `check` found.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CheckReport {
    pub chunks: u64,
    /// Copies read and verified (with --read-data).
    pub copies_verified: u64,
    /// One line per problem; empty when everything holds.
    pub problems: Vec<String>,
    /// One line per mirror being filled, with the copies it still lacks (read with
    /// --read-data): redundancy that is coming back, not damage.
    pub filling: Vec<String>,
}

/// Checks the repository whose catalog is `catalog`. With no mount running
/// (`mounted` false), a live inode that no name reaches is a problem too (with a
/// mount, it is a file unlinked while still open).
pub fn check(
    catalog: &Catalog,
    read_data: bool,
    mounted: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CheckReport> {
    let mut report = CheckReport {
        problems: catalog_problems(catalog, mounted)?,
        ..Default::default()
    };
    let settings = catalog.settings()?;
    let store = crate::repo::open_store(catalog, settings.repo_id)?;
    let mut filling: Vec<(MirrorId, String, u64)> = Vec::new();
    for m in store.status() {
        match &m.state {
            MirrorState::Lost { reason } => report
                .problems
                .push(format!("{} is unusable: {reason}", m.describe)),
            MirrorState::Filling => filling.push((m.id, m.describe.clone(), 0)),
            MirrorState::Healthy => {}
        }
    }
    let total = catalog.chunk_totals()?.chunks;
    let mut cursor = None;
    let (mut missing, mut corrupt, mut short) = (0u64, 0u64, 0u64);
    // The pack whose lengths were last looked at, and the lengths.
    let mut lengths: Option<(PackId, Vec<crate::store::PackLength>)> = None;
    loop {
        let batch = catalog.chunks_by_place(cursor, 1024)?;
        let Some(last) = batch.last().and_then(|c| c.location) else {
            break;
        };
        for chunk in &batch {
            let Some(at) = chunk.location else { continue };
            report.chunks += 1;
            let good = if read_data {
                let found = store.scrub(&chunk.id, at, false);
                report.copies_verified += (found.good.len() + found.corrupt.len()) as u64;
                for (bad, count) in [(&found.corrupt, &mut corrupt), (&found.missing, &mut missing)] {
                    for disk in bad {
                        match filling.iter_mut().find(|(id, _, _)| id == disk) {
                            Some((_, _, lacks)) => *lacks += 1,
                            None => *count += 1,
                        }
                    }
                }
                // A good copy counts only on a mirror that is trusted.
                found
                    .good
                    .iter()
                    .any(|d| !filling.iter().any(|(id, _, _)| id == d))
            } else {
                if lengths.as_ref().is_none_or(|(p, _)| *p != at.pack) {
                    lengths = Some((at.pack, store.pack_lengths(at.pack)));
                }
                let disks = &lengths.as_ref().expect("just set").1;
                for (_, _, len) in disks.iter().filter(|(_, trusted, _)| *trusted) {
                    match len {
                        None => missing += 1,
                        Some(len) if *len < at.end() => short += 1,
                        Some(_) => {}
                    }
                }
                disks
                    .iter()
                    .any(|(_, trusted, len)| *trusted && len.is_some_and(|l| l >= at.end()))
            };
            if !good && chunk.refs > 0 {
                report
                    .problems
                    .push(format!("chunk {} has no good copy in any mirror", chunk.id));
            }
        }
        cursor = Some(last);
        progress(report.chunks, total);
    }
    let unplaced = total.saturating_sub(report.chunks);
    if unplaced > 0 {
        report
            .problems
            .push(format!("{unplaced} chunks have no place in a pack"));
    }
    if missing > 0 {
        report.problems.push(format!(
            "{missing} copies are missing from a mirror that should hold them (snapfs scrub repairs them)"
        ));
    }
    if short > 0 {
        report.problems.push(format!(
            "{short} copies lie past the end of their pack's file on a mirror (snapfs scrub repairs them)"
        ));
    }
    if corrupt > 0 {
        report.problems.push(format!(
            "{corrupt} copies are corrupt (snapfs scrub repairs them)"
        ));
    }
    report.filling = filling
        .into_iter()
        .map(|(_, describe, lacks)| {
            let lacking = match read_data {
                true => format!("{lacks} copies are not in it yet"),
                false => "its copies are not counted until it is complete".into(),
            };
            format!(
                "{describe} is being filled: {lacking}; a mount fills it in the background, `snapfs scrub` fills it offline"
            )
        })
        .collect();
    Ok(report)
}

/// The catalog's own findings, and with no mount running its unnamed live inodes.
fn catalog_problems(catalog: &Catalog, mounted: bool) -> Result<Vec<String>> {
    let mut problems = catalog.check_invariants()?;
    if !mounted {
        let unnamed = catalog.live_unnamed()?;
        if !unnamed.is_empty() {
            let ids: Vec<String> = unnamed.iter().take(20).map(|i| i.to_string()).collect();
            problems.push(format!(
                "{} live inodes have no name (inodes {}{})",
                unnamed.len(),
                ids.join(", "),
                if unnamed.len() > 20 { ", …" } else { "" }
            ));
        }
    }
    Ok(problems)
}

/// What `check --repair` did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RepairReport {
    /// The copy of the catalog saved before anything changed.
    pub saved_copy: PathBuf,
    /// One line per repair made.
    pub repairs: Vec<String>,
    /// What the catalog check still finds afterwards (what no repair could explain).
    pub remaining: Vec<String>,
}

/// Repairs the catalog of the repository at `repo` (see `Catalog::repair`): takes the
/// repository lock, so it refuses while a mount or another command holds it; saves a
/// consistent copy of the catalog beside it as `catalog.db.before-repair-<time>`
/// (durable before anything changes); repairs in one transaction; checks again.
/// Chunk data is never touched.
pub fn repair(repo: &Path, now_ns: i64) -> Result<RepairReport> {
    let _lock = RepoLock::acquire(repo, "repairing the catalog (snapfs check --repair)")?;
    let db = repo.join(CATALOG_FILE);
    let stamp = catalog::snapshot_name(now_ns);
    let saved = repo.join(format!(
        "{CATALOG_FILE}.before-repair-{}",
        stamp.trim_start_matches('@')
    ));
    if saved.exists() {
        return Err(Error::Exists(saved.display().to_string()));
    }
    catalog::backup(&db, &saved)?;
    std::fs::File::open(&saved)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::File::open(repo)?.sync_all())
        .map_err(Error::io_with(format!("syncing {}", saved.display())))?;
    let mut catalog = Catalog::open(&db)?;
    let repairs = catalog.repair()?;
    let remaining = catalog_problems(&catalog, false)?;
    Ok(RepairReport {
        saved_copy: saved,
        repairs,
        remaining,
    })
}
