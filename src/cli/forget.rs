//! `snapfs forget`, `snapfs hold`, `snapfs release`.

use std::path::Path;

use anyhow::Result;

use snapfs::control::{Answer, Request};
use snapfs::ops::retention::{parse_duration, Policy};
use snapfs::ops::snapshots::{self, ForgetTarget};

use super::{human_bytes, remote};

/// Retention rules, shared by `forget` and `mount --every`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PolicyArgs {
    /// Keep the N newest snapshots
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: u32,
    /// Keep the newest snapshot of each of the last N days that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest snapshot of each of the last N weeks that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep every snapshot younger than this (e.g. 2d, 12h)
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
}

impl PolicyArgs {
    /// The policy these flags describe.
    pub fn policy(&self) -> Result<Policy> {
        Ok(Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_within_secs: self
                .keep_within
                .as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(|e| super::usage(format!("--keep-within: {e}")))?,
        })
    }
}

/// Drop snapshots, by name or by a retention policy (never a held one); `snapfs gc`
/// then frees their space.
///
/// Example: snapfs forget --keep-daily 7 --keep-weekly 4 --dry-run
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshots to drop (with or without the @; @latest is the newest)
    #[arg(value_name = "@SNAPSHOT")]
    pub names: Vec<String>,

    #[command(flatten)]
    pub policy: PolicyArgs,

    /// Show what would be dropped, what is kept and why, and what gc would free
    #[arg(long)]
    pub dry_run: bool,

    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// A snapshot to hold or release.
#[derive(clap::Args, Debug)]
pub struct HoldArgs {
    /// The snapshot
    #[arg(value_name = "@SNAPSHOT")]
    pub name: String,
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    let policy = args.policy.policy()?;
    let target = match (args.names.is_empty(), policy.is_empty()) {
        (false, true) => ForgetTarget::Names(args.names.clone()),
        (true, false) => ForgetTarget::Policy(policy),
        (false, false) => return Err(super::usage("give snapshot names or a --keep policy, not both")),
        (true, true) => {
            return Err(super::usage(
                "nothing to forget: name snapshots, or give a policy (--keep-last, --keep-hourly, \
                 --keep-daily, --keep-weekly, --keep-monthly, --keep-within); an empty policy is refused",
            ))
        }
    };
    let dry_run = args.dry_run;
    let request = Request::Forget {
        target: target.clone(),
        dry_run,
    };
    let result = remote::run(
        repo,
        request,
        "snapfs forget",
        |r| snapshots::forget(&mut r.catalog, &target, dry_run, snapfs::ops::now_ns()),
        |a| match a {
            Answer::Forget { report } => Some(report),
            _ => None,
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    for kept in &result.kept {
        println!("keep   {} ({})", kept.name, kept.reasons.join(", "));
    }
    let verb = if dry_run { "would forget" } else { "forgot" };
    for name in &result.forgotten {
        println!("{verb} {name}");
    }
    let bytes = result.frees_bytes;
    println!(
        "snapfs gc {} {} ({bytes} bytes) per mirror",
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
        |a| match a {
            Answer::Hold { name } => Some(name),
            _ => None,
        },
    )?;
    println!("{} {result}", if held { "held" } else { "released" });
    Ok(())
}
