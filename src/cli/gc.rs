//! `snapfs gc`.

use std::path::Path;

use anyhow::Result;

use snapfs::control::{Answer, Request};
use snapfs::ops::gc;

use super::{human_bytes, remote};

/// Delete the chunks that nothing references any more; print what was freed.
///
/// Example: snapfs gc --dry-run
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Count what would be freed, delete nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Also list every mirror and delete pack files the catalog does not know
    /// (done by itself after a crash or a failed commit)
    #[arg(long)]
    pub sweep: bool,

    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    let (dry_run, json) = (args.dry_run, args.json);
    let sweep = args.sweep || snapfs::repo::sweep_needed(repo);
    // One bar, drawn from the mount's progress reports or from gc's own.
    let bar = if json {
        super::progress::Progress::hidden()
    } else {
        super::progress::Progress::new("gc", "chunks")
    };
    let result = remote::run_with_progress(
        repo,
        Request::Gc { dry_run, sweep },
        "snapfs gc",
        &mut |done, total| bar.set(done, total),
        |r| {
            // Compaction writes new packs: should this run be killed before their
            // rows are committed, the next gc sweeps them.
            if !dry_run {
                snapfs::repo::mark_sweep_needed(&r.path)?;
            }
            // Offline, a mount's running marker means its daemon died: what it had
            // put but not committed may lie in packs no row names.
            let sweep = sweep || r.path.join(snapfs::repo::RUNNING_MARKER).exists();
            let stats =
                gc::gc_with_progress(&mut r.catalog, &*r.store, dry_run, sweep, &mut |done, total| {
                    bar.set(done, total)
                })?;
            if !dry_run {
                snapfs::repo::clear_sweep_needed(&r.path);
            }
            Ok(stats)
        },
        |a| match a {
            Answer::Gc { stats } => Some(stats),
            _ => None,
        },
    );
    bar.finish();
    let result = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    println!(
        "{} {} chunks, {} per mirror",
        if dry_run { "would free" } else { "freed" },
        result.chunks,
        human_bytes(result.bytes)
    );
    if result.compacted_packs > 0 || result.packs > 0 {
        println!(
            "deleted {} packs, {} of them once compaction had copied out their {} live chunks ({})",
            result.packs,
            result.compacted_packs,
            result.moved_chunks,
            human_bytes(result.moved_bytes)
        );
    }
    if result.unseen_rows > 0 {
        println!(
            "{} {} catalog rows no generation saw (left by an older snapfs)",
            if dry_run { "would delete" } else { "deleted" },
            result.unseen_rows
        );
    }
    if result.swept {
        println!(
            "{} {} pack files no catalog row knows (left by a crash or a failed commit)",
            if dry_run { "would remove" } else { "removed" },
            result.orphans
        );
    }
    Ok(())
}
