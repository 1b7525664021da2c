//! The command line: argument parsing (clap derive) and every line the user sees.
//!
//! One file per command, each with an `Args` struct and `run`. All terminal output
//! lives here; the library below returns values and `snapfs::Error`s.

mod check;
mod diff;
mod docs;
mod forget;
mod gc;
mod import;
mod init;
mod logging;
mod mirror;
mod mount;
mod progress;
mod recover;
mod remote;
mod restore;
mod rollback;
mod scrub;
mod snapshot;
mod status;
mod upgrade;

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::{Parser, Subcommand};

/// snapfs: a versioned, deduplicating snapshot filesystem.
///
/// Example: snapfs --repo ~/vault init && snapfs --repo ~/vault import ~/Documents
#[derive(Parser, Debug)]
#[command(name = "snapfs", version, propagate_version = true)]
pub struct Cli {
    /// Repository folder [default: $SNAPFS_REPO, else $XDG_DATA_HOME/snapfs, else ~/.local/share/snapfs]
    #[arg(long, global = true, value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// No progress bars and fewer messages
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// More detail in the log (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Init(init::Args),
    Import(import::Args),
    Mount(mount::Args),
    Umount(mount::UmountArgs),
    Status(status::Args),
    Snapshot(snapshot::Args),
    List(snapshot::ListArgs),
    Restore(restore::Args),
    Rollback(rollback::Args),
    Forget(forget::Args),
    /// Pin a snapshot against forget and retention.
    ///
    /// Example: snapfs hold @latest
    Hold(forget::HoldArgs),
    /// Unpin a snapshot held with `snapfs hold`.
    ///
    /// Example: snapfs release @2026-01-31T142500Z
    Release(forget::HoldArgs),
    Gc(gc::Args),
    Diff(diff::Args),
    Log(diff::LogArgs),
    Scrub(scrub::Args),
    Check(check::Args),
    Recover(recover::Args),
    Mirror(mirror::Args),
    Upgrade(upgrade::Args),
    Completions(docs::CompletionsArgs),
    Manpage(docs::ManpageArgs),
}

/// The command line, with the form `mount.fuse3` uses (for `/etc/fstab` lines such
/// as `snapfs#/home/me/.snapfs /home/me/versioned fuse.snapfs defaults 0 0`):
/// `snapfs SOURCE MOUNTPOINT [-o OPTIONS]` becomes
/// `snapfs --repo SOURCE mount MOUNTPOINT [-o OPTIONS]`.
pub fn args_from(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    use clap::CommandFactory;
    let known: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    let helper_form = args.len() >= 3
        && args[1..3].iter().all(|a| !a.to_string_lossy().starts_with('-'))
        && !known.iter().any(|k| args[1].to_string_lossy() == k.as_str());
    if !helper_form {
        return args;
    }
    let mut out = vec![
        args[0].clone(),
        "--repo".into(),
        args[1].clone(),
        "mount".into(),
        args[2].clone(),
    ];
    out.extend(args[3..].iter().cloned());
    out
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    progress::configure(cli.quiet, cli.verbose);
    let daemon_log = matches!(&cli.command, Command::Mount(a) if a.foreground)
        && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    logging::init(cli.quiet, cli.verbose, daemon_log);
    match cli.command {
        Command::Completions(args) => return docs::completions(args),
        Command::Manpage(args) => return docs::manpage(args),
        _ => {}
    }
    let repo = match cli.repo {
        Some(r) => r,
        None => snapfs::repo::default_repo_path()
            .ok_or_else(|| anyhow!("no repository given: pass --repo DIR or set SNAPFS_REPO"))?,
    };
    match cli.command {
        Command::Init(args) => init::run(&repo, args),
        Command::Import(args) => import::run(&repo, args),
        Command::Mount(args) => mount::run(&repo, args),
        Command::Umount(args) => mount::umount(&repo, args),
        Command::Status(args) => status::run(&repo, args),
        Command::Snapshot(args) => snapshot::run(&repo, args),
        Command::List(args) => snapshot::list(&repo, args),
        Command::Restore(args) => restore::run(&repo, args),
        Command::Rollback(args) => rollback::run(&repo, args),
        Command::Forget(args) => forget::run(&repo, args),
        Command::Hold(args) => forget::hold(&repo, args, true),
        Command::Release(args) => forget::hold(&repo, args, false),
        Command::Gc(args) => gc::run(&repo, args),
        Command::Diff(args) => diff::run(&repo, args),
        Command::Log(args) => diff::log(&repo, args),
        Command::Scrub(args) => scrub::run(&repo, args),
        Command::Check(args) => check::run(&repo, args),
        Command::Upgrade(args) => upgrade::run(&repo, args),
        Command::Recover(args) => recover::run(&repo, args),
        Command::Mirror(args) => mirror::run(&repo, args),
        Command::Completions(_) | Command::Manpage(_) => Ok(()),
    }
}

/// An error meaning "the repository is damaged" (exit code 3), as opposed to a
/// command that failed (1) or a usage error (2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DamageFound(pub String);

/// Exit code for damage found.
pub const EXIT_DAMAGE: u8 = 3;

/// An error in the command line that the parser could not see (a bad value, options
/// that do not go together): exit code 2, like the parser's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A `UsageError` saying `message`.
pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// Exit code for usage errors.
pub const EXIT_USAGE: u8 = 2;

/// Bytes as a short human figure ("1.5 GiB").
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
