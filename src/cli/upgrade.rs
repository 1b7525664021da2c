//! `snapfs upgrade`.

use std::path::Path;

use anyhow::{Context, Result};

use super::human_bytes;

/// Convert a repository of storage format 1 (one file per chunk) to format 2 (packs),
/// in place. Safe to interrupt: run it again to go on; nothing is lost.
///
/// Example: snapfs upgrade
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    let bar = if args.json {
        super::progress::Progress::hidden()
    } else {
        super::progress::Progress::new("moving chunks into packs", "chunks")
    };
    let report = snapfs::ops::upgrade::upgrade(repo, snapfs::ops::now_ns(), &mut |done, total| {
        bar.set(done, total)
    });
    bar.finish();
    let report = report.with_context(|| format!("cannot upgrade {}", repo.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if report.converted {
        println!(
            "{} is storage format 2 now: {} chunks ({}) moved into packs",
            repo.display(),
            report.chunks,
            human_bytes(report.bytes)
        );
        if report.dropped > 0 {
            println!(
                "{} unreferenced chunks had no good copy left and were dropped",
                report.dropped
            );
        }
    } else {
        println!("{} is storage format 2 already", repo.display());
    }
    if report.object_folders_deleted > 0 {
        println!(
            "deleted the format-1 object folders of {} mirrors",
            report.object_folders_deleted
        );
    }
    Ok(())
}
