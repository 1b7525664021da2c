//! `snapfs rollback`.

use std::path::Path;

use anyhow::Result;

use snapfs::control::{Answer, Request};
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

    /// Only this folder or file (it must exist in the snapshot)
    #[arg(value_name = "PATH")]
    pub path: Option<String>,

    /// Check the snapshot name, change nothing
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    let (name, path, dry_run) = (args.name.clone(), args.path.clone(), args.dry_run);
    let request = Request::Rollback {
        name: name.clone(),
        path: path.clone(),
        dry_run,
    };
    let result = remote::run(
        repo,
        request,
        "snapfs rollback",
        |r| {
            snapshots::rollback(
                &mut r.catalog,
                &name,
                path.as_deref(),
                dry_run,
                snapfs::ops::now_ns(),
                &[],
            )
        },
        |a| match a {
            Answer::Rollback { report } => Some(report),
            _ => None,
        },
    )?;
    let target = &result.target;
    let what = args.path.as_deref().unwrap_or("the live tree");
    if dry_run {
        println!("would roll {what} back to {target}");
        return Ok(());
    }
    if let Some(safety) = &result.safety_snapshot {
        println!("safety snapshot {safety} (undo with: snapfs rollback {safety})");
    }
    println!("rolled {what} back to {target}");
    Ok(())
}
