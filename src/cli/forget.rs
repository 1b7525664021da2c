//! `snapfs forget`, `snapfs hold`, `snapfs release`.

use std::path::Path;

use anyhow::Result;

use snapfs::control::Request;
use snapfs::ops::snapshots;

use super::{human_bytes, remote};

/// Drop snapshots (never a held one); `snapfs gc` then frees their space.
///
/// Example: snapfs forget @2026-01-31T142500Z --dry-run
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshots to drop (with or without the @; @latest is the newest)
    #[arg(value_name = "@SNAPSHOT")]
    pub names: Vec<String>,

    /// Show what would be dropped and what gc would free, change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// Pin a snapshot against forget.
///
/// Example: snapfs hold @latest
#[derive(clap::Args, Debug)]
pub struct HoldArgs {
    /// The snapshot
    #[arg(value_name = "@SNAPSHOT")]
    pub name: String,
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    let (names, dry_run) = (args.names.clone(), args.dry_run);
    let result = remote::run(
        repo,
        Request::Forget {
            names: names.clone(),
            dry_run,
        },
        "snapfs forget",
        |r| snapshots::forget(&mut r.catalog, &names, dry_run),
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    let verb = if dry_run { "would forget" } else { "forgot" };
    for name in result["forgotten"].as_array().into_iter().flatten() {
        println!("{verb} {}", name.as_str().unwrap_or_default());
    }
    let bytes = result["frees_bytes"].as_u64().unwrap_or(0);
    println!(
        "snapfs gc {} {} per mirror",
        if dry_run { "would then free" } else { "will free" },
        human_bytes(bytes)
    );
    Ok(())
}

pub fn hold(repo: &Path, args: HoldArgs, held: bool) -> Result<()> {
    let name = args.name.clone();
    let result = remote::run(
        repo,
        Request::Hold {
            name: name.clone(),
            held,
        },
        "snapfs hold",
        |r| snapshots::hold(&mut r.catalog, &name, held),
    )?;
    println!(
        "{} {}",
        if held { "held" } else { "released" },
        result.as_str().unwrap_or_default()
    );
    Ok(())
}
