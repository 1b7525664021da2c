//! `snapfs status`: mirrors and their health, sizes and ratios.

use std::path::Path;

use anyhow::{Context, Result};

use super::human_bytes;

/// Show mirrors and their health, logical vs stored size, dedup and compression.
///
/// Example: snapfs status --json
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    super::remote::commit_pending(repo)?;
    let report = snapfs::ops::status::status(repo)
        .with_context(|| format!("cannot read repository {}", repo.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "repository  {} ({})",
        report.repository.display(),
        report.repository_id
    );
    println!(
        "live tree   {} files, {} inodes, {} logical, {} data",
        report.files,
        report.inodes,
        human_bytes(report.logical_bytes),
        human_bytes(report.data_bytes)
    );
    println!("snapshots   {}", report.snapshots);
    println!(
        "stored      {} chunks, {} unique, {} compressed per mirror",
        report.chunks,
        human_bytes(report.unique_bytes),
        human_bytes(report.stored_bytes)
    );
    println!(
        "packs       {} of entries, {} live ({} dead, given back by compaction)",
        human_bytes(report.pack_bytes),
        human_bytes(report.live_pack_bytes),
        human_bytes(report.pack_bytes.saturating_sub(report.live_pack_bytes))
    );
    println!(
        "ratios      dedup {:.2}x, compression {:.2}x",
        report.dedup_ratio, report.compression_ratio
    );
    println!("mirrors{}", if report.degraded() { "     DEGRADED" } else { "" });
    for m in &report.mirrors {
        let free = m
            .available_bytes
            .map(|b| format!(", {} free", human_bytes(b)))
            .unwrap_or_default();
        println!(
            "  {} {:<9} {} ({} packs, {}{free})",
            m.id,
            m.state,
            m.path.display(),
            m.packs,
            human_bytes(m.stored_bytes)
        );
        if let Some(problem) = &m.problem {
            println!("    problem: {problem}");
        }
    }
    Ok(())
}
