//! The SQLite catalog: every generation of the tree, the chunk list, the mirrors and
//! the repository's settings.
//!
//! Owns: `catalog.db` and its schema (`schema.sql` at the crate root, embedded here),
//! migrations (PRAGMA user_version), generation-ranged rows (see schema.sql).
//! This is the only module that names `rusqlite`. It knows nothing of FUSE, of the
//! object store or of POSIX permission rules: callers decide what is allowed, the
//! catalog records it and keeps every frozen generation exactly as it was.

mod check;
mod history;
mod listing;
mod model;
mod packs;
mod pool;
mod read;
mod totals;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

pub use listing::{ListedEntry, COOKIE_END, FIRST_COOKIE};
pub use model::{
    ChunkInfo, ChunkTotals, DirEntry, Extent, FileKind, Generation, InodeAttr, MirrorRecord, NewInode,
    RollbackChanges, Settings, TreeTotals,
};
pub use packs::PackRow;
pub use pool::ReadPool;
pub use write::{Changed, Left, Txn, Unlinked};

use crate::chunker::ChunkerParams;
use crate::error::{Error, Result};
use crate::types::{ChunkId, GenId, InodeId, Location, MirrorId, RepoId};

/// The schema, documented table by table.
pub const SCHEMA: &str = include_str!("../../schema.sql");

/// The schema version this code writes and reads (PRAGMA user_version): 4, storage
/// format 2. Versions 1 to 3 are format 1, opened only by `snapfs upgrade`.
pub const SCHEMA_VERSION: u32 = 4;

/// The settings key present while `snapfs upgrade` moves chunks into packs.
pub const UPGRADE_KEY: &str = "upgrade";

/// Prepared statements kept per connection: more than the catalog has.
const STATEMENT_CACHE: usize = 128;

/// Wraps a rusqlite error with what was being done.
pub(crate) fn sql_err(context: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| {
        // A full disk under the catalog is ENOSPC to the writer, like a full mirror.
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            return Error::no_space(format!("catalog: {context}"));
        }
        Error::Catalog {
            context: context.to_string(),
            source: Box::new(e),
        }
    }
}

/// How a new catalog starts.
#[derive(Clone, Debug)]
pub struct NewCatalog {
    pub settings: Settings,
    /// Owner, group and mode of the root folder.
    pub root_uid: u32,
    pub root_gid: u32,
    pub root_mode: u32,
    pub mirrors: Vec<PathBuf>,
}

/// Makes the committed transactions of one catalog durable without its connection,
/// so that a caller can commit under a lock and sync after releasing it: an
/// fdatasync of the WAL, which holds every commit since the last checkpoint (a
/// checkpoint syncs what it copies into the database), and an fsync of the folder,
/// whose entry for a WAL created since SQLite last synced may not be durable yet.
#[derive(Clone, Debug)]
pub struct WalSync {
    wal: PathBuf,
    dir: PathBuf,
}

impl WalSync {
    /// On return, a power loss cannot undo any transaction committed before the call.
    pub fn sync(&self) -> Result<()> {
        let ctx = || format!("syncing the catalog's WAL {}", self.wal.display());
        match std::fs::File::open(&self.wal) {
            Ok(file) => file.sync_data().map_err(Error::io_with(ctx()))?,
            // No WAL: a checkpoint copied (and synced) everything and removed it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io_with(ctx())(e)),
        }
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::io_with(ctx()))
    }
}

/// Copies the WAL into catalog.db from a connection of its own, so that no commit
/// pays for it (see `Catalog::checkpoint_elsewhere`). A checkpoint runs beside the
/// writer and the readers: it copies the frames no reader still needs, syncs the WAL
/// before and the database after (so nothing committed depends on the WAL alone once
/// the WAL restarts), and never waits for anyone.
pub struct Checkpointer {
    conn: Connection,
    wal: PathBuf,
}

impl Checkpointer {
    /// The WAL's size on disk now (0 when there is none).
    pub fn wal_bytes(&self) -> u64 {
        std::fs::metadata(&self.wal).map_or(0, |m| m.len())
    }

    /// One passive checkpoint: the frames copied and the frames in the WAL.
    pub fn run(&self) -> Result<(i64, i64)> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(2)?, r.get(1)?))
            })
            .map_err(sql_err("checkpointing the catalog"))
    }
}

