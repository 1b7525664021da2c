//! `snapfs status`: mirrors and their health, sizes, dedup and compression ratios.
//!
//! Read-only: opens the catalog read-only and each mirror's identity, so it works
//! while the repository is mounted or locked.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Result;
use crate::repo;
use crate::store::DirStore;

/// The health of one mirror as `status` sees it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MirrorReport {
    pub id: u32,
    pub path: PathBuf,
    /// `complete`, `filling` (resilver in progress) or `lost`.
    pub state: String,
    /// Why the mirror is lost; absent when it is usable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Chunks the catalog records in this mirror, and their bytes on disk.
    pub chunks: u64,
    pub stored_bytes: u64,
    /// Free bytes on the mirror's filesystem; absent when it cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    /// How a commit makes new chunks durable here: `syncfs` (one per mirror) or
    /// `fsync` (every new chunk file and folder); absent when the mirror is lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<String>,
    /// The mirror's filesystem type, which chose `sync` (`ext2/3/4`, `fuse` …, or the
    /// statfs magic number in hex); absent when the mirror is lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<String>,
    /// True when `SNAPFS_SYNC=fsync` chose `sync`, not the filesystem type.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sync_forced: bool,
}

/// Everything `snapfs status` reports.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StatusReport {
    pub repository: PathBuf,
    pub repository_id: String,
    pub mirrors: Vec<MirrorReport>,
    /// Snapshots (frozen generations).
    pub snapshots: u64,
    /// Regular files in the live tree.
    pub files: u64,
    /// Inodes of every kind in the live tree.
    pub inodes: u64,
    /// Sum of the live files' sizes.
    pub logical_bytes: u64,
    /// Bytes of the live files that are data (not holes).
    pub data_bytes: u64,
    /// Distinct chunks stored, and their plaintext bytes.
    pub chunks: u64,
    pub unique_bytes: u64,
    /// Bytes one complete copy takes on disk.
    pub stored_bytes: u64,
    /// Data bytes of every retained version (live tree and snapshots) added up.
    pub all_versions_bytes: u64,
    /// all_versions_bytes / unique_bytes: how much deduplication saves against
    /// storing every version in full (1.0 = nothing).
    pub dedup_ratio: f64,
    /// unique_bytes / stored_bytes: how much compression saves (1.0 = nothing).
    pub compression_ratio: f64,
}

impl StatusReport {
    /// True when some mirror is lost or incomplete.
    pub fn degraded(&self) -> bool {
        self.mirrors.iter().any(|m| m.state != "complete")
    }
}

/// Gathers the status of the repository at `path`.
pub fn status(path: &Path) -> Result<StatusReport> {
    let catalog = repo::open_catalog_read_only(path)?;
    let settings = catalog.settings()?;
    let live = catalog.live();
    let tree = catalog.tree_totals(live)?;
    let all = catalog.chunk_totals(None)?;
    let versions = catalog.all_versions_data_bytes()?;
    let mut mirrors = Vec::new();
    for m in catalog.mirrors()? {
        let totals = catalog.chunk_totals(Some(m.id))?;
        let (state, problem, available, sync) = match DirStore::open(&m.path, settings.repo_id, m.id) {
            Ok(store) => (
                m.state.clone(),
                None,
                store.available_bytes().ok(),
                Some(store.sync_choice().clone()),
            ),
            Err(e) => ("lost".to_string(), Some(e.to_string()), None, None),
        };
        mirrors.push(MirrorReport {
            id: m.id.0,
            path: m.path,
            state,
            problem,
            chunks: totals.chunks,
            stored_bytes: totals.stored_bytes,
            available_bytes: available,
            sync: sync.as_ref().map(|c| c.mode.as_str().to_string()),
            filesystem: sync.as_ref().map(|c| c.filesystem.clone()),
            sync_forced: sync.is_some_and(|c| c.forced),
        });
    }
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    Ok(StatusReport {
        repository: path.to_path_buf(),
        repository_id: settings.repo_id.to_string(),
        mirrors,
        snapshots: catalog
            .generations()?
            .iter()
            .filter(|g| g.frozen_ns.is_some())
            .count() as u64,
        files: tree.files,
        inodes: tree.inodes,
        logical_bytes: tree.logical_bytes,
        data_bytes: tree.data_bytes,
        chunks: all.chunks,
        unique_bytes: all.plain_bytes,
        stored_bytes: all.stored_bytes,
        all_versions_bytes: versions,
        dedup_ratio: ratio(versions, all.plain_bytes),
        compression_ratio: ratio(all.plain_bytes, all.stored_bytes),
    })
}
