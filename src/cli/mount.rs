//! `snapfs mount` and `snapfs umount`: serve the live tree through FUSE.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use snapfs::control::{self, Answer, Request};
use snapfs::fs::{Fs, FsOptions, SnapDir};
use snapfs::fuse::{Invalidator, MountOptions};
use snapfs::ops::retention::{parse_duration, Policy};
use snapfs::ops::snapshots::{self, ForgetTarget};
use snapfs::ops::{gc, recover};
use snapfs::repo::{self, InitOptions, Repo, RepoLock};
use snapfs::types::Ino;

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
        serve(
            repo,
            &mountpoint,
            &options,
            every.map(|secs| (Duration::from_secs(secs), policy)),
            reclaim,
        )
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

/// Serves the mount in this process until it is unmounted or signalled.
fn serve(
    repo: &Path,
    mountpoint: &Path,
    options: &MountOptions,
    schedule: Option<(Duration, Policy)>,
    reclaim: bool,
) -> Result<()> {
    let holder = format!("mounted at {}", mountpoint.display());
    let handle = Repo::open(repo, &holder).with_context(|| format!("cannot mount {}", repo.display()))?;
    let (catalog, store, _lock) = handle.into_parts();
    // A marker left by a daemon that did not exit cleanly: its uncommitted chunks may
    // sit in the mirrors, so the next gc sweeps.
    let running = repo.join(repo::RUNNING_MARKER);
    if running.exists() {
        repo::mark_sweep_needed(repo)?;
    }
    std::fs::write(&running, std::process::id().to_string())?;
    let fs = Arc::new(Fs::new(catalog, store, FsOptions::default())?);
    let mount = snapfs::fuse::mount(fs.clone(), mountpoint, options)?;
    let (handler_fs, handler_repo) = (fs.clone(), repo.to_path_buf());
    let invalidator = Arc::new(Mutex::new(mount.invalidator()));
    control::serve(
        repo,
        Arc::new(move |req| answer(&handler_fs, &handler_repo, &invalidator, req)),
    )?;
    log::info!(
        "serving {} at {} (pid {})",
        repo.display(),
        mountpoint.display(),
        std::process::id()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let flusher = {
        let (fs, stop) = (fs.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reported = std::collections::BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                if let Err(e) = fs.flush_old() {
                    log::warn!("committing buffered writes failed: {e}");
                }
                warn_lost_mirrors(&fs, &mut reported);
            }
        })
    };
    if reclaim {
        let (fs, stop) = (fs.clone(), stop.clone());
        std::thread::spawn(move || reclaim_in_background(&fs, &stop));
    }
    if let Some((every, policy)) = schedule {
        let (fs, stop) = (fs.clone(), stop.clone());
        let repo = repo.to_path_buf();
        std::thread::spawn(move || scheduled_snapshots(&fs, &repo, every, &policy, &stop));
    }
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    let signal_handle = signals.handle();
    let unmount_at = mountpoint.to_path_buf();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            log::info!("signal {sig}: unmounting");
            if let Err(e) = snapfs::fuse::unmount(&unmount_at) {
                log::error!("{e}");
            }
        }
    });
    let served = mount.join();
    signal_handle.close();
    stop.store(true, Ordering::Relaxed);
    let _ = flusher.join();
    fs.fsync(None).context("committing buffered writes at unmount")?;
    if let Err(e) = recover::save_copies(repo, fs.mirror_paths(), snapfs::ops::now_ns()) {
        log::warn!("could not save a catalog copy at unmount: {e}");
    }
    let _ = std::fs::remove_file(control::socket_path(repo));
    served?;
    let _ = std::fs::remove_file(&running);
    log::info!("unmounted {}", mountpoint.display());
    Ok(())
}

/// Logs each mirror this mount has set aside, once.
fn warn_lost_mirrors(fs: &Fs, reported: &mut std::collections::BTreeSet<u32>) {
    for m in fs.mirror_status() {
        if let snapfs::store::MirrorState::Lost { reason } = &m.state {
            if reported.insert(m.id.0) {
                log::warn!(
                    "{} is lost ({reason}); reads and writes go on with the other mirrors; \
                     when it is back, `snapfs scrub` refills it",
                    m.describe
                );
            }
        }
    }
}

/// How often the background reclaimer looks for chunks nothing references.
const RECLAIM_EVERY: Duration = Duration::from_secs(10);

/// Deletes the chunks that nothing references any more (deleted or overwritten files
/// no snapshot holds, forgotten snapshots' own chunks) every `RECLAIM_EVERY`, in
/// gc's batches: each holds the mount for one short transaction only.
fn reclaim_in_background(fs: &Fs, stop: &AtomicBool) {
    let mut next = Instant::now() + RECLAIM_EVERY;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + RECLAIM_EVERY;
        match gc::reclaim(fs) {
            Ok(stats) if stats.chunks > 0 => {
                log::info!(
                    "reclaimed {} chunks ({} bytes per mirror)",
                    stats.chunks,
                    stats.bytes
                )
            }
            Ok(_) => {}
            Err(e) => log::warn!("background reclaim failed: {e}"),
        }
    }
}

