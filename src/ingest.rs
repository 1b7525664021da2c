//! Turning bytes into stored chunks and extents.
//!
//! Owns: deduplication against the catalog's chunk list, compression, writing new
//! chunks to every mirror that lacks them, and the write-order rule: chunks written
//! here become durable in `flush`, which must run before the catalog transaction that
//! references them commits (DESIGN.md §2.1). Knows nothing of files or folders.

use std::collections::HashMap;
use std::io::Read;

use crate::catalog::{Extent, Txn};
use crate::chunker::{Chunker, ChunkerParams};
use crate::codec;
use crate::error::Result;
use crate::store::{MirrorSet, MirrorStore, ObjectStore};
use crate::types::ChunkId;

/// A chunk written (or completed) since the last flush.
#[derive(Clone, Copy, Debug)]
struct Pending {
    /// Mirrors this sink wrote it to.
    written: MirrorSet,
    /// Mirrors that hold it, counting copies that were there before.
    mirrors: MirrorSet,
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
pub struct ChunkSink<'s> {
    store: &'s MirrorStore,
    params: ChunkerParams,
    zstd_level: Option<i32>,
    pending: HashMap<ChunkId, Pending>,
    stats: IngestStats,
}

impl<'s> ChunkSink<'s> {
    /// A sink writing to `store` with the repository's chunking and compression.
    pub fn new(store: &'s MirrorStore, params: ChunkerParams, zstd_level: Option<i32>) -> ChunkSink<'s> {
        ChunkSink {
            store,
            params,
            zstd_level,
            pending: HashMap::new(),
            stats: IngestStats::default(),
        }
    }

    /// What has been stored so far.
    pub fn stats(&self) -> IngestStats {
        self.stats
    }

    /// Stores one chunk unless every healthy mirror already holds it (DESIGN.md §2.6:
    /// a dedup hit counts only where every healthy mirror has a copy; mirrors that
    /// lack it get one). `txn` answers what the catalog knows. Not durable until `flush`.
    pub fn put(&mut self, txn: &Txn<'_>, plain: &[u8]) -> Result<ChunkId> {
        let id = ChunkId::of(plain);
        self.stats.chunks += 1;
        self.stats.plain_bytes += plain.len() as u64;
        let healthy = self.store.healthy();
        let held = match self.pending.get(&id) {
            Some(p) => p.mirrors,
            None => txn.chunk(&id)?.map_or(MirrorSet(0), |c| MirrorSet(c.mirrors)),
        };
        if held.is_superset_of(healthy) {
            return Ok(id);
        }
        let missing = MirrorSet(healthy.0 & !held.0);
        let encoded = codec::encode(plain, self.zstd_level);
        let written = self.store.put_to(&id, &encoded.frame, missing)?;
        self.stats.new_chunks += 1;
        self.stats.stored_bytes += encoded.frame.len() as u64;
        let mirrors = MirrorSet(held.0 | written.0);
        // Recorded now (the extents that follow reference it) but committed only after
        // `flush` has made it durable.
        txn.add_chunk(&id, plain.len() as u64, encoded.frame.len() as u64, written.0)?;
        let earlier = self.pending.get(&id).map_or(0, |p| p.written.0);
        self.pending.insert(
            id,
            Pending {
                written: MirrorSet(earlier | written.0),
                mirrors,
            },
        );
        Ok(id)
    }

    /// Chunks everything `reader` yields, storing each chunk, and returns the extents
    /// that place it at `base_offset` onwards in a file. Memory is bounded by the
    /// maximum chunk size.
    pub fn put_stream(&mut self, txn: &Txn<'_>, base_offset: u64, reader: impl Read) -> Result<Vec<Extent>> {
        let mut extents = Vec::new();
        let mut offset = base_offset;
        let params = self.params;
        let mut chunker = Chunker::new(&params);
        let mut reader = reader;
        let mut buf = vec![0u8; 1 << 20];
        let mut emit = |sink: &mut ChunkSink<'s>, chunk: &[u8]| -> Result<()> {
            let id = sink.put(txn, chunk)?;
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
        Ok(extents)
    }

    /// Makes every chunk stored since the last flush durable in its mirrors (one sync
    /// per mirror). Commit `txn` only after this returns. A mirror lost during the sync
    /// is taken out of what `txn` records for these chunks.
    pub fn flush(&mut self, txn: &Txn<'_>) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.store.sync()?;
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
