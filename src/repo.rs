//! A repository on disk: its folder, the writer lock, the catalog and the mirrors.
//!
//! Owns: the repository layout (`catalog.db`, `lock`, default mirror folders),
//! `snapfs init`'s checks, and opening everything a command needs. Knows nothing of
//! files or FUSE; depends on `catalog` and `store`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::catalog::{Catalog, MirrorRecord, NewCatalog, Settings};
use crate::chunker::ChunkerParams;
use crate::error::{Error, Result};
use crate::store::{PackMirrors, Redundancy, TARGET_PACK_BYTES};
use crate::types::{MirrorId, RepoId};

/// File name of the catalog inside the repository folder.
pub const CATALOG_FILE: &str = "catalog.db";
/// File name of the writer lock inside the repository folder.
pub const LOCK_FILE: &str = "lock";

/// Choices made once, at `snapfs init`.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Mirror folders; empty means two inside the repository (`mirror-0`, `mirror-1`).
    pub mirrors: Vec<PathBuf>,
    /// Chunk sizes; the seed is always chosen at random.
    pub chunk_sizes: Option<(u32, u32, u32)>,
    /// zstd level for new chunks; `None` stores them raw.
    pub zstd_level: Option<i32>,
}

impl Default for InitOptions {
    fn default() -> InitOptions {
        InitOptions {
            mirrors: Vec::new(),
            chunk_sizes: None,
            zstd_level: Some(3),
        }
    }
}

/// The repository folder chosen by the rules of DESIGN.md §3: `$SNAPFS_REPO`, else
/// `$XDG_DATA_HOME/snapfs`, else `~/.local/share/snapfs`.
pub fn default_repo_path() -> Option<PathBuf> {
    let from = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    from("SNAPFS_REPO")
        .or_else(|| from("XDG_DATA_HOME").map(|d| d.join("snapfs")))
        .or_else(|| from("HOME").map(|h| h.join(".local/share/snapfs")))
}

/// True when `path` holds a repository (a catalog file).
pub fn exists(path: &Path) -> bool {
    path.join(CATALOG_FILE).exists()
}

/// The error for a folder without a catalog: a repository that lost it (its mirrors
/// are there: recover) or no repository at all (init).
fn missing(path: &Path) -> Error {
    let has_mirrors = std::fs::read_dir(path)
        .map(|entries| entries.flatten().any(|e| e.path().join("MIRROR").is_file()))
        .unwrap_or(false);
    if has_mirrors {
        Error::CatalogMissing {
            path: path.to_path_buf(),
        }
    } else {
        Error::NotARepository {
            path: path.to_path_buf(),
        }
    }
}

/// The writer lock: an exclusive `flock` on `REPO/lock`, held for the life of this
/// value. The file records the holder's pid and what it is doing, for the error
/// another process gets.
pub struct RepoLock {
    file: File,
}

