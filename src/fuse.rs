//! The FUSE adapter: `impl fuser::Filesystem` over the filesystem core.
//!
//! Translation only: kernel inode numbers ↔ `Ino`, `InodeAttr` → `FileAttr`,
//! `Error` → errno, TTLs, replies. The only module that names `fuser`. Every callback
//! is a few lines; logic lives in `fs`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Config, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};

use crate::catalog::{FileKind, InodeAttr};
use crate::error::{Error, Result};
use crate::fs::{Allocate, Caller, Fs, Node, RenameMode, Seek, SetAttr, SetTime, SnapDir, Writer};
use crate::types::{Ino, View};

/// The log target of the FUSE library, so that the command line can set its level
/// without naming the library.
pub const LIBRARY_LOG_TARGET: &str = "fuser";

/// Attribute and entry TTL of the live tree. Only this daemon changes the live tree,
/// through the kernel (which updates or drops what it cached), except for rollback,
/// which invalidates what it changed explicitly; so the kernel may cache for a while.
const LIVE_TTL: Duration = Duration::from_secs(10);

/// TTL inside snapshots, which never change (a forgotten one stops resolving).
const SNAPSHOT_TTL: Duration = Duration::from_secs(60);

/// How the mount is set up.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    /// Let other users in (`-o allow_other`).
    pub allow_other: bool,
    /// Request threads.
    pub threads: usize,
    /// Name shown in the mount table.
    pub fs_name: String,
    /// Whether the root lists the `@` snapshot folders.
    pub snapdir: SnapDir,
}

/// The kernel-facing side of one mount.
pub struct FuseAdapter {
    fs: Arc<Fs>,
    snapdir: SnapDir,
    eio_log: EioLog,
}

impl FuseAdapter {
    /// An adapter serving `fs`.
    pub fn new(fs: Arc<Fs>, snapdir: SnapDir) -> FuseAdapter {
        FuseAdapter {
            fs,
            snapdir,
            eio_log: EioLog::default(),
        }
    }
}

/// Distinct (operation, message) pairs of EIO replies kept, so a failing disk logs
/// each failure once, not once per request; past this many nothing more is logged.
const EIO_LOG_LIMIT: usize = 1000;

/// Which EIO replies were logged already (bounded by `EIO_LOG_LIMIT`).
#[derive(Default)]
struct EioLog {
    seen: Mutex<HashSet<(&'static str, String)>>,
}

impl EioLog {
    /// True the first time `op` fails with `message` (and while fewer than
    /// `EIO_LOG_LIMIT` pairs were seen): the caller logs it then.
    fn first(&self, op: &'static str, message: &str) -> bool {
        // Poisoned: a thread panicked while inserting; the set is still a set.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.len() < EIO_LOG_LIMIT && seen.insert((op, message.to_string()))
    }
}

/// A running mount; dropping it unmounts.
pub struct MountHandle {
    session: fuser::BackgroundSession,
}

impl MountHandle {
    /// Blocks until the filesystem is unmounted (by `fusermount3 -u`, `umount`, or
    /// `unmount` from another thread).
    pub fn join(self) -> Result<()> {
        self.session.join().map_err(Error::io_with("serving the mount"))
    }
}

impl MountHandle {
    /// A handle that tells the kernel to drop what it caches of live inodes and names.
    pub fn invalidator(&self) -> Invalidator {
        Invalidator {
            notifier: self.session.notifier(),
        }
    }
}

/// Drops kernel caches of the live tree after it changed behind the kernel's back
/// (a rollback). Failures (e.g. the kernel never cached that inode) are ignored.
pub struct Invalidator {
    notifier: fuser::Notifier,
}

impl Invalidator {
    /// Forget the attributes and cached pages of `ino`.
    pub fn inode(&self, ino: Ino) {
        let _ = self.notifier.inval_inode(INodeNo(ino.0), 0, 0);
    }

