//! `snapfs snapshot` and `snapfs list`.

use std::path::Path;

use anyhow::{Context, Result};

use snapfs::control::{Answer, Request};
use snapfs::ops::snapshots::{self, SnapshotInfo};

use super::{human_bytes, remote};

/// Take a snapshot now (through the running mount, so unflushed writes are in it).
///
/// Example: snapfs snapshot --label "before upgrade"
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A note kept with the snapshot
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
}

/// List snapshots: time, label, files, size, and the bytes only each one holds.
///
/// Example: snapfs list --json
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    let label = args.label.clone();
    let result = remote::run(
        repo,
        Request::Snapshot { label: label.clone() },
        "snapfs snapshot",
        |r| {
            let name = r.catalog.snapshot(label.as_deref(), snapfs::ops::now_ns())?.name;
            let mirrors: Vec<_> = r.catalog.mirrors()?.into_iter().map(|m| m.path).collect();
            snapfs::ops::recover::save_copies(&r.path, &mirrors, snapfs::ops::now_ns())?;
            Ok(name)
        },
        |a| match a {
            Answer::Snapshot { name } => Some(name),
            _ => None,
        },
    )?;
    println!("{}", result.unwrap_or_default());
    Ok(())
}

pub fn list(repo: &Path, args: ListArgs) -> Result<()> {
    super::remote::commit_pending(repo)?;
    let catalog = snapfs::repo::open_catalog_read_only(repo)
        .with_context(|| format!("cannot read repository {}", repo.display()))?;
    let snaps: Vec<SnapshotInfo> = snapshots::list(&catalog)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snaps)?);
        return Ok(());
    }
    if snaps.is_empty() {
        println!("no snapshots yet; take one with `snapfs snapshot`");
        return Ok(());
    }
    println!(
        "{:<24} {:<21} {:>8} {:>11} {:>11}  label",
        "name", "time (UTC)", "files", "size", "only here"
    );
    for s in snaps {
        println!(
            "{:<24} {:<21} {:>8} {:>11} {:>11}  {}{}",
            s.name,
            s.time,
            s.files,
            human_bytes(s.logical_bytes),
            human_bytes(s.exclusive_bytes),
            if s.held { "[held] " } else { "" },
            s.label.unwrap_or_default()
        );
    }
    Ok(())
}