impl RepoLock {
    /// Takes the lock or fails at once with `Error::Locked` naming the holder.
    pub fn acquire(repo: &Path, holder: &str) -> Result<RepoLock> {
        let path = repo.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(Error::io_with(format!("opening {}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let mut lines = text.lines();
                let pid = lines.next().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
                let holder = lines.next().map(str::to_string);
                return Err(Error::Locked {
                    path: repo.to_path_buf(),
                    pid,
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking {}", path.display()), e));
            }
        }
        file.set_len(0).map_err(Error::io_with("writing the lock file"))?;
        file.rewind().map_err(Error::io_with("writing the lock file"))?;
        writeln!(file, "{}\n{holder}", std::process::id())
            .map_err(Error::io_with("writing the lock file"))?;
        Ok(RepoLock { file })
    }

    /// Rewrites what the holder says it is doing (e.g. "mounted at /home/me/v").
    pub fn describe(&mut self, holder: &str) -> Result<()> {
        self.file
            .set_len(0)
            .map_err(Error::io_with("writing the lock file"))?;
        self.file
            .rewind()
            .map_err(Error::io_with("writing the lock file"))?;
        writeln!(self.file, "{}\n{holder}", std::process::id())
            .map_err(Error::io_with("writing the lock file"))
    }
}

/// An open repository with the writer lock held.
pub struct Repo {
    pub path: PathBuf,
    pub catalog: Catalog,
    pub store: std::sync::Arc<dyn Redundancy>,
    pub settings: Settings,
    _lock: RepoLock,
}

impl Repo {
    /// Creates a repository at `path` and opens it. Every check (existing repository,
    /// foreign or non-empty mirror folders, bad chunk sizes) runs before anything is
    /// written; on a later failure what was created is removed again.
    pub fn init(path: &Path, options: &InitOptions, now_ns: i64) -> Result<Repo> {
        if exists(path) {
            return Err(Error::RepositoryExists {
                path: path.to_path_buf(),
            });
        }
        if path.exists() && !path.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{} exists and is not a folder",
                path.display()
            )));
        }
        let mut params = ChunkerParams::default();
        if let Some((min, avg, max)) = options.chunk_sizes {
            params = ChunkerParams {
                min_size: min,
                avg_size: avg,
                max_size: max,
                ..params
            };
        }
        params.validate()?;
        if let Some(level) = options.zstd_level {
            if !(1..=22).contains(&level) {
                return Err(Error::InvalidArgument(format!(
                    "compression level {level} is out of range; use 1 to 22, or none"
                )));
            }
        }
        let repo_dir_existed = path.exists();
        let abs_repo = absolute(path)?;
        let mirrors: Vec<PathBuf> = if options.mirrors.is_empty() {
            vec![abs_repo.join("mirror-0"), abs_repo.join("mirror-1")]
        } else {
            options
                .mirrors
                .iter()
                .map(|m| absolute(m))
                .collect::<Result<_>>()?
        };
        if mirrors.len() > 64 {
            return Err(Error::InvalidArgument("at most 64 mirrors".into()));
        }
        for (i, m) in mirrors.iter().enumerate() {
            if mirrors[..i].contains(m) {
                return Err(Error::InvalidArgument(format!(
                    "mirror {} is given twice",
                    m.display()
                )));
            }
            check_mirror_folder(m)?;
        }

        let mut seed_bytes = [0u8; 8];
        crate::types::fill_random(&mut seed_bytes).map_err(Error::io_with("reading random bytes"))?;
        params.seed = u64::from_le_bytes(seed_bytes);
        let repo_id = RepoId::random().map_err(Error::io_with("reading random bytes"))?;
        let settings = Settings {
            repo_id,
            chunker: params,
            zstd_level: options.zstd_level,
            created_ns: now_ns,
        };

        let mut created_mirrors: Vec<(PathBuf, bool)> = Vec::new();
        let result = (|| -> Result<Repo> {
            crate::store::create_dir_all_durably(path)
                .map_err(Error::io_with(format!("creating {}", path.display())))?;
            for (i, m) in mirrors.iter().enumerate() {
                created_mirrors.push((m.clone(), m.exists()));
                crate::store::claim_folder(m, repo_id, MirrorId(i as u32))?;
            }
            let (uid, gid) = (
                rustix::process::getuid().as_raw(),
                rustix::process::getgid().as_raw(),
            );
            drop(Catalog::create(
                &path.join(CATALOG_FILE),
                &NewCatalog {
                    settings: settings.clone(),
                    root_uid: uid,
                    root_gid: gid,
                    root_mode: 0o755,
                    mirrors: mirrors.clone(),
                },
            )?);
            // SQLite syncs the folder of a journal it creates, never that of a new
            // database file: without this, a power cut could leave the repository
            // with mirrors and no catalog.
            sync_dir(path)?;
            Repo::open(path, "init")
        })();
        if result.is_err() {
            // Undo: the checks above passed, so these are folders and files we made.
            for (m, existed) in created_mirrors.iter().rev() {
                let _ = std::fs::remove_file(m.join("MIRROR"));
                let _ = std::fs::remove_dir_all(m.join(crate::store::PACKS_DIR));
                if !existed {
                    let _ = std::fs::remove_dir(m);
                }
            }
            for f in ["catalog.db", "catalog.db-wal", "catalog.db-shm", LOCK_FILE] {
                let _ = std::fs::remove_file(path.join(f));
            }
            if !repo_dir_existed {
                let _ = std::fs::remove_dir(path);
            }
        }
        result
    }

    /// Opens the repository at `path` for writing: takes the lock (fails at once when
    /// another process holds it), opens the catalog and every mirror. A mirror that
    /// cannot be opened is set aside (degraded mode) unless none is left.
    pub fn open(path: &Path, holder: &str) -> Result<Repo> {
        if !exists(path) {
            return Err(missing(path));
        }
        let lock = RepoLock::acquire(path, holder)?;
        let catalog = Catalog::open(&path.join(CATALOG_FILE))?;
        let settings = catalog.settings()?;
        let store = open_store(&catalog, settings.repo_id)?;
        Ok(Repo {
            path: path.to_path_buf(),
            catalog,
            store,
            settings,
            _lock: lock,
        })
    }
}

