//! The filesystem core: POSIX semantics over the live tree.
//!
//! Owns: name and attribute rules (what rename may replace, link counts, times,
//! setgid folders), open-file handles, write buffering through the chunker, and
//! reads through a chunk cache. It does not name `fuser`: the FUSE adapter
//! translates kernel requests into calls here, so everything is testable without a
//! kernel. Depends on `catalog`, `store` and `ingest`.
//!
//! Concurrency: one mutex (`Fs::state`) guards the writer's catalog connection, the
//! write buffers, the open counts and the unlinked-but-open files. Writes are
//! buffered per file and committed in groups (by the flusher every second, on fsync,
//! or before a size change, hole punch or copy needs them). A group commit holds the
//! lock only for its catalog part: it seals and marks the runs under it, waits for
//! the chunk writers and syncs the mirrors without it, and writes the rows under it
//! again (`commit_buffered`); a commit that must happen inside another change (a
//! size change of a file with buffered writes) does it all under the lock. Reads see
//! buffered writes without committing them (see `write`). Lookups, attributes,
//! listings, xattrs and reads of files without buffered writes run on read
//! connections of their own (see `published`), like everything in a snapshot,
//! beside any writer, gc, forget or rollback; they take the lock only for what the
//! open batch of metadata changes changed (its rows are in no other connection's
//! view yet; the inodes and folders it touched are published), and for the bytes of
//! a file with buffered writes.

mod holds;
mod inflight;
mod privileges;
mod published;
mod read;
mod space;
mod view;
mod write;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use privileges::Writer;
pub use read::{placed, read_at, read_extents, ChunkCache, Placed, Prefetcher};
pub use space::{Allocate, Seek, BLOCK_SIZE};
pub use view::{Listed, Node, SnapDir};

use crate::catalog::{Catalog, FileKind, InodeAttr, NewInode, Settings, Unlinked};
use crate::error::{Error, Result};
use crate::ingest::{Backlog, ChunkSink};
use crate::store::Redundancy;
use crate::types::{GenId, InodeId};
use published::{AttrOverlay, Quiet};
use write::DirtyFiles;

/// Who is asking: the caller's ids, from the kernel request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// A time to set: now, or a given instant in ns since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(i64),
}

/// The attribute changes of one `setattr`; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// How `rename` treats an existing target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace it (POSIX rename).
    Replace,
    /// Fail with EEXIST (RENAME_NOREPLACE).
    NoReplace,
    /// Swap the two (RENAME_EXCHANGE).
    Exchange,
}

/// Free space, from the fullest mirror's filesystem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatFs {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
}

/// Knobs of the filesystem core.
#[derive(Clone, Copy, Debug)]
pub struct FsOptions {
    /// Bytes of decoded chunks kept in memory for reads: room for the read-ahead of
    /// four sequential readers at once.
    pub cache_bytes: usize,
    /// Buffered writes older than this are committed by `flush_old`.
    pub flush_after: Duration,
    /// Bytes read ahead of a sequential reader.
    pub readahead_bytes: u64,
    /// Threads that load read-ahead chunks. Chunk files are read with O_DIRECT, one
    /// request per thread at a time, so this is the read-ahead's queue depth.
    pub readahead_threads: usize,
}

impl Default for FsOptions {
    fn default() -> FsOptions {
        FsOptions {
            cache_bytes: 64 << 20,
            flush_after: Duration::from_secs(1),
            readahead_bytes: 16 << 20,
            readahead_threads: 12,
        }
    }
}

struct State {
    catalog: Catalog,
    sink: ChunkSink,
    dirty: DirtyFiles,
    /// Open handles per inode, for unlinked-but-open files.
    open: HashMap<InodeId, u32>,
    /// Files that lost, or may have lost, their last name.
    nameless: Nameless,
}

/// Files that lost, or may have lost, their last name, and are not removed yet.
#[derive(Default)]
struct Nameless {
    /// Open inodes that may have lost their last name (unlink, rename over them, or a
    /// catalog operation such as rollback): at their last release the catalog, not
    /// this set, decides whether they go. A superset, never a verdict.
    maybe: HashSet<InodeId>,
    /// Big files whose last name went with no handle open: nameless now, their
    /// extents are dropped a step at a time by `finish_removals` (in one go, they
    /// would hold the lock, and the kernel's lock of their folder, for as long as
    /// closing every extent takes). A crash leaves them to `Fs::new`'s clean-up.
    removing: Vec<InodeId>,
}

/// A file's last read and read-ahead, for `Fs::read`.
#[derive(Clone, Copy, Debug, Default)]
struct ReadPosition {
    end: u64,
    prefetched_to: u64,
}

/// Buffered extents past which the flusher commits a file before `flush_after`: a
/// commit writes every buffered extent into the catalog while holding the core's
/// lock, so this bounds how long a big streaming write makes `ls` wait (1,024 extents
/// are 16-256 MiB of data and about 10 ms of catalog work).
const COMMIT_EXTENTS: usize = 1024;

/// Extents (counted at the average chunk size) that one step of removing a file
/// drops: about 10 ms of catalog work. A file with fewer goes at once.
const REMOVAL_STEP_EXTENTS: u64 = 1024;

/// How far from the last read a read may start and still count as sequential: the
/// kernel's own read-ahead sends several reads at once, which arrive out of order.
const SEQUENTIAL_SLACK: u64 = 4 << 20;

impl State {
    fn sink_store(&self) -> Arc<dyn Redundancy> {
        self.sink.store()
    }

    fn params(&self) -> crate::chunker::ChunkerParams {
        self.sink.params()
    }
}

