//! `snapfs check`.

use std::path::Path;

use anyhow::{bail, Context, Result};

use snapfs::ops::check;

use super::DamageFound;

/// Check the catalog's invariants and that every chunk has a copy; with --read-data
/// also read and verify every copy (no repair). Exit code 3 when something is wrong.
/// With --repair (repository unmounted): save a copy of the catalog beside it, then
/// mend what the check can explain (names pointing at nothing, wrong link and
/// reference counts, orphan rows), print each repair, and check again. Chunk data is
/// never touched; `snapfs scrub` repairs copies.
///
/// Example: snapfs check --read-data
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Also read and verify every copy of every chunk
    #[arg(long)]
    pub read_data: bool,
    /// Repair the catalog's problems (unmount first; a copy of the catalog is saved)
    #[arg(long)]
    pub repair: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    if args.repair {
        return repair(repo, &args);
    }
    let catalog = snapfs::repo::open_catalog_read_only(repo)
        .with_context(|| format!("cannot read repository {}", repo.display()))?;
    let mounted = snapfs::control::is_served(repo);
    let report = check::check(&catalog, args.read_data, mounted, &mut |_, _| {})?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "checked the catalog and {} chunks{}",
            report.chunks,
            if args.read_data {
                format!(" ({} copies read)", report.copies_verified)
            } else {
                String::new()
            }
        );
        for f in &report.filling {
            println!("  filling: {f}");
        }
        for p in &report.problems {
            println!("  problem: {p}");
        }
        if report.problems.is_empty() {
            println!("no problems found");
        }
    }
    damage(&report.problems, "check")
}

fn repair(repo: &Path, args: &Args) -> Result<()> {
    if args.read_data {
        return Err(super::usage(
            "--repair mends the catalog only; run `snapfs check --read-data` and `snapfs scrub` for chunk data",
        ));
    }
    if snapfs::control::is_served(repo) {
        bail!(
            "{} is mounted; `snapfs umount` it first (--repair needs the repository to itself)",
            repo.display()
        );
    }
    let report = check::repair(repo, snapfs::ops::now_ns())
        .with_context(|| format!("cannot repair the catalog of {}", repo.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("saved the catalog as {}", report.saved_copy.display());
        for r in &report.repairs {
            println!("  repaired: {r}");
        }
        if report.repairs.is_empty() {
            println!("nothing to repair");
        }
        for p in &report.remaining {
            println!("  problem: {p}");
        }
    }
    damage(&report.remaining, "the repair")
}

/// Exit code 3 (through `DamageFound`) when `problems` is not empty.
fn damage(problems: &[String], what: &str) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    let n = problems.len();
    Err(DamageFound(format!(
        "{what} found {n} problem{} (listed in its report); `snapfs check --repair` mends the catalog's, \
         `snapfs scrub` repairs copies from good mirrors and names the files it cannot save, \
         `snapfs recover` rebuilds a broken catalog",
        if n == 1 { "" } else { "s" }
    ))
    .into())
}
