//! The library's one error type and its mapping to errno.
//!
//! Owns: `Error` (kinds with structured context) and `Result`. Every module below the
//! CLI returns these; `anyhow` is for `cli/` and `main.rs` only. `Error::errno` is the
//! single place where kinds become kernel error numbers.

use std::path::PathBuf;

use crate::types::{ChunkId, MirrorId};

/// Result of every library call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with the context a user needs to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed; `context` says what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A stored copy of a chunk does not decode or does not hash to its name.
    #[error("chunk {id} is corrupt in {mirror}: {reason}")]
    CorruptChunk {
        id: ChunkId,
        mirror: String,
        reason: String,
    },
    /// A pack file (format 2) is not what its name says: another repository's, another
    /// pack's, or a damaged header.
    #[error("pack {path} is unusable: {reason}")]
    CorruptPack { path: PathBuf, reason: String },
    /// No store holds a copy of a chunk that the catalog references.
    #[error("chunk {id} is missing from every mirror")]
    MissingChunk { id: ChunkId },
    /// Every mirror failed; nothing could be written or read.
    #[error("no usable mirror is left: {reason}")]
    NoMirror { reason: String },
    /// A folder given as a mirror belongs to another repository.
    #[error("{} is a mirror of another repository ({other}); choose an empty folder", path.display())]
    ForeignMirror { path: PathBuf, other: String },
    /// A mirror folder exists but is not a snapfs mirror and is not empty.
    #[error("{} is not empty and is not a snapfs mirror; choose an empty folder", path.display())]
    NotAMirror { path: PathBuf },
    /// The repository folder holds no catalog.
    #[error("{} is not a snapfs repository (no catalog.db); create one with `snapfs init`", path.display())]
    NotARepository { path: PathBuf },
    /// The repository's catalog is gone but its mirrors are there.
    #[error("{} has no catalog.db but holds mirrors; rebuild the catalog from their copies with `snapfs recover`", path.display())]
    CatalogMissing { path: PathBuf },
    /// `init` was pointed at a folder that already holds a repository.
    #[error("{} already holds a snapfs repository; use it, or choose another --repo", path.display())]
    RepositoryExists { path: PathBuf },
    /// Another process holds the repository's writer lock.
    #[error("repository {} is in use by process {pid}{}", path.display(), locked_advice(.holder.as_deref()))]
    Locked {
        path: PathBuf,
        pid: u32,
        holder: Option<String>,
    },
    /// The catalog database failed.
    #[error("catalog: {context}: {source}")]
    Catalog {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The catalog's content breaks one of its invariants.
    #[error("catalog is corrupt: {0}")]
    CorruptCatalog(String),
    /// The repository was written by a newer or unknown format.
    #[error("{what} has format version {found}; this snapfs reads up to {supported}; upgrade snapfs")]
    UnsupportedFormat {
        what: String,
        found: u32,
        supported: u32,
    },
    /// The repository is storage format 1 (a file per chunk), or an upgrade from it
    /// was interrupted: this snapfs reads it only after `snapfs upgrade`.
    #[error("{} {}; run `snapfs upgrade --repo {}` to convert it in place (resumable, nothing is lost)", path.display(), if *.interrupted { "is being upgraded to storage format 2 and the upgrade has not finished" } else { "is storage format 1 (one file per chunk)" }, path.display())]
    NeedsUpgrade { path: PathBuf, interrupted: bool },
    /// A mirror could not be used and was set aside (degraded mode).
    #[error("mirror {id} ({}) is unusable: {reason}", path.display())]
    MirrorUnusable {
        id: MirrorId,
        path: PathBuf,
        reason: String,
    },
    /// No such file, folder, snapshot or name.
    #[error("{0}: not found")]
    NotFound(String),
    /// The name is taken.
    #[error("{0}: already exists")]
    Exists(String),
    /// A folder that must be empty is not.
    #[error("{0}: folder not empty")]
    NotEmpty(String),
    /// A folder was expected.
    #[error("{0}: not a folder")]
    NotDir(String),
    /// Not a folder was expected.
    #[error("{0}: is a folder")]
    IsDir(String),
    /// The view is a snapshot (or the repository was opened read-only).
    #[error("{0}: read-only")]
    ReadOnly(String),
    /// A name longer than 255 bytes.
    #[error("name too long")]
    NameTooLong,
    /// A bad argument from the user or the kernel.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller lacks permission.
    #[error("{0}: permission denied")]
    PermissionDenied(String),
    /// The operation is not permitted to this caller at all.
    #[error("{0}: operation not permitted")]
    NotPermitted(String),
    /// The operation is not supported here.
    #[error("{0}: not supported")]
    Unsupported(String),
    /// The running mount refused or failed a request: its error's errno (which
    /// stands for its kind, see `errno`) and message.
    #[error("{message}")]
    Remote { errno: i32, message: String },
    /// Buffered writes that an earlier failed commit dropped (its caller was told why).
    #[error("buffered writes were lost: {0}")]
    WritesLost(String),
    /// An extended attribute is absent.
    #[error("no such extended attribute")]
    NoXattr,
    /// A disk under the repository (a mirror's or the catalog's) is full, or its quota
    /// is used up; `context` says what was being written. Not a mirror failure: the
    /// mirror stays healthy and the writer hears ENOSPC (EDQUOT for a quota).
    #[error("{context}: {}; free space with `snapfs forget` and `snapfs gc`", no_space_what(*.quota))]
    NoSpace { context: String, quota: bool },
}

