//! The `snapfs` binary: parse the command line, run it, print the error chain.
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse_from(cli::args_from(std::env::args_os().collect())) {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            eprintln!("{}", usage_message(&e));
            return ExitCode::from(cli::EXIT_USAGE);
        }
    };
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snapfs: error: {e:#}");
            if e.downcast_ref::<cli::DamageFound>().is_some() {
                ExitCode::from(cli::EXIT_DAMAGE)
            } else if e.downcast_ref::<cli::UsageError>().is_some() {
                ExitCode::from(cli::EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The parser's error in two lines: what is wrong, then the usage of the command with
/// where to read more (clap's own rendering takes five).
fn usage_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let what = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    let usage = text
        .lines()
        .find_map(|l| l.strip_prefix("Usage: "))
        .unwrap_or("snapfs <COMMAND>");
    format!("snapfs: error: {what}\nusage: {usage} (`--help` explains every option)")
}
