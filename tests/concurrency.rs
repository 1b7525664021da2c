//! Concurrency: many threads on one repository neither hang nor corrupt it.
//!
//! * `core_ops_from_several_threads_never_hang`: the filesystem core with no kernel.
//!   Four threads run seeded random file operations (create, write, read, truncate,
//!   renames within and across folders and of folders, unlink, mkdir, rmdir, lookup,
//!   getattr, readdir, open/release, fsync, flush, commit, reads of snapshot views) on
//!   one small set of names, while a fifth takes snapshots, forgets them, rolls back
//!   the tree or one folder and condemns and deletes a gc batch, and a sixth runs
//!   `gc_mounted` over and over, all through the calls the mount makes. A race may
//!   make an operation fail as POSIX says (not found, exists, not empty); a panic or
//!   any other error fails the test. A watchdog fails it, naming the threads still
//!   running and how far each got, when they have not all finished within 120 s (per
//!   2,000 steps). Every snapshot reads the same whenever it is read, and at the end
//!   every live file reads back whole and the catalog checks clean, also reopened.
//! * `repository_operations_beside_writers_on_a_mount`: the real binary on a real
//!   FUSE mount. Four worker threads write, rewrite, append, truncate, rename, delete,
//!   list, fsync and read back files in folders of their own through `std::fs`,
//!   comparing every read with a model of their own, while the main thread runs
//!   `snapfs snapshot`, `gc`, `forget` and `rollback` of a folder no worker touches
//!   (`/quiet`, which has a model of its own) beside them, and rereads a kept
//!   snapshot. Workers pause at a gate for each snapshot, so what it holds is known,
//!   and every sixth round for a whole-tree rollback, after which their models are
//!   the snapshot's. At the end every live file equals the model, every remaining
//!   `@name` folder reads exactly what was recorded for it (only /quiet is known of
//!   a folder rollback's safety snapshot), `snapfs check` is clean while mounted and
//!   `check --read-data` after umount, and a remount shows the same trees.
//!
//! Switches: `SNAPFS_CONCURRENCY_STEPS` (steps per core thread, default 2,000),
//! `SNAPFS_CONCURRENCY_ROUNDS` (snapshot rounds of the mount test, default 12),
//! `SNAPFS_CONCURRENCY_SEED` (base seed of both, default 1; thread `t` uses
//! `16 * seed + t`, and each failure names the seed of the thread that saw it; the
//! interleaving is the scheduler's, so a seed reproduces the operations, not the
//! race). The mount test skips where FUSE is missing unless `SNAPFS_REQUIRE_FUSE=1`.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use snapfs::catalog::FileKind;
use snapfs::error::Error;
use snapfs::fs::{Caller, Fs, FsOptions, RenameMode, SetAttr, SnapDir, Writer};
use snapfs::ops::{self, snapshots};
use snapfs::repo::{InitOptions, Repo, RepoLock};
use snapfs::types::Ino;

use common::mount::*;
use common::*;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn base_seed() -> u64 {
    env_u64("SNAPFS_CONCURRENCY_SEED", 1)
}

/// path -> None for a folder, Some(bytes) for a file: what a view or folder shows.
type Tree = BTreeMap<String, Option<Vec<u8>>>;

// ---------------------------------------------------------------------------------
// 1. The core, from several threads

const ME: Caller = Caller { uid: 0, gid: 0 };

/// The folders the core threads share, all in the root (files go in them or in the
/// root); folder and file names never overlap, so a name keeps its kind.
const DIRS: [&str; 3] = ["d0", "d1", "d2"];
/// File names `f0..f{FILES}`.
const FILES: u64 = 6;
const CORE_THREADS: usize = 4;

/// What a thread does and how often (the weights of the random pick).
const CORE_OPS: &[(&str, u64)] = &[
    ("create", 5),
    ("write", 6),
    ("read", 3),
    ("truncate", 2),
    ("rename file", 3),
    ("rename folder", 1),
    ("unlink", 2),
    ("mkdir", 2),
    ("rmdir", 1),
    ("lookup", 2),
    ("getattr", 2),
    ("readdir", 2),
    ("open and keep", 2),
    ("write through a kept handle", 2),
    ("read through a kept handle", 1),
    ("release", 2),
    ("fsync", 1),
    ("flush", 1),
    ("commit", 1),
    ("flush old", 1),
    ("read a snapshot", 1),
];

/// What the repository thread does and how often.
const REPO_OPS: &[(&str, u64)] = &[
    ("snapshot", 4),
    ("forget", 2),
    ("gc", 2),
    ("rollback", 1),
    ("rollback a folder", 2),
    ("reread a snapshot", 3),
];