/// What `Error::NoSpace` says ran out.
fn no_space_what(quota: bool) -> &'static str {
    if quota {
        "the disk quota is used up"
    } else {
        "the disk is full"
    }
}

/// What `Error::Locked` adds after the pid: what the holder is doing, and what to do.
fn locked_advice(holder: Option<&str>) -> String {
    match holder {
        Some(h) => match h.strip_prefix("mounted at ") {
            Some(mountpoint) => format!(" ({h}); unmount it first (snapfs umount {mountpoint})"),
            None => format!(" ({h}); try again when it has finished"),
        },
        None => "; try again when it has finished".into(),
    }
}

impl Error {
    /// Wraps an I/O error with what was being done. A full disk (ENOSPC) or a used-up
    /// quota (EDQUOT) becomes `NoSpace`, so it keeps its kind wherever it was found.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        let context = context.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) => Error::NoSpace {
                context,
                quota: false,
            },
            Some(libc::EDQUOT) => Error::NoSpace { context, quota: true },
            _ => Error::Io { context, source },
        }
    }

    /// A closure for `map_err` that wraps an I/O error with `context` (as `io` does).
    pub fn io_with(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::io(context, source)
    }

    /// A full disk found while `context` was being done.
    pub fn no_space(context: impl Into<String>) -> Error {
        Error::NoSpace {
            context: context.into(),
            quota: false,
        }
    }

    /// The kernel error number this kind stands for. Unknown kinds are `EIO`;
    /// corruption is `EIO`, never `ENOENT`.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::NotFound(_) => libc::ENOENT,
            Error::Exists(_) | Error::RepositoryExists { .. } => libc::EEXIST,
            Error::NotEmpty(_) => libc::ENOTEMPTY,
            Error::NotDir(_) => libc::ENOTDIR,
            Error::IsDir(_) => libc::EISDIR,
            Error::ReadOnly(_) => libc::EROFS,
            Error::NameTooLong => libc::ENAMETOOLONG,
            Error::InvalidArgument(_) => libc::EINVAL,
            Error::PermissionDenied(_) => libc::EACCES,
            Error::NotPermitted(_) => libc::EPERM,
            Error::Unsupported(_) => libc::EOPNOTSUPP,
            Error::NoXattr => libc::ENODATA,
            Error::Locked { .. } => libc::EBUSY,
            Error::NoSpace { quota: false, .. } => libc::ENOSPC,
            Error::NoSpace { quota: true, .. } => libc::EDQUOT,
            Error::Remote { errno, .. } => *errno,
            _ => libc::EIO,
        }
    }

    /// True when the error says a disk is full or a quota is used up (here, or in the
    /// mount that answered a control request).
    pub fn is_no_space(&self) -> bool {
        matches!(self.errno(), libc::ENOSPC | libc::EDQUOT)
    }

    /// True when the error says a chunk has no good copy left (missing or corrupt on
    /// every disk): that chunk's loss, not the operation's.
    pub fn is_data_loss(&self) -> bool {
        matches!(self, Error::MissingChunk { .. } | Error::CorruptChunk { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruption_maps_to_eio_not_enoent() {
        let id = ChunkId([0; 32]);
        let corrupt = Error::CorruptChunk {
            id,
            mirror: "m0".into(),
            reason: "hash".into(),
        };
        assert_eq!(corrupt.errno(), libc::EIO);
        assert_eq!(Error::MissingChunk { id }.errno(), libc::EIO);
        assert_eq!(Error::NotFound("x".into()).errno(), libc::ENOENT);
    }

    #[test]
    fn io_errors_keep_their_errno() {
        let e = Error::io("writing", std::io::Error::from_raw_os_error(libc::EROFS));
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert_eq!(e.errno(), libc::EROFS);
        assert_eq!(
            e.to_string(),
            format!("writing: {}", std::io::Error::from_raw_os_error(libc::EROFS))
        );
        let other = Error::io("reading", std::io::Error::other("no errno"));
        assert_eq!(other.errno(), libc::EIO);
    }

    #[test]
    fn a_full_disk_found_by_io_becomes_no_space() {
        let full = Error::io(
            "writing chunk 00ab to m0",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(
            matches!(&full, Error::NoSpace { context, quota: false } if context == "writing chunk 00ab to m0"),
            "{full:?}"
        );
        assert_eq!(full.errno(), libc::ENOSPC);
        assert!(full.is_no_space());
        assert_eq!(
            full.to_string(),
            "writing chunk 00ab to m0: the disk is full; free space with `snapfs forget` and `snapfs gc`"
        );

        let quota = Error::io_with("syncing m1")(std::io::Error::from_raw_os_error(libc::EDQUOT));
        assert!(matches!(quota, Error::NoSpace { quota: true, .. }), "{quota:?}");
        assert_eq!(quota.errno(), libc::EDQUOT);
        assert!(quota.is_no_space());
        assert!(quota
            .to_string()
            .starts_with("syncing m1: the disk quota is used up;"));
    }

    #[test]
    fn new_kinds_map_to_their_errno() {
        assert_eq!(Error::no_space("catalog: committing").errno(), libc::ENOSPC);
        assert!(Error::no_space("x").is_no_space());
        assert_eq!(Error::NoXattr.errno(), libc::ENODATA);
        assert!(!Error::NoXattr.is_no_space());
        // A mount's answer keeps the kind's errno.
        let remote = Error::Remote {
            errno: libc::ENOSPC,
            message: "full".into(),
        };
        assert!(remote.is_no_space());
    }
}
