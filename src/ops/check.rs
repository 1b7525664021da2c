//! `snapfs check`: the catalog's invariants, then every referenced chunk present in
//! a complete mirror, and with `read_data` every copy read and verified (scrub's
//! verification, without repair). Read-only. `repair` mends the catalog's findings
//! (never chunk data), offline, after saving a copy of the catalog beside it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::catalog::{self, Catalog};
use crate::codec;
use crate::error::{Error, Result};
use crate::repo::{RepoLock, CATALOG_FILE};
use crate::store::{DirStore, ObjectStore};

/// What `check` found.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CheckReport {
    pub chunks: u64,
    /// Copies read and verified (with --read-data).
    pub copies_verified: u64,
    /// One line per problem; empty when everything holds.
    pub problems: Vec<String>,
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
    let mut mirrors: Vec<(u32, PathBuf, Option<DirStore>)> = Vec::new();
    for m in catalog.mirrors()? {
        match DirStore::open(&m.path, settings.repo_id, m.id) {
            Ok(s) => mirrors.push((m.id.0, m.path, Some(s))),
            Err(e) => {
                report
                    .problems
                    .push(format!("mirror {} ({}) is unusable: {e}", m.id, m.path.display()));
                mirrors.push((m.id.0, m.path, None));
            }
        }
    }
    let total = catalog.chunk_totals(None)?.chunks;
    let mut cursor = None;
    let (mut missing, mut corrupt) = (0u64, 0u64);
    loop {
        let batch = catalog.chunks_after(cursor, 1024)?;
        let Some(last) = batch.last().map(|c| c.id) else {
            break;
        };
        for chunk in &batch {
            report.chunks += 1;
            let mut good = false;
            for (id, _, store) in &mirrors {
                let Some(store) = store else { continue };
                let claimed = chunk.mirrors & (1 << id) != 0;
                if read_data {
                    match store.get_frame(&chunk.id)? {
                        Some(frame) if codec::decode(&chunk.id, &frame).is_ok() => good = true,
                        Some(_) => corrupt += 1,
                        None if claimed => missing += 1,
                        None => {}
                    }
                    report.copies_verified += 1;
                } else if store.contains(&chunk.id)? {
                    good = true;
                } else if claimed {
                    missing += 1;
                }
            }
            if !good && chunk.refs > 0 {
                report
                    .problems
                    .push(format!("chunk {} has no good copy in any mirror", chunk.id));
            }
        }
        cursor = Some(last);
        progress(report.chunks, total);
    }
    if missing > 0 {
        report.problems.push(format!(
            "{missing} copies recorded in a mirror are missing there (snapfs scrub repairs them)"
        ));
    }
    if corrupt > 0 {
        report.problems.push(format!(
            "{corrupt} copies are corrupt (snapfs scrub repairs them)"
        ));
    }
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
