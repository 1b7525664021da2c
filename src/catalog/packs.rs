//! Where chunks lie: the pack entry of each chunk row and the per-pack byte counts
//! that schema.sql's triggers keep (`packs`), for gc, compaction, scrub, check,
//! recovery and `snapfs upgrade`.
//!
//! Owns the queries on `chunks.pack_*` and `packs`; what they mean for the files on
//! disk is the store's and the operations' business.

use rusqlite::params;

use super::model::ChunkInfo;
use super::{read, sql_err, Catalog};
use crate::error::Result;
use crate::types::{ChunkId, Location, MirrorId, PackId};

/// A pack as the catalog counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackRow {
    pub id: PackId,
    /// Entry bytes of every chunk row ever placed in it.
    pub bytes: u64,
    /// Entry bytes of the chunk rows that name it now.
    pub live_bytes: u64,
}

/// Marks the mirrors `ids` incomplete in `tx` (to be filled before they are trusted
/// again): a transaction naming places the store synced while they were not trusted.
fn mark_incomplete(tx: &rusqlite::Transaction<'_>, ids: &[MirrorId]) -> Result<()> {
    for id in ids {
        tx.execute(
            "UPDATE mirrors SET state = 'filling' WHERE mirror_id = ?1 AND state != 'filling'",
            params![id.0],
        )
        .map_err(sql_err("marking a mirror incomplete"))?;
    }
    Ok(())
}

/// A `packs` row (pack_id, bytes, live_bytes).
fn pack_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PackRow> {
    Ok(PackRow {
        id: PackId(r.get::<_, i64>(0)? as u64),
        bytes: r.get::<_, i64>(1)? as u64,
        live_bytes: r.get::<_, i64>(2)? as u64,
    })
}

impl Catalog {
    /// Every pack the catalog counts, by id.
    pub fn packs(&self) -> Result<Vec<PackRow>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT pack_id, bytes, live_bytes FROM packs ORDER BY pack_id")
            .map_err(sql_err("listing packs"))?;
        let rows = stmt
            .query_map([], pack_from_row)
            .map_err(sql_err("listing packs"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql_err("listing packs"))
    }

