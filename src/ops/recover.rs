//! Catalog disaster recovery: compressed copies of the catalog in every mirror
//! (`MIRROR/catalog/catalog-<time>.db.zst`, the newest few kept), taken at every
//! snapshot and at a clean unmount, and `snapfs recover`, which rebuilds a lost or
//! corrupt `catalog.db` from the newest good copy, then rebuilds where every chunk
//! lies from the packs themselves (the copy may predate a gc or a compaction).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::catalog;
use crate::error::{Error, Result};
use crate::repo::{self, CATALOG_FILE};

/// Folder of catalog copies inside a mirror.
pub const COPIES_DIR: &str = "catalog";
/// Copies kept per mirror.
pub const KEEP_COPIES: usize = 3;

/// Writes a compressed, consistent copy of `REPO/catalog.db` into every mirror folder
/// of `mirrors` that can take it, and keeps the newest `KEEP_COPIES` there. Returns
/// how many mirrors got the copy; fails only when none did. Streams: memory does
/// not grow with the catalog (a million files make a catalog of hundreds of MiB).
/// One copy at a time per repository folder (the temporary file is named by
/// process). The first mirror's copy is compressed from a consistent copy of the
/// database; the others are copied from it.
pub fn save_copies(repo: &Path, mirrors: &[PathBuf], now_ns: i64) -> Result<usize> {
    let started = std::time::Instant::now();
    let tmp = repo.join(format!(".catalog-copy-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut last_error = catalog::backup(&repo.join(CATALOG_FILE), &tmp).err();
    let name = format!("catalog-{now_ns:020}.db.zst");
    let mut saved: Option<PathBuf> = None;
    let mut count = 0;
    if last_error.is_none() {
        for m in mirrors {
            let from = match &saved {
                Some(copy) => CopySource::Packed(copy),
                None => CopySource::Database(&tmp),
            };
            match save_one(m, &name, from) {
                Ok(path) => {
                    count += 1;
                    saved.get_or_insert(path);
                }
                Err(e) => last_error = Some(e),
            }
        }
    }
    let _ = std::fs::remove_file(&tmp);
    log::debug!(
        "saved a catalog copy into {count} of {} mirrors in {:?}",
        mirrors.len(),
        started.elapsed()
    );
    match (count, last_error) {
        (0, Some(e)) => Err(e),
        _ => Ok(count),
    }
}

/// What a mirror's copy is written from.
enum CopySource<'a> {
    /// An uncompressed, consistent copy of the database: compressed on the way.
    Database(&'a Path),
    /// A copy already compressed (into another mirror): copied as it is.
    Packed(&'a Path),
}

/// Writes `from` into `to` (zstd level 3 when it is the database), durably, past
/// the page cache (`DirectWriter`: the disk is not flooded with the whole copy).
fn write_copy(from: &CopySource<'_>, to: &Path) -> std::io::Result<()> {
    let mut out = crate::store::DirectWriter::create(to)?;
    match from {
        CopySource::Database(db) => {
            let input = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(db)?);
            zstd::stream::copy_encode(input, &mut out, 3)?;
        }
        CopySource::Packed(copy) => {
            let mut input = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(copy)?);
            std::io::copy(&mut input, &mut out)?;
        }
    }
    out.finish()
}

/// Writes the copy `name` into `mirror`, durably, and drops its oldest copies
/// beyond `KEEP_COPIES`; returns the copy's path.
fn save_one(mirror: &Path, name: &str, from: CopySource<'_>) -> Result<PathBuf> {
    // Only into a mirror that is there: never recreate a lost mirror's folder.
    if !mirror.join("MIRROR").is_file() {
        return Err(Error::NotFound(format!(
            "mirror {} (no MIRROR file)",
            mirror.display()
        )));
    }
    let dir = mirror.join(COPIES_DIR);
    crate::store::create_dir_all_durably(&dir)
        .map_err(Error::io_with(format!("creating {}", dir.display())))?;
    let tmp = dir.join(format!(".tmp-{name}"));
    if let Err(e) = write_copy(&from, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io_with(format!("writing {}", tmp.display()))(e));
    }
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).map_err(Error::io_with(format!("writing {}", tmp.display())))?;
    // The new name is durable only once its folder is (and before any old copy goes:
    // a power cut must never leave fewer good copies than before).
    repo::sync_dir(&dir)?;
    let mut copies = list_copies(mirror);
    while copies.len() > KEEP_COPIES {
        let oldest = copies.remove(copies.len() - 1);
        let _ = std::fs::remove_file(oldest);
    }
    Ok(path)
}