fn pick_op(rng: &mut Rng, ops: &[(&'static str, u64)]) -> &'static str {
    let total: u64 = ops.iter().map(|(_, w)| w).sum();
    let mut at = rng.below(total);
    for (name, w) in ops {
        if at < *w {
            return name;
        }
        at -= w;
    }
    unreachable!("the weights add up to total")
}

/// How far a thread got, for the watchdog's message.
#[derive(Default)]
struct Progress {
    steps: AtomicU64,
    doing: Mutex<&'static str>,
}

impl Progress {
    fn at(&self, step: u64, op: &'static str) {
        self.steps.store(step, Ordering::Relaxed);
        *self.doing.lock().unwrap_or_else(|p| p.into_inner()) = op;
    }

    fn describe(&self) -> String {
        format!(
            "{} steps done, in {:?}",
            self.steps.load(Ordering::Relaxed),
            *self.doing.lock().unwrap_or_else(|p| p.into_inner())
        )
    }
}

/// What another thread getting there first may cause: the answers POSIX gives.
fn is_race(e: &Error) -> bool {
    matches!(e, Error::NotFound(_) | Error::Exists(_) | Error::NotEmpty(_))
}

/// What one thread did: steps that succeeded and those a race made fail.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    raced: u64,
}

fn folder(fs: &Fs, d: u64) -> snapfs::Result<Ino> {
    match d {
        0 => Ok(Ino::ROOT),
        d => Ok(fs.lookup_node(Ino::ROOT, DIRS[d as usize - 1].as_bytes())?.ino),
    }
}

fn random_folder(fs: &Fs, rng: &mut Rng) -> snapfs::Result<Ino> {
    let d = rng.below(DIRS.len() as u64 + 1);
    folder(fs, d)
}

fn file_name(rng: &mut Rng) -> String {
    format!("f{}", rng.below(FILES))
}

/// A random file of the shared names, looked up now.
fn random_file(fs: &Fs, rng: &mut Rng) -> snapfs::Result<Ino> {
    let dir = random_folder(fs, rng)?;
    Ok(fs.lookup_node(dir, file_name(rng).as_bytes())?.ino)
}

/// Runs `f` on `ino` opened (for writing when `write`), and releases it whatever `f`
/// answered, as the kernel does for a short-lived file descriptor.
fn with_open<T>(fs: &Fs, ino: Ino, write: bool, f: impl FnOnce() -> snapfs::Result<T>) -> snapfs::Result<T> {
    fs.open_node(ino, write)?;
    let result = f();
    let released = fs.release_node(ino);
    let value = result?;
    released?;
    Ok(value)
}

fn write_random(fs: &Fs, rng: &mut Rng, ino: Ino) -> snapfs::Result<()> {
    let offset = rng.below(64 << 10);
    let data = random_bytes(rng.next(), 1 + rng.below(32 << 10) as usize);
    fs.write_as(fs.live_id(ino)?, offset, &data, &Writer::Privileged)?;
    Ok(())
}

fn read_random(fs: &Fs, rng: &mut Rng, ino: Ino) -> snapfs::Result<()> {
    let offset = rng.below(80 << 10);
    let len = 1 + rng.below(48 << 10) as usize;
    let got = fs.read_node(ino, offset, len)?;
    if got.len() > len {
        return Err(Error::InvalidArgument(format!(
            "a read of {len} bytes returned {}",
            got.len()
        )));
    }
    Ok(())
}

/// One random operation of a core thread; `kept` are the handles it holds open.
fn core_step(fs: &Fs, rng: &mut Rng, kept: &mut Vec<Ino>, op: &str) -> snapfs::Result<()> {
    match op {
        "create" => {
            let dir = random_folder(fs, rng)?;
            fs.create_node(ME, dir, file_name(rng).as_bytes(), FileKind::File, 0o644, 0, b"")?;
        }
        "write" => {
            let ino = random_file(fs, rng)?;
            with_open(fs, ino, true, || write_random(fs, rng, ino))?;
        }
        "read" => {
            let ino = random_file(fs, rng)?;
            with_open(fs, ino, false, || read_random(fs, rng, ino))?;
        }
        "truncate" => {
            let ino = random_file(fs, rng)?;
            let set = SetAttr {
                size: Some(rng.below(96 << 10)),
                ..Default::default()
            };
            fs.setattr_node(ino, &set, &Writer::Privileged)?;
        }
        "rename file" => {
            let (from, to) = (random_folder(fs, rng)?, random_folder(fs, rng)?);
            let (a, b) = (file_name(rng), file_name(rng));
            let mode = *rng.pick(&[
                RenameMode::Replace,
                RenameMode::Replace,
                RenameMode::NoReplace,
                RenameMode::Exchange,
            ]);
            fs.rename_node(from, a.as_bytes(), to, b.as_bytes(), mode)?;
        }
        "rename folder" => {
            let (a, b) = (rng.pick(&DIRS), rng.pick(&DIRS));
            fs.rename_node(
                Ino::ROOT,
                a.as_bytes(),
                Ino::ROOT,
                b.as_bytes(),
                RenameMode::Replace,
            )?;
        }
        "unlink" => {
            let dir = random_folder(fs, rng)?;
            fs.remove_node(dir, file_name(rng).as_bytes(), false)?;
        }
        "mkdir" => {
            let name = rng.pick(&DIRS);
            fs.create_node(ME, Ino::ROOT, name.as_bytes(), FileKind::Dir, 0o755, 0, b"")?;
        }
        "rmdir" => {
            let name = rng.pick(&DIRS);
            fs.remove_node(Ino::ROOT, name.as_bytes(), true)?;
        }
        "lookup" => {
            random_file(fs, rng)?;
        }
        "getattr" => {
            let ino = random_file(fs, rng)?;
            fs.node(ino)?;
        }
        "readdir" => {
            let dir = random_folder(fs, rng)?;
            if rng.chance(1, 2) {
                fs.readdir_nodes(dir, SnapDir::Visible)?;
            } else {
                // Small pages, so other threads change the folder between them.
                let mut after = 0;
                loop {
                    let page = fs.list_dir_plus(dir, after, 2, SnapDir::Visible)?;
                    let Some((last, _)) = page.last() else { break };
                    after = last.cookie;
                }
            }
        }
        "open and keep" => {
            if kept.len() < 4 {
                let ino = random_file(fs, rng)?;
                fs.open_node(ino, true)?;
                kept.push(ino);
            }
        }
        "write through a kept handle" => {
            if !kept.is_empty() {
                let ino = *rng.pick(kept);
                write_random(fs, rng, ino)?;
            }
        }
        "read through a kept handle" => {
            if !kept.is_empty() {
                let ino = *rng.pick(kept);
                read_random(fs, rng, ino)?;
            }
        }
        "release" => {
            if !kept.is_empty() {
                let ino = kept.remove(rng.below(kept.len() as u64) as usize);
                fs.release_node(ino)?;
            }
        }
        "fsync" => match kept.first() {
            Some(ino) if rng.chance(3, 4) => fs.fsync_node(*ino)?,
            _ => fs.fsync(None)?,
        },
        "flush" => match kept.first() {
            Some(ino) if rng.chance(1, 2) => fs.flush(Some(fs.live_id(*ino)?))?,
            _ => fs.flush(None)?,
        },
        "commit" => fs.commit()?,
        "flush old" => fs.flush_old()?,
        "read a snapshot" => {
            let names: Vec<Vec<u8>> = fs
                .readdir_nodes(Ino::ROOT, SnapDir::Visible)?
                .into_iter()
                .map(|(name, _)| name)
                .filter(|name| name.first() == Some(&b'@'))
                .collect();
            if !names.is_empty() {
                let root = fs.lookup_node(Ino::ROOT, rng.pick(&names).as_slice())?.ino;
                let entries = fs.readdir_nodes(root, SnapDir::Visible)?;
                if !entries.is_empty() {
                    let (_, node) = rng.pick(&entries);
                    let file = match node.attr.kind {
                        FileKind::Dir => {
                            let inner = fs.readdir_nodes(node.ino, SnapDir::Visible)?;
                            inner.first().map(|(_, n)| n.ino)
                        }
                        _ => Some(node.ino),
                    };
                    if let Some(ino) = file {
                        with_open(fs, ino, false, || read_random(fs, rng, ino))?;
                    }
                }
            }
        }
        other => unreachable!("no core operation {other:?}"),
    }
    Ok(())
}

/// A core thread: `steps` random operations with seed `seed`.
fn core_thread(fs: &Fs, t: usize, seed: u64, steps: u64, progress: &Progress) -> Result<Tally, String> {
    let mut rng = Rng::new(seed);
    let mut kept = Vec::new();
    let mut tally = Tally::default();
    for step in 0..steps {
        let op = pick_op(&mut rng, CORE_OPS);
        progress.at(step, op);
        match core_step(fs, &mut rng, &mut kept, op) {
            Ok(()) => tally.ok += 1,
            Err(e) if is_race(&e) => tally.raced += 1,
            Err(e) => {
                return Err(format!(
                    "core thread {t} (seed {seed}) step {step} {op:?}: unexpected error {e:?} ({e})"
                ))
            }
        }
    }
    progress.at(steps, "releasing its handles");
    for ino in kept {
        fs.release_node(ino)
            .map_err(|e| format!("core thread {t} (seed {seed}): release at the end: {e:?}"))?;
    }
    Ok(tally)
}

/// Reads a whole view into a tree (no other thread changes a snapshot).
fn observe(fs: &Fs, root: Ino) -> snapfs::Result<Tree> {
    let mut tree = Tree::new();
    let mut stack = vec![(String::new(), root)];
    while let Some((prefix, dir)) = stack.pop() {
        for (name, node) in fs.readdir_nodes(dir, SnapDir::Hidden)? {
            let path = format!("{prefix}{}", String::from_utf8_lossy(&name));
            if node.attr.kind == FileKind::Dir {
                tree.insert(path.clone(), None);
                stack.push((format!("{path}/"), node.ino));
            } else {
                let data = fs.read_node(node.ino, 0, node.attr.size as usize + 1)?;
                if data.len() as u64 != node.attr.size {
                    return Err(Error::CorruptCatalog(format!(
                        "{path}: size {} but {} bytes read",
                        node.attr.size,
                        data.len()
                    )));
                }
                tree.insert(path, Some(data));
            }
        }
    }
    Ok(tree)
}

/// A snapshot as the repository thread read it right after taking it.
struct CoreSnap {
    name: String,
    tree: Tree,
}

fn snapshot_root(fs: &Fs, name: &str) -> snapfs::Result<Ino> {
    Ok(fs.lookup_node(Ino::ROOT, name.as_bytes())?.ino)
}

/// Records snapshot `name` as it reads now.
fn record(fs: &Fs, name: String) -> snapfs::Result<CoreSnap> {
    let tree = observe(fs, snapshot_root(fs, &name)?)?;
    Ok(CoreSnap { name, tree })
}

/// One operation of the repository thread. Errors here are all unexpected but those
/// of a folder rollback that POSIX-level races explain (the folder is gone from the
/// snapshot, or a file moved across its edge).
fn repo_step(fs: &Fs, rng: &mut Rng, snaps: &mut Vec<CoreSnap>, op: &str) -> snapfs::Result<()> {
    match op {
        "snapshot" => {
            let g = fs.snapshot(None)?;
            let name = g
                .name
                .ok_or_else(|| Error::InvalidArgument("a snapshot without a name".into()))?;
            snaps.push(record(fs, name)?);
        }
        "forget" => {
            if snaps.len() > 1 {
                let old = snaps.remove(rng.below(snaps.len() as u64) as usize);
                forget(fs, old.name)?;
            }
        }
        "gc" => {
            // One batch, then the dead packs, as `gc_mounted` does (which goes on while
            // writers make garbage; the gc thread runs that).
            fs.with_catalog(|cat, _, _| ops::gc::condemn(cat, ops::gc::BATCH))?;
            let dead = fs.with_catalog(|cat, store, _| ops::gc::dead_packs(cat, store))?;
            fs.wait_for_older_reads();
            fs.store().delete_packs(&dead)?;
            fs.with_catalog(|cat, _, _| cat.drop_pack_rows(&dead))?;
        }
        "rollback" => {
            if !snaps.is_empty() {
                let target = rng.pick(snaps).name.clone();
                let report = fs.with_catalog(|cat, _, open| {
                    snapshots::rollback(cat, &target, None, false, ops::now_ns(), open)
                })?;
                if let Some(safety) = report.safety_snapshot {
                    snaps.push(record(fs, safety)?);
                }
            }
        }
        "rollback a folder" => {
            if !snaps.is_empty() {
                let target = rng.pick(snaps).name.clone();
                let dir = format!("/{}", rng.pick(&DIRS));
                let result = fs.with_catalog(|cat, _, open| {
                    snapshots::rollback(cat, &target, Some(&dir), false, ops::now_ns(), open)
                });
                match result {
                    Ok(report) => {
                        if let Some(safety) = report.safety_snapshot {
                            snaps.push(record(fs, safety)?);
                        }
                    }
                    Err(Error::NotFound(m)) if m.contains("did not exist in") => {}
                    Err(Error::InvalidArgument(m)) if m.contains("moved or linked across") => {}
                    Err(e) => return Err(e),
                }
            }
        }
        "reread a snapshot" => {
            if !snaps.is_empty() {
                let snap = rng.pick(snaps);
                let now = observe(fs, snapshot_root(fs, &snap.name)?)?;
                if now != snap.tree {
                    return Err(Error::CorruptCatalog(format!(
                        "{} reads differently now: {}",
                        snap.name,
                        tree_diff(&snap.tree, &now)
                    )));
                }
            }
        }
        other => unreachable!("no repository operation {other:?}"),
    }
    // A few snapshots at a time, so rereading them stays cheap.
    while snaps.len() > 8 {
        let old = snaps.remove(rng.below(snaps.len() as u64 - 1) as usize);
        forget(fs, old.name)?;
    }
    Ok(())
}

fn forget(fs: &Fs, name: String) -> snapfs::Result<()> {
    let target = snapshots::ForgetTarget::Names(vec![name]);
    fs.with_catalog(|cat, _, _| snapshots::forget(cat, &target, false, ops::now_ns()))?;
    Ok(())
}

/// The repository thread: runs while core threads do (`running` of them), at least
/// 20 operations and at most `max_steps`.
fn repo_thread(
    fs: &Fs,
    seed: u64,
    max_steps: u64,
    running: &AtomicUsize,
    progress: &Progress,
    snaps: &Mutex<Vec<CoreSnap>>,
) -> Result<Tally, String> {
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let mut step = 0;
    let mut snaps = snaps.lock().unwrap_or_else(|p| p.into_inner());
    while (running.load(Ordering::SeqCst) > 0 || step < 20) && step < max_steps {
        let op = pick_op(&mut rng, REPO_OPS);
        progress.at(step, op);
        repo_step(fs, &mut rng, &mut snaps, op).map_err(|e| {
            format!("repository thread (seed {seed}) step {step} {op:?}: unexpected error {e:?} ({e})")
        })?;
        tally.ok += 1;
        step += 1;
        // Room for the core threads between two whole-repository operations.
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(tally)
}

/// The gc thread: `gc_mounted` again and again while core threads run (one run lasts
/// as long as they keep making garbage), at least once.
fn gc_thread(fs: &Fs, running: &AtomicUsize, progress: &Progress) -> Result<Tally, String> {
    let mut tally = Tally::default();
    let (mut chunks, mut longest, mut most_batches) = (0, Duration::ZERO, 0);
    loop {
        progress.at(tally.ok, "gc_mounted");
        let (started, mut batches) = (Instant::now(), 0);
        let stats = ops::gc::gc_mounted(fs, false, false, &mut |_, _| batches += 1)
            .map_err(|e| format!("gc thread run {}: unexpected error {e:?} ({e})", tally.ok))?;
        longest = longest.max(started.elapsed());
        most_batches = most_batches.max(batches);
        chunks += stats.chunks;
        tally.ok += 1;
        if running.load(Ordering::SeqCst) == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "gc thread: {} runs freed {chunks} chunks; the longest took {longest:?}, the most batches {most_batches}",
        tally.ok
    );
    Ok(tally)
}

/// The first differences between two trees, for a failure message.
fn tree_diff(want: &Tree, got: &Tree) -> String {
    let describe = |v: &Option<Vec<u8>>| match v {
        None => "folder".to_string(),
        Some(b) => format!("{} bytes, blake3 {}", b.len(), &blake3::hash(b).to_hex()[..12]),
    };
    let mut out = Vec::new();
    for (path, w) in want {
        match got.get(path) {
            None => out.push(format!("missing {path} ({})", describe(w))),
            Some(g) if g != w => out.push(format!("{path}: want {}, got {}", describe(w), describe(g))),
            Some(_) => {}
        }
    }
    for (path, g) in got {
        if !want.contains_key(path) {
            out.push(format!("unexpected {path} ({})", describe(g)));
        }
    }
    let n = out.len();
    out.truncate(12);
    format!("{n} differences: {}", out.join("; "))
}

fn open_core(repo: &Path) -> (Fs, RepoLock) {
    // The lock is an flock of an open file. A process that the other test of this
    // binary forks (to start a mount) holds a copy of every descriptor open at that
    // moment until it execs, and with it the lock this test just let go of: a
    // moment later it is free. Seen once in CI as `Locked` by this very process.
    let deadline = Instant::now() + Duration::from_secs(5);
    let repo = loop {
        match Repo::open(repo, "test") {
            Err(Error::Locked { pid, .. }) if pid == std::process::id() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    let (catalog, store, lock) = repo.into_parts();
    (Fs::new(catalog, store, FsOptions::default()).unwrap(), lock)
}

fn catalog_problems(fs: &Fs) -> Vec<String> {
    fs.with_catalog(|cat, _, _| ops::check::check(cat, true, false, &mut |_, _| {}))
        .unwrap()
        .problems
}

#[test]
fn core_ops_from_several_threads_never_hang() {
    let started = Instant::now();
    let steps = env_u64("SNAPFS_CONCURRENCY_STEPS", 2_000);
    let seed = base_seed();
    let (_tmp, repo) = temp_repo();
    let options = InitOptions {
        chunk_sizes: Some((1024, 4096, 16384)),
        ..Default::default()
    };
    drop(Repo::init(&repo, &options, 1).unwrap());
    let (core, lock) = open_core(&repo);
    let fs = Arc::new(core);
    for d in DIRS {
        fs.create(
            ME,
            snapfs::types::InodeId::ROOT,
            d.as_bytes(),
            FileKind::Dir,
            0o755,
            0,
            b"",
        )
        .unwrap();
    }

    let names: Vec<String> = (0..CORE_THREADS)
        .map(|t| format!("core thread {t} (seed {})", seed * 16 + t as u64))
        .chain([
            format!("repository thread (seed {})", seed * 16 + 15),
            "gc thread".into(),
        ])
        .collect();
    let progress: Arc<Vec<Progress>> = Arc::new(names.iter().map(|_| Progress::default()).collect());
    let running = Arc::new(AtomicUsize::new(CORE_THREADS));
    let snaps = Arc::new(Mutex::new(Vec::new()));
    let (done, finished) = mpsc::channel::<(usize, Result<Tally, String>)>();
    for t in 0..names.len() {
        let (fs, progress, running, snaps, done) = (
            fs.clone(),
            progress.clone(),
            running.clone(),
            snaps.clone(),
            done.clone(),
        );
        std::thread::Builder::new()
            .name(names[t].clone())
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if t < CORE_THREADS {
                        let r = core_thread(&fs, t, seed * 16 + t as u64, steps, &progress[t]);
                        running.fetch_sub(1, Ordering::SeqCst);
                        r
                    } else if t == CORE_THREADS {
                        repo_thread(&fs, seed * 16 + 15, steps, &running, &progress[t], &snaps)
                    } else {
                        gc_thread(&fs, &running, &progress[t])
                    }
                }))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    if t < CORE_THREADS {
                        running.fetch_sub(1, Ordering::SeqCst);
                    }
                    Err(format!("thread {t} panicked: {what}"))
                });
                let _ = done.send((t, result));
            })
            .unwrap();
    }
    drop(done);

    // The watchdog: the workers are detached, so a hang fails the test from here.
    let limit = Duration::from_secs(120 * steps.div_ceil(2_000).max(1));
    let deadline = Instant::now() + limit;
    let mut results: Vec<Option<Result<Tally, String>>> = names.iter().map(|_| None).collect();
    while results.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match finished.recv_timeout(left) {
            Ok((t, result)) => results[t] = Some(result),
            Err(_) => {
                let stuck: Vec<String> = names
                    .iter()
                    .zip(&results)
                    .zip(progress.iter())
                    .filter(|((_, r), _)| r.is_none())
                    .map(|((name, _), p)| format!("{name}: {}", p.describe()))
                    .collect();
                panic!(
                    "threads still running after {limit:?} (a deadlock or a livelock):\n  {}",
                    stuck.join("\n  ")
                );
            }
        }
    }
    let mut failures = Vec::new();
    for (name, result) in names.iter().zip(results) {
        match result.unwrap() {
            Ok(tally) => eprintln!("{name}: {} operations, {} lost a race", tally.ok, tally.raced),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));

    // Quiet now: every snapshot reads as it did, every live file reads back whole,
    // and the catalog holds its invariants with no file left nameless.
    let snaps = std::mem::take(&mut *snaps.lock().unwrap());
    let check_snapshots = |fs: &Fs, when: &str| {
        for snap in &snaps {
            let now = observe(fs, snapshot_root(fs, &snap.name).unwrap()).unwrap();
            assert!(
                now == snap.tree,
                "{} {when}: {}",
                snap.name,
                tree_diff(&snap.tree, &now)
            );
        }
    };
    check_snapshots(&fs, "at the end");
    let live = observe(&fs, Ino::ROOT).unwrap_or_else(|e| panic!("reading the live tree: {e:?}"));
    let problems = catalog_problems(&fs);
    assert!(problems.is_empty(), "the catalog after the run: {problems:?}");
    fs.fsync(None).unwrap();
    drop(Arc::into_inner(fs).expect("every thread let go of the core"));
    drop(lock);
    let (fs, _lock) = open_core(&repo);
    assert!(
        observe(&fs, Ino::ROOT).unwrap() == live,
        "the live tree after reopening"
    );
    check_snapshots(&fs, "after reopening");
    let problems = catalog_problems(&fs);
    assert!(problems.is_empty(), "the catalog after reopening: {problems:?}");
    eprintln!(
        "{} live paths, {} snapshots kept, {steps} steps per thread in {:?}",
        live.len(),
        snaps.len(),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------
// 2. Repository commands beside writers on a mount

const MOUNT_WORKERS: usize = 4;
/// Each worker's file names: `f0..f5` in its folder and in its `sub` folder.
const WORKER_NAMES: u64 = 6;

/// A worker's files by path inside its folder ("f3", "sub/f1").
type Files = BTreeMap<String, Vec<u8>>;

/// Where the workers stop for a snapshot: the main thread pauses them, does what it
/// must while nothing writes, and lets them go on.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    moved: Condvar,
}

