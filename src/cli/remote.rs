//! Running a repository-changing command through the mount when one serves the
//! repository (so buffered writes are included and the lock is not fought over),
//! or directly under the repository lock when none does.

use std::path::Path;

use anyhow::{anyhow, Context, Result};

use snapfs::control::{self, Answer, Request};
use snapfs::repo::Repo;

/// Sends `req` to the running mount and takes its answer with `pick`, or runs
/// `direct` on the repository opened with its lock. Either way returns the
/// operation's typed result.
pub fn run<T>(
    repo: &Path,
    req: Request,
    holder: &str,
    direct: impl FnOnce(&mut Repo) -> snapfs::Result<T>,
    pick: impl FnOnce(Answer) -> Option<T>,
) -> Result<T> {
    run_with_progress(repo, req, holder, &mut |_, _| {}, direct, pick)
}

/// `run`, with the mount's progress reports handed to `progress` (`direct` reports
/// its own).
pub fn run_with_progress<T>(
    repo: &Path,
    req: Request,
    holder: &str,
    progress: control::Progress<'_>,
    direct: impl FnOnce(&mut Repo) -> snapfs::Result<T>,
    pick: impl FnOnce(Answer) -> Option<T>,
) -> Result<T> {
    if let Some(answer) = control::request_with_progress(repo, &req, progress)? {
        let what = format!("{answer:?}");
        return pick(answer).ok_or_else(|| {
            anyhow!("the mount answered {req:?} with {what}; is it the same snapfs version?")
        });
    }
    let mut handle =
        Repo::open(repo, holder).with_context(|| format!("cannot open repository {}", repo.display()))?;
    Ok(direct(&mut handle)?)
}

/// When a mount serves `repo`, asks it to commit buffered writes first, so that a
/// read-only command sees the newest state. Without a mount there is nothing to do.
/// A failure (a full disk) is only a warning: the command then reads what is
/// committed, which is exactly what it must still be able to do then.
pub fn commit_pending(repo: &Path) -> Result<()> {
    if let Err(e) = control::request(repo, &Request::Commit) {
        log::warn!("the mount could not commit its latest writes ({e}); showing what is committed");
    }
    Ok(())
}
