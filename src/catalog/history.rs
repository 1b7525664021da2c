//! Operations across generations: forgetting snapshots (dropping the rows no
//! remaining generation sees), rolling the live tree back to a snapshot, the bytes
//! only one snapshot holds, and the garbage list for gc.
//!
//! Every operation is one transaction. The row rules of schema.sql hold throughout:
//! a retained generation's view never changes.

use rusqlite::{params, TransactionBehavior};

use super::{sql_err, Catalog, ChunkInfo};
use crate::error::{Error, Result};
use crate::types::{ChunkId, GenId};

/// The versioned tables, each with its primary key columns (without gen_from).
const VERSIONED: [(&str, &str); 4] = [
    ("inodes", "inode_id"),
    ("dir_entries", "parent_id, name"),
    ("extents", "inode_id, file_offset"),
    ("xattrs", "inode_id, name"),
];

impl Catalog {
    /// Pins (`true`) or unpins snapshot `gen` against forget.
    pub fn set_held(&mut self, gen: GenId, held: bool) -> Result<()> {
        self.conn
            .execute(
                "UPDATE generations SET held = ?2 WHERE gen_id = ?1 AND frozen_ns IS NOT NULL",
                params![gen.0, held as i64],
            )
            .map_err(sql_err("holding a snapshot"))?;
        Ok(())
    }

    /// Forgets snapshot `gen`: its generation row goes, and so does every row that no
    /// remaining generation sees (chunks they referenced become garbage for gc).
    /// Refuses the live generation and held snapshots.
    pub fn forget(&mut self, gen: GenId) -> Result<()> {
        self.measure_forget(&[gen], false).map(|_| ())
    }

