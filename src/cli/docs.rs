//! `snapfs completions` and `snapfs manpage`: shell completion scripts and man pages,
//! generated from the same clap definitions as `--help`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;

use super::Cli;

/// Print a shell completion script.
///
/// Example: snapfs completions bash > /etc/bash_completion.d/snapfs
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Write man pages (snapfs.1 and one per command) into a folder.
///
/// Example: snapfs manpage /usr/local/share/man/man1
#[derive(clap::Args, Debug)]
pub struct ManpageArgs {
    /// Folder to write the pages into (created if missing)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

pub fn completions(args: CompletionsArgs) -> Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "snapfs", &mut std::io::stdout());
    Ok(())
}

pub fn manpage(args: ManpageArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let cmd = Cli::command();
    let written = write_pages(&cmd, &args.dir, "snapfs")?;
    println!("wrote {written} man pages to {}", args.dir.display());
    Ok(())
}

fn write_pages(cmd: &clap::Command, dir: &Path, name: &str) -> Result<usize> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(name.to_string())
        .render(&mut out)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    let mut written = 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        written += write_pages(sub, dir, &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(written)
}
