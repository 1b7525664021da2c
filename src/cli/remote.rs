//! Running a repository-changing command through the mount when one serves the
//! repository (so buffered writes are included and the lock is not fought over),
//! or directly under the repository lock when none does.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use snapfs::control::{self, Request};
use snapfs::repo::Repo;

/// Sends `req` to the running mount, or runs `direct` on the repository opened with
/// its lock. Either way returns the operation's result as JSON.
pub fn run<T: Serialize>(
    repo: &Path,
    req: Request,
    holder: &str,
    direct: impl FnOnce(&mut Repo) -> snapfs::Result<T>,
) -> Result<serde_json::Value> {
    if let Some(answer) = control::request(repo, &req)? {
        return Ok(answer);
    }
    let mut handle =
        Repo::open(repo, holder).with_context(|| format!("cannot open repository {}", repo.display()))?;
    Ok(serde_json::to_value(direct(&mut handle)?)?)
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
