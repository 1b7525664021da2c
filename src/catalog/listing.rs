//! Folder listings in a stable order: each name's cookie (`dir_entries.cookie`, see
//! schema.sql), how a new row gets one, pages of a listing that resume after a
//! cookie, and the migration that gives version-1 catalogs their cookies.
//!
//! A listing resumes "after the last cookie returned", never at a position in a fresh
//! list, so it costs what it returns and holds nothing between pages; and since a name
//! keeps its cookie, every name that exists for the whole of a listing is returned
//! exactly once while others are created, renamed and removed beside it.

use std::collections::HashSet;

use rusqlite::{params, Connection, OptionalExtension};

use super::model::{FileKind, InodeAttr};
use super::{read, sql_err};
use crate::error::Result;
use crate::types::{GenId, InodeId};

/// The smallest cookie a name can have: offsets below are the kernel's "." and ".."
/// (and 0, "from the start").
pub const FIRST_COOKIE: u64 = 16;

/// One past the largest cookie a name can have; values above are free for listings
/// to append entries of their own (the mount root's `@` folders).
pub const COOKIE_END: u64 = 1 << 62;

/// One entry of a page: its cookie, name, inode, and the inode's kind in that
/// generation (`None` when the name points at an inode the generation lacks: a
/// damaged catalog, which the listing reports instead of failing whole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedEntry {
    pub cookie: u64,
    pub name: Vec<u8>,
    pub inode: InodeId,
    pub kind: Option<FileKind>,
}

/// Where a name sits in listings when nothing forces another value: a hash of the
/// name in `[FIRST_COOKIE, COOKIE_END)`.
pub fn name_hash(name: &[u8]) -> u64 {
    let digest = blake3::hash(name);
    let mut eight = [0u8; 8];
    eight.copy_from_slice(&digest.as_bytes()[..8]);
    FIRST_COOKIE + u64::from_le_bytes(eight) % (COOKIE_END - FIRST_COOKIE)
}

/// The cookie for a new row of `name` in folder `parent`: that of the name's newest
/// row if it has one (in any generation), else its hash, moved on past values other
/// names of the folder hold (a collision: about one in 2^62 per pair of names).
pub(super) fn cookie_for(conn: &Connection, parent: InodeId, name: &[u8]) -> Result<u64> {
    let previous: Option<i64> = conn
        .prepare_cached(
            "SELECT cookie FROM dir_entries WHERE parent_id = ?1 AND name = ?2 ORDER BY gen_from DESC LIMIT 1",
        )
        .map_err(sql_err("preparing cookie probe"))?
        .query_row(params![parent.0, name], |r| r.get(0))
        .optional()
        .map_err(sql_err("finding a name's cookie"))?;
    if let Some(c) = previous {
        return Ok(c as u64);
    }
    let mut probe = conn
        .prepare_cached(
            "SELECT name FROM dir_entries WHERE parent_id = ?1 AND cookie = ?2 AND name != ?3 LIMIT 1",
        )
        .map_err(sql_err("preparing cookie probe"))?;
    let mut cookie = name_hash(name);
    loop {
        let taken = probe
            .query_row(params![parent.0, cookie as i64, name], |_| Ok(()))
            .optional()
            .map_err(sql_err("probing a cookie"))?;
        if taken.is_none() {
            return Ok(cookie);
        }
        cookie = if cookie + 1 >= COOKIE_END {
            FIRST_COOKIE
        } else {
            cookie + 1
        };
    }
}

