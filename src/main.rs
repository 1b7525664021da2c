//! The `snapfs` binary: parse the command line, run it, print the error chain.
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse_from(cli::args_from(std::env::args_os().collect()));
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snapfs: error: {e:#}");
            if e.downcast_ref::<cli::DamageFound>().is_some() {
                ExitCode::from(cli::EXIT_DAMAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
