//! `snapfs mirror add` and `snapfs mirror remove`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use snapfs::ops::mirrors;
use snapfs::repo::Repo;

use super::human_bytes;

/// Change the set of mirror folders (the repository must be unmounted).
///
/// Example: snapfs mirror add /mnt/usb/snapfs
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Add a mirror folder (empty or new) and fill it with every chunk; run it again
    /// on the same folder to finish an interrupted fill.
    ///
    /// Example: snapfs mirror add /mnt/usb/snapfs
    Add {
        /// The folder
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Stop using a mirror folder (its files stay); refused when no other complete
    /// mirror would be left.
    ///
    /// Example: snapfs mirror remove /mnt/old-disk/snapfs
    Remove {
        /// The folder
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(snapfs::control::socket_path(repo)).is_ok() {
        bail!("{} is mounted; unmount it to change its mirrors", repo.display());
    }
    let mut handle = Repo::open(repo, "snapfs mirror")
        .with_context(|| format!("cannot open repository {}", repo.display()))?;
    match args.action {
        Action::Add { dir } => {
            let bar = super::progress::Progress::new("filling the mirror", "chunks");
            let report = mirrors::add(&mut handle, &dir, snapfs::ops::now_ns(), &mut |done, total| {
                bar.set(done, total)
            })
            .with_context(|| format!("cannot add mirror {}", dir.display()))?;
            bar.finish();
            println!(
                "mirror {} at {} is complete: {} chunks, {} copied ({})",
                report.mirror,
                dir.display(),
                report.chunks,
                report.copied,
                human_bytes(report.bytes)
            );
        }
        Action::Remove { dir } => {
            let id = mirrors::remove(&mut handle, &dir)
                .with_context(|| format!("cannot remove mirror {}", dir.display()))?;
            println!(
                "removed mirror {id} ({}); its files are left in place",
                dir.display()
            );
        }
    }
    Ok(())
}
