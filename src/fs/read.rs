//! Reading file bytes: extents from the catalog with their chunks' places, verified
//! chunks from the redundancy layer, through a small cache of decoded chunks.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

use crate::catalog::{Catalog, Extent, InodeAttr};
use crate::error::{Error, Result};
use crate::store::{Redundancy, READ_RUN_BYTES};
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

/// The cached chunks, the load order of the ready ones (oldest first), and the bytes
/// of plaintext the ready ones hold.
#[derive(Default)]
struct CacheMap {
    slots: HashMap<ChunkId, Slot>,
    order: VecDeque<ChunkId>,
    bytes: usize,
}

/// Decoded, verified chunk plaintexts, the most recently loaded kept (FIFO eviction)
/// up to a number of bytes. Chunks never change under their id, so a cached copy is
/// never stale. A chunk is loaded once: a reader that wants a chunk a read-ahead
/// thread is loading waits for it instead of reading it from disk a second time.
///
/// The bound is in bytes, not chunks, so that it holds the read-ahead of several
/// readers whatever the chunk size: with room for 256 chunks (16 MiB at the average
/// size), two sequential readers, each 16 MiB ahead, evicted each other's read-ahead
/// before they got to it, and read it again.
pub struct ChunkCache {
    capacity_bytes: usize,
    /// Guards the map only: never held across a load.
    inner: Mutex<CacheMap>,
    loaded: Condvar,
}

impl ChunkCache {
    /// A cache of at most `capacity_bytes` of plaintext (0 disables it). A chunk
    /// bigger than that is handed to its reader and not kept.
    pub fn new(capacity_bytes: usize) -> ChunkCache {
        ChunkCache {
            capacity_bytes,
            inner: Mutex::new(CacheMap::default()),
            loaded: Condvar::new(),
        }
    }

    /// The plaintext of `id` (at `at`), from the cache or read and verified.
    pub fn get(&self, store: &dyn Redundancy, id: &ChunkId, at: Location) -> Result<Arc<Vec<u8>>> {
        if self.capacity_bytes == 0 {
            return Ok(Arc::new(store.read(id, at)?));
        }
        let mut guard = self.lock();
        loop {
            match guard.slots.get(id) {
                Some(Slot::Ready(plain)) => return Ok(plain.clone()),
                Some(Slot::Loading) => {
                    guard = self.loaded.wait(guard).unwrap_or_else(|p| p.into_inner());
                }
                None => break,
            }
        }
        guard.slots.insert(*id, Slot::Loading);
        drop(guard);
        let claimed = [*id];
        let unwinding = Unloading {
            cache: self,
            ids: &claimed,
        };
        let loaded = store.read(id, at).map(Arc::new);
        std::mem::forget(unwinding);
        self.settle(&[(id, &loaded)]);
        loaded
    }

    /// Loads those of `chunks` that are neither cached nor being loaded, asking the
    /// store for them together (neighbours in a pack are read in one go). Failures
    /// are dropped: a reader that gets there loads the chunk itself and sees why.
    pub fn load_many(&self, store: &dyn Redundancy, chunks: &[(ChunkId, Location)]) {
        if self.capacity_bytes == 0 {
            return;
        }
        let mut guard = self.lock();
        let claimed: Vec<(ChunkId, Location)> = chunks
            .iter()
            .filter(|(id, _)| !guard.slots.contains_key(id))
            .copied()
            .collect();
        for (id, _) in &claimed {
            guard.slots.insert(*id, Slot::Loading);
        }
        drop(guard);
        if claimed.is_empty() {
            return;
        }
        let ids: Vec<ChunkId> = claimed.iter().map(|(id, _)| *id).collect();
        let unwinding = Unloading {
            cache: self,
            ids: &ids,
        };
        let loaded: Vec<Result<Arc<Vec<u8>>>> = store
            .read_many(&claimed)
            .into_iter()
            .map(|r| r.map(Arc::new))
            .collect();
        std::mem::forget(unwinding);
        let settled: Vec<(&ChunkId, &Result<Arc<Vec<u8>>>)> = ids.iter().zip(&loaded).collect();
        self.settle(&settled);
    }

    /// Puts what loads of `Loading` slots returned in place (an error takes the slot
    /// out: waiters then load the chunk themselves, and see the error themselves),
    /// evicts the oldest beyond capacity and wakes the waiters.
    fn settle(&self, loaded: &[(&ChunkId, &Result<Arc<Vec<u8>>>)]) {
        let mut guard = self.lock();
        let map = &mut *guard;
        for (id, result) in loaded {
            match result {
                Ok(plain) => {
                    map.slots.insert(**id, Slot::Ready(plain.clone()));
                    map.order.push_back(**id);
                    map.bytes += plain.len();
                }
                Err(_) => {
                    map.slots.remove(*id);
                }
            }
        }
        while map.bytes > self.capacity_bytes {
            let Some(old) = map.order.pop_front() else { break };
            if let Some(Slot::Ready(plain)) = map.slots.remove(&old) {
                map.bytes -= plain.len();
            }
        }
        drop(guard);
        self.loaded.notify_all();
    }

