//! Operations across generations: forgetting snapshots (dropping the rows no
//! remaining generation sees), rolling the live tree back to a snapshot, the bytes
//! only one snapshot holds, and the garbage list for gc.
//!
//! Every operation is one transaction. The row rules of schema.sql hold throughout:
//! a retained generation's view never changes.

use rusqlite::params;

use super::totals::{self, OPEN_SQL};
use super::{read, sql_err, Catalog, ChunkInfo, RollbackChanges};
use crate::error::{Error, Result};
use crate::types::{ChunkId, GenId, InodeId};

/// The versioned tables, each with the column that ties a row to a subtree: the
/// inode it describes, or (for names) the folder it is in.
const VERSIONED: [(&str, &str); 4] = [
    ("inodes", "inode_id"),
    ("dir_entries", "parent_id"),
    ("extents", "inode_id"),
    ("xattrs", "inode_id"),
];

/// Rows of `{table}` that no generation sees: closed (not live) and with no
/// generation in their range. None arise now; versions before 0.x left them when a
/// file was deleted after every snapshot that saw it had been forgotten.
fn unseen_rows(table: &str) -> String {
    format!(
        "FROM {table} WHERE gen_to != ?1 AND NOT EXISTS (
             SELECT 1 FROM generations g WHERE g.gen_id >= {table}.gen_from AND g.gen_id < {table}.gen_to)"
    )
}

impl Catalog {
    /// Rows, over every versioned table, that no generation sees (see `unseen_rows`).
    pub fn count_unseen_rows(&self) -> Result<u64> {
        let mut total = 0u64;
        for (table, _) in VERSIONED {
            let n: i64 = self
                .conn
                .query_row(
                    &format!("SELECT count(*) {}", unseen_rows(table)),
                    params![GenId::OPEN.0],
                    |r| r.get(0),
                )
                .map_err(sql_err("counting rows no generation sees"))?;
            total += n as u64;
        }
        Ok(total)
    }

    /// Deletes the rows no generation sees, in one transaction; the chunks only they
    /// referenced become garbage. No generation's view changes. Returns the count.
    pub fn drop_unseen_rows(&mut self) -> Result<u64> {
        let tx = self.begin()?;
        let mut total = 0u64;
        for (table, _) in VERSIONED {
            total += tx
                .execute(&format!("DELETE {}", unseen_rows(table)), params![GenId::OPEN.0])
                .map_err(sql_err("deleting rows no generation sees"))? as u64;
        }
        tx.commit().map_err(sql_err("committing the row sweep"))?;
        Ok(total)
    }

    /// Pins (`true`) or unpins snapshot `gen` against forget. Pinning a held snapshot
    /// again changes nothing; unpinning one that is not held is refused (most likely
    /// the wrong name was given).
    pub fn set_held(&mut self, gen: GenId, held: bool) -> Result<()> {
        let changed = self
            .conn
            .execute(
                "UPDATE generations SET held = ?2 WHERE gen_id = ?1 AND frozen_ns IS NOT NULL AND held != ?2",
                params![gen.0, held as i64],
            )
            .map_err(sql_err("holding a snapshot"))?;
        if changed == 0 && !held {
            let name: Option<String> = self
                .conn
                .query_row(
                    "SELECT name FROM generations WHERE gen_id = ?1",
                    params![gen.0],
                    |r| r.get(0),
                )
                .map_err(sql_err("finding the snapshot to release"))?;
            let name = name.unwrap_or_else(|| "the live tree".into());
            return Err(Error::InvalidArgument(format!(
                "{name} is not held, so there is nothing to release (`snapfs list` marks held snapshots)"
            )));
        }
        Ok(())
    }

    /// Forgets snapshot `gen`: its generation row goes, and so does every row that no
    /// remaining generation sees (chunks they referenced become garbage for gc).
    /// Refuses the live generation and held snapshots.
    pub fn forget(&mut self, gen: GenId) -> Result<()> {
        // Without measuring the garbage afterwards: that sum grows with the garbage,
        // and a mount forgets many snapshots one by one.
        let tx = self.begin()?;
        forget_in(&tx, gen)?;
        tx.commit().map_err(sql_err("committing forget"))
    }