/// The live tree of one repository, served to many threads.
pub struct Fs {
    /// Lock scope: one catalog change (a transaction or a batch commit) with the
    /// buffers it reads or drops, never the catalog's fsync (`fsync` and `snapshot`
    /// sync the WAL after it) and, for group commits, never the packs' sync
    /// (`commit_buffered`), nor, for writes and group commits, the reads, cuts and
    /// hashes of their bytes (`write::unlocked`: planned under it, done without
    /// it, applied under it again unless what they read moved). Still under it: a
    /// duplicate check and a queue per chunk, a write refused that way (written
    /// again under it), the last chunks of runs shorter than 32 KiB at a commit,
    /// the plan of a read of a file with buffered writes (never its wait for the
    /// writer threads, unless its own file was written to through three plans;
    /// `plan_buffered_read`), and the whole of a commit forced
    /// inside another change (a size change or a copy of a file with buffered
    /// writes), or of what was written during a group commit that a snapshot or
    /// repository operation must also include.
    state: Mutex<State>,
    /// What readers may rely on without `state` (written as `state` is released).
    published: published::Published,
    /// Where the last read of each file ended and how far read-ahead was asked for,
    /// to spot sequential readers. Lock scope: one lookup or update, nothing else.
    read_ends: Mutex<HashMap<InodeId, ReadPosition>>,
    /// Read connections for what needs no lock: everything inside a snapshot.
    readers: crate::catalog::ReadPool,
    /// Reads fetching chunks, which gc waits for before it deletes any.
    reads: inflight::ReadsInFlight,
    store: Arc<dyn Redundancy>,
    cache: Arc<ChunkCache>,
    prefetcher: Prefetcher,
    settings: Settings,
    /// The mirror folders the catalog records (changed by `mirror add` and `mirror
    /// remove` through the mount). Scope: held only to clone or replace the list.
    mirror_paths: Mutex<Vec<std::path::PathBuf>>,
    options: FsOptions,
    /// Free bytes on the fullest mirror filesystem, and when that was read.
    free_space: Mutex<(std::time::Instant, u64)>,
    /// Set when a commit failed after chunks reached the mirrors: they are unknown
    /// objects now, for gc to sweep.
    commit_failed: std::sync::atomic::AtomicBool,
    /// File data was written since the last sync outside the lock.
    chunks_written: std::sync::atomic::AtomicBool,
    /// Commits of buffered writes in three steps (`commit_buffered`) run one at a
    /// time; the number of the last one begun. Lock scope: one such commit, its store
    /// sync included, taken before the core's lock and never under it. Only fsync,
    /// the flusher and repository operations wait for it, never a read.
    commits: Mutex<u64>,
    /// Threads waiting for the core's lock right now. The lock (std's) is not fair:
    /// a repository operation that takes it step after step would get it back before
    /// a woken request runs, and a write waited out a whole 200-snapshot forget
    /// (1.8 s) that way. `with_catalog` lets the waiters in first.
    lock_waiters: std::sync::atomic::AtomicUsize,
    /// The chunk writers' queue: a write waits for room in it before taking the lock.
    backlog: Option<Backlog>,
    /// Who held `state`, for how long, when debug logging is on.
    holds: holds::Holds,
    /// Names found pointing at no inode, each logged once (bounded).
    reported_dangling: Mutex<HashSet<(InodeId, Vec<u8>)>>,
}

/// Chunks the writer threads' queue holds (and blocks a `put` beyond).
const WRITER_QUEUE: usize = 32;

