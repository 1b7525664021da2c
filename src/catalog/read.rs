//! Queries that read one generation's view: inodes, names, extents, xattrs.
//!
//! Free functions over a `rusqlite::Connection`, so that the read-only catalog and a
//! write transaction (which sees its own uncommitted rows) share them. Each query is
//! one probe of a primary key: "the row with the greatest gen_from <= G, if its
//! gen_to > G" (see schema.sql).

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::model::{ChunkInfo, DirEntry, Extent, FileKind, InodeAttr};
use super::sql_err;
use crate::error::{Error, Result};
use crate::types::{ChunkId, GenId, InodeId, Location, PackId};

pub(super) const INODE_COLUMNS: &str =
    "inode_id, kind, mode, uid, gid, size, nlink, rdev, atime_ns, mtime_ns, ctime_ns, target";

pub(super) fn inode_from_row(row: &Row<'_>) -> rusqlite::Result<InodeAttr> {
    let code: i64 = row.get(1)?;
    let kind = FileKind::from_code(code).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            rusqlite::types::Type::Integer,
            format!("unknown inode kind {code}").into(),
        )
    })?;
    Ok(InodeAttr {
        id: InodeId(row.get(0)?),
        kind,
        mode: row.get(2)?,
        uid: row.get(3)?,
        gid: row.get(4)?,
        size: row.get::<_, i64>(5)? as u64,
        nlink: row.get(6)?,
        rdev: row.get::<_, i64>(7)? as u64,
        atime_ns: row.get(8)?,
        mtime_ns: row.get(9)?,
        ctime_ns: row.get(10)?,
        target: row.get::<_, Option<Vec<u8>>>(11)?.unwrap_or_default(),
    })
}

/// Live inodes that no live name points at (the root excepted); parameter 1 is the
/// open generation.
/// `UNNAMED_INODES` among the live inodes with link count 0, which is what an open
/// file unlinked, or a folder removed, while in use is left with (their index keeps
/// this cheap). Schema 2 has no such index: the same answer, by a scan.
pub(super) const NAMELESS_INODES: &str = "SELECT i.inode_id FROM inodes i
     WHERE i.gen_to = 9223372036854775807 AND i.nlink = 0 AND i.inode_id != 1 AND ?1 = ?1 AND NOT EXISTS (
         SELECT 1 FROM dir_entries e WHERE e.inode_id = i.inode_id AND e.gen_to = ?1)";

pub(super) const UNNAMED_INODES: &str = "SELECT i.inode_id FROM inodes i
     WHERE i.gen_to = ?1 AND i.inode_id != 1 AND NOT EXISTS (
         SELECT 1 FROM dir_entries e WHERE e.inode_id = i.inode_id AND e.gen_to = ?1)";

/// The live inodes `sql` (`NAMELESS_INODES` or `UNNAMED_INODES`) selects.
pub(super) fn live_inodes(conn: &Connection, sql: &str, context: &'static str) -> Result<Vec<InodeId>> {
    let mut stmt = conn.prepare_cached(sql).map_err(sql_err(context))?;
    let rows = stmt
        .query_map(params![GenId::OPEN.0], |r| Ok(InodeId(r.get(0)?)))
        .map_err(sql_err(context))?;
    rows.collect::<rusqlite::Result<_>>().map_err(sql_err(context))
}

/// The attributes of `id` in generation `gen`; `None` when `gen` does not see it.
pub fn inode(conn: &Connection, gen: GenId, id: InodeId) -> Result<Option<InodeAttr>> {
    let sql = format!(
        "SELECT {INODE_COLUMNS}, gen_to FROM inodes
         WHERE inode_id = ?1 AND gen_from <= ?2 ORDER BY gen_from DESC LIMIT 1"
    );
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(sql_err("preparing inode query"))?;
    let found = stmt
        .query_row(params![id.0, gen.0], |row| {
            Ok((inode_from_row(row)?, row.get::<_, i64>(12)?))
        })
        .optional()
        .map_err(sql_err("reading an inode"))?;
    Ok(found.filter(|(_, gen_to)| *gen_to > gen.0).map(|(attr, _)| attr))
}

