//! `snapfs status`: mirrors and their health, sizes, dedup and compression ratios.
//!
//! Read-only: opens the catalog read-only and each mirror's packs for reading, so it
//! works while the repository is mounted or locked.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Result;
use crate::repo;
use crate::store::MirrorState;

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
    /// Pack files in this mirror, and their bytes on disk.
    pub packs: u64,
    pub stored_bytes: u64,
    /// Free bytes on the mirror's filesystem; absent when it cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
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
    /// Entry bytes of the packs the catalog counts, and of those the live ones: the
    /// rest is dead (compaction gives it back).
    pub pack_bytes: u64,
    pub live_pack_bytes: u64,
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
    let all = catalog.chunk_totals()?;
    let versions = catalog.all_versions_data_bytes()?;
    let packs = catalog.packs()?;
    let store = repo::open_store(&catalog, settings.repo_id)?;
    let records = catalog.mirrors()?;
    let mut mirrors = Vec::new();
    for disk in store.status() {
        let Some(m) = records.iter().find(|m| m.id == disk.id) else {
            continue;
        };
        let (state, problem) = match &disk.state {
            MirrorState::Lost { reason } => ("lost".to_string(), Some(reason.clone())),
            _ => (m.state.clone(), None),
        };
        let usage = match &disk.state {
            MirrorState::Lost { .. } => Default::default(),
            _ => store.disk_usage(disk.id)?,
        };
        mirrors.push(MirrorReport {
            id: m.id.0,
            path: m.path.clone(),
            state,
            problem,
            packs: usage.packs,
            stored_bytes: usage.bytes,
            available_bytes: usage.free,
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
        pack_bytes: packs.iter().map(|p| p.bytes).sum(),
        live_pack_bytes: packs.iter().map(|p| p.live_bytes).sum(),
        unique_bytes: all.plain_bytes,
        stored_bytes: all.stored_bytes,
        all_versions_bytes: versions,
        dedup_ratio: ratio(versions, all.plain_bytes),
        compression_ratio: ratio(all.plain_bytes, all.stored_bytes),
    })
}