/// The longest a step of a repository operation waits for the requests queued for the
/// core's lock to get it first (so writers that keep coming cannot stall it for good).
const LET_IN_AT_MOST: Duration = Duration::from_millis(50);

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn resolve(t: SetTime) -> i64 {
    match t {
        SetTime::Now => now_ns(),
        SetTime::At(ns) => ns,
    }
}

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl Fs {
    /// Serves the live tree of `catalog` with chunks in `store`. Removes inodes that a
    /// crash left with no name (unlinked while open).
    pub fn new(catalog: Catalog, store: Arc<dyn Redundancy>, options: FsOptions) -> Result<Fs> {
        let settings = catalog.settings()?;
        catalog.set_durable_commits(false)?;
        let mut catalog = catalog;
        // Metadata storms (untar, git checkout) cost one commit per tick, not per file.
        catalog.set_batching(true)?;
        let mirror_paths = catalog.mirrors()?.into_iter().map(|m| m.path).collect();
        let sink = ChunkSink::new(store.clone(), settings.chunker, settings.zstd_level)
            .with_writers(2, WRITER_QUEUE);
        let backlog = sink.backlog();
        let mut state = State {
            catalog,
            sink,
            dirty: DirtyFiles::default(),
            open: HashMap::new(),
            nameless: Nameless::default(),
        };
        let orphans = state.catalog.live_orphans()?;
        if !orphans.is_empty() {
            let txn = state.catalog.write()?;
            for id in orphans {
                txn.remove_inode(id)?;
            }
            txn.commit()?;
        }
        let cache = Arc::new(ChunkCache::new(options.cache_bytes));
        Ok(Fs {
            readers: state.catalog.read_pool(),
            reads: Default::default(),
            published: Default::default(),
            read_ends: Mutex::new(HashMap::new()),
            state: Mutex::new(state),
            prefetcher: Prefetcher::new(store.clone(), cache.clone(), options.readahead_threads),
            store,
            cache,
            settings,
            mirror_paths: Mutex::new(mirror_paths),
            options,
            free_space: Mutex::new((std::time::Instant::now() - Duration::from_secs(60), u64::MAX)),
            commit_failed: std::sync::atomic::AtomicBool::new(false),
            chunks_written: std::sync::atomic::AtomicBool::new(false),
            commits: Mutex::new(0),
            lock_waiters: std::sync::atomic::AtomicUsize::new(0),
            backlog,
            reported_dangling: Mutex::new(HashSet::new()),
            holds: holds::Holds::new(log::log_enabled!(log::Level::Debug)),
        })
    }

    /// Logs (at debug level) who held the core's lock and for how long, when debug
    /// logging was on as the filesystem started: for the end of a mount.
    pub fn log_lock_holds(&self) {
        if self.holds.is_on() {
            for line in self.holds.report() {
                log::debug!("the core's lock, taken at {line}");
            }
        }
    }

    #[track_caller]
    fn lock(&self) -> published::Locked<'_> {
        let by = std::panic::Location::caller();
        use std::sync::atomic::Ordering::Relaxed;
        let asked = self.holds.is_on().then(std::time::Instant::now);
        self.lock_waiters.fetch_add(1, Relaxed);
        // A panic in another thread poisoned the mutex; the state is still the last
        // consistent one (every change is a transaction), so keep serving.
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.lock_waiters.fetch_sub(1, Relaxed);
        let waited = asked.map_or(Duration::ZERO, |t| t.elapsed());
        published::Locked::new(guard, &self.published, by, waited, &self.holds)
    }

    /// Waits (50 ms at most) until no thread is waiting for the core's lock, so that
    /// requests queued behind one step of a repository operation get the lock before
    /// its next step does.
    fn let_requests_in(&self) {
        let deadline = std::time::Instant::now() + LET_IN_AT_MOST;
        while self.lock_waiters.load(std::sync::atomic::Ordering::Relaxed) > 0
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Runs the read `f` on a read connection of its own, at the live generation,
    /// with what is published to lay over what it reads and to tell it what it must
    /// not trust (see `published`); `None` when the caller must read under the lock
    /// instead: nothing is published yet, `f` met what the open batch changed and
    /// answered `Ok(None)`, or a buffered entry was dropped while `f` ran.
    fn unlocked<T>(&self, f: impl FnOnce(&Catalog, GenId, &Quiet) -> Result<Option<T>>) -> Option<Result<T>> {
        // The count of removals is taken before the read transaction starts (see
        // `published` for why).
        let quiet = self.published.quiet()?;
        match self
            .readers
            .with_consistent(|cat| f(cat, quiet.live, &quiet))
            .transpose()
        {
            // A buffered entry was dropped meanwhile: what was read may lack it.
            Some(Ok(_)) if !quiet.still_whole() => None,
            read => read,
        }
    }

    /// The attributes of `ino`, with buffered writes counted in size and mtime.
    pub fn getattr(&self, ino: InodeId) -> Result<InodeAttr> {
        let found = self.unlocked(|cat, live, quiet| live_attr(cat, live, quiet, ino).map(Some));
        if let Some(found) = found {
            return found;
        }
        let st = self.lock();
        attr_of(&st, ino)
    }

    /// Looks `name` up in folder `parent`.
    pub fn lookup(&self, parent: InodeId, name: &[u8]) -> Result<InodeAttr> {
        if let Some(found) =
            self.unlocked(|cat, live, quiet| self.lookup_in(cat, live, quiet, parent, name).map(Some))
        {
            return found;
        }
        let st = self.lock();
        self.lookup_in(&st.catalog, st.catalog.live(), &*st, parent, name)
    }

    /// `lookup` on `cat` at live generation `live`, with what `overlay` says the open
    /// batch left and the buffered writes laid over what `cat` shows.
    fn lookup_in(
        &self,
        cat: &Catalog,
        live: GenId,
        overlay: &dyn AttrOverlay,
        parent: InodeId,
        name: &[u8],
    ) -> Result<InodeAttr> {
        if live_attr(cat, live, overlay, parent)?.kind != FileKind::Dir {
            return Err(Error::NotDir(lossy(name)));
        }
        if name.len() > 255 {
            return Err(Error::NameTooLong);
        }
        let id = match overlay.name_left(parent, name) {
            Some(left) => left,
            None => cat.lookup(live, parent, name)?,
        }
        .ok_or_else(|| Error::NotFound(lossy(name)))?;
        live_attr(cat, live, overlay, id).map_err(|e| self.dangling(e, parent, name, id))
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: InodeId) -> Result<Vec<u8>> {
        let attr = self.getattr(ino)?;
        if attr.kind != FileKind::Symlink {
            return Err(Error::InvalidArgument("not a symlink".into()));
        }
        Ok(attr.target)
    }

    /// Creates `name` in `parent`: a file, folder, fifo, socket, device or symlink.
    /// The owner is the caller; the group is the caller's, or the folder's when the
    /// folder is setgid (a new folder then inherits setgid).
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        caller: Caller,
        parent: InodeId,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        rdev: u64,
        target: &[u8],
    ) -> Result<InodeAttr> {
        let mut st = self.lock();
        let now = now_ns();
        let txn = st.catalog.write()?;
        let parent_attr = txn.expect_inode(parent)?;
        if parent_attr.kind != FileKind::Dir {
            return Err(Error::NotDir(lossy(name)));
        }
        if parent_attr.nlink == 0 {
            return Err(Error::NotFound("folder was removed".into()));
        }
        let setgid_parent = parent_attr.mode & libc::S_ISGID != 0;
        let mut mode = mode & 0o7777;
        if setgid_parent && kind == FileKind::Dir {
            mode |= libc::S_ISGID;
        }
        let attr = txn.create_linked(
            parent,
            name,
            &NewInode {
                kind,
                mode,
                uid: caller.uid,
                gid: if setgid_parent {
                    parent_attr.gid
                } else {
                    caller.gid
                },
                rdev,
                time_ns: now,
                target: target.to_vec(),
            },
        )?;
        // A new folder's ".." changed the parent's link count: read it again.
        let parent_attr = if kind == FileKind::Dir {
            txn.expect_inode(parent)?
        } else {
            parent_attr
        };
        txn.set_inode(&InodeAttr {
            mtime_ns: now,
            ctime_ns: now,
            ..parent_attr
        })?;
        txn.commit()?;
        Ok(attr)
    }

    /// Adds the name `name` in `parent` for file `ino` (a hard link).
    pub fn link(&self, ino: InodeId, parent: InodeId, name: &[u8]) -> Result<InodeAttr> {
        let mut st = self.lock();
        let now = now_ns();
        let txn = st.catalog.write()?;
        let attr = txn.expect_inode(ino)?;
        if attr.kind == FileKind::Dir {
            return Err(Error::NotPermitted("hard link to a folder".into()));
        }
        if txn.expect_inode(parent)?.kind != FileKind::Dir {
            return Err(Error::NotDir(lossy(name)));
        }
        txn.link(parent, name, ino)?;
        let mut attr = txn.expect_inode(ino)?;
        attr.ctime_ns = now;
        txn.set_inode(&attr)?;
        touch_dir(&txn, parent, now)?;
        txn.commit()?;
        attr_of(&st, ino)
    }

    /// Removes the non-folder `name` from `parent`.
    pub fn unlink(&self, parent: InodeId, name: &[u8]) -> Result<()> {
        self.remove(parent, name, false)
    }

    /// Removes the empty folder `name` from `parent`.
    pub fn rmdir(&self, parent: InodeId, name: &[u8]) -> Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: InodeId, name: &[u8], dir: bool) -> Result<()> {
        let mut st = self.lock();
        let now = now_ns();
        let st = &mut *st;
        let txn = st.catalog.write()?;
        let id = txn
            .lookup(parent, name)?
            .ok_or_else(|| Error::NotFound(lossy(name)))?;
        let attr = txn.expect_inode(id)?;
        match (dir, attr.kind == FileKind::Dir) {
            (true, false) => return Err(Error::NotDir(lossy(name))),
            (false, true) => return Err(Error::IsDir(lossy(name))),
            (true, true) if txn.has_entries(id)? => return Err(Error::NotEmpty(lossy(name))),
            _ => {}
        }
        let step = self.removal_step();
        let unlinked = txn.unlink_or_remove(parent, name, now, &|a| removable_now(a, &st.open, step))?;
        touch_dir(&txn, parent, now)?;
        name_removed(&unlinked, &st.open, &mut st.dirty, &mut st.nameless);
        txn.commit()
    }

    /// Renames `name` in `parent` to `new_name` in `new_parent`, by POSIX rules.
    pub fn rename(
        &self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<()> {
        let mut st = self.lock();
        let now = now_ns();
        let st = &mut *st;
        let txn = st.catalog.write()?;
        let src = txn
            .lookup(parent, name)?
            .ok_or_else(|| Error::NotFound(lossy(name)))?;
        let src_attr = txn.expect_inode(src)?;
        if txn.expect_inode(new_parent)?.kind != FileKind::Dir {
            return Err(Error::NotDir(lossy(new_name)));
        }
        let dst = txn.lookup(new_parent, new_name)?;
        // A folder may not move below itself.
        if src_attr.kind == FileKind::Dir && is_within(&txn, new_parent, src)? {
            return Err(Error::InvalidArgument("cannot move a folder into itself".into()));
        }
        match (mode, dst) {
            (RenameMode::Exchange, None) => return Err(Error::NotFound(lossy(new_name))),
            (RenameMode::Exchange, Some(dst)) => {
                let dst_attr = txn.expect_inode(dst)?;
                if dst_attr.kind == FileKind::Dir && is_within(&txn, parent, dst)? {
                    return Err(Error::InvalidArgument("cannot move a folder into itself".into()));
                }
                txn.exchange(parent, name, new_parent, new_name)?;
                for id in [src, dst] {
                    let mut a = txn.expect_inode(id)?;
                    a.ctime_ns = now;
                    txn.set_inode(&a)?;
                }
            }
            (RenameMode::NoReplace, Some(_)) => return Err(Error::Exists(lossy(new_name))),
            (_, Some(dst)) if dst == src => return Ok(()),
            (_, dst) => {
                if let Some(dst) = dst {
                    let dst_attr = txn.expect_inode(dst)?;
                    match (src_attr.kind == FileKind::Dir, dst_attr.kind == FileKind::Dir) {
                        (true, false) => return Err(Error::NotDir(lossy(new_name))),
                        (false, true) => return Err(Error::IsDir(lossy(new_name))),
                        (true, true) if txn.has_entries(dst)? => {
                            return Err(Error::NotEmpty(lossy(new_name)))
                        }
                        _ => {}
                    }
                }
                let step = self.removal_step();
                let removable = |a: &InodeAttr| removable_now(a, &st.open, step);
                if let Some(replaced) =
                    txn.rename_over((parent, name), (new_parent, new_name), now, &removable)?
                {
                    name_removed(&replaced, &st.open, &mut st.dirty, &mut st.nameless);
                }
                let mut a = txn.expect_inode(src)?;
                a.ctime_ns = now;
                txn.set_inode(&a)?;
            }
        }
        touch_dir(&txn, parent, now)?;
        if new_parent != parent {
            touch_dir(&txn, new_parent, now)?;
        }
        txn.commit()
    }

    /// Changes attributes. A size change cuts or extends the file (extending adds a hole).
    pub fn setattr(&self, ino: InodeId, set: &SetAttr) -> Result<InodeAttr> {
        self.setattr_as(ino, set, &Writer::Privileged)
    }

    /// `setattr` by `writer`: a size change may cost the file its set-user-ID and
    /// set-group-ID bits (see `privileges`).
    pub fn setattr_as(&self, ino: InodeId, set: &SetAttr, writer: &Writer<'_>) -> Result<InodeAttr> {
        let mut st = self.lock();
        let now = now_ns();
        // A size change cuts or extends what buffered writes wrote, so they land first.
        // Other changes leave them buffered (no commit, no sync: `cp -p` sets times and
        // owners right after writing); the run keeps the times set here for its commit.
        if set.size.is_some() && st.dirty.contains_key(&ino) {
            self.flush_locked(&mut st, Some(ino))?;
        }
        let txn = st.catalog.write()?;
        let mut attr = txn.expect_inode(ino)?;
        if (set.uid.is_some() || set.gid.is_some()) && set.mode.is_none() && attr.kind != FileKind::Dir {
            attr.mode = privileges::mode_after_chown(attr.mode, attr.gid, writer);
        }
        if let Some(mode) = set.mode {
            attr.mode = mode & 0o7777;
        }
        if let Some(uid) = set.uid {
            attr.uid = uid;
        }
        if let Some(gid) = set.gid {
            attr.gid = gid;
        }
        if let Some(size) = set.size {
            if attr.kind == FileKind::Dir {
                return Err(Error::IsDir(format!("inode {ino}")));
            }
            if size < attr.size {
                txn.set_extents(ino, size, u64::MAX, &[])?;
            }
            attr.size = size;
            attr.mtime_ns = now;
            attr.mode = privileges::mode_after_change(attr.mode, attr.gid, writer);
        }
        if let Some(t) = set.atime {
            attr.atime_ns = resolve(t);
        }
        if let Some(t) = set.mtime {
            attr.mtime_ns = resolve(t);
        }
        attr.ctime_ns = now;
        txn.set_inode(&attr)?;
        txn.commit()?;
        if let Some(d) = st.dirty.get_mut(&ino) {
            d.attributes_changed(set.mtime.map(resolve), now);
        }
        // What was just written, with the buffered writes laid over it (as `attr_of`
        // would read it back).
        st.apply(&mut attr);
        Ok(attr)
    }

    /// What a name in `parent` that points at inode `id` answers when the inode cannot
    /// be read: `NotFound` there means a damaged catalog (EIO, never ENOENT), logged
    /// once per name with what `snapfs check --repair` would do about it.
    fn dangling(&self, e: Error, parent: InodeId, name: &[u8], id: InodeId) -> Error {
        if !matches!(e, Error::NotFound(_)) {
            return e;
        }
        let what = format!(
            "name {:?} in folder inode {parent} points at inode {id}, which does not exist",
            String::from_utf8_lossy(name)
        );
        let mut seen = self.reported_dangling.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() < 10_000 && seen.insert((parent, name.to_vec())) {
            log::error!("{what}: the catalog is damaged; `snapfs check` lists such names, `snapfs check --repair` (unmounted) removes them");
        }
        Error::CorruptCatalog(what)
    }

    /// Notes an open handle on `ino` (an unlinked file lives until its last release).
    pub fn open(&self, ino: InodeId) -> Result<InodeAttr> {
        let mut st = self.lock();
        let attr = attr_of(&st, ino)?;
        *st.open.entry(ino).or_insert(0) += 1;
        Ok(attr)
    }

    /// Drops an open handle; the last release of a file that no name reaches any
    /// more (unlinked, or taken away by a rollback while open) removes it.
    pub fn release(&self, ino: InodeId) -> Result<()> {
        let mut st = self.lock();
        let count = st.open.get(&ino).copied().unwrap_or(0);
        if count > 1 {
            st.open.insert(ino, count - 1);
            return Ok(());
        }
        st.open.remove(&ino);
        self.lock_read_ends().remove(&ino);
        if !st.nameless.maybe.remove(&ino) {
            return Ok(());
        }
        // The catalog decides: a rollback, a link or a rename may have given the file
        // a name again since it was unlinked.
        let live = st.catalog.live();
        let unnamed = match st.catalog.inode(live, ino)? {
            Some(attr) => attr.kind != FileKind::Dir && st.catalog.names_of(live, ino)?.is_empty(),
            None => false,
        };
        if unnamed {
            st.dirty.remove(&ino);
            let txn = st.catalog.write()?;
            txn.remove_inode(ino)?;
            txn.commit()?;
        }
        Ok(())
    }

    /// Reads up to `len` bytes of `ino` at `offset`, buffered writes included (laid
    /// over the committed bytes, without committing them).
    pub fn read(&self, ino: InodeId, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = offset.saturating_add(len as u64);
        let ahead = self.read_ahead_range(ino, offset, end);
        // A file with buffered writes is read under the lock (its runs live there).
        let unlocked = self.unlocked(|cat, live, quiet| {
            if quiet.buffered(ino).is_some() || quiet.inode_changed(ino) {
                return Ok(None);
            }
            plan_read(cat, live, ino, offset, end, ahead).map(Some)
        });
        let planned = match unlocked.transpose()? {
            Some(planned) => planned,
            None => self.plan_buffered_read(ino, offset, end, ahead)?,
        };
        let PlannedRead {
            attr,
            extents,
            tail,
            later,
        } = planned;
        if attr.kind == FileKind::Dir {
            return Err(Error::IsDir(format!("inode {ino}")));
        }
        // This read's own chunks after its first go to the loaders too, so that a
        // large read (the kernel asks for up to 1 MiB) loads them in parallel while
        // this thread loads the first; then the read-ahead.
        let own = extents.iter().skip(1).map(|(e, at)| (e.chunk, *at));
        self.prefetcher.prefetch(
            &self.cache,
            own.chain(
                later
                    .iter()
                    .filter(|(e, _)| e.end() > end)
                    .map(|(e, at)| (e.chunk, *at)),
            ),
        );
        let mut out = read::read_extents(&*self.store, &self.cache, &attr, &extents, offset, len)?;
        if let Some((tail_offset, tail)) = tail.filter(|(_, t)| !t.is_empty()) {
            let from = (tail_offset - offset) as usize;
            out.get_mut(from..from + tail.len())
                .ok_or_else(|| Error::CorruptCatalog(format!("buffered tail of inode {ino} past its size")))?
                .copy_from_slice(&tail);
        }
        Ok(out)
    }

    /// `PlannedRead` of `offset..end` of `ino` under the core's lock, with its buffered
    /// writes laid over the catalog's extents. A buffered chunk the read needs may
    /// still be with the writer threads (it has no place yet): the read then waits
    /// for them without the lock and plans again, so it never waits for the writes
    /// of other files, nor holds the lock while it waits. After `PLAN_TRIES` such
    /// rounds (its own file written to all along), it waits under the lock.
    fn plan_buffered_read(
        &self,
        ino: InodeId,
        offset: u64,
        end: u64,
        ahead: Option<(u64, u64)>,
    ) -> Result<PlannedRead> {
        const PLAN_TRIES: usize = 3;
        let mut tries = 0;
        loop {
            tries += 1;
            let mut st = self.lock();
            let wait = tries >= PLAN_TRIES;
            let view = match write::buffered_view(&mut st, ino, offset, end, wait)? {
                write::BufferedRead::View(view) => view,
                write::BufferedRead::NotBuffered => {
                    return plan_read(&st.catalog, st.catalog.live(), ino, offset, end, ahead)
                }
                write::BufferedRead::AfterWriters => {
                    drop(st);
                    if let Some(backlog) = &self.backlog {
                        backlog.wait_for_queued();
                    }
                    continue;
                }
            };
            let attr = attr_of(&st, ino)?;
            let later = match ahead {
                Some((from, to)) => {
                    read::placed(st.catalog.placed_extents(st.catalog.live(), ino, from, to)?)?
                }
                None => Vec::new(),
            };
            return Ok(PlannedRead {
                attr,
                extents: write::locate(&st, view.extents)?,
                tail: Some((view.tail_offset, view.tail)),
                later,
            });
        }
    }

    /// Notes a read of `ino` over `offset..end` and returns the range to read ahead,
    /// if any: a sequential reader gets the next `readahead_bytes` loaded in the
    /// background, asked for in steps of half that, so most reads query only their
    /// own range.
    fn read_ahead_range(&self, ino: InodeId, offset: u64, end: u64) -> Option<(u64, u64)> {
        let mut ends = self.lock_read_ends();
        let last = ends.get(&ino).copied();
        let sequential = last.is_some_and(|p| offset.abs_diff(p.end) <= SEQUENTIAL_SLACK);
        let mut position = ReadPosition {
            end: end.max(last.map_or(0, |p| p.end)),
            prefetched_to: last.map_or(0, |p| p.prefetched_to),
        };
        let ahead = self.options.readahead_bytes;
        let mut range = None;
        if sequential && position.prefetched_to < end.saturating_add(ahead / 2) {
            let to = end.saturating_add(ahead);
            range = Some((position.prefetched_to.max(end), to));
            position.prefetched_to = to;
        }
        ends.insert(ino, position);
        range
    }

    fn lock_read_ends(&self) -> MutexGuard<'_, HashMap<InodeId, ReadPosition>> {
        // One insert or remove at a time: a poisoned lock leaves a whole map.
        self.read_ends.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `data` at `offset` into `ino` as a privileged writer. Buffered: durable
    /// after `fsync`, visible to reads at once.
    pub fn write(&self, ino: InodeId, offset: u64, data: &[u8]) -> Result<usize> {
        self.write_as(ino, offset, data, &Writer::Privileged)
    }

    /// `write` by `writer`, which may cost the file its set-user-ID and set-group-ID
    /// bits (see `privileges`).
    pub fn write_as(&self, ino: InodeId, offset: u64, data: &[u8], writer: &Writer<'_>) -> Result<usize> {
        self.check_space(data.len() as u64)?;
        // Wait for the writers to make room for this write's chunks (about one per
        // average chunk size) before taking the lock: a full queue would otherwise
        // block inside the lock, and every other request with it (`ls` during a big
        // copy). The queue's own bound still holds if another write takes the room.
        if let Some(backlog) = &self.backlog {
            let chunks = data.len() / self.settings.chunker.avg_size.max(1) as usize + 1;
            backlog.wait_below(WRITER_QUEUE.saturating_sub(chunks));
        }
        // From locating the bytes a random write reads to reading them (without the
        // lock): gc waits for this.
        let _in_flight = self.reads.enter();
        let mut st = self.lock();
        drop_privileges(&mut st, ino, writer)?;
        if let Some(mut st) = self.write_unlocked(st, ino, offset, data)? {
            write::write(&mut st, ino, offset, data)?;
        }
        self.chunks_written
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(data.len())
    }

    /// Writes `data` at `offset` of `ino` with the costly part (reading the bytes
    /// around it, cutting, hashing) done without the core's lock, `st`, when it can
    /// (see `write::unlocked`); returns the lock, with nothing written, when the
    /// caller must write under it.
    fn write_unlocked<'a>(
        &'a self,
        mut st: published::Locked<'a>,
        ino: InodeId,
        offset: u64,
        data: &[u8],
    ) -> Result<Option<published::Locked<'a>>> {
        if let Some(append) = write::begin_append(&st, ino, offset, data.len()) {
            drop(st);
            let cut = append.cut(data);
            let mut st = self.lock();
            return Ok((!write::finish_append(&mut st, cut)?).then_some(st));
        }
        let (mut waited, mut committed) = (false, false);
        loop {
            match write::begin_rewrite(&mut st, ino, offset, data)? {
                write::Rewriting::Planned(plan) => {
                    drop(st);
                    let cut = plan.cut(&*self.store, data)?;
                    let mut st = self.lock();
                    return Ok((!write::finish_rewrite(&mut st, cut)?).then_some(st));
                }
                write::Rewriting::AfterWriters if !waited => {
                    drop(st);
                    if let Some(backlog) = &self.backlog {
                        backlog.wait_for_queued();
                    }
                    waited = true;
                    st = self.lock();
                }
                write::Rewriting::CommitFirst if !committed => {
                    drop(st);
                    self.commit_buffered(Some(ino))?;
                    committed = true;
                    st = self.lock();
                }
                _ => return Ok(Some(st)),
            }
        }
    }

    /// Commits buffered writes of `ino` (or of every file) in one transaction.
    pub fn flush(&self, ino: Option<InodeId>) -> Result<()> {
        let mut st = self.lock();
        self.flush_locked(&mut st, ino)
    }

    /// Commits every buffered write and the metadata batch (not durably: that is
    /// `fsync`), so that other processes reading the catalog see them.
    pub fn commit(&self) -> Result<()> {
        self.commit_buffered(None)?;
        self.lock().catalog.commit_batch()
    }

    /// Commits the buffered writes of `ino` (or of every file) as they stand when it
    /// is called, holding the core's lock only for the catalog's part: their runs are
    /// sealed and marked under it, the chunk writers waited for and the store synced
    /// without it, and the runs written into the catalog under it again (see
    /// `write::begin_commit`). Reads and writes go on meanwhile; writes made since
    /// the start stay buffered for the next commit.
    fn commit_buffered(&self, ino: Option<InodeId>) -> Result<()> {
        let mut last = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        *last += 1;
        let Some(mut sealing) = write::begin_commit(&self.lock(), ino, *last) else {
            return Ok(());
        };
        let mut started = loop {
            // Sealing reads back the runs' last chunks, which the writer threads may
            // still have: wait for them here, not under the lock.
            if let Some(backlog) = &self.backlog {
                backlog.wait_for_queued();
            }
            // The runs' last chunks are cut without the lock.
            let ahead = write::begin_seals(&self.lock(), &sealing);
            let cut = ahead.into_iter().map(|a| a.cut()).collect();
            // (A `let` of its own, as below.)
            let step = write::seal_step(&mut self.lock(), &mut sealing, cut);
            match step {
                Ok(Some(started)) => break started,
                Ok(None) => self.let_requests_in(),
                Err(e) => return Err(self.commit_failed(e)),
            }
        };
        let mut durable = Some(started.make_durable(self.backlog.as_ref(), &*self.store));
        loop {
            // (A `let` of its own: the lock guard of a `match` scrutinee would live
            // on through the arms, `let_requests_in` among them.)
            let step = write::finish_commit(&mut self.lock(), &mut started, durable.take());
            match step {
                Ok(true) => self.let_requests_in(),
                Ok(false) => return Ok(()),
                Err(e) => return Err(self.commit_failed(e)),
            }
        }
    }

    /// Notes that a commit failed with `e` after chunks may have reached the mirrors
    /// (see `take_commit_failed`), and returns `e`.
    fn commit_failed(&self, e: Error) -> Error {
        self.commit_failed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        e
    }

    /// Runs the read-only `f` on a read connection of its own, inside one read
    /// transaction, after committing every buffered write (so `f` sees everything the
    /// mount has been given). The core's lock is held for that commit only, never
    /// while `f` runs: a long report (forget's dry run on a big repository) does not
    /// hold up the mount.
    pub fn with_read_catalog<T>(&self, f: impl FnOnce(&Catalog) -> Result<T>) -> Result<T> {
        self.commit()?;
        self.readers.with_consistent(f)
    }

    /// Bytes of a file that one step of `finish_removals` drops.
    fn removal_step(&self) -> u64 {
        REMOVAL_STEP_EXTENTS * self.settings.chunker.avg_size.max(1) as u64
    }

    /// Finishes removing the big files that lost their last name (see
    /// `Nameless::removing`): drops their extents from the end, one step per hold of
    /// the lock, each committed at once so readers go on without the lock between
    /// steps. A file that has a name or a handle again (a rollback brought it back)
    /// is left alone. gc calls it first, so that the chunks become garbage.
    pub fn finish_removals(&self) -> Result<()> {
        let step = self.removal_step();
        loop {
            let mut st = self.lock();
            let Some(&id) = st.nameless.removing.last() else {
                return Ok(());
            };
            let st = &mut *st;
            let txn = st.catalog.write()?;
            let wanted = match txn.inode(id)? {
                Some(attr) if st.open.get(&id).copied().unwrap_or(0) == 0 => {
                    txn.names_of(id)?.is_empty().then_some(attr)
                }
                _ => None,
            };
            match wanted {
                Some(mut attr) if attr.size > step => {
                    attr.size -= step;
                    txn.set_extents(id, attr.size, u64::MAX, &[])?;
                    txn.set_inode(&attr)?;
                }
                Some(_) => {
                    txn.remove_inode(id)?;
                    st.nameless.removing.pop();
                }
                None => {
                    st.nameless.removing.pop();
                }
            }
            txn.commit()?;
            st.catalog.commit_batch()?;
        }
    }

    /// Commits every buffered write once one file's are older than
    /// `FsOptions::flush_after` or number `COMMIT_EXTENTS` extents, then finishes
    /// removing deleted big files (the flusher's tick).
    pub fn flush_old(&self) -> Result<()> {
        let due = self
            .lock()
            .dirty
            .files()
            .any(|d| d.age() >= self.options.flush_after || d.extent_count() >= COMMIT_EXTENTS);
        if due {
            self.commit_buffered(None)?;
        }
        // The batch of metadata changes since the last tick.
        self.lock().catalog.commit_batch()?;
        self.finish_removals()
    }

    /// Makes `ino`'s data and metadata (and everything committed before) durable.
    /// The catalog's sync runs after the lock is let go (it covers every commit
    /// before it, the flush's among them), so requests wait only for the commit.
    pub fn fsync(&self, ino: Option<InodeId>) -> Result<()> {
        self.commit_buffered(ino)?;
        let wal = {
            let mut st = self.lock();
            st.catalog.commit_batch()?;
            st.catalog.wal_sync()
        };
        wal.sync()
    }

    /// The lock, taken after the chunk writers have written what was queued and the
    /// mirrors are synced, both without it, when chunks were written since the last
    /// time: a commit must wait for the writers and sync the mirrors under the lock
    /// before it commits, and then finds little left to wait for or write back, so
    /// other requests wait that much less (DESIGN §6; before the writers were waited
    /// for here, a commit during a 1 GiB copy held the lock 50-240 ms). A failure
    /// here is handed to the sink, so the commit fails as if its own sync had failed
    /// (a writeback error is reported once).
    #[track_caller]
    fn lock_after_presync(&self) -> published::Locked<'_> {
        let failed = if self
            .chunks_written
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            if let Some(backlog) = &self.backlog {
                backlog.wait_for_queued();
            }
            self.store.sync().err()
        } else {
            None
        };
        let mut st = self.lock();
        if let Some(e) = failed {
            st.sink.sync_failed(e);
        }
        st
    }

    fn flush_locked(&self, st: &mut State, ino: Option<InodeId>) -> Result<()> {
        write::flush(st, ino).map_err(|e| self.commit_failed(e))
    }

    /// True (once) when a failed commit may have left unknown objects in the mirrors.
    pub fn take_commit_failed(&self) -> bool {
        self.commit_failed
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Value of xattr `name` of `ino`.
    pub fn getxattr(&self, ino: InodeId, name: &[u8]) -> Result<Vec<u8>> {
        let found = match self.unlocked(|cat, live, quiet| {
            if quiet.xattrs_changed(ino) {
                return Ok(None);
            }
            cat.xattr(live, ino, name).map(Some)
        }) {
            Some(found) => found?,
            None => {
                let st = self.lock();
                st.catalog.xattr(st.catalog.live(), ino, name)?
            }
        };
        found.ok_or(Error::NoXattr)
    }

    /// Names of every xattr of `ino`.
    pub fn listxattr(&self, ino: InodeId) -> Result<Vec<Vec<u8>>> {
        let all = match self.unlocked(|cat, live, quiet| {
            if quiet.xattrs_changed(ino) {
                return Ok(None);
            }
            cat.xattrs(live, ino).map(Some)
        }) {
            Some(all) => all?,
            None => {
                let st = self.lock();
                st.catalog.xattrs(st.catalog.live(), ino)?
            }
        };
        Ok(all.into_iter().map(|(n, _)| n).collect())
    }

    /// Sets xattr `name`; `create_only` / `replace_only` follow XATTR_CREATE / XATTR_REPLACE.
    pub fn setxattr(
        &self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        create_only: bool,
        replace_only: bool,
    ) -> Result<()> {
        // POSIX ACLs are not supported: stored as plain xattrs they would not act on
        // permissions (and `cp -a` would carry modes only in them). EOPNOTSUPP makes
        // cp, tar and rsync fall back to chmod.
        if name.starts_with(b"system.posix_acl_") {
            return Err(Error::Unsupported("POSIX ACLs".into()));
        }
        let mut st = self.lock();
        let txn = st.catalog.write()?;
        let exists = txn.xattr(ino, name)?.is_some();
        if create_only && exists {
            return Err(Error::Exists(lossy(name)));
        }
        if replace_only && !exists {
            return Err(Error::NoXattr);
        }
        txn.set_xattr(ino, name, value)?;
        let mut attr = txn.expect_inode(ino)?;
        attr.ctime_ns = now_ns();
        txn.set_inode(&attr)?;
        txn.commit()
    }

    /// Removes xattr `name`.
    pub fn removexattr(&self, ino: InodeId, name: &[u8]) -> Result<()> {
        let mut st = self.lock();
        let txn = st.catalog.write()?;
        txn.remove_xattr(ino, name)?;
        let mut attr = txn.expect_inode(ino)?;
        attr.ctime_ns = now_ns();
        txn.set_inode(&attr)?;
        txn.commit()
    }

    /// ENOSPC when the fullest mirror's filesystem cannot take `incoming` more bytes
    /// plus a reserve of two maximum chunks (so the writer hears of a full disk at
    /// write time, not only at the next commit). The free space is re-read every
    /// 100 ms at most.
    fn check_space(&self, incoming: u64) -> Result<()> {
        let reserve = 2 * self.settings.chunker.max_size as u64 + (1 << 20);
        let mut cached = self.free_space.lock().unwrap_or_else(|p| p.into_inner());
        // A fresh reading when the last is old, or when it would say no (space may
        // have been freed since, e.g. by gc).
        if cached.0.elapsed() > Duration::from_millis(100) || cached.1 < reserve + incoming {
            let free = self
                .mirror_paths()
                .iter()
                .filter_map(|p| rustix::fs::statvfs(p).ok())
                .map(|s| s.f_bavail * s.f_frsize)
                .min()
                .unwrap_or(u64::MAX);
            *cached = (std::time::Instant::now(), free);
        }
        if cached.1 < reserve + incoming {
            return Err(Error::no_space("writing to a mirror"));
        }
        // Account for what this write will take until the next reading.
        cached.1 -= incoming;
        Ok(())
    }

    /// Takes a snapshot of the live tree, buffered writes included. O(1) in the size of
    /// the tree; durable on return.
    pub fn snapshot(&self, label: Option<&str>) -> Result<crate::catalog::Generation> {
        let started = std::time::Instant::now();
        // Most of the buffered writes are committed without the lock; what comes in
        // meanwhile is committed under it, right before the snapshot.
        self.commit_buffered(None)?;
        let (taken, wal, locked, flushed, frozen) = {
            let mut st = self.lock();
            let locked = started.elapsed();
            self.flush_locked(&mut st, None)?;
            let flushed = started.elapsed();
            let taken = st.catalog.snapshot_committed(label, now_ns())?;
            (taken, st.catalog.wal_sync(), locked, flushed, started.elapsed())
        };
        wal.sync()?;
        log::trace!(
            "snapshot {} taken in {:?} (from the start: lock taken {locked:?}, buffered writes \
             committed {flushed:?}, frozen {frozen:?})",
            taken.name.as_deref().unwrap_or_default(),
            started.elapsed()
        );
        Ok(taken)
    }

    /// Takes a snapshot only when the live tree may have changed since the last one;
    /// `None` when it certainly did not.
    pub fn snapshot_if_changed(&self, label: Option<&str>) -> Result<Option<crate::catalog::Generation>> {
        self.commit_buffered(None)?;
        let (taken, wal) = {
            let mut st = self.lock();
            self.flush_locked(&mut st, None)?;
            if !st.catalog.live_touched() {
                return Ok(None);
            }
            let taken = st.catalog.snapshot_committed(label, now_ns())?;
            (taken, st.catalog.wal_sync())
        };
        wal.sync()?;
        Ok(Some(taken))
    }

    /// Runs `f` on the catalog and the store with every buffered write committed
    /// first, holding the lock so no request interleaves (snapshot operations, gc).
    /// Requests already waiting for the lock get it first (`let_requests_in`): a
    /// repository operation is a series of short `with_catalog` steps, and requests
    /// wait for one step at most, not for the whole operation.
    /// `f` also gets the live files held open, which an operation that removes names
    /// (rollback) must keep as nameless files until their last release. Afterwards
    /// the core's own state is reconciled with whatever `f` changed: read positions
    /// are dropped and every open file is checked against the catalog at its last
    /// release.
    pub fn with_catalog<T>(
        &self,
        f: impl FnOnce(&mut Catalog, &dyn Redundancy, &[InodeId]) -> Result<T>,
    ) -> Result<T> {
        // Repository operations run in many short steps; requests go first. Buffered
        // writes are committed mostly without the lock first (a failure is reported
        // by the tries below).
        if let Err(e) = self.commit_buffered(None) {
            log::debug!("committing buffered writes before a repository operation: {e}");
        }
        self.let_requests_in();
        let mut st = self.lock_after_presync();
        // A commit that fails (a full disk) drops its runs and reports it at fsync;
        // it must not keep forget and gc from freeing space: try once more, now
        // with nothing pending, and go on.
        if self.flush_locked(&mut st, None).is_err() {
            self.flush_locked(&mut st, None)?;
        }
        // With nothing left buffered or in a batch, readers go on without the lock
        // while `f` runs (they see its transactions as they commit).
        st.catalog.commit_batch()?;
        st.publish();
        self.lock_read_ends().clear();
        let open: Vec<InodeId> = st.open.keys().copied().collect();
        let result = f(&mut st.catalog, &*self.store, &open);
        st.nameless.maybe.extend(open);
        result
    }

    /// Space on the fullest mirror's filesystem.
    pub fn statfs(&self) -> Result<StatFs> {
        let mut best: Option<StatFs> = None;
        for path in &self.mirror_paths() {
            let Ok(s) = rustix::fs::statvfs(path) else {
                continue;
            };
            let bs = s.f_frsize.max(1);
            let candidate = StatFs {
                block_size: BLOCK_SIZE as u32,
                blocks: s.f_blocks * bs / BLOCK_SIZE,
                blocks_free: s.f_bfree * bs / BLOCK_SIZE,
                blocks_available: s.f_bavail * bs / BLOCK_SIZE,
                files: s.f_files,
                files_free: s.f_ffree,
            };
            if best.is_none_or(|b| candidate.blocks_available < b.blocks_available) {
                best = Some(candidate);
            }
        }
        best.ok_or_else(|| Error::NoMirror {
            reason: "no mirror folder can be read".into(),
        })
    }

    /// Returns once every read that started before the call has finished fetching
    /// its chunks: gc calls it between condemning chunks and deleting them.
    pub fn wait_for_older_reads(&self) {
        self.reads.wait_for_older();
    }

    /// The chunk store.
    pub fn store(&self) -> Arc<dyn Redundancy> {
        self.store.clone()
    }

    /// The mirrors' health as this mount sees it (lost ones with the reason).
    pub fn mirror_status(&self) -> Vec<crate::store::MirrorStatus> {
        self.store.status()
    }

    /// The mirror folders, as the catalog records them.
    pub fn mirror_paths(&self) -> Vec<std::path::PathBuf> {
        self.mirror_paths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the mirror folders again from the catalog (after `mirror add` or
    /// `mirror remove` through the mount).
    pub fn reload_mirror_paths(&self) -> Result<()> {
        let paths = self.with_catalog(|cat, _, _| cat.mirrors())?;
        *self.mirror_paths.lock().unwrap_or_else(|p| p.into_inner()) =
            paths.into_iter().map(|m| m.path).collect();
        Ok(())
    }

    /// The repository settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// The attributes of `ino`, with buffered writes counted.
fn attr_of(st: &State, ino: InodeId) -> Result<InodeAttr> {
    live_attr(&st.catalog, st.catalog.live(), st, ino)
}

/// The attributes of live inode `ino` as `overlay` shows them over `cat` at live
/// generation `live`: what the open batch left them, else the committed ones, with
/// the buffered writes laid over.
fn live_attr(cat: &Catalog, live: GenId, overlay: &dyn AttrOverlay, ino: InodeId) -> Result<InodeAttr> {
    let mut attr = match overlay.attrs_left(ino) {
        Some(left) => left.ok_or_else(|| Error::NotFound(format!("inode {ino}")))?,
        None => committed_attr(cat, live, ino)?,
    };
    overlay.apply(&mut attr);
    Ok(attr)
}

/// The committed attributes of live inode `ino` (generation `live` of `cat`).
fn committed_attr(cat: &Catalog, live: GenId, ino: InodeId) -> Result<InodeAttr> {
    cat.inode(live, ino)?
        .ok_or_else(|| Error::NotFound(format!("inode {ino}")))
}

/// What a read of a live file fetches: its attributes, the extents of the range
/// read, the buffered tail laid over them (if any) and the extents to read ahead.
struct PlannedRead {
    attr: InodeAttr,
    extents: Vec<read::Placed>,
    tail: Option<(u64, Vec<u8>)>,
    later: Vec<read::Placed>,
}

/// `PlannedRead` of `offset..end` of committed `ino`, with read-ahead over `ahead`.
fn plan_read(
    cat: &Catalog,
    live: GenId,
    ino: InodeId,
    offset: u64,
    end: u64,
    ahead: Option<(u64, u64)>,
) -> Result<PlannedRead> {
    let attr = committed_attr(cat, live, ino)?;
    if attr.kind == FileKind::Dir {
        return Err(Error::IsDir(format!("inode {ino}")));
    }
    let extents = read::placed(cat.placed_extents(live, ino, offset, end)?)?;
    let later = match ahead {
        Some((from, to)) => read::placed(cat.placed_extents(live, ino, from, to)?)?,
        None => Vec::new(),
    };
    Ok(PlannedRead {
        attr,
        extents,
        tail: None,
        later,
    })
}

/// Whether a file or folder left with no name (`after`: its attributes after the
/// unlink) goes at once, with its content: not while a handle is open on it (it
/// lives until the last release), and not a file bigger than `removal_step`, whose
/// extents `finish_removals` drops a step at a time.
fn removable_now(after: &InodeAttr, open: &HashMap<InodeId, u32>, removal_step: u64) -> bool {
    let open = open.get(&after.id).copied().unwrap_or(0) > 0;
    !open && (after.kind == FileKind::Dir || after.size <= removal_step)
}

/// The bookkeeping after `unlinked`: a removed file's buffered writes go; one left
/// with no name waits for its last release (`Nameless::maybe`) or, a big file with
/// none open, for `finish_removals`.
fn name_removed(
    unlinked: &Unlinked,
    open: &HashMap<InodeId, u32>,
    dirty: &mut DirtyFiles,
    nameless: &mut Nameless,
) {
    let after = &unlinked.attr;
    if unlinked.removed {
        dirty.remove(&after.id);
        return;
    }
    let gone = if after.kind == FileKind::Dir {
        after.nlink <= 1
    } else {
        after.nlink == 0
    };
    let open = open.get(&after.id).copied().unwrap_or(0) > 0;
    if gone && !open {
        dirty.remove(&after.id);
        nameless.removing.push(after.id);
    } else if gone {
        nameless.maybe.insert(after.id);
    }
}

/// Clears what `writer` changing the data of `ino` costs it (see `privileges`): one
/// attribute read when the writer is unprivileged, a commit only when a bit goes.
fn drop_privileges(st: &mut State, ino: InodeId, writer: &Writer<'_>) -> Result<()> {
    if matches!(writer, Writer::Privileged) {
        return Ok(());
    }
    let attr = attr_of(st, ino)?;
    let mode = privileges::mode_after_change(attr.mode, attr.gid, writer);
    if mode == attr.mode {
        return Ok(());
    }
    let now = now_ns();
    let txn = st.catalog.write()?;
    let mut stored = txn.expect_inode(ino)?;
    stored.mode = mode;
    stored.ctime_ns = now;
    txn.set_inode(&stored)?;
    txn.commit()?;
    if let Some(d) = st.dirty.get_mut(&ino) {
        d.attributes_changed(None, now);
    }
    Ok(())
}

/// Sets a folder's mtime and ctime to `now` (its entries changed).
fn touch_dir(txn: &crate::catalog::Txn<'_>, dir: InodeId, now: i64) -> Result<()> {
    let mut attr = txn.expect_inode(dir)?;
    attr.mtime_ns = now;
    attr.ctime_ns = now;
    txn.set_inode(&attr)
}

/// True when folder `dir` is `ancestor` or lies below it.
fn is_within(txn: &crate::catalog::Txn<'_>, mut dir: InodeId, ancestor: InodeId) -> Result<bool> {
    for _ in 0..100_000 {
        if dir == ancestor {
            return Ok(true);
        }
        if dir == InodeId::ROOT {
            return Ok(false);
        }
        match txn.parent_of(dir)? {
            Some(p) => dir = p,
            None => return Ok(false),
        }
    }
    Err(Error::CorruptCatalog(
        "folder chain does not reach the root".into(),
    ))
}

#[cfg(test)]
mod tests;
