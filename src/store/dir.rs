//! `DirStore`: one mirror folder on a local filesystem.
//!
//! Owns the mirror folder layout:
//!
//! ```text
//! MIRROR/
//!   MIRROR            "snapfs-mirror 1\nrepository <RepoId hex>\nmirror <n>\n"
//!   objects/ab/<64 hex digits of the ChunkId>     one frame per file (ab = first 2 digits)
//!   objects/ab/.tmp-<hex>-<pid>-<counter>         a put in progress (ignored by list)
//! ```
//!
//! A put writes a temp file and renames it over the final name, so a reader sees the old
//! or the new copy, never a torn one. Durability is batched, one sync per commit, never
//! an fsync per put: on a filesystem whose `syncfs` is trusted (ext4, xfs, btrfs …)
//! `sync` is one `syncfs`; everywhere else (FUSE, network, stacked filesystems) it
//! fsyncs the chunk files written since the last sync and the folders they were
//! renamed into (see `store::sync` for the choice). Error numbers are kept (an
//! `ENOSPC` stays `ENOSPC`) and every error names the mirror and what was being done.
//!
//! Knows nothing of files or inodes; depends only on `types`, `error`, `store::sync`
//! and the trait.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use rustix::fs::{Mode, OFlags};

use crate::error::{Error, Result};
use crate::store::sync::{self, SyncChoice, SyncMode};
use crate::store::{direct, ObjectStore};
use crate::types::{ChunkId, MirrorId, RepoId};

/// Name of the identity file at the top of a mirror folder.
pub const IDENTITY_FILE: &str = "MIRROR";
/// Name of the folder that holds the chunk files.
pub const OBJECTS_DIR: &str = "objects";
/// The identity format version written by this code.
const IDENTITY_VERSION: u32 = 1;
/// Prefix of the temp names used while writing the identity file.
const IDENTITY_TMP_PREFIX: &str = ".MIRROR.tmp";
/// Prefix of the temp names used while writing a chunk file.
const CHUNK_TMP_PREFIX: &str = ".tmp-";

/// Makes temp names unique within this process (the pid makes them unique across).
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// At most this many threads fsync one sync's files at once (fsync mode). On this
/// machine's ext4, forced to fsync mode, 4 threads against 1 (alternating, 3 runs
/// each): 4 KiB random writes 1,471-1,482 against 1,182-1,272 writes/s, a 1 GiB
/// sequential write 177-198 against 167-190 MB/s. On a FUSE or network filesystem
/// each fsync is a round trip, which threads overlap further.
const SYNC_THREADS: usize = 4;

/// A sync with fewer files than this fsyncs them on the calling thread.
const FILES_PER_SYNC_THREAD: usize = 8;

/// A test's hook, run before each fsync with the path.
#[cfg(test)]
type FsyncHook = std::sync::Arc<dyn Fn(&Path) + Send + Sync>;

/// One mirror folder holding chunk frames as files.
pub struct DirStore {
    path: PathBuf,
    objects: PathBuf,
    repo: RepoId,
    mirror: MirrorId,
    sync: SyncChoice,
    /// What the next sync must fsync (fsync mode only; empty in syncfs mode).
    unsynced: Mutex<Unsynced>,
    /// Held by a sync in fsync mode for as long as it runs (see `fsync_each`).
    syncing: Mutex<()>,
    /// Runs before each fsync, for the tests of the fsync mode.
    #[cfg(test)]
    before_fsync: Mutex<Option<FsyncHook>>,
    /// Every path fsynced, in order, for the tests of the fsync mode.
    #[cfg(test)]
    fsynced: Mutex<Vec<PathBuf>>,
}

impl std::fmt::Debug for DirStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirStore")
            .field("path", &self.path)
            .field("mirror", &self.mirror)
            .field("sync", &self.sync)
            .finish_non_exhaustive()
    }
}

/// Chunk files written and folders changed since the last sync (fsync mode).
#[derive(Debug, Default)]
struct Unsynced {
    files: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
}

