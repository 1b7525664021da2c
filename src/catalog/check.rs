//! The catalog's own invariants, checked with SQL: SQLite integrity and foreign keys,
//! well-formed and non-overlapping generation ranges, link counts and names in the
//! live tree, listing cookies, and chunk reference counts. Each finding is one line
//! of text that names what is wrong (up to `EXAMPLES` rows of each kind).
//!
//! `repair` mends what it can explain, in one transaction on the live generation:
//! names pointing at nothing, live rows of inodes that are gone, inodes no name
//! reaches, link counts and reference counts. Frozen generations are never changed,
//! and no chunk object is touched (chunks left unreferenced become gc's garbage).

use rusqlite::params;

use super::{sql_err, Catalog};
use crate::error::Result;
use crate::types::{GenId, InodeId};

/// Each versioned table with its key columns (without gen_from).
const KEYS: [(&str, &str); 4] = [
    ("inodes", "inode_id"),
    ("dir_entries", "parent_id, name"),
    ("extents", "inode_id, file_offset"),
    ("xattrs", "inode_id, name"),
];

/// A finding's row of three integers (an inode and two counts, say).
type Triple = (i64, i64, i64);

/// How many offending rows of one kind a finding names.
const EXAMPLES: usize = 20;

/// Live names whose inode the live tree lacks: (folder, name, inode).
const DANGLING_NAMES: &str = "SELECT e.parent_id, e.name, e.inode_id FROM dir_entries e
     WHERE e.gen_to = ?1 AND NOT EXISTS (
         SELECT 1 FROM inodes i WHERE i.inode_id = e.inode_id AND i.gen_to = ?1)";

/// Live names in a folder the live tree lacks (or that is not a folder).
const HOMELESS_NAMES: &str = "SELECT e.parent_id, e.name, e.inode_id FROM dir_entries e
     WHERE e.gen_to = ?1 AND NOT EXISTS (
         SELECT 1 FROM inodes d WHERE d.inode_id = e.parent_id AND d.gen_to = ?1 AND d.kind = 2)";

/// Live files whose link count differs from their names: (inode, nlink, names).
const BAD_FILE_LINKS: &str = "SELECT i.inode_id, i.nlink, (
         SELECT count(*) FROM dir_entries e WHERE e.inode_id = i.inode_id AND e.gen_to = ?1) AS names
     FROM inodes i WHERE i.gen_to = ?1 AND i.kind != 2 AND i.nlink != names";

/// Live folders whose link count is not 2 + subfolders: (inode, nlink, expected).
const BAD_DIR_LINKS: &str = "SELECT d.inode_id, d.nlink, 2 + (
         SELECT count(*) FROM dir_entries e JOIN inodes c
           ON c.inode_id = e.inode_id AND c.gen_to = ?1 AND c.kind = 2
         WHERE e.parent_id = d.inode_id AND e.gen_to = ?1) AS expected
     FROM inodes d WHERE d.gen_to = ?1 AND d.kind = 2 AND d.nlink != expected";

/// Live extents and xattrs of inodes the live tree lacks: (table, inode).
const ORPHAN_ROWS: &str = "SELECT 'extents', x.inode_id FROM extents x WHERE x.gen_to = ?1 AND NOT EXISTS (
         SELECT 1 FROM inodes i WHERE i.inode_id = x.inode_id AND i.gen_to = ?1)
     UNION ALL
     SELECT 'xattrs', x.inode_id FROM xattrs x WHERE x.gen_to = ?1 AND NOT EXISTS (
         SELECT 1 FROM inodes i WHERE i.inode_id = x.inode_id AND i.gen_to = ?1)";

/// Chunks whose reference count is wrong: (chunk, refs, counted).
const BAD_REFS: &str =
    "SELECT c.chunk_id, c.refs, (SELECT count(*) FROM extents e WHERE e.chunk_id = c.chunk_id) AS n
     FROM chunks c WHERE ?1 = ?1 AND c.refs != n";

/// Folders with two names on one listing cookie: (folder, cookie).
const SHARED_COOKIES: &str = "SELECT parent_id, cookie, count(DISTINCT name) FROM dir_entries WHERE ?1 = ?1
     GROUP BY parent_id, cookie HAVING count(DISTINCT name) > 1";

