//! The mount daemon: what runs while a repository is mounted, besides the kernel's
//! requests. Owns: the flusher (commits buffered writes every 250 ms), the fill of
//! incomplete mirrors at the start, the background reclaimer, the snapshot scheduler and its retention, the control
//! requests (answered on the mount's own core), kernel cache invalidation after
//! operations that change the live tree or the snapshot list behind the kernel's
//! back, signals, and the clean shutdown. The CLI only parses its options and
//! starts it (`serve`). Nothing here prints: it logs.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::control::{self, Answer, Request};
use crate::error::{Error, Result};
use crate::fs::{Fs, FsOptions};
use crate::fuse::{Invalidator, MountOptions};
use crate::ops::retention::Policy;
use crate::ops::snapshots::{self, ForgetTarget};
use crate::ops::{gc, mirrors, recover};
use crate::repo::{self, Repo};
use crate::types::Ino;

/// What the daemon does besides serving requests.
#[derive(Clone, Debug, Default)]
pub struct DaemonOptions {
    /// Take a snapshot this often when the tree changed, then apply this policy.
    pub schedule: Option<(Duration, Policy)>,
    /// Delete unreferenced chunks in the background (`-o noreclaim` turns it off).
    pub reclaim: bool,
}

/// Serves the repository at `repo` on `mountpoint` in this process until it is
/// unmounted or signalled (SIGINT, SIGTERM, SIGHUP unmount it); on return every
/// buffered write is committed and durable, and a catalog copy is saved.
pub fn serve(repo: &Path, mountpoint: &Path, options: &MountOptions, daemon: DaemonOptions) -> Result<()> {
    let holder = format!("mounted at {}", mountpoint.display());
    let handle = Repo::open(repo, &holder)?;
    let (catalog, store, _lock) = handle.into_parts();
    // Before serving: no request can be committing while the connection changes.
    let checkpointer = catalog.checkpoint_elsewhere()?;
    // A marker left by a daemon that did not exit cleanly: its uncommitted chunks may
    // sit in the mirrors, so the next gc sweeps.
    let running = repo.join(repo::RUNNING_MARKER);
    if running.exists() {
        repo::mark_sweep_needed(repo)?;
    }
    // Durable, name included: after a power cut the next mount must see it too.
    std::fs::write(&running, std::process::id().to_string())
        .and_then(|()| std::fs::File::open(&running)?.sync_all())
        .and_then(|()| std::fs::File::open(repo)?.sync_all())
        .map_err(Error::io_with(format!("writing {}", running.display())))?;
    let fs = Arc::new(Fs::new(catalog, store, FsOptions::default())?);
    let mount = crate::fuse::mount(fs.clone(), mountpoint, options)?;
    let (handler_fs, handler_repo) = (fs.clone(), repo.to_path_buf());
    let invalidator = Arc::new(Mutex::new(mount.invalidator()));
    let copies = Arc::new(CatalogCopies::default());
    let handler_copies = copies.clone();
    control::serve(
        repo,
        Arc::new(move |req, progress| {
            answer(
                &handler_fs,
                &handler_repo,
                &handler_copies,
                &invalidator,
                req,
                progress,
            )
        }),
    )?;
    log::info!(
        "serving {} at {} (pid {})",
        repo.display(),
        mountpoint.display(),
        std::process::id()
    );

    {
        let fs = fs.clone();
        std::thread::spawn(move || fill_incomplete_mirrors(&fs));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flusher = {
        let (fs, stop, copies, repo) = (fs.clone(), stop.clone(), copies.clone(), repo.to_path_buf());
        std::thread::spawn(move || {
            let mut reported = std::collections::BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                if let Err(e) = fs.flush_old() {
                    log::warn!("committing buffered writes failed: {e}");
                }
                warn_lost_mirrors(&fs, &mut reported);
                copies.poll(&fs, &repo);
            }
        })
    };
    let checkpoints = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("snapfs-checkpoint".into())
            .spawn(move || checkpoint_in_background(&checkpointer, &stop))
            .map_err(Error::io_with("starting the catalog's checkpoint thread"))?
    };
    if daemon.reclaim {
        let (fs, stop) = (fs.clone(), stop.clone());
        std::thread::spawn(move || reclaim_in_background(&fs, &stop));
    }
    if let Some((every, policy)) = daemon.schedule {
        let (fs, stop, copies) = (fs.clone(), stop.clone(), copies.clone());
        let repo = repo.to_path_buf();
        std::thread::spawn(move || scheduled_snapshots(&fs, &repo, &copies, every, &policy, &stop));
    }
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(Error::io_with("listening for signals"))?;
    let signal_handle = signals.handle();
    let unmount_at = mountpoint.to_path_buf();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            log::info!("signal {sig}: unmounting");
            if let Err(e) = crate::fuse::unmount(&unmount_at) {
                log::error!("{e}");
            }
        }
    });
    let served = mount.join();
    signal_handle.close();
    stop.store(true, Ordering::Relaxed);
    let _ = flusher.join();
    let _ = checkpoints.join();
    fs.fsync(None)?;
    fs.log_lock_holds();
    match fs.with_catalog(|cat, _, _| cat.checkpoint()) {
        Ok(true) => {}
        Ok(false) => log::debug!("the catalog's WAL is kept: a reader was still open"),
        Err(e) => log::warn!("could not checkpoint the catalog at unmount: {e}"),
    }
    copies.wait();
    if let Err(e) = recover::save_copies(repo, &fs.mirror_paths(), crate::ops::now_ns()) {
        log::warn!("could not save a catalog copy at unmount: {e}");
    }
    let _ = std::fs::remove_file(control::socket_path(repo));
    served?;
    let _ = std::fs::remove_file(&running);
    log::info!("unmounted {}", mountpoint.display());
    Ok(())
}