#[derive(Default)]
struct GateState {
    paused: bool,
    parked: usize,
    epoch: u64,
}

impl Gate {
    /// A worker between two operations: waits here while the main thread has paused.
    fn checkpoint(&self) {
        let mut s = self.state.lock().unwrap();
        if !s.paused {
            return;
        }
        s.parked += 1;
        self.moved.notify_all();
        let epoch = s.epoch;
        while s.epoch == epoch {
            s = self.moved.wait(s).unwrap();
        }
        s.parked -= 1;
    }

    /// Returns once all `n` workers wait at their checkpoint; fails when a worker died
    /// or they did not all arrive within 60 s.
    fn pause(&self, n: usize, workers: &mut Vec<JoinHandle<()>>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut s = self.state.lock().unwrap();
        s.paused = true;
        while s.parked < n {
            if workers.iter().any(|w| w.is_finished()) {
                drop(s);
                join_workers(std::mem::take(workers));
                panic!("a worker ended before the end");
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} workers paused within 60 s: one hangs in the mount",
                s.parked
            );
            s = self.moved.wait_timeout(s, Duration::from_millis(50)).unwrap().0;
        }
    }

    fn resume(&self) {
        let mut s = self.state.lock().unwrap();
        s.paused = false;
        s.epoch += 1;
        self.moved.notify_all();
    }
}

