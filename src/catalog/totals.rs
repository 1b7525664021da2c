//! What each generation holds, kept so that no command counts a whole tree: the
//! live tree's totals follow every change of its rows (the `live_totals` triggers of
//! schema.sql), a snapshot's are copied when it is frozen and never change, and the
//! bytes only one snapshot holds come from the rows born and closed between it and
//! its retained neighbours (the generation indexes).
//!
//! The counting versions (`counted_totals`, `counted_versions_bytes`) walk every row;
//! `check` compares them with the kept figures, the schema-2 migration fills them, and
//! a schema-2 catalog opened read-only (never migrated) falls back to them.

use rusqlite::{params, Connection, OptionalExtension};

use super::{sql_err, Catalog, TreeTotals};
use crate::error::{Error, Result};
use crate::types::GenId;

/// `GenId::OPEN` as SQL text: the partial `_closed` indexes are used only by queries
/// that compare `gen_to` with this literal (a bound parameter does not count).
pub(super) const OPEN_SQL: &str = "9223372036854775807";

/// The schema statements (by their first words) that version 3 added.
const V3_STATEMENTS: [&str; 17] = [
    "CREATE TABLE live_totals",
    "INSERT INTO live_totals",
    "CREATE TRIGGER inodes_live_insert",
    "CREATE TRIGGER inodes_live_delete",
    "CREATE TRIGGER inodes_live_update",
    "CREATE TRIGGER extents_live_insert",
    "CREATE TRIGGER extents_live_delete",
    "CREATE TRIGGER extents_live_update",
    "CREATE INDEX inodes_born",
    "CREATE INDEX inodes_closed",
    "CREATE INDEX dir_entries_born",
    "CREATE INDEX dir_entries_closed",
    "CREATE INDEX extents_born",
    "CREATE INDEX extents_closed",
    "CREATE INDEX xattrs_born",
    "CREATE INDEX xattrs_closed",
    "CREATE INDEX inodes_nameless",
];

/// The one statement of schema.sql that starts with `first_words` (a trigger up to
/// its `END;`), so that migrations run the schema's own text.
pub(super) fn schema_statement(first_words: &str) -> Result<&'static str> {
    let schema = super::SCHEMA;
    let start = schema
        .find(first_words)
        .ok_or_else(|| Error::CorruptCatalog(format!("schema.sql lacks `{first_words}`")))?;
    let rest = &schema[start..];
    let end = if first_words.starts_with("CREATE TRIGGER") {
        rest.find("\nEND;").map(|i| i + "\nEND;".len())
    } else {
        rest.find(';').map(|i| i + 1)
    };
    end.map(|e| &rest[..e])
        .ok_or_else(|| Error::CorruptCatalog(format!("schema.sql: `{first_words}` has no end")))
}