/// Up to `limit` names of folder `dir` in `gen` with a cookie above `after`, in
/// cookie order.
pub fn page(
    conn: &Connection,
    gen: GenId,
    dir: InodeId,
    after: u64,
    limit: usize,
) -> Result<Vec<ListedEntry>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT e.cookie, e.name, e.inode_id,
                    (SELECT i.kind FROM inodes i
                     WHERE i.inode_id = e.inode_id AND i.gen_from <= ?2 AND i.gen_to > ?2)
             FROM dir_entries e INDEXED BY dir_entries_by_cookie
             WHERE e.parent_id = ?1 AND e.cookie > ?3 AND e.gen_to > ?2 AND e.gen_from <= ?2
             ORDER BY e.cookie LIMIT +?4",
        )
        .map_err(sql_err("preparing a listing"))?;
    let after = after.min(i64::MAX as u64) as i64;
    let rows = stmt
        .query_map(params![dir.0, gen.0, after, limit as i64], |row| {
            Ok(ListedEntry {
                cookie: row.get::<_, i64>(0)? as u64,
                name: row.get(1)?,
                inode: InodeId(row.get(2)?),
                kind: row.get::<_, Option<i64>>(3)?.and_then(FileKind::from_code),
            })
        })
        .map_err(sql_err("listing a folder"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(sql_err("listing a folder"))
}

/// `page`, with each entry's attributes in `gen` read in the same query (what a
/// kernel READDIRPLUS wants): `None` for a name that points at no inode.
pub fn page_with_attrs(
    conn: &Connection,
    gen: GenId,
    dir: InodeId,
    after: u64,
    limit: usize,
) -> Result<Vec<(ListedEntry, Option<InodeAttr>)>> {
    let mut stmt = conn
        .prepare_cached(&page_with_attrs_sql())
        .map_err(sql_err("preparing a listing"))?;
    let after = after.min(i64::MAX as u64) as i64;
    let rows = stmt
        .query_map(params![dir.0, gen.0, after, limit as i64], |row| {
            let attr = match row.get::<_, Option<i64>>(0)? {
                Some(_) => Some(read::inode_from_row(row)?),
                None => None,
            };
            Ok((
                ListedEntry {
                    cookie: row.get::<_, i64>(12)? as u64,
                    name: row.get(13)?,
                    inode: InodeId(row.get(14)?),
                    kind: attr.as_ref().map(|a| a.kind),
                },
                attr,
            ))
        })
        .map_err(sql_err("listing a folder"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(sql_err("listing a folder"))
}

/// The query of `page_with_attrs`: ?1 folder, ?2 generation, ?3 cookie, ?4 limit.
/// `LIMIT +?4`, as in `page`: with a bare `LIMIT ?4` SQLite's plan depends on the
/// bound value, so it compiled the statement again at every page (a READDIRPLUS;
/// 1.8% of the machine's samples during an rsync).
pub(super) fn page_with_attrs_sql() -> String {
    let columns: Vec<String> = read::INODE_COLUMNS
        .split(", ")
        .map(|c| format!("i.{c}"))
        .collect();
    format!(
        "SELECT {}, e.cookie, e.name, e.inode_id
         FROM dir_entries e INDEXED BY dir_entries_by_cookie
         LEFT JOIN inodes i ON i.inode_id = e.inode_id AND i.gen_from <= ?2 AND i.gen_to > ?2
         WHERE e.parent_id = ?1 AND e.cookie > ?3 AND e.gen_to > ?2 AND e.gen_from <= ?2
         ORDER BY e.cookie LIMIT +?4",
        columns.join(", ")
    )
}

/// True when folder `dir` has at least one name in `gen` (one index probe).
pub fn has_entries(conn: &Connection, gen: GenId, dir: InodeId) -> Result<bool> {
    Ok(page(conn, gen, dir, 0, 1)?.into_iter().next().is_some())
}

/// Schema 1 → 2: adds `dir_entries.cookie`, gives every row the cookie the rules of
/// `cookie_for` would have given it (a name's rows share one; collisions move on), and
/// builds the listing index. Runs inside the caller's transaction; folder by folder,
/// so memory stays that of the largest folder.
pub(super) fn migrate_v1(conn: &Connection) -> Result<()> {
    conn.execute_batch("ALTER TABLE dir_entries ADD COLUMN cookie INTEGER NOT NULL DEFAULT 0")
        .map_err(sql_err("adding listing cookies"))?;
    let mut update = conn
        .prepare("UPDATE dir_entries SET cookie = ?3 WHERE parent_id = ?1 AND name = ?2")
        .map_err(sql_err("adding listing cookies"))?;
    let mut names = conn
        .prepare("SELECT DISTINCT parent_id, name FROM dir_entries ORDER BY parent_id, name")
        .map_err(sql_err("adding listing cookies"))?;
    let rows = names
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
        .map_err(sql_err("adding listing cookies"))?;
    let mut folder: Option<i64> = None;
    let mut taken: HashSet<u64> = HashSet::new();
    for row in rows {
        let (parent, name) = row.map_err(sql_err("adding listing cookies"))?;
        if folder != Some(parent) {
            folder = Some(parent);
            taken.clear();
        }
        let mut cookie = name_hash(&name);
        while taken.contains(&cookie) {
            cookie = if cookie + 1 >= COOKIE_END {
                FIRST_COOKIE
            } else {
                cookie + 1
            };
        }
        taken.insert(cookie);
        update
            .execute(params![parent, name, cookie as i64])
            .map_err(sql_err("adding listing cookies"))?;
    }
    conn.execute_batch(
        "CREATE INDEX dir_entries_by_cookie ON dir_entries (parent_id, cookie, gen_to, inode_id)",
    )
    .map_err(sql_err("indexing listing cookies"))
}