    /// The first pack number no pack row or chunk row uses.
    pub fn next_pack_id(&self) -> Result<PackId> {
        let next: i64 = self
            .conn
            .query_row(
                "SELECT max(coalesce((SELECT max(pack_id) FROM packs), 0),
                            coalesce((SELECT max(pack_id) FROM chunks WHERE pack_id IS NOT NULL), 0)) + 1",
                [],
                |r| r.get(0),
            )
            .map_err(sql_err("choosing a pack number"))?;
        Ok(PackId(next as u64))
    }

    /// Packs that hold no live entry: what gc deletes (after the reads that may still
    /// use them).
    pub fn dead_packs(&self) -> Result<Vec<PackId>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT pack_id FROM packs WHERE live_bytes <= 0 ORDER BY pack_id")
            .map_err(sql_err("finding dead packs"))?;
        let rows = stmt
            .query_map([], |r| Ok(PackId(r.get::<_, i64>(0)? as u64)))
            .map_err(sql_err("finding dead packs"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql_err("finding dead packs"))
    }

    /// Up to `limit` packs that still hold a live entry but whose live bytes are
    /// below `percent`% of their bytes, the emptiest first: what compaction
    /// rewrites. O(packs), a few hundred rows per TB.
    pub fn sparse_packs(&self, percent: u64, limit: usize) -> Result<Vec<PackRow>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT pack_id, bytes, live_bytes FROM packs
                 WHERE live_bytes > 0 AND live_bytes * 100 < bytes * ?1
                 ORDER BY live_bytes * 1.0 / bytes, pack_id LIMIT ?2",
            )
            .map_err(sql_err("finding sparse packs"))?;
        let rows = stmt
            .query_map(params![percent as i64, limit as i64], pack_from_row)
            .map_err(sql_err("finding sparse packs"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql_err("finding sparse packs"))
    }

    /// Every chunk row that names pack `pack`, in entry order.
    pub fn chunks_in_pack(&self, pack: PackId) -> Result<Vec<ChunkInfo>> {
        let sql = format!(
            "SELECT {} FROM chunks INDEXED BY chunks_by_pack
             WHERE pack_id = ?1 ORDER BY pack_offset",
            read::CHUNK_COLUMNS
        );
        let mut stmt = self
            .conn
            .prepare_cached(&sql)
            .map_err(sql_err("listing a pack's chunks"))?;
        let rows = stmt
            .query_map(params![pack.0 as i64], read::chunk_from_row)
            .map_err(sql_err("listing a pack's chunks"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql_err("listing a pack's chunks"))
    }

    /// Moves each chunk of `moves` from its place `from` to `to`, in one
    /// transaction, only if it is still at `from` (gc may have dropped it since
    /// compaction read it; nothing else moves a chunk), with the mirrors `incomplete`
    /// marked so (`Redundancy::untrusted` at the copies' sync). Returns how many moved.
    pub fn move_chunks(
        &mut self,
        moves: &[(ChunkId, Location, Location)],
        incomplete: &[MirrorId],
    ) -> Result<u64> {
        let tx = self.begin()?;
        let mut moved = 0;
        mark_incomplete(&tx, incomplete)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE chunks SET pack_id = ?2, pack_offset = ?3, entry_len = ?4
                     WHERE chunk_id = ?1 AND pack_id = ?5 AND pack_offset = ?6 AND entry_len = ?7",
                )
                .map_err(sql_err("moving a chunk"))?;
            for (id, from, to) in moves {
                moved += stmt
                    .execute(params![
                        &id.0[..],
                        to.pack.0 as i64,
                        to.offset as i64,
                        i64::from(to.len),
                        from.pack.0 as i64,
                        from.offset as i64,
                        i64::from(from.len)
                    ])
                    .map_err(sql_err("moving a chunk"))? as u64;
            }
        }
        tx.commit().map_err(sql_err("committing chunk moves"))?;
        Ok(moved)
    }

    /// Forgets the rows of `ids`, packs no chunk row names (refuses, changing nothing,
    /// when one is named again). Their files may then go.
    pub fn drop_pack_rows(&mut self, ids: &[PackId]) -> Result<()> {
        let tx = self.begin()?;
        for id in ids {
            let named: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM chunks WHERE pack_id = ?1)",
                    params![id.0 as i64],
                    |r| r.get(0),
                )
                .map_err(sql_err("checking a pack before removal"))?;
            if named {
                return Err(crate::Error::CorruptCatalog(format!(
                    "pack {id} was to be deleted but a chunk row names it"
                )));
            }
            tx.execute("DELETE FROM packs WHERE pack_id = ?1", params![id.0 as i64])
                .map_err(sql_err("forgetting a pack"))?;
        }
        tx.commit().map_err(sql_err("committing pack removal"))
    }

    /// Up to `limit` chunks with a place, in place order (pack, then offset), starting
    /// after `after`: scrub, check and fills walk the packs this way.
    pub fn chunks_by_place(&self, after: Option<Location>, limit: usize) -> Result<Vec<ChunkInfo>> {
        let (pack, offset) = after.map_or((-1, -1), |a| (a.pack.0 as i64, a.offset as i64));
        let sql = format!(
            "SELECT {} FROM chunks INDEXED BY chunks_by_pack
             WHERE pack_id IS NOT NULL AND (pack_id, pack_offset) > (?1, ?2)
             ORDER BY pack_id, pack_offset LIMIT ?3",
            read::CHUNK_COLUMNS
        );
        let mut stmt = self
            .conn
            .prepare_cached(&sql)
            .map_err(sql_err("listing chunks by place"))?;
        let rows = stmt
            .query_map(params![pack, offset, limit as i64], read::chunk_from_row)
            .map_err(sql_err("listing chunks by place"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql_err("listing chunks by place"))
    }

    /// How many chunks lie at or before `at` in place order (progress on resume).
    pub fn count_chunks_placed_upto(&self, at: Location) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT count(*) FROM chunks INDEXED BY chunks_by_pack
                 WHERE pack_id IS NOT NULL AND (pack_id, pack_offset) <= (?1, ?2)",
                params![at.pack.0 as i64, at.offset as i64],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(sql_err("counting chunks"))
    }

    /// Up to `limit` chunks without a place (a format-1 repository being upgraded), in
    /// id order.
    pub fn unplaced_chunks(&self, limit: usize) -> Result<Vec<ChunkInfo>> {
        let sql = format!(
            "SELECT {} FROM chunks WHERE pack_id IS NULL ORDER BY chunk_id LIMIT ?1",
            read::CHUNK_COLUMNS
        );
        let mut stmt = self
            .conn
            .prepare_cached(&sql)
            .map_err(sql_err("listing unpacked chunks"))?;
        let rows = stmt
            .query_map(params![limit as i64], read::chunk_from_row)
            .map_err(sql_err("listing unpacked chunks"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql_err("listing unpacked chunks"))
    }

    /// How many chunks have no place (a format-1 repository being upgraded).
    pub fn unplaced_count(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT count(*) FROM chunks WHERE pack_id IS NULL", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(sql_err("counting unpacked chunks"))
    }

    /// Moves each chunk of `moves` to its new place, in one transaction (the triggers
    /// move its bytes between the packs' counts). A chunk the catalog no longer has
    /// is skipped, the mirrors `incomplete` are marked so; returns how many moved.
    pub fn set_locations(&mut self, moves: &[(ChunkId, Location)], incomplete: &[MirrorId]) -> Result<u64> {
        let tx = self.begin()?;
        let mut moved = 0;
        mark_incomplete(&tx, incomplete)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE chunks SET pack_id = ?2, pack_offset = ?3, entry_len = ?4 WHERE chunk_id = ?1",
                )
                .map_err(sql_err("placing a chunk"))?;
            for (id, at) in moves {
                moved += stmt
                    .execute(params![
                        &id.0[..],
                        at.pack.0 as i64,
                        at.offset as i64,
                        i64::from(at.len)
                    ])
                    .map_err(sql_err("placing a chunk"))? as u64;
            }
        }
        tx.commit().map_err(sql_err("committing chunk places"))?;
        Ok(moved)
    }
}

