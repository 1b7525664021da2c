//! `snapfs rollback`.

use std::path::Path;

use anyhow::{bail, Result};

use snapfs::control::Request;
use snapfs::ops::snapshots;

use super::remote;

/// Make the live tree as it was in a snapshot (takes a safety snapshot first).
///
/// Example: snapfs rollback @2026-01-31T142500Z   (undo: snapfs rollback <safety snapshot>)
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The snapshot to go back to (with or without the @; @latest is the newest)
    #[arg(value_name = "@SNAPSHOT")]
    pub name: String,

    /// Only this folder or file (not supported yet)
    #[arg(value_name = "PATH")]
    pub path: Option<String>,

    /// Check the snapshot name, change nothing
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    if args.path.is_some() {
        bail!("rollback of a single path is not supported yet; restore it with `snapfs restore` instead");
    }
    let (name, dry_run) = (args.name.clone(), args.dry_run);
    let result = remote::run(
        repo,
        Request::Rollback {
            name: name.clone(),
            dry_run,
        },
        "snapfs rollback",
        |r| snapshots::rollback(&mut r.catalog, &name, dry_run, snapfs::ops::now_ns()),
    )?;
    let target = result["target"].as_str().unwrap_or_default();
    if dry_run {
        println!("would roll the live tree back to {target}");
        return Ok(());
    }
    if let Some(safety) = result["safety_snapshot"].as_str() {
        println!("safety snapshot {safety} (undo with: snapfs rollback {safety})");
    }
    println!("rolled the live tree back to {target}");
    Ok(())
}