    /// True when `id` is cached or being loaded.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.lock().slots.contains_key(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheMap> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Takes `Loading` slots back out should their loader panic, so that waiters load the
/// chunks themselves instead of waiting forever.
struct Unloading<'a> {
    cache: &'a ChunkCache,
    ids: &'a [ChunkId],
}

impl Drop for Unloading<'_> {
    fn drop(&mut self) {
        let mut guard = self.cache.lock();
        for id in self.ids {
            // Only slots still loading: a ready one is counted in `bytes` and stays.
            if matches!(guard.slots.get(id), Some(Slot::Loading)) {
                guard.slots.remove(id);
            }
        }
        drop(guard);
        self.cache.loaded.notify_all();
    }
}

/// One load job of the read-ahead: chunks that follow each other in a file.
type Job = Vec<(ChunkId, Location)>;

/// Loads chunks into a `ChunkCache` ahead of a sequential reader, on background
/// threads, so disk reads, decompression and hashing overlap with the reader. The
/// chunks asked for are cut into jobs of about `READ_RUN_BYTES` stored bytes, each
/// loaded by one thread with one `read_many` (one disk read when they lie together
/// in a pack), so several jobs load in parallel.
pub struct Prefetcher {
    sender: Option<std::sync::mpsc::SyncSender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Prefetcher {
    /// `threads` loaders feeding `cache` from `store`.
    pub fn new(store: Arc<dyn Redundancy>, cache: Arc<ChunkCache>, threads: usize) -> Prefetcher {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Job>(64);
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = (0..threads)
            .filter_map(|i| {
                let (store, cache, receiver) = (store.clone(), cache.clone(), receiver.clone());
                std::thread::Builder::new()
                    .name(format!("snapfs-readahead-{i}"))
                    .spawn(move || loop {
                        let next = receiver.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(job) = next else { return };
                        cache.load_many(&*store, &job);
                    })
                    .ok()
            })
            .collect();
        Prefetcher {
            sender: Some(sender),
            threads,
        }
    }

    /// Asks for `chunks` to be loaded; skips what is cached and drops what does not
    /// fit in the queue (read-ahead is a hint).
    pub fn prefetch(&self, cache: &ChunkCache, chunks: impl IntoIterator<Item = (ChunkId, Location)>) {
        let Some(sender) = &self.sender else { return };
        let mut job: Job = Vec::new();
        let mut job_bytes = 0u64;
        for (id, at) in chunks {
            if cache.contains(&id) {
                continue;
            }
            let breaks = job
                .last()
                .is_some_and(|(_, last): &(ChunkId, Location)| last.pack != at.pack);
            if !job.is_empty() && (breaks || job_bytes + u64::from(at.len) > READ_RUN_BYTES) {
                if sender.try_send(std::mem::take(&mut job)).is_err() {
                    return;
                }
                job_bytes = 0;
            }
            job.push((id, at));
            job_bytes += u64::from(at.len);
        }
        if !job.is_empty() {
            let _ = sender.try_send(job);
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
    let full = (end - offset) as usize;
    // Filled front to back, so that only holes are zeroed (zeroing the whole buffer
    // first was the other part of a cold read's 7-9% in memset); extents out of
    // order fall back to copying into a zeroed buffer.
    let mut out = Vec::with_capacity(full);
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
        let (at_out, to_out) = ((from - offset) as usize, (to - offset) as usize);
        if at_out >= out.len() {
            out.resize(at_out, 0);
            out.extend_from_slice(bytes);
        } else {
            out.resize(full, 0);
            out[at_out..to_out].copy_from_slice(bytes);
        }
    }
    out.resize(full, 0);
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

    /// A store that counts its frame reads (the count returned beside it), each
    /// taking `delay_ms` first.
    fn counting_store(delay_ms: u64) -> (HookedStore, Arc<AtomicU64>) {
        let gets = Arc::new(AtomicU64::new(0));
        let counted = gets.clone();
        let store = HookedStore::new(
            Box::new(|| {}),
            Box::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            }),
        );
        (store, gets)
    }

