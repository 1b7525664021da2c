//! Snapshot operations on a catalog: naming, listing, forgetting, holding, rolling
//! back, and garbage collection of the chunks nothing references.
//!
//! Each function works on a `Catalog` (and the store where chunks are involved), so
//! the same code runs offline under the repository lock and inside the mount daemon
//! (which calls it with its own catalog, writes flushed first).

use serde::{Deserialize, Serialize};

use super::retention::{self, Decision, Policy};

use crate::catalog::{Catalog, FileKind, Generation};
use crate::types::InodeId;

use super::history;
use crate::error::{Error, Result};
use crate::fs::Fs;

/// One snapshot as `snapfs list` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// RFC 3339 UTC time the snapshot was taken.
    pub time: String,
    pub files: u64,
    pub logical_bytes: u64,
    /// Stored bytes per mirror that only this snapshot references: what forgetting
    /// it (alone) and then `snapfs gc` frees from each mirror.
    pub exclusive_bytes: u64,
    pub held: bool,
}

/// Finds a snapshot by name: with or without its `@`, or `@latest` for the newest.
/// Malformed and unknown names are errors that say so.
pub fn resolve(catalog: &Catalog, name: &str) -> Result<Generation> {
    let name = if name.starts_with('@') {
        name.to_string()
    } else {
        format!("@{name}")
    };
    let snapshots: Vec<Generation> = catalog
        .generations()?
        .into_iter()
        .filter(|g| g.name.is_some())
        .collect();
    if name == "@latest" {
        return snapshots
            .into_iter()
            .last()
            .ok_or_else(|| Error::NotFound("@latest (there are no snapshots yet)".into()));
    }
    let well_formed = name.len() >= 19
        && name[1..].chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && name.as_bytes().get(11) == Some(&b'T');
    if !well_formed {
        return Err(Error::InvalidArgument(format!(
            "{name} is not a snapshot name (they look like @2026-01-31T142500Z, or @latest)"
        )));
    }
    snapshots
        .into_iter()
        .find(|g| g.name.as_deref() == Some(name.as_str()))
        .ok_or_else(|| Error::NotFound(format!("snapshot {name} (see `snapfs list`)")))
}

/// Every snapshot, oldest first.
pub fn list(catalog: &Catalog) -> Result<Vec<SnapshotInfo>> {
    let mut out = Vec::new();
    for g in catalog.generations()? {
        let (Some(name), Some(frozen)) = (g.name.clone(), g.frozen_ns) else {
            continue;
        };
        let totals = catalog.tree_totals(g.id)?;
        let time =
            chrono::DateTime::from_timestamp_nanos(frozen).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        out.push(SnapshotInfo {
            name,
            label: g.label.clone(),
            time,
            files: totals.files,
            logical_bytes: totals.logical_bytes,
            exclusive_bytes: catalog.exclusive_bytes(g.id)?,
            held: g.held,
        });
    }
    Ok(out)
}

/// What forget did (or, in a dry run, would do).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ForgetReport {
    pub forgotten: Vec<String>,
    /// Snapshots a policy kept, with why (empty when snapshots were named).
    pub kept: Vec<Decision>,
    /// Stored bytes per mirror that `snapfs gc` frees afterwards (all garbage).
    pub frees_bytes: u64,
    pub dry_run: bool,
}

/// Which snapshots to forget: by name, or by a retention policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForgetTarget {
    Names(Vec<String>),
    Policy(Policy),
}

/// Forgets snapshots, all or nothing: every name is checked first, and a held
/// snapshot is refused by name (a policy always keeps it). With `dry_run`, changes
/// nothing and reports the bytes gc would then free.
pub fn forget(
    catalog: &mut Catalog,
    target: &ForgetTarget,
    dry_run: bool,
    now_ns: i64,
) -> Result<ForgetReport> {
    if dry_run {
        catalog.commit_batch()?;
        return forget_dry_run(catalog, target, now_ns);
    }
    let (mut report, targets) = choose_forgotten(catalog, target, false, now_ns)?;
    report.frees_bytes = catalog.measure_forget(&targets.iter().map(|g| g.id).collect::<Vec<_>>())?;
    report.forgotten = targets.into_iter().filter_map(|g| g.name).collect();
    Ok(report)
}

