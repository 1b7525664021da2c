//! `snapfs mount` and `snapfs umount`: parse the options, create the repository on
//! first use, start the mount daemon (`snapfs::daemon`) in the foreground or as a
//! background process, and wait for it to be ready or gone.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use snapfs::daemon::{self, DaemonOptions};
use snapfs::fs::SnapDir;
use snapfs::fuse::MountOptions;
use snapfs::ops::retention::parse_duration;
use snapfs::repo::{self, InitOptions, Repo, RepoLock};

/// Log file of a background mount, inside the repository.
const LOG_FILE: &str = "mount.log";

/// Mount the live tree read-write (creates the repository on first use).
///
/// Example: snapfs mount ~/versioned
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder to mount on (must exist)
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,

    /// Stay in the foreground; unmount cleanly on Ctrl-C / SIGTERM
    #[arg(short = 'f', long)]
    pub foreground: bool,

    /// Mount options, comma separated: allow_other, noreclaim (no background reclaim)
    #[arg(short = 'o', value_name = "OPTIONS", value_delimiter = ',')]
    pub options: Vec<String>,

    /// Request threads (more than cores: each waits on the kernel between requests)
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub threads: usize,

    /// Whether the root lists the @snapshot folders (hidden ones stay reachable by name)
    #[arg(long, value_name = "visible|hidden", default_value = "visible")]
    pub snapdir: String,

    /// Take a snapshot this often when something changed (e.g. 15m), then apply the
    /// --keep policy and free the space of what it forgot
    #[arg(long, value_name = "DURATION")]
    pub every: Option<String>,

    #[command(flatten)]
    pub policy: super::forget::PolicyArgs,
}

/// Flush everything and unmount.
///
/// Example: snapfs umount ~/versioned
#[derive(clap::Args, Debug)]
pub struct UmountArgs {
    /// The mounted folder
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
}