impl Catalog {
    /// Every broken invariant found; empty when the catalog is sound.
    pub fn check_invariants(&self) -> Result<Vec<String>> {
        let mut problems: Vec<String> = self
            .integrity_check()?
            .into_iter()
            .map(|p| format!("SQLite integrity: {p}"))
            .collect();
        let fk: i64 = self
            .conn
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))
            .map_err(sql_err("checking foreign keys"))?;
        if fk > 0 {
            problems.push(format!("{fk} extents name chunks the chunk table does not have"));
        }
        for (table, key) in KEYS {
            let overlaps: i64 = self.count(&format!(
                "SELECT count(*) FROM (SELECT gen_from, lag(gen_to) OVER (PARTITION BY {key} ORDER BY gen_from) AS prev_to
                 FROM {table}) WHERE prev_to > gen_from AND ?1 = ?1"
            ))?;
            if overlaps > 0 {
                problems.push(format!(
                    "{table}: {overlaps} rows overlap an older version of the same key"
                ));
            }
        }
        let dangling = self.names_where(DANGLING_NAMES)?;
        for (parent, name, inode) in dangling.iter().take(EXAMPLES) {
            problems.push(format!(
                "live name {} points at inode {inode}, which the live tree does not have",
                self.describe_name(*parent, name)
            ));
        }
        more(
            &mut problems,
            dangling.len() as i64,
            "live names point at missing inodes",
        );
        let homeless = self.names_where(HOMELESS_NAMES)?;
        for (parent, name, _) in homeless.iter().take(EXAMPLES) {
            problems.push(format!(
                "live name {:?} is in folder inode {parent}, which the live tree does not have",
                String::from_utf8_lossy(name)
            ));
        }
        more(
            &mut problems,
            homeless.len() as i64,
            "live names are in missing folders",
        );
        let (files, total) = self.triples(BAD_FILE_LINKS)?;
        for (inode, nlink, names) in files {
            problems.push(format!(
                "live file inode {inode} ({}) has link count {nlink} but {names} names",
                self.describe_inode(InodeId(inode))
            ));
        }
        more(&mut problems, total, "live files with a wrong link count");
        let (dirs, total) = self.triples(BAD_DIR_LINKS)?;
        for (inode, nlink, expected) in dirs {
            problems.push(format!(
                "live folder inode {inode} ({}) has link count {nlink}, expected {expected}",
                self.describe_inode(InodeId(inode))
            ));
        }
        more(&mut problems, total, "live folders with a wrong link count");
        let orphans = self.orphan_rows()?;
        if !orphans.is_empty() {
            problems.push(format!(
                "{} live extent or xattr rows belong to inodes the live tree does not have (inodes {})",
                orphans.len(),
                examples(orphans.iter().map(|(_, i)| i.to_string()))
            ));
        }
        for (gen, kept, counted) in self.wrong_totals()? {
            problems.push(format!(
                "generation {gen} records {} inodes, {} files, {} bytes, {} data bytes; its rows hold {} inodes, \
                 {} files, {} bytes, {} data bytes (`snapfs check --repair` recounts)",
                kept.inodes,
                kept.files,
                kept.logical_bytes,
                kept.data_bytes,
                counted.inodes,
                counted.files,
                counted.logical_bytes,
                counted.data_bytes
            ));
        }
        let unseen = self.count_unseen_rows()?;
        if unseen > 0 {
            problems.push(format!(
                "{unseen} catalog rows are seen by no generation (left by an older snapfs when a file \
                 was deleted after its snapshots were forgotten); `snapfs gc --sweep` deletes them and \
                 frees their chunks"
            ));
        }
        let bad_refs = self.count(&format!("SELECT count(*) FROM ({BAD_REFS})"))?;
        if bad_refs > 0 {
            problems.push(format!("{bad_refs} chunks have a wrong reference count"));
        }
        let unowned =
            self.count("SELECT count(*) FROM chunks WHERE refs > 0 AND pack_id IS NULL AND ?1 = ?1")?;
        if unowned > 0 {
            problems.push(format!("{unowned} referenced chunks have no place in a pack"));
        }
        if self.version >= 2 {
            let (shared, total) = self.triples(SHARED_COOKIES)?;
            for (parent, cookie, _) in shared {
                problems.push(format!(
                    "folder inode {parent} has two names on listing cookie {cookie}"
                ));
            }
            more(
                &mut problems,
                total,
                "folders have names sharing a listing cookie",
            );
        }
        Ok(problems)
    }

    /// Mends, in one transaction on the live generation, what `check_invariants` finds
    /// and can explain, and returns one line per repair: names pointing at nothing or
    /// sitting in a folder that is gone are removed, and so (until none is left) are
    /// the inodes that no name reaches any more, such as files left by a crash while
    /// open after unlink; live extents and xattrs of missing inodes are closed; link
    /// counts and chunk reference counts are recounted (a chunk left with no reference
    /// becomes garbage for gc). Frozen generations are not changed, chunk objects are
    /// not touched. The caller holds the repository lock with no mount running, and
    /// has saved a copy of the catalog.
    pub fn repair(&mut self) -> Result<Vec<String>> {
        let mut done = Vec::new();
        // Paths are read before anything changes, for the report.
        let mut paths = std::collections::HashMap::new();
        for (parent, name, _) in self.names_where(DANGLING_NAMES)? {
            let path = self.describe_name(parent, &name);
            paths.insert((parent, name), path);
        }
        let txn = self.write()?;
        for _ in 0..100_000 {
            let mut changed = false;
            let mut bad = names_in(txn.conn(), DANGLING_NAMES)?;
            bad.extend(names_in(txn.conn(), HOMELESS_NAMES)?);
            for (parent, name, inode) in bad {
                txn.drop_name(InodeId(parent), &name)?;
                let what = paths.remove(&(parent, name.clone())).unwrap_or_else(|| {
                    format!("{:?} in folder inode {parent}", String::from_utf8_lossy(&name))
                });
                done.push(format!(
                    "removed live name {what}, which pointed at inode {inode} (missing or unreachable)"
                ));
                changed = true;
            }
            for id in txn.unnamed_inodes()? {
                txn.remove_inode(id)?;
                done.push(format!("removed live inode {id}, which no name reached"));
                changed = true;
            }
            if !changed {
                break;
            }
        }
        let orphans: Vec<(String, i64)> = rows_in(
            txn.conn(),
            &format!("SELECT DISTINCT * FROM ({ORPHAN_ROWS})"),
            None,
        )?;
        for (table, inode) in orphans {
            txn.close_live_rows_of(&table, InodeId(inode))?;
            done.push(format!("closed the live {table} rows of missing inode {inode}"));
        }
        for sql in [BAD_FILE_LINKS, BAD_DIR_LINKS] {
            for (inode, nlink, right) in rows_in::<(i64, i64, i64)>(txn.conn(), sql, None)? {
                let mut attr = txn.expect_inode(InodeId(inode))?;
                attr.nlink = right as u32;
                txn.set_inode(&attr)?;
                done.push(format!(
                    "set the link count of inode {inode} from {nlink} to {right}"
                ));
            }
        }
        let refs = txn.recount_refs()?;
        if refs > 0 {
            done.push(format!("recounted the references of {refs} chunks"));
        }
        txn.commit()?;
        for (gen, _, counted) in self.wrong_totals()? {
            self.set_totals(gen, &counted)?;
            done.push(format!("recounted the totals of generation {gen}"));
        }
        Ok(done)
    }

    fn count(&self, sql: &str) -> Result<i64> {
        self.conn
            .query_row(sql, params![GenId::OPEN.0], |r| r.get(0))
            .map_err(sql_err("checking invariants"))
    }

    fn names_where(&self, sql: &str) -> Result<Vec<(i64, Vec<u8>, i64)>> {
        names_in(&self.conn, sql)
    }

    /// The first `EXAMPLES` rows of `sql`, and how many there are in all.
    fn triples(&self, sql: &str) -> Result<(Vec<Triple>, i64)> {
        let total = self.count(&format!("SELECT count(*) FROM ({sql})"))?;
        Ok((rows_in(&self.conn, sql, Some(EXAMPLES))?, total))
    }

    fn orphan_rows(&self) -> Result<Vec<(String, i64)>> {
        rows_in(
            &self.conn,
            &format!("SELECT DISTINCT * FROM ({ORPHAN_ROWS})"),
            None,
        )
    }

    /// `/path/of/folder/name`, or the folder's inode when it has no path.
    fn describe_name(&self, parent: i64, name: &[u8]) -> String {
        let name = String::from_utf8_lossy(name);
        match self.path_of(self.live, InodeId(parent)) {
            Ok(Some(p)) if p == "/" => format!("/{name}"),
            Ok(Some(p)) => format!("{p}/{name}"),
            _ => format!("{name:?} in folder inode {parent}"),
        }
    }

    fn describe_inode(&self, id: InodeId) -> String {
        match self.path_of(self.live, id) {
            Ok(Some(p)) => p,
            _ => "no path".into(),
        }
    }
}