    #[test]
    fn a_chunk_wanted_by_many_readers_at_once_is_read_once() {
        // Every read is counted and slow, so that concurrent readers of one chunk overlap.
        let (store, gets) = counting_store(50);
        let plain = vec![7u8; 100_000];
        let frame = crate::codec::encode(&plain, Some(3));
        store.put(&frame.id, &frame.frame).unwrap();
        let id = frame.id;
        let store = OverObjects::new(Arc::new(store));
        let cache = ChunkCache::new(1 << 20);
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
    fn chunks_loaded_together_are_cached_and_a_missing_one_is_left_to_its_reader() {
        let (store, gets) = counting_store(0);
        let plains: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 10_000]).collect();
        let mut wanted = Vec::new();
        for plain in &plains {
            let frame = crate::codec::encode(plain, Some(3));
            store.put(&frame.id, &frame.frame).unwrap();
            wanted.push((frame.id, AT));
        }
        let missing = ChunkId::of(b"never stored");
        wanted.insert(2, (missing, AT));
        let store = OverObjects::new(Arc::new(store));
        let cache = ChunkCache::new(1 << 20);
        cache.load_many(&store, &wanted);
        let loads = gets.load(Ordering::SeqCst);
        assert!(!cache.contains(&missing), "a failed load leaves no slot behind");
        for (id, plain) in wanted
            .iter()
            .map(|(id, _)| id)
            .filter(|id| **id != missing)
            .zip(&plains)
        {
            assert_eq!(*cache.get(&store, id, AT).unwrap(), *plain);
        }
        assert_eq!(
            gets.load(Ordering::SeqCst),
            loads,
            "every stored chunk came from the cache"
        );
        assert!(cache.get(&store, &missing, AT).is_err());
        // Loading them again asks the store for nothing but the missing one.
        cache.load_many(&store, &wanted);
        assert_eq!(gets.load(Ordering::SeqCst), loads + 2);
    }

    #[test]
    fn holes_read_as_zeros_and_extents_in_any_order_land_where_they_belong() {
        let store = MemoryStore::new();
        let plain: Vec<u8> = (0..100u8).collect();
        let frame = crate::codec::encode(&plain, Some(3));
        store.put(&frame.id, &frame.frame).unwrap();
        let store = OverObjects::new(Arc::new(store));
        let attr = InodeAttr {
            id: crate::types::InodeId(7),
            kind: crate::catalog::FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 200,
            nlink: 1,
            rdev: 0,
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            target: Vec::new(),
        };
        let extent = |offset, length, chunk_offset| {
            (
                Extent {
                    offset,
                    length,
                    chunk: frame.id,
                    chunk_offset,
                },
                AT,
            )
        };
        // File bytes 10..30 are chunk bytes 0..20, 50..60 are 90..100; the rest holes.
        let mut expected = [0u8; 200];
        expected[10..30].copy_from_slice(&plain[0..20]);
        expected[50..60].copy_from_slice(&plain[90..100]);
        let in_order = [extent(10, 20, 0), extent(50, 10, 90)];
        let reversed = [extent(50, 10, 90), extent(10, 20, 0)];
        let cache = ChunkCache::new(1 << 20);
        for extents in [&in_order[..], &reversed[..]] {
            for (offset, len) in [(0, 200), (15, 40), (55, 500), (20, 5), (60, 10)] {
                let read = read_extents(&store, &cache, &attr, extents, offset, len).unwrap();
                let to = (offset as usize + len).min(200);
                assert_eq!(read, expected[offset as usize..to], "{offset}+{len}");
            }
        }
    }

    #[test]
    fn the_cache_keeps_the_newest_chunks_that_fit_in_its_bytes() {
        let (store, gets) = counting_store(0);
        let ids: Vec<ChunkId> = (0..4u8)
            .map(|i| {
                let frame = crate::codec::encode(&vec![i; 10_000], Some(3));
                store.put(&frame.id, &frame.frame).unwrap();
                frame.id
            })
            .collect();
        let store = OverObjects::new(Arc::new(store));
        // Room for two chunks of 10,000 bytes, not three.
        let cache = ChunkCache::new(25_000);
        let wanted: Vec<(ChunkId, Location)> = ids.iter().map(|id| (*id, AT)).collect();
        cache.load_many(&store, &wanted[..3]);
        assert!(!cache.contains(&ids[0]), "the oldest went");
        assert!(cache.contains(&ids[1]) && cache.contains(&ids[2]));
        let loads = gets.load(Ordering::SeqCst);
        cache.get(&store, &ids[2], AT).unwrap();
        assert_eq!(
            gets.load(Ordering::SeqCst),
            loads,
            "a kept chunk comes from memory"
        );
        // A chunk bigger than the whole cache is read, handed over, and not kept.
        let small = ChunkCache::new(5_000);
        assert_eq!(*small.get(&store, &ids[3], AT).unwrap(), vec![3u8; 10_000]);
        assert!(!small.contains(&ids[3]));
    }

    #[test]
    fn a_failed_load_lets_every_waiter_see_the_error() {
        let store = OverObjects::new(Arc::new(MemoryStore::new()));
        let cache = ChunkCache::new(1 << 20);
        let id = ChunkId::of(b"never stored");
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| assert!(cache.get(&store, &id, AT).is_err()));
            }
        });
        assert!(!cache.contains(&id), "nothing is left loading");
    }
}
