//! Views: the live tree and every snapshot, under one mount root.
//!
//! Owns: kernel inode numbers (`Ino`: a catalog inode in a view), the `@name`
//! folders in the mount root, and the read-only rule: any change inside a snapshot
//! (or to an `@` folder itself) fails with `Error::ReadOnly` (EROFS). Reads of a
//! snapshot go straight to the catalog at that generation; writes go to the live
//! methods of `Fs`.

use super::published::AttrOverlay;
use super::{Allocate, Caller, Fs, RenameMode, SetAttr, Writer};
use crate::catalog::Catalog;
use crate::catalog::{FileKind, InodeAttr, COOKIE_END};
use crate::error::{Error, Result};
use crate::fs::read;
use crate::types::{GenId, Ino, InodeId, View};

/// One entry of a folder listing: where it sits (its cookie, see `list_dir`), its
/// name, its kernel inode number and its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub cookie: u64,
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
}

/// An inode as the kernel sees it: its number in a view, and its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub ino: Ino,
    pub attr: InodeAttr,
}

impl Node {
    /// True when the node belongs to a snapshot (never changes).
    pub fn is_snapshot(&self) -> bool {
        matches!(self.ino.split().0, View::Snapshot(_))
    }
}

/// Whether the mount root lists the `@` folders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapDir {
    /// Listed beside the live entries.
    #[default]
    Visible,
    /// Not listed, but reachable by name.
    Hidden,
}

/// One page of a folder: each entry with its attributes when they were asked for.
type Page = Vec<(Listed, Option<InodeAttr>)>;

/// Which view a page is read in: a snapshot, or the live tree, whose buffered
/// writes count in the attributes (from the core's state under its lock, or from
/// what it published for readers without it).

#[derive(Clone, Copy)]
enum Overlay<'a> {
    Snapshot,
    Live { buffered: &'a dyn AttrOverlay },
}

fn read_only(what: &str) -> Error {
    Error::ReadOnly(format!("{what} is in a snapshot"))
}

impl Fs {
    /// The live inode behind `ino`, or EROFS when `ino` is in a snapshot.
    pub fn live_id(&self, ino: Ino) -> Result<InodeId> {
        match ino.split() {
            (View::Live, id) => Ok(id),
            (View::Snapshot(_), _) => Err(read_only("the target")),
        }
    }

    /// EROFS when `name` in `parent` is an `@` folder of the mount root.
    fn guard_snapshot_name(&self, parent: InodeId, name: &[u8]) -> Result<()> {
        if parent == InodeId::ROOT
            && name.first() == Some(&b'@')
            && self.readers.with(|cat| find_snapshot(cat, name))?.is_some()
        {
            return Err(Error::ReadOnly(format!(
                "{} is a snapshot",
                String::from_utf8_lossy(name)
            )));
        }
        Ok(())
    }

    /// Attributes of `ino` in its view.
    pub fn node(&self, ino: Ino) -> Result<Node> {
        match ino.split() {
            (View::Live, id) => Ok(Node {
                ino,
                attr: self.getattr(id)?,
            }),
            (View::Snapshot(gen), id) => {
                let attr = self.readers.with(|cat| inode_in(cat, gen, id))?;
                Ok(Node { ino, attr })
            }
        }
    }

    /// Looks `name` up in folder `parent` of its view; `@name` in the mount root is a
    /// snapshot's root folder.
    pub fn lookup_node(&self, parent: Ino, name: &[u8]) -> Result<Node> {
        match parent.split() {
            (View::Live, InodeId::ROOT) if name.first() == Some(&b'@') => {
                let snapshot = self.readers.with(|cat| {
                    let Some(gen) = find_snapshot(cat, name)? else {
                        return Ok(None);
                    };
                    let attr = cat
                        .inode(gen, InodeId::ROOT)?
                        .ok_or_else(|| Error::CorruptCatalog(format!("snapshot {gen} has no root")))?;
                    Ok(Some(Node {
                        ino: Ino::snapshot(gen, InodeId::ROOT),
                        attr,
                    }))
                })?;
                if let Some(node) = snapshot {
                    return Ok(node);
                }
                let attr = self.lookup(InodeId::ROOT, name)?;
                Ok(Node {
                    ino: Ino::live(attr.id),
                    attr,
                })
            }
            (View::Live, id) => {
                let attr = self.lookup(id, name)?;
                Ok(Node {
                    ino: Ino::live(attr.id),
                    attr,
                })
            }
            (View::Snapshot(gen), id) => self.readers.with(|cat| {
                let dir = inode_in(cat, gen, id)?;
                if dir.kind != FileKind::Dir {
                    return Err(Error::NotDir(String::from_utf8_lossy(name).into_owned()));
                }
                let child = cat
                    .lookup(gen, id, name)?
                    .ok_or_else(|| Error::NotFound(String::from_utf8_lossy(name).into_owned()))?;
                let attr = inode_in(cat, gen, child).map_err(|e| self.dangling(e, id, name, child))?;
                Ok(Node {
                    ino: Ino::snapshot(gen, child),
                    attr,
                })
            }),
        }
    }

