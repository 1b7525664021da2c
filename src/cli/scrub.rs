//! `snapfs scrub`.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};

use snapfs::ops::scrub;

use super::DamageFound;

/// Read and verify every chunk on every mirror; repair bad or missing copies from
/// good ones; name the files hurt by what cannot be repaired (exit code 3).
///
/// Example: snapfs scrub --json
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    let catalog = snapfs::repo::open_catalog_read_only(repo)
        .with_context(|| format!("cannot read repository {}", repo.display()))?;
    let tty = std::io::stderr().is_terminal() && !args.json;
    let start = std::time::Instant::now();
    let report = scrub::scrub(repo, &catalog, &mut |done, total| {
        if tty && total > 0 {
            let secs = start.elapsed().as_secs_f64();
            let eta = if done > 0 {
                secs / done as f64 * (total - done.min(total)) as f64
            } else {
                0.0
            };
            eprint!("\rscrubbed {done}/{total} chunks, about {eta:.0} s left   ");
        }
    })?;
    if tty {
        eprintln!();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "scrubbed {} chunks{}",
            report.chunks,
            if report.resumed { " (resumed)" } else { "" }
        );
        for m in &report.mirrors {
            println!(
                "  mirror {} {}: {} good, {} corrupt, {} missing, {} repaired",
                m.id,
                m.path.display(),
                m.good,
                m.corrupt,
                m.missing,
                m.repaired
            );
            if let Some(p) = &m.problem {
                println!("    problem: {p}");
            }
        }
        for d in &report.unrepairable {
            println!("  chunk {} has no good copy; it is used by:", &d.chunk[..16]);
            for (view, path) in &d.used_by {
                println!("    {view} {path}");
            }
        }
    }
    if report.damaged() {
        return Err(DamageFound(format!(
            "scrub found damage it could not repair: {} chunks lost{}",
            report.unrepairable.len(),
            if report.mirrors.iter().any(|m| m.problem.is_some()) {
                ", and a mirror is unusable"
            } else {
                ""
            }
        ))
        .into());
    }
    Ok(())
}
