//! Write transactions on the live generation.
//!
//! Every change goes through "close or delete the visible row, insert the new version":
//! a row an older generation can see is closed (`gen_to = live`) and a new one inserted;
//! a row born in the live generation is changed in place. Frozen generations therefore
//! never change. Link counts are kept here, so every caller gets them right.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::cell::RefCell;

use super::model::{ChunkInfo, Extent, FileKind, InodeAttr, NewInode};
use super::sql_err;
use super::{listing, read};
use crate::error::{Error, Result};
use crate::types::{ChunkId, GenId, InodeId, Location, MirrorId};

/// One write transaction on the live generation. Reads through it see its own changes.
/// Dropping it without `commit` rolls everything back.
pub struct Txn<'c> {
    tx: Inner<'c>,
    live: GenId,
    max_extent: u64,
    /// Where the ids whose rows this transaction changes are noted: in a batch only
    /// (a transaction of its own is in every view once committed).
    changed: Option<&'c RefCell<Changed>>,
    /// What this transaction's changes leave of attributes and names, in order:
    /// added to `changed` when it commits (in a batch only).
    left: RefCell<Left>,
}

/// Ids whose live rows changed: the inodes whose attributes, extents or xattrs
/// changed (and, of those, the ones whose xattrs changed), and the folders whose
/// names changed. While the catalog's batch is open
/// these rows are in no other connection's view, so a reader elsewhere must not
/// trust what it reads of them (`Catalog::take_changed`). A superset: a change rolled
/// back stays noted. And what the committed changes left (`Left`), which a reader
/// elsewhere may lay over what it reads instead.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changed {
    pub inodes: Vec<InodeId>,
    pub xattrs: Vec<InodeId>,
    pub dirs: Vec<InodeId>,
    pub left: Left,
}

/// What `Txn::unlink_or_remove` left of the inode the name pointed at.
#[derive(Debug)]
pub struct Unlinked {
    /// Its attributes after the unlink (one link fewer; as written, unless removed).
    pub attr: InodeAttr,
    /// It had no name left and was removed, with its content.
    pub removed: bool,
}

/// What committed changes left, in the order they were made: the attributes of an
/// inode (`None`: removed) and what a name in a folder points at (`None`: removed).
/// Every change of an inode's row or of a name goes through `Txn::set_inode`,
/// `insert_inode_row`, `remove_inode`, `insert_entry` or `remove_entry`, which note
/// it here; so a row a batch changed and committed is here with its last value, and
/// one it did not is as the last commit left it (a change rolled back restores it).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Left {
    pub attrs: Vec<(InodeId, Option<InodeAttr>)>,
    pub names: Vec<(InodeId, Vec<u8>, Option<InodeId>)>,
}

/// A transaction of its own, or a savepoint inside the catalog's open batch.
pub(super) enum Inner<'c> {
    Own(Transaction<'c>),
    InBatch(BatchSavepoint<'c>),
}

/// A savepoint for one change inside the catalog's open batch, rolled back if dropped
/// before `commit`. Its statements are prepared once per connection: rusqlite's
/// `Savepoint` parses "SAVEPOINT …" and "RELEASE …" on every change, which was most
/// of the SQL parsing during an rsync into the mount.
pub(super) struct BatchSavepoint<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> BatchSavepoint<'c> {
    /// Opens a savepoint on `conn`, which has a batch open.
    pub(super) fn begin(conn: &'c Connection) -> rusqlite::Result<BatchSavepoint<'c>> {
        conn.prepare_cached("SAVEPOINT change")?.execute([])?;
        Ok(BatchSavepoint { conn, open: true })
    }

    /// Makes the change part of the batch.
    fn commit(mut self) -> rusqlite::Result<()> {
        self.open = false;
        let released = self
            .conn
            .prepare_cached("RELEASE change")
            .and_then(|mut s| s.execute([]));
        if released.is_err() {
            self.roll_back();
        }
        released.map(|_| ())
    }

    fn roll_back(&self) {
        for sql in ["ROLLBACK TO change", "RELEASE change"] {
            if let Err(e) = self.conn.prepare_cached(sql).and_then(|mut s| s.execute([])) {
                log::warn!("catalog: {sql}: {e}");
            }
        }
    }
}

impl Drop for BatchSavepoint<'_> {
    fn drop(&mut self) {
        if self.open {
            self.roll_back();
        }
    }
}

impl std::ops::Deref for BatchSavepoint<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl std::ops::Deref for Inner<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match self {
            Inner::Own(t) => t,
            Inner::InBatch(s) => s,
        }
    }
}

