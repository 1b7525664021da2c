//! `snapfs init`: create a repository.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use snapfs::repo::{InitOptions, Repo};

/// Create a repository (two mirrors inside it unless --mirror is given).
///
/// Example: snapfs --repo /data/vault init --mirror /disk1/snapfs --mirror /disk2/snapfs
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A mirror folder (repeat for each mirror; each must be empty or not exist yet)
    #[arg(long = "mirror", value_name = "DIR")]
    pub mirrors: Vec<PathBuf>,

    /// Chunk sizes MIN:AVG:MAX, with K/M suffixes
    #[arg(long, value_name = "MIN:AVG:MAX", default_value = "16K:64K:256K")]
    pub chunk_size: String,

    /// zstd level 1-22 for stored chunks, or "none"
    #[arg(long, value_name = "LEVEL|none", default_value = "3")]
    pub compression: String,
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    let params = snapfs::chunker::ChunkerParams::parse_sizes(&args.chunk_size, 0)
        .map_err(|e| super::usage(format!("bad --chunk-size {:?}: {e}", args.chunk_size)))?;
    let zstd_level = parse_compression(&args.compression)?;
    let options = InitOptions {
        mirrors: args.mirrors,
        chunk_sizes: Some((params.min_size, params.avg_size, params.max_size)),
        zstd_level,
    };
    let repo_handle = Repo::init(repo, &options, snapfs::ops::now_ns())
        .with_context(|| format!("cannot create a repository at {}", repo.display()))?;
    let mirrors = repo_handle.catalog.mirrors()?;
    println!("created repository {}", repo.display());
    for m in mirrors {
        println!("  mirror {}: {}", m.id, m.path.display());
    }
    Ok(())
}

/// "none" or a zstd level.
pub(crate) fn parse_compression(s: &str) -> Result<Option<i32>> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    match s.parse::<i32>() {
        Ok(level) if (1..=22).contains(&level) => Ok(Some(level)),
        Ok(level) => Err(super::usage(format!(
            "compression level {level} is out of range; use 1 to 22, or none"
        ))),
        Err(_) => Err(super::usage(format!(
            "bad --compression {s:?}: give a zstd level 1-22 or none"
        ))),
    }
}
