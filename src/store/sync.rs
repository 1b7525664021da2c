//! How a mirror folder's writes are made durable: one `syncfs` of its filesystem, or an
//! fsync of every file and folder written since the last sync. Chosen per mirror, from
//! the filesystem type (`statfs` `f_type`) when the mirror is opened.
//!
//! `syncfs` is one call for a whole batch of chunk files, but it is only as good as
//! the filesystem's `sync_fs`: a FUSE filesystem (mergerfs, sshfs, rclone, s3fs …)
//! gets no request from it at all, so data sitting in its daemon or in the layer below
//! it is not made durable; network filesystems (NFS, SMB, 9p, Ceph) and stacked ones
//! (overlay, ecryptfs) depend on what lies below, which cannot be seen from here. An
//! fsync of a file, on the other hand, reaches every filesystem, FUSE ones included
//! (as a FSYNC request to the daemon), so it is the choice wherever `syncfs` is not
//! known to work.
//!
//! `SNAPFS_SYNC=fsync` in the environment forces the fsync mode everywhere (for
//! measurements and tests); `SNAPFS_SYNC=auto` or no value chooses by filesystem. There
//! is no way to force `syncfs` onto a filesystem this module does not trust.
//!
//! Depends only on `error`.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};

/// Name of the environment variable that can force the fsync mode.
pub const SYNC_ENV: &str = "SNAPFS_SYNC";

/// How `DirStore::sync` makes the mirror's puts durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// One `syncfs` of the mirror's filesystem per sync: the data of every chunk file,
    /// the renames and the new folders at once.
    Syncfs,
    /// Per sync, an `fdatasync` of every chunk file written since the last one, then
    /// an `fsync` of every folder in which one was created or renamed.
    FsyncEach,
}

impl SyncMode {
    /// The short name used in `status --json`: `syncfs` or `fsync`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SyncMode::Syncfs => "syncfs",
            SyncMode::FsyncEach => "fsync",
        }
    }

    /// The words `status` prints: `syncfs` or `fsync per file`.
    pub fn describe(&self) -> &'static str {
        match self {
            SyncMode::Syncfs => "syncfs",
            SyncMode::FsyncEach => "fsync per file",
        }
    }
}

impl fmt::Display for SyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The mode chosen for one mirror, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncChoice {
    pub mode: SyncMode,
    /// The mirror's filesystem type: a name (`ext2/3/4`, `fuse`, `nfs` …) or the
    /// `statfs` magic number in hex when it is not one this module knows.
    pub filesystem: String,
    /// True when `SNAPFS_SYNC=fsync` chose the mode, not the filesystem type.
    pub forced: bool,
}

/// Local kernel filesystems whose `syncfs` writes back every dirty file and folder of
/// the filesystem, commits the journal (where there is one) and flushes the device's
/// write cache, and reports writeback errors (Linux 5.8 and later): the one case where
/// a single call makes a batch of chunk files durable. tmpfs and ramfs keep everything
/// in memory: there is nothing to make durable, and `syncfs` is the cheaper no-op.
const TRUSTED: [(u32, &str); 6] = [
    (0xEF53, "ext2/3/4"),
    (0x5846_5342, "xfs"),
    (0x9123_683E, "btrfs"),
    (0xF2F5_2010, "f2fs"),
    (0x0102_1994, "tmpfs"),
    (0x8584_58F6, "ramfs"),
];

/// Filesystems known by name whose `syncfs` is not trusted. FUSE (mergerfs, sshfs,
/// rclone, virtiofs …): `syncfs` sends no request to the daemon. Network
/// filesystems: durability is the server's, reached by fsync (NFS COMMIT, SMB FLUSH,
/// 9p FSYNC) but not necessarily by `syncfs`. Stacked filesystems (overlay, ecryptfs):
/// `syncfs` is only as good as the lower filesystem, which cannot be seen from here,
/// while an fsync is passed down to the file below. ZFS and bcachefs: not verified
/// here; fsync is always correct.
const UNTRUSTED: [(u32, &str); 12] = [
    (0x6573_5546, "fuse"),
    (0x6969, "nfs"),
    (0xFF53_4D42, "cifs"),
    (0xFE53_4D42, "smb2"),
    (0x517B, "smb"),
    (0x0102_1997, "9p"),
    (0x00C3_6400, "ceph"),
    (0x794C_7630, "overlay"),
    (0xF15F, "ecryptfs"),
    (0x2FC1_2FC1, "zfs"),
    (0xCA45_1A4E, "bcachefs"),
    (0x5346_414F, "afs"),
];

/// The mode for a filesystem of type `magic` (`statfs` `f_type`), and its name.
pub fn mode_for_filesystem(magic: u32) -> (SyncMode, String) {
    if let Some((_, name)) = TRUSTED.iter().find(|(m, _)| *m == magic) {
        return (SyncMode::Syncfs, (*name).to_string());
    }
    let name = UNTRUSTED
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| (*name).to_string())
        .unwrap_or_else(|| format!("{magic:#x}"));
    (SyncMode::FsyncEach, name)
}

/// What `SNAPFS_SYNC` asks for: `Ok(true)` to force fsync, `Ok(false)` to choose by
/// filesystem. `value` is the variable's value, `None` when unset.
pub fn forced_by(value: Option<&str>) -> Result<bool> {
    match value.map(str::trim) {
        None | Some("") | Some("auto") => Ok(false),
        Some("fsync") => Ok(true),
        Some(other) => Err(Error::InvalidArgument(format!(
            "{SYNC_ENV}={other} is not a sync mode; use {SYNC_ENV}=fsync to fsync every file, \
             or {SYNC_ENV}=auto (the default) to choose by filesystem"
        ))),
    }
}

/// The mode for the mirror folder `path`: by its filesystem type, unless the
/// environment forces fsync. Errors: `InvalidArgument` for a bad `SNAPFS_SYNC`, `Io`
/// when the folder's filesystem cannot be queried.
pub fn choose(path: &Path) -> Result<SyncChoice> {
    let env = std::env::var(SYNC_ENV).ok();
    let forced = forced_by(env.as_deref())?;
    let st = rustix::fs::statfs(path).map_err(|e| {
        Error::io(
            format!("querying the filesystem type of {}", path.display()),
            e.into(),
        )
    })?;
    // f_type is a signed word on some targets; the magic numbers are 32-bit.
    let (mode, filesystem) = mode_for_filesystem(st.f_type as u32);
    Ok(SyncChoice {
        mode: if forced { SyncMode::FsyncEach } else { mode },
        filesystem,
        forced,
    })
}
