//! `snapfs mirror add` and `mirror remove`: changing the mirror set, and resilvering
//! (filling) a new or returning mirror from the others, pack by pack.
//!
//! A mirror being filled is recorded as `filling`: it is written from the moment it
//! joins but trusted for reads only once every pack is in it and synced; then it
//! becomes `complete`. An interrupted fill continues when `mirror add` is run again on
//! the same folder (a pack already there whole is not copied again).
//!
//! On a mounted repository (`add_mounted`, `remove_mounted`, `reinstate_lost`) the
//! same happens beside the requests the mount serves: the new mirror joins the
//! mount's store at once (at a pack boundary, so every pack from then on reaches it
//! whole), and the fill copies the packs from before, with no lock of the mount held.
//! A lost mirror that scrub refilled comes back the same way, without a remount.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fs::Fs;
use crate::repo::Repo;
use crate::store::{MirrorState, Redundancy};
use crate::types::{MirrorId, PackId};

/// What adding (or refilling) a mirror did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResilverReport {
    pub mirror: u32,
    /// Packs looked at.
    pub packs: u64,
    /// Packs copied into it (the others were there whole already), and their bytes.
    pub copied: u64,
    pub bytes: u64,
}

/// Adds the folder `dir` as a new mirror (or continues filling it, when it is one
/// already), copies every pack into it from the other mirrors, and marks it complete.
pub fn add(
    repo: &mut Repo,
    dir: &Path,
    now_ns: i64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ResilverReport> {
    let dir = std::path::absolute(dir).map_err(Error::io_with(format!("resolving {}", dir.display())))?;
    let repo_id = repo.settings.repo_id;
    let known = repo.catalog.mirrors()?.into_iter().find(|m| m.path == dir);
    let id = match known {
        Some(m) => {
            // Its folder may have come back empty: it gets its identity again.
            if crate::store::check_folder(&dir, repo_id, m.id).is_err() {
                crate::store::claim_folder(&dir, repo_id, m.id)?;
            }
            repo.catalog.set_mirror_state(m.id, "filling")?;
            m.id
        }
        None => {
            refuse_foreign(&dir)?;
            let id = repo.catalog.add_mirror(&dir, now_ns)?;
            if let Err(e) = crate::store::claim_folder(&dir, repo_id, id) {
                repo.catalog.remove_mirror(id)?;
                return Err(e);
            }
            id
        }
    };
    repo.store.attach(id, &dir)?;
    let packs: Vec<PackId> = repo.catalog.packs()?.iter().map(|p| p.id).collect();
    let mut report = ResilverReport {
        mirror: id.0,
        ..ResilverReport::default()
    };
    for (i, pack) in packs.iter().enumerate() {
        copy_pack(&*repo.store, id, *pack, &mut report)?;
        progress(i as u64 + 1, packs.len() as u64);
    }
    repo.store.set_complete(id)?;
    repo.catalog.set_mirror_state(id, "complete")?;
    Ok(report)
}

/// Copies `pack` into disk `id` unless it is there whole, counting it in `report`.
fn copy_pack(store: &dyn Redundancy, id: MirrorId, pack: PackId, report: &mut ResilverReport) -> Result<()> {
    let bytes = store.fill(id, pack)?;
    report.packs += 1;
    if bytes > 0 {
        report.copied += 1;
        report.bytes += bytes;
    }
    Ok(())
}

fn refuse_foreign(dir: &Path) -> Result<()> {
    if let Some((other, _)) = crate::store::read_identity(dir)? {
        return Err(Error::ForeignMirror {
            path: dir.to_path_buf(),
            other: other.to_string(),
        });
    }
    Ok(())
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

/// `add` on a mounted repository: records the folder (or a known one) as `filling`,
/// attaches it to the mount's store (every pack started from then on reaches it),
/// then copies in every older pack the catalog counts, with no lock of the mount
/// held, and marks it complete. A pack gc deletes meanwhile is skipped.
pub fn add_mounted(
    fs: &Fs,
    dir: &Path,
    now_ns: i64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ResilverReport> {
    let dir = std::path::absolute(dir).map_err(Error::io_with(format!("resolving {}", dir.display())))?;
    let repo_id = fs.settings().repo_id;
    let (id, known) =
        fs.with_catalog(
            |cat, _, _| match cat.mirrors()?.into_iter().find(|m| m.path == dir) {
                Some(m) => {
                    cat.set_mirror_state(m.id, "filling")?;
                    Ok((m.id, true))
                }
                None => {
                    refuse_foreign(&dir)?;
                    Ok((cat.add_mirror(&dir, now_ns)?, false))
                }
            },
        )?;
    let claimed = match known && crate::store::check_folder(&dir, repo_id, id).is_ok() {
        true => Ok(()),
        false => crate::store::claim_folder(&dir, repo_id, id),
    };
    let store = fs.store();
    if let Err(e) = claimed.and_then(|()| store.attach(id, &dir)) {
        if !known {
            fs.with_catalog(|cat, _, _| cat.remove_mirror(id))?;
        }
        return Err(e);
    }
    fs.reload_mirror_paths()?;
    fill_mounted(fs, id, &dir, progress)
}

/// One fill at a time in this process (a mount's own fill at start beside one that
/// `mirror add` or scrub asked for): held across a whole fill, never taken by a
/// request the mount serves.
static FILLS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Fills disk `id` (folder `dir`) of the mount's store, which takes every put already
/// (attached, or filling since the store was opened): copies in every older pack the
/// catalog counts, with no lock of the mount held, then marks it complete.
fn fill_mounted(
    fs: &Fs,
    id: MirrorId,
    dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ResilverReport> {
    let _one_at_a_time = FILLS.lock().unwrap_or_else(|p| p.into_inner());
    let store = fs.store();
    // Taken with every write committed, after the disk began taking puts: each pack
    // from before has its row by now, and none gets more entries.
    let packs: Vec<PackId> = fs.with_catalog(|cat, _, _| Ok(cat.packs()?.iter().map(|p| p.id).collect()))?;
    let mut report = ResilverReport {
        mirror: id.0,
        ..ResilverReport::default()
    };
    for (i, pack) in packs.iter().enumerate() {
        if let Err(e) = copy_pack(&*store, id, *pack, &mut report) {
            let still_known = fs.with_catalog(|cat, _, _| Ok(cat.packs()?.iter().any(|p| p.id == *pack)))?;
            if still_known {
                store.mark_lost(id, &format!("filling it failed: {e}"));
                return Err(e);
            }
            // gc deleted it meanwhile: a copy that landed after the deletion goes too.
            store.delete_packs(&[*pack])?;
        }
        progress(i as u64 + 1, packs.len() as u64);
    }
    store.set_complete(id)?;
    // Under the lock every commit takes: a commit that saw the disk untrusted (set
    // aside since) marks it incomplete before or after this, never in between.
    let trusted = fs.with_catalog(|cat, store, _| {
        let trusted = !store.untrusted().contains(&id);
        if trusted {
            cat.set_mirror_state(id, "complete")?;
        }
        Ok(trusted)
    })?;
    if !trusted {
        return Err(Error::MirrorUnusable {
            id,
            path: dir.to_path_buf(),
            reason: "it was set aside while being filled".into(),
        });
    }
    log::info!(
        "mirror {id} at {} is complete: {} packs, {} copied",
        dir.display(),
        report.packs,
        report.copied
    );
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
        let status = store.status();
        let healthy = |id: MirrorId| {
            status
                .iter()
                .any(|s| s.id == id && s.state == MirrorState::Healthy)
        };
        let others = mirrors
            .iter()
            .filter(|m| m.id != target.id && m.state == "complete" && healthy(m.id))
            .count();
        if others == 0 {
            return Err(Error::InvalidArgument(format!(
                "removing {} would leave no complete, healthy mirror; add another first (snapfs mirror add)",
                dir.display()
            )));
        }
        Ok(target.id)
    })?;
    store.detach(id)?;
    fs.with_catalog(|cat, _, _| cat.remove_mirror(id))?;
    fs.reload_mirror_paths()?;
    Ok(id.0)
}

/// Fills every mirror the mount's store counts as filling: one the catalog marked
/// incomplete because it was set aside during an earlier mount (or power went while
/// it was behind) and is back now, or a fill that was interrupted. The store opened
/// it filling, so it took every pack from the mount's start whole; this copies in the
/// older ones. The mount runs it in the background as it starts.
pub fn fill_incomplete(fs: &Fs) -> Result<Vec<ResilverReport>> {
    let records = fs.with_catalog(|cat, _, _| cat.mirrors())?;
    let mut reports = Vec::new();
    for m in fs.mirror_status() {
        if m.state != MirrorState::Filling {
            continue;
        }
        let Some(record) = records.iter().find(|r| r.id == m.id) else {
            continue;
        };
        reports.push(fill_mounted(fs, m.id, &record.path, &mut |_, _| {})?);
    }
    Ok(reports)
}

/// Brings back every mirror the mount has set aside whose folder is its own again (a
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
        if let Err(e) = crate::store::check_folder(&record.path, fs.settings().repo_id, id) {
            log::info!("mirror {id} ({}) is still lost: {e}", record.path.display());
            continue;
        }
        reports.push(add_mounted(fs, &record.path, crate::ops::now_ns(), progress)?);
    }
    Ok(reports)
}
