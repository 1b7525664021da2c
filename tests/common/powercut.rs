//! A power-cut layer: a small FUSE filesystem, served by the test process, that keeps
//! every file in memory in two states, what is durable and what is only visible, and
//! on a cut throws away what was not durable, as a power loss does.
//!
//! What it models, strictly as POSIX allows (stricter than ext4 in practice):
//! * `fsync`/`fdatasync` of a file makes its data, size, mode, owner and times durable,
//!   not its name.
//! * `fsync` of a folder makes its entries durable (names created, renamed or removed
//!   in it). A new name becomes durable only once its folder is fsynced; a rename only
//!   once both folders are (fsyncing only the target's folder leaves two names, only
//!   the source's none). A name made durable for a file that was never fsynced names
//!   an empty file (or an empty folder).
//! * A cut (`cut_now`, or `arm` to cut at the Nth changing request) keeps the durable
//!   state only, except that, seeded, some files get a random prefix of their unsynced
//!   writes and truncations since their last fsync, the last write torn at a 512-byte
//!   sector boundary: writeback that happened before the power went. From the cut on,
//!   every request fails with EIO (the machine is off).
//! * `restart` unmounts the layer and mounts a new one from the durable state, so no
//!   page or attribute the kernel cached before the cut can show. Whatever ran on top
//!   (the snapfs daemon) must be dead and unmounted first.
//!
//! What it does not model: metadata written back without an fsync (a journal commit
//! making a rename durable on its own), reordered or lost writes inside one sector,
//! a drive that lies about flushes, ENOSPC, xattrs (ENOSYS: the kernel then answers
//! EOPNOTSUPP itself), hard links and symlinks (snapfs's repository needs neither),
//! POSIX and flock locks (not implemented, so the kernel keeps them locally, which is
//! what SQLite needs for its WAL index), and `O_DIRECT` is served like any read (the
//! kernel sends it straight through; nothing is cached here to bypass). Mapped files
//! (SQLite's `-shm`) reach it as the kernel writes their pages back.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Bytes per page of file data; pages are shared between the two states until written.
const PAGE: usize = 16 << 10;
/// Sector size for torn writes.
const SECTOR: u64 = 512;
/// A file's log of unsynced changes is dropped (no writeback modelled) beyond this.
const LOG_LIMIT: usize = 64 << 20;
/// Attribute and entry TTL given to the kernel.
const TTL: Duration = Duration::from_secs(1);
/// Size the layer says it has (statfs).
const CAPACITY: u64 = 64 << 30;

pub use super::Rng;

/// A file's bytes as shared pages: cloning is cheap, a write copies the pages it touches.
#[derive(Clone, Debug, Default)]
struct Data {
    pages: Vec<Arc<Vec<u8>>>,
    len: u64,
}

impl Data {
    fn write(&mut self, offset: u64, bytes: &[u8]) {
        let end = offset + bytes.len() as u64;
        if end > self.len {
            self.set_len(end);
        }
        let mut done = 0;
        while done < bytes.len() {
            let at = offset as usize + done;
            let (page, within) = (at / PAGE, at % PAGE);
            let n = (PAGE - within).min(bytes.len() - done);
            Arc::make_mut(&mut self.pages[page])[within..within + n].copy_from_slice(&bytes[done..done + n]);
            done += n;
        }
    }

    fn set_len(&mut self, len: u64) {
        let pages = (len as usize).div_ceil(PAGE);
        if len < self.len {
            self.pages.truncate(pages);
            // Bytes past the end read as zeros if the file grows again.
            let tail = len as usize % PAGE;
            if tail != 0 {
                if let Some(last) = self.pages.last_mut() {
                    Arc::make_mut(last)[tail..].fill(0);
                }
            }
        } else {
            while self.pages.len() < pages {
                self.pages.push(Arc::new(vec![0; PAGE]));
            }
        }
        self.len = len;
    }

    fn read(&self, offset: u64, size: usize) -> Vec<u8> {
        let end = (offset + size as u64).min(self.len);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let (page, within) = ((at as usize) / PAGE, (at as usize) % PAGE);
            let n = (PAGE - within).min((end - at) as usize);
            out.extend_from_slice(&self.pages[page][within..within + n]);
            at += n as u64;
        }
        out
    }
}

