//! `snapfs restore`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use snapfs::ops::{restore, snapshots};

use super::human_bytes;
use super::progress::Progress;

/// Copy a file or folder out of a snapshot (modes, times, xattrs, links, holes kept).
///
/// Example: snapfs restore @latest /notes/todo.txt ./todo.txt
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The snapshot (with or without the @; @latest is the newest)
    #[arg(value_name = "@SNAPSHOT")]
    pub name: String,

    /// Path inside the snapshot ("/" for all of it)
    #[arg(value_name = "PATH")]
    pub path: String,

    /// Where to put it (must not exist) [default: ./<last part of PATH>]
    #[arg(value_name = "DEST")]
    pub dest: Option<PathBuf>,
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    super::remote::commit_pending(repo)?;
    let catalog = snapfs::repo::open_catalog_read_only(repo)
        .with_context(|| format!("cannot read repository {}", repo.display()))?;
    let settings = catalog.settings()?;
    let store = snapfs::repo::open_store(&catalog, settings.repo_id)?;
    let gen = snapshots::resolve(&catalog, &args.name)?;
    let dest = match args.dest {
        Some(d) if d.is_dir() => d.join(last_part(&args.path)),
        Some(d) => d,
        None => PathBuf::from(last_part(&args.path)),
    };
    let context = || {
        format!(
            "cannot restore {} from {}",
            args.path,
            gen.name.clone().unwrap_or_default()
        )
    };
    let bar = Progress::bytes("restoring");
    let total = if bar.is_visible() {
        restore::restore_size(&catalog, gen.id, &args.path).with_context(context)?
    } else {
        0
    };
    let stats = restore::restore_with_progress(&catalog, &*store, gen.id, &args.path, &dest, &mut |done| {
        bar.set(done, total)
    });
    bar.finish();
    let stats = stats.with_context(context)?;
    println!(
        "restored {} to {}: {} files, {} folders, {} symlinks, {}",
        args.path,
        dest.display(),
        stats.files,
        stats.dirs,
        stats.symlinks,
        human_bytes(stats.bytes)
    );
    Ok(())
}

fn last_part(path: &str) -> String {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|p| !p.is_empty())
        .unwrap_or("snapshot")
        .to_string()
}