/// The WAL size past which the checkpoint thread copies it into catalog.db: what
/// SQLite's own automatic checkpoint waits for (1,000 pages of 4 KiB).
const CHECKPOINT_AFTER_BYTES: u64 = 4 << 20;

/// Checkpoints the catalog's WAL whenever it has grown past `CHECKPOINT_AFTER_BYTES`,
/// beside the requests and commits (which no longer do it), until `stop`.
fn checkpoint_in_background(checkpointer: &crate::catalog::Checkpointer, stop: &AtomicBool) {
    let mut copied_to = 0;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(250));
        let wal = checkpointer.wal_bytes();
        // A whole checkpoint leaves the file at its size: the next commit restarts
        // the WAL at its start and overwrites it, so it grows again only once that
        // much has been written anew.
        if wal < CHECKPOINT_AFTER_BYTES || wal == copied_to {
            continue;
        }
        match checkpointer.run() {
            Ok((copied, frames)) => {
                log::trace!("checkpointed {copied} of {frames} WAL frames");
                copied_to = if copied == frames { wal } else { 0 };
            }
            Err(e) => log::warn!("{e}"),
        }
    }
}

/// Fills, beside the requests, the mirrors the catalog counts as incomplete (back
/// after they were set aside, or an interrupted fill), like a RAID resilvering a disk
/// that returned; until then they take every write but are not trusted for reads.
fn fill_incomplete_mirrors(fs: &Fs) {
    match mirrors::fill_incomplete(fs) {
        Ok(reports) => {
            for r in reports {
                log::info!(
                    "mirror {} is filled again: {} of {} packs copied ({} bytes)",
                    r.mirror,
                    r.copied,
                    r.packs,
                    r.bytes
                );
            }
        }
        Err(e) => log::warn!("filling an incomplete mirror failed: {e}; `snapfs scrub` fills it"),
    }
}