/// A change to a file's data not yet made durable by an fsync.
#[derive(Clone, Debug)]
enum Change {
    Write(u64, Arc<[u8]>),
    SetLen(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    /// A socket or fifo (snapfs's control socket): a name and a mode, nothing more.
    Special(FileType),
}

#[derive(Clone, Debug)]
struct Node {
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    rdev: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    data: Data,
    entries: BTreeMap<OsString, u64>,
    /// Names pointing at a file (kept for the visible state; recounted for images).
    nlink: u32,
}

impl Node {
    fn new(kind: Kind, perm: u16, uid: u32, gid: u32, rdev: u32) -> Node {
        let now = SystemTime::now();
        Node {
            kind,
            perm,
            uid,
            gid,
            rdev,
            atime: now,
            mtime: now,
            ctime: now,
            data: Data::default(),
            entries: BTreeMap::new(),
            nlink: 1,
        }
    }

    /// The node as a name made durable before any fsync of it finds it: no content.
    fn skeleton(&self) -> Node {
        Node {
            data: Data::default(),
            entries: BTreeMap::new(),
            ..self.clone()
        }
    }
}

/// Every node by inode number.
#[derive(Clone, Debug, Default)]
struct Tree {
    nodes: HashMap<u64, Node>,
}

impl Tree {
    fn fresh() -> Tree {
        let mut root = Node::new(Kind::Dir, 0o755, 0, 0, 0);
        root.nlink = 2;
        Tree {
            nodes: HashMap::from([(1, root)]),
        }
    }

    /// The nodes reachable from the root, with files' link counts recounted.
    fn reachable(mut self) -> Tree {
        let mut keep: HashMap<u64, Node> = HashMap::new();
        let mut links: HashMap<u64, u32> = HashMap::new();
        let mut stack = vec![1u64];
        while let Some(ino) = stack.pop() {
            let Some(node) = self.nodes.remove(&ino) else {
                continue;
            };
            for child in node.entries.values() {
                *links.entry(*child).or_default() += 1;
                if !keep.contains_key(child) {
                    stack.push(*child);
                }
            }
            keep.insert(ino, node);
        }
        for (ino, node) in keep.iter_mut() {
            if node.kind != Kind::Dir {
                node.nlink = links.get(ino).copied().unwrap_or(1);
            }
        }
        Tree { nodes: keep }
    }
}

/// What a cut kept: counts for the test's log.
#[derive(Clone, Debug, Default)]
pub struct CutReport {
    /// Changing requests served before the cut.
    pub requests: u64,
    /// Files in the durable state.
    pub files: usize,
    /// Files that got a prefix of their unsynced writes (writeback before the cut).
    pub written_back: usize,
    /// Of those, files whose last applied write was torn at a sector boundary.
    pub torn: usize,
}

struct State {
    visible: Tree,
    durable: Tree,
    /// Unsynced changes per file since its durable data (empty for a new file).
    /// `None`: too many to keep; no writeback is modelled for that file.
    log: HashMap<u64, Option<(usize, Vec<Change>)>>,
    opens: HashMap<u64, u32>,
    dir_handles: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_ino: u64,
    next_fh: u64,
    /// Changing requests served so far.
    requests: u64,
    /// Cut when `requests` reaches this.
    cut_at: u64,
    seed: u64,
    /// Set at the cut: the durable state, with writeback applied.
    image: Option<(Tree, CutReport)>,
}

struct Shared {
    state: Mutex<State>,
    cut: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn new(tree: Tree) -> State {
        let next_ino = tree.nodes.keys().max().copied().unwrap_or(1) + 1;
        State {
            visible: tree.clone(),
            durable: tree,
            log: HashMap::new(),
            opens: HashMap::new(),
            dir_handles: HashMap::new(),
            next_ino,
            next_fh: 1,
            requests: 0,
            cut_at: u64::MAX,
            seed: 0,
            image: None,
        }
    }

    fn is_cut(&self) -> bool {
        self.image.is_some()
    }