/// Sums over the inode rows and the extent rows that `filter` selects, through each
/// table's index `index` (`_born`, `_closed`) when one is given.
fn sums(conn: &Connection, index: Option<&str>, filter: &str, a: i64, b: i64) -> Result<[i64; 4]> {
    let from = |table: &str| match index {
        Some(suffix) => format!("{table} INDEXED BY {table}{suffix}"),
        None => table.to_string(),
    };
    let (inodes, files, logical): (i64, i64, i64) = conn
        .query_row(
            &format!(
                "SELECT count(*), coalesce(sum(kind = 1), 0), coalesce(sum(CASE WHEN kind = 1 THEN size ELSE 0 END), 0)
                 FROM {} WHERE {filter}",
                from("inodes")
            ),
            params![a, b],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(sql_err("counting inodes"))?;
    let data: i64 = conn
        .query_row(
            &format!(
                "SELECT coalesce(sum(length), 0) FROM {} WHERE {filter}",
                from("extents")
            ),
            params![a, b],
            |r| r.get(0),
        )
        .map_err(sql_err("counting extents"))?;
    Ok([inodes, files, logical, data])
}

fn totals_of(v: [i64; 4]) -> TreeTotals {
    TreeTotals {
        inodes: v[0].max(0) as u64,
        files: v[1].max(0) as u64,
        logical_bytes: v[2].max(0) as u64,
        data_bytes: v[3].max(0) as u64,
    }
}

fn raw(t: &TreeTotals) -> [i64; 4] {
    [
        t.inodes as i64,
        t.files as i64,
        t.logical_bytes as i64,
        t.data_bytes as i64,
    ]
}

/// The totals of generation `b` from those of an older generation `a`: plus the rows
/// `b` sees and `a` does not, minus the rows `a` sees and `b` does not. Costs what
/// changed between them (the generation indexes).
fn step(conn: &Connection, from: &TreeTotals, a: GenId, b: GenId) -> Result<TreeTotals> {
    let born = sums(
        conn,
        Some("_born"),
        "gen_from > ?1 AND gen_from <= ?2 AND gen_to > ?2",
        a.0,
        b.0,
    )?;
    let closed = sums(
        conn,
        Some("_closed"),
        &format!("gen_to > ?1 AND gen_to <= ?2 AND gen_to != {OPEN_SQL} AND gen_from <= ?1"),
        a.0,
        b.0,
    )?;
    let base = raw(from);
    Ok(totals_of(std::array::from_fn(|i| base[i] + born[i] - closed[i])))
}

/// Counts the tree `gen` sees, row by row.
fn count(conn: &Connection, gen: GenId) -> Result<TreeTotals> {
    sums(conn, None, "gen_from <= ?1 AND gen_to > ?1 AND ?2 = ?2", gen.0, 0).map(totals_of)
}

/// The retained generations either side of `gen`: the newest older one (0 when
/// none) and the oldest newer one (the live generation at the latest; `gen`'s own
/// id plus one when `gen` is live, which no row's range reaches past).
pub(super) fn neighbours(conn: &Connection, gen: GenId) -> Result<(GenId, GenId)> {
    conn.query_row(
        "SELECT (SELECT coalesce(max(gen_id), 0) FROM generations WHERE gen_id < ?1),
                (SELECT coalesce(min(gen_id), ?1 + 1) FROM generations WHERE gen_id > ?1)",
        params![gen.0],
        |r| Ok((GenId(r.get(0)?), GenId(r.get(1)?))),
    )
    .map_err(sql_err("finding neighbouring generations"))
}

/// Records the live totals as those of generation `gen`, being frozen now (inside
/// the freezing transaction).
pub(super) fn freeze(conn: &Connection, gen: GenId) -> Result<()> {
    conn.execute(
        "UPDATE generations SET (inodes, files, logical_bytes, data_bytes) =
             (SELECT inodes, files, logical_bytes, data_bytes FROM live_totals WHERE id = 0)
         WHERE gen_id = ?1",
        params![gen.0],
    )
    .map_err(sql_err("recording a snapshot's totals"))?;
    Ok(())
}

/// Schema 2 → 3: the totals columns, `live_totals` and its triggers, the generation
/// indexes; then the figures, counted once: the live tree and the oldest snapshot
/// row by row, every later snapshot from the one before (`step`).
pub(super) fn migrate_v2(conn: &Connection) -> Result<()> {
    for column in ["inodes", "files", "logical_bytes", "data_bytes"] {
        conn.execute_batch(&format!("ALTER TABLE generations ADD COLUMN {column} INTEGER"))
            .map_err(sql_err("adding generation totals"))?;
    }
    for first_words in V3_STATEMENTS {
        conn.execute_batch(schema_statement(first_words)?)
            .map_err(sql_err("adding generation indexes and totals"))?;
    }
    let live: i64 = conn
        .query_row("SELECT max(gen_id) FROM generations", [], |r| r.get(0))
        .map_err(sql_err("finding the live generation"))?;
    let t = count(conn, GenId(live))?;
    conn.execute(
        "UPDATE live_totals SET inodes = ?1, files = ?2, logical_bytes = ?3, data_bytes = ?4",
        rusqlite::params_from_iter(raw(&t)),
    )
    .map_err(sql_err("counting the live tree"))?;
    let frozen: Vec<i64> = {
        let mut stmt = conn
            .prepare("SELECT gen_id FROM generations WHERE frozen_ns IS NOT NULL ORDER BY gen_id")
            .map_err(sql_err("listing snapshots"))?;
        let rows = stmt
            .query_map([], |r| r.get(0))
            .map_err(sql_err("listing snapshots"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql_err("listing snapshots"))?
    };
    let mut previous: Option<(GenId, TreeTotals)> = None;
    for gen in frozen.into_iter().map(GenId) {
        let t = match &previous {
            None => count(conn, gen)?,
            Some((a, at)) => step(conn, at, *a, gen)?,
        };
        let [a, b, c, d] = raw(&t);
        conn.execute(
            "UPDATE generations SET inodes = ?2, files = ?3, logical_bytes = ?4, data_bytes = ?5 WHERE gen_id = ?1",
            params![gen.0, a, b, c, d],
        )
        .map_err(sql_err("recording a snapshot's totals"))?;
        previous = Some((gen, t));
    }
    Ok(())
}

impl Catalog {
    /// Counts and sizes of the tree as `gen` sees it: kept figures, O(1).
    pub fn tree_totals(&self, gen: GenId) -> Result<TreeTotals> {
        if self.version < 3 {
            return count(&self.conn, gen);
        }
        let kept: Option<[Option<i64>; 4]> = self
            .conn
            .query_row(
                "SELECT g.inodes, g.files, g.logical_bytes, g.data_bytes FROM generations g WHERE g.gen_id = ?1",
                params![gen.0],
                |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]),
            )
            .optional()
            .map_err(sql_err("reading a generation's totals"))?;
        match kept {
            None => Err(Error::NotFound(format!("generation {gen}"))),
            Some([Some(a), Some(b), Some(c), Some(d)]) => Ok(totals_of([a, b, c, d])),
            // The live generation (a frozen one without figures is corrupt, but
            // counting it gives the right answer anyway).
            Some(_) if gen == self.live => self.live_totals(),
            Some(_) => count(&self.conn, gen),
        }
    }

    /// The live tree's totals as the triggers keep them.
    fn live_totals(&self) -> Result<TreeTotals> {
        self.conn
            .query_row(
                "SELECT inodes, files, logical_bytes, data_bytes FROM live_totals WHERE id = 0",
                [],
                |r| Ok(totals_of([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?])),
            )
            .map_err(sql_err("reading the live tree's totals"))
    }

    /// The totals of `gen` counted row by row (what `tree_totals` must equal).
    pub fn counted_totals(&self, gen: GenId) -> Result<TreeTotals> {
        count(&self.conn, gen)
    }

    /// Every retained generation whose kept totals differ from those counted, with
    /// both: the live tree and the oldest snapshot are counted row by row, each later
    /// snapshot from the one before, so this costs two trees plus the changes.
    pub fn wrong_totals(&self) -> Result<Vec<(GenId, TreeTotals, TreeTotals)>> {
        if self.version < 3 {
            return Ok(Vec::new());
        }
        let mut wrong = Vec::new();
        let mut previous: Option<(GenId, TreeTotals)> = None;
        for g in self.generations()? {
            let counted = if g.id == self.live {
                count(&self.conn, g.id)?
            } else {
                match &previous {
                    None => count(&self.conn, g.id)?,
                    Some((a, at)) => step(&self.conn, at, *a, g.id)?,
                }
            };
            let kept = self.tree_totals(g.id)?;
            if kept != counted {
                wrong.push((g.id, kept, counted));
            }
            previous = Some((g.id, counted));
        }
        Ok(wrong)
    }

    /// Records `totals` as those of `gen` (a repair after `wrong_totals`).
    pub(super) fn set_totals(&mut self, gen: GenId, totals: &TreeTotals) -> Result<()> {
        let [a, b, c, d] = raw(totals);
        let sql = if gen == self.live {
            "UPDATE live_totals SET inodes = ?2, files = ?3, logical_bytes = ?4, data_bytes = ?5 WHERE ?1 = ?1"
        } else {
            "UPDATE generations SET inodes = ?2, files = ?3, logical_bytes = ?4, data_bytes = ?5 WHERE gen_id = ?1"
        };
        self.conn
            .execute(sql, params![gen.0, a, b, c, d])
            .map_err(sql_err("recording recounted totals"))?;
        Ok(())
    }

    /// Data bytes (extent lengths) summed over every retained generation, the live
    /// one included: what storing each version in full would cost.
    pub fn all_versions_data_bytes(&self) -> Result<u64> {
        if self.version < 3 {
            return self.counted_versions_bytes();
        }
        let frozen: i64 = self
            .conn
            .query_row(
                "SELECT coalesce(sum(data_bytes), 0) FROM generations WHERE frozen_ns IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .map_err(sql_err("summing versions"))?;
        Ok(frozen.max(0) as u64 + self.live_totals()?.data_bytes)
    }

    /// `all_versions_data_bytes` counted row by row.
    pub fn counted_versions_bytes(&self) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT coalesce(sum(e.length * (SELECT count(*) FROM generations g
                                                  WHERE g.gen_id >= e.gen_from AND g.gen_id < e.gen_to)), 0)
                 FROM extents e",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|b| b as u64)
            .map_err(sql_err("summing versions"))
    }

    /// Stored bytes (per mirror) of the chunks that only snapshot `gen` references
    /// among the retained generations: what forgetting it alone would let gc free.
    /// Such a chunk's every row sees `gen` and no other retained generation, so was
    /// born after the previous one and closed by the next: only rows closed between
    /// `gen` and its successor are looked at.
    pub fn exclusive_bytes(&self, gen: GenId) -> Result<u64> {
        let (prev, next) = neighbours(&self.conn, gen)?;
        // Named, as in forget (a schema-2 catalog read as it is has no such index).
        let extents = if self.version >= 3 {
            "extents INDEXED BY extents_closed"
        } else {
            "extents"
        };
        self.conn
            .query_row(
                &format!(
                    "SELECT coalesce(sum(c.stored_size), 0) FROM chunks c
                     WHERE c.chunk_id IN (
                           SELECT chunk_id FROM {extents}
                           WHERE gen_to > ?1 AND gen_to <= ?3 AND gen_to != {OPEN_SQL}
                             AND gen_from > ?2 AND gen_from <= ?1)
                       AND NOT EXISTS (
                           SELECT 1 FROM extents e JOIN generations g
                             ON g.gen_id >= e.gen_from AND g.gen_id < e.gen_to AND g.gen_id != ?1
                           WHERE e.chunk_id = c.chunk_id)"
                ),
                params![gen.0, prev.0, next.0],
                |r| r.get::<_, i64>(0),
            )
            .map(|b| b as u64)
            .map_err(sql_err("measuring a snapshot's own bytes"))
    }
}