/// The inode that `name` in folder `parent` points at in `gen`; `None` when absent.
pub fn lookup(conn: &Connection, gen: GenId, parent: InodeId, name: &[u8]) -> Result<Option<InodeId>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT inode_id, gen_to FROM dir_entries
             WHERE parent_id = ?1 AND name = ?2 AND gen_from <= ?3
             ORDER BY gen_from DESC LIMIT 1",
        )
        .map_err(sql_err("preparing lookup"))?;
    let found = stmt
        .query_row(params![parent.0, name, gen.0], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .optional()
        .map_err(sql_err("looking up a name"))?;
    Ok(found
        .filter(|(_, gen_to)| *gen_to > gen.0)
        .map(|(id, _)| InodeId(id)))
}

/// Every name in folder `dir` in `gen`, sorted by name bytes, with each target's kind.
pub fn readdir(conn: &Connection, gen: GenId, dir: InodeId) -> Result<Vec<DirEntry>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT e.name, e.inode_id,
                    (SELECT i.kind FROM inodes i
                     WHERE i.inode_id = e.inode_id AND i.gen_from <= ?2 AND i.gen_to > ?2)
             FROM dir_entries e
             WHERE e.parent_id = ?1 AND e.gen_from <= ?2 AND e.gen_to > ?2
             ORDER BY e.name",
        )
        .map_err(sql_err("preparing readdir"))?;
    let rows = stmt
        .query_map(params![dir.0, gen.0], |row| {
            Ok((
                row.get::<_, Vec<u8>>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, Option<i64>>(2)?,
            ))
        })
        .map_err(sql_err("listing a folder"))?;
    let mut entries = Vec::new();
    for row in rows {
        let (name, inode, kind) = row.map_err(sql_err("listing a folder"))?;
        let kind = kind.and_then(FileKind::from_code).ok_or_else(|| {
            Error::CorruptCatalog(format!(
                "entry {:?} in folder {dir} points at inode {inode}, which generation {gen} does not have",
                String::from_utf8_lossy(&name)
            ))
        })?;
        entries.push(DirEntry {
            name,
            inode: InodeId(inode),
            kind,
        });
    }
    Ok(entries)
}