impl<'c> Txn<'c> {
    pub(super) fn new(
        tx: Inner<'c>,
        live: GenId,
        max_extent: u64,
        changed: Option<&'c RefCell<Changed>>,
    ) -> Txn<'c> {
        Txn {
            tx,
            live,
            max_extent,
            changed,
            left: RefCell::default(),
        }
    }

    fn inode_changed(&self, id: InodeId) {
        if let Some(changed) = self.changed {
            changed.borrow_mut().inodes.push(id);
        }
    }

    fn xattrs_changed(&self, id: InodeId) {
        self.inode_changed(id);
        if let Some(changed) = self.changed {
            changed.borrow_mut().xattrs.push(id);
        }
    }

    fn dir_changed(&self, dir: InodeId) {
        if let Some(changed) = self.changed {
            changed.borrow_mut().dirs.push(dir);
        }
    }

    /// Notes the attributes a change leaves to inode `id` (`None`: removed).
    fn attrs_left(&self, id: InodeId, attr: Option<&InodeAttr>) {
        if self.changed.is_some() {
            self.left.borrow_mut().attrs.push((id, attr.cloned()));
        }
    }

    /// Notes what a change leaves name `name` of folder `dir` pointing at.
    fn name_left(&self, dir: InodeId, name: &[u8], inode: Option<InodeId>) {
        if self.changed.is_some() {
            self.left.borrow_mut().names.push((dir, name.to_vec(), inode));
        }
    }

    /// The generation this transaction writes.
    pub fn live(&self) -> GenId {
        self.live
    }

    /// Makes every change durable and visible, atomically.
    /// (In a batch, it becomes part of the batch, which the catalog commits as one.)
    pub fn commit(self) -> Result<()> {
        match self.tx {
            Inner::Own(t) => t.commit().map_err(sql_err("committing")),
            Inner::InBatch(s) => {
                s.commit().map_err(sql_err("committing"))?;
                if let Some(changed) = self.changed {
                    let left = self.left.into_inner();
                    let mut changed = changed.borrow_mut();
                    changed.left.attrs.extend(left.attrs);
                    changed.left.names.extend(left.names);
                }
                Ok(())
            }
        }
    }

    /// The transaction's connection, for the catalog's own checks and repairs.
    pub(super) fn conn(&self) -> &Connection {
        &self.tx
    }

    // ---- reads (live generation, including this transaction's changes) ----

    /// The live attributes of `id`.
    pub fn inode(&self, id: InodeId) -> Result<Option<InodeAttr>> {
        read::inode(&self.tx, self.live, id)
    }

    /// The live attributes of `id`, which must exist.
    pub fn expect_inode(&self, id: InodeId) -> Result<InodeAttr> {
        self.inode(id)?
            .ok_or_else(|| Error::NotFound(format!("inode {id}")))
    }

    /// Every live name of `inode`: (folder, name).
    pub fn names_of(&self, inode: InodeId) -> Result<Vec<(InodeId, Vec<u8>)>> {
        read::names_of(&self.tx, self.live, inode)
    }

    /// The inode `name` in `parent` points at in the live tree.
    pub fn lookup(&self, parent: InodeId, name: &[u8]) -> Result<Option<InodeId>> {
        read::lookup(&self.tx, self.live, parent, name)
    }

    /// The live names in folder `dir`.
    pub fn readdir(&self, dir: InodeId) -> Result<Vec<super::DirEntry>> {
        read::readdir(&self.tx, self.live, dir)
    }

    /// True when live folder `dir` has a name in it (one index probe, whatever its size).
    pub fn has_entries(&self, dir: InodeId) -> Result<bool> {
        listing::has_entries(&self.tx, self.live, dir)
    }

    /// The live extents of `inode` overlapping `[start, end)`.
    pub fn extents(&self, inode: InodeId, start: u64, end: u64) -> Result<Vec<Extent>> {
        Ok(
            read::extent_rows(&self.tx, self.live, inode, start, end, self.max_extent)?
                .into_iter()
                .map(|(e, _, _)| e)
                .collect(),
        )
    }

    /// What the catalog knows of chunk `id`.
    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkInfo>> {
        chunk(&self.tx, id)
    }

    /// The live value of xattr `name` of `inode`.
    pub fn xattr(&self, inode: InodeId, name: &[u8]) -> Result<Option<Vec<u8>>> {
        read::xattr(&self.tx, self.live, inode, name)
    }

    /// The folder that holds folder `dir` (folders have one name); `None` for the root
    /// or an unlinked folder.
    pub fn parent_of(&self, dir: InodeId) -> Result<Option<InodeId>> {
        Ok(read::names_of(&self.tx, self.live, dir)?
            .into_iter()
            .next()
            .map(|(p, _)| p))
    }

    /// Live inodes no live name points at (the root excepted).
    pub fn unnamed_inodes(&self) -> Result<Vec<InodeId>> {
        read::live_inodes(&self.tx, read::UNNAMED_INODES, "finding unnamed inodes")
    }

    // ---- inodes ----

    /// Creates an inode with no name yet (link count 0, or 1 for a folder's ".").
    pub fn create_inode(&self, new: &NewInode) -> Result<InodeAttr> {
        let attr = new_attr(self.allocate_inode_id()?, new, 0);
        self.insert_inode_row(&attr)?;
        Ok(attr)
    }

    /// Creates an inode whose one name is `name` in folder `parent` (which must not
    /// hold that name yet): `create_inode` and `link` in half the statements, since
    /// the new row is born with its link count (a create of a small file is mostly
    /// these). Returns its attributes.
    pub fn create_linked(&self, parent: InodeId, name: &[u8], new: &NewInode) -> Result<InodeAttr> {
        check_name(name)?;
        if self.lookup(parent, name)?.is_some() {
            return Err(Error::Exists(String::from_utf8_lossy(name).into_owned()));
        }
        let attr = new_attr(self.allocate_inode_id()?, new, 1);
        self.insert_inode_row(&attr)?;
        self.insert_entry(parent, name, attr.id, None)?;
        if attr.kind == FileKind::Dir {
            self.bump_nlink(parent, 1)?;
        }
        Ok(attr)
    }

    /// Takes the next free inode id.
    fn allocate_inode_id(&self) -> Result<InodeId> {
        let next: i64 = self
            .tx
            .prepare_cached("SELECT value FROM settings WHERE key = 'next_inode_id'")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, String>(0)))
            .map_err(sql_err("allocating an inode id"))?
            .parse()
            .map_err(|_| Error::CorruptCatalog("setting next_inode_id is not a number".into()))?;
        self.tx
            .prepare_cached("UPDATE settings SET value = ?1 WHERE key = 'next_inode_id'")
            .and_then(|mut s| s.execute(params![(next + 1).to_string()]))
            .map_err(sql_err("allocating an inode id"))?;
        Ok(InodeId(next))
    }

    /// Replaces the live attributes of `attr.id` with `attr` (every field).
    pub fn set_inode(&self, attr: &InodeAttr) -> Result<()> {
        self.inode_changed(attr.id);
        // A row is visible at `live` when gen_from <= live < gen_to, so a row born
        // live and still open is the visible one: try it first, which spares the
        // probe for every inode created or changed since the last snapshot (a
        // chmod, chown or utimes of a file just written is one statement).
        if self.update_inode_row(attr, self.live.0)? {
            self.attrs_left(attr.id, Some(attr));
            return Ok(());
        }
        let gen_from = self.visible_inode_gen(attr.id)?;
        if gen_from == self.live.0 {
            return Err(Error::CorruptCatalog(format!(
                "inode {} has a row born live that is not open",
                attr.id
            )));
        }
        self.close_row(
            "inodes",
            "inode_id = ?1 AND gen_from = ?2",
            params![attr.id.0, gen_from],
            gen_from,
        )?;
        self.insert_inode_row(attr)
    }

    /// Writes `attr` over the open row of `attr.id` born in generation `gen_from`;
    /// false when there is none.
    fn update_inode_row(&self, attr: &InodeAttr, gen_from: i64) -> Result<bool> {
        let updated = self
            .tx
            .prepare_cached(
                "UPDATE inodes SET kind = ?3, mode = ?4, uid = ?5, gid = ?6, size = ?7, nlink = ?8,
                 rdev = ?9, atime_ns = ?10, mtime_ns = ?11, ctime_ns = ?12, target = ?13
                 WHERE inode_id = ?1 AND gen_from = ?2 AND gen_to = ?14",
            )
            .map_err(sql_err("preparing inode update"))?
            .execute(params![
                attr.id.0,
                gen_from,
                attr.kind.code(),
                attr.mode & 0o7777,
                attr.uid,
                attr.gid,
                attr.size as i64,
                attr.nlink,
                attr.rdev as i64,
                attr.atime_ns,
                attr.mtime_ns,
                attr.ctime_ns,
                target_value(attr),
                GenId::OPEN.0,
            ])
            .map_err(sql_err("updating an inode"))?;
        Ok(updated > 0)
    }

    /// Removes inode `id` from the live tree: its attributes, extents and xattrs.
    /// The caller has removed every name that pointed at it.
    pub fn remove_inode(&self, id: InodeId) -> Result<()> {
        self.inode_changed(id);
        let gen_from = self.visible_inode_gen(id)?;
        self.close_row(
            "inodes",
            "inode_id = ?1 AND gen_from = ?2",
            params![id.0, gen_from],
            gen_from,
        )?;
        self.attrs_left(id, None);
        self.set_extents(id, 0, u64::MAX, &[])?;
        for (name, _) in read::xattrs(&self.tx, self.live, id)? {
            self.remove_xattr(id, &name)?;
        }
        Ok(())
    }

    fn visible_inode_gen(&self, id: InodeId) -> Result<i64> {
        let found: Option<(i64, i64)> = self
            .tx
            .prepare_cached(
                "SELECT gen_from, gen_to FROM inodes WHERE inode_id = ?1 AND gen_from <= ?2
                 ORDER BY gen_from DESC LIMIT 1",
            )
            .map_err(sql_err("preparing inode probe"))?
            .query_row(params![id.0, self.live.0], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(sql_err("finding an inode"))?;
        match found {
            Some((gen_from, gen_to)) if gen_to > self.live.0 => Ok(gen_from),
            _ => Err(Error::NotFound(format!("inode {id}"))),
        }
    }

    fn insert_inode_row(&self, attr: &InodeAttr) -> Result<()> {
        self.inode_changed(attr.id);
        let sql = format!(
            "INSERT INTO inodes ({}, gen_from, gen_to) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            read::INODE_COLUMNS
        );
        let mut stmt = self
            .tx
            .prepare_cached(&sql)
            .map_err(sql_err("preparing inode insert"))?;
        stmt.execute(params![
            attr.id.0,
            attr.kind.code(),
            attr.mode & 0o7777,
            attr.uid,
            attr.gid,
            attr.size as i64,
            attr.nlink,
            attr.rdev as i64,
            attr.atime_ns,
            attr.mtime_ns,
            attr.ctime_ns,
            target_value(attr),
            self.live.0,
            GenId::OPEN.0,
        ])
        .map_err(sql_err("inserting an inode"))?;
        self.attrs_left(attr.id, Some(attr));
        Ok(())
    }

    /// Closes (older generations still see it) or deletes (born live) one row.
    /// `key` selects exactly that row by its primary key, whose last part is `gen_from`.
    fn close_row(&self, table: &str, key: &str, args: &[&dyn rusqlite::ToSql], gen_from: i64) -> Result<()> {
        // A row no snapshot sees (born live, or born in snapshots all forgotten
        // since) goes; ended instead, it would keep its chunks referenced forever.
        let sql = if gen_from == self.live.0 || !seen_by_a_snapshot(&self.tx, gen_from, self.live)? {
            format!("DELETE FROM {table} WHERE {key}")
        } else {
            format!("UPDATE {table} SET gen_to = {} WHERE {key}", self.live.0)
        };
        let mut stmt = self
            .tx
            .prepare_cached(&sql)
            .map_err(sql_err("preparing row close"))?;
        let n = stmt.execute(args).map_err(sql_err("closing a row"))?;
        if n != 1 {
            return Err(Error::CorruptCatalog(format!(
                "closing a row of {table} touched {n} rows"
            )));
        }
        Ok(())
    }

    fn bump_nlink(&self, id: InodeId, delta: i64) -> Result<InodeAttr> {
        let mut attr = self.expect_inode(id)?;
        let nlink = attr.nlink as i64 + delta;
        if nlink < 0 {
            return Err(Error::CorruptCatalog(format!(
                "inode {id} link count would go below zero"
            )));
        }
        attr.nlink = nlink as u32;
        self.set_inode(&attr)?;
        Ok(attr)
    }

    /// Closes every live row of `table` (extents or xattrs) that belongs to `inode`,
    /// without looking at the inode (which a damaged catalog may lack).
    pub(super) fn close_live_rows_of(&self, table: &str, inode: InodeId) -> Result<()> {
        self.xattrs_changed(inode);
        close_live_rows(&self.tx, self.live, table, inode).map(|_| ())
    }

    /// Sets every chunk's reference count to the extent rows that name it, and keeps
    /// the garbage list in step; returns how many counts were wrong.
    pub(super) fn recount_refs(&self) -> Result<u64> {
        let fixed = self
            .tx
            .execute(
                "UPDATE chunks SET refs = (SELECT count(*) FROM extents e WHERE e.chunk_id = chunks.chunk_id)
                 WHERE refs != (SELECT count(*) FROM extents e WHERE e.chunk_id = chunks.chunk_id)",
                [],
            )
            .map_err(sql_err("recounting references"))?;
        self.tx
            .execute_batch(
                "INSERT OR IGNORE INTO chunk_garbage (chunk_id) SELECT chunk_id FROM chunks WHERE refs = 0;
                 DELETE FROM chunk_garbage WHERE chunk_id IN (SELECT chunk_id FROM chunks WHERE refs > 0);",
            )
            .map_err(sql_err("recounting references"))?;
        Ok(fixed as u64)
    }

    // ---- names ----

    /// Removes the live name `name` from `parent` and nothing else: no link count
    /// changes (for a repair of a name whose inode is gone).
    pub(super) fn drop_name(&self, parent: InodeId, name: &[u8]) -> Result<()> {
        self.remove_entry(parent, name).map(|_| ())
    }

    /// Adds the name `name` in folder `parent` for `inode` and counts the link (a folder
    /// also adds its ".." to the parent's count). `Error::Exists` when the name is taken.
    pub fn link(&self, parent: InodeId, name: &[u8], inode: InodeId) -> Result<()> {
        check_name(name)?;
        if self.lookup(parent, name)?.is_some() {
            return Err(Error::Exists(String::from_utf8_lossy(name).into_owned()));
        }
        self.insert_entry(parent, name, inode, None)?;
        let attr = self.bump_nlink(inode, 1)?;
        if attr.kind == FileKind::Dir {
            self.bump_nlink(parent, 1)?;
        }
        Ok(())
    }

    /// Removes the name `name` from folder `parent` and uncounts the link. Returns the
    /// inode it pointed at with its attributes after the change: at `nlink == 0` (a
    /// folder: 1, its own ".") the caller removes the inode once nothing holds it open.
    /// (The catalog's own tests; the filesystem unlinks with `unlink_or_remove`.)
    #[cfg(test)]
    pub fn unlink(&self, parent: InodeId, name: &[u8]) -> Result<InodeAttr> {
        let (inode, _) = self.remove_entry(parent, name)?;
        let attr = self.expect_inode(inode)?;
        if attr.kind == FileKind::Dir {
            self.bump_nlink(parent, -1)?;
        }
        self.bump_nlink(inode, -1)
    }

    /// `unlink`, deciding in the same step what becomes of an inode left with no name
    /// (a file with no link, a folder): when `remove_if_gone` says so for its
    /// attributes after the unlink, it is removed with its content at once
    /// (`remove_inode`), without first writing its last link count (a row version
    /// the same transaction would remove again); otherwise its new link count is
    /// written (0 for a folder), with ctime `now`.
    pub fn unlink_or_remove(
        &self,
        parent: InodeId,
        name: &[u8],
        now: i64,
        remove_if_gone: &dyn Fn(&InodeAttr) -> bool,
    ) -> Result<Unlinked> {
        let (inode, _) = self.remove_entry(parent, name)?;
        let mut attr = self.expect_inode(inode)?;
        let dir = attr.kind == FileKind::Dir;
        if dir {
            self.bump_nlink(parent, -1)?;
        }
        attr.nlink = attr
            .nlink
            .checked_sub(1)
            .ok_or_else(|| Error::CorruptCatalog(format!("inode {inode} link count would go below zero")))?;
        let gone = if dir { attr.nlink <= 1 } else { attr.nlink == 0 };
        if gone && remove_if_gone(&attr) {
            self.remove_inode(inode)?;
            return Ok(Unlinked { attr, removed: true });
        }
        if dir && gone {
            attr.nlink = 0;
        }
        attr.ctime_ns = now;
        self.set_inode(&attr)?;
        Ok(Unlinked { attr, removed: false })
    }

    /// Moves the name `from_name` in `from_parent` to `to_name` in `to_parent`. A name
    /// already at the target is unlinked first and returned (with its attributes after
    /// the change). POSIX checks (types, emptiness, loops) are the caller's.
    /// (The catalog's own tests; the filesystem renames with `rename_over`.)
    #[cfg(test)]
    pub fn rename(
        &self,
        from_parent: InodeId,
        from_name: &[u8],
        to_parent: InodeId,
        to_name: &[u8],
    ) -> Result<Option<InodeAttr>> {
        self.rename_unlinking(from_parent, from_name, to_parent, to_name, |t| {
            t.unlink(to_parent, to_name)
        })
    }

    /// `rename`, with the name at the target (if any) unlinked by `unlink_or_remove`.
    pub fn rename_over(
        &self,
        (from_parent, from_name): (InodeId, &[u8]),
        (to_parent, to_name): (InodeId, &[u8]),
        now: i64,
        remove_if_gone: &dyn Fn(&InodeAttr) -> bool,
    ) -> Result<Option<Unlinked>> {
        self.rename_unlinking(from_parent, from_name, to_parent, to_name, |t| {
            t.unlink_or_remove(to_parent, to_name, now, remove_if_gone)
        })
    }

    fn rename_unlinking<T>(
        &self,
        from_parent: InodeId,
        from_name: &[u8],
        to_parent: InodeId,
        to_name: &[u8],
        unlink: impl FnOnce(&Self) -> Result<T>,
    ) -> Result<Option<T>> {
        check_name(to_name)?;
        let replaced = match self.lookup(to_parent, to_name)? {
            Some(_) => Some(unlink(self)?),
            None => None,
        };
        let (inode, _) = self.remove_entry(from_parent, from_name)?;
        self.insert_entry(to_parent, to_name, inode, None)?;
        let attr = self.expect_inode(inode)?;
        if attr.kind == FileKind::Dir && from_parent != to_parent {
            self.bump_nlink(from_parent, -1)?;
            self.bump_nlink(to_parent, 1)?;
        }
        Ok(replaced)
    }

    /// Swaps the inodes two names point at (RENAME_EXCHANGE). Both must exist.
    pub fn exchange(&self, a_parent: InodeId, a_name: &[u8], b_parent: InodeId, b_name: &[u8]) -> Result<()> {
        // Both names exist throughout, so each keeps its place in listings.
        let (a, a_cookie) = self.remove_entry(a_parent, a_name)?;
        let (b, b_cookie) = self.remove_entry(b_parent, b_name)?;
        self.insert_entry(a_parent, a_name, b, Some(a_cookie))?;
        self.insert_entry(b_parent, b_name, a, Some(b_cookie))?;
        if a_parent != b_parent {
            let a_dir = self.expect_inode(a)?.kind == FileKind::Dir;
            let b_dir = self.expect_inode(b)?.kind == FileKind::Dir;
            let delta = a_dir as i64 - b_dir as i64;
            if delta != 0 {
                self.bump_nlink(a_parent, -delta)?;
                self.bump_nlink(b_parent, delta)?;
            }
        }
        Ok(())
    }

    /// Inserts the live row of `name` in `parent`, at `cookie` or at the one the
    /// listing rules give it (see `listing::cookie_for`).
    fn insert_entry(&self, parent: InodeId, name: &[u8], inode: InodeId, cookie: Option<u64>) -> Result<()> {
        self.dir_changed(parent);
        let cookie = match cookie {
            Some(c) => c,
            None => listing::cookie_for(&self.tx, parent, name)?,
        };
        let mut stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO dir_entries (parent_id, name, gen_from, gen_to, inode_id, cookie)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(sql_err("preparing entry insert"))?;
        stmt.execute(params![
            parent.0,
            name,
            self.live.0,
            GenId::OPEN.0,
            inode.0,
            cookie as i64
        ])
        .map_err(sql_err("adding a name"))?;
        self.name_left(parent, name, Some(inode));
        Ok(())
    }

    /// Closes the live row of `name` in `parent`; returns the inode it named and its
    /// cookie.
    fn remove_entry(&self, parent: InodeId, name: &[u8]) -> Result<(InodeId, u64)> {
        self.dir_changed(parent);
        let found: Option<(i64, i64, i64, i64)> = self
            .tx
            .prepare_cached(
                "SELECT gen_from, gen_to, inode_id, cookie FROM dir_entries
                 WHERE parent_id = ?1 AND name = ?2 AND gen_from <= ?3 ORDER BY gen_from DESC LIMIT 1",
            )
            .map_err(sql_err("preparing entry probe"))?
            .query_row(params![parent.0, name, self.live.0], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
            .map_err(sql_err("finding a name"))?;
        let (gen_from, inode, cookie) = match found {
            Some((gen_from, gen_to, inode, cookie)) if gen_to > self.live.0 => {
                (gen_from, inode, cookie as u64)
            }
            _ => return Err(Error::NotFound(String::from_utf8_lossy(name).into_owned())),
        };
        self.close_row(
            "dir_entries",
            "parent_id = ?1 AND name = ?2 AND gen_from = ?3",
            params![parent.0, name, gen_from],
            gen_from,
        )?;
        self.name_left(parent, name, None);
        Ok((InodeId(inode), cookie))
    }

    // ---- extents ----

    /// Makes `new` the content of bytes `[start, end)` of `inode`: extents overlapping the
    /// range are cut back to its edges, and `new` (which must lie inside the range, in
    /// order, without overlap) is inserted. Bytes of the range that `new` leaves out
    /// become holes. The chunks of `new` must already be registered (`add_chunk`).
    /// The file size is the caller's (`set_inode`).
    pub fn set_extents(&self, inode: InodeId, start: u64, end: u64, new: &[Extent]) -> Result<()> {
        self.inode_changed(inode);
        let mut last = start;
        for e in new {
            if e.offset < last || e.end() > end || e.length == 0 || e.length > self.max_extent {
                return Err(Error::InvalidArgument(format!(
                    "extent {}+{} does not fit the range {start}..{end} in order",
                    e.offset, e.length
                )));
            }
            last = e.end();
        }
        for (old, gen_from, _) in read::extent_rows(&self.tx, self.live, inode, start, end, self.max_extent)?
        {
            self.close_row(
                "extents",
                "inode_id = ?1 AND file_offset = ?2 AND gen_from = ?3",
                params![inode.0, old.offset as i64, gen_from],
                gen_from,
            )?;
            if old.offset < start {
                self.insert_extent(
                    inode,
                    &Extent {
                        length: start - old.offset,
                        ..old
                    },
                )?;
            }
            if old.end() > end {
                let cut = end - old.offset;
                self.insert_extent(
                    inode,
                    &Extent {
                        offset: end,
                        length: old.length - cut,
                        chunk: old.chunk,
                        chunk_offset: old.chunk_offset + cut,
                    },
                )?;
            }
        }
        for e in new {
            self.insert_extent(inode, e)?;
        }
        Ok(())
    }

    fn insert_extent(&self, inode: InodeId, e: &Extent) -> Result<()> {
        self.inode_changed(inode);
        let mut stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO extents (inode_id, file_offset, gen_from, gen_to, length, chunk_id, chunk_offset)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(sql_err("preparing extent insert"))?;
        stmt.execute(params![
            inode.0,
            e.offset as i64,
            self.live.0,
            GenId::OPEN.0,
            e.length as i64,
            &e.chunk.0[..],
            e.chunk_offset as i64
        ])
        .map_err(sql_err("inserting an extent"))?;
        Ok(())
    }

    /// Records that chunk `id` is stored (durably) in the pack entry at `at`. A chunk
    /// the catalog knows already keeps its row (its entry is as good; the new one is
    /// dead bytes).
    pub fn add_chunk(&self, id: &ChunkId, plain_size: u64, stored_size: u64, at: Location) -> Result<()> {
        let mut stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO chunks (chunk_id, plain_size, stored_size, pack_id, pack_offset, entry_len)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (chunk_id) DO NOTHING",
            )
            .map_err(sql_err("preparing chunk insert"))?;
        stmt.execute(params![
            &id.0[..],
            plain_size as i64,
            stored_size as i64,
            at.pack.0 as i64,
            at.offset as i64,
            i64::from(at.len)
        ])
        .map_err(sql_err("recording a chunk"))?;
        // Unreferenced until an extent names it (the insert trigger then takes it out
        // again): if none ever does, gc finds it here.
        self.tx
            .prepare_cached(
                "INSERT OR IGNORE INTO chunk_garbage (chunk_id)
                 SELECT chunk_id FROM chunks WHERE chunk_id = ?1 AND refs = 0",
            )
            .map_err(sql_err("preparing garbage note"))?
            .execute(params![&id.0[..]])
            .map_err(sql_err("noting an unreferenced chunk"))?;
        Ok(())
    }

    /// Notes that mirror `id` may lack what this transaction names (it is lost or
    /// still filling): it counts as incomplete, and is filled before it is trusted.
    pub fn mark_mirror_incomplete(&self, id: MirrorId) -> Result<()> {
        self.tx
            .prepare_cached(
                "UPDATE mirrors SET state = 'filling' WHERE mirror_id = ?1 AND state != 'filling'",
            )
            .map_err(sql_err("preparing a mirror update"))?
            .execute(params![id.0])
            .map_err(sql_err("marking a mirror incomplete"))?;
        Ok(())
    }

    // ---- xattrs ----

    /// Sets xattr `name` of `inode` to `value`.
    pub fn set_xattr(&self, inode: InodeId, name: &[u8], value: &[u8]) -> Result<()> {
        self.xattrs_changed(inode);
        if read::xattr(&self.tx, self.live, inode, name)?.is_some() {
            self.remove_xattr(inode, name)?;
        }
        let mut stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO xattrs (inode_id, name, gen_from, gen_to, value) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(sql_err("preparing xattr insert"))?;
        stmt.execute(params![inode.0, name, self.live.0, GenId::OPEN.0, value])
            .map_err(sql_err("setting an xattr"))?;
        Ok(())
    }

    /// Removes xattr `name` of `inode`; `Error::NoXattr` when it has none.
    pub fn remove_xattr(&self, inode: InodeId, name: &[u8]) -> Result<()> {
        self.xattrs_changed(inode);
        let found: Option<(i64, i64)> = self
            .tx
            .prepare_cached(
                "SELECT gen_from, gen_to FROM xattrs WHERE inode_id = ?1 AND name = ?2 AND gen_from <= ?3
                 ORDER BY gen_from DESC LIMIT 1",
            )
            .map_err(sql_err("preparing xattr probe"))?
            .query_row(params![inode.0, name, self.live.0], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(sql_err("finding an xattr"))?;
        match found {
            Some((gen_from, gen_to)) if gen_to > self.live.0 => self.close_row(
                "xattrs",
                "inode_id = ?1 AND name = ?2 AND gen_from = ?3",
                params![inode.0, name, gen_from],
                gen_from,
            ),
            _ => Err(Error::NoXattr),
        }
    }
}

fn target_value(attr: &InodeAttr) -> Option<&[u8]> {
    (attr.kind == FileKind::Symlink).then_some(attr.target.as_slice())
}

/// A file name must be 1..=255 bytes, without '/' or NUL, and not "." or "..".
/// The attributes of a new inode `id` with `names` names (a folder counts its own "."
/// as one more).
fn new_attr(id: InodeId, new: &NewInode, names: u32) -> InodeAttr {
    InodeAttr {
        id,
        kind: new.kind,
        mode: new.mode & 0o7777,
        uid: new.uid,
        gid: new.gid,
        size: if new.kind == FileKind::Symlink {
            new.target.len() as u64
        } else {
            0
        },
        nlink: names + u32::from(new.kind == FileKind::Dir),
        rdev: new.rdev,
        atime_ns: new.time_ns,
        mtime_ns: new.time_ns,
        ctime_ns: new.time_ns,
        target: new.target.clone(),
    }
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > 255 {
        return Err(Error::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(Error::InvalidArgument(format!(
            "invalid file name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

pub(super) fn chunk(conn: &Connection, id: &ChunkId) -> Result<Option<ChunkInfo>> {
    let sql = format!("SELECT {} FROM chunks WHERE chunk_id = ?1", read::CHUNK_COLUMNS);
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(sql_err("preparing chunk probe"))?;
    stmt.query_row(params![&id.0[..]], read::chunk_from_row)
        .optional()
        .map_err(sql_err("reading a chunk"))
}

/// True when a snapshot (a generation in `[gen_from, live)`) sees a row born in
/// generation `gen_from`.
fn seen_by_a_snapshot(conn: &Connection, gen_from: i64, live: GenId) -> Result<bool> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM generations WHERE gen_id >= ?1 AND gen_id < ?2)")
        .map_err(sql_err("preparing snapshot probe"))?
        .query_row(params![gen_from, live.0], |r| r.get(0))
        .map_err(sql_err("finding a snapshot that sees a row"))
}

/// Closes every live row of `table` that belongs to `inode`: deleted when no
/// snapshot sees it (born in `live`, or in snapshots all forgotten since), else
/// ended there. Returns the rows touched. For tables keyed by `inode_id` (inodes,
/// extents, xattrs).
pub(super) fn close_live_rows(conn: &Connection, live: GenId, table: &str, inode: InodeId) -> Result<u64> {
    let mut touched = 0;
    for sql in [
        format!(
            "DELETE FROM {table} WHERE inode_id = ?1 AND gen_to = ?2 AND (gen_from = ?3 OR NOT EXISTS (
                 SELECT 1 FROM generations g WHERE g.gen_id >= {table}.gen_from AND g.gen_id < ?3))"
        ),
        format!("UPDATE {table} SET gen_to = ?3 WHERE inode_id = ?1 AND gen_to = ?2 AND gen_from < ?3"),
    ] {
        touched += conn
            .execute(&sql, params![inode.0, GenId::OPEN.0, live.0])
            .map_err(sql_err("closing rows"))?;
    }
    Ok(touched as u64)
}
