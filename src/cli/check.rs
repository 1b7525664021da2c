//! `snapfs check`.

use std::path::Path;

use anyhow::{Context, Result};

use snapfs::ops::check;

use super::DamageFound;

/// Check the catalog's invariants and that every chunk has a copy; with --read-data
/// also read and verify every copy (no repair). Exit code 3 when something is wrong.
///
/// Example: snapfs check --read-data
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Also read and verify every copy of every chunk
    #[arg(long)]
    pub read_data: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    let catalog = snapfs::repo::open_catalog_read_only(repo)
        .with_context(|| format!("cannot read repository {}", repo.display()))?;
    let report = check::check(&catalog, args.read_data, &mut |_, _| {})?;
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
        for p in &report.problems {
            println!("  problem: {p}");
        }
        if report.problems.is_empty() {
            println!("no problems found");
        }
    }
    if !report.problems.is_empty() {
        let n = report.problems.len();
        return Err(DamageFound(format!(
            "check found {n} problem{} (listed in its report); `snapfs scrub` repairs copies from good \
             mirrors and names the files it cannot save, `snapfs recover` rebuilds a broken catalog",
            if n == 1 { "" } else { "s" }
        ))
        .into());
    }
    Ok(())
}