/// The catalog copies in a mirror folder, newest first.
pub fn list_copies(mirror: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(mirror.join(COPIES_DIR)) else {
        return Vec::new();
    };
    let mut copies: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("catalog-") && n.ends_with(".db.zst"))
        })
        .collect();
    copies.sort();
    copies.reverse();
    copies
}

/// What `recover` did.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RecoverReport {
    /// The copy the catalog was rebuilt from.
    pub from: PathBuf,
    /// When that copy was taken (RFC 3339).
    pub copy_time: String,
    /// Its newest snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_snapshot: Option<String>,
    /// Where the broken catalog was moved, if there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_catalog_moved_to: Option<PathBuf>,
    /// Copies tried before it that were unusable, with why.
    pub skipped: Vec<String>,
    /// What rebuilding the chunks' places from the packs found.
    pub reindex: ReindexReport,
}

/// What `reindex` found.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ReindexReport {
    /// Packs read, and the good entries in them.
    pub packs: u64,
    pub entries: u64,
    /// Chunk rows whose place was not a good entry of theirs and was set to one.
    pub moved: u64,
    /// Chunk rows for which no pack holds a good entry (`check` names their files).
    pub missing: u64,
}

/// Rebuilds where each chunk of the repository at `repo_path` lies from its packs
/// alone: every pack is read, and every chunk row whose place is not one of its good
/// entries is moved to one. The caller holds the repository lock.
pub fn reindex(repo_path: &Path) -> Result<ReindexReport> {
    let mut catalog = catalog::Catalog::open(&repo_path.join(CATALOG_FILE))?;
    let settings = catalog.settings()?;
    let store = repo::open_store(&catalog, settings.repo_id)?;
    let mut found: std::collections::HashMap<crate::types::ChunkId, Vec<crate::types::Location>> =
        std::collections::HashMap::new();
    let packs = store.scan_entries(&mut |id, at| {
        found.entry(id).or_default().push(at);
    })?;
    let mut report = ReindexReport {
        packs,
        ..ReindexReport::default()
    };
    report.entries = found.values().map(|v| v.len() as u64).sum();
    let mut cursor = None;
    loop {
        let batch = catalog.chunks_after(cursor, 4096)?;
        let Some(last) = batch.last().map(|c| c.id) else {
            break;
        };
        let mut moves = Vec::new();
        for chunk in &batch {
            match found.get(&chunk.id) {
                Some(places) if chunk.location.is_some_and(|at| places.contains(&at)) => {}
                Some(places) => moves.push((chunk.id, places[0])),
                None => report.missing += 1,
            }
        }
        report.moved += catalog.set_locations(&moves, &[])?;
        cursor = Some(last);
    }
    Ok(report)
}

/// Rebuilds `REPO/catalog.db` from the newest sound copy found in `mirrors` (folders;
/// default: the `mirror-*` folders inside the repository). The caller holds the
/// repository lock. Everything changed after that copy is lost from the catalog (its
/// chunks stay until the gc sweep this asks for).
pub fn recover(repo_path: &Path, mirrors: &[PathBuf], now_ns: i64) -> Result<RecoverReport> {
    recover_with_progress(repo_path, mirrors, now_ns, &mut |_, _| {})
}

