//! The redundancy interface: below it lives how copies of chunks are placed across
//! disks (mirrors today; parity stripes and an off-site copy next). Above it, ingest,
//! the filesystem, gc, scrub, check, status, `mirror add`/`remove` and recovery say
//! what to store and read, and where the catalog says it is, and nothing else.
//!
//! Contract shared by every implementation:
//! * `put` stores a batch of chunk frames together and returns where each lies; they
//!   are durable only after a later `sync` returns Ok. Nothing committed to the
//!   catalog may name a location before that sync (DESIGN.md §2.1).
//! * `read` never returns wrong bytes: it verifies, and repairs a bad copy from a good
//!   one by writing the same bytes at the same place, so locations never change.
//! * A disk that fails a write or a sync is set aside and the others go on; a full
//!   disk is the caller's error (`ENOSPC`) and leaves the disk in.
//! * Packs are deleted only by `delete_packs`, whose caller has made sure that no
//!   catalog row, reader or unfinished commit can still name them.

use std::path::Path;

use super::mirror::MirrorStatus;
use crate::error::Result;
use crate::types::{ChunkId, Location, MirrorId, PackId};

/// One disk's copy of a pack: the disk, whether it is trusted to hold every pack,
/// and the file's length (`None`: the disk lacks it).
pub type PackLength = (MirrorId, bool, Option<u64>);

/// What a scrub found of one chunk's copies, disk by disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryScrub {
    /// Disks whose copy was good.
    pub good: Vec<MirrorId>,
    /// Disks whose copy was damaged (or cut short), and those that lacked the pack.
    pub corrupt: Vec<MirrorId>,
    pub missing: Vec<MirrorId>,
    /// Of those, the disks now holding a good copy again.
    pub repaired: Vec<MirrorId>,
    /// Disks whose repair failed, and why.
    pub failed: Vec<(MirrorId, String)>,
}

/// What one disk holds: pack files and their bytes, and the bytes free on its
/// filesystem (`None` when that cannot be read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub packs: u64,
    pub bytes: u64,
    pub free: Option<u64>,
}

/// How copies of chunks are placed and kept. Thread-safe: every method takes `&self`.
pub trait Redundancy: Send + Sync {
    /// Stores `chunks` (id and codec frame each), together and in order; their
    /// locations, in the same order. Durable after the next `sync`.
    fn put(&self, chunks: &[(ChunkId, &[u8])]) -> Result<Vec<Location>>;

    /// Makes every `put` that returned before the call durable where it was placed,
    /// on every disk that is trusted when it returns (see `untrusted`).
    fn sync(&self) -> Result<()>;

    /// The disks not trusted now (set aside, or being filled): they may lack what the
    /// last `sync` made durable, so a commit that names it records them as incomplete
    /// in the same transaction, and they are filled before they are trusted again.
    fn untrusted(&self) -> Vec<MirrorId> {
        self.status()
            .into_iter()
            .filter(|d| d.state != super::MirrorState::Healthy)
            .map(|d| d.id)
            .collect()
    }

    /// The verified plaintext of chunk `id` at `at`, repairing bad copies on the way.
    fn read(&self, id: &ChunkId, at: Location) -> Result<Vec<u8>>;

    /// `read` of each of `wanted`, in order: the same bytes and the same errors, but
    /// an implementation may read neighbouring entries of one pack in one go (a
    /// sequential reader's chunks lie back to back).
    fn read_many(&self, wanted: &[(ChunkId, Location)]) -> Vec<Result<Vec<u8>>> {
        wanted.iter().map(|(id, at)| self.read(id, *at)).collect()
    }

    /// `read`, returning the verified codec frame instead of the plaintext: what
    /// compaction copies into a new pack without compressing it again.
    fn read_frame(&self, id: &ChunkId, at: Location) -> Result<Vec<u8>>;

    /// Reads every copy of chunk `id` at `at` and verifies each; with `repair`, the
    /// bad ones are rewritten from a good one (scrub; without, check --read-data).
    fn scrub(&self, id: &ChunkId, at: Location, repair: bool) -> EntryScrub;

    /// The length of pack `pack`'s file on every disk that could be opened (`None`:
    /// that disk lacks it), with whether the disk is trusted to hold every pack.
    fn pack_lengths(&self, pack: PackId) -> Vec<PackLength>;

    /// Every disk with its state and heal count, in read order.
    fn status(&self) -> Vec<MirrorStatus>;

    /// The pack new entries go to, which no one may delete; `None` before the first put.
    fn open_pack(&self) -> Option<PackId>;

    /// Finishes the pack being filled, so that the next put starts a new one: gc
    /// closes an open pack whose every entry is dead, to delete it. Call only when no
    /// put is in flight and none can start (offline, or under the mount's lock).
    fn close_pack(&self);

    /// Every pack some usable disk holds.
    fn pack_ids(&self) -> Result<Vec<PackId>>;

    /// Reads every pack (from one usable disk that has it) and calls `visit` with each
    /// good entry's chunk and place: the index rebuilt from the packs alone. Returns
    /// the packs read; a pack no disk can read is skipped with a warning.
    fn scan_entries(&self, visit: &mut dyn FnMut(ChunkId, Location)) -> Result<u64>;

    /// Deletes packs `ids` from every disk (absent is fine).
    fn delete_packs(&self, ids: &[PackId]) -> Result<()>;

    /// What disk `id` holds and has left.
    fn disk_usage(&self, id: MirrorId) -> Result<DiskUsage>;

    /// Takes in the mirror folder `folder` as disk `id`, to be filled (see `fill`):
    /// every put from now on reaches it, every pack from before must be copied in.
    fn attach(&self, id: MirrorId, folder: &Path) -> Result<()>;

    /// Copies pack `pack` to disk `id` from a good disk unless it holds the same
    /// already (then makes its copy durable: it may have been written while the disk
    /// was not trusted); the bytes copied.
    fn fill(&self, id: MirrorId, pack: PackId) -> Result<u64>;

    /// Disk `id` holds every pack now: read and trusted like the others.
    fn set_complete(&self, id: MirrorId) -> Result<()>;

    /// Stops using disk `id`. Refused when no healthy disk would be left.
    fn detach(&self, id: MirrorId) -> Result<()>;

    /// Sets disk `id` aside; the first reason is kept.
    fn mark_lost(&self, id: MirrorId, reason: &str);
}