/// An open catalog database.
pub struct Catalog {
    conn: Connection,
    /// The schema version of the database (older than `SCHEMA_VERSION` only when
    /// opened read-only, which never migrates).
    version: u32,
    live: GenId,
    max_extent: u64,
    read_only: bool,
    /// Whether a write transaction started since the last freeze (or since open:
    /// assumed yes). Lets scheduled snapshots skip an unchanged tree.
    touched: bool,
    /// Group commit: write transactions become savepoints of one open transaction,
    /// committed by `commit_batch` (see `set_batching`).
    batching: bool,
    batch_open: bool,
    /// Batches begun since open: the open one's number.
    batches_begun: u64,
    /// Ids whose rows write transactions in a batch changed since the last
    /// `take_changed`.
    changed: std::cell::RefCell<Changed>,
    /// The folder of catalog.db (the repository), against which mirror paths
    /// recorded relative (mirrors inside the repository) are resolved.
    dir: PathBuf,
    /// The database file.
    path: PathBuf,
}

impl Catalog {
    /// Creates `path` (which must not exist) with the schema, the settings, the mirrors
    /// and an empty root folder in generation 1. Durable on return.
    pub fn create(path: &Path, new: &NewCatalog) -> Result<Catalog> {
        if path.exists() {
            return Err(Error::RepositoryExists {
                path: path.parent().unwrap_or(path).to_path_buf(),
            });
        }
        let mut conn = Connection::open(path).map_err(sql_err("creating catalog.db"))?;
        configure(&conn)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err("starting catalog creation"))?;
        tx.execute_batch(SCHEMA).map_err(sql_err("creating the schema"))?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql_err("setting the schema version"))?;
        let s = &new.settings;
        let rows: [(&str, String); 8] = [
            ("repo_id", s.repo_id.to_string()),
            ("chunk_min", s.chunker.min_size.to_string()),
            ("chunk_avg", s.chunker.avg_size.to_string()),
            ("chunk_max", s.chunker.max_size.to_string()),
            ("chunk_seed", s.chunker.seed.to_string()),
            (
                "zstd_level",
                s.zstd_level.map_or("none".to_string(), |l| l.to_string()),
            ),
            ("created_ns", s.created_ns.to_string()),
            ("next_inode_id", (InodeId::ROOT.0 + 1).to_string()),
        ];
        for (key, value) in rows {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .map_err(sql_err("writing settings"))?;
        }
        tx.execute(
            "INSERT INTO generations (gen_id, created_ns) VALUES (1, ?1)",
            params![s.created_ns],
        )
        .map_err(sql_err("opening the first generation"))?;
        for (i, mirror) in new.mirrors.iter().enumerate() {
            tx.execute(
                "INSERT INTO mirrors (mirror_id, path, state, added_ns) VALUES (?1, ?2, 'complete', ?3)",
                params![
                    i as i64,
                    stored_mirror_path(path, mirror).to_string_lossy(),
                    s.created_ns
                ],
            )
            .map_err(sql_err("recording mirrors"))?;
        }
        // The root: a folder whose "." and ".." both count, as on every Unix filesystem.
        let sql = format!(
            "INSERT INTO inodes ({}, gen_from, gen_to) VALUES (?1, ?2, ?3, ?4, ?5, 0, 2, 0, ?6, ?6, ?6, NULL, 1, ?7)",
            read::INODE_COLUMNS
        );
        tx.execute(
            &sql,
            params![
                InodeId::ROOT.0,
                FileKind::Dir.code(),
                new.root_mode & 0o7777,
                new.root_uid,
                new.root_gid,
                s.created_ns,
                GenId::OPEN.0
            ],
        )
        .map_err(sql_err("creating the root folder"))?;
        tx.commit().map_err(sql_err("committing the new catalog"))?;
        Catalog::from_conn(conn, path, false)
    }

    /// Opens an existing catalog for reading and writing. The caller holds the
    /// repository lock. A format-1 catalog, or one whose upgrade is unfinished, is
    /// refused with `NeedsUpgrade`.
    pub fn open(path: &Path) -> Result<Catalog> {
        Catalog::open_with(path, false, false)
    }

    /// Opens an existing catalog read-only; safe while a writer has it open. Refuses
    /// what `open` refuses.
    pub fn open_read_only(path: &Path) -> Result<Catalog> {
        Catalog::open_with(path, true, false)
    }

    /// Opens a catalog of any format for `snapfs upgrade`, migrating a format-1 one to
    /// schema 4 (one transaction; its chunks are then unplaced until the upgrade
    /// packs them). The caller holds the repository lock.
    pub fn open_for_upgrade(path: &Path) -> Result<Catalog> {
        Catalog::open_with(path, false, true)
    }

    /// A copy of the catalog (e.g. in a mirror) opened read-only whatever its format,
    /// for `recover` to inspect; nothing but its generations and settings is read.
    pub fn open_copy(path: &Path) -> Result<Catalog> {
        Catalog::open_with(path, true, true)
    }

    /// True while `snapfs upgrade` has chunks left to pack.
    pub fn upgrade_unfinished(&self) -> Result<bool> {
        if self.version < SCHEMA_VERSION {
            return Ok(true);
        }
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM settings WHERE key = ?1)",
                params![UPGRADE_KEY],
                |r| r.get(0),
            )
            .map_err(sql_err("reading the upgrade state"))
    }

    /// Ends an upgrade: drops the format-1 column and the upgrade mark, in one
    /// transaction. Every chunk must have its place.
    pub fn finish_upgrade(&mut self) -> Result<()> {
        let tx = self.begin()?;
        let unplaced: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM chunks WHERE pack_id IS NULL)",
                [],
                |r| r.get(0),
            )
            .map_err(sql_err("checking the upgrade"))?;
        if unplaced {
            return Err(Error::CorruptCatalog(
                "the upgrade cannot finish while chunks have no place in a pack".into(),
            ));
        }
        let has_mirrors_column: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info('chunks') WHERE name = 'mirrors')",
                [],
                |r| r.get(0),
            )
            .map_err(sql_err("checking the upgrade"))?;
        if has_mirrors_column {
            tx.execute_batch("ALTER TABLE chunks DROP COLUMN mirrors")
                .map_err(sql_err("dropping chunks.mirrors"))?;
        }
        tx.execute("DELETE FROM settings WHERE key = ?1", params![UPGRADE_KEY])
            .map_err(sql_err("ending the upgrade"))?;
        tx.commit().map_err(sql_err("committing the end of the upgrade"))
    }

    fn open_with(path: &Path, read_only: bool, any_format: bool) -> Result<Catalog> {
        let catalog = Catalog::open_unchecked(path, read_only, any_format).map_err(|e| match e {
            // Not a database at all, or one SQLite cannot read: say what to do.
            Error::Catalog { context, source } => Error::CorruptCatalog(format!(
                "{} cannot be read ({context}: {source}); rebuild it from a mirror's copy with `snapfs recover`",
                path.display()
            )),
            other => other,
        })?;
        if !any_format && catalog.upgrade_unfinished()? {
            return Err(Error::NeedsUpgrade {
                path: path.parent().unwrap_or(path).to_path_buf(),
                interrupted: catalog.version == SCHEMA_VERSION,
            });
        }
        Ok(catalog)
    }

    fn open_unchecked(path: &Path, read_only: bool, any_format: bool) -> Result<Catalog> {
        if !path.is_file() {
            return Err(Error::NotARepository {
                path: path.parent().unwrap_or(path).to_path_buf(),
            });
        }
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let conn = Connection::open_with_flags(path, flags).map_err(sql_err("opening catalog.db"))?;
        if !read_only {
            configure(&conn)?;
        } else {
            conn.busy_timeout(std::time::Duration::from_secs(10))
                .map_err(sql_err("configuring catalog.db"))?;
        }
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(sql_err("reading the schema version"))?;
        if version == 0 {
            return Err(Error::CorruptCatalog(format!(
                "{} has no snapfs schema; run `snapfs recover` to rebuild it from a mirror",
                path.display()
            )));
        }
        if version > SCHEMA_VERSION {
            return Err(Error::UnsupportedFormat {
                what: path.display().to_string(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        let mut conn = conn;
        let migrated = version < SCHEMA_VERSION && !read_only && any_format;
        if migrated {
            migrate(&mut conn, version)?;
        }
        let mut catalog = Catalog::from_conn(conn, path, read_only)?;
        // The schema the file has now: an old one is only migrated for the upgrade.
        catalog.version = if migrated { SCHEMA_VERSION } else { version };
        Ok(catalog)
    }

    fn from_conn(conn: Connection, path: &Path, read_only: bool) -> Result<Catalog> {
        // The mount runs some 40 distinct statements; rusqlite keeps 16 prepared by
        // default, so the rest were parsed again and again (SQLite's parser was a
        // tenth of the daemon's time during a `find`).
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mut catalog = Catalog {
            version: SCHEMA_VERSION,
            conn,
            live: GenId(0),
            max_extent: 0,
            read_only,
            touched: true,
            batching: false,
            batch_open: false,
            batches_begun: 0,
            changed: Default::default(),
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
            dir: std::path::absolute(path.parent().unwrap_or(Path::new(".")))
                .unwrap_or_else(|_| path.parent().map(Path::to_path_buf).unwrap_or_default()),
        };
        catalog.refresh()?;
        Ok(catalog)
    }

    /// Re-reads the live generation and the extent bound (after another process wrote).
    pub fn refresh(&mut self) -> Result<()> {
        self.live = self
            .conn
            .query_row("SELECT max(gen_id) FROM generations", [], |row| {
                row.get::<_, Option<i64>>(0)
            })
            .map_err(sql_err("finding the live generation"))?
            .map(GenId)
            .ok_or_else(|| Error::CorruptCatalog("no generation at all".into()))?;
        self.max_extent = self.settings()?.chunker.max_size as u64;
        Ok(())
    }

    /// A pool of read-only connections to this catalog's database.
    pub fn read_pool(&self) -> ReadPool {
        ReadPool::new(self.path.clone())
    }

    /// The live (newest, open) generation.
    pub fn live(&self) -> GenId {
        self.live
    }

    /// A count that moves with every row this connection inserts, updates or deletes
    /// (SQLite's total changes, triggers' included): the same count twice means that
    /// nothing was written through this catalog in between.
    pub fn change_count(&self) -> u64 {
        self.conn.total_changes()
    }

    /// False when nothing can have changed in the live tree since the last snapshot
    /// this catalog took (conservatively true after open).
    pub fn live_touched(&self) -> bool {
        self.touched
    }

    /// True while a group-commit batch holds changes that other connections do not
    /// see yet.
    pub fn batch_open(&self) -> bool {
        self.batch_open
    }

    /// The number of the open batch (each batch begun gets the next), if one is open.
    pub fn open_batch(&self) -> Option<u64> {
        self.batch_open.then_some(self.batches_begun)
    }

    /// True when opened with `open_read_only`.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The repository settings.
    pub fn settings(&self) -> Result<Settings> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, value FROM settings")
            .map_err(sql_err("reading settings"))?;
        let map: HashMap<String, String> = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(sql_err("reading settings"))?
            .collect::<rusqlite::Result<_>>()
            .map_err(sql_err("reading settings"))?;
        let get = |key: &str| -> Result<&String> {
            map.get(key)
                .ok_or_else(|| Error::CorruptCatalog(format!("setting {key} is missing")))
        };
        let num = |key: &str| -> Result<u64> {
            get(key)?
                .parse::<u64>()
                .map_err(|_| Error::CorruptCatalog(format!("setting {key} is not a number")))
        };
        let repo_id = get("repo_id")?
            .parse::<RepoId>()
            .map_err(|_| Error::CorruptCatalog("setting repo_id is malformed".into()))?;
        let zstd_level = match get("zstd_level")?.as_str() {
            "none" => None,
            level => Some(
                level
                    .parse::<i32>()
                    .map_err(|_| Error::CorruptCatalog("setting zstd_level is malformed".into()))?,
            ),
        };
        Ok(Settings {
            repo_id,
            chunker: ChunkerParams {
                min_size: num("chunk_min")? as u32,
                avg_size: num("chunk_avg")? as u32,
                max_size: num("chunk_max")? as u32,
                seed: num("chunk_seed")?,
            },
            zstd_level,
            created_ns: num("created_ns")? as i64,
        })
    }

    /// Every generation, oldest first (the live one last).
    pub fn generations(&self) -> Result<Vec<Generation>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {GENERATION_COLUMNS} FROM generations ORDER BY gen_id"
            ))
            .map_err(sql_err("listing generations"))?;
        let rows = stmt
            .query_map([], generation_row)
            .map_err(sql_err("listing generations"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql_err("listing generations"))
    }

    /// The snapshot called `name` (with its `@`); `None` when there is none. One
    /// probe of the name's index.
    pub fn find_snapshot(&self, name: &str) -> Result<Option<Generation>> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {GENERATION_COLUMNS} FROM generations WHERE name = ?1"
            ))
            .map_err(sql_err("finding a snapshot"))?
            .query_row(params![name], generation_row)
            .optional()
            .map_err(sql_err("finding a snapshot"))
    }

    /// Freezes the live generation as snapshot `name` and opens the next one.
    /// O(1): three row writes, whatever the size of the tree. Durable on return.
    pub fn freeze(&mut self, name: &str, label: Option<&str>, now_ns: i64) -> Result<GenId> {
        let frozen = self.live;
        let tx = self.begin()?;
        let taken: Option<i64> = tx
            .query_row(
                "SELECT gen_id FROM generations WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql_err("checking the snapshot name"))?;
        if taken.is_some() {
            return Err(Error::Exists(name.to_string()));
        }
        tx.execute(
            "UPDATE generations SET name = ?2, label = ?3, frozen_ns = ?4 WHERE gen_id = ?1 AND frozen_ns IS NULL",
            params![frozen.0, name, label, now_ns],
        )
        .map_err(sql_err("freezing the live generation"))?;
        totals::freeze(&tx, frozen)?;
        tx.execute(
            "INSERT INTO generations (gen_id, created_ns) VALUES (?1, ?2)",
            params![frozen.0 + 1, now_ns],
        )
        .map_err(sql_err("opening the next generation"))?;
        tx.commit().map_err(sql_err("committing a snapshot"))?;
        self.live = GenId(frozen.0 + 1);
        self.touched = false;
        Ok(frozen)
    }

    /// The ids whose rows write transactions in a batch changed since the last call
    /// (see `Changed`): what a reader on another connection must not trust while the
    /// batch is open.
    pub fn take_changed(&self) -> Changed {
        std::mem::take(&mut *self.changed.borrow_mut())
    }

    /// Turns group commit on or off. On, each `write()` transaction is a savepoint of
    /// one open transaction that `commit_batch` commits: many small changes (a
    /// metadata storm) cost one commit. Work that needs its own transaction commits
    /// the batch first. Readers in other processes see a batch once committed.
    pub fn set_batching(&mut self, on: bool) -> Result<()> {
        if !on {
            self.commit_batch()?;
        }
        // A savepoint keeps the first version of each page it changes, to roll back
        // to: in memory, not in a temporary file (a write syscall per page changed
        // was a tenth of a commit's time). It holds what one change touched, a few
        // MiB at most (the batch's own transaction needs none).
        self.conn
            .execute_batch(if on {
                "PRAGMA temp_store = MEMORY"
            } else {
                "PRAGMA temp_store = DEFAULT"
            })
            .map_err(sql_err("choosing where savepoints keep pages"))?;
        self.batching = on;
        Ok(())
    }

    /// Commits the open batch, if any. On failure it is rolled back and the error
    /// returned: its changes are lost, never half-applied.
    pub fn commit_batch(&mut self) -> Result<()> {
        if !self.batch_open {
            return Ok(());
        }
        self.batch_open = false;
        // What the batch's changes left matters only while it is open: committed, it
        // is what every reader sees (and a later change of its own transaction may
        // change it again); rolled back, it never was.
        self.changed.get_mut().left = Left::default();
        let committed = self.conn.prepare_cached("COMMIT").and_then(|mut s| s.execute([]));
        if let Err(e) = committed {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(sql_err("committing a batch")(e));
        }
        Ok(())
    }

    /// Starts a transaction of its own (after committing the open batch).
    fn begin(&mut self) -> Result<rusqlite::Transaction<'_>> {
        self.commit_batch()?;
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err("starting a catalog transaction"))
    }

    /// Takes a snapshot: freezes the live generation under the name
    /// `@YYYY-MM-DDTHHMMSSZ` of `now_ns` (UTC; `-2`, `-3` … when the second is taken)
    /// and returns it. O(1). Durable on return.
    pub fn snapshot(&mut self, label: Option<&str>, now_ns: i64) -> Result<Generation> {
        let durable: i64 = self
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .map_err(sql_err("reading the sync mode"))?;
        let taken = self.snapshot_committed(label, now_ns)?;
        if durable < 2 {
            self.sync()?;
        }
        Ok(taken)
    }

    /// `snapshot` without its sync: committed, durable once `wal_sync()` or `sync()`
    /// runs (for a caller that holds a lock while it commits and syncs after it).
    pub fn snapshot_committed(&mut self, label: Option<&str>, now_ns: i64) -> Result<Generation> {
        // Names have a second's resolution; more snapshots in one second get "-2",
        // "-3" …, found from how many of that second there are already (every such
        // name sorts between `base` and `base` + "."), not by trying each.
        let base = snapshot_name(now_ns);
        let same_second: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM generations WHERE name >= ?1 AND name < ?1 || '.'",
                params![base],
                |r| r.get(0),
            )
            .map_err(sql_err("naming a snapshot"))?;
        let mut n = same_second;
        let mut name = if n == 0 {
            base.clone()
        } else {
            format!("{base}-{}", n + 1)
        };
        while self.find_snapshot(&name)?.is_some() {
            n += 1;
            name = format!("{base}-{}", n + 1);
        }
        let gen = self.freeze(&name, label, now_ns)?;
        self.find_snapshot(&name)?
            .filter(|g| g.id == gen)
            .ok_or_else(|| Error::CorruptCatalog(format!("snapshot {name} vanished after it was taken")))
    }

    /// Starts a write transaction on the live generation. Nothing is visible to other
    /// connections until `Txn::commit`; dropping the `Txn` rolls back.
    pub fn write(&mut self) -> Result<Txn<'_>> {
        if self.read_only {
            return Err(Error::ReadOnly("catalog opened read-only".into()));
        }
        self.touched = true;
        let (live, max_extent) = (self.live, self.max_extent);
        if self.batching {
            if !self.batch_open {
                self.conn
                    .prepare_cached("BEGIN IMMEDIATE")
                    .and_then(|mut s| s.execute([]))
                    .map_err(sql_err("starting a batch"))?;
                self.batch_open = true;
                self.batches_begun += 1;
            }
            let sp = write::BatchSavepoint::begin(&self.conn)
                .map_err(sql_err("starting a catalog transaction"))?;
            return Ok(Txn::new(
                write::Inner::InBatch(sp),
                live,
                max_extent,
                Some(&self.changed),
            ));
        }
        let tx = self.begin()?;
        Ok(Txn::new(write::Inner::Own(tx), live, max_extent, None))
    }

    /// The attributes of `id` as `gen` sees them.
    pub fn inode(&self, gen: GenId, id: InodeId) -> Result<Option<InodeAttr>> {
        read::inode(&self.conn, gen, id)
    }

    /// The inode `name` in folder `parent` points at, as `gen` sees it.
    pub fn lookup(&self, gen: GenId, parent: InodeId, name: &[u8]) -> Result<Option<InodeId>> {
        read::lookup(&self.conn, gen, parent, name)
    }

    /// The names in folder `dir` as `gen` sees them, sorted by name.
    pub fn readdir(&self, gen: GenId, dir: InodeId) -> Result<Vec<DirEntry>> {
        read::readdir(&self.conn, gen, dir)
    }

    /// Up to `limit` names of folder `dir` in `gen` whose cookie is above `after`, in
    /// cookie order: one page of a listing that costs what it returns (see `listing`).
    /// A catalog of schema 1 opened read-only has no cookies: `UnsupportedFormat`.
    pub fn list_page(&self, gen: GenId, dir: InodeId, after: u64, limit: usize) -> Result<Vec<ListedEntry>> {
        self.require_cookies()?;
        listing::page(&self.conn, gen, dir, after, limit)
    }

    /// Listings need the cookies of schema 2, which a catalog of schema 1 opened
    /// read-only lacks (`UnsupportedFormat`).
    fn require_cookies(&self) -> Result<()> {
        if self.version < 2 {
            return Err(Error::UnsupportedFormat {
                what: "listing a folder of a catalog that was not yet migrated".into(),
                found: self.version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(())
    }

    /// `list_page` with each entry's attributes in `gen` (`None`: the name points at
    /// no inode), in one query.
    pub fn list_page_with_attrs(
        &self,
        gen: GenId,
        dir: InodeId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(ListedEntry, Option<InodeAttr>)>> {
        self.require_cookies()?;
        listing::page_with_attrs(&self.conn, gen, dir, after, limit)
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> u32 {
        self.version
    }

    /// Every (folder, name) that points at `inode` in `gen`.
    pub fn names_of(&self, gen: GenId, inode: InodeId) -> Result<Vec<(InodeId, Vec<u8>)>> {
        read::names_of(&self.conn, gen, inode)
    }

    /// The extents of `inode` overlapping `[start, end)` in `gen`, in file order.
    pub fn extents(&self, gen: GenId, inode: InodeId, start: u64, end: u64) -> Result<Vec<Extent>> {
        Ok(
            read::extent_rows(&self.conn, gen, inode, start, end, self.max_extent)?
                .into_iter()
                .map(|(e, _, _)| e)
                .collect(),
        )
    }

    /// `extents`, each with its chunk's pack entry (`None`: not packed yet, during an
    /// upgrade), which is what reading the bytes needs.
    pub fn placed_extents(
        &self,
        gen: GenId,
        inode: InodeId,
        start: u64,
        end: u64,
    ) -> Result<Vec<(Extent, Option<Location>)>> {
        Ok(
            read::extent_rows(&self.conn, gen, inode, start, end, self.max_extent)?
                .into_iter()
                .map(|(e, _, at)| (e, at))
                .collect(),
        )
    }

    /// The value of xattr `name` of `inode` in `gen`.
    pub fn xattr(&self, gen: GenId, inode: InodeId, name: &[u8]) -> Result<Option<Vec<u8>>> {
        read::xattr(&self.conn, gen, inode, name)
    }

    /// Every xattr of `inode` in `gen`, sorted by name.
    pub fn xattrs(&self, gen: GenId, inode: InodeId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        read::xattrs(&self.conn, gen, inode)
    }

    /// What the catalog knows of chunk `id`; `None` when it was never stored.
    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkInfo>> {
        write::chunk(&self.conn, id)
    }

    /// The mirrors, by id.
    pub fn mirrors(&self) -> Result<Vec<MirrorRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT mirror_id, path, state FROM mirrors ORDER BY mirror_id")
            .map_err(sql_err("listing mirrors"))?;
        let rows = stmt
            .query_map([], |row| {
                Ok(MirrorRecord {
                    id: MirrorId(row.get(0)?),
                    path: self.dir.join(row.get::<_, String>(1)?),
                    state: row.get(2)?,
                })
            })
            .map_err(sql_err("listing mirrors"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql_err("listing mirrors"))
    }

    /// Totals over the chunk table.
    pub fn chunk_totals(&self) -> Result<ChunkTotals> {
        let (chunks, plain, stored): (i64, i64, i64) = self
            .conn
            .query_row(
                "SELECT count(*), coalesce(sum(plain_size), 0), coalesce(sum(stored_size), 0) FROM chunks",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .map_err(sql_err("counting chunks"))?;
        Ok(ChunkTotals {
            chunks: chunks as u64,
            plain_bytes: plain as u64,
            stored_bytes: stored as u64,
        })
    }

    /// Chooses whether every commit is durable (`true`, the default: one WAL fsync per
    /// commit) or only consistent (`false`: a crash of the machine may lose the last
    /// commits, never corrupt; a killed process loses nothing). The mount uses `false`
    /// and calls `sync` where durability is promised (fsync).
    pub fn set_durable_commits(&self, durable: bool) -> Result<()> {
        let mode = if durable { "FULL" } else { "NORMAL" };
        self.conn
            .execute_batch(&format!("PRAGMA synchronous = {mode}"))
            .map_err(sql_err("setting commit durability"))
    }

    /// Stops this connection's commits from checkpointing the WAL (SQLite does it in
    /// the commit that crosses 1,000 pages, a random write into catalog.db and two
    /// fsyncs: 100-300 ms in a commit a user waits for at a million files) and hands
    /// that to a `Checkpointer` on a connection of its own, for a background thread
    /// to run. The WAL grows until it does.
    pub fn checkpoint_elsewhere(&self) -> Result<Checkpointer> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_err("opening catalog.db for checkpoints"))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql_err("configuring catalog.db for checkpoints"))?;
        // NORMAL: a checkpoint syncs the WAL before and the database after it.
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 67108864;")
            .map_err(sql_err("configuring catalog.db for checkpoints"))?;
        self.conn
            .execute_batch("PRAGMA wal_autocheckpoint = 0")
            .map_err(sql_err("turning the commits' checkpoints off"))?;
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        Ok(Checkpointer {
            conn,
            wal: PathBuf::from(wal),
        })
    }

    /// Copies the WAL into catalog.db and cuts the WAL to nothing (a clean unmount:
    /// the catalog then takes its own size on disk, not that plus the WAL's).
    /// Returns false when a reader kept the checkpoint from finishing.
    pub fn checkpoint(&mut self) -> Result<bool> {
        self.commit_batch()?;
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(sql_err("checkpointing the catalog"))?;
        Ok(busy == 0)
    }

    /// What makes this catalog's commits durable from outside its connection (see
    /// `WalSync`): for a caller that commits under a lock and syncs after it.
    pub fn wal_sync(&self) -> WalSync {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        WalSync {
            wal: PathBuf::from(wal),
            dir: self.dir.clone(),
        }
    }

    /// Makes every committed transaction durable: on return, a power loss cannot undo
    /// them (one fsync of the WAL, through a durable empty commit).
    pub fn sync(&mut self) -> Result<()> {
        self.commit_batch()?;
        self.conn
            .execute_batch("PRAGMA synchronous = FULL")
            .map_err(sql_err("syncing the catalog"))?;
        let result = self
            .conn
            .execute_batch(
                // A commit that changes a byte: SQLite writes (and with FULL, syncs)
                // nothing for one that changes none, such as `SET value = value`, and
                // then the commits before it stayed unsynced (found by the power-cut
                // test). The WAL's one fsync covers every earlier frame.
                "BEGIN IMMEDIATE;
                 INSERT INTO settings (key, value) VALUES ('sync_count', '1')
                     ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1;
                 COMMIT;",
            )
            .map_err(sql_err("syncing the catalog"));
        self.conn
            .execute_batch("PRAGMA synchronous = NORMAL")
            .map_err(sql_err("syncing the catalog"))?;
        result
    }

    /// Live inodes with no link and no name (left by a crash while they were open
    /// after unlink): index probes, not a scan. The root is never one.
    pub fn live_orphans(&self) -> Result<Vec<InodeId>> {
        read::live_inodes(&self.conn, read::NAMELESS_INODES, "finding orphan inodes")
    }

    /// Every live inode no name points at, whatever its link count (a scan of the
    /// live tree, for `check`). The root is never one.
    pub fn live_unnamed(&self) -> Result<Vec<InodeId>> {
        read::live_inodes(&self.conn, read::UNNAMED_INODES, "finding unnamed inodes")
    }

    /// SQLite's own consistency check; `Ok(vec![])` when the database is sound.
    pub fn integrity_check(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("PRAGMA integrity_check")
            .map_err(sql_err("running integrity_check"))?;
        let rows: Vec<String> = stmt
            .query_map([], |row| row.get(0))
            .map_err(sql_err("running integrity_check"))?
            .collect::<rusqlite::Result<_>>()
            .map_err(sql_err("running integrity_check"))?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }
}

/// Writes a consistent copy of the catalog at `db` into the new file `dest`, with the
/// SQLite backup API on a connection of its own: it reads one snapshot of the
/// database (WAL), so a running writer is not held up beyond its own commits.
/// `dest` is not synced: a caller that keeps it syncs it.
pub fn backup(db: &Path, dest: &Path) -> Result<()> {
    let src = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_err("opening catalog.db for a copy"))?;
    src.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(sql_err("opening catalog.db for a copy"))?;
    let mut dst = Connection::open(dest).map_err(sql_err("creating the catalog copy"))?;
    // A scratch file for whoever compresses it: no journal and no sync (the copy it
    // becomes is synced; a sync here would queue all of it at the disk at once).
    dst.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF")
        .map_err(sql_err("creating the catalog copy"))?;
    let backup =
        rusqlite::backup::Backup::new(&src, &mut dst).map_err(sql_err("starting the catalog copy"))?;
    // One step: the copy reads one snapshot of the database from start to end. In
    // steps, any commit of the mount between two of them starts the copy over.
    match backup.step(-1).map_err(sql_err("copying the catalog"))? {
        rusqlite::backup::StepResult::Done => {}
        other => {
            return Err(Error::Catalog {
                context: "copying the catalog".into(),
                source: format!("the copy stopped before its end: {other:?}").into(),
            })
        }
    }
    drop(backup);
    dst.execute_batch("PRAGMA journal_mode = DELETE")
        .map_err(sql_err("finishing the catalog copy"))?;
    Ok(())
}

/// What a catalog copy holds, read from the copy itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyInfo {
    pub repo_id: RepoId,
    /// The newest snapshot in it, with its time.
    pub newest_snapshot: Option<(String, i64)>,
}

