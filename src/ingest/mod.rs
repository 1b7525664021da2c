//! Turning bytes into stored chunks and extents.
//!
//! Owns: deduplication against the catalog's chunk list, compression, writing new
//! chunks to every mirror that lacks them, and the write-order rule: chunks written
//! here become durable in `flush`, which must run before the catalog transaction that
//! references them commits (DESIGN.md §2.1). Knows nothing of files or folders.

mod pool;

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

pub use pool::Backlog;
use pool::WriterPool;

use crate::catalog::{Catalog, ChunkInfo, Extent, Txn};
use crate::chunker::{Chunker, ChunkerParams};
use crate::codec;
use crate::error::{Error, Result};
use crate::store::{MirrorSet, MirrorStore, ObjectStore};
use crate::types::ChunkId;

/// Where the catalog's knowledge of chunks comes from: the catalog itself, or a
/// write transaction (which also sees its own uncommitted rows).
pub trait ChunkIndex {
    /// What is recorded of chunk `id`; `None` when it was never stored.
    fn chunk_info(&self, id: &ChunkId) -> Result<Option<ChunkInfo>>;
}

impl ChunkIndex for Catalog {
    fn chunk_info(&self, id: &ChunkId) -> Result<Option<ChunkInfo>> {
        self.chunk(id)
    }
}

impl ChunkIndex for Txn<'_> {
    fn chunk_info(&self, id: &ChunkId) -> Result<Option<ChunkInfo>> {
        self.chunk(id)
    }
}

/// A chunk written (or completed) since the last sync.
#[derive(Clone, Copy, Debug)]
struct Pending {
    plain_size: u64,
    stored_size: u64,
    /// Mirrors this sink wrote it to.
    written: MirrorSet,
    /// Mirrors that held it before this sink saw it.
    held: MirrorSet,
    /// Mirrors expected to hold it once queued writes finish (for dedup decisions).
    mirrors: MirrorSet,
    /// True once `record` has put its row into a transaction.
    recorded: bool,
}

/// What `ChunkSink` did, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// Chunks seen, duplicates included.
    pub chunks: u64,
    /// Plaintext bytes seen.
    pub plain_bytes: u64,
    /// Chunks that had to be written (to at least one mirror).
    pub new_chunks: u64,
    /// Bytes written per mirror copy (frame bytes).
    pub stored_bytes: u64,
}

/// Stores chunk plaintexts, each once, and remembers what the catalog must record.
pub struct ChunkSink {
    store: Arc<MirrorStore>,
    params: ChunkerParams,
    zstd_level: Option<i32>,
    pending: HashMap<ChunkId, Pending>,
    /// The pending chunks `record` has not put into a transaction yet, so that it
    /// costs what was put since the last call (an import records after every file,
    /// and syncs, so keeps everything pending, only at the end).
    unrecorded: Vec<ChunkId>,
    /// `put_stream`'s read buffer, kept between calls.
    read_buf: Vec<u8>,
    /// A sync of the mirrors made outside `sync` (see `sync_failed`) failed: the next
    /// `sync` fails with this error as if it had failed itself.
    failed_sync: Option<Error>,
    stats: IngestStats,
    /// Compresses and writes chunks in the background when present.
    pool: Option<WriterPool>,
}

impl ChunkSink {
    /// A sink writing to `store` with the repository's chunking and compression.
    pub fn new(store: Arc<MirrorStore>, params: ChunkerParams, zstd_level: Option<i32>) -> ChunkSink {
        ChunkSink {
            store,
            params,
            zstd_level,
            pending: HashMap::new(),
            unrecorded: Vec::new(),
            read_buf: Vec::new(),
            failed_sync: None,
            stats: IngestStats::default(),
            pool: None,
        }
    }

    /// Compresses and writes new chunks on `threads` background threads (at most
    /// `depth` chunks queued), so `put` only cuts, hashes and checks for duplicates.
    pub fn with_writers(mut self, threads: usize, depth: usize) -> ChunkSink {
        self.pool = Some(WriterPool::new(
            self.store.clone(),
            self.zstd_level,
            threads,
            depth,
        ));
        self
    }

    /// The writer threads' queue, to wait on without holding the sink; `None` when
    /// chunks are written by `put` itself.
    pub fn backlog(&self) -> Option<Backlog> {
        self.pool.as_ref().map(WriterPool::backlog)
    }

    /// What has been stored so far.
    pub fn stats(&self) -> IngestStats {
        self.stats
    }

    /// Stores one chunk unless every healthy mirror already holds it (DESIGN.md §2.6:
    /// a dedup hit counts only where every healthy mirror has a copy; mirrors that
    /// lack it get one). `index` answers what the catalog knows. Not durable until
    /// `sync`; not in the catalog until `record`.
    pub fn put(&mut self, index: &dyn ChunkIndex, plain: &[u8]) -> Result<ChunkId> {
        let id = ChunkId::of(plain);
        self.stats.chunks += 1;
        self.stats.plain_bytes += plain.len() as u64;
        let healthy = self.store.healthy();
        let held = match self.pending.get(&id) {
            Some(p) => p.mirrors,
            None => index
                .chunk_info(&id)?
                .map_or(MirrorSet(0), |c| MirrorSet(c.mirrors)),
        };
        if held.is_superset_of(healthy) {
            return Ok(id);
        }
        let missing = MirrorSet(healthy.0 & !held.0);
        self.stats.new_chunks += 1;
        if let Some(pool) = &self.pool {
            pool.submit(id, plain.to_vec(), missing)?;
            let earlier = self.pending.get(&id);
            let entry = Pending {
                plain_size: plain.len() as u64,
                stored_size: earlier.map_or(0, |p| p.stored_size),
                written: earlier.map_or(MirrorSet(0), |p| p.written),
                held: earlier.map_or(held, |p| p.held),
                mirrors: MirrorSet(held.0 | missing.0),
                recorded: false,
            };
            self.pending.insert(id, entry);
            self.unrecorded.push(id);
            return Ok(id);
        }
        let encoded = codec::encode_with_id(id, plain, self.zstd_level);
        let written = self.store.put_to(&id, &encoded.frame, missing)?;
        self.stats.stored_bytes += encoded.frame.len() as u64;
        let mirrors = MirrorSet(held.0 | written.0);
        let earlier = self.pending.get(&id).map_or(0, |p| p.written.0);
        self.pending.insert(
            id,
            Pending {
                plain_size: plain.len() as u64,
                stored_size: encoded.frame.len() as u64,
                written: MirrorSet(earlier | written.0),
                held: self.pending.get(&id).map_or(held, |p| p.held),
                mirrors,
                recorded: false,
            },
        );
        self.unrecorded.push(id);
        Ok(id)
    }