/// `forget` through a running mount, one snapshot per transaction, oldest first, with
/// the core's lock taken for each one alone (on a million files a forget of 200
/// snapshots held it for 6.2 s in one transaction, and every write waited that long).
/// The snapshots are chosen on a read connection first, names and holds checked for
/// all before any is forgotten. A failure part way (a full disk, a snapshot held
/// meanwhile) leaves the ones already forgotten forgotten, as restic and borg do, and
/// is reported with their count. `frees_bytes` is all garbage afterwards, as `forget`
/// reports it.
pub fn forget_mounted(fs: &Fs, target: &ForgetTarget, now_ns: i64) -> Result<ForgetReport> {
    let (mut report, targets) = fs.with_read_catalog(|cat| choose_forgotten(cat, target, false, now_ns))?;
    let mut oldest_first: Vec<&Generation> = targets.iter().collect();
    oldest_first.sort_by_key(|g| g.id);
    for (done, g) in oldest_first.iter().enumerate() {
        let started = std::time::Instant::now();
        let result = fs.with_catalog(|cat, _, _| cat.forget(g.id));
        log::debug!(
            "forgot {} in {:?}",
            g.name.as_deref().unwrap_or("?"),
            started.elapsed()
        );
        if let Err(e) = result {
            if done > 0 {
                log::error!(
                    "forget stopped after {done} of {} snapshots, at {}: {e}",
                    oldest_first.len(),
                    g.name.as_deref().unwrap_or("?")
                );
            }
            return Err(e);
        }
    }
    report.frees_bytes = fs.with_read_catalog(|cat| cat.garbage_totals())?.1;
    report.forgotten = targets.into_iter().filter_map(|g| g.name).collect();
    Ok(report)
}

/// What `forget` with `dry_run` reports, on a catalog it only reads (a read
/// connection of a mount, beside the writer): the same choice, the same bytes.
pub fn forget_dry_run(catalog: &Catalog, target: &ForgetTarget, now_ns: i64) -> Result<ForgetReport> {
    let (mut report, targets) = choose_forgotten(catalog, target, true, now_ns)?;
    report.frees_bytes = catalog.forget_frees(&targets.iter().map(|g| g.id).collect::<Vec<_>>())?;
    report.forgotten = targets.into_iter().filter_map(|g| g.name).collect();
    Ok(report)
}

/// The snapshots `target` names (refusing held ones by name) or its policy drops, and
/// a report with the policy's reasons for each one it keeps.
fn choose_forgotten(
    catalog: &Catalog,
    target: &ForgetTarget,
    dry_run: bool,
    now_ns: i64,
) -> Result<(ForgetReport, Vec<Generation>)> {
    let mut report = ForgetReport {
        dry_run,
        ..Default::default()
    };
    let mut targets: Vec<Generation> = Vec::new();
    match target {
        ForgetTarget::Names(names) if names.is_empty() => {
            return Err(Error::InvalidArgument(
                "nothing to forget: name snapshots, or give a policy such as --keep-last 10".into(),
            ))
        }
        ForgetTarget::Names(names) => {
            for name in names {
                let g = resolve(catalog, name)?;
                if g.held {
                    let n = g.name.unwrap_or_default();
                    return Err(Error::InvalidArgument(format!(
                        "{n} is held; `snapfs release {n}` first"
                    )));
                }
                if !targets.iter().any(|t| t.id == g.id) {
                    targets.push(g);
                }
            }
        }
        ForgetTarget::Policy(policy) => {
            let snaps: Vec<Generation> = catalog
                .generations()?
                .into_iter()
                .filter(|g| g.frozen_ns.is_some())
                .collect();
            for d in retention::decide(&snaps, policy, now_ns)? {
                if d.reasons.is_empty() {
                    if let Some(g) = snaps.iter().find(|g| g.name.as_deref() == Some(d.name.as_str())) {
                        targets.push(g.clone());
                    }
                } else {
                    report.kept.push(d);
                }
            }
        }
    }
    Ok((report, targets))
}

/// Pins or unpins a snapshot; returns its name.
pub fn hold(catalog: &mut Catalog, name: &str, held: bool) -> Result<String> {
    let g = resolve(catalog, name)?;
    catalog.set_held(g.id, held)?;
    Ok(g.name.unwrap_or_default())
}