    /// Forgets `gens` in one transaction and returns the stored bytes of all garbage
    /// afterwards (`forget_frees` computes the same figure without forgetting).
    pub fn measure_forget(&mut self, gens: &[GenId]) -> Result<u64> {
        // Oldest first: each forget then looks at the rows closed up to its next
        // retained neighbour, which the previous ones did not push further away.
        let mut gens = gens.to_vec();
        gens.sort();
        gens.dedup();
        let tx = self.begin()?;
        for gen in gens {
            forget_in(&tx, gen)?;
        }
        let garbage: i64 = tx
            .query_row(
                "SELECT coalesce(sum(c.stored_size), 0) FROM chunk_garbage g JOIN chunks c ON c.chunk_id = g.chunk_id
                 WHERE c.refs = 0",
                [],
                |r| r.get(0),
            )
            .map_err(sql_err("measuring garbage"))?;
        tx.commit().map_err(sql_err("committing forget"))?;
        Ok(garbage as u64)
    }

    /// The stored bytes of all garbage there would be after forgetting `gens`, without
    /// changing anything (the dry run of forget; a rolled-back forget dirtied more
    /// pages than the cache holds on a big catalog, and SQLite spilled them).
    ///
    /// The forgotten snapshots fall into runs between retained neighbours P and N.
    /// The rows a forget deletes see some snapshot of a run and no retained one, so
    /// lie in (P, N] and were closed after the run's first: only those rows' chunks
    /// are looked at (the closed index), and such a chunk is freed when none of its
    /// rows survives, a survivor being a row that sees a retained generation or no
    /// forgotten one (a row no generation sees stays, as forget leaves it).
    pub fn forget_frees(&self, gens: &[GenId]) -> Result<u64> {
        let mut gens = gens.to_vec();
        gens.sort();
        gens.dedup();
        for gen in &gens {
            forgettable(&self.conn, *gen)?;
        }
        let c = &self.conn;
        let err = sql_err("measuring what forget frees");
        c.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS ff_forgetting (gen_id INTEGER PRIMARY KEY);
             CREATE TEMP TABLE IF NOT EXISTS ff_retained (gen_id INTEGER PRIMARY KEY);
             CREATE TEMP TABLE IF NOT EXISTS ff_candidates (chunk_id BLOB PRIMARY KEY) WITHOUT ROWID;
             DELETE FROM ff_forgetting; DELETE FROM ff_retained; DELETE FROM ff_candidates;",
        )
        .map_err(&err)?;
        {
            let mut add = c
                .prepare("INSERT INTO ff_forgetting (gen_id) VALUES (?1)")
                .map_err(&err)?;
            for gen in &gens {
                add.execute(params![gen.0]).map_err(&err)?;
            }
        }
        c.execute_batch(
            "INSERT INTO ff_retained SELECT gen_id FROM generations
             WHERE gen_id NOT IN (SELECT gen_id FROM ff_forgetting)",
        )
        .map_err(&err)?;
        let mut runs: Vec<(i64, i64, i64)> = Vec::new(); // (P, N, first of the run)
        for gen in &gens {
            let (prev, next): (i64, i64) = c
                .query_row(
                    "SELECT (SELECT coalesce(max(gen_id), 0) FROM ff_retained WHERE gen_id < ?1),
                            (SELECT coalesce(min(gen_id), ?1 + 1) FROM ff_retained WHERE gen_id > ?1)",
                    params![gen.0],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(&err)?;
            if !runs.iter().any(|&(p, n, _)| (p, n) == (prev, next)) {
                runs.push((prev, next, gen.0));
            }
        }
        for (prev, next, first) in runs {
            c.execute(
                &format!(
                    "INSERT OR IGNORE INTO ff_candidates
                     SELECT chunk_id FROM extents INDEXED BY extents_closed
                     WHERE gen_to > ?3 AND gen_to <= ?2 AND gen_to != {OPEN_SQL} AND gen_from > ?1"
                ),
                params![prev, next, first],
            )
            .map_err(&err)?;
        }
        let (freed, garbage): (i64, i64) = c
            .query_row(
                "SELECT
                   (SELECT coalesce(sum(ch.stored_size), 0) FROM ff_candidates k
                      JOIN chunks ch ON ch.chunk_id = k.chunk_id
                    WHERE ch.refs > 0 AND NOT EXISTS (
                        SELECT 1 FROM extents e WHERE e.chunk_id = k.chunk_id AND (
                            EXISTS (SELECT 1 FROM ff_retained r WHERE r.gen_id >= e.gen_from AND r.gen_id < e.gen_to)
                            OR NOT EXISTS (SELECT 1 FROM ff_forgetting f
                                           WHERE f.gen_id >= e.gen_from AND f.gen_id < e.gen_to)))),
                   (SELECT coalesce(sum(ch.stored_size), 0) FROM chunk_garbage g
                      JOIN chunks ch ON ch.chunk_id = g.chunk_id WHERE ch.refs = 0)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(&err)?;
        c.execute_batch("DELETE FROM ff_forgetting; DELETE FROM ff_retained; DELETE FROM ff_candidates;")
            .map_err(&err)?;
        Ok((freed + garbage) as u64)
    }

    /// Makes the live tree exactly what snapshot `gen` shows, in one transaction. The
    /// caller takes a safety snapshot first, so that no live row is younger than the
    /// live generation (every live row was frozen with it).
    ///
    /// `keep` are live files held open by a mount: one that no name of the snapshot
    /// reaches stays as a file with no name (as if unlinked while open), with the
    /// content and attributes it had, so its handles go on working and its last close
    /// removes it (see `settle_unnamed`).
    pub fn rollback_to(&mut self, gen: GenId, keep: &[InodeId]) -> Result<RollbackChanges> {
        let live = self.live;
        let tx = self.begin()?;
        let mut changes = RollbackChanges::default();
        for (table, _) in VERSIONED {
            changes.rows += rollback_rows(&tx, table, live, gen, "", &mut changes)?;
        }
        changes.rows += settle_unnamed(&tx, live, gen, keep, None)?;
        tx.commit().map_err(sql_err("committing rollback"))?;
        self.touched = true;
        Ok(changes)
    }

    /// Makes the name `name` in live folder `parent`, and everything below it, what
    /// snapshot `gen` shows there. `inodes` are the inodes of that subtree in the
    /// snapshot and in the live tree, `dirs` the folders among them. One transaction,
    /// after the caller's safety snapshot; the parent's link count is recounted.
    /// `keep` as for `rollback_to`.
    pub fn rollback_subtree(
        &mut self,
        gen: GenId,
        parent: InodeId,
        name: &[u8],
        inodes: &[InodeId],
        dirs: &[InodeId],
        keep: &[InodeId],
    ) -> Result<RollbackChanges> {
        let live = self.live;
        let tx = self.begin()?;
        tx.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS rb_inodes (id INTEGER PRIMARY KEY);
             CREATE TEMP TABLE IF NOT EXISTS rb_dirs (id INTEGER PRIMARY KEY);
             DELETE FROM rb_inodes; DELETE FROM rb_dirs;",
        )
        .map_err(sql_err("preparing rollback"))?;
        for (table, ids) in [("rb_inodes", inodes), ("rb_dirs", dirs)] {
            let mut stmt = tx
                .prepare(&format!("INSERT OR IGNORE INTO temp.{table} (id) VALUES (?1)"))
                .map_err(sql_err("preparing rollback"))?;
            for id in ids {
                stmt.execute(params![id.0])
                    .map_err(sql_err("preparing rollback"))?;
            }
        }
        let mut changes = RollbackChanges::default();
        for (table, column) in VERSIONED {
            let set = if table == "dir_entries" {
                "rb_dirs"
            } else {
                "rb_inodes"
            };
            let filter = format!("AND {column} IN (SELECT id FROM temp.{set})");
            changes.rows += rollback_rows(&tx, table, live, gen, &filter, &mut changes)?;
        }
        // The name of the subtree's root in its (unchanged) parent.
        let parent_filter = format!("AND parent_id = {} AND name = x'{}'", parent.0, hex(name));
        changes.rows += rollback_rows(&tx, "dir_entries", live, gen, &parent_filter, &mut changes)?;
        // The parent counts its subfolders' "..".
        let subdirs: i64 = tx
            .query_row(
                "SELECT count(*) FROM dir_entries e JOIN inodes i
                   ON i.inode_id = e.inode_id AND i.gen_to = ?2 AND i.kind = 2
                 WHERE e.parent_id = ?1 AND e.gen_to = ?2",
                params![parent.0, GenId::OPEN.0],
                |r| r.get(0),
            )
            .map_err(sql_err("recounting links"))?;
        let current: i64 = tx
            .query_row(
                "SELECT nlink FROM inodes WHERE inode_id = ?1 AND gen_to = ?2",
                params![parent.0, GenId::OPEN.0],
                |r| r.get(0),
            )
            .map_err(sql_err("recounting links"))?;
        if current != subdirs + 2 {
            let columns = columns_of(&tx, "inodes")?;
            let copied: Vec<String> = columns
                .iter()
                .map(|c| match c.as_str() {
                    "gen_from" => "?2".to_string(),
                    "gen_to" => "?3".to_string(),
                    "nlink" => "?4".to_string(),
                    other => other.to_string(),
                })
                .collect();
            tx.execute(
                "UPDATE inodes SET gen_to = ?2 WHERE inode_id = ?1 AND gen_to = ?3 AND gen_from < ?2",
                params![parent.0, live.0, GenId::OPEN.0],
            )
            .map_err(sql_err("recounting links"))?;
            tx.execute(
                &format!(
                    "INSERT INTO inodes ({}) SELECT {} FROM inodes WHERE inode_id = ?1 AND gen_to = ?2",
                    columns.join(", "),
                    copied.join(", ")
                ),
                params![parent.0, live.0, GenId::OPEN.0, subdirs + 2],
            )
            .map_err(sql_err("recounting links"))?;
            changes.inodes.insert(parent);
        }
        changes.rows += settle_unnamed(&tx, live, gen, keep, Some(inodes))?;
        tx.commit().map_err(sql_err("committing rollback"))?;
        self.touched = true;
        Ok(changes)
    }

