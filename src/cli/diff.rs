//! `snapfs diff` and `snapfs log`.

use std::path::Path;

use anyhow::{Context, Result};

use snapfs::ops::{history, snapshots};

use super::human_bytes;

/// Show what changed between two snapshots, or from a snapshot to the live tree.
///
/// Example: snapfs diff @2026-01-31T142500Z @latest /projects
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The older snapshot
    #[arg(value_name = "@A")]
    pub a: String,
    /// The newer snapshot (default: the live tree), then an optional PATH
    #[arg(value_name = "@B|PATH")]
    pub rest: Vec<String>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// Show every distinct version of a file or folder across the snapshots.
///
/// Example: snapfs log /notes/todo.txt
#[derive(clap::Args, Debug)]
pub struct LogArgs {
    /// Path inside the tree
    #[arg(value_name = "PATH")]
    pub path: String,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    super::remote::commit_pending(repo)?;
    let catalog = snapfs::repo::open_catalog_read_only(repo)
        .with_context(|| format!("cannot read repository {}", repo.display()))?;
    let a = snapshots::resolve(&catalog, &args.a)?;
    let mut rest = args.rest.iter();
    let mut next = rest.next();
    let b = match next {
        Some(s) if s.starts_with('@') => {
            next = rest.next();
            snapshots::resolve(&catalog, s)?
        }
        _ => catalog
            .generations()?
            .pop()
            .context("the catalog has no live generation")?,
    };
    let path = next.map(String::as_str).unwrap_or("/");
    if let Some(extra) = rest.next() {
        return Err(super::usage(format!(
            "unexpected argument {extra:?}: diff takes @A [@B] [PATH]"
        )));
    }
    let changes = history::diff(&catalog, a.id, b.id, path)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&changes)?);
        return Ok(());
    }
    for c in changes {
        let mark = match c.change {
            "added" => "+",
            "deleted" => "-",
            "modified" => "M",
            "renamed" => "R",
            _ => "m",
        };
        match (&c.old_path, c.details.is_empty()) {
            (Some(old), _) => println!("{mark} {old} -> {}", c.path),
            (None, true) => println!("{mark} {}", c.path),
            (None, false) => println!("{mark} {} ({})", c.path, c.details.join(", ")),
        }
    }
    Ok(())
}

pub fn log(repo: &Path, args: LogArgs) -> Result<()> {
    super::remote::commit_pending(repo)?;
    let catalog = snapfs::repo::open_catalog_read_only(repo)
        .with_context(|| format!("cannot read repository {}", repo.display()))?;
    let versions = history::log(&catalog, &args.path)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&versions)?);
        return Ok(());
    }
    for v in versions {
        let first = v.seen_in.first().cloned().unwrap_or_default();
        let span = match v.seen_in.len() {
            1 => first,
            n => format!(
                "{first} .. {} ({n} views)",
                v.seen_in.last().cloned().unwrap_or_default()
            ),
        };
        if v.exists {
            println!(
                "{span}: {} {} modified {}",
                v.kind.unwrap_or("?"),
                human_bytes(v.size),
                v.mtime.unwrap_or_default()
            );
        } else {
            println!("{span}: absent");
        }
    }
    Ok(())
}