    /// Forget the name `name` in folder `parent` (it now points elsewhere or nowhere).
    pub fn entry(&self, parent: Ino, name: &[u8]) {
        let _ = self
            .notifier
            .inval_entry(INodeNo(parent.0), OsStr::from_bytes(name));
    }
}

/// Mounts `fs` at `mountpoint` and serves it from background threads.
pub fn mount(fs: Arc<Fs>, mountpoint: &Path, options: &MountOptions) -> Result<MountHandle> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(options.fs_name.clone()),
        MountOption::Subtype("snapfs".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
        MountOption::Dev,
        MountOption::Suid,
        MountOption::Exec,
    ];
    if options.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(options.threads.max(1));
    let session = fuser::spawn_mount(FuseAdapter::new(fs, options.snapdir), mountpoint, &config)
        .map_err(Error::io_with(format!("mounting at {}", mountpoint.display())))?;
    raise_readahead(mountpoint);
    Ok(MountHandle { session })
}

/// The kernel's read-ahead window for the mount, in KiB: 1 MiB READ requests instead
/// of 128 KiB ones. Cold reads of text-like data (bound by the cores) went from
/// 0.91-0.96 to 1.03-1.09 GB/s with less daemon CPU; random data (bound by the disk)
/// did not move.
pub const READ_AHEAD_KIB: u32 = 1024;

/// Sets the mount's read-ahead window to `READ_AHEAD_KIB`. The INIT reply can only
/// lower the kernel's 128 KiB default, so this writes the mount's `read_ahead_kb` in
/// sysfs, which needs root; without it the default stays (logged at debug level).
fn raise_readahead(mountpoint: &Path) {
    let set = std::fs::metadata(mountpoint).and_then(|m| {
        let (major, minor) = (rustix::fs::major(m.dev()), rustix::fs::minor(m.dev()));
        std::fs::write(
            format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"),
            READ_AHEAD_KIB.to_string(),
        )
    });
    if let Err(e) = set {
        log::debug!("kept the kernel's read-ahead for {}: {e}", mountpoint.display());
    }
}

/// Unmounts `mountpoint` (as `fusermount3 -u` does). "Device or resource busy" is
/// tried again for up to 2 s: a file closed a moment ago can keep the mount busy
/// briefly (a child that inherited the descriptor between fork and exec, a
/// deferred close); a mount that stays busy is reported with fusermount's words.
pub fn unmount(mountpoint: &Path) -> Result<()> {
    const TRIES: u32 = 10;
    let mut attempt = 1;
    loop {
        let out = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(mountpoint)
            .output()
            .map_err(Error::io_with("running fusermount3"))?;
        if out.status.success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if said.contains("busy") && attempt < TRIES {
            log::debug!("{said}; trying again");
            std::thread::sleep(Duration::from_millis(200));
            attempt += 1;
            continue;
        }
        return Err(Error::io(
            format!("unmounting {}", mountpoint.display()),
            std::io::Error::other(format!("fusermount3 -u exited with {}: {said}", out.status)),
        ));
    }
}

fn ino(n: INodeNo) -> Ino {
    Ino(n.0)
}

fn ttl(node: &Node) -> Duration {
    if node.is_snapshot() {
        SNAPSHOT_TTL
    } else {
        LIVE_TTL
    }
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(node: &Node) -> FileAttr {
    let a: &InodeAttr = &node.attr;
    FileAttr {
        ino: INodeNo(node.ino.0),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: time(a.atime_ns),
        mtime: time(a.mtime_ns),
        ctime: time(a.ctime_ns),
        crtime: time(a.ctime_ns),
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        flags: 0,
        blksize: 65536,
    }
}

/// How long the kernel may remember that `name` is not in `parent` (a negative
/// entry: `rsync` and `open(O_CREAT)` look a name up before creating it, and again
/// before renaming over it), or `None` to answer ENOENT uncached. Names come into
/// the live tree through the kernel, which replaces the negative entry, or by a
/// rollback, which invalidates every name it brings back. Snapshots never change.
/// Only the `@` names of the mount root appear behind the kernel's back (a new
/// snapshot), so a miss there is never cached.
fn negative_ttl(parent: Ino, name: &[u8]) -> Option<Duration> {
    match parent.split() {
        (View::Snapshot(_), _) => Some(SNAPSHOT_TTL),
        (View::Live, _) if parent == Ino::ROOT && name.first() == Some(&b'@') => None,
        (View::Live, _) => Some(LIVE_TTL),
    }
}

/// The entry that says "no such name" with a timeout (node id 0).
fn no_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 0,
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(ns(t)),
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// The writer of a size change or allocation: root counts as holding CAP_FSETID,
/// anyone else not (the request says no more).
fn writer_of<'a>(req: &Request, in_group: &'a dyn Fn(u32) -> bool) -> Writer<'a> {
    if req.uid() == 0 {
        Writer::Privileged
    } else {
        Writer::Unprivileged { in_group }
    }
}

