//! `snapfs restore`: copy a file or folder out of a snapshot into a plain folder,
//! keeping modes, owners (as root), times, xattrs, symlinks, hard links and holes.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::catalog::{Catalog, FileKind, InodeAttr};
use crate::error::{Error, Result};
use crate::store::Redundancy;
use crate::types::{GenId, InodeId};

/// What a restore wrote.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// Copies `path` of generation `gen` to `dest`, which must not exist yet.
pub fn restore(
    catalog: &Catalog,
    store: &dyn Redundancy,
    gen: GenId,
    path: &str,
    dest: &Path,
) -> Result<RestoreStats> {
    restore_with_progress(catalog, store, gen, path, dest, &mut |_| {})
}

/// The bytes of file data a restore of `path` writes (each hard-linked file once):
/// the total for a progress bar.
pub fn restore_size(catalog: &Catalog, gen: GenId, path: &str) -> Result<u64> {
    let root = super::history::find(catalog, gen, path)?.ok_or_else(|| not_in_snapshot(path))?;
    let (mut total, mut seen, mut todo) = (0, std::collections::HashSet::new(), vec![root]);
    while let Some(id) = todo.pop() {
        let Some(attr) = catalog.inode(gen, id)? else {
            continue;
        };
        match attr.kind {
            FileKind::Dir => todo.extend(catalog.readdir(gen, id)?.into_iter().map(|e| e.inode)),
            FileKind::File if seen.insert(id) => total += attr.size,
            _ => {}
        }
    }
    Ok(total)
}

/// `restore`, calling `progress(bytes written so far)` after each chunk.
pub fn restore_with_progress(
    catalog: &Catalog,
    store: &dyn Redundancy,
    gen: GenId,
    path: &str,
    dest: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<RestoreStats> {
    if dest.symlink_metadata().is_ok() {
        return Err(Error::Exists(format!(
            "{} (restore never overwrites; choose another destination)",
            dest.display()
        )));
    }
    let root = super::history::find(catalog, gen, path)?.ok_or_else(|| not_in_snapshot(path))?;
    let mut restorer = Restorer {
        catalog,
        store,
        gen,
        links: HashMap::new(),
        stats: RestoreStats::default(),
        progress,
    };
    restorer.copy(root, dest)?;
    Ok(restorer.stats)
}

struct Restorer<'a> {
    catalog: &'a Catalog,
    store: &'a dyn Redundancy,
    gen: GenId,
    links: HashMap<InodeId, PathBuf>,
    stats: RestoreStats,
    progress: &'a mut dyn FnMut(u64),
}

impl Restorer<'_> {
    fn copy(&mut self, id: InodeId, dest: &Path) -> Result<()> {
        let attr = self
            .catalog
            .inode(self.gen, id)?
            .ok_or_else(|| Error::CorruptCatalog(format!("inode {id} is named but missing")))?;
        let ctx = |what: &str| format!("{what} {}", dest.display());
        if attr.kind != FileKind::Dir && attr.nlink > 1 {
            if let Some(first) = self.links.get(&id) {
                return std::fs::hard_link(first, dest).map_err(Error::io_with(ctx("linking")));
            }
            self.links.insert(id, dest.to_path_buf());
        }
        match attr.kind {
            FileKind::Dir => {
                std::fs::create_dir(dest).map_err(Error::io_with(ctx("creating")))?;
                self.stats.dirs += 1;
                for entry in self.catalog.readdir(self.gen, id)? {
                    self.copy(entry.inode, &dest.join(OsStr::from_bytes(&entry.name)))?;
                }
            }
            FileKind::File => {
                let file = std::fs::File::create_new(dest).map_err(Error::io_with(ctx("creating")))?;
                let extents = self.catalog.placed_extents(self.gen, id, 0, attr.size)?;
                for (e, at) in crate::fs::placed(extents)? {
                    let plain = self.store.read(&e.chunk, at)?;
                    let bytes = plain
                        .get(e.chunk_offset as usize..(e.chunk_offset + e.length) as usize)
                        .ok_or_else(|| {
                            Error::CorruptCatalog(format!("extent of inode {id} overruns its chunk"))
                        })?;
                    file.write_all_at(bytes, e.offset)
                        .map_err(Error::io_with(ctx("writing")))?;
                    self.stats.bytes += e.length;
                    (self.progress)(self.stats.bytes);
                }
                file.set_len(attr.size).map_err(Error::io_with(ctx("sizing")))?;
                self.stats.files += 1;
            }
            FileKind::Symlink => {
                std::os::unix::fs::symlink(OsStr::from_bytes(&attr.target), dest)
                    .map_err(Error::io_with(ctx("creating")))?;
                self.stats.symlinks += 1;
            }
            kind => {
                let file_type = match kind {
                    FileKind::Fifo => rustix::fs::FileType::Fifo,
                    FileKind::Socket => rustix::fs::FileType::Socket,
                    FileKind::CharDevice => rustix::fs::FileType::CharacterDevice,
                    _ => rustix::fs::FileType::BlockDevice,
                };
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    dest,
                    file_type,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    attr.rdev,
                )
                .map_err(|e| Error::io(ctx("creating"), e.into()))?;
            }
        }
        self.finish(&attr, dest)
    }

    /// Xattrs, owner, mode and times, in the order that keeps each one.
    fn finish(&self, attr: &InodeAttr, dest: &Path) -> Result<()> {
        let ctx = |what: &str| format!("{what} {}", dest.display());
        for (name, value) in self.catalog.xattrs(self.gen, attr.id)? {
            rustix::fs::lsetxattr(
                dest,
                OsStr::from_bytes(&name),
                &value,
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| Error::io(ctx("setting xattrs of"), e.into()))?;
        }
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::lchown(dest, Some(attr.uid), Some(attr.gid))
                .map_err(Error::io_with(ctx("chown")))?;
        }
        if attr.kind != FileKind::Symlink {
            rustix::fs::chmod(dest, rustix::fs::Mode::from_raw_mode(attr.mode))
                .map_err(|e| Error::io(ctx("chmod"), e.into()))?;
        }
        let ts = |ns: i64| rustix::fs::Timespec {
            tv_sec: ns.div_euclid(1_000_000_000),
            tv_nsec: ns.rem_euclid(1_000_000_000),
        };
        let times = rustix::fs::Timestamps {
            last_access: ts(attr.atime_ns),
            last_modification: ts(attr.mtime_ns),
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            dest,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::io(ctx("setting times of"), e.into()))
    }
}

/// The error for a path the snapshot does not have.
fn not_in_snapshot(path: &str) -> Error {
    Error::NotFound(format!(
        "{path} in this snapshot (`snapfs log {path}` lists the snapshots that have it)"
    ))
}