/// `recover`, calling `progress(copies tried, copies found)` before each copy is tried.
pub fn recover_with_progress(
    repo_path: &Path,
    mirrors: &[PathBuf],
    now_ns: i64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RecoverReport> {
    let mirrors: Vec<PathBuf> = if mirrors.is_empty() {
        default_mirrors(repo_path)
    } else {
        mirrors.to_vec()
    };
    let mut candidates: Vec<(PathBuf, PathBuf)> = Vec::new(); // (copy, its mirror)
    for m in &mirrors {
        candidates.extend(list_copies(m).into_iter().map(|c| (c, m.clone())));
    }
    candidates.sort_by(|a, b| b.0.file_name().cmp(&a.0.file_name()));
    if mirrors.is_empty() {
        return Err(Error::NotFound(format!(
            "a mirror folder in {} (name the mirror folders that hold catalog copies with --mirror DIR)",
            repo_path.display()
        )));
    }
    if candidates.is_empty() {
        return Err(Error::NotFound(format!(
            "a catalog copy in {} (copies are made at each snapshot and clean unmount; name other \
             mirror folders with --mirror DIR)",
            mirrors
                .iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let staging = repo_path.join("catalog.db.recovering");
    let mut skipped = Vec::new();
    let found = candidates.len() as u64;
    for (tried, (copy, mirror)) in candidates.into_iter().enumerate() {
        progress(tried as u64, found);
        let _ = std::fs::remove_file(&staging);
        let attempt = (|| -> Result<catalog::CopyInfo> {
            let bytes =
                std::fs::read(&copy).map_err(Error::io_with(format!("reading {}", copy.display())))?;
            let plain = zstd::stream::decode_all(&bytes[..]).map_err(|e| {
                Error::CorruptCatalog(format!("{}: does not decompress: {e}", copy.display()))
            })?;
            std::fs::write(&staging, plain)
                .map_err(Error::io_with(format!("writing {}", staging.display())))?;
            let info = catalog::inspect(&staging)?;
            if let Some((id, _)) = crate::store::read_identity(&mirror)? {
                if id != info.repo_id {
                    return Err(Error::ForeignMirror {
                        path: mirror.clone(),
                        other: info.repo_id.to_string(),
                    });
                }
            }
            Ok(info)
        })();
        let info = match attempt {
            Ok(info) => info,
            Err(e) => {
                skipped.push(format!("{}: {e}", copy.display()));
                continue;
            }
        };
        let db = repo_path.join(CATALOG_FILE);
        let mut moved = None;
        if db.exists() {
            let aside = repo_path.join(format!("catalog.db.broken-{now_ns}"));
            std::fs::rename(&db, &aside).map_err(Error::io_with(format!("moving {} aside", db.display())))?;
            moved = Some(aside);
        }
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(repo_path.join(format!("{CATALOG_FILE}{suffix}")));
        }
        std::fs::rename(&staging, &db).map_err(Error::io_with(format!("installing {}", db.display())))?;
        // The staged file's data, then the renames: durable before recover reports.
        std::fs::File::open(&db)
            .and_then(|f| f.sync_all())
            .map_err(Error::io_with(format!("syncing {}", db.display())))?;
        repo::mark_sweep_needed(repo_path)?;
        let reindex = reindex(repo_path)?;
        let taken = copy
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("catalog-"))
            .and_then(|n| n.strip_suffix(".db.zst"))
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(0);
        return Ok(RecoverReport {
            from: copy,
            copy_time: chrono::DateTime::from_timestamp_nanos(taken)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            newest_snapshot: info.newest_snapshot.map(|(n, _)| n),
            broken_catalog_moved_to: moved,
            skipped,
            reindex,
        });
    }
    let _ = std::fs::remove_file(&staging);
    Err(Error::CorruptCatalog(format!(
        "no usable catalog copy: {}",
        skipped.join("; ")
    )))
}

fn default_mirrors(repo: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(repo) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("MIRROR").is_file())
        .collect();
    found.sort();
    found
}
