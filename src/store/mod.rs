//! Object stores: where chunk frames live, named by their `ChunkId`.
//!
//! Owns the `ObjectStore` trait and its implementations: `DirStore` (one mirror folder),
//! `MirrorStore` (several mirrors with verify-on-read, self-heal and degraded mode),
//! `MemoryStore` and `FaultStore` (for tests), and `MirrorSet`.
//!
//! Knows nothing of files, inodes, generations or the catalog; depends only on `codec`,
//! `types` and `error`. Durability contract shared by every store: a `put` is durable
//! only once a later `sync` has returned Ok; a `remove` may be undone by a crash, even
//! after a sync (nothing may rely on a removal being durable).

use std::fmt;

use crate::codec;
use crate::error::{Error, Result};
use crate::types::{ChunkId, MirrorId};

mod dir;
mod direct;
mod fault;
mod memory;
mod mirror;
#[cfg(test)]
mod over_objects;
pub mod pack;
mod pack_mirrors;
mod packs;
mod redundancy;
mod removals;
mod sync;

pub use dir::{check_folder, claim_folder, create_dir_all_durably, read_identity, DirStore, IDENTITY_FILE};
pub use direct::DirectWriter;
pub use fault::FaultStore;
pub use memory::MemoryStore;
#[cfg(test)]
pub use memory::{Hook, HookedStore};
pub use mirror::{MirrorState, MirrorStatus, MirrorStore};
#[cfg(test)]
pub use over_objects::OverObjects;
pub use pack_mirrors::{PackMirrors, PACKS_DIR, READ_RUN_BYTES, TARGET_PACK_BYTES};
pub use packs::PackDir;
pub use redundancy::{DiskUsage, EntryScrub, PackLength, Redundancy};
pub use removals::RemovalGuard;
pub use sync::{mode_for_filesystem, SyncChoice, SyncMode, SYNC_ENV};

/// A store of chunk frames keyed by chunk id. Every method takes `&self` and may be
/// called from many threads at once.
pub trait ObjectStore: Send + Sync {
    /// Names the store in messages, e.g. `mirror 0 (/path)` or `memory`.
    fn describe(&self) -> String;

    /// Stores `frame` as the copy of `id`. Idempotent; an existing copy (possibly bad)
    /// is replaced atomically, so a reader sees the old or the new copy, never a mix.
    /// Durable only after a later `sync` returns Ok.
    fn put(&self, id: &ChunkId, frame: &[u8]) -> Result<()>;

    /// The stored frame of `id`, raw and unverified; `None` if there is no copy.
    fn get_frame(&self, id: &ChunkId) -> Result<Option<Vec<u8>>>;

    /// The verified plaintext of `id`. Errors: `MissingChunk` if there is no copy,
    /// `CorruptChunk { mirror: self.describe(), .. }` if the copy does not decode or
    /// does not hash to `id`. Never returns wrong bytes.
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let frame = self.get_frame(id)?.ok_or(Error::MissingChunk { id: *id })?;
        codec::decode(id, &frame).map_err(|e| Error::CorruptChunk {
            id: *id,
            mirror: self.describe(),
            reason: e.to_string(),
        })
    }

    /// True if a copy of `id` is stored (good or bad: this does not verify).
    fn contains(&self, id: &ChunkId) -> Result<bool>;

    /// Deletes the copy of `id`; absent is fine. A crash may bring the copy back, even
    /// after a later `sync` (a `DirStore` in fsync mode does not sync removals): a
    /// caller that removes copies must make sure that a copy coming back is harmless
    /// (gc deletes the catalog rows first, so a returning copy is an unknown object).
    fn remove(&self, id: &ChunkId) -> Result<()>;

    /// Every stored id, in no promised order, ignoring temporary files.
    fn list(&self) -> Result<Vec<ChunkId>>;

    /// On return, every `put` that returned before the call is durable (and, in most
    /// stores, every `remove`; see `remove`).
    fn sync(&self) -> Result<()>;
}

/// Sharing a store (e.g. to keep a handle on one mirror in tests) keeps its behaviour.
impl<T: ObjectStore + ?Sized> ObjectStore for std::sync::Arc<T> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn put(&self, id: &ChunkId, frame: &[u8]) -> Result<()> {
        (**self).put(id, frame)
    }
    fn get_frame(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        (**self).get_frame(id)
    }
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>> {
        (**self).get(id)
    }
    fn contains(&self, id: &ChunkId) -> Result<bool> {
        (**self).contains(id)
    }
    fn remove(&self, id: &ChunkId) -> Result<()> {
        (**self).remove(id)
    }
    fn list(&self) -> Result<Vec<ChunkId>> {
        (**self).list()
    }
    fn sync(&self) -> Result<()> {
        (**self).sync()
    }
}

/// A set of mirrors, as a bitmask of `MirrorId`s (bit n = mirror n).
///
/// Holds ids 0..64 only; `MirrorStore` refuses higher ids, so none arise in practice,
/// and `insert` ignores them (returns false).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct MirrorSet(pub u64);

impl MirrorSet {
    /// The empty set.
    pub const EMPTY: MirrorSet = MirrorSet(0);
    /// One more than the largest id a set can hold.
    pub const CAPACITY: u32 = 64;

    /// True if `id` is in the set.
    pub fn contains(&self, id: MirrorId) -> bool {
        id.0 < Self::CAPACITY && self.0 & (1 << id.0) != 0
    }

    /// Adds `id`; true if it was not in the set. Ids >= 64 are not added (false).
    pub fn insert(&mut self, id: MirrorId) -> bool {
        if id.0 >= Self::CAPACITY || self.contains(id) {
            return false;
        }
        self.0 |= 1 << id.0;
        true
    }

    /// Removes `id`; true if it was in the set.
    pub fn remove(&mut self, id: MirrorId) -> bool {
        let was = self.contains(id);
        if was {
            self.0 &= !(1 << id.0);
        }
        was
    }

    /// The ids in the set, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = MirrorId> {
        let bits = self.0;
        (0..Self::CAPACITY)
            .filter(move |i| bits & (1 << i) != 0)
            .map(MirrorId)
    }

    /// True if every id of `other` is in `self`.
    pub fn is_superset_of(&self, other: MirrorSet) -> bool {
        other.0 & !self.0 == 0
    }

    /// True if the set has no id.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// Number of ids in the set.
    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }
}

impl FromIterator<MirrorId> for MirrorSet {
    fn from_iter<I: IntoIterator<Item = MirrorId>>(iter: I) -> MirrorSet {
        let mut set = MirrorSet::EMPTY;
        for id in iter {
            set.insert(id);
        }
        set
    }
}

impl fmt::Display for MirrorSet {
    /// The ids separated by commas, e.g. `0,1`; empty for the empty set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, id) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{id}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