/// Every `every`: a snapshot when the tree changed, then the retention policy and gc.
fn scheduled_snapshots(fs: &Fs, repo: &Path, every: Duration, policy: &Policy, stop: &AtomicBool) {
    let mut next = Instant::now() + every;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if Instant::now() < next {
            continue;
        }
        next += every;
        match fs.snapshot_if_changed(Some("scheduled")) {
            Ok(Some(g)) => {
                log::info!("scheduled snapshot {}", g.name.unwrap_or_default());
                copy_catalog_in_background(fs, repo);
            }
            Ok(None) => continue,
            Err(e) => {
                log::warn!("scheduled snapshot failed: {e}");
                continue;
            }
        }
        if policy.is_empty() {
            continue;
        }
        let target = ForgetTarget::Policy(policy.clone());
        let pruned = fs
            .with_catalog(|cat, _, _| snapshots::forget(cat, &target, false, snapfs::ops::now_ns()))
            .and_then(|report| {
                Ok((
                    report.forgotten,
                    gc::gc_mounted(fs, false, false, &mut |_, _| {})?,
                ))
            });
        match pruned {
            Ok((forgotten, freed)) if !forgotten.is_empty() => {
                log::info!(
                    "retention forgot {} snapshots, freed {} bytes",
                    forgotten.len(),
                    freed.bytes
                )
            }
            Ok(_) => {}
            Err(e) => log::warn!("retention failed: {e}"),
        }
    }
}

/// Saves a catalog copy into the mirrors on a thread of its own (it reads a
/// consistent snapshot of the database; the mount goes on meanwhile).
fn copy_catalog_in_background(fs: &Fs, repo: &Path) {
    let (repo, mirrors) = (repo.to_path_buf(), fs.mirror_paths().to_vec());
    std::thread::spawn(move || {
        if let Err(e) = recover::save_copies(&repo, &mirrors, snapfs::ops::now_ns()) {
            log::warn!("could not save a catalog copy: {e}");
        }
    });
}

/// Answers a control request inside the daemon, on its own catalog.
fn answer(
    fs: &Fs,
    repo_path: &Path,
    invalidator: &Mutex<Invalidator>,
    req: Request,
) -> snapfs::Result<Answer> {
    log::debug!("control request {req:?}");
    match req {
        Request::Snapshot { label } => {
            let name = fs.snapshot(label.as_deref())?.name;
            copy_catalog_in_background(fs, repo_path);
            Ok(Answer::Snapshot { name })
        }
        Request::Forget { target, dry_run } => {
            let report =
                fs.with_catalog(|cat, _, _| snapshots::forget(cat, &target, dry_run, snapfs::ops::now_ns()))?;
            // The kernel keeps snapshot names for a minute: the forgotten ones go now.
            let inval = invalidator.lock().unwrap_or_else(|p| p.into_inner());
            for name in report.forgotten.iter().filter(|_| !report.dry_run) {
                inval.entry(Ino::ROOT, name.as_bytes());
            }
            drop(inval);
            Ok(Answer::Forget { report })
        }
        Request::Rollback { name, path, dry_run } => {
            let now = snapfs::ops::now_ns();
            let report = fs.with_catalog(|cat, _, open| {
                snapshots::rollback(cat, &name, path.as_deref(), dry_run, now, open)
            })?;
            // Outside the filesystem lock: the kernel may call back in while it drops.
            let inval = invalidator.lock().unwrap_or_else(|p| p.into_inner());
            for (parent, entry) in &report.changes.entries {
                inval.entry(Ino::live(*parent), entry);
            }
            for inode in &report.changes.inodes {
                inval.inode(Ino::live(*inode));
            }
            Ok(Answer::Rollback { report })
        }
        Request::Gc { dry_run, sweep } => {
            let sweep = sweep || (!dry_run && fs.take_commit_failed()) || repo::sweep_needed(repo_path);
            let stats = gc::gc_mounted(fs, dry_run, sweep, &mut |_, _| {})?;
            if sweep && !dry_run {
                repo::clear_sweep_needed(repo_path);
            }
            Ok(Answer::Gc { stats })
        }
        Request::Commit => {
            fs.commit()?;
            Ok(Answer::Committed)
        }
        Request::Hold { name, held } => Ok(Answer::Hold {
            name: fs.with_catalog(|cat, _, _| snapshots::hold(cat, &name, held))?,
        }),
    }
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
