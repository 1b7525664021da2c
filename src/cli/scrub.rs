//! `snapfs scrub`.

use std::path::Path;

use anyhow::{Context, Result};

use snapfs::control::{self, Answer, Request};
use snapfs::ops::scrub;

use super::progress::Progress;

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
    let bar = if args.json {
        Progress::hidden()
    } else {
        Progress::new("scrub", "chunks")
    };
    let report = scrub::scrub(repo, &catalog, &mut |done, total| bar.set(done, total))?;
    bar.finish();
    // A mount that set a mirror aside uses it again now that it is refilled.
    let reinstated = if report.mirrors.iter().any(|m| m.problem.is_none()) {
        let bar = Progress::new("bringing mirrors back into the mount", "chunks");
        let answer = control::request_with_progress(repo, &Request::Reinstate, &mut |d, t| bar.set(d, t));
        bar.finish();
        match answer.context("the mount could not use the refilled mirrors again")? {
            Some(Answer::Reinstated { reports }) => reports,
            _ => Vec::new(),
        }
    } else {
        Vec::new()
    };
    // Not mounted: the catalog counts a refilled mirror complete again.
    let completed = if reinstated.is_empty() && !snapfs::control::is_served(repo) {
        scrub::mark_refilled_complete(repo, &report)
            .with_context(|| format!("cannot mark refilled mirrors of {} complete", repo.display()))?
    } else {
        Vec::new()
    };
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
        for id in &completed {
            println!("  mirror {id} holds every chunk again and is complete");
        }
        for r in &reinstated {
            println!(
                "  mirror {} is used by the mount again ({} chunks copied into it since it was set aside)",
                r.mirror, r.copied
            );
        }
        for d in &report.unrepairable {
            println!("  chunk {} has no good copy; it is used by:", &d.chunk[..16]);
            for (view, path) in &d.used_by {
                println!("    {view} {path}");
            }
        }
    }
    if report.damaged() {
        let lost = report.unrepairable.len();
        let mirror_problem = report.mirrors.iter().any(|m| m.problem.is_some());
        let mut message = String::from("scrub found damage it could not repair:");
        if lost > 0 {
            message += &format!(
                " {lost} chunk{} lost; the report names the files that used them (replace those from \
                 another copy)",
                if lost == 1 { "" } else { "s" }
            );
        }
        if mirror_problem {
            message += if lost > 0 { "; and" } else { "" };
            message += " a mirror is unusable (its problem is in the report): make the folder \
                        readable and writable again, then rerun snapfs scrub";
        }
        return Err(DamageFound(message).into());
    }
    Ok(())
}
