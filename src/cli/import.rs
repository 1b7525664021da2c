//! `snapfs import`: copy a folder tree into the live tree without a mount.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use snapfs::repo::Repo;

use super::human_bytes;

/// Copy a plain folder's contents into the live tree (no mount needed).
///
/// Example: snapfs --repo ~/vault import ~/Documents --to /Documents
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The folder whose contents are copied
    #[arg(value_name = "SRC")]
    pub src: PathBuf,

    /// Live folder to copy into (must exist)
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub to: String,
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    let mut handle = Repo::open(repo, &format!("import {}", args.src.display()))
        .with_context(|| format!("cannot open repository {}", repo.display()))?;
    let bar = super::progress::Progress::spinner("importing", "entries");
    let stats = snapfs::ops::import::import(
        &mut handle,
        &args.src,
        &args.to,
        snapfs::ops::now_ns(),
        &mut |s| bar.set(s.files + s.dirs + s.symlinks + s.specials + s.hard_links, 0),
    )
    .with_context(|| {
        format!(
            "import of {} failed; the repository is unchanged",
            args.src.display()
        )
    })?;
    bar.finish();
    println!(
        "imported {} files, {} folders, {} symlinks, {} special files, {} extra hard links",
        stats.files, stats.dirs, stats.symlinks, stats.specials, stats.hard_links
    );
    println!(
        "{} of data in {} chunks; {} new chunks, {} written per mirror",
        human_bytes(stats.data_bytes),
        stats.ingest.chunks,
        stats.ingest.new_chunks,
        human_bytes(stats.ingest.stored_bytes)
    );
    Ok(())
}