fn names_in(conn: &rusqlite::Connection, sql: &str) -> Result<Vec<(i64, Vec<u8>, i64)>> {
    rows_in(conn, sql, None)
}

/// The rows of `sql` (its one parameter is the open generation), at most `limit`.
fn rows_in<T: FromRow>(conn: &rusqlite::Connection, sql: &str, limit: Option<usize>) -> Result<Vec<T>> {
    let sql = match limit {
        Some(n) => format!("{sql} LIMIT {n}"),
        None => sql.to_string(),
    };
    let mut stmt = conn.prepare(&sql).map_err(sql_err("checking invariants"))?;
    let rows = stmt
        .query_map(params![GenId::OPEN.0], T::from_row)
        .map_err(sql_err("checking invariants"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(sql_err("checking invariants"))
}

/// A row of two or three columns, read by position.
trait FromRow: Sized {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
}

impl<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql> FromRow for (A, B) {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok((row.get(0)?, row.get(1)?))
    }
}

impl<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql, C: rusqlite::types::FromSql> FromRow
    for (A, B, C)
{
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    }
}

/// After the first `EXAMPLES` findings of a kind: how many more there are.
fn more(problems: &mut Vec<String>, total: i64, what: &str) {
    if total > EXAMPLES as i64 {
        problems.push(format!("… {} more {what}", total - EXAMPLES as i64));
    }
}

/// The first `EXAMPLES` items joined, with "…" when there are more.
fn examples(items: impl Iterator<Item = String>) -> String {
    let all: Vec<String> = items.collect();
    let mut text = all.iter().take(EXAMPLES).cloned().collect::<Vec<_>>().join(", ");
    if all.len() > EXAMPLES {
        text.push_str(", …");
    }
    text
}