/// Whether the process behind `req` is in group `gid`: its (fs) group, or one of its
/// supplementary groups as /proc tells them.
fn caller_in_group(req: &Request, gid: u32) -> bool {
    if req.gid() == gid {
        return true;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", req.pid())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|groups| groups.split_whitespace().any(|g| g.parse() == Ok(gid)))
}

impl FuseAdapter {
    /// The errno replying `e` to `op` on inode `n`. An EIO (a kind with no errno of
    /// its own: corruption, a failing disk, a bug) is logged with what failed, once
    /// per operation and message; other errnos are the caller's business.
    fn errno(&self, op: &'static str, n: INodeNo, e: &Error) -> Errno {
        let errno = e.errno();
        if errno == libc::EIO {
            let message = e.to_string();
            if self.eio_log.first(op, &message) {
                log::error!("{op} of inode {}: {message} (answered EIO)", n.0);
            }
        }
        Errno::from_i32(errno)
    }

    fn reply_entry(&self, reply: ReplyEntry, op: &'static str, n: INodeNo, result: Result<Node>) {
        match result {
            Ok(node) => reply.entry(&ttl(&node), &file_attr(&node), Generation(0)),
            Err(e) => reply.error(self.errno(op, n, &e)),
        }
    }

    fn reply_attr(&self, reply: ReplyAttr, op: &'static str, n: INodeNo, result: Result<Node>) {
        match result {
            Ok(node) => reply.attr(&ttl(&node), &file_attr(&node)),
            Err(e) => reply.error(self.errno(op, n, &e)),
        }
    }

    fn reply_data(&self, reply: ReplyData, op: &'static str, n: INodeNo, result: Result<Vec<u8>>) {
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(self.errno(op, n, &e)),
        }
    }

    fn reply_empty(&self, reply: ReplyEmpty, op: &'static str, n: INodeNo, result: Result<()>) {
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno(op, n, &e)),
        }
    }

    fn reply_xattr(
        &self,
        reply: ReplyXattr,
        op: &'static str,
        n: INodeNo,
        size: u32,
        bytes: Result<Vec<u8>>,
    ) {
        match bytes {
            Ok(b) if size == 0 => reply.size(b.len() as u32),
            Ok(b) if b.len() <= size as usize => reply.data(&b),
            Ok(_) => reply.error(Errno::ERANGE),
            Err(e) => reply.error(self.errno(op, n, &e)),
        }
    }
}

/// Entries a listing reads from the core per step: a kernel READDIR buffer (one page)
/// holds at most this many, so a call costs one step, and memory stays bounded.
const LISTING_STEP: usize = 128;

/// The same for READDIRPLUS, whose entries carry attributes (about 150 bytes each).
const LISTING_STEP_PLUS: usize = 32;

/// Feeds a folder's entries after cookie `after` to `add`, a page of `step` from
/// `fetch` at a time, until `add` says the reply is full (true) or a short page ends
/// the folder.
fn stream<T>(
    mut after: u64,
    step: usize,
    fetch: impl Fn(u64, usize) -> Result<Vec<T>>,
    cookie: impl Fn(&T) -> u64,
    mut add: impl FnMut(&T) -> bool,
) -> Result<()> {
    loop {
        let page = fetch(after, step)?;
        for e in &page {
            if add(e) {
                return Ok(());
            }
            after = cookie(e);
        }
        if page.len() < step {
            return Ok(());
        }
    }
}

