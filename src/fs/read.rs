//! Reading file bytes: extents from the catalog, verified chunks from the mirrors,
//! through a small cache of decoded chunks.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::catalog::{Catalog, Extent, InodeAttr};
use crate::error::{Error, Result};
use crate::store::MirrorStore;
use crate::types::{ChunkId, GenId};

/// The cached plaintexts and their load order (oldest first).
type CacheMap = (HashMap<ChunkId, Arc<Vec<u8>>>, VecDeque<ChunkId>);

/// Decoded, verified chunk plaintexts, the most recently loaded kept (FIFO eviction).
/// Chunks never change under their id, so a cached copy is never stale.
pub struct ChunkCache {
    capacity: usize,
    inner: Mutex<CacheMap>,
}

impl ChunkCache {
    /// A cache of at most `capacity` chunks (0 disables it).
    pub fn new(capacity: usize) -> ChunkCache {
        ChunkCache {
            capacity,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// The plaintext of `id`, from the cache or read and verified from the mirrors.
    pub fn get(&self, store: &MirrorStore, id: &ChunkId) -> Result<Arc<Vec<u8>>> {
        if let Some(hit) = self.lock().0.get(id) {
            return Ok(hit.clone());
        }
        let plain = Arc::new(store.get_verified(id)?);
        if self.capacity > 0 {
            let mut guard = self.lock();
            let (map, order) = &mut *guard;
            if map.insert(*id, plain.clone()).is_none() {
                order.push_back(*id);
            }
            while order.len() > self.capacity {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
        Ok(plain)
    }

    /// True when `id` is cached.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.lock().0.contains_key(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheMap> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Loads chunks into a `ChunkCache` ahead of a sequential reader, on background
/// threads, so disk reads, decompression and hashing overlap with the reader.
pub struct Prefetcher {
    sender: Option<std::sync::mpsc::SyncSender<ChunkId>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Prefetcher {
    /// `threads` loaders feeding `cache` from `store`.
    pub fn new(store: Arc<MirrorStore>, cache: Arc<ChunkCache>, threads: usize) -> Prefetcher {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<ChunkId>(256);
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = (0..threads)
            .filter_map(|i| {
                let (store, cache, receiver) = (store.clone(), cache.clone(), receiver.clone());
                std::thread::Builder::new()
                    .name(format!("snapfs-readahead-{i}"))
                    .spawn(move || loop {
                        let next = receiver.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(id) = next else { return };
                        // A failure here is reported when the reader itself gets there.
                        let _ = cache.get(&store, &id);
                    })
                    .ok()
            })
            .collect();
        Prefetcher {
            sender: Some(sender),
            threads,
        }
    }

    /// Asks for `ids` to be loaded; skips what is cached and drops what does not fit
    /// in the queue (read-ahead is a hint).
    pub fn prefetch(&self, cache: &ChunkCache, ids: impl IntoIterator<Item = ChunkId>) {
        let Some(sender) = &self.sender else { return };
        for id in ids {
            if !cache.contains(&id) && sender.try_send(id).is_err() {
                return;
            }
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.sender = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Reads up to `len` bytes of file `attr` at `offset` from its `extents` (those
/// overlapping the range). Holes read as zeros; reading past the end returns fewer
/// bytes. Every chunk is verified; no good copy fails the read (never wrong bytes).
pub fn read_extents(
    store: &MirrorStore,
    cache: &ChunkCache,
    attr: &InodeAttr,
    extents: &[Extent],
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let end = attr.size.min(offset.saturating_add(len as u64));
    if offset >= end {
        return Ok(Vec::new());
    }
    let mut out = vec![0u8; (end - offset) as usize];
    for e in extents {
        let from = e.offset.max(offset);
        let to = e.end().min(end);
        if from >= to {
            continue;
        }
        let plain = cache.get(store, &e.chunk)?;
        let src_start = (e.chunk_offset + (from - e.offset)) as usize;
        let src_end = src_start + (to - from) as usize;
        let bytes = plain.get(src_start..src_end).ok_or_else(|| {
            Error::CorruptCatalog(format!(
                "extent of inode {} at {} reaches past the end of chunk {}",
                attr.id, e.offset, e.chunk
            ))
        })?;
        out[(from - offset) as usize..(to - offset) as usize].copy_from_slice(bytes);
    }
    Ok(out)
}

/// Reads up to `len` bytes of file `attr` at `offset` as generation `gen` sees it
/// (uncached; for commands that read once).
pub fn read_at(
    catalog: &Catalog,
    store: &MirrorStore,
    gen: GenId,
    attr: &InodeAttr,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let end = offset.saturating_add(len as u64);
    let extents = catalog.extents(gen, attr.id, offset, end)?;
    read_extents(store, &ChunkCache::new(0), attr, &extents, offset, len)
}