impl Repo {
    /// Splits the repository into what a long-running server keeps: the catalog, the
    /// store, and the lock (which must live as long as the server writes).
    pub fn into_parts(self) -> (Catalog, std::sync::Arc<dyn Redundancy>, RepoLock) {
        (self.catalog, self.store, self._lock)
    }
}

/// Marker file: something may have left pack bytes the catalog does not know (a
/// daemon that did not exit cleanly, a commit that failed), so the next gc sweeps.
pub const SWEEP_MARKER: &str = "sweep-needed";

/// Marker file a mount daemon keeps while it runs; found at start, it means the last
/// one did not exit cleanly.
pub const RUNNING_MARKER: &str = "mounted";

/// Asks the next gc to sweep the mirrors for unknown objects. Durable on return, so
/// that a power cut does not hide the objects a crash left from the next gc.
pub fn mark_sweep_needed(repo: &Path) -> Result<()> {
    let marker = repo.join(SWEEP_MARKER);
    File::create(&marker)
        .and_then(|f| f.sync_all())
        .map_err(Error::io_with(format!("writing {}", marker.display())))?;
    sync_dir(repo)
}

/// fsync of the folder `dir`: names created, renamed or removed in it are durable on
/// return (on every filesystem; a FUSE one included).
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io_with(format!("syncing folder {}", dir.display())))
}

/// True when a sweep was asked for.
pub fn sweep_needed(repo: &Path) -> bool {
    repo.join(SWEEP_MARKER).exists()
}

/// Clears the sweep request (after a sweep).
pub fn clear_sweep_needed(repo: &Path) {
    let _ = std::fs::remove_file(repo.join(SWEEP_MARKER));
}

/// Opens the catalog of `path` read-only, without the lock.
pub fn open_catalog_read_only(path: &Path) -> Result<Catalog> {
    if !exists(path) {
        return Err(missing(path));
    }
    Catalog::open_read_only(&path.join(CATALOG_FILE))
}

/// Opens the store of every mirror `catalog` records: those that fail start out lost,
/// those not complete start filling (written, read last, trusted once filled).
pub fn open_store(catalog: &Catalog, repo_id: RepoId) -> Result<std::sync::Arc<dyn Redundancy>> {
    let folders: Vec<(MirrorId, PathBuf, bool)> = catalog
        .mirrors()?
        .into_iter()
        .map(|m: MirrorRecord| (m.id, m.path, m.state == "complete"))
        .collect();
    let store = PackMirrors::open(repo_id, &folders, catalog.next_pack_id()?, TARGET_PACK_BYTES)?;
    Ok(std::sync::Arc::new(store))
}

/// Refuses a folder that cannot become a new mirror, without changing it.
fn check_mirror_folder(path: &Path) -> Result<()> {
    if let Some((other, _)) = crate::store::read_identity(path)? {
        return Err(Error::ForeignMirror {
            path: path.to_path_buf(),
            other: other.to_string(),
        });
    }
    if path.exists() {
        let mut entries =
            std::fs::read_dir(path).map_err(Error::io_with(format!("reading {}", path.display())))?;
        if entries.next().is_some() {
            return Err(Error::NotAMirror {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(Error::io_with(format!("resolving {}", path.display())))
}
