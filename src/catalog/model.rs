//! Plain values the catalog hands out and takes in: attributes, entries, extents,
//! generations, chunks, settings. No SQL here.

use crate::chunker::ChunkerParams;
use crate::types::{ChunkId, GenId, InodeId, Location, MirrorId, RepoId};

/// What an inode is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    /// The number stored in `inodes.kind`.
    pub fn code(self) -> i64 {
        match self {
            FileKind::File => 1,
            FileKind::Dir => 2,
            FileKind::Symlink => 3,
            FileKind::Fifo => 4,
            FileKind::Socket => 5,
            FileKind::CharDevice => 6,
            FileKind::BlockDevice => 7,
        }
    }

    /// The kind stored as `code`; `None` for an unknown number (a corrupt row).
    pub fn from_code(code: i64) -> Option<FileKind> {
        Some(match code {
            1 => FileKind::File,
            2 => FileKind::Dir,
            3 => FileKind::Symlink,
            4 => FileKind::Fifo,
            5 => FileKind::Socket,
            6 => FileKind::CharDevice,
            7 => FileKind::BlockDevice,
            _ => return None,
        })
    }

    /// The `S_IFMT` bits of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            FileKind::CharDevice => libc::S_IFCHR,
            FileKind::BlockDevice => libc::S_IFBLK,
        }
    }

    /// The kind named by the `S_IFMT` bits of `mode`; `None` when they name none.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => return None,
        })
    }
}

/// The attributes of one inode as one generation sees them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct InodeAttr {
    pub id: InodeId,
    pub kind: FileKind,
    /// Permission bits with setuid, setgid and sticky (07777); no type bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub rdev: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// The symlink target; empty for every other kind.
    pub target: Vec<u8>,
}

/// What a new inode starts as. Its id is handed out by the catalog; its link count is
/// 0 until a name points at it (a folder counts its own "." from the start).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NewInode {
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub time_ns: i64,
    pub target: Vec<u8>,
}

/// One name in a folder.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub inode: InodeId,
    pub kind: FileKind,
}

/// File bytes `[offset, offset + length)` are bytes `[chunk_offset, chunk_offset + length)`
/// of chunk `chunk`'s plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub chunk: ChunkId,
    pub chunk_offset: u64,
}

impl Extent {
    /// One past the last file byte this extent covers.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// One generation: the live tree (frozen_ns `None`) or a snapshot.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Generation {
    pub id: GenId,
    /// `@YYYY-MM-DDTHHMMSSZ`; `None` for the live generation.
    pub name: Option<String>,
    pub label: Option<String>,
    pub created_ns: i64,
    pub frozen_ns: Option<i64>,
    pub held: bool,
}

/// What the catalog knows of one stored chunk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChunkInfo {
    pub id: ChunkId,
    pub plain_size: u64,
    pub stored_size: u64,
    /// Its pack entry; `None` only in a format-1 repository being upgraded.
    pub location: Option<Location>,
    /// Extent rows, in any generation, that reference it.
    pub refs: u64,
}

/// A mirror as recorded in the catalog.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MirrorRecord {
    pub id: MirrorId,
    pub path: std::path::PathBuf,
    /// `complete` (holds every chunk) or `filling` (being resilvered).
    pub state: String,
}

/// Repository settings fixed at init.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Settings {
    pub repo_id: RepoId,
    pub chunker: ChunkerParams,
    /// zstd level for new chunks; `None` stores chunks raw.
    pub zstd_level: Option<i32>,
    pub created_ns: i64,
}

/// Totals of one generation's tree.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct TreeTotals {
    /// Inodes of every kind, the root included.
    pub inodes: u64,
    /// Regular files.
    pub files: u64,
    /// Sum of regular files' sizes (holes included).
    pub logical_bytes: u64,
    /// Sum of extent lengths: the bytes that are data, not holes.
    pub data_bytes: u64,
}

/// Totals of the chunk table.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ChunkTotals {
    pub chunks: u64,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
}

/// What a rollback changed in the live tree, so that kernel caches can be told.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RollbackChanges {
    /// Catalog rows closed, dropped or brought back.
    pub rows: u64,
    /// Inodes whose attributes, content or xattrs changed (or that came or went).
    pub inodes: std::collections::BTreeSet<InodeId>,
    /// Names (folder, name) that now point elsewhere or nowhere.
    pub entries: std::collections::BTreeSet<(InodeId, Vec<u8>)>,
}
