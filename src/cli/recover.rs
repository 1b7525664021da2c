//! `snapfs recover`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use snapfs::ops::recover;
use snapfs::repo::RepoLock;

use super::progress::Progress;

/// Rebuild a lost or corrupt catalog.db from the newest good copy in the mirrors
/// (copies are taken at every snapshot and clean unmount).
///
/// Example: snapfs recover --mirror /disk1/snapfs --mirror /disk2/snapfs
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Mirror folders to look in [default: the mirror folders inside the repository]
    #[arg(long = "mirror", value_name = "DIR")]
    pub mirrors: Vec<PathBuf>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    if snapfs::control::socket_path(repo).exists()
        && std::os::unix::net::UnixStream::connect(snapfs::control::socket_path(repo)).is_ok()
    {
        bail!(
            "{} is mounted; unmount it before recovering its catalog",
            repo.display()
        );
    }
    if !repo.is_dir() {
        bail!(
            "{} is not a folder; give the repository folder with --repo",
            repo.display()
        );
    }
    let lock_file = repo.join(snapfs::repo::LOCK_FILE);
    let lock_was_there = lock_file.exists();
    let lock =
        RepoLock::acquire(repo, "recover").with_context(|| format!("cannot lock {}", repo.display()))?;
    let bar = if args.json {
        Progress::hidden()
    } else {
        Progress::new("trying catalog copies", "copies")
    };
    let report =
        recover::recover_with_progress(repo, &args.mirrors, snapfs::ops::now_ns(), &mut |tried, found| {
            bar.set(tried, found)
        });
    bar.finish();
    if report.is_err() && !lock_was_there {
        // A failed recover in a folder that was no repository leaves it as it was.
        drop(lock);
        let _ = std::fs::remove_file(&lock_file);
    }
    let report = report.with_context(|| format!("cannot recover the catalog of {}", repo.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for s in &report.skipped {
        println!("skipped {s}");
    }
    if let Some(moved) = &report.broken_catalog_moved_to {
        println!("moved the broken catalog to {}", moved.display());
    }
    println!(
        "recovered the catalog from {} (taken {})",
        report.from.display(),
        report.copy_time
    );
    match &report.newest_snapshot {
        Some(s) => println!("newest snapshot in it: {s}"),
        None => println!("it has no snapshots"),
    }
    println!(
        "changes made after {} are lost; their data is removed by the next snapfs gc. Run snapfs check.",
        report.copy_time
    );
    Ok(())
}