/// What schema 4 adds to schema 3, in schema.sql's own words.
const V4_STATEMENTS: [&str; 5] = [
    "CREATE TABLE packs",
    "CREATE TRIGGER chunks_pack_insert",
    "CREATE TRIGGER chunks_pack_delete",
    "CREATE TRIGGER chunks_pack_move",
    "CREATE INDEX chunks_by_pack",
];

/// Schema 3 to 4, inside the migration's transaction: the place columns (NULL: not
/// packed yet), the pack counts, and the upgrade mark that keeps the repository
/// refused until `snapfs upgrade` has packed every chunk and dropped `mirrors`.
pub(super) fn migrate_v3(conn: &rusqlite::Connection) -> Result<()> {
    for column in ["pack_id", "pack_offset", "entry_len"] {
        conn.execute_batch(&format!("ALTER TABLE chunks ADD COLUMN {column} INTEGER"))
            .map_err(sql_err("adding chunk places"))?;
    }
    for first_words in V4_STATEMENTS {
        conn.execute_batch(super::totals::schema_statement(first_words)?)
            .map_err(sql_err("adding the pack table"))?;
    }
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?1, 'packing')",
        params![super::UPGRADE_KEY],
    )
    .map_err(sql_err("marking the upgrade"))?;
    Ok(())
}
