//! `snapfs check`: the catalog's invariants, then every referenced chunk present in
//! a complete mirror, and with `read_data` every copy read and verified (scrub's
//! verification, without repair). Read-only.

use std::path::PathBuf;

use serde::Serialize;

use crate::catalog::Catalog;
use crate::codec;
use crate::error::Result;
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

/// Checks the repository whose catalog is `catalog`.
pub fn check(catalog: &Catalog, read_data: bool, progress: &mut dyn FnMut(u64, u64)) -> Result<CheckReport> {
    let mut report = CheckReport {
        problems: catalog.check_invariants()?,
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
