//! The log (the `log` facade, written by env_logger to stderr): what the mount daemon
//! records in `REPO/mount.log`, and the warnings and details of every other command.
//!
//! Levels: `-q` shows warnings and errors only, the default adds one-line notices,
//! `-v` adds debug detail from snapfs (control requests, heals, commits, gc), `-vv`
//! adds trace detail from snapfs and debug from the libraries. `RUST_LOG` overrides
//! all of this with env_logger's usual syntax.

use std::io::Write;

use log::{Level, LevelFilter};

/// Starts the logger. `timestamps` prefixes each line with the UTC time (the daemon's
/// log file); interactive commands leave it off.
pub fn init(quiet: bool, verbose: u8, timestamps: bool) {
    let (ours, theirs) = match (quiet, verbose) {
        (true, _) => (LevelFilter::Warn, LevelFilter::Warn),
        (false, 0) => (LevelFilter::Info, LevelFilter::Warn),
        (false, 1) => (LevelFilter::Debug, LevelFilter::Warn),
        (false, _) => (LevelFilter::Trace, LevelFilter::Debug),
    };
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(theirs)
        .filter_module("snapfs", ours)
        // The FUSE library warns when the session ends after `snapfs umount` has
        // already unmounted it.
        .filter_module(
            snapfs::fuse::LIBRARY_LOG_TARGET,
            if verbose >= 2 { theirs } else { LevelFilter::Error },
        )
        .parse_env("RUST_LOG")
        .format(move |out, record| {
            if timestamps {
                write!(out, "{} ", chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"))?;
            }
            let level = match record.level() {
                Level::Error => "error: ",
                Level::Warn => "warning: ",
                Level::Info => "",
                Level::Debug => "debug: ",
                Level::Trace => "trace: ",
            };
            let origin = record.module_path().unwrap_or("");
            if origin.starts_with("snapfs") || record.level() <= Level::Info {
                writeln!(out, "snapfs: {level}{}", record.args())
            } else {
                writeln!(out, "snapfs: {level}[{origin}] {}", record.args())
            }
        });
    // A second init (tests calling `run` twice) keeps the first logger.
    let _ = builder.try_init();
}
