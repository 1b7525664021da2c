//! `snapfs import`: copy a plain folder tree into the live tree, without a mount.
//!
//! Keeps regular files (holes stay holes), folders, symlinks, hard links, fifos,
//! sockets and device nodes, modes, owners, atime/mtime to the nanosecond, and xattrs.
//! The whole import is one catalog transaction: it lands entirely or not at all.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::catalog::{FileKind, InodeAttr, NewInode, Txn};
use crate::error::{Error, Result};
use crate::ingest::{ChunkSink, IngestStats};
use crate::repo::Repo;
use crate::types::InodeId;

/// What an import copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Fifos, sockets and device nodes.
    pub specials: u64,
    /// Names that were extra hard links to an inode already imported.
    pub hard_links: u64,
    /// Bytes of regular files read (holes excluded).
    pub data_bytes: u64,
    pub ingest: IngestStats,
}

/// Copies the contents of folder `src` into the live folder `dest` (a path inside the
/// tree, "/" for the root). A name of `src` that already exists in `dest` is refused
/// before anything is written. `progress` is called after each file.
pub fn import(
    repo: &mut Repo,
    src: &Path,
    dest: &str,
    now_ns: i64,
    progress: &mut dyn FnMut(&ImportStats),
) -> Result<ImportStats> {
    let meta = std::fs::metadata(src).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(format!("import source {}", src.display())),
        _ => Error::io(format!("reading {}", src.display()), e),
    })?;
    if !meta.is_dir() {
        return Err(Error::NotDir(format!("import source {}", src.display())));
    }
    let Repo {
        catalog,
        store,
        settings,
        ..
    } = repo;
    let txn = catalog.write()?;
    let dest_id = resolve_dir(&txn, dest)?;
    for name in sorted_names(src)? {
        if txn.lookup(dest_id, name.as_bytes())?.is_some() {
            let shown = Path::new(dest).join(&name);
            return Err(Error::Exists(format!(
                "{} (already in the tree; import into another --to folder)",
                shown.display()
            )));
        }
    }
    let mut importer = Importer {
        txn: &txn,
        sink: ChunkSink::new(store.clone(), settings.chunker, settings.zstd_level),
        links: HashMap::new(),
        stats: ImportStats::default(),
        now_ns,
    };
    let mut stack: Vec<(PathBuf, InodeId)> = vec![(src.to_path_buf(), dest_id)];
    while let Some((dir, dir_id)) = stack.pop() {
        for name in sorted_names(&dir)? {
            let path = dir.join(&name);
            if let Some(sub) = importer.entry(&path, dir_id, name.as_bytes())? {
                stack.push((path, sub));
            }
            progress(&importer.stats);
        }
    }
    importer.sink.sync(&txn)?;
    let mut stats = importer.stats;
    stats.ingest = importer.sink.stats();
    txn.commit()?;
    Ok(stats)
}

struct Importer<'t, 'c> {
    txn: &'t Txn<'c>,
    sink: ChunkSink,
    links: HashMap<(u64, u64), InodeId>,
    stats: ImportStats,
    now_ns: i64,
}

impl Importer<'_, '_> {
    /// Imports one entry into folder `parent`; returns the new folder's id when it is one.
    fn entry(&mut self, path: &Path, parent: InodeId, name: &[u8]) -> Result<Option<InodeId>> {
        let meta =
            std::fs::symlink_metadata(path).map_err(Error::io_with(format!("reading {}", path.display())))?;
        let ft = meta.file_type();
        if !ft.is_dir() && meta.nlink() > 1 {
            if let Some(&id) = self.links.get(&(meta.dev(), meta.ino())) {
                self.txn.link(parent, name, id)?;
                self.stats.hard_links += 1;
                return Ok(None);
            }
        }
        let kind = if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_file() {
            FileKind::File
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_fifo() {
            FileKind::Fifo
        } else if ft.is_socket() {
            FileKind::Socket
        } else if ft.is_char_device() {
            FileKind::CharDevice
        } else {
            FileKind::BlockDevice
        };
        let target = if kind == FileKind::Symlink {
            std::fs::read_link(path)
                .map_err(Error::io_with(format!("reading link {}", path.display())))?
                .into_os_string()
                .into_vec()
        } else {
            Vec::new()
        };
        let attr = self.txn.create_linked(
            parent,
            name,
            &NewInode {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                rdev: if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
                    meta.rdev()
                } else {
                    0
                },
                time_ns: self.now_ns,
                target,
            },
        )?;
        let mut size = attr.size;
        match kind {
            FileKind::File => {
                size = meta.len();
                self.file_data(path, attr.id)?;
                self.stats.files += 1;
            }
            FileKind::Dir => self.stats.dirs += 1,
            FileKind::Symlink => self.stats.symlinks += 1,
            _ => self.stats.specials += 1,
        }
        // ACLs are not supported in the tree (see fs::setxattr); the mode carries them.
        for (xname, value) in read_xattrs(path)?
            .into_iter()
            .filter(|(n, _)| !n.starts_with(b"system.posix_acl_"))
        {
            self.txn.set_xattr(attr.id, &xname, &value)?;
        }
        let current = self.txn.expect_inode(attr.id)?;
        self.txn.set_inode(&InodeAttr {
            size,
            atime_ns: time_ns(meta.atime(), meta.atime_nsec()),
            mtime_ns: time_ns(meta.mtime(), meta.mtime_nsec()),
            ..current
        })?;
        if kind != FileKind::Dir && meta.nlink() > 1 {
            self.links.insert((meta.dev(), meta.ino()), attr.id);
        }
        Ok((kind == FileKind::Dir).then_some(attr.id))
    }

