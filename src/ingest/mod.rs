//! Turning bytes into stored chunks and extents.
//!
//! Owns: deduplication against the catalog's chunk list, compression, handing new
//! chunks to the redundancy layer, and the write-order rule: chunks written here
//! become durable in `sync`, which must run before the catalog transaction that
//! references them commits (DESIGN.md §2.1). Knows nothing of files or folders.

mod pool;

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

pub use pool::Backlog;
use pool::WriterPool;

use crate::catalog::{Catalog, ChunkInfo, Extent, Txn};
use crate::chunker::{Chunker, ChunkerParams};
use crate::codec;
use crate::error::{Error, Result};
use crate::store::Redundancy;
use crate::types::{ChunkId, Location};

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

/// A chunk written since the last sync.
#[derive(Clone, Copy, Debug)]
struct Pending {
    plain_size: u64,
    stored_size: u64,
    /// Where it was put; `None` while a writer thread has it.
    at: Option<Location>,
    /// True once `record` has put its row into a transaction.
    recorded: bool,
}

/// The chunks a commit of buffered writes covers: every chunk put and not yet
/// committed when the commit began. Taken under the caller's lock, so that the slow
/// part of the commit (`make_durable`: waiting for the writers, syncing the store)
/// runs without it; `ChunkSink::commit_ticket` then records them.
#[derive(Debug)]
pub struct CommitTicket {
    ids: Vec<ChunkId>,
    /// How many chunks the writer threads had been given (see `Backlog::wait_for`).
    queued: u64,
    /// The sink's `abandoned` count when it was taken.
    abandoned: u64,
}

impl CommitTicket {
    /// True when every chunk of the ticket is recorded.
    pub fn is_recorded(&self) -> bool {
        self.ids.is_empty()
    }

    /// Makes every chunk of the ticket durable: waits for the writer threads to have
    /// written them, then syncs `store`. Needs no lock; `commit_ticket` must be told
    /// how it went.
    pub fn make_durable(&self, backlog: Option<&Backlog>, store: &dyn Redundancy) -> Result<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        if let Some(backlog) = backlog {
            backlog.wait_for(self.queued);
        }
        store.sync()
    }
}

/// A chunk's bytes with their id: the costly part of storing a chunk (cutting it
/// and hashing it), which needs no sink, so that callers holding a lock around the
/// sink do it before they take it (`ChunkSink::put_cut`).
#[derive(Debug)]
pub struct CutChunk {
    id: ChunkId,
    plain: Vec<u8>,
}

impl CutChunk {
    /// Hashes a copy of `plain`.
    pub fn new(plain: &[u8]) -> CutChunk {
        CutChunk {
            id: ChunkId::of(plain),
            plain: plain.to_vec(),
        }
    }

    pub fn len(&self) -> usize {
        self.plain.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plain.is_empty()
    }
}

/// What `ChunkSink` did, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// Chunks seen, duplicates included.
    pub chunks: u64,
    /// Plaintext bytes seen.
    pub plain_bytes: u64,
    /// Chunks that had to be written.
    pub new_chunks: u64,
    /// Frame bytes written (per copy).
    pub stored_bytes: u64,
}

/// Stores chunk plaintexts, each once, and remembers what the catalog must record.
pub struct ChunkSink {
    store: Arc<dyn Redundancy>,
    params: ChunkerParams,
    zstd_level: Option<i32>,
    pending: HashMap<ChunkId, Pending>,
    /// The pending chunks `record` has not put into a transaction yet, so that it
    /// costs what was put since the last call (an import records after every file,
    /// and syncs, so keeps everything pending, only at the end).
    unrecorded: Vec<ChunkId>,
    /// `put_stream`'s read buffer, kept between calls.
    read_buf: Vec<u8>,
    /// A sync of the store made outside `sync` (see `sync_failed`) failed: the next
    /// `sync` fails with this error as if it had failed itself.
    failed_sync: Option<Error>,
    /// How many times everything pending was forgotten (`abandon`): a commit ticket
    /// taken before then cannot be committed.
    abandoned: u64,
    stats: IngestStats,
    /// Compresses and writes chunks in the background when present.
    pool: Option<WriterPool>,
}