/// What a rollback did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RollbackReport {
    /// The snapshot rolled back to.
    pub target: String,
    /// The snapshot of the tree as it was just before (roll back to it to undo).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety_snapshot: Option<String>,
    /// Catalog rows changed.
    pub rows_changed: u64,
    pub dry_run: bool,
    /// What changed, for the mount to invalidate kernel caches (not reported).
    #[serde(skip)]
    pub changes: crate::catalog::RollbackChanges,
}

/// Makes the live tree (or, with `path`, one file or folder of it) what snapshot
/// `name` shows, after taking a safety snapshot. Newer snapshots are kept. In a dry
/// run, checks the name and the path and changes nothing. `open` are the live files a
/// mount holds open: those the snapshot lacks stay, nameless, until closed.
pub fn rollback(
    catalog: &mut Catalog,
    name: &str,
    path: Option<&str>,
    dry_run: bool,
    now_ns: i64,
    open: &[InodeId],
) -> Result<RollbackReport> {
    let target = resolve(catalog, name)?;
    let target_name = target.name.clone().unwrap_or_default();
    let path = path.map(|p| p.trim_matches('/')).filter(|p| !p.is_empty());
    let subtree = match path {
        None => None,
        Some(p) => {
            if history::find(catalog, target.id, p)?.is_none() {
                return Err(Error::NotFound(format!(
                    "/{p} did not exist in {target_name}; nothing to roll back"
                )));
            }
            let (parent_path, leaf) = p.rsplit_once('/').unwrap_or(("", p));
            let live = catalog.live();
            let parent = history::find(catalog, live, parent_path)?
                .filter(|id| {
                    catalog
                        .inode(live, *id)
                        .ok()
                        .flatten()
                        .is_some_and(|a| a.kind == FileKind::Dir)
                })
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "folder /{parent_path} in the live tree (roll back a folder above /{p})"
                    ))
                })?;
            let mut inodes = Vec::new();
            let mut dirs = Vec::new();
            for gen in [target.id, live] {
                if let Some(root) = history::find(catalog, gen, p)? {
                    collect(catalog, gen, root, &mut inodes, &mut dirs)?;
                }
            }
            // A file of the subtree that has (had) a name outside it, in the snapshot or
            // now, would change or vanish there too: refuse rather than surprise.
            for id in &inodes {
                for gen in [target.id, live] {
                    for (dir, entry) in catalog.names_of(gen, *id)? {
                        let inside = dirs.contains(&dir) || (dir == parent && entry == leaf.as_bytes());
                        if !inside {
                            return Err(Error::InvalidArgument(format!(
                                "{:?} was moved or linked across /{p} since {target_name}; roll back a folder \
                                 that holds both places, or use `snapfs restore`",
                                String::from_utf8_lossy(&entry)
                            )));
                        }
                    }
                }
            }
            Some((parent, leaf.as_bytes().to_vec(), inodes, dirs))
        }
    };
    if dry_run {
        return Ok(RollbackReport {
            target: target_name,
            safety_snapshot: None,
            rows_changed: 0,
            dry_run,
            changes: Default::default(),
        });
    }
    let label = match path {
        Some(p) => format!("before rollback of /{p} to {target_name}"),
        None => format!("before rollback to {target_name}"),
    };
    let safety = catalog.snapshot(Some(&label), now_ns)?;
    let changes = match subtree {
        None => catalog.rollback_to(target.id, open)?,
        Some((parent, leaf, inodes, dirs)) => {
            catalog.rollback_subtree(target.id, parent, &leaf, &inodes, &dirs, open)?
        }
    };
    Ok(RollbackReport {
        target: target_name,
        safety_snapshot: safety.name,
        rows_changed: changes.rows,
        dry_run,
        changes,
    })
}

/// Every inode under (and including) `root` in `gen`, and the folders among them.
fn collect(
    catalog: &Catalog,
    gen: crate::types::GenId,
    root: InodeId,
    inodes: &mut Vec<InodeId>,
    dirs: &mut Vec<InodeId>,
) -> Result<()> {
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        inodes.push(id);
        let Some(attr) = catalog.inode(gen, id)? else {
            continue;
        };
        if attr.kind == FileKind::Dir {
            dirs.push(id);
            stack.extend(catalog.readdir(gen, id)?.into_iter().map(|e| e.inode));
        }
    }
    Ok(())
}