/// Logs each mirror this mount has set aside, once.
fn warn_lost_mirrors(fs: &Fs, reported: &mut std::collections::BTreeSet<u32>) {
    for m in fs.mirror_status() {
        if let crate::store::MirrorState::Lost { reason } = &m.state {
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
fn scheduled_snapshots(
    fs: &Fs,
    repo: &Path,
    copies: &Arc<CatalogCopies>,
    every: Duration,
    policy: &Policy,
    stop: &AtomicBool,
) {
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
                copies.request(fs, repo);
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
        let pruned = snapshots::forget_mounted(fs, &target, crate::ops::now_ns()).and_then(|report| {
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

/// Shortest time between two catalog copies of a mount. A copy reads and compresses
/// the whole catalog (hundreds of MiB for a million files, seconds of a core), so
/// snapshots in quick succession share one.
const COPY_GAP: Duration = Duration::from_secs(60);

/// The gap after a copy is also at least this many times as long as the copy took:
/// copies take a twentieth of the time at most, however big the catalog grows.
const COPY_GAP_PER_COPY_TIME: u32 = 20;

/// A copy asked for starts once no snapshot has asked for one for this long (a
/// burst of snapshots is not slowed by a copy beside it, and shares one copy)…
const COPY_QUIET: Duration = Duration::from_secs(2);

/// … or once it has waited this long, however busy the mount.
const COPY_MAX_WAIT: Duration = Duration::from_secs(300);

/// The mount's catalog copies into the mirrors, taken on a thread of their own (a
/// copy reads a consistent snapshot of the database; the mount goes on meanwhile):
/// one at a time, with a gap between them (`COPY_GAP`, `COPY_GAP_PER_COPY_TIME`),
/// each once the requests have been quiet for a while (`COPY_QUIET`, at most
/// `COPY_MAX_WAIT`). `poll` starts a copy asked for once it may.
#[derive(Default)]
struct CatalogCopies {
    /// Held only to read or flip the fields, never across a copy.
    state: Mutex<CopyState>,
}

#[derive(Default)]
struct CopyState {
    running: bool,
    /// The first and the last request since the last copy started.
    wanted: Option<(Instant, Instant)>,
    /// When the last copy ended, and the gap before the next may start.
    last: Option<(Instant, Duration)>,
}

impl CopyState {
    /// True when a copy is wanted and may start now.
    fn due(&self) -> bool {
        let Some((first, latest)) = self.wanted else {
            return false;
        };
        let gap_over = self.last.is_none_or(|(end, gap)| end.elapsed() >= gap);
        let settled = latest.elapsed() >= COPY_QUIET || first.elapsed() >= COPY_MAX_WAIT;
        !self.running && gap_over && settled
    }
}

impl CatalogCopies {
    /// Asks for a copy of the catalog as it is now (or later).
    fn request(self: &Arc<Self>, fs: &Fs, repo: &Path) {
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            st.wanted = Some((st.wanted.map_or(now, |(first, _)| first), now));
        }
        self.poll(fs, repo);
    }

    /// Starts the wanted copy if it is due (`CopyState::due`).
    fn poll(self: &Arc<Self>, fs: &Fs, repo: &Path) {
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if !st.due() {
                return;
            }
            st.wanted = None;
            st.running = true;
        }
        let (repo, mirrors, copies) = (repo.to_path_buf(), fs.mirror_paths(), self.clone());
        std::thread::spawn(move || {
            // The lowest CPU priority for this thread alone (on Linux a nice value is
            // per thread): on a busy machine the copy waits, the mount's requests not.
            let me = rustix::thread::gettid();
            if let Err(e) = rustix::process::setpriority_process(Some(me), 19) {
                log::debug!("could not lower the catalog copy's priority: {e}");
            }
            let started = Instant::now();
            if let Err(e) = recover::save_copies(&repo, &mirrors, crate::ops::now_ns()) {
                log::warn!("could not save a catalog copy: {e}");
            }
            let gap = COPY_GAP.max(started.elapsed() * COPY_GAP_PER_COPY_TIME);
            let mut st = copies.state.lock().unwrap_or_else(|p| p.into_inner());
            st.running = false;
            st.last = Some((Instant::now(), gap));
        });
    }

    /// Waits for a running copy to end (before the unmount's own copy).
    fn wait(&self) {
        while self.state.lock().unwrap_or_else(|p| p.into_inner()).running {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Answers a control request inside the daemon, on its own catalog.
fn answer(
    fs: &Fs,
    repo_path: &Path,
    copies: &Arc<CatalogCopies>,
    invalidator: &Mutex<Invalidator>,
    req: Request,
    progress: control::Progress<'_>,
) -> Result<Answer> {
    log::debug!("control request {req:?}");
    match req {
        Request::Snapshot { label } => {
            let name = fs.snapshot(label.as_deref())?.name;
            copies.request(fs, repo_path);
            Ok(Answer::Snapshot { name })
        }
        Request::Forget {
            target,
            dry_run: true,
        } => Ok(Answer::Forget {
            report: fs
                .with_read_catalog(|cat| snapshots::forget_dry_run(cat, &target, crate::ops::now_ns()))?,
        }),
        Request::Forget {
            target,
            dry_run: false,
        } => {
            let report = snapshots::forget_mounted(fs, &target, crate::ops::now_ns())?;
            // The kernel keeps snapshot names for a minute: the forgotten ones go now.
            let inval = invalidator.lock().unwrap_or_else(|p| p.into_inner());
            for name in &report.forgotten {
                inval.entry(Ino::ROOT, name.as_bytes());
            }
            drop(inval);
            Ok(Answer::Forget { report })
        }
        Request::Rollback { name, path, dry_run } => {
            let now = crate::ops::now_ns();
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
            let stats = gc::gc_mounted(fs, dry_run, sweep, progress)?;
            if sweep && !dry_run {
                repo::clear_sweep_needed(repo_path);
            }
            Ok(Answer::Gc { stats })
        }
        Request::Commit => {
            fs.commit()?;
            Ok(Answer::Committed)
        }
        Request::MirrorAdd { dir } => Ok(Answer::MirrorAdded {
            report: mirrors::add_mounted(fs, &dir, crate::ops::now_ns(), progress)?,
        }),
        Request::MirrorRemove { dir } => Ok(Answer::MirrorRemoved {
            id: mirrors::remove_mounted(fs, &dir)?,
        }),
        Request::Reinstate => Ok(Answer::Reinstated {
            reports: mirrors::reinstate_lost(fs, progress)?,
        }),
        Request::Hold { name, held } => Ok(Answer::Hold {
            name: fs.with_catalog(|cat, _, _| snapshots::hold(cat, &name, held))?,
        }),
    }
}
