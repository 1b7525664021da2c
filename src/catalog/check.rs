//! The catalog's own invariants, checked with SQL: SQLite integrity and foreign keys,
//! well-formed and non-overlapping generation ranges, link counts and names in the
//! live tree, and chunk reference counts. Each finding is one line of text.

use rusqlite::params;

use super::{sql_err, Catalog};
use crate::error::Result;
use crate::types::GenId;

/// Each versioned table with its key columns (without gen_from).
const KEYS: [(&str, &str); 4] = [
    ("inodes", "inode_id"),
    ("dir_entries", "parent_id, name"),
    ("extents", "inode_id, file_offset"),
    ("xattrs", "inode_id, name"),
];

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
        let q = |sql: &str| -> Result<i64> {
            self.conn
                .query_row(sql, params![GenId::OPEN.0], |r| r.get(0))
                .map_err(sql_err("checking invariants"))
        };
        for (table, key) in KEYS {
            let overlaps = q(&format!(
                "SELECT count(*) FROM (SELECT gen_from, lag(gen_to) OVER (PARTITION BY {key} ORDER BY gen_from) AS prev_to
                 FROM {table}) WHERE prev_to > gen_from AND ?1 = ?1"
            ))?;
            if overlaps > 0 {
                problems.push(format!(
                    "{table}: {overlaps} rows overlap an older version of the same key"
                ));
            }
        }
        let dangling = q(
            "SELECT count(*) FROM dir_entries e WHERE e.gen_to = ?1 AND NOT EXISTS (
                              SELECT 1 FROM inodes i WHERE i.inode_id = e.inode_id AND i.gen_to = ?1)",
        )?;
        if dangling > 0 {
            problems.push(format!(
                "{dangling} live names point at inodes the live tree does not have"
            ));
        }
        let bad_files = q("SELECT count(*) FROM inodes i WHERE i.gen_to = ?1 AND i.kind != 2 AND i.nlink != (
                               SELECT count(*) FROM dir_entries e WHERE e.inode_id = i.inode_id AND e.gen_to = ?1)")?;
        if bad_files > 0 {
            problems.push(format!(
                "{bad_files} live files have a link count that does not match their names"
            ));
        }
        let bad_dirs = q(
            "SELECT count(*) FROM inodes d WHERE d.gen_to = ?1 AND d.kind = 2 AND d.nlink != 2 + (
                              SELECT count(*) FROM dir_entries e JOIN inodes c
                                ON c.inode_id = e.inode_id AND c.gen_to = ?1 AND c.kind = 2
                              WHERE e.parent_id = d.inode_id AND e.gen_to = ?1)",
        )?;
        if bad_dirs > 0 {
            problems.push(format!(
                "{bad_dirs} live folders have a link count that does not match their subfolders"
            ));
        }
        let bad_refs = q("SELECT count(*) FROM chunks c WHERE ?1 = ?1 AND c.refs != (
                              SELECT count(*) FROM extents e WHERE e.chunk_id = c.chunk_id)")?;
        if bad_refs > 0 {
            problems.push(format!("{bad_refs} chunks have a wrong reference count"));
        }
        let unowned = q("SELECT count(*) FROM chunks WHERE refs > 0 AND mirrors = 0 AND ?1 = ?1")?;
        if unowned > 0 {
            problems.push(format!("{unowned} referenced chunks are recorded in no mirror"));
        }
        Ok(problems)
    }
}
