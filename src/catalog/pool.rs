//! Read connections beside the writer: a pool of read-only catalogs on the same
//! database, for reads that must not wait for the writer's lock (everything inside
//! a snapshot, which never changes, and the live tree while nothing is buffered).
//! WAL gives each statement (and each read transaction of `with_consistent`) a
//! consistent view of the last commit, whatever the writer is doing.
//!
//! Lock scope: the pool's mutex is held only to take a connection out of the idle
//! list or put it back, never while a query runs.

use std::path::PathBuf;
use std::sync::Mutex;

use super::Catalog;
use crate::error::Result;

/// Idle connections kept at most (more are opened when many threads read at once,
/// and closed again when they come back to a full pool).
const KEEP_IDLE: usize = 16;

/// Read-only connections to one catalog, opened on demand and reused.
pub struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Catalog>>,
}

impl ReadPool {
    /// A pool on the catalog at `path` (opened lazily).
    pub fn new(path: PathBuf) -> ReadPool {
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a read-only connection of its own.
    pub fn with<T>(&self, f: impl FnOnce(&Catalog) -> Result<T>) -> Result<T> {
        let taken = self.lock().pop();
        let catalog = match taken {
            Some(c) => c,
            None => Catalog::open_read_only(&self.path)?,
        };
        let result = f(&catalog);
        let mut idle = self.lock();
        if idle.len() < KEEP_IDLE {
            idle.push(catalog);
        }
        result
    }

    /// `with`, inside one read transaction: every query of `f` sees the same commit,
    /// which a reader of the live tree (which changes between queries) needs.
    pub fn with_consistent<T>(&self, f: impl FnOnce(&Catalog) -> Result<T>) -> Result<T> {
        self.with(|cat| {
            cat.conn
                .execute_batch("BEGIN DEFERRED")
                .map_err(super::sql_err("starting a read transaction"))?;
            let result = f(cat);
            // A read transaction changes nothing: ending it cannot lose anything.
            let _ = cat.conn.execute_batch("COMMIT");
            result
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Catalog>> {
        // Push and pop cannot leave the list half-changed: a poisoned lock is fine.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}