/// Opens a catalog file read-only, runs SQLite's integrity check, and says what it
/// holds; an error when it is not a sound snapfs catalog.
pub fn inspect(path: &Path) -> Result<CopyInfo> {
    let catalog = Catalog::open_read_only(path)?;
    let problems = catalog.integrity_check()?;
    if !problems.is_empty() {
        return Err(Error::CorruptCatalog(format!(
            "{}: {}",
            path.display(),
            problems.join("; ")
        )));
    }
    let newest_snapshot = catalog
        .generations()?
        .into_iter()
        .rev()
        .find_map(|g| Some((g.name?, g.frozen_ns?)));
    Ok(CopyInfo {
        repo_id: catalog.settings()?.repo_id,
        newest_snapshot,
    })
}

/// How a mirror path is recorded: relative to the repository folder when it lies
/// inside it (so a repository can be moved or copied whole), else absolute.
pub(crate) fn stored_mirror_path(db: &Path, mirror: &Path) -> PathBuf {
    let repo = db.parent().unwrap_or(Path::new(""));
    let repo_abs = std::path::absolute(repo).unwrap_or_else(|_| repo.to_path_buf());
    mirror
        .strip_prefix(&repo_abs)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| mirror.to_path_buf())
}

/// The snapshot name for an instant: `@YYYY-MM-DDTHHMMSSZ` in UTC (sortable, no colons).
pub fn snapshot_name(now_ns: i64) -> String {
    let secs = now_ns.div_euclid(1_000_000_000);
    let time = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    time.format("@%Y-%m-%dT%H%M%SZ").to_string()
}