    /// One page of folder `dir` in its view (without "." and ".."): up to `limit`
    /// entries whose cookie is above `after`, in cookie order, so a listing resumes
    /// where the last page ended whatever changed meanwhile and costs what it returns.
    /// The mount root lists every snapshot as an `@name` folder after its own entries
    /// (cookies from `COOKIE_END`) unless `snapdir` hides them. A name that points at
    /// no inode is left out (logged once; looking it up answers EIO).
    pub fn list_dir(&self, dir: Ino, after: u64, limit: usize, snapdir: SnapDir) -> Result<Vec<Listed>> {
        Ok(self
            .page(dir, after, limit, snapdir, false)?
            .into_iter()
            .map(|(e, _)| e)
            .collect())
    }

    /// `list_dir` with each entry's attributes (buffered writes counted), read with
    /// the page: what the kernel's READDIRPLUS wants, without a query per entry.
    pub fn list_dir_plus(
        &self,
        dir: Ino,
        after: u64,
        limit: usize,
        snapdir: SnapDir,
    ) -> Result<Vec<(Listed, Node)>> {
        self.page(dir, after, limit, snapdir, true)?
            .into_iter()
            .map(|(e, attr)| {
                let attr =
                    attr.ok_or_else(|| Error::CorruptCatalog(format!("no attributes for {:?}", e.ino)))?;
                let node = Node { ino: e.ino, attr };
                Ok((e, node))
            })
            .collect()
    }

    fn page(
        &self,
        dir: Ino,
        after: u64,
        limit: usize,
        snapdir: SnapDir,
        with_attrs: bool,
    ) -> Result<Vec<(Listed, Option<InodeAttr>)>> {
        let (view, id) = dir.split();
        match view {
            // A snapshot never changes: a read connection of its own, no lock.
            View::Snapshot(gen) => self
                .readers
                .with(|cat| self.page_in(cat, Overlay::Snapshot, gen, id, after, limit, snapdir, with_attrs))
                .and_then(whole_view),
            View::Live => {
                let unlocked = self.unlocked(|cat, live, quiet| {
                    let overlay = Overlay::Live { buffered: quiet };
                    self.page_in(cat, overlay, live, id, after, limit, snapdir, with_attrs)
                });
                if let Some(page) = unlocked {
                    return page;
                }
                let st = self.lock();
                let overlay = Overlay::Live { buffered: &*st };
                self.page_in(
                    &st.catalog,
                    overlay,
                    st.catalog.live(),
                    id,
                    after,
                    limit,
                    snapdir,
                    with_attrs,
                )
                .and_then(whole_view)
            }
        }
    }

    /// `page` on catalog `cat` at generation `gen`, of the view `overlay` names;
    /// `None` when the overlay says the folder, or an entry whose attributes it
    /// lists, changed in a way `cat` does not show.
    #[allow(clippy::too_many_arguments)]
    fn page_in(
        &self,
        cat: &Catalog,
        overlay: Overlay<'_>,
        gen: GenId,
        id: InodeId,
        after: u64,
        limit: usize,
        snapdir: SnapDir,
        with_attrs: bool,
    ) -> Result<Option<Page>> {
        let folder = match overlay {
            // Names the batch changed, or a folder it removed: under the lock. A
            // folder it created or changed is as it left it.
            Overlay::Live { buffered } if buffered.dir_changed(id) => return Ok(None),
            Overlay::Live { buffered } => match buffered.attrs_left(id) {
                Some(Some(left)) => left,
                Some(None) => return Ok(None),
                None => inode_in(cat, gen, id)?,
            },
            Overlay::Snapshot => inode_in(cat, gen, id)?,
        };
        if folder.kind != FileKind::Dir {
            return Err(Error::NotDir(format!("inode {id}")));
        }
        let mut out = Vec::new();
        if after < COOKIE_END {
            let page = if with_attrs {
                cat.list_page_with_attrs(gen, id, after, limit)?
            } else {
                cat.list_page(gen, id, after, limit)?
                    .into_iter()
                    .map(|e| (e, None))
                    .collect()
            };
            let full = page.len() >= limit;
            for (e, mut attr) in page {
                let Some(kind) = e.kind else {
                    let _ = self.dangling(Error::NotFound(String::new()), id, &e.name, e.inode);
                    continue;
                };
                let ino = match overlay {
                    Overlay::Live { buffered } => {
                        if let Some(a) = attr.as_mut() {
                            match buffered.attrs_left(a.id) {
                                Some(Some(left)) => *a = left,
                                Some(None) => return Ok(None),
                                None => {}
                            }
                            buffered.apply(a);
                        }
                        Ino::live(e.inode)
                    }
                    Overlay::Snapshot => Ino::snapshot(gen, e.inode),
                };
                let listed = Listed {
                    cookie: e.cookie,
                    name: e.name,
                    ino,
                    kind,
                };
                out.push((listed, attr));
            }
            // A full page: the next call goes on from its last cookie.
            if full {
                return Ok(Some(out));
            }
        }
        let live = matches!(overlay, Overlay::Live { .. });
        if live && id == InodeId::ROOT && snapdir == SnapDir::Visible {
            for g in cat.generations()? {
                let cookie = COOKIE_END + g.id.0 as u64;
                if out.len() >= limit {
                    break;
                }
                let Some(name) = g.name.filter(|_| cookie > after) else {
                    continue;
                };
                let attr = if with_attrs {
                    Some(inode_in(cat, g.id, InodeId::ROOT)?)
                } else {
                    None
                };
                let listed = Listed {
                    cookie,
                    name: name.into_bytes(),
                    ino: Ino::snapshot(g.id, InodeId::ROOT),
                    kind: FileKind::Dir,
                };
                out.push((listed, attr));
            }
        }
        Ok(Some(out))
    }