/// Every (folder, name) pointing at `inode` in `gen`.
pub fn names_of(conn: &Connection, gen: GenId, inode: InodeId) -> Result<Vec<(InodeId, Vec<u8>)>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT parent_id, name FROM dir_entries
             WHERE inode_id = ?1 AND gen_from <= ?2 AND gen_to > ?2",
        )
        .map_err(sql_err("preparing names query"))?;
    let rows = stmt
        .query_map(params![inode.0, gen.0], |row| {
            Ok((InodeId(row.get(0)?), row.get::<_, Vec<u8>>(1)?))
        })
        .map_err(sql_err("finding the names of an inode"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(sql_err("finding the names of an inode"))
}

/// An extent row as `extent_rows` reads it: the extent, its row's gen_from, and its
/// chunk's pack entry (`None` when the chunk has no place yet: an upgrade under way).
pub(super) type ExtentRow = (Extent, i64, Option<Location>);

/// The extents of `inode` in `gen` that overlap `[start, end)`, in file order, each
/// with the gen_from of its row and its chunk's place. `max_extent` bounds every extent's length
/// (settings.chunk_max), which lets the query start its index scan near `start`.
pub(super) fn extent_rows(
    conn: &Connection,
    gen: GenId,
    inode: InodeId,
    start: u64,
    end: u64,
    max_extent: u64,
) -> Result<Vec<ExtentRow>> {
    if start >= end {
        return Ok(Vec::new());
    }
    let scan_from = start.saturating_sub(max_extent) as i64;
    let end = end.min(i64::MAX as u64) as i64;
    let mut stmt = conn
        .prepare_cached(
            "SELECT e.file_offset, e.length, e.chunk_id, e.chunk_offset, e.gen_from,
                    c.pack_id, c.pack_offset, c.entry_len
             FROM extents e LEFT JOIN chunks c ON c.chunk_id = e.chunk_id
             WHERE e.inode_id = ?1 AND e.file_offset >= ?2 AND e.file_offset < ?3
               AND e.gen_from <= ?4 AND e.gen_to > ?4
             ORDER BY e.file_offset",
        )
        .map_err(sql_err("preparing extent query"))?;
    let rows = stmt
        .query_map(params![inode.0, scan_from, end, gen.0], |row| {
            Ok((
                row.get::<_, i64>(0)? as u64,
                row.get::<_, i64>(1)? as u64,
                row.get::<_, Vec<u8>>(2)?,
                row.get::<_, i64>(3)? as u64,
                row.get::<_, i64>(4)?,
                location_from_row(row, 5)?,
            ))
        })
        .map_err(sql_err("reading extents"))?;
    let mut out = Vec::new();
    for row in rows {
        let (offset, length, chunk, chunk_offset, gen_from, at) = row.map_err(sql_err("reading extents"))?;
        if offset + length <= start {
            continue;
        }
        let chunk = ChunkId::from_slice(&chunk).ok_or_else(|| {
            Error::CorruptCatalog(format!(
                "extent of inode {inode} at {offset} has a malformed chunk id"
            ))
        })?;
        out.push((
            Extent {
                offset,
                length,
                chunk,
                chunk_offset,
            },
            gen_from,
            at,
        ));
    }
    Ok(out)
}

/// The value of xattr `name` of `inode` in `gen`; `None` when absent.
pub fn xattr(conn: &Connection, gen: GenId, inode: InodeId, name: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT value, gen_to FROM xattrs
             WHERE inode_id = ?1 AND name = ?2 AND gen_from <= ?3
             ORDER BY gen_from DESC LIMIT 1",
        )
        .map_err(sql_err("preparing xattr query"))?;
    let found = stmt
        .query_row(params![inode.0, name, gen.0], |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?))
        })
        .optional()
        .map_err(sql_err("reading an xattr"))?;
    Ok(found.filter(|(_, gen_to)| *gen_to > gen.0).map(|(v, _)| v))
}

/// Every xattr of `inode` in `gen`, sorted by name.
pub fn xattrs(conn: &Connection, gen: GenId, inode: InodeId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT name, value FROM xattrs
             WHERE inode_id = ?1 AND gen_from <= ?2 AND gen_to > ?2 ORDER BY name",
        )
        .map_err(sql_err("preparing xattr list"))?;
    let rows = stmt
        .query_map(params![inode.0, gen.0], |row| Ok((row.get(0)?, row.get(1)?)))
        .map_err(sql_err("listing xattrs"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(sql_err("listing xattrs"))
}

/// Columns of a `chunks` row read by `chunk_from_row`, in its order.
pub(super) const CHUNK_COLUMNS: &str =
    "chunk_id, plain_size, stored_size, pack_id, pack_offset, entry_len, refs";

/// The location in columns `first..first + 3` (pack_id, pack_offset, entry_len);
/// `None` when pack_id is NULL.
pub(super) fn location_from_row(row: &Row<'_>, first: usize) -> rusqlite::Result<Option<Location>> {
    let Some(pack) = row.get::<_, Option<i64>>(first)? else {
        return Ok(None);
    };
    Ok(Some(Location {
        pack: PackId(pack as u64),
        offset: row.get::<_, i64>(first + 1)? as u64,
        len: row.get::<_, i64>(first + 2)? as u32,
    }))
}

/// A `chunks` row (selected with `CHUNK_COLUMNS`, possibly with a table prefix).
pub(super) fn chunk_from_row(row: &Row<'_>) -> rusqlite::Result<ChunkInfo> {
    let bytes: Vec<u8> = row.get(0)?;
    let id = ChunkId::from_slice(&bytes).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, "malformed chunk id".into())
    })?;
    Ok(ChunkInfo {
        id,
        plain_size: row.get::<_, i64>(1)? as u64,
        stored_size: row.get::<_, i64>(2)? as u64,
        location: location_from_row(row, 3)?,
        refs: row.get::<_, i64>(6)? as u64,
    })
}
