//! A `Redundancy` over one `ObjectStore`, for tests of the layers above (the
//! filesystem core, ingest): it lets them run over `MemoryStore`, `FaultStore` and
//! `HookedStore`, whose failures and hooks they inject. Each chunk is one object;
//! its "location" is a running offset in one pretend pack, so every location is
//! distinct and reads find the chunk by its id. Not a storage format.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::mirror::{MirrorState, MirrorStatus};
use super::redundancy::{DiskUsage, EntryScrub, Redundancy};
use super::ObjectStore;
use crate::error::{Error, Result};
use crate::types::{ChunkId, Location, MirrorId, PackId};

/// The one pretend pack every chunk is placed in.
const PACK: PackId = PackId(1);

/// One object store seen as a redundancy layer of one disk.
pub struct OverObjects {
    store: Arc<dyn ObjectStore>,
    next_offset: AtomicU64,
}

impl OverObjects {
    pub fn new(store: Arc<dyn ObjectStore>) -> OverObjects {
        OverObjects {
            store,
            next_offset: AtomicU64::new(48),
        }
    }
}

impl Redundancy for OverObjects {
    fn put(&self, chunks: &[(ChunkId, &[u8])]) -> Result<Vec<Location>> {
        let mut out = Vec::new();
        for (id, frame) in chunks {
            self.store.put(id, frame)?;
            let len = frame.len() as u32 + 48;
            let offset = self.next_offset.fetch_add(u64::from(len), Ordering::Relaxed);
            out.push(Location {
                pack: PACK,
                offset,
                len,
            });
        }
        Ok(out)
    }

    fn sync(&self) -> Result<()> {
        self.store.sync()
    }

    fn read(&self, id: &ChunkId, _at: Location) -> Result<Vec<u8>> {
        self.store.get(id)
    }

    fn read_frame(&self, id: &ChunkId, _at: Location) -> Result<Vec<u8>> {
        let frame = self.store.get_frame(id)?.ok_or(Error::MissingChunk { id: *id })?;
        crate::codec::decode(id, &frame).map_err(|e| Error::CorruptChunk {
            id: *id,
            mirror: self.store.describe(),
            reason: e.to_string(),
        })?;
        Ok(frame)
    }

    fn scrub(&self, id: &ChunkId, _at: Location, _repair: bool) -> EntryScrub {
        let mut found = EntryScrub::default();
        match self.store.get(id) {
            Ok(_) => found.good.push(MirrorId(0)),
            Err(Error::MissingChunk { .. }) => found.missing.push(MirrorId(0)),
            Err(_) => found.corrupt.push(MirrorId(0)),
        }
        found
    }

    fn pack_lengths(&self, _pack: PackId) -> Vec<(MirrorId, bool, Option<u64>)> {
        vec![(MirrorId(0), true, Some(self.next_offset.load(Ordering::Relaxed)))]
    }

    fn status(&self) -> Vec<MirrorStatus> {
        vec![MirrorStatus {
            id: MirrorId(0),
            describe: self.store.describe(),
            state: MirrorState::Healthy,
            heals: 0,
        }]
    }

    fn open_pack(&self) -> Option<PackId> {
        Some(PACK)
    }

    fn close_pack(&self) {}

    fn pack_ids(&self) -> Result<Vec<PackId>> {
        Ok(vec![PACK])
    }

    fn scan_entries(&self, _visit: &mut dyn FnMut(ChunkId, Location)) -> Result<u64> {
        Err(Error::Unsupported("scanning objects".into()))
    }

    fn delete_packs(&self, _ids: &[PackId]) -> Result<()> {
        Ok(())
    }

    fn disk_usage(&self, _id: MirrorId) -> Result<DiskUsage> {
        Ok(DiskUsage::default())
    }

    fn attach(&self, _id: MirrorId, _folder: &Path) -> Result<()> {
        Err(Error::Unsupported("attaching a disk to a test store".into()))
    }

    fn fill(&self, _id: MirrorId, _pack: PackId) -> Result<u64> {
        Ok(0)
    }

    fn set_complete(&self, _id: MirrorId) -> Result<()> {
        Ok(())
    }

    fn detach(&self, _id: MirrorId) -> Result<()> {
        Err(Error::Unsupported("detaching the only disk".into()))
    }

    fn mark_lost(&self, _id: MirrorId, _reason: &str) {}
}