/// Brings a catalog of schema `from` up to `SCHEMA_VERSION` in one transaction:
/// a crash leaves it as it was.
fn migrate(conn: &mut Connection, from: u32) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_err("starting the catalog migration"))?;
    if from < 2 {
        listing::migrate_v1(&tx)?;
    }
    if from < 3 {
        totals::migrate_v2(&tx)?;
    }
    if from < 4 {
        packs::migrate_v3(&tx)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(sql_err("setting the schema version"))?;
    tx.commit().map_err(sql_err("committing the catalog migration"))?;
    log::info!("catalog migrated from schema {from} to {SCHEMA_VERSION}");
    Ok(())
}

/// The columns `generation_row` reads, in its order.
const GENERATION_COLUMNS: &str = "gen_id, name, label, created_ns, frozen_ns, held";

fn generation_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Generation> {
    Ok(Generation {
        id: GenId(row.get(0)?),
        name: row.get(1)?,
        label: row.get(2)?,
        created_ns: row.get(3)?,
        frozen_ns: row.get(4)?,
        held: row.get::<_, i64>(5)? != 0,
    })
}

/// Connection settings for a writer: WAL (readers never block the writer), full sync
/// at commit (a committed transaction survives power loss, which fsync relies on),
/// foreign keys on (no extent can name an unknown chunk).
fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(sql_err("configuring catalog.db"))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(sql_err("switching catalog.db to WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::CorruptCatalog(format!(
            "catalog.db refused WAL mode ({mode})"
        )));
    }
    // journal_size_limit: a big transaction (an import) grows the WAL to the size of
    // what it wrote; after the next checkpoint the file is cut back to 64 MiB.
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -65536;
         PRAGMA journal_size_limit = 67108864;",
    )
    .map_err(sql_err("configuring catalog.db"))?;
    Ok(())
}

#[cfg(test)]
mod tests;
