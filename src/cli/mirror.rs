//! `snapfs mirror add` and `snapfs mirror remove`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use snapfs::control::{Answer, Request};
use snapfs::ops::mirrors;

use super::human_bytes;

/// Change the set of mirror folders (mounted or not: a mount fills a new mirror
/// while it goes on serving).
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
    match args.action {
        Action::Add { dir } => {
            let bar = super::progress::Progress::new("filling the mirror", "chunks");
            let report = super::remote::run_with_progress(
                repo,
                Request::MirrorAdd { dir: dir.clone() },
                "snapfs mirror",
                &mut |done, total| bar.set(done, total),
                |r| {
                    mirrors::add(r, &dir, snapfs::ops::now_ns(), &mut |done, total| {
                        bar.set(done, total)
                    })
                },
                |a| match a {
                    Answer::MirrorAdded { report } => Some(report),
                    _ => None,
                },
            );
            bar.finish();
            let report = report.with_context(|| format!("cannot add mirror {}", dir.display()))?;
            println!(
                "mirror {} at {} is complete: {} packs, {} copied ({})",
                report.mirror,
                dir.display(),
                report.packs,
                report.copied,
                human_bytes(report.bytes)
            );
        }
        Action::Remove { dir } => {
            let id = super::remote::run(
                repo,
                Request::MirrorRemove { dir: dir.clone() },
                "snapfs mirror",
                |r| mirrors::remove(r, &dir),
                |a| match a {
                    Answer::MirrorRemoved { id } => Some(id),
                    _ => None,
                },
            )
            .with_context(|| format!("cannot remove mirror {}", dir.display()))?;
            println!(
                "removed mirror {id} ({}); its files are left in place",
                dir.display()
            );
        }
    }
    Ok(())
}