/// Reads the identity of the mirror folder at `path`.
/// `Ok(None)`: no `MIRROR` file (or no folder). Errors: `UnsupportedFormat` for an
/// identity of another format version, `NotAMirror` for an unreadable identity, `Io`.
pub fn read_identity(path: &Path) -> Result<Option<(RepoId, MirrorId)>> {
    let file = path.join(IDENTITY_FILE);
    let text = match fs::read(&file) {
        Ok(bytes) => bytes,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => {
            return Err(Error::io(
                format!("reading mirror identity {}", file.display()),
                e,
            ))
        }
    };
    let not_a_mirror = || Error::NotAMirror {
        path: path.to_path_buf(),
    };
    let text = String::from_utf8(text).map_err(|_| not_a_mirror())?;
    let mut lines = text.lines();
    let version: u32 = lines
        .next()
        .and_then(|l| l.strip_prefix("snapfs-mirror "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(not_a_mirror)?;
    if version != IDENTITY_VERSION {
        return Err(Error::UnsupportedFormat {
            what: format!("mirror identity {}", file.display()),
            found: version,
            supported: IDENTITY_VERSION,
        });
    }
    let repo: RepoId = lines
        .next()
        .and_then(|l| l.strip_prefix("repository "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(not_a_mirror)?;
    let mirror: u32 = lines
        .next()
        .and_then(|l| l.strip_prefix("mirror "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(not_a_mirror)?;
    Ok(Some((repo, MirrorId(mirror))))
}

fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// fsync of a folder, so that entries created or renamed in it are durable.
fn fsync_dir(path: &Path) -> io::Result<()> {
    fs::File::open(path)?.sync_all()
}

/// `create_dir_all`, then an fsync of the parent of every folder it created, deepest
/// first, so that the new folders are durable on return (on any filesystem: a new
/// folder's name is durable only once its parent is fsynced).
pub fn create_dir_all_durably(path: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(path);
    while let Some(p) = at.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(p);
        at = p.parent();
    }
    fs::create_dir_all(path)?;
    for created in missing {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

fn identity_text(repo: RepoId, mirror: MirrorId) -> String {
    format!("snapfs-mirror {IDENTITY_VERSION}\nrepository {repo}\nmirror {mirror}\n")
}

/// Makes `path` mirror `mirror` of repository `repo`: its identity file, durably. The
/// folder is created if missing; an existing empty folder is fine; a folder that
/// already is exactly this mirror is left as it is (so an interrupted claim can be
/// retried). Refusals change nothing on disk: `ForeignMirror` (another repository's
/// mirror), `Exists` (another mirror of this repository), `NotAMirror` (not empty, no
/// identity), `NotDir` (a file).
pub fn claim_folder(path: &Path, repo: RepoId, mirror: MirrorId) -> Result<()> {
    let mut stale_temps = Vec::new();
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_dir_all_durably(path).map_err(Error::io_with(format!(
                "creating mirror folder {}",
                path.display()
            )))?;
        }
        Err(e) => {
            return Err(Error::io(
                format!("inspecting mirror folder {}", path.display()),
                e,
            ))
        }
        Ok(meta) if !meta.is_dir() => return Err(Error::NotDir(path.display().to_string())),
        Ok(_) => match read_identity(path)? {
            // Already this mirror: the caller finishes what an interrupted create left.
            Some((r, m)) if r == repo && m == mirror => return Ok(()),
            Some((r, _)) if r != repo => {
                return Err(Error::ForeignMirror {
                    path: path.to_path_buf(),
                    other: r.to_string(),
                })
            }
            Some((_, m)) => {
                return Err(Error::Exists(format!(
                    "{} (mirror {m} of this repository)",
                    path.display()
                )))
            }
            None => {
                let entries = fs::read_dir(path).map_err(Error::io_with(format!(
                    "listing mirror folder {}",
                    path.display()
                )))?;
                for entry in entries {
                    let entry = entry.map_err(Error::io_with(format!(
                        "listing mirror folder {}",
                        path.display()
                    )))?;
                    // Leftovers of our own interrupted identity write do not count.
                    if entry
                        .file_name()
                        .to_string_lossy()
                        .starts_with(IDENTITY_TMP_PREFIX)
                    {
                        stale_temps.push(entry.path());
                    } else {
                        return Err(Error::NotAMirror {
                            path: path.to_path_buf(),
                        });
                    }
                }
            }
        },
    }
    // Identity first: a folder holding only our identity is recognised on retry.
    let tmp = path.join(format!("{IDENTITY_TMP_PREFIX}-{}", std::process::id()));
    let ctx = || format!("writing mirror identity in {}", path.display());
    let mut file = fs::File::create(&tmp).map_err(Error::io_with(ctx()))?;
    file.write_all(identity_text(repo, mirror).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(Error::io_with(ctx()))?;
    drop(file);
    fs::rename(&tmp, path.join(IDENTITY_FILE)).map_err(Error::io_with(ctx()))?;
    for stale in stale_temps {
        // Best effort: a leftover temp file is harmless.
        let _ = fs::remove_file(stale);
    }
    fsync_dir(path).map_err(Error::io_with(ctx()))
}

/// Checks that `path` is exactly mirror `mirror` of repository `repo`. Errors:
/// `ForeignMirror` (another repository), `UnsupportedFormat` (newer identity),
/// `MirrorUnusable` with the reason (folder or identity missing, another mirror
/// number, unreadable).
pub fn check_folder(path: &Path, repo: RepoId, mirror: MirrorId) -> Result<()> {
    let unusable = |reason: String| Error::MirrorUnusable {
        id: mirror,
        path: path.to_path_buf(),
        reason,
    };
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(unusable("it is not a folder".into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(unusable("the folder does not exist".into()))
        }
        Err(e) => return Err(unusable(e.to_string())),
    }
    match read_identity(path) {
        Ok(Some((r, m))) if r == repo && m == mirror => {}
        Ok(Some((r, _))) if r != repo => {
            return Err(Error::ForeignMirror {
                path: path.to_path_buf(),
                other: r.to_string(),
            })
        }
        Ok(Some((_, m))) => {
            return Err(unusable(format!(
                "it is mirror {m} of this repository, not mirror {mirror}"
            )))
        }
        Ok(None) => return Err(unusable(format!("no {IDENTITY_FILE} identity file"))),
        Err(e @ Error::UnsupportedFormat { .. }) => return Err(e),
        Err(Error::NotAMirror { .. }) => {
            return Err(unusable(format!("its {IDENTITY_FILE} file is unreadable")))
        }
        Err(e) => return Err(unusable(e.to_string())),
    }
    Ok(())
}

impl DirStore {
    /// Makes `path` mirror `mirror` of repository `repo` and opens it. The folder is
    /// created if missing; an existing empty folder is fine; a folder that already is
    /// exactly this mirror is opened as is (so an interrupted `create` can be retried).
    /// Refusals change nothing on disk: `ForeignMirror` (another repository's mirror),
    /// `Exists` (another mirror of this repository), `NotAMirror` (not empty, no
    /// identity), `NotDir` (a file). On return the identity and `objects/` are durable.
    pub fn create(path: &Path, repo: RepoId, mirror: MirrorId) -> Result<DirStore> {
        claim_folder(path, repo, mirror)?;
        create_objects_dir(path)?;
        DirStore::open(path, repo, mirror)
    }

    /// Opens the existing mirror folder `path`, whose identity must be exactly
    /// (`repo`, `mirror`). Errors: `ForeignMirror` (another repository),
    /// `UnsupportedFormat` (newer identity), `MirrorUnusable` with the reason (folder or
    /// identity or `objects/` missing, another mirror number, unreadable).
    /// The way `sync` works is chosen here from the folder's filesystem type (and
    /// `SNAPFS_SYNC`); a bad `SNAPFS_SYNC` makes the mirror unusable, saying why.
    pub fn open(path: &Path, repo: RepoId, mirror: MirrorId) -> Result<DirStore> {
        check_folder(path, repo, mirror)?;
        let unusable = |reason: String| Error::MirrorUnusable {
            id: mirror,
            path: path.to_path_buf(),
            reason,
        };
        let objects = path.join(OBJECTS_DIR);
        if !objects.is_dir() {
            return Err(unusable(format!("its {OBJECTS_DIR}/ folder is missing")));
        }
        let sync = sync::choose(path).map_err(|e| unusable(e.to_string()))?;
        Ok(DirStore::with_sync(path, repo, mirror, sync))
    }

    fn with_sync(path: &Path, repo: RepoId, mirror: MirrorId, sync: SyncChoice) -> DirStore {
        DirStore {
            path: path.to_path_buf(),
            objects: path.join(OBJECTS_DIR),
            repo,
            mirror,
            sync,
            unsynced: Mutex::default(),
            syncing: Mutex::default(),
            #[cfg(test)]
            before_fsync: Mutex::default(),
            #[cfg(test)]
            fsynced: Mutex::default(),
        }
    }

    /// How `sync` makes puts durable on this mirror, and why.
    pub fn sync_choice(&self) -> &SyncChoice {
        &self.sync
    }

    /// The same store with its sync mode set to `mode` (tests of the fsync mode on a
    /// filesystem that would choose syncfs).
    #[cfg(test)]
    pub(crate) fn with_sync_mode(mut self, mode: SyncMode) -> DirStore {
        self.sync.mode = mode;
        self
    }

    /// Runs `hook` before each fsync from now on.
    #[cfg(test)]
    pub(crate) fn set_before_fsync(&self, hook: impl Fn(&Path) + Send + Sync + 'static) {
        *self.before_fsync.lock().unwrap() = Some(std::sync::Arc::new(hook));
    }

    /// Chunk files the next sync has to fsync.
    #[cfg(test)]
    pub(crate) fn unsynced_files(&self) -> usize {
        self.unsynced().files.len()
    }

    /// Every path fsynced so far, in order, and clears the record.
    #[cfg(test)]
    pub(crate) fn take_fsynced(&self) -> Vec<PathBuf> {
        std::mem::take(&mut *self.fsynced.lock().unwrap())
    }

    fn unsynced(&self) -> MutexGuard<'_, Unsynced> {
        // Each update is one insert or one swap of the sets: a poisoned lock is consistent.
        self.unsynced.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes, in fsync mode, that the next sync must fsync `file` (if any) and `dirs`.
    fn note_unsynced(&self, file: Option<&Path>, dirs: &[&Path]) {
        if self.sync.mode != SyncMode::FsyncEach {
            return;
        }
        let mut unsynced = self.unsynced();
        if let Some(file) = file {
            unsynced.files.insert(file.to_path_buf());
        }
        for dir in dirs {
            unsynced.dirs.insert(dir.to_path_buf());
        }
    }

    /// One `syncfs` of the mirror's filesystem.
    fn syncfs(&self) -> Result<()> {
        let ctx = || format!("syncing {}", self.describe());
        // Data of every chunk file and the renames and new prefix folders at once.
        // Linux >= 5.8 reports writeback errors here.
        let fd = rustix::fs::open(
            &self.objects,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(ctx(), e.into()))?;
        rustix::fs::syncfs(&fd).map_err(|e| Error::io(ctx(), e.into()))
    }

    /// The fsync mode's sync: every chunk file written since the last sync, then every
    /// folder in which one was created or renamed. Files first: a name made durable
    /// before its data could name an empty file after a crash (harmless here, as no
    /// committed row names a chunk before this returns, but there is no reason to).
    /// On failure everything taken is put back, so the next sync tries it all again.
    ///
    /// One sync at a time: a sync that took the set and is still fsyncing it would
    /// otherwise let a second, concurrent one find the set empty and return at once,
    /// before the files the first took are durable (the flusher's sync outside the
    /// filesystem lock runs beside a commit's sync), and that commit would then name
    /// chunks that a power cut can still take away. Waiting for the first makes them
    /// durable for the second too.
    fn fsync_each(&self) -> Result<()> {
        // A panic in an earlier sync left nothing half done that this one relies on.
        let _one_at_a_time = self.syncing.lock().unwrap_or_else(|e| e.into_inner());
        let taken = std::mem::take(&mut *self.unsynced());
        let files: Vec<&PathBuf> = taken.files.iter().collect();
        let dirs: Vec<&PathBuf> = taken.dirs.iter().collect();
        let result = self
            .fsync_paths(&files, false)
            .and_then(|()| self.fsync_paths(&dirs, true));
        if result.is_err() {
            let mut unsynced = self.unsynced();
            unsynced.files.extend(taken.files);
            unsynced.dirs.extend(taken.dirs);
        }
        result
    }

    /// fsyncs `paths` (folders with `fsync`, files with `fdatasync`), on up to
    /// `SYNC_THREADS` threads when there are many: on a FUSE or network filesystem
    /// each fsync is a round trip to a daemon or a server, and several in flight at
    /// once overlap their waits. Returns the first error.
    fn fsync_paths(&self, paths: &[&PathBuf], dirs: bool) -> Result<()> {
        let threads = (paths.len() / FILES_PER_SYNC_THREAD).clamp(1, SYNC_THREADS);
        if threads == 1 {
            return paths.iter().try_for_each(|p| self.fsync_one(p, dirs));
        }
        let next = AtomicUsize::new(0);
        let failed = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = paths.get(i) else { break };
                    if let Err(e) = self.fsync_one(path, dirs) {
                        failed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                        break;
                    }
                });
            }
        });
        match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// fsync of one folder, or fdatasync of one chunk file (its data and size, which
    /// is all a reader needs). A chunk file removed since it was written (gc, a
    /// replacing put's rename) has nothing left to sync.
    fn fsync_one(&self, path: &Path, dir: bool) -> Result<()> {
        #[cfg(test)]
        {
            let hook = self.before_fsync.lock().unwrap().clone();
            if let Some(hook) = hook {
                hook(path);
            }
        }
        let synced = fs::File::open(path).and_then(|f| if dir { f.sync_all() } else { f.sync_data() });
        #[cfg(test)]
        self.fsynced.lock().unwrap().push(path.to_path_buf());
        match synced {
            Err(e) if !dir && is_absent(&e) => Ok(()),
            Err(e) => Err(Error::io(
                format!("syncing {} in {}", path.display(), self.describe()),
                e,
            )),
            Ok(()) => Ok(()),
        }
    }

    /// The mirror folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mirror's number.
    pub fn mirror_id(&self) -> MirrorId {
        self.mirror
    }

    /// The repository the mirror belongs to.
    pub fn repo_id(&self) -> RepoId {
        self.repo
    }

    /// Where the copy of `id` lives (whether or not it exists).
    pub fn object_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.objects.join(&hex[..2]).join(hex)
    }

    /// Bytes available to an unprivileged writer on the mirror's filesystem (statvfs).
    pub fn available_bytes(&self) -> Result<u64> {
        let st = rustix::fs::statvfs(&self.path)
            .map_err(|e| Error::io(format!("querying free space of {}", self.describe()), e.into()))?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Total size in bytes of the mirror's filesystem (statvfs).
    pub fn total_bytes(&self) -> Result<u64> {
        let st = rustix::fs::statvfs(&self.path)
            .map_err(|e| Error::io(format!("querying size of {}", self.describe()), e.into()))?;
        Ok(st.f_blocks.saturating_mul(st.f_frsize))
    }

    /// Deletes temp files left by puts of other processes (crashed writers); returns
    /// how many. Call only while holding the repository lock, so no other process is
    /// writing. Temp files of this process are left alone.
    pub fn remove_stale_temps(&self) -> Result<u64> {
        let own = format!("-{}-", std::process::id());
        let mut removed = 0;
        for (_, dir) in self.prefix_dirs()? {
            let ctx = || format!("cleaning temp files in {}", self.describe());
            for entry in fs::read_dir(&dir).map_err(Error::io_with(ctx()))? {
                let entry = entry.map_err(Error::io_with(ctx()))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if let Some(rest) = name.strip_prefix(CHUNK_TMP_PREFIX) {
                    // rest = <hex>-<pid>-<counter>
                    if rest.get(64..).is_some_and(|tail| tail.starts_with(&own)) {
                        continue;
                    }
                    match fs::remove_file(entry.path()) {
                        Ok(()) => removed += 1,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io(ctx(), e)),
                    }
                }
            }
        }
        Ok(removed)
    }

    /// The `objects/ab` folders: (prefix, path).
    fn prefix_dirs(&self) -> Result<Vec<(String, PathBuf)>> {
        let ctx = || format!("listing chunks of {}", self.describe());
        let mut dirs = Vec::new();
        for entry in fs::read_dir(&self.objects).map_err(Error::io_with(ctx()))? {
            let entry = entry.map_err(Error::io_with(ctx()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_prefix = name.len() == 2
                && name
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if is_prefix && entry.file_type().map_err(Error::io_with(ctx()))?.is_dir() {
                dirs.push((name, entry.path()));
            }
        }
        Ok(dirs)
    }

    /// Writes `frame` to a fresh temp file in `dir` and renames it to `final_path`.
    fn write_and_rename(&self, id: &ChunkId, dir: &Path, final_path: &Path, frame: &[u8]) -> io::Result<()> {
        let tmp = dir.join(format!(
            "{CHUNK_TMP_PREFIX}{}-{}-{}",
            id.to_hex(),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut file = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let written = file.write_all(frame).and_then(|()| {
            // Start writing it back now, without waiting: the next `sync` then finds
            // little left to write, and stalls the filesystem core that much less.
            let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
            drop(file);
            fs::rename(&tmp, final_path)
        });
        if written.is_err() {
            // Best effort: a leftover temp file is ignored by list and cleaned later.
            let _ = fs::remove_file(&tmp);
        }
        written
    }
}

fn create_objects_dir(path: &Path) -> Result<()> {
    let objects = path.join(OBJECTS_DIR);
    match fs::create_dir(&objects) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(Error::io(format!("creating {}", objects.display()), e)),
    }
    fsync_dir(path).map_err(Error::io_with(format!("syncing folder {}", path.display())))
}

impl ObjectStore for DirStore {
    fn describe(&self) -> String {
        format!("mirror {} ({})", self.mirror, self.path.display())
    }

    fn put(&self, id: &ChunkId, frame: &[u8]) -> Result<()> {
        let final_path = self.object_path(id);
        // Invariant: object_path always has the objects/ab parent.
        let dir = final_path.parent().unwrap_or(&self.objects).to_path_buf();
        let ctx = || format!("writing chunk {id} in {}", self.describe());
        match self.write_and_rename(id, &dir, &final_path, frame) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // First chunk with this prefix. Only the prefix folder is created: if
                // objects/ itself is gone, the mirror is broken and the put must fail.
                // The new entry becomes durable with the next sync, like the chunk:
                // in fsync mode, by an fsync of objects/.
                match fs::create_dir(&dir) {
                    Ok(()) => self.note_unsynced(None, &[&self.objects]),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::io(ctx(), e)),
                }
                self.write_and_rename(id, &dir, &final_path, frame)
                    .map_err(Error::io_with(ctx()))?;
            }
            Err(e) => return Err(Error::io(ctx(), e)),
        }
        self.note_unsynced(Some(&final_path), &[&dir]);
        Ok(())
    }

    fn get_frame(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        match direct::read_uncached(&self.object_path(id)) {
            Ok(frame) => Ok(Some(frame)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(Error::io(format!("reading chunk {id} in {}", self.describe()), e)),
        }
    }

    fn contains(&self, id: &ChunkId) -> Result<bool> {
        match fs::symlink_metadata(self.object_path(id)) {
            Ok(_) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(Error::io(
                format!("looking up chunk {id} in {}", self.describe()),
                e,
            )),
        }
    }

    fn remove(&self, id: &ChunkId) -> Result<()> {
        // In fsync mode a removal is not noted for the next sync: its folder is fsynced
        // only if a put changed that folder too. Nothing depends on a removal being
        // durable. A removal that a crash undoes leaves an object no catalog row names
        // (gc deletes rows before objects), which a gc sweep deletes and a put of the
        // same chunk replaces; no read, dedup decision or check trusts an object
        // without its row. What would hurt is the opposite order, a removal durable
        // while the row (or the forget that made the chunk garbage) is not, and no
        // fsync here can prevent that: the folder may be fsynced by a later put at any
        // time. That order is gc's to keep, by making its catalog changes durable
        // before it removes objects. So an fsync here would only cost time. In syncfs
        // mode the next sync makes removals durable anyway.
        match fs::remove_file(self.object_path(id)) {
            Ok(()) => Ok(()),
            Err(e) if is_absent(&e) => Ok(()),
            Err(e) => Err(Error::io(
                format!("deleting chunk {id} in {}", self.describe()),
                e,
            )),
        }
    }

    fn list(&self) -> Result<Vec<ChunkId>> {
        let mut ids = Vec::new();
        for (prefix, dir) in self.prefix_dirs()? {
            let ctx = || format!("listing chunks of {}", self.describe());
            for entry in fs::read_dir(&dir).map_err(Error::io_with(ctx()))? {
                let entry = entry.map_err(Error::io_with(ctx()))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                // Temp files and strays fail to parse or sit under the wrong prefix.
                if let Some(id) = ChunkId::from_hex(name) {
                    if name.starts_with(&prefix) && name == id.to_hex() {
                        ids.push(id);
                    }
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Every put that returned before the call is durable on return. A remove is
    /// durable too in syncfs mode; in fsync mode it may not be (see `remove`).
    fn sync(&self) -> Result<()> {
        match self.sync.mode {
            SyncMode::Syncfs => self.syncfs(),
            SyncMode::FsyncEach => self.fsync_each(),
        }
    }
}