/// Joins the workers, handing on the first one's panic.
fn join_workers(workers: Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for w in workers {
        while !w.is_finished() {
            assert!(Instant::now() < deadline, "a worker did not stop within 60 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Err(panic) = w.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

fn worker_path(rng: &mut Rng) -> String {
    let name = format!("f{}", rng.below(WORKER_NAMES));
    if rng.chance(1, 3) {
        format!("sub/{name}")
    } else {
        name
    }
}

/// Mostly small, now and then several chunks.
fn worker_len(rng: &mut Rng) -> usize {
    if rng.chance(1, 8) {
        rng.below(300_000) as usize
    } else {
        rng.below(20_000) as usize
    }
}

/// One random operation of worker `w` in its folder `dir`, checked against `files`.
fn mount_step(dir: &Path, rng: &mut Rng, files: &mut Files, what: &str) {
    let rel = worker_path(rng);
    let path = dir.join(&rel);
    let io = |r: std::io::Result<()>, op: &str| r.unwrap_or_else(|e| panic!("{what}: {op} {rel}: {e}"));
    match rng.below(22) {
        0..=3 => {
            let data = random_bytes(rng.next(), worker_len(rng));
            io(fs::write(&path, &data), "write");
            files.insert(rel.clone(), data);
        }
        4..=6 => {
            let Some(content) = files.get_mut(&rel) else {
                return;
            };
            let offset = rng.below(content.len() as u64 + 4096) as usize;
            let data = random_bytes(rng.next(), 1 + rng.below(40_000) as usize);
            let f = OpenOptions::new().write(true).open(&path);
            let f = f.unwrap_or_else(|e| panic!("{what}: open {rel} to overwrite: {e}"));
            io(f.write_all_at(&data, offset as u64), "overwrite");
            if content.len() < offset + data.len() {
                content.resize(offset + data.len(), 0);
            }
            content[offset..offset + data.len()].copy_from_slice(&data);
        }
        7..=8 => {
            let Some(content) = files.get_mut(&rel) else {
                return;
            };
            let data = random_bytes(rng.next(), 1 + rng.below(30_000) as usize);
            let f = OpenOptions::new().append(true).open(&path);
            let mut f = f.unwrap_or_else(|e| panic!("{what}: open {rel} to append: {e}"));
            io(std::io::Write::write_all(&mut f, &data), "append");
            content.extend_from_slice(&data);
        }
        9 => {
            let Some(content) = files.get_mut(&rel) else {
                return;
            };
            let size = rng.below(content.len() as u64 + 10_000) as usize;
            let f = OpenOptions::new().write(true).open(&path);
            let f = f.unwrap_or_else(|e| panic!("{what}: open {rel} to truncate: {e}"));
            io(f.set_len(size as u64), "truncate");
            content.resize(size, 0);
        }
        10..=13 => match (fs::read(&path), files.get(&rel)) {
            (Ok(got), Some(want)) => assert!(
                &got == want,
                "{what}: {rel} reads {} bytes (blake3 {}), the model has {} (blake3 {})",
                got.len(),
                blake3::hash(&got).to_hex(),
                want.len(),
                blake3::hash(want).to_hex()
            ),
            (Err(e), None) if e.kind() == ErrorKind::NotFound => {}
            (got, want) => panic!(
                "{what}: read {rel}: {:?}, the model has {:?} bytes",
                got.map(|g| g.len()),
                want.map(|w| w.len())
            ),
        },
        14..=15 => {
            let Some(want) = files.get(&rel) else { return };
            let offset = rng.below(want.len() as u64 + 1) as usize;
            let len = (rng.below(20_000) as usize).min(want.len() - offset);
            let mut buf = vec![0u8; len];
            let f = fs::File::open(&path).unwrap_or_else(|e| panic!("{what}: open {rel}: {e}"));
            io(f.read_exact_at(&mut buf, offset as u64), "read a range of");
            assert!(
                buf == want[offset..offset + len],
                "{what}: {rel} bytes {offset}..{} differ from the model",
                offset + len
            );
        }
        16..=18 => {
            let to = worker_path(rng);
            if to == rel || !files.contains_key(&rel) {
                return;
            }
            io(fs::rename(&path, dir.join(&to)), &format!("rename to {to}:"));
            let moved = files.remove(&rel).unwrap();
            files.insert(to, moved);
        }
        19..=20 => {
            if files.remove(&rel).is_some() {
                io(fs::remove_file(&path), "delete");
            }
        }
        _ => {
            let listed = list_files(dir);
            let want: Vec<&String> = files.keys().collect();
            assert_eq!(
                listed.iter().collect::<Vec<_>>(),
                want,
                "{what}: the folder lists other files than the model"
            );
            if let Some(rel) = files.keys().nth(rng.below(files.len() as u64 + 1) as usize) {
                let f = fs::File::open(dir.join(rel)).unwrap();
                f.sync_all()
                    .unwrap_or_else(|e| panic!("{what}: fsync {rel}: {e}"));
            }
        }
    }
}

/// The files of a worker folder ("f1", "sub/f2"), sorted.
fn list_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (prefix, d) in [("", dir.to_path_buf()), ("sub/", dir.join("sub"))] {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("readdir {}: {e}", d.display())) {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                out.push(format!("{prefix}{}", entry.file_name().to_string_lossy()));
            }
        }
    }
    out.sort();
    out
}

fn mount_worker(
    dir: PathBuf,
    w: usize,
    seed: u64,
    files: Arc<Mutex<Files>>,
    gate: Arc<Gate>,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) {
    let mut rng = Rng::new(seed);
    let mut step = 0u64;
    while !stop.load(Ordering::SeqCst) {
        gate.checkpoint();
        let what = format!("worker {w} (seed {seed}) step {step}");
        mount_step(&dir, &mut rng, &mut files.lock().unwrap(), &what);
        step += 1;
        progress.store(step, Ordering::Relaxed);
    }
}

/// Runs the snapfs binary, failing when it does not succeed within 120 s; stdout.
fn cli(repo: &Path, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_snapfs"));
    cmd.arg("--repo").arg(repo).args(args).env_remove("SNAPFS_REPO");
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("snapfs {args:?} did not return within 120 s"));
    assert!(
        out.status.success(),
        "snapfs {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The safety snapshot a rollback names.
fn safety_of(rollback_output: &str) -> String {
    rollback_output
        .lines()
        .find_map(|l| l.strip_prefix("safety snapshot "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("rollback names its safety snapshot: {rollback_output:?}"))
        .to_string()
}

/// Everything under `dir` (recursively; the `@` folders of a mount root left out).
fn walk(dir: &Path) -> Tree {
    let mut tree = Tree::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("readdir {}: {e}", d.display())) {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if prefix.is_empty() && name.starts_with('@') {
                continue;
            }
            let rel = format!("{prefix}{name}");
            if entry.file_type().unwrap().is_dir() {
                tree.insert(rel.clone(), None);
                stack.push((entry.path(), format!("{rel}/")));
            } else {
                let data =
                    fs::read(entry.path()).unwrap_or_else(|e| panic!("read {}: {e}", entry.path().display()));
                tree.insert(rel, Some(data));
            }
        }
    }
    tree
}

/// What the mount root holds by the models: the workers' folders and /quiet.
fn tree_of(workers: &[Arc<Mutex<Files>>], quiet: &Files) -> Tree {
    let mut tree = Tree::new();
    for (w, files) in workers.iter().enumerate() {
        tree.insert(format!("w{w}"), None);
        tree.insert(format!("w{w}/sub"), None);
        for (rel, data) in files.lock().unwrap().iter() {
            tree.insert(format!("w{w}/{rel}"), Some(data.clone()));
        }
    }
    tree.insert("quiet".into(), None);
    for (rel, data) in quiet {
        tree.insert(format!("quiet/{rel}"), Some(data.clone()));
    }
    tree
}

/// What folder `dir` (a /quiet) holds, with paths as from the mount root.
fn quiet_tree(dir: &Path) -> Tree {
    let mut tree: Tree = walk(dir)
        .into_iter()
        .map(|(p, v)| (format!("quiet/{p}"), v))
        .collect();
    tree.insert("quiet".into(), None);
    tree
}

/// Only the paths of `tree` under /quiet.
fn quiet_part(tree: &Tree) -> Tree {
    tree.iter()
        .filter(|(p, _)| p.as_str() == "quiet" || p.starts_with("quiet/"))
        .map(|(p, v)| (p.clone(), v.clone()))
        .collect()
}

/// The quiet folder's files ("q1") in `tree`.
fn quiet_files(tree: &Tree) -> Files {
    tree.iter()
        .filter_map(|(p, v)| Some((p.strip_prefix("quiet/")?.to_string(), v.clone()?)))
        .collect()
}

/// A worker folder's files in `tree`.
fn worker_files(tree: &Tree, w: usize) -> Files {
    let prefix = format!("w{w}/");
    tree.iter()
        .filter_map(|(p, v)| Some((p.strip_prefix(&prefix)?.to_string(), v.clone()?)))
        .collect()
}

/// A snapshot taken in the mount test and what it must read: the whole tree, or only
/// /quiet for the safety snapshot of a folder rollback (taken while workers write).
struct MountSnap {
    name: String,
    tree: Tree,
    whole: bool,
}

/// The main thread's own changes to /quiet, which no worker touches.
fn change_quiet(quiet_dir: &Path, rng: &mut Rng, quiet: &mut Files) {
    for _ in 0..3 {
        let rel = format!("q{}", rng.below(5));
        if rng.chance(1, 4) {
            if quiet.remove(&rel).is_some() {
                fs::remove_file(quiet_dir.join(&rel)).unwrap();
            }
        } else {
            let data = text_bytes(rng.next(), 1 + worker_len(rng));
            fs::write(quiet_dir.join(&rel), &data).unwrap();
            quiet.insert(rel, data);
        }
    }
}

fn check_snapshots(m: &Mount, snaps: &[MountSnap], when: &str) {
    for snap in snaps {
        let root = m.path(&snap.name);
        let got = if snap.whole {
            walk(&root)
        } else {
            quiet_tree(&root.join("quiet"))
        };
        assert!(
            got == snap.tree,
            "{} {when}: {}",
            snap.name,
            tree_diff(&snap.tree, &got)
        );
    }
}

#[test]
fn repository_operations_beside_writers_on_a_mount() {
    require_fuse!();
    let started = Instant::now();
    let rounds = env_u64("SNAPFS_CONCURRENCY_ROUNDS", 12);
    let seed = base_seed();
    let (tmp, repo) = temp_repo();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    // Small chunks: the workers' files span several, so gc and rollback have more to do.
    cli(&repo, &["init", "--chunk-size", "4K:16K:64K"]);
    let m = Mount::new(&repo, &mnt);
    for w in 0..MOUNT_WORKERS {
        fs::create_dir_all(m.path(&format!("w{w}/sub"))).unwrap();
    }
    fs::create_dir(m.path("quiet")).unwrap();
    let mut rng = Rng::new(seed * 16 + 15);
    let mut quiet = Files::new();
    change_quiet(&m.path("quiet"), &mut rng, &mut quiet);

    let models: Vec<Arc<Mutex<Files>>> = (0..MOUNT_WORKERS).map(|_| Default::default()).collect();
    let progress: Vec<Arc<AtomicU64>> = (0..MOUNT_WORKERS).map(|_| Default::default()).collect();
    let (gate, stop) = (Arc::new(Gate::default()), Arc::new(AtomicBool::new(false)));
    let mut workers: Vec<JoinHandle<()>> = (0..MOUNT_WORKERS)
        .map(|w| {
            let dir = m.path(&format!("w{w}"));
            let (files, gate, stop, progress) =
                (models[w].clone(), gate.clone(), stop.clone(), progress[w].clone());
            std::thread::Builder::new()
                .name(format!("mount worker {w}"))
                .spawn(move || mount_worker(dir, w, seed * 16 + w as u64, files, gate, stop, progress))
                .unwrap()
        })
        .collect();

    let mut snaps: Vec<MountSnap> = Vec::new();
    let (mut forgotten, mut gcs, mut quiet_rollbacks, mut whole_rollbacks) = (0, 0, 0, 0);
    let mut longest_gc = Duration::ZERO;
    for round in 0..rounds {
        std::thread::sleep(Duration::from_millis(150));
        change_quiet(&m.path("quiet"), &mut rng, &mut quiet);

        gate.pause(MOUNT_WORKERS, &mut workers);
        let name = cli(&repo, &["snapshot"]).trim().to_string();
        snaps.push(MountSnap {
            name,
            tree: tree_of(&models, &quiet),
            whole: true,
        });
        if round % 6 == 5 {
            // The whole tree back to an older snapshot, with the workers paused: their
            // models become what it holds; its safety snapshot is the tree as now.
            let older: Vec<&MountSnap> = snaps[..snaps.len() - 1].iter().filter(|s| s.whole).collect();
            let target = older
                .get(rng.below(older.len() as u64) as usize)
                .copied()
                .unwrap_or(&snaps[0]);
            let (target_name, target_tree) = (target.name.clone(), target.tree.clone());
            let before = tree_of(&models, &quiet);
            let safety = safety_of(&cli(&repo, &["rollback", &target_name]));
            snaps.push(MountSnap {
                name: safety,
                tree: before,
                whole: true,
            });
            for (w, files) in models.iter().enumerate() {
                *files.lock().unwrap() = worker_files(&target_tree, w);
            }
            quiet = quiet_files(&target_tree);
            let got = walk(&m.path(""));
            assert!(
                got == target_tree,
                "the tree after rollback to {target_name}: {}",
                tree_diff(&target_tree, &got)
            );
            whole_rollbacks += 1;
        }
        gate.resume();

        // Beside the writers from here on.
        if round % 3 == 2 && snaps.len() > 2 {
            let old = snaps.remove(rng.below(snaps.len() as u64 - 1) as usize);
            cli(&repo, &["forget", &old.name]);
            forgotten += 1;
        }
        if round % 2 == 1 {
            let t = Instant::now();
            cli(&repo, &["gc"]);
            longest_gc = longest_gc.max(t.elapsed());
            gcs += 1;
        }
        // A kept snapshot reads as recorded while the workers write and gc runs.
        let reread = rng.below(snaps.len() as u64) as usize;
        check_snapshots(&m, &snaps[reread..reread + 1], "beside the writers");
        if round % 4 == 3 {
            let target = &snaps[rng.below(snaps.len() as u64) as usize];
            let (target_name, target_quiet) = (target.name.clone(), quiet_files(&target.tree));
            let before = tree_of(&[], &quiet);
            let safety = safety_of(&cli(&repo, &["rollback", &target_name, "/quiet"]));
            snaps.push(MountSnap {
                name: safety,
                tree: quiet_part(&before),
                whole: false,
            });
            quiet = target_quiet;
            let got = quiet_tree(&m.path("quiet"));
            let want = quiet_part(&tree_of(&[], &quiet));
            assert!(
                got == want,
                "/quiet after rollback to {target_name}: {}",
                tree_diff(&want, &got)
            );
            quiet_rollbacks += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    join_workers(workers);
    let steps: Vec<u64> = progress.iter().map(|p| p.load(Ordering::Relaxed)).collect();

    let want = tree_of(&models, &quiet);
    let live = walk(&m.path(""));
    assert!(
        live == want,
        "the live tree at the end: {}",
        tree_diff(&want, &live)
    );
    check_snapshots(&m, &snaps, "at the end");
    let listed: Vec<String> = fs::read_dir(m.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('@'))
        .collect();
    assert_eq!(
        listed.len(),
        snaps.len(),
        "the root lists the kept snapshots: {listed:?}"
    );
    let mounted_check = cli(&repo, &["check"]);
    assert!(mounted_check.contains("no problems found"), "{mounted_check}");
    m.umount();
    let check = cli(&repo, &["check", "--read-data"]);
    assert!(check.contains("no problems found"), "{check}");

    let m = Mount::new(&repo, &mnt);
    let live = walk(&m.path(""));
    assert!(
        live == want,
        "the live tree after remount: {}",
        tree_diff(&want, &live)
    );
    check_snapshots(&m, &snaps, "after remount");
    m.umount();
    eprintln!(
        "{rounds} rounds: worker steps {steps:?}, {} snapshots kept, {forgotten} forgotten, {gcs} gc runs \
         (the longest {longest_gc:?}), {quiet_rollbacks} folder and {whole_rollbacks} whole rollbacks, in {:?}",
        snaps.len(),
        started.elapsed()
    );
}