impl ChunkSink {
    /// A sink writing to `store` with the repository's chunking and compression.
    pub fn new(store: Arc<dyn Redundancy>, params: ChunkerParams, zstd_level: Option<i32>) -> ChunkSink {
        ChunkSink {
            store,
            params,
            zstd_level,
            pending: HashMap::new(),
            unrecorded: Vec::new(),
            read_buf: Vec::new(),
            failed_sync: None,
            abandoned: 0,
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

    /// Stores one chunk unless the catalog (`index`) or this sink already has it
    /// (every copy of a stored chunk sits at its one location, which the redundancy
    /// layer keeps good). Not durable until `sync`; not in the catalog until `record`.
    pub fn put(&mut self, index: &dyn ChunkIndex, plain: &[u8]) -> Result<ChunkId> {
        self.put_hashed(index, ChunkId::of(plain), Cow::Borrowed(plain))
    }

    /// `put` of a chunk cut and hashed beforehand (by a caller that does that outside
    /// its lock, see `CutChunk`): what is left is the duplicate check and the hand-off.
    pub fn put_cut(&mut self, index: &dyn ChunkIndex, chunk: CutChunk) -> Result<ChunkId> {
        self.put_hashed(index, chunk.id, Cow::Owned(chunk.plain))
    }

    fn put_hashed(&mut self, index: &dyn ChunkIndex, id: ChunkId, plain: Cow<'_, [u8]>) -> Result<ChunkId> {
        self.stats.chunks += 1;
        self.stats.plain_bytes += plain.len() as u64;
        if self.pending.contains_key(&id) || index.chunk_info(&id)?.is_some() {
            return Ok(id);
        }
        self.stats.new_chunks += 1;
        let mut pending = Pending {
            plain_size: plain.len() as u64,
            stored_size: 0,
            at: None,
            recorded: false,
        };
        match &self.pool {
            Some(pool) => pool.submit(id, plain.into_owned())?,
            None => {
                let encoded = codec::encode_with_id(id, &plain, self.zstd_level);
                let at = self.store.put(&[(id, &encoded.frame)])?;
                pending.stored_size = encoded.frame.len() as u64;
                pending.at = at.first().copied();
                self.stats.stored_bytes += pending.stored_size;
            }
        }
        self.pending.insert(id, pending);
        self.unrecorded.push(id);
        Ok(id)
    }

    /// Where chunk `id`, put since the last sync, was stored; `None` when this sink
    /// has no such chunk or a writer thread still has it (see `wait_written`).
    pub fn location(&self, id: &ChunkId) -> Option<Location> {
        self.pending.get(id).and_then(|p| p.at)
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
    pub fn store(&self) -> Arc<dyn Redundancy> {
        self.store.clone()
    }

    /// The chunking parameters in use.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Takes in what the writer threads have written so far, without waiting.
    pub fn take_written(&mut self) -> Result<()> {
        self.take_in(false)
    }

    /// True when chunk `id` was put and a writer thread still has it (so it has no
    /// location yet: see `wait_written`).
    pub fn awaits_writer(&self, id: &ChunkId) -> bool {
        self.pending.get(id).is_some_and(|p| p.at.is_none())
    }

    /// Waits for the writer threads and takes in what they wrote: every chunk put so
    /// far is then placed (not yet durable: that is `sync`), so it can be read back.
    pub fn wait_written(&mut self) -> Result<()> {
        self.take_in(true)
    }

    /// Takes in what the writer threads wrote, after waiting for all of them with
    /// `wait`, or only what they have finished so far.
    fn take_in(&mut self, wait: bool) -> Result<()> {
        let Some(pool) = &self.pool else { return Ok(()) };
        let written = if wait { pool.wait() } else { pool.take_written() };
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                // Some chunk was not stored: forget everything pending, so
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
                p.at = Some(w.at);
            }
        }
        Ok(())
    }

    /// Forgets every chunk put since the last sync, after a transaction that recorded
    /// them failed: later writes store them again rather than trusting them.
    pub fn abandon(&mut self) {
        self.pending.clear();
        self.unrecorded.clear();
        self.abandoned += 1;
    }

    /// The chunks a commit beginning now covers: every chunk put and not yet
    /// committed (see `CommitTicket`).
    pub fn ticket(&self) -> CommitTicket {
        CommitTicket {
            ids: self.pending.keys().copied().collect(),
            queued: self.pool.as_ref().map_or(0, |p| p.backlog().queued()),
            abandoned: self.abandoned,
        }
    }

    /// Records in `txn` up to `budget` chunks of `ticket` that no commit has recorded
    /// since it was taken, and drops them from the ticket; returns how many rows that
    /// took. The first call gets `durable`, how `ticket.make_durable` went, and notes
    /// every disk not healthy now as incomplete (as `sync`). Commit `txn` only when
    /// this returns Ok (DESIGN.md §2.1), and commit no row naming a chunk of the
    /// ticket before it is recorded. Chunks put after the ticket stay pending. Fails,
    /// forgetting everything pending, when the chunks may not be durable: the sync
    /// failed, a sync made elsewhere failed (a writeback error is reported once), or
    /// a failed commit forgot them meanwhile.
    pub fn commit_ticket(
        &mut self,
        txn: &Txn<'_>,
        ticket: &mut CommitTicket,
        durable: Option<Result<()>>,
        budget: usize,
    ) -> Result<usize> {
        if ticket.abandoned != self.abandoned {
            return Err(Error::WritesLost(
                "a commit that failed meanwhile dropped them (its error was reported to its caller)".into(),
            ));
        }
        if let Some(durable) = durable {
            let failed = durable.err().or_else(|| self.failed_sync.take());
            if let Some(e) = failed {
                self.abandon();
                return Err(e);
            }
            if let Err(e) = self.take_in(false) {
                self.abandon();
                return Err(e);
            }
            for disk in self.store.untrusted() {
                txn.mark_mirror_incomplete(disk)?;
            }
        }
        let mut used = 0;
        while used < budget {
            let Some(id) = ticket.ids.pop() else { break };
            // Gone from `pending`: a commit under the caller's lock took it meanwhile.
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            if !p.recorded {
                let at = p.at.ok_or_else(|| Error::NoMirror {
                    reason: format!("chunk {id} was never placed"),
                })?;
                txn.add_chunk(&id, p.plain_size, p.stored_size, at)?;
                used += 1;
            }
        }
        Ok(used)
    }

    /// Notes that a sync of this sink's store made by someone else (to shorten the
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
                let at = p.at.ok_or_else(|| Error::NoMirror {
                    reason: format!("chunk {id} was never placed"),
                })?;
                txn.add_chunk(&id, p.plain_size, p.stored_size, at)?;
                p.recorded = true;
            }
        }
        Ok(())
    }

    /// Records what is left, makes every chunk stored since the last sync durable
    /// (one sync of the store), and notes in `txn` every disk that is not healthy now
    /// as incomplete (it may lack what `txn` names, so it is filled before it is
    /// trusted again). Commit `txn` only after this returns (DESIGN.md §2.1).
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
        for disk in self.store.untrusted() {
            txn.mark_mirror_incomplete(disk)?;
        }
        self.pending.clear();
        Ok(())
    }
}