    /// Every request first: EIO once the power is cut.
    fn alive(&self) -> Result<(), Errno> {
        if self.is_cut() {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    /// Every changing request first: counts it, and cuts instead when it is the armed one.
    fn change(&mut self, shared: &Shared) -> Result<(), Errno> {
        self.alive()?;
        self.requests += 1;
        if self.requests >= self.cut_at {
            self.cut(shared);
            return Err(Errno::EIO);
        }
        Ok(())
    }

    fn cut(&mut self, shared: &Shared) {
        if self.is_cut() {
            return;
        }
        let mut rng = Rng::new(self.seed);
        let mut image = self.durable.clone();
        let mut report = CutReport {
            requests: self.requests,
            ..Default::default()
        };
        let mut inos: Vec<u64> = self.log.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let (Some(Some((_, changes))), Some(node)) = (self.log.get(&ino), image.nodes.get_mut(&ino))
            else {
                continue;
            };
            if changes.is_empty() || node.kind != Kind::File || !rng.chance(1, 3) {
                continue;
            }
            report.written_back += 1;
            let whole = rng.below(changes.len() as u64 + 1) as usize;
            for change in &changes[..whole] {
                match change {
                    Change::Write(offset, bytes) => node.data.write(*offset, bytes),
                    Change::SetLen(len) => node.data.set_len(*len),
                }
            }
            // The next write, torn: only its sectors before a random boundary landed.
            if let Some(Change::Write(offset, bytes)) = changes.get(whole) {
                let end = offset + bytes.len() as u64;
                let first = (offset / SECTOR + 1) * SECTOR;
                if first < end {
                    let boundaries = (end - 1 - first) / SECTOR + 1;
                    let cut = first + rng.below(boundaries) * SECTOR;
                    node.data.write(*offset, &bytes[..(cut - offset) as usize]);
                    report.torn += 1;
                }
            }
        }
        let image = image.reachable();
        report.files = image.nodes.values().filter(|n| n.kind == Kind::File).count();
        self.image = Some((image, report));
        shared.cut.notify_all();
    }

    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.visible.nodes.get(&ino.0).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: INodeNo) -> Result<&mut Node, Errno> {
        self.visible.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: INodeNo) -> Result<&Node, Errno> {
        let node = self.node(ino)?;
        if node.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        Ok(node)
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.visible.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let (kind, nlink) = match node.kind {
            Kind::File => (FileType::RegularFile, node.nlink),
            Kind::Special(t) => (t, node.nlink),
            Kind::Dir => {
                let subdirs = node
                    .entries
                    .values()
                    .filter(|c| self.visible.nodes.get(c).is_some_and(|n| n.kind == Kind::Dir))
                    .count();
                (FileType::Directory, 2 + subdirs as u32)
            }
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size: node.data.len,
            blocks: node.data.len.div_ceil(512),
            atime: node.atime,
            mtime: node.mtime,
            ctime: node.ctime,
            crtime: node.ctime,
            kind,
            perm: node.perm,
            nlink,
            uid: node.uid,
            gid: node.gid,
            rdev: node.rdev,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Records an unsynced change of file `ino`, for writeback at a cut.
    fn log_change(&mut self, ino: u64, change: Change) {
        let entry = self.log.entry(ino).or_insert_with(|| Some((0, Vec::new())));
        if let Some((bytes, changes)) = entry {
            *bytes += match &change {
                Change::Write(_, b) => b.len(),
                Change::SetLen(_) => 0,
            };
            changes.push(change);
            if *bytes > LOG_LIMIT {
                *entry = None;
            }
        }
    }

    fn set_len(&mut self, ino: u64, len: u64) -> Result<(), Errno> {
        let node = self.visible.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if node.kind != Kind::File {
            return Err(Errno::EISDIR);
        }
        if node.data.len != len {
            node.data.set_len(len);
            node.mtime = SystemTime::now();
            node.ctime = node.mtime;
            self.log_change(ino, Change::SetLen(len));
        }
        Ok(())
    }

    /// Drops a file nothing names or holds open any more.
    fn release_if_unused(&mut self, ino: u64) {
        let unused = self.opens.get(&ino).copied().unwrap_or(0) == 0
            && self
                .visible
                .nodes
                .get(&ino)
                .is_some_and(|n| n.kind != Kind::Dir && n.nlink == 0);
        if unused {
            self.visible.nodes.remove(&ino);
            self.log.remove(&ino);
        }
    }

    /// Makes a new node named `name` in `parent`.
    fn make(&mut self, parent: INodeNo, name: &OsStr, node: Node) -> Result<FileAttr, Errno> {
        let dir = self.dir(parent)?;
        if dir.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        if node.kind == Kind::File {
            // Its durable data is empty: every write from now on is unsynced.
            self.log.insert(ino, Some((0, Vec::new())));
        }
        self.visible.nodes.insert(ino, node);
        let dir = self.node_mut(parent)?;
        dir.entries.insert(name.to_os_string(), ino);
        dir.mtime = SystemTime::now();
        dir.ctime = dir.mtime;
        self.attr(ino)
    }

    /// Removes the name `name` from `parent` (a file's link, or an empty folder).
    fn remove(&mut self, parent: INodeNo, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(Errno::ENOENT)?;
        let node = self.visible.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        match (node.kind == Kind::Dir, want_dir) {
            (true, false) => return Err(Errno::EISDIR),
            (false, true) => return Err(Errno::ENOTDIR),
            (true, true) if !node.entries.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        let dir = self.node_mut(parent)?;
        dir.entries.remove(name);
        dir.mtime = SystemTime::now();
        dir.ctime = dir.mtime;
        self.unlinked(ino);
        Ok(())
    }

    /// One name of `ino` is gone.
    fn unlinked(&mut self, ino: u64) {
        let Some(node) = self.visible.nodes.get_mut(&ino) else {
            return;
        };
        if node.kind == Kind::Dir {
            self.visible.nodes.remove(&ino);
            return;
        }
        node.nlink = node.nlink.saturating_sub(1);
        node.ctime = SystemTime::now();
        self.release_if_unused(ino);
    }

    fn rename(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(Errno::ENOENT)?;
        let target = self.dir(new_parent)?.entries.get(new_name).copied();
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            let other = target.ok_or(Errno::ENOENT)?;
            self.node_mut(parent)?.entries.insert(name.to_os_string(), other);
            self.node_mut(new_parent)?
                .entries
                .insert(new_name.to_os_string(), ino);
            return Ok(());
        }
        if target == Some(ino) {
            return Ok(());
        }
        if let Some(old) = target {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            let moving_dir = self.visible.nodes.get(&ino).is_some_and(|n| n.kind == Kind::Dir);
            let old_node = self.visible.nodes.get(&old).ok_or(Errno::ENOENT)?;
            match (moving_dir, old_node.kind == Kind::Dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !old_node.entries.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        let now = SystemTime::now();
        let from = self.node_mut(parent)?;
        from.entries.remove(name);
        from.mtime = now;
        from.ctime = now;
        let to = self.node_mut(new_parent)?;
        to.entries.insert(new_name.to_os_string(), ino);
        to.mtime = now;
        to.ctime = now;
        if let Some(old) = target {
            self.unlinked(old);
        }
        Ok(())
    }

    /// fsync of a file: its data and attributes become durable.
    fn fsync_file(&mut self, ino: u64) -> Result<(), Errno> {
        let node = self.visible.nodes.get(&ino).ok_or(Errno::ENOENT)?.clone();
        let entries = self
            .durable
            .nodes
            .get(&ino)
            .map(|n| n.entries.clone())
            .unwrap_or_default();
        self.durable.nodes.insert(ino, Node { entries, ..node });
        if let Some(log) = self.log.get_mut(&ino) {
            *log = Some((0, Vec::new()));
        }
        Ok(())
    }

    /// fsync of a folder: its entries (and attributes) become durable; a name of a node
    /// that has no durable state yet names it empty.
    fn fsync_dir(&mut self, ino: u64) -> Result<(), Errno> {
        let node = self.visible.nodes.get(&ino).ok_or(Errno::ENOENT)?.clone();
        for child in node.entries.values() {
            if !self.durable.nodes.contains_key(child) {
                if let Some(c) = self.visible.nodes.get(child) {
                    self.durable.nodes.insert(*child, c.skeleton());
                }
            }
        }
        let data = self
            .durable
            .nodes
            .get(&ino)
            .map(|n| n.data.clone())
            .unwrap_or_default();
        self.durable.nodes.insert(ino, Node { data, ..node });
        Ok(())
    }
}

/// The FUSE side.
struct Layer {
    shared: Arc<Shared>,
}

fn reply_attr(reply: ReplyAttr, attr: Result<FileAttr, Errno>) {
    match attr {
        Ok(a) => reply.attr(&TTL, &a),
        Err(e) => reply.error(e),
    }
}

fn reply_entry(reply: ReplyEntry, attr: Result<FileAttr, Errno>) {
    match attr {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, done: Result<(), Errno>) {
    match done {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn time_of(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Layer {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T, Errno>) -> Result<T, Errno> {
        let mut st = self.shared.lock();
        st.alive()?;
        f(&mut st)
    }

    fn changing<T>(&self, f: impl FnOnce(&mut State) -> Result<T, Errno>) -> Result<T, Errno> {
        let mut st = self.shared.lock();
        st.change(&self.shared)?;
        f(&mut st)
    }
}

impl Filesystem for Layer {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(
            reply,
            self.with(|st| {
                let ino = *st.dir(parent)?.entries.get(name).ok_or(Errno::ENOENT)?;
                st.attr(ino)
            }),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.with(|st| st.attr(ino.0)));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
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
        reply_attr(
            reply,
            self.changing(|st| {
                if let Some(size) = size {
                    st.set_len(ino.0, size)?;
                }
                let node = st.node_mut(ino)?;
                if let Some(mode) = mode {
                    node.perm = (mode & 0o7777) as u16;
                }
                if let Some(uid) = uid {
                    node.uid = uid;
                }
                if let Some(gid) = gid {
                    node.gid = gid;
                }
                if let Some(t) = atime {
                    node.atime = time_of(t);
                }
                if let Some(t) = mtime {
                    node.mtime = time_of(t);
                }
                node.ctime = SystemTime::now();
                st.attr(ino.0)
            }),
        );
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
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFSOCK => Kind::Special(FileType::Socket),
            libc::S_IFIFO => Kind::Special(FileType::NamedPipe),
            _ => return reply.error(Errno::EPERM),
        };
        let node = Node::new(kind, (mode & !umask & 0o7777) as u16, req.uid(), req.gid(), rdev);
        reply_entry(reply, self.changing(|st| st.make(parent, name, node)));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let mut node = Node::new(
            Kind::Dir,
            (mode & !umask & 0o7777) as u16,
            req.uid(),
            req.gid(),
            0,
        );
        node.nlink = 2;
        reply_entry(reply, self.changing(|st| st.make(parent, name, node)));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.changing(|st| st.remove(parent, name, false)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.changing(|st| st.remove(parent, name, true)));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.changing(|st| st.rename(parent, name, new_parent, new_name, flags)),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|st| {
            if st.node(ino)?.kind == Kind::Dir {
                return Err(Errno::EISDIR);
            }
            *st.opens.entry(ino.0).or_default() += 1;
            Ok(())
        }) {
            // Only the kernel changes these files, so its cache of them stays right.
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let node = Node::new(
            Kind::File,
            (mode & !umask & 0o7777) as u16,
            req.uid(),
            req.gid(),
            0,
        );
        match self.changing(|st| {
            let attr = st.make(parent, name, node)?;
            *st.opens.entry(attr.ino.0).or_default() += 1;
            Ok(attr)
        }) {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.with(|st| Ok(st.node(ino)?.data.read(offset, size as usize))) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.changing(|st| {
            let node = st.node_mut(ino)?;
            if node.kind != Kind::File {
                return Err(Errno::EISDIR);
            }
            node.data.write(offset, data);
            node.mtime = SystemTime::now();
            node.ctime = node.mtime;
            st.log_change(ino.0, Change::Write(offset, Arc::from(data)));
            Ok(())
        }) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Bookkeeping only, so also after a cut.
        let mut st = self.shared.lock();
        if let Some(n) = st.opens.get_mut(&ino.0) {
            *n = n.saturating_sub(1);
        }
        st.release_if_unused(ino.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_empty(reply, self.changing(|st| st.fsync_file(ino.0)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // A listing is served from the entries as they were at opendir, so that a
        // folder changing meanwhile never makes it skip or repeat a name.
        match self.with(|st| {
            let dir = st.dir(ino)?;
            let mut list = vec![
                (ino.0, FileType::Directory, OsString::from(".")),
                (1, FileType::Directory, "..".into()),
            ];
            for (name, child) in &dir.entries {
                let kind = match st.visible.nodes.get(child).map(|n| n.kind) {
                    Some(Kind::Dir) => FileType::Directory,
                    Some(Kind::Special(t)) => t,
                    _ => FileType::RegularFile,
                };
                list.push((*child, kind, name.clone()));
            }
            let fh = st.next_fh;
            st.next_fh += 1;
            st.dir_handles.insert(fh, list);
            Ok(fh)
        }) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let list = self.with(|st| st.dir_handles.get(&fh.0).cloned().ok_or(Errno::EBADF));
        match list {
            Ok(list) => {
                for (i, (ino, kind, name)) in list.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.shared.lock().dir_handles.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_empty(reply, self.changing(|st| st.fsync_dir(ino.0)));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.with(|st| {
            Ok(st
                .visible
                .nodes
                .values()
                .map(|n| n.data.len.div_ceil(4096))
                .sum::<u64>())
        }) {
            Ok(used) => {
                let blocks = CAPACITY / 4096;
                let free = blocks.saturating_sub(used);
                reply.statfs(blocks, free, free, 1 << 24, 1 << 24, 4096, 255, 4096);
            }
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply_empty(reply, self.with(|st| st.node(ino).map(|_| ())));
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.changing(|st| match mode {
                0 => {
                    let len = st.node(ino)?.data.len.max(offset + length);
                    st.set_len(ino.0, len)
                }
                libc::FALLOC_FL_KEEP_SIZE => Ok(()),
                _ => Err(Errno::EOPNOTSUPP),
            }),
        );
    }
}

/// Tells other threads whether the power of one layer is cut (a `restart` makes a new
/// layer: its watch is another one).
#[derive(Clone)]
pub struct CutWatch(Arc<Shared>);

impl CutWatch {
    /// True once the power is cut.
    pub fn is_cut(&self) -> bool {
        self.0.lock().is_cut()
    }
}

/// A mounted power-cut layer. Dropping it unmounts it (the test must first stop
/// whatever uses it).
pub struct PowerCut {
    mountpoint: PathBuf,
    shared: Arc<Shared>,
    session: Option<fuser::BackgroundSession>,
}

impl PowerCut {
    /// Mounts an empty layer at `mountpoint` (an existing empty folder).
    pub fn mount(mountpoint: &Path) -> PowerCut {
        PowerCut::mount_tree(mountpoint, Tree::fresh())
    }

    fn mount_tree(mountpoint: &Path, tree: Tree) -> PowerCut {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(tree)),
            cut: Condvar::new(),
        });
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("powercut".into()),
            MountOption::Subtype("powercut".into()),
            MountOption::RW,
            MountOption::Dev,
            MountOption::Exec,
        ];
        config.n_threads = Some(4);
        let layer = Layer {
            shared: shared.clone(),
        };
        let session = fuser::spawn_mount(layer, mountpoint, &config)
            .unwrap_or_else(|e| panic!("mounting the power-cut layer at {}: {e}", mountpoint.display()));
        PowerCut {
            mountpoint: mountpoint.to_path_buf(),
            shared,
            session: Some(session),
        }
    }

    /// Where the layer is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Cuts the power when the `n`-th changing request from now arrives (1 = the
    /// next one), with writeback chosen by `seed`.
    pub fn arm(&self, n: u64, seed: u64) {
        let mut st = self.shared.lock();
        st.cut_at = st.requests + n.max(1);
        st.seed = seed;
    }

    /// A watch on this layer's power, for other threads.
    pub fn watch(&self) -> CutWatch {
        CutWatch(self.shared.clone())
    }

    /// Changing requests served since the layer was mounted.
    pub fn requests(&self) -> u64 {
        self.shared.lock().requests
    }

    /// Cuts the power now (unless an armed cut came first), writeback chosen by `seed`.
    pub fn cut_now(&self, seed: u64) {
        let mut st = self.shared.lock();
        if !st.is_cut() {
            st.seed = seed;
        }
        st.cut(&self.shared);
    }

    /// True once the power is cut.
    pub fn is_cut(&self) -> bool {
        self.shared.lock().is_cut()
    }

    /// Waits up to `limit` for an armed cut; true when it happened.
    pub fn wait_cut(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut st = self.shared.lock();
        while !st.is_cut() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .shared
                .cut
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// After a cut: unmounts the layer and mounts a new one at the same place holding
    /// only what was durable (plus the writeback). The caller must have killed and
    /// unmounted everything that used the layer.
    pub fn restart(&mut self) -> CutReport {
        let (image, report) = self
            .shared
            .lock()
            .image
            .clone()
            .expect("restart() comes after a cut");
        self.unmount();
        *self = PowerCut::mount_tree(&self.mountpoint, image);
        report
    }

    fn unmount(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        if let Err(e) = session.umount_and_join() {
            // Something still holds a file on it: detach it; the old layer answers EIO.
            eprintln!(
                "power-cut layer {}: unmount failed ({e}); detaching it",
                self.mountpoint.display()
            );
            let _ = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

impl Drop for PowerCut {
    fn drop(&mut self) {
        // Cut first, so nothing still running on top can block the unmount on a request.
        self.cut_now(0);
        self.unmount();
    }
}