pub fn run(repo: &Path, args: Args) -> Result<()> {
    let mountpoint = std::path::absolute(&args.mountpoint)?;
    if !mountpoint.exists() {
        bail!(
            "mount point {} does not exist; create it first (mkdir -p {})",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    if !mountpoint.is_dir() {
        bail!(
            "mount point {} is not a folder; mount on a folder",
            mountpoint.display()
        );
    }
    if is_mounted(&mountpoint) {
        bail!(
            "{} is already a snapfs mount; unmount it first (snapfs umount {})",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse is missing: load the fuse kernel module (modprobe fuse) or install fuse3");
    }
    let snapdir = match args.snapdir.as_str() {
        "visible" => SnapDir::Visible,
        "hidden" => SnapDir::Hidden,
        other => {
            return Err(super::usage(format!(
                "--snapdir {other:?}: use visible or hidden"
            )))
        }
    };
    let mut options = MountOptions {
        snapdir,
        threads: args.threads,
        fs_name: format!("snapfs:{}", std::path::absolute(repo)?.display()),
        ..Default::default()
    };
    let mut reclaim = true;
    for o in &args.options {
        match o.as_str() {
            "allow_other" => options.allow_other = true,
            "noreclaim" => reclaim = false,
            // What mount(8) and fstab pass along; the kernel or the helper handles them.
            "" | "rw" | "defaults" | "dev" | "nodev" | "suid" | "nosuid" | "exec" | "noexec" | "atime"
            | "noatime" | "relatime" | "strictatime" | "auto" | "noauto" | "user" | "nouser" | "users"
            | "nofail" | "_netdev" | "async" | "sync" => {}
            o if o.starts_with("x-") || o.starts_with("comment=") => {}
            "ro" => {
                return Err(super::usage(
                    "snapfs mounts the live tree read-write; snapshots are the read-only views (drop ro)",
                ))
            }
            other => {
                return Err(super::usage(format!(
                "unknown mount option {other:?}; known: allow_other, noreclaim (and the usual rw, nodev, …)"
            )))
            }
        }
    }
    let every = args
        .every
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| super::usage(format!("--every: {e}")))?;
    let policy = args.policy.policy()?;
    if every.is_none() && !policy.is_empty() {
        return Err(super::usage(
            "--keep-… applies to scheduled snapshots: give --every too",
        ));
    }
    if !repo::exists(repo) {
        drop(
            Repo::init(repo, &InitOptions::default(), snapfs::ops::now_ns())
                .with_context(|| format!("cannot create a repository at {}", repo.display()))?,
        );
        println!("created repository {}", repo.display());
    }
    if args.foreground {
        let daemon = DaemonOptions {
            schedule: every.map(|secs| (Duration::from_secs(secs), policy)),
            reclaim,
        };
        daemon::serve(repo, &mountpoint, &options, daemon)
            .with_context(|| format!("cannot mount {}", repo.display()))
    } else {
        spawn_daemon(repo, &mountpoint, &args)
    }
}

/// Starts `snapfs mount -f` in its own process group, logging to the repository, and
/// returns once the mount is ready (or reports why it failed).
fn spawn_daemon(repo: &Path, mountpoint: &Path, args: &Args) -> Result<()> {
    let log_path = repo.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log_start = log.metadata()?.len();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--repo").arg(repo).arg("mount").arg(mountpoint).arg("-f");
    cmd.arg("--threads").arg(args.threads.to_string());
    cmd.arg("--snapdir").arg(&args.snapdir);
    for _ in 0..super::progress::verbose() {
        cmd.arg("-v");
    }
    if let Some(every) = &args.every {
        cmd.arg("--every").arg(every);
    }
    let p = &args.policy;
    for (flag, n) in [
        ("--keep-last", p.keep_last),
        ("--keep-hourly", p.keep_hourly),
        ("--keep-daily", p.keep_daily),
        ("--keep-weekly", p.keep_weekly),
        ("--keep-monthly", p.keep_monthly),
    ] {
        if n > 0 {
            cmd.arg(flag).arg(n.to_string());
        }
    }
    if let Some(within) = &p.keep_within {
        cmd.arg("--keep-within").arg(within);
    }
    if !args.options.is_empty() {
        cmd.arg("-o").arg(args.options.join(","));
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let mut child = cmd.spawn().context("starting the mount daemon")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut text = String::new();
            let mut f = std::fs::File::open(&log_path)?;
            f.seek(SeekFrom::Start(log_start))?;
            f.read_to_string(&mut text)?;
            let line = text
                .lines()
                .rev()
                .find_map(|l| l.split_once("snapfs: error: ").map(|(_, message)| message))
                .map(str::to_string)
                .unwrap_or_else(|| {
                    format!(
                        "the mount daemon exited with {status}; see {}",
                        log_path.display()
                    )
                });
            return Err(anyhow!(line));
        }
        if is_mounted(mountpoint) {
            println!(
                "mounted {} at {} (pid {}, log {})",
                repo.display(),
                mountpoint.display(),
                child.id(),
                log_path.display()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the mount did not come up within 60 s; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when /proc/self/mountinfo lists a snapfs FUSE mount at `mountpoint`.
fn is_mounted(mountpoint: &Path) -> bool {
    mounted_source(mountpoint).is_some()
}

/// The source column of the snapfs mount at `mountpoint` ("snapfs:/path/to/repo"),
/// from /proc/self/mountinfo; `None` when there is no snapfs mount there.
fn mounted_source(mountpoint: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let target = mountpoint.to_string_lossy().replace(' ', "\\040");
    info.lines().find_map(|line| {
        // "id parent dev root MOUNTPOINT opts… - FSTYPE SOURCE superopts"
        let (head, tail) = line.split_once(" - ")?;
        let mut tail = tail.split(' ');
        let (fstype, source) = (tail.next()?, tail.next()?);
        let here = head.split(' ').nth(4) == Some(target.as_str()) && fstype.starts_with("fuse");
        (here && source.starts_with("snapfs")).then(|| source.replace("\\040", " "))
    })
}

pub fn umount(repo: &Path, args: UmountArgs) -> Result<()> {
    let mountpoint = std::path::absolute(&args.mountpoint)?;
    let Some(source) = mounted_source(&mountpoint) else {
        bail!("{} is not a snapfs mount", mountpoint.display());
    };
    // The mount names its repository; wait on that one, whatever --repo says.
    let served = source
        .strip_prefix("snapfs:")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let repo = served.as_deref().unwrap_or(repo);
    snapfs::fuse::unmount(&mountpoint)?;
    // The daemon commits everything, then exits and frees the lock.
    let deadline = Instant::now() + Duration::from_secs(120);
    while repo::exists(repo) {
        match RepoLock::acquire(repo, "umount") {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e).context("the mount daemon did not finish in 120 s"),
        }
    }
    println!("unmounted {}", mountpoint.display());
    Ok(())
}