    /// Every entry of folder `dir` in its view with its attributes (page after page of
    /// `list_dir`): for tests and tools, not for the kernel.
    pub fn readdir_nodes(&self, dir: Ino, snapdir: SnapDir) -> Result<Vec<(Vec<u8>, Node)>> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self.list_dir_plus(dir, after, 256, snapdir)?;
            let Some((last, _)) = page.last() else {
                return Ok(out);
            };
            after = last.cookie;
            out.extend(page.into_iter().map(|(e, node)| (e.name, node)));
        }
    }

    /// The target of a symlink in any view.
    pub fn readlink_node(&self, ino: Ino) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        if node.attr.kind != FileKind::Symlink {
            return Err(Error::InvalidArgument("not a symlink".into()));
        }
        Ok(node.attr.target)
    }

    /// Reads file bytes in any view.
    pub fn read_node(&self, ino: Ino, offset: u64, len: usize) -> Result<Vec<u8>> {
        // From taking the extents to fetching their chunks: gc waits for this.
        let _in_flight = self.reads.enter();
        match ino.split() {
            (View::Live, id) => self.read(id, offset, len),
            (View::Snapshot(gen), id) => {
                let (attr, extents) = self.readers.with(|cat| {
                    let attr = inode_in(cat, gen, id)?;
                    if attr.kind == FileKind::Dir {
                        return Err(Error::IsDir(format!("inode {id}")));
                    }
                    let extents = cat.placed_extents(gen, id, offset, offset.saturating_add(len as u64))?;
                    Ok((attr, read::placed(extents)?))
                })?;
                read::read_extents(&*self.store, &self.cache, &attr, &extents, offset, len)
            }
        }
    }

    /// Value of xattr `name` in any view.
    pub fn getxattr_node(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        match ino.split() {
            (View::Live, id) => self.getxattr(id, name),
            (View::Snapshot(gen), id) => self
                .readers
                .with(|cat| cat.xattr(gen, id, name))?
                .ok_or(Error::NoXattr),
        }
    }

    /// Xattr names in any view.
    pub fn listxattr_node(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        match ino.split() {
            (View::Live, id) => self.listxattr(id),
            (View::Snapshot(gen), id) => Ok(self
                .readers
                .with(|cat| cat.xattrs(gen, id))?
                .into_iter()
                .map(|(n, _)| n)
                .collect()),
        }
    }

    /// Creates `name` in live folder `parent` (EROFS in a snapshot).
    #[allow(clippy::too_many_arguments)]
    pub fn create_node(
        &self,
        caller: Caller,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        rdev: u64,
        target: &[u8],
    ) -> Result<Node> {
        let parent = self.live_id(parent)?;
        if parent == InodeId::ROOT
            && name.first() == Some(&b'@')
            && self.readers.with(|cat| find_snapshot(cat, name))?.is_some()
        {
            return Err(Error::Exists(String::from_utf8_lossy(name).into_owned()));
        }
        let attr = self.create(caller, parent, name, kind, mode, rdev, target)?;
        Ok(Node {
            ino: Ino::live(attr.id),
            attr,
        })
    }

    /// Hard-links live `ino` as `name` in live `parent`.
    pub fn link_node(&self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Node> {
        let (id, parent) = (self.live_id(ino)?, self.live_id(parent)?);
        self.guard_snapshot_name(parent, name)?;
        let attr = self.link(id, parent, name)?;
        Ok(Node {
            ino: Ino::live(attr.id),
            attr,
        })
    }

    /// Removes a name from a live folder (`dir`: rmdir).
    pub fn remove_node(&self, parent: Ino, name: &[u8], dir: bool) -> Result<()> {
        let parent = self.live_id(parent)?;
        self.guard_snapshot_name(parent, name)?;
        if dir {
            self.rmdir(parent, name)
        } else {
            self.unlink(parent, name)
        }
    }

    /// Renames within the live tree.
    pub fn rename_node(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<()> {
        let (parent, new_parent) = (self.live_id(parent)?, self.live_id(new_parent)?);
        self.guard_snapshot_name(parent, name)?;
        self.guard_snapshot_name(new_parent, new_name)?;
        self.rename(parent, name, new_parent, new_name, mode)
    }

    /// Changes attributes of a live inode, for `writer` (see `setattr_as`).
    pub fn setattr_node(&self, ino: Ino, set: &SetAttr, writer: &Writer<'_>) -> Result<Node> {
        let attr = self.setattr_as(self.live_id(ino)?, set, writer)?;
        Ok(Node { ino, attr })
    }

    /// Writes `data` into live file `ino` at `offset`, for `writer` (see `write_as`).
    pub fn write_node(&self, ino: Ino, offset: u64, data: &[u8], writer: &Writer<'_>) -> Result<usize> {
        self.write_as(self.live_id(ino)?, offset, data, writer)
    }

    /// Sets xattr `name` of a live inode (see `setxattr`).
    pub fn setxattr_node(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        create_only: bool,
        replace_only: bool,
    ) -> Result<()> {
        self.setxattr(self.live_id(ino)?, name, value, create_only, replace_only)
    }

    /// Removes xattr `name` of a live inode.
    pub fn removexattr_node(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.removexattr(self.live_id(ino)?, name)
    }

    /// fallocate on a live file, for `writer` (see `fallocate_as`).
    pub fn fallocate_node(
        &self,
        ino: Ino,
        offset: u64,
        len: u64,
        how: Allocate,
        writer: &Writer<'_>,
    ) -> Result<()> {
        self.fallocate_as(self.live_id(ino)?, offset, len, how, writer)
    }

    /// copy_file_range from `input` (any view) into live file `out`.
    pub fn copy_range_node(&self, input: Ino, off_in: u64, out: Ino, off_out: u64, len: u64) -> Result<u64> {
        self.copy_range(input, off_in, self.live_id(out)?, off_out, len)
    }

    /// Opens `ino` for reading (any view) or writing (live only).
    pub fn open_node(&self, ino: Ino, write: bool) -> Result<Node> {
        match ino.split() {
            (View::Live, id) => Ok(Node {
                ino,
                attr: self.open(id)?,
            }),
            (View::Snapshot(_), _) if write => Err(read_only("the file")),
            (View::Snapshot(_), _) => self.node(ino),
        }
    }

    /// fsync and fsyncdir: makes a live inode's data and metadata durable (and with
    /// them everything committed before); a snapshot always is durable, so there it
    /// commits and syncs nothing.
    pub fn fsync_node(&self, ino: Ino) -> Result<()> {
        match ino.split() {
            (View::Live, id) => self.fsync(Some(id)),
            (View::Snapshot(_), _) => Ok(()),
        }
    }

    /// Drops an open handle (a no-op in a snapshot).
    pub fn release_node(&self, ino: Ino) -> Result<()> {
        match ino.split() {
            (View::Live, id) => self.release(id),
            (View::Snapshot(_), _) => Ok(()),
        }
    }
}

/// The attributes of `id` in generation `gen`; NotFound when that view lacks it.
fn inode_in(cat: &Catalog, gen: GenId, id: InodeId) -> Result<InodeAttr> {
    cat.inode(gen, id)?
        .ok_or_else(|| Error::NotFound(format!("inode {id}")))
}

/// The generation of the snapshot called `name`, if there is one.
fn find_snapshot(cat: &Catalog, name: &[u8]) -> Result<Option<GenId>> {
    let Ok(name) = std::str::from_utf8(name) else {
        return Ok(None);
    };
    Ok(cat.find_snapshot(name)?.map(|g| g.id))
}

/// The page of a view that shows every change (a snapshot, or the live tree under
/// the core's lock), which never answers `None`.
pub(super) fn whole_view<T>(page: Option<T>) -> Result<T> {
    page.ok_or_else(|| Error::CorruptCatalog("a view that sees every change reported one unseen".into()))
}