    /// Chunks everything `reader` yields, storing each chunk, and returns the extents
    /// that place it at `base_offset` onwards in a file. Memory is bounded by the
    /// maximum chunk size.
    pub fn put_stream(
        &mut self,
        index: &dyn ChunkIndex,
        base_offset: u64,
        reader: impl Read,
    ) -> Result<Vec<Extent>> {
        let mut extents = Vec::new();
        let mut offset = base_offset;
        let params = self.params;
        let mut chunker = Chunker::new(&params);
        let mut reader = reader;
        // One read buffer for the sink's life: zeroing a fresh MiB for every file was a
        // tenth of an import of small files.
        let mut buf = std::mem::take(&mut self.read_buf);
        buf.resize(1 << 20, 0);
        let mut emit = |sink: &mut ChunkSink, chunk: &[u8]| -> Result<()> {
            let id = sink.put(index, chunk)?;
            extents.push(Extent {
                offset,
                length: chunk.len() as u64,
                chunk: id,
                chunk_offset: 0,
            });
            offset += chunk.len() as u64;
            Ok(())
        };
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(crate::Error::io("reading data to store", e)),
            };
            chunker.push(&buf[..n], &mut |c| emit(self, c))?;
        }
        chunker.finish(&mut |c| emit(self, c))?;
        self.read_buf = buf;
        Ok(extents)
    }

    /// The store chunks go to.
    pub fn store(&self) -> Arc<MirrorStore> {
        self.store.clone()
    }

    /// The chunking parameters in use.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Waits for the writer threads and takes in what they wrote: every chunk put so
    /// far is then written to its mirrors (not yet durable: that is `sync`), so it can
    /// be read back.
    pub fn wait_written(&mut self) -> Result<()> {
        let Some(pool) = &self.pool else { return Ok(()) };
        let written = match pool.wait() {
            Ok(w) => w,
            Err(e) => {
                // Some chunk did not reach its mirrors: forget everything pending, so
                // no later write counts on a copy that may not exist (the transaction
                // that would have recorded them fails with this error).
                self.pending.clear();
                self.unrecorded.clear();
                return Err(e);
            }
        };
        for w in written {
            self.stats.stored_bytes += w.stored_size;
            if let Some(p) = self.pending.get_mut(&w.id) {
                p.stored_size = w.stored_size;
                p.written = MirrorSet(p.written.0 | w.written.0);
            }
        }
        Ok(())
    }

    /// Forgets every chunk put since the last sync, after a transaction that recorded
    /// them failed: later writes store them again rather than trusting them.
    pub fn abandon(&mut self) {
        self.pending.clear();
        self.unrecorded.clear();
    }

    /// Notes that a sync of this sink's mirrors made by someone else (to shorten the
    /// sync a commit makes) failed: the chunks pending now may not be durable, so the
    /// next `sync` fails with `error`.
    pub fn sync_failed(&mut self, error: Error) {
        self.failed_sync.get_or_insert(error);
    }

    /// True when chunks were put since the last `sync`.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Puts the rows of chunks stored since the last `record` into `txn`, so that
    /// extents may reference them. Commit only after `sync`.
    pub fn record(&mut self, txn: &Txn<'_>) -> Result<()> {
        self.wait_written()?;
        for id in std::mem::take(&mut self.unrecorded) {
            if let Some(p) = self.pending.get_mut(&id).filter(|p| !p.recorded) {
                txn.add_chunk(&id, p.plain_size, p.stored_size, p.held.0 | p.written.0)?;
                p.recorded = true;
            }
        }
        Ok(())
    }

    /// Records what is left, makes every chunk stored since the last sync durable in
    /// its mirrors (one sync per mirror), and takes a mirror lost meanwhile out of the
    /// rows in `txn`. Commit `txn` only after this returns (DESIGN.md §2.1).
    pub fn sync(&mut self, txn: &Txn<'_>) -> Result<()> {
        let failed = self.failed_sync.take();
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Some(e) = failed {
            // A writeback error is reported once, to whoever syncs first: the chunks
            // pending then cannot be trusted, even if a later sync succeeds.
            self.abandon();
            return Err(e);
        }
        self.record(txn)?;
        if let Err(e) = self.store.sync() {
            self.abandon();
            return Err(e);
        }
        let healthy = self.store.healthy();
        for (id, p) in self.pending.drain() {
            let lost = MirrorSet(p.written.0 & !healthy.0);
            if !lost.is_empty() {
                txn.drop_chunk_mirrors(&id, lost.0)?;
            }
        }
        Ok(())
    }
}