    /// Forgets `gens` in one transaction and returns the stored bytes of all garbage
    /// afterwards. With `dry_run` the transaction is rolled back: nothing changes.
    pub fn measure_forget(&mut self, gens: &[GenId], dry_run: bool) -> Result<u64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err("starting forget"))?;
        for gen in gens {
            forget_in(&tx, *gen)?;
        }
        let garbage: i64 = tx
            .query_row(
                "SELECT coalesce(sum(c.stored_size), 0) FROM chunk_garbage g JOIN chunks c ON c.chunk_id = g.chunk_id
                 WHERE c.refs = 0",
                [],
                |r| r.get(0),
            )
            .map_err(sql_err("measuring garbage"))?;
        if dry_run {
            tx.rollback().map_err(sql_err("undoing a dry run"))?;
        } else {
            tx.commit().map_err(sql_err("committing forget"))?;
        }
        Ok(garbage as u64)
    }

    /// Makes the live tree exactly what snapshot `gen` shows, in one transaction. The
    /// caller takes a safety snapshot first, so that no live row is younger than the
    /// live generation (every live row was frozen with it).
    pub fn rollback_to(&mut self, gen: GenId) -> Result<u64> {
        let live = self.live;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err("starting rollback"))?;
        let mut changed = 0u64;
        for (table, _) in VERSIONED {
            // Live rows the snapshot does not have: close them (or drop those born live).
            changed += tx
                .execute(
                    &format!("DELETE FROM {table} WHERE gen_from = ?1 AND gen_to = ?3"),
                    params![live.0, gen.0, GenId::OPEN.0],
                )
                .map_err(sql_err("rolling back"))? as u64;
            changed += tx
                .execute(
                    &format!("UPDATE {table} SET gen_to = ?1 WHERE gen_to = ?3 AND gen_from > ?2"),
                    params![live.0, gen.0, GenId::OPEN.0],
                )
                .map_err(sql_err("rolling back"))? as u64;
            // Snapshot rows the live tree lost: bring them back as new live rows.
            let columns: Vec<String> = {
                let stmt = tx
                    .prepare(&format!("SELECT * FROM {table} LIMIT 0"))
                    .map_err(sql_err("reading columns"))?;
                stmt.column_names().into_iter().map(str::to_string).collect()
            };
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
                        "INSERT INTO {table} ({}) SELECT {} FROM {table} WHERE gen_from <= ?2 AND gen_to > ?2 AND gen_to <= ?1",
                        columns.join(", "),
                        copied.join(", ")
                    ),
                    params![live.0, gen.0, GenId::OPEN.0],
                )
                .map_err(sql_err("rolling back"))? as u64;
        }
        tx.commit().map_err(sql_err("committing rollback"))?;
        self.touched = true;
        Ok(changed)
    }

    /// Stored bytes (per mirror) of the chunks that only snapshot `gen` references
    /// among the retained generations: what forgetting it alone would let gc free.
    pub fn exclusive_bytes(&self, gen: GenId) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT coalesce(sum(c.stored_size), 0) FROM chunks c
                 WHERE c.chunk_id IN (SELECT chunk_id FROM extents WHERE gen_from <= ?1 AND gen_to > ?1)
                   AND NOT EXISTS (
                       SELECT 1 FROM extents e JOIN generations g
                         ON g.gen_id >= e.gen_from AND g.gen_id < e.gen_to AND g.gen_id != ?1
                       WHERE e.chunk_id = c.chunk_id)",
                params![gen.0],
                |r| r.get::<_, i64>(0),
            )
            .map(|b| b as u64)
            .map_err(sql_err("measuring a snapshot's own bytes"))
    }

    /// Chunks that no extent row references any more: what gc may delete.
    pub fn garbage(&self) -> Result<Vec<ChunkInfo>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT c.chunk_id, c.plain_size, c.stored_size, c.mirrors, c.refs
                 FROM chunk_garbage g JOIN chunks c ON c.chunk_id = g.chunk_id WHERE c.refs = 0",
            )
            .map_err(sql_err("listing garbage"))?;
        let rows = stmt
            .query_map([], |r| {
                let id: Vec<u8> = r.get(0)?;
                Ok((
                    id,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .map_err(sql_err("listing garbage"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, plain, stored, mirrors, refs) = row.map_err(sql_err("listing garbage"))?;
            let id = ChunkId::from_slice(&id)
                .ok_or_else(|| Error::CorruptCatalog("a garbage row has a malformed chunk id".into()))?;
            out.push(ChunkInfo {
                id,
                plain_size: plain as u64,
                stored_size: stored as u64,
                mirrors: mirrors as u64,
                refs: refs as u64,
            });
        }
        Ok(out)
    }

    /// Drops the rows of chunks whose objects gc deleted. Refuses (and changes
    /// nothing) if any of them is referenced again.
    pub fn drop_chunks(&mut self, ids: &[ChunkId]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err("starting chunk removal"))?;
        for id in ids {
            let refs: i64 = tx
                .query_row(
                    "SELECT refs FROM chunks WHERE chunk_id = ?1",
                    params![&id.0[..]],
                    |r| r.get(0),
                )
                .map_err(sql_err("checking a chunk before removal"))?;
            if refs != 0 {
                return Err(Error::CorruptCatalog(format!(
                    "chunk {id} is referenced again; gc stopped"
                )));
            }
            tx.execute(
                "DELETE FROM chunk_garbage WHERE chunk_id = ?1",
                params![&id.0[..]],
            )
            .map_err(sql_err("removing a chunk"))?;
            tx.execute("DELETE FROM chunks WHERE chunk_id = ?1", params![&id.0[..]])
                .map_err(sql_err("removing a chunk"))?;
        }
        tx.commit().map_err(sql_err("committing chunk removal"))
    }
}

/// Forgets one generation inside an open transaction.
fn forget_in(tx: &rusqlite::Connection, gen: GenId) -> Result<()> {
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
    tx.execute("DELETE FROM generations WHERE gen_id = ?1", params![gen.0])
        .map_err(sql_err("dropping the generation"))?;
    for (table, _) in VERSIONED {
        let sql = format!(
            "DELETE FROM {table} WHERE gen_from <= ?1 AND gen_to > ?1 AND NOT EXISTS (
                 SELECT 1 FROM generations g WHERE g.gen_id >= {table}.gen_from AND g.gen_id < {table}.gen_to)"
        );
        tx.execute(&sql, params![gen.0])
            .map_err(sql_err("dropping rows only the snapshot saw"))?;
    }
    Ok(())
}