    /// The inodes whose rows (attributes, content, xattrs or names) differ between
    /// generations `a` and `b`, in either order: those with a row born or closed in
    /// between. Costs what changed (the generation indexes), not the tree.
    pub fn changed_between(&self, a: GenId, b: GenId) -> Result<Vec<InodeId>> {
        let (from, to) = (a.0.min(b.0), a.0.max(b.0));
        let parts: Vec<String> = VERSIONED
            .iter()
            .flat_map(|(table, _)| {
                [
                    format!("SELECT inode_id FROM {table} WHERE gen_from > ?1 AND gen_from <= ?2"),
                    format!(
                        "SELECT inode_id FROM {table} WHERE gen_to > ?1 AND gen_to <= ?2 AND gen_to != {OPEN_SQL}"
                    ),
                ]
            })
            .collect();
        let mut stmt = self
            .conn
            .prepare_cached(&parts.join(" UNION "))
            .map_err(sql_err("finding what changed"))?;
        let rows = stmt
            .query_map(params![from, to], |r| Ok(InodeId(r.get(0)?)))
            .map_err(sql_err("finding what changed"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql_err("finding what changed"))
    }

    /// Every chunk the catalog knows, in id order, starting after `after` (for scrubs
    /// that resume), at most `limit`.
    pub fn chunks_after(&self, after: Option<ChunkId>, limit: usize) -> Result<Vec<ChunkInfo>> {
        let start: Vec<u8> = after.map(|a| a.0.to_vec()).unwrap_or_default();
        let sql = format!(
            "SELECT {} FROM chunks WHERE chunk_id > ?1 ORDER BY chunk_id LIMIT ?2",
            read::CHUNK_COLUMNS
        );
        let mut stmt = self
            .conn
            .prepare_cached(&sql)
            .map_err(sql_err("listing chunks"))?;
        let rows = stmt
            .query_map(params![start, limit as i64], read::chunk_from_row)
            .map_err(sql_err("listing chunks"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql_err("listing chunks"))
    }

    /// How many chunks have an id up to and including `id` (scrub progress on resume).
    pub fn count_chunks_upto(&self, id: &ChunkId) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT count(*) FROM chunks WHERE chunk_id <= ?1",
                params![&id.0[..]],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(sql_err("counting chunks"))
    }

    /// Where chunk `id` is used: (view, path) pairs, the view being a snapshot name or
    /// "live", for every retained generation that has a file referencing it.
    pub fn chunk_users(&self, id: &ChunkId) -> Result<Vec<(String, String)>> {
        let rows: Vec<(i64, i64, i64)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT DISTINCT inode_id, gen_from, gen_to FROM extents WHERE chunk_id = ?1")
                .map_err(sql_err("finding chunk users"))?;
            let found = stmt
                .query_map(params![&id.0[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(sql_err("finding chunk users"))?;
            found
                .collect::<rusqlite::Result<_>>()
                .map_err(sql_err("finding chunk users"))?
        };
        let gens = self.generations()?;
        let mut out = Vec::new();
        for (inode, from, to) in rows {
            for g in gens.iter().filter(|g| g.id.0 >= from && g.id.0 < to) {
                let view = g.name.clone().unwrap_or_else(|| "live".into());
                let path = self
                    .path_of(g.id, InodeId(inode))?
                    .unwrap_or_else(|| format!("(unnamed inode {inode})"));
                if !out.contains(&(view.clone(), path.clone())) {
                    out.push((view, path));
                }
            }
        }
        Ok(out)
    }

    /// One path of `inode` in `gen` ("/a/b"); `None` when it has no name there.
    pub fn path_of(&self, gen: GenId, inode: InodeId) -> Result<Option<String>> {
        let mut parts = Vec::new();
        let mut at = inode;
        while at != InodeId::ROOT {
            let Some((parent, name)) = self.names_of(gen, at)?.into_iter().next() else {
                return Ok(None);
            };
            parts.push(String::from_utf8_lossy(&name).into_owned());
            at = parent;
            if parts.len() > 4096 {
                return Err(Error::CorruptCatalog(format!(
                    "inode {inode} sits in a folder loop"
                )));
            }
        }
        parts.reverse();
        Ok(Some(format!("/{}", parts.join("/"))))
    }

    /// Chunks that no extent row references any more: what gc may delete.
    pub fn garbage(&self) -> Result<Vec<ChunkInfo>> {
        self.garbage_first(usize::MAX)
    }

    /// At most `limit` of the chunks `garbage` lists (in no particular order).
    pub fn garbage_first(&self, limit: usize) -> Result<Vec<ChunkInfo>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT c.chunk_id, c.plain_size, c.stored_size, c.pack_id, c.pack_offset, c.entry_len, c.refs
                 FROM chunk_garbage g JOIN chunks c ON c.chunk_id = g.chunk_id WHERE c.refs = 0
                 LIMIT ?1",
            )
            .map_err(sql_err("listing garbage"))?;
        let rows = stmt
            .query_map(params![limit.min(i64::MAX as usize) as i64], read::chunk_from_row)
            .map_err(sql_err("listing garbage"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql_err("listing garbage"))
    }

    /// How many chunks `garbage` lists, and their stored bytes (per mirror).
    pub fn garbage_totals(&self) -> Result<(u64, u64)> {
        self.conn
            .query_row(
                "SELECT count(*), coalesce(sum(c.stored_size), 0)
                 FROM chunk_garbage g JOIN chunks c ON c.chunk_id = g.chunk_id WHERE c.refs = 0",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .map_err(sql_err("measuring garbage"))
    }

    /// Drops the rows of chunks whose objects gc deleted. Refuses (and changes
    /// nothing) if any of them is referenced again.
    pub fn drop_chunks(&mut self, ids: &[ChunkId]) -> Result<()> {
        let tx = self.begin()?;
        {
            let mut refs = tx
                .prepare_cached("SELECT refs FROM chunks WHERE chunk_id = ?1")
                .map_err(sql_err("checking a chunk before removal"))?;
            let mut unlist = tx
                .prepare_cached("DELETE FROM chunk_garbage WHERE chunk_id = ?1")
                .map_err(sql_err("removing a chunk"))?;
            let mut remove = tx
                .prepare_cached("DELETE FROM chunks WHERE chunk_id = ?1")
                .map_err(sql_err("removing a chunk"))?;
            for id in ids {
                let n: i64 = refs
                    .query_row(params![&id.0[..]], |r| r.get(0))
                    .map_err(sql_err("checking a chunk before removal"))?;
                if n != 0 {
                    return Err(Error::CorruptCatalog(format!(
                        "chunk {id} is referenced again; gc stopped"
                    )));
                }
                unlist
                    .execute(params![&id.0[..]])
                    .map_err(sql_err("removing a chunk"))?;
                remove
                    .execute(params![&id.0[..]])
                    .map_err(sql_err("removing a chunk"))?;
            }
        }
        tx.commit().map_err(sql_err("committing chunk removal"))
    }
}

/// Refuses to forget the live generation or a held snapshot.
fn forgettable(tx: &rusqlite::Connection, gen: GenId) -> Result<()> {
    let (name, held, frozen): (Option<String>, i64, Option<i64>) = tx
        .query_row(
            "SELECT name, held, frozen_ns FROM generations WHERE gen_id = ?1",
            params![gen.0],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(sql_err("finding the snapshot to forget"))?;
    let name = name.unwrap_or_else(|| "the live tree".into());
    if frozen.is_none() {
        return Err(Error::InvalidArgument(format!("{name} is not a snapshot")));
    }
    if held != 0 {
        return Err(Error::InvalidArgument(format!(
            "{name} is held; `snapfs release {name}` first"
        )));
    }
    Ok(())
}

/// Forgets one generation inside an open transaction.
fn forget_in(tx: &rusqlite::Connection, gen: GenId) -> Result<()> {
    forgettable(tx, gen)?;
    tx.execute("DELETE FROM generations WHERE gen_id = ?1", params![gen.0])
        .map_err(sql_err("dropping the generation"))?;
    // A row only `gen` saw was born after the retained generation before it and
    // closed by the one after: the rows closed in (gen, next], no others.
    // The index is named: without statistics SQLite may take the born-range for the
    // cheaper one, and born after `prev` is the whole tree when `prev` is the first.
    let (prev, next) = totals::neighbours(tx, gen)?;
    for (table, _) in VERSIONED {
        let sql = format!(
            "DELETE FROM {table} INDEXED BY {table}_closed WHERE gen_to > ?1 AND gen_to <= ?3 AND gen_to != {OPEN_SQL}
                                   AND gen_from > ?2 AND gen_from <= ?1"
        );
        tx.execute(&sql, params![gen.0, prev.0, next.0])
            .map_err(sql_err("dropping rows only the snapshot saw"))?;
    }
    Ok(())
}

fn columns_of(tx: &rusqlite::Connection, table: &str) -> Result<Vec<String>> {
    let stmt = tx
        .prepare(&format!("SELECT * FROM {table} LIMIT 0"))
        .map_err(sql_err("reading columns"))?;
    Ok(stmt.column_names().into_iter().map(str::to_string).collect())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The last step of a rollback to generation `gen`, in live generation `live` (which
/// the caller's safety snapshot opened, so generation `live - 1` is the tree just
/// before), for the inodes in `scope` (`None`: all): a rollback restores what the
/// snapshot shows, its names and the files they name, and nothing else.
///  * A file of `keep` (held open by a mount) that no name of the snapshot reaches
///    keeps its rows as they were just before, with no name (link count 0), whatever
///    the snapshot held of it: its handles go on reading what they read, and its
///    last close removes it.
///  * Any other live inode left with no name (the snapshot held a file that was
///    unlinked but open when it was taken) is removed.
///
/// Returns the rows written.
fn settle_unnamed(
    tx: &rusqlite::Connection,
    live: GenId,
    gen: GenId,
    keep: &[InodeId],
    scope: Option<&[InodeId]>,
) -> Result<u64> {
    let before = live.0 - 1;
    let in_scope = |id: &InodeId| scope.is_none_or(|s| s.contains(id));
    let count = |sql: &str, id: InodeId, g: i64| -> Result<i64> {
        tx.query_row(sql, params![id.0, g], |r| r.get(0))
            .map_err(sql_err("settling unnamed files"))
    };
    let mut written = 0u64;
    for id in keep.iter().filter(|id| in_scope(id)) {
        let named_in_snapshot = count(
            "SELECT count(*) FROM dir_entries WHERE inode_id = ?1 AND gen_from <= ?2 AND gen_to > ?2",
            *id,
            gen.0,
        )? > 0;
        let file_before = count(
            "SELECT count(*) FROM inodes WHERE inode_id = ?1 AND gen_from <= ?2 AND gen_to > ?2 AND kind != 2",
            *id,
            before,
        )? > 0;
        if named_in_snapshot || !file_before {
            continue;
        }
        written += close_live_rows(tx, live, *id)?;
        for (table, _) in VERSIONED {
            if table == "dir_entries" {
                continue;
            }
            let columns = columns_of(tx, table)?;
            let copied: Vec<String> = columns
                .iter()
                .map(|c| match c.as_str() {
                    "gen_from" => "?3".to_string(),
                    "gen_to" => "?4".to_string(),
                    "nlink" => "0".to_string(),
                    other => other.to_string(),
                })
                .collect();
            written += tx
                .execute(
                    &format!(
                        "INSERT INTO {table} ({}) SELECT {} FROM {table}
                         WHERE inode_id = ?1 AND gen_from <= ?2 AND gen_to > ?2",
                        columns.join(", "),
                        copied.join(", ")
                    ),
                    params![id.0, before, live.0, GenId::OPEN.0],
                )
                .map_err(sql_err("keeping open files"))? as u64;
        }
    }
    let unnamed = read::live_inodes(tx, read::NAMELESS_INODES, "settling unnamed files")?;
    for id in unnamed.iter().filter(|id| in_scope(id) && !keep.contains(id)) {
        written += close_live_rows(tx, live, *id)?;
    }
    Ok(written)
}

/// Closes every live row of inode `id` (its attributes, extents and xattrs).
/// Returns the rows touched.
fn close_live_rows(tx: &rusqlite::Connection, live: GenId, id: InodeId) -> Result<u64> {
    let mut touched = 0;
    for table in ["inodes", "extents", "xattrs"] {
        touched += super::write::close_live_rows(tx, live, table, id)?;
    }
    Ok(touched)
}

/// Rolls the rows of `table` that match `filter` back to generation `gen`: live rows
/// the snapshot lacks are closed (or dropped when born live), and the snapshot's rows
/// the live tree lost come back as new live rows. Returns the rows touched.
fn rollback_rows(
    tx: &rusqlite::Connection,
    table: &str,
    live: GenId,
    gen: GenId,
    filter: &str,
    changes: &mut RollbackChanges,
) -> Result<u64> {
    // Note what is about to change, for the kernel caches.
    let key = if table == "dir_entries" {
        "parent_id, name"
    } else {
        "inode_id, NULL"
    };
    // Two kinds of rows change, each found by its generation index: live rows born
    // after the snapshot, and the snapshot's rows closed since. The second names its
    // index: SQLite, without statistics, may take "born up to the snapshot" (the
    // whole tree) for the cheaper range.
    let born_since = format!("gen_from > ?2 AND gen_to = {OPEN_SQL}");
    let lost_since = format!("gen_to > ?2 AND gen_to <= ?1 AND gen_to != {OPEN_SQL} AND gen_from <= ?2");
    {
        let mut stmt = tx
            .prepare(&format!(
                "SELECT {key} FROM {table} WHERE {born_since} {filter}
                 UNION ALL SELECT {key} FROM {table} INDEXED BY {table}_closed WHERE {lost_since} {filter}"
            ))
            .map_err(sql_err("rolling back"))?;
        let rows = stmt
            .query_map(params![live.0, gen.0], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
            })
            .map_err(sql_err("rolling back"))?;
        for row in rows {
            match row.map_err(sql_err("rolling back"))? {
                (parent, Some(name)) => {
                    changes.entries.insert((InodeId(parent), name));
                }
                (inode, None) => {
                    changes.inodes.insert(InodeId(inode));
                }
            }
        }
    }
    let mut changed = tx
        .execute(
            &format!("DELETE FROM {table} WHERE gen_from = ?1 AND gen_to = ?3 AND ?2 = ?2 {filter}"),
            params![live.0, gen.0, GenId::OPEN.0],
        )
        .map_err(sql_err("rolling back"))? as u64;
    changed += tx
        .execute(
            &format!("UPDATE {table} SET gen_to = ?1 WHERE {born_since} AND ?3 = ?3 {filter}"),
            params![live.0, gen.0, GenId::OPEN.0],
        )
        .map_err(sql_err("rolling back"))? as u64;
    let columns = columns_of(tx, table)?;
    let copied: Vec<String> = columns
        .iter()
        .map(|c| match c.as_str() {
            "gen_from" => "?1".to_string(),
            "gen_to" => "?3".to_string(),
            other => other.to_string(),
        })
        .collect();
    changed += tx
        .execute(
            &format!(
                "INSERT INTO {table} ({}) SELECT {} FROM {table} INDEXED BY {table}_closed WHERE {lost_since} {filter}",
                columns.join(", "),
                copied.join(", ")
            ),
            params![live.0, gen.0, GenId::OPEN.0],
        )
        .map_err(sql_err("rolling back"))? as u64;
    Ok(changed)
}

impl Catalog {
    /// Records a new mirror at `path` in state `filling`; returns its id (the lowest
    /// never used, below 64).
    pub fn add_mirror(&mut self, path: &std::path::Path, now_ns: i64) -> Result<crate::types::MirrorId> {
        let next: i64 = self
            .conn
            .query_row("SELECT coalesce(max(mirror_id), -1) + 1 FROM mirrors", [], |r| {
                r.get(0)
            })
            .map_err(sql_err("choosing a mirror id"))?;
        if next >= 64 {
            return Err(Error::InvalidArgument(
                "a repository has at most 64 mirrors".into(),
            ));
        }
        self.conn
            .execute(
                "INSERT INTO mirrors (mirror_id, path, state, added_ns) VALUES (?1, ?2, 'filling', ?3)",
                params![
                    next,
                    path.strip_prefix(&self.dir).unwrap_or(path).to_string_lossy(),
                    now_ns
                ],
            )
            .map_err(sql_err("recording a mirror"))?;
        Ok(crate::types::MirrorId(next as u32))
    }

    /// Sets a mirror's state (`complete` or `filling`).
    pub fn set_mirror_state(&mut self, id: crate::types::MirrorId, state: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE mirrors SET state = ?2 WHERE mirror_id = ?1",
                params![id.0, state],
            )
            .map_err(sql_err("updating a mirror"))?;
        Ok(())
    }

    /// Forgets mirror `id`.
    pub fn remove_mirror(&mut self, id: crate::types::MirrorId) -> Result<()> {
        self.conn
            .execute("DELETE FROM mirrors WHERE mirror_id = ?1", params![id.0])
            .map_err(sql_err("removing a mirror"))?;
        Ok(())
    }
}