    /// Stores the data regions of a regular file; holes are skipped and stay holes.
    fn file_data(&mut self, path: &Path, id: InodeId) -> Result<()> {
        let ctx = || format!("reading {}", path.display());
        let file = File::open(path).map_err(Error::io_with(ctx()))?;
        for (start, end) in data_regions(&file, path)? {
            rustix::fs::seek(&file, rustix::fs::SeekFrom::Start(start))
                .map_err(|e| Error::io(ctx(), e.into()))?;
            let extents = self.sink.put_stream(self.txn, start, (&file).take(end - start))?;
            let got: u64 = extents.iter().map(|e| e.length).sum();
            if got != end - start {
                return Err(Error::io(
                    ctx(),
                    std::io::Error::other(format!(
                        "file changed while importing (read {got} of {} bytes)",
                        end - start
                    )),
                ));
            }
            self.stats.data_bytes += got;
            self.sink.record(self.txn)?;
            self.txn.set_extents(id, start, end, &extents)?;
        }
        Ok(())
    }
}

/// The `[start, end)` ranges of `file` that hold data, by SEEK_DATA/SEEK_HOLE.
fn data_regions(file: &File, path: &Path) -> Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom};
    let len = file
        .metadata()
        .map_err(Error::io_with(format!("reading {}", path.display())))?
        .len();
    let mut regions = Vec::new();
    let mut at = 0u64;
    while at < len {
        let start = match seek(file, SeekFrom::Data(at)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            // A filesystem without SEEK_DATA: all of it is data.
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => return Ok(vec![(0, len)]),
            Err(e) => return Err(Error::io(format!("finding data in {}", path.display()), e.into())),
        };
        let end = seek(file, SeekFrom::Hole(start))
            .map_err(|e| Error::io(format!("finding holes in {}", path.display()), e.into()))?
            .min(len);
        if end > start {
            regions.push((start, end));
        }
        at = end.max(start + 1);
    }
    Ok(regions)
}

/// Every xattr of `path` (not following a symlink).
pub(crate) fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let ctx = || format!("reading xattrs of {}", path.display());
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(ctx(), e.into())),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 4096];
        let len = loop {
            match rustix::fs::lgetxattr(path, OsStr::from_bytes(name), &mut value) {
                Ok(len) => break len,
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(e) => return Err(Error::io(ctx(), e.into())),
            }
        };
        value.truncate(len);
        out.push((name.to_vec(), value));
    }
    Ok(out)
}

/// The names in folder `dir`, sorted by bytes (so imports are deterministic).
fn sorted_names(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let ctx = || format!("reading folder {}", dir.display());
    let mut names = std::fs::read_dir(dir)
        .map_err(Error::io_with(ctx()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(Error::io_with(ctx()))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// The live folder at `path` ("/a/b" or "a/b"); errors name the missing part.
pub(crate) fn resolve_dir(txn: &Txn<'_>, path: &str) -> Result<InodeId> {
    let mut id = InodeId::ROOT;
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        id = txn
            .lookup(id, part.as_bytes())?
            .ok_or_else(|| Error::NotFound(format!("{path} in the live tree")))?;
        if txn.expect_inode(id)?.kind != FileKind::Dir {
            return Err(Error::NotDir(format!("{path} in the live tree")));
        }
    }
    Ok(id)
}

fn time_ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}