/// How a live file's handle uses the page cache. One opened for writing only
/// bypasses it (direct I/O): its data goes from the writer's buffer straight to the
/// daemon, instead of being copied into cache pages nobody reads through it
/// (sequential writes 15-25% faster here); the kernel drops cached pages of the range
/// such a write covers, so readers through other handles stay coherent. Handles that
/// can read keep the pages already cached (see `open`).
fn open_flags(flags: i32) -> FopenFlags {
    if flags & libc::O_ACCMODE == libc::O_WRONLY {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::FOPEN_KEEP_CACHE
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large requests: fewer, bigger writes through the chunker; long read-ahead.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.add_capabilities(InitFlags::FUSE_BIG_WRITES);
        // READDIRPLUS where it pays: the kernel asks for attributes with the first
        // page of a listing, and with later pages once their entries get looked up
        // (`ls -l`, `find`). A `find` in a snapshot then costs no LOOKUP per folder
        // (5,776 requests for 1,169 folders before, 4,642 after); `ls -f` of a big
        // folder stays on plain READDIR after its first page.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        // The daemon clears set-ID bits itself on write, truncate and chown (see
        // fs::privileges), so the kernel need not ask: no GETXATTR of
        // security.capability before every write once an inode is known clean, no
        // GETATTR before every chown.
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        Ok(())
    }

    fn destroy(&mut self) {
        // The mount is going away: everything buffered must be committed now. Nobody
        // is left to hear of a failure but the log.
        if let Err(e) = self.fs.fsync(None) {
            log::error!("committing buffered writes at unmount: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.fs.lookup_node(ino(parent), name.as_bytes());
        match (&found, negative_ttl(ino(parent), name.as_bytes())) {
            (Err(Error::NotFound(_)), Some(ttl)) => reply.entry(&ttl, &no_entry(), Generation(0)),
            _ => self.reply_entry(reply, "lookup", parent, found),
        }
    }

    fn getattr(&self, _req: &Request, n: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.reply_attr(reply, "getattr", n, self.fs.node(ino(n)));
    }

    fn setattr(
        &self,
        req: &Request,
        n: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        let in_group = |gid| caller_in_group(req, gid);
        self.reply_attr(
            reply,
            "setattr",
            n,
            self.fs.setattr_node(ino(n), &set, &writer_of(req, &in_group)),
        );
    }

    fn readlink(&self, _req: &Request, n: INodeNo, reply: ReplyData) {
        self.reply_data(reply, "readlink", n, self.fs.readlink_node(ino(n)));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let Some(kind) = FileKind::from_mode(mode) else {
            return reply.error(Errno::EINVAL);
        };
        let perm = mode & !umask & 0o7777;
        let made = self.fs.create_node(
            caller(req),
            ino(parent),
            name.as_bytes(),
            kind,
            perm,
            rdev as u64,
            b"",
        );
        self.reply_entry(reply, "mknod", parent, made);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let perm = mode & !umask & 0o7777;
        let made = self.fs.create_node(
            caller(req),
            ino(parent),
            name.as_bytes(),
            FileKind::Dir,
            perm,
            0,
            b"",
        );
        self.reply_entry(reply, "mkdir", parent, made);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.reply_empty(
            reply,
            "unlink",
            parent,
            self.fs.remove_node(ino(parent), name.as_bytes(), false),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.reply_empty(
            reply,
            "rmdir",
            parent,
            self.fs.remove_node(ino(parent), name.as_bytes(), true),
        );
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let target = target.as_os_str().as_bytes();
        let made = self.fs.create_node(
            caller(req),
            ino(parent),
            link_name.as_bytes(),
            FileKind::Symlink,
            0o777,
            0,
            target,
        );
        self.reply_entry(reply, "symlink", parent, made);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else {
            RenameMode::Replace
        };
        let renamed = self.fs.rename_node(
            ino(parent),
            name.as_bytes(),
            ino(newparent),
            newname.as_bytes(),
            mode,
        );
        self.reply_empty(reply, "rename", parent, renamed);
    }

    fn link(&self, _req: &Request, n: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        self.reply_entry(
            reply,
            "link",
            n,
            self.fs.link_node(ino(n), ino(newparent), newname.as_bytes()),
        );
    }

    fn open(&self, _req: &Request, n: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        match self.fs.open_node(ino(n), write) {
            // Snapshot files never change, and a live file's pages stay right: every
            // change goes through this kernel (writes update or drop the pages they
            // cover, truncates and hole punches drop theirs), and a rollback drops the
            // pages of every file it changes. So an open keeps what is cached.
            Ok(node) if node.is_snapshot() => reply.opened(FileHandle(n.0), FopenFlags::FOPEN_KEEP_CACHE),
            Ok(_) => reply.opened(FileHandle(n.0), open_flags(flags.0)),
            Err(e) => reply.error(self.errno("open", n, &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        n: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.reply_data(reply, "read", n, self.fs.read_node(ino(n), offset, size as usize));
    }

    fn write(
        &self,
        req: &Request,
        n: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // Writeback of cached pages (mmap) has no writer; the kernel flags a direct
        // write by one without CAP_FSETID; a buffered write says nothing, so any
        // caller but root counts as unprivileged.
        let privileged = write_flags.contains(WriteFlags::FUSE_WRITE_CACHE)
            || (req.uid() == 0 && !write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID));
        let in_group = |gid| caller_in_group(req, gid);
        let writer = if privileged {
            Writer::Privileged
        } else {
            Writer::Unprivileged { in_group: &in_group }
        };
        match self.fs.write_node(ino(n), offset, data, &writer) {
            Ok(written) => reply.written(written as u32),
            Err(e) => reply.error(self.errno("write", n, &e)),
        }
    }

    fn flush(&self, _req: &Request, _n: INodeNo, _fh: FileHandle, _owner: LockOwner, reply: ReplyEmpty) {
        // close() has nothing to do here: buffered data is committed by the flusher
        // within a second, or by fsync. ENOSYS tells the kernel so, and it then stops
        // sending FLUSH at every close (one round trip less per file written).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        n: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.reply_empty(reply, "release", n, self.fs.release_node(ino(n)));
    }

    fn fsync(&self, _req: &Request, n: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.reply_empty(reply, "fsync", n, self.fs.fsync_node(ino(n)));
    }

    fn opendir(&self, _req: &Request, n: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The kernel opens only what it knows to be a folder, and the listing itself
        // reads the folder: nothing to look up here (a round trip per folder of a
        // `find` is enough). A snapshot's folders never change: the kernel may keep
        // their listings for good and answer repeated listings itself.
        let flags = if ino(n).split().0 == View::Live {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        };
        reply.opened(FileHandle(0), flags);
    }

    fn readdir(&self, _req: &Request, n: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        // Offsets: 1 and 2 are "." and ".."; an entry's is its cookie, which the next
        // call resumes after.
        for (cookie, name) in [(1, "."), (2, "..")] {
            if offset < cookie && reply.add(n, cookie, FileType::Directory, OsStr::new(name)) {
                return reply.ok();
            }
        }
        let fetch = |after, step| self.fs.list_dir(ino(n), after, step, self.snapdir);
        let result = stream(
            offset,
            LISTING_STEP,
            fetch,
            |e| e.cookie,
            |e| {
                reply.add(
                    INodeNo(e.ino.0),
                    e.cookie,
                    file_type(e.kind),
                    OsStr::from_bytes(&e.name),
                )
            },
        );
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno("readdir", n, &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        n: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let dir = match self.fs.node(ino(n)) {
            Ok(d) => d,
            Err(e) => return reply.error(self.errno("readdirplus", n, &e)),
        };
        for (cookie, name) in [(1, "."), (2, "..")] {
            let attr = file_attr(&dir);
            if offset < cookie
                && reply.add(
                    attr.ino,
                    cookie,
                    OsStr::new(name),
                    &ttl(&dir),
                    &attr,
                    Generation(0),
                )
            {
                return reply.ok();
            }
        }
        let fetch = |after, step| self.fs.list_dir_plus(ino(n), after, step, self.snapdir);
        let result = stream(
            offset,
            LISTING_STEP_PLUS,
            fetch,
            |(e, _)| e.cookie,
            |(e, node)| {
                let attr = file_attr(node);
                reply.add(
                    attr.ino,
                    e.cookie,
                    OsStr::from_bytes(&e.name),
                    &ttl(node),
                    &attr,
                    Generation(0),
                )
            },
        );
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno("readdirplus", n, &e)),
        }
    }

    fn fsyncdir(&self, _req: &Request, n: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.reply_empty(reply, "fsyncdir", n, self.fs.fsync_node(ino(n)));
    }

    fn statfs(&self, _req: &Request, n: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_available,
                s.files,
                s.files_free,
                s.block_size,
                255,
                s.block_size,
            ),
            Err(e) => reply.error(self.errno("statfs", n, &e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        n: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let create = flags & libc::XATTR_CREATE != 0;
        let replace = flags & libc::XATTR_REPLACE != 0;
        let set = self
            .fs
            .setxattr_node(ino(n), name.as_bytes(), value, create, replace);
        self.reply_empty(reply, "setxattr", n, set);
    }

    fn getxattr(&self, _req: &Request, n: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.reply_xattr(
            reply,
            "getxattr",
            n,
            size,
            self.fs.getxattr_node(ino(n), name.as_bytes()),
        );
    }

    fn listxattr(&self, _req: &Request, n: INodeNo, size: u32, reply: ReplyXattr) {
        let list = self.fs.listxattr_node(ino(n)).map(|names| {
            names
                .into_iter()
                .flat_map(|mut name| {
                    name.push(0);
                    name
                })
                .collect()
        });
        self.reply_xattr(reply, "listxattr", n, size, list);
    }

    fn removexattr(&self, _req: &Request, n: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.reply_empty(
            reply,
            "removexattr",
            n,
            self.fs.removexattr_node(ino(n), name.as_bytes()),
        );
    }

    fn access(&self, _req: &Request, n: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks modes; existence and read-only are ours.
        let result = self.fs.node(ino(n)).and_then(|node| {
            if node.is_snapshot() && mask.contains(AccessFlags::W_OK) {
                Err(Error::ReadOnly("snapshot".into()))
            } else {
                Ok(())
            }
        });
        self.reply_empty(reply, "access", n, result);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let perm = mode & !umask & 0o7777;
        let created = self
            .fs
            .create_node(
                caller(req),
                ino(parent),
                name.as_bytes(),
                FileKind::File,
                perm,
                0,
                b"",
            )
            .and_then(|node| self.fs.open_node(node.ino, true));
        match created {
            Ok(node) => reply.created(
                &LIVE_TTL,
                &file_attr(&node),
                Generation(0),
                FileHandle(node.ino.0),
                open_flags(flags),
            ),
            Err(e) => reply.error(self.errno("create", parent, &e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        n: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // The modes ext4 takes. (This kernel passes FUSE only the first five: it
        // answers collapse and insert with EOPNOTSUPP itself.)
        const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
        let how = match mode {
            0 => Allocate::Reserve { keep_size: false },
            KEEP => Allocate::Reserve { keep_size: true },
            m if m == libc::FALLOC_FL_PUNCH_HOLE | KEEP => Allocate::PunchHole,
            libc::FALLOC_FL_ZERO_RANGE => Allocate::ZeroRange { keep_size: false },
            m if m == libc::FALLOC_FL_ZERO_RANGE | KEEP => Allocate::ZeroRange { keep_size: true },
            libc::FALLOC_FL_COLLAPSE_RANGE => Allocate::CollapseRange,
            libc::FALLOC_FL_INSERT_RANGE => Allocate::InsertRange,
            _ => return reply.error(Errno::EOPNOTSUPP),
        };
        self.reply_empty(reply, "fallocate", n, {
            let in_group = |gid| caller_in_group(req, gid);
            self.fs
                .fallocate_node(ino(n), offset, length, how, &writer_of(req, &in_group))
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        n: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let what = match whence {
            libc::SEEK_DATA => Seek::Data,
            libc::SEEK_HOLE => Seek::Hole,
            _ => return reply.error(Errno::EINVAL),
        };
        match self.fs.seek_node(ino(n), offset.max(0) as u64, what) {
            Ok(pos) => reply.offset(pos as i64),
            Err(e) => reply.error(self.errno("lseek", n, &e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // Replies carry 32 bits; the kernel asks again for the rest.
        let len = len.min(1 << 30);
        let copied = self
            .fs
            .copy_range_node(ino(ino_in), offset_in, ino(ino_out), offset_out, len);
        match copied {
            Ok(count) => reply.written(count as u32),
            Err(e) => reply.error(self.errno("copy_file_range", ino_in, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_eio_is_logged_once_per_operation_and_message() {
        let log = EioLog::default();
        assert!(log.first("read", "chunk 00 is missing from every mirror"));
        assert!(
            !log.first("read", "chunk 00 is missing from every mirror"),
            "a repeat"
        );
        assert!(
            log.first("read", "chunk 01 is missing from every mirror"),
            "another message"
        );
        assert!(
            log.first("write", "chunk 00 is missing from every mirror"),
            "another operation"
        );
        assert!(!log.first("write", "chunk 00 is missing from every mirror"));
    }

    #[test]
    fn the_eio_log_stays_bounded() {
        let log = EioLog::default();
        for i in 0..EIO_LOG_LIMIT {
            assert!(log.first("read", &format!("failure {i}")));
        }
        assert!(!log.first("read", "one failure too many"), "nothing more is kept");
        assert_eq!(log.seen.lock().unwrap().len(), EIO_LOG_LIMIT);
    }
}
