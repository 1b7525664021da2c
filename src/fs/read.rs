//! Reading file bytes: extents from the catalog with their chunks' places, verified
//! chunks from the redundancy layer, through a small cache of decoded chunks.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

use crate::catalog::{Catalog, Extent, InodeAttr};
use crate::error::{Error, Result};
use crate::store::Redundancy;
use crate::types::{ChunkId, GenId, Location};

/// An extent with the place of its chunk: what reading it needs.
pub type Placed = (Extent, Location);

/// The catalog's extents with their places; a chunk without one (only in a
/// repository whose upgrade has not finished) is an error naming it.
pub fn placed(extents: Vec<(Extent, Option<Location>)>) -> Result<Vec<Placed>> {
    extents
        .into_iter()
        .map(|(e, at)| {
            at.map(|at| (e, at))
                .ok_or_else(|| Error::CorruptCatalog(format!("chunk {} has no place in a pack", e.chunk)))
        })
        .collect()
}

/// A chunk in the cache: loaded, or being loaded by some thread.
enum Slot {
    Ready(Arc<Vec<u8>>),
    Loading,
}

/// The cached chunks and the load order of the ready ones (oldest first).
type CacheMap = (HashMap<ChunkId, Slot>, VecDeque<ChunkId>);

/// Decoded, verified chunk plaintexts, the most recently loaded kept (FIFO eviction).
/// Chunks never change under their id, so a cached copy is never stale. A chunk is
/// loaded once: a reader that wants a chunk a read-ahead thread is loading waits for
/// it instead of reading it from disk a second time.
pub struct ChunkCache {
    capacity: usize,
    inner: Mutex<CacheMap>,
    loaded: Condvar,
}

impl ChunkCache {
    /// A cache of at most `capacity` chunks (0 disables it).
    pub fn new(capacity: usize) -> ChunkCache {
        ChunkCache {
            capacity,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
            loaded: Condvar::new(),
        }
    }

    /// The plaintext of `id` (at `at`), from the cache or read and verified.
    pub fn get(&self, store: &dyn Redundancy, id: &ChunkId, at: Location) -> Result<Arc<Vec<u8>>> {
        if self.capacity == 0 {
            return Ok(Arc::new(store.read(id, at)?));
        }
        let mut guard = self.lock();
        loop {
            match guard.0.get(id) {
                Some(Slot::Ready(plain)) => return Ok(plain.clone()),
                Some(Slot::Loading) => {
                    guard = self.loaded.wait(guard).unwrap_or_else(|p| p.into_inner());
                }
                None => break,
            }
        }
        guard.0.insert(*id, Slot::Loading);
        drop(guard);
        let unwinding = Unloading { cache: self, id };
        let loaded = store.read(id, at).map(Arc::new);
        std::mem::forget(unwinding);
        let mut guard = self.lock();
        let (map, order) = &mut *guard;
        match &loaded {
            Ok(plain) => {
                map.insert(*id, Slot::Ready(plain.clone()));
                order.push_back(*id);
                while order.len() > self.capacity {
                    if let Some(old) = order.pop_front() {
                        map.remove(&old);
                    }
                }
            }
            // Waiters then load it themselves, and see the error themselves.
            Err(_) => {
                map.remove(id);
            }
        }
        drop(guard);
        self.loaded.notify_all();
        loaded
    }

    /// True when `id` is cached or being loaded.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.lock().0.contains_key(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheMap> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Takes a `Loading` slot back out should its loader panic, so that waiters load the
/// chunk themselves instead of waiting forever.
struct Unloading<'a> {
    cache: &'a ChunkCache,
    id: &'a ChunkId,
}

impl Drop for Unloading<'_> {
    fn drop(&mut self) {
        self.cache.lock().0.remove(self.id);
        self.cache.loaded.notify_all();
    }
}

/// Loads chunks into a `ChunkCache` ahead of a sequential reader, on background
/// threads, so disk reads, decompression and hashing overlap with the reader.
pub struct Prefetcher {
    sender: Option<std::sync::mpsc::SyncSender<(ChunkId, Location)>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Prefetcher {
    /// `threads` loaders feeding `cache` from `store`.
    pub fn new(store: Arc<dyn Redundancy>, cache: Arc<ChunkCache>, threads: usize) -> Prefetcher {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<(ChunkId, Location)>(256);
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = (0..threads)
            .filter_map(|i| {
                let (store, cache, receiver) = (store.clone(), cache.clone(), receiver.clone());
                std::thread::Builder::new()
                    .name(format!("snapfs-readahead-{i}"))
                    .spawn(move || loop {
                        let next = receiver.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((id, at)) = next else { return };
                        // A failure here is reported when the reader itself gets there.
                        let _ = cache.get(&*store, &id, at);
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
    pub fn prefetch(&self, cache: &ChunkCache, chunks: impl IntoIterator<Item = (ChunkId, Location)>) {
        let Some(sender) = &self.sender else { return };
        for (id, at) in chunks {
            if !cache.contains(&id) && sender.try_send((id, at)).is_err() {
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
    store: &dyn Redundancy,
    cache: &ChunkCache,
    attr: &InodeAttr,
    extents: &[Placed],
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let end = attr.size.min(offset.saturating_add(len as u64));
    if offset >= end {
        return Ok(Vec::new());
    }
    let mut out = vec![0u8; (end - offset) as usize];
    for (e, at) in extents {
        let from = e.offset.max(offset);
        let to = e.end().min(end);
        if from >= to {
            continue;
        }
        let plain = cache.get(store, &e.chunk, *at)?;
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
    store: &dyn Redundancy,
    gen: GenId,
    attr: &InodeAttr,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let end = offset.saturating_add(len as u64);
    let extents = placed(catalog.placed_extents(gen, attr.id, offset, end)?)?;
    read_extents(store, &ChunkCache::new(0), attr, &extents, offset, len)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::store::{HookedStore, MemoryStore, ObjectStore, OverObjects};
    use crate::types::PackId;

    /// The place passed to reads: the store under test finds chunks by id.
    const AT: Location = Location {
        pack: PackId(1),
        offset: 48,
        len: 0,
    };

    #[test]
    fn a_chunk_wanted_by_many_readers_at_once_is_read_once() {
        // Every read is counted and slow, so that concurrent readers of one chunk overlap.
        let gets = Arc::new(AtomicU64::new(0));
        let counted = gets.clone();
        let store = HookedStore::new(
            Box::new(|| {}),
            Box::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(50));
            }),
        );
        let plain = vec![7u8; 100_000];
        let frame = crate::codec::encode(&plain, Some(3));
        store.put(&frame.id, &frame.frame).unwrap();
        let id = frame.id;
        let store = OverObjects::new(Arc::new(store));
        let cache = ChunkCache::new(16);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| assert_eq!(*cache.get(&store, &id, AT).unwrap(), plain));
            }
        });
        assert_eq!(gets.load(Ordering::SeqCst), 1, "one read from the store");
        // Cached from now on.
        assert_eq!(*cache.get(&store, &id, AT).unwrap(), plain);
        assert_eq!(gets.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_failed_load_lets_every_waiter_see_the_error() {
        let store = OverObjects::new(Arc::new(MemoryStore::new()));
        let cache = ChunkCache::new(16);
        let id = ChunkId::of(b"never stored");
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| assert!(cache.get(&store, &id, AT).is_err()));
            }
        });
        assert!(!cache.contains(&id), "nothing is left loading");
    }
}
