//! Writes whose costly part runs without the core's lock: reading the bytes around
//! them, cutting them into chunks and hashing the chunks.
//!
//! Each goes in three steps. Under the lock, `begin_append` or `begin_rewrite` copies
//! what the write needs of its file's open run (its chunker) and locates the bytes it
//! must read; without it, `cut` reads those bytes and cuts and hashes; under it again,
//! `finish_append` or `finish_rewrite` hands the chunks to the sink (a duplicate check
//! and a queue each) and lays the runs into the file, exactly as `write` would have,
//! unless what the write read moved meanwhile: the file's open run (every change of
//! one gets a new version, `DirtyFiles::open_run_mut`) or, for a rewrite, anything in
//! the catalog (its change count). The caller then writes under the lock with `write`.
//! A refusal costs a second cut; a commit of buffered writes is the usual cause.
//!
//! Lock scope: none here. The callers (`Fs::write_as`) hold the core's lock across
//! the `begin_` and `finish_` steps only.

use std::ops::Range;

use super::{locate, view_extents, DirtyFile, Sealing, MAX_SEALED_RUNS, SEAL_STEP_FILES};
use crate::catalog::{Catalog, Extent, FileKind, InodeAttr};
use crate::chunker::{Chunker, ChunkerParams};
use crate::error::{Error, Result};
use crate::fs::read::{read_extents, Placed};
use crate::fs::{ChunkCache, State};
use crate::ingest::{ChunkSink, CutChunk};
use crate::store::Redundancy;
use crate::types::{GenId, InodeId};

/// A write that continues its file's open run and completes at least one chunk.
pub(in crate::fs) struct Append {
    ino: InodeId,
    offset: u64,
    run_version: u64,
    chunker: Chunker,
}

/// An `Append` cut: its chunks, in order, and the chunker holding the tail after them.
pub(in crate::fs) struct CutAppend {
    append: Append,
    len: u64,
    chunks: Vec<CutChunk>,
}

/// An `Append` of `len` bytes at `offset` of `ino`, when they continue its open run
/// and complete at least one chunk (shorter ones only join the run's buffer, which
/// the lock can do as fast as a copy); otherwise `None`.
pub(in crate::fs) fn begin_append(st: &State, ino: InodeId, offset: u64, len: usize) -> Option<Append> {
    let d = st.dirty.get(&ino)?;
    let cuts = d.chunker.buffered() + len >= d.chunker.params().max_size as usize;
    (d.end == offset && cuts).then(|| Append {
        ino,
        offset,
        run_version: d.run_version,
        chunker: d.chunker.clone(),
    })
}

impl Append {
    /// Cuts and hashes `data` after the run's buffered tail.
    pub(in crate::fs) fn cut(mut self, data: &[u8]) -> CutAppend {
        let chunks = cut_into(&mut self.chunker, &[data], false);
        CutAppend {
            append: self,
            len: data.len() as u64,
            chunks,
        }
    }
}

/// Applies `cut` to its file and returns true; false, with nothing changed, when the
/// file's open run changed since `begin_append` (a commit sealed it, a write or a
/// truncation moved it, the file went).
pub(in crate::fs) fn finish_append(st: &mut State, cut: CutAppend) -> Result<bool> {
    let CutAppend { append, len, chunks } = cut;
    let Some((catalog, sink, d)) = run_at_version(st, append.ino, append.run_version) else {
        return Ok(false);
    };
    let now = crate::fs::now_ns();
    d.mtime_ns = now;
    d.ctime_ns = now;
    d.user_end = d.user_end.max(append.offset + len);
    d.end += len;
    d.chunker = append.chunker;
    add_chunks(catalog, sink, d, chunks)?;
    Ok(true)
}

/// How a write that does not continue its file's open run goes.
pub(in crate::fs) enum Rewriting {
    /// Planned: `cut` it without the lock, then `finish_rewrite`.
    Planned(Box<Rewrite>),
    /// Bytes it must read are in chunks the writer threads still have: wait for them
    /// without the lock and plan again.
    AfterWriters,
    /// The file has gathered `MAX_SEALED_RUNS` sealed runs: commit them (the group
    /// commit's way, syncing without the lock) and plan again.
    CommitFirst,
    /// Under the lock, with `write`: it reads and cuts nothing, continues its run, or
    /// starts inside what sealing the open run rewrites (whose new chunks decide
    /// where the new run starts).
    UnderTheLock,
}

/// A write that does not continue its file's open run (a random write), planned: the
/// open run is sealed first, which re-cuts the rest of the extent it stops in (`seal`),
/// and the new run starts at the start of the extent the write lands in (`prefix`).
pub(in crate::fs) struct Rewrite {
    ino: InodeId,
    offset: u64,
    /// The file as the buffered writes leave it (its size), for reading.
    attr: InodeAttr,
    params: ChunkerParams,
    seal: Option<SealPlan>,
    /// The new run starts at `prefix.start`; the write at its end.
    prefix: Range<u64>,
    prefix_extents: Vec<Placed>,
    /// What the plan read: the open run's version (`None`: no buffered writes), and
    /// the catalog's change count and live generation.
    run_version: Option<u64>,
    catalog_changes: u64,
    live: GenId,
}

/// Sealing the open run: its chunker goes on with `suffix`'s bytes and finishes.
struct SealPlan {
    chunker: Chunker,
    suffix: Range<u64>,
    extents: Vec<Placed>,
}

/// A `Rewrite` cut.
pub(in crate::fs) struct CutRewrite {
    plan: Box<Rewrite>,
    /// The sealed run's last chunks, and how many bytes they took after its end.
    seal: Option<(Vec<CutChunk>, u64)>,
    /// The new run's chunks and the chunker with its tail; its length (the prefix's
    /// and the write's).
    chunks: Vec<CutChunk>,
    chunker: Chunker,
    len: u64,
    data_len: u64,
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Plans writing `data` at `offset` of `ino` as `write` would, when it does not
/// continue the file's open run (see `Rewriting`).
pub(in crate::fs) fn begin_rewrite(
    st: &mut State,
    ino: InodeId,
    offset: u64,
    data: &[u8],
) -> Result<Rewriting> {
    // Known without a catalog read: a write that continues the open run (shorter
    // than a chunk, or `begin_append` would have taken it), and a file's first
    // buffered write at its start (every small file a copy creates), which reads
    // nothing and cuts nothing.
    let run_end = st.dirty.get(&ino).map(|d| d.end);
    let first_at_start = offset == 0 && run_end.is_none();
    if run_end == Some(offset) || (first_at_start && data.len() < st.params().max_size as usize) {
        return Ok(Rewriting::UnderTheLock);
    }
    let live = st.catalog.live();
    let Some(attr) = st.catalog.inode(live, ino)? else {
        return Ok(Rewriting::UnderTheLock);
    };
    if attr.kind != FileKind::File {
        return Ok(Rewriting::UnderTheLock);
    }
    // Chunks the writers have finished get their places, for `locate`.
    st.sink.take_written()?;
    let dirty = st.dirty.get(&ino);
    if dirty.is_some_and(|d| d.sealed.len() >= MAX_SEALED_RUNS) {
        return Ok(Rewriting::CommitFirst);
    }
    let size = attr.size.max(dirty.map_or(0, |d| d.user_end));
    let attr = InodeAttr { size, ..attr };
    let mut reads = Vec::new();
    let (seal, resealed) = match dirty {
        Some(d) => {
            let end = d.end;
            let to = view_extents(st, ino, end, end + 1, false)?
                .into_iter()
                .find(|e| e.offset < end && e.end() > end)
                .map_or(end, |e| e.end());
            let extents = view_extents(st, ino, end, to, false)?;
            reads.extend(extents.iter().map(|e| e.chunk));
            let seal = SealPlan {
                chunker: d.chunker.clone(),
                suffix: end..to,
                extents: Vec::new(),
            };
            (Some((seal, extents)), d.start..to)
        }
        None => (None, 0..0),
    };
    let mut start = offset;
    let mut looked_at = offset.saturating_sub(1)..offset + 1;
    if offset <= size {
        if let Some(e) = view_extents(st, ino, looked_at.start, looked_at.end, false)?
            .into_iter()
            .find(|e| e.offset < offset && e.end() >= offset)
        {
            start = e.offset;
            looked_at.start = looked_at.start.min(e.offset);
        }
    }
    if overlaps(&looked_at, &resealed) {
        return Ok(Rewriting::UnderTheLock);
    }
    let prefix_extents = if start < offset {
        view_extents(st, ino, start, offset, false)?
    } else {
        Vec::new()
    };
    reads.extend(prefix_extents.iter().map(|e| e.chunk));
    let params = st.params();
    let seal_cuts = seal
        .as_ref()
        .is_some_and(|(s, _)| s.chunker.buffered() > 0 || !s.suffix.is_empty());
    let new_cuts = (offset - start) as usize + data.len() >= params.max_size as usize;
    if !seal_cuts && !new_cuts && start == offset {
        return Ok(Rewriting::UnderTheLock);
    }
    if reads.iter().any(|c| st.sink.awaits_writer(c)) {
        return Ok(Rewriting::AfterWriters);
    }
    let seal = match seal {
        Some((plan, extents)) => Some(SealPlan {
            extents: locate(st, extents)?,
            ..plan
        }),
        None => None,
    };
    Ok(Rewriting::Planned(Box::new(Rewrite {
        ino,
        offset,
        attr,
        params,
        seal,
        prefix: start..offset,
        prefix_extents: locate(st, prefix_extents)?,
        run_version: st.dirty.get(&ino).map(|d| d.run_version),
        catalog_changes: st.catalog.change_count(),
        live,
    })))
}

impl Rewrite {
    /// Reads what the plan needs from `store` and cuts and hashes both runs. The
    /// caller keeps a read ticket from before the plan (gc must not delete what it
    /// reads).
    pub(in crate::fs) fn cut(mut self: Box<Self>, store: &dyn Redundancy, data: &[u8]) -> Result<CutRewrite> {
        let seal = match &mut self.seal {
            Some(s) => {
                let suffix = read_range(store, &self.attr, &s.extents, &s.suffix)?;
                let chunks = cut_into(&mut s.chunker, &[&suffix], true);
                Some((chunks, suffix.len() as u64))
            }
            None => None,
        };
        let prefix = read_range(store, &self.attr, &self.prefix_extents, &self.prefix)?;
        let mut chunker = Chunker::new(&self.params);
        let chunks = cut_into(&mut chunker, &[&prefix, data], false);
        Ok(CutRewrite {
            len: (prefix.len() + data.len()) as u64,
            data_len: data.len() as u64,
            plan: self,
            seal,
            chunks,
            chunker,
        })
    }
}

/// Applies `cut` to its file and returns true; false, with nothing changed, when the
/// file's open run or the catalog changed since `begin_rewrite`.
pub(in crate::fs) fn finish_rewrite(st: &mut State, cut: CutRewrite) -> Result<bool> {
    let CutRewrite {
        plan,
        seal,
        chunks,
        chunker,
        len,
        data_len,
    } = cut;
    let unchanged = st.catalog.change_count() == plan.catalog_changes
        && st.catalog.live() == plan.live
        && st.dirty.get(&plan.ino).map(|d| d.run_version) == plan.run_version;
    if !unchanged {
        return Ok(false);
    }
    let now = crate::fs::now_ns();
    let State {
        catalog, sink, dirty, ..
    } = st;
    if let Some((chunks, suffix_len)) = seal {
        let d = dirty
            .open_run_mut(&plan.ino)
            .ok_or_else(|| Error::CorruptCatalog("dirty run vanished".into()))?;
        add_chunks(catalog, sink, d, chunks)?;
        d.end += suffix_len;
        d.close_open_run();
    }
    let start = plan.prefix.start;
    let d = dirty.open_run_or_insert_with(plan.ino, || DirtyFile::new(start, &plan.params, now));
    d.mtime_ns = now;
    d.ctime_ns = now;
    d.start = start;
    d.end = start + len;
    d.emitted_to = start;
    d.extents.clear();
    d.user_end = d.user_end.max(plan.offset + data_len);
    d.chunker = chunker;
    add_chunks(catalog, sink, d, chunks)?;
    Ok(true)
}

/// The open run of a file that a commit's next sealing step seals, to be finished
/// without the lock (its last chunks cut and hashed): `SealAhead::cut`, then
/// `seal_step`, which uses the chunks when the run is unchanged and the extent it
/// stops in ends with it (the common case: a file written to its end).
pub(in crate::fs) struct SealAhead {
    ino: InodeId,
    run_version: u64,
    chunker: Chunker,
}

/// A `SealAhead` cut.
pub(in crate::fs) struct CutSeal {
    ino: InodeId,
    run_version: u64,
    chunks: Vec<CutChunk>,
    chunker: Chunker,
}

impl CutSeal {
    pub(in crate::fs) fn ino(&self) -> InodeId {
        self.ino
    }
}

/// Buffered bytes below which a run's last chunks are cut under the lock: cutting and
/// hashing them costs less than copying the chunker out and back (a small file's
/// seal costs its catalog reads, not its hash: 64 files of 600 bytes took 476 µs
/// under the lock either way, and 215 µs more to copy their chunkers out).
const SEAL_AHEAD_MIN_BYTES: usize = 32 << 10;

/// The open runs the next `seal_step` of `sealing` seals that have at least
/// `SEAL_AHEAD_MIN_BYTES` to cut.
pub(in crate::fs) fn begin_seals(st: &State, sealing: &Sealing) -> Vec<SealAhead> {
    let from = sealing.to_seal.len().saturating_sub(SEAL_STEP_FILES);
    sealing.to_seal[from..]
        .iter()
        .filter_map(|id| st.dirty.get(id).map(|d| (id, d)))
        .filter(|(_, d)| d.chunker.buffered() >= SEAL_AHEAD_MIN_BYTES)
        .map(|(id, d)| SealAhead {
            ino: *id,
            run_version: d.run_version,
            chunker: d.chunker.clone(),
        })
        .collect()
}

impl SealAhead {
    pub(in crate::fs) fn cut(mut self) -> CutSeal {
        let chunks = cut_into(&mut self.chunker, &[], true);
        CutSeal {
            ino: self.ino,
            run_version: self.run_version,
            chunks,
            chunker: self.chunker,
        }
    }
}

/// Finishes the open run of `cut`'s file with `cut`'s chunks, as feeding it no more
/// bytes and finishing would, and returns true; false, with nothing changed, when the
/// run changed since `begin_seals`. The caller has checked that no bytes follow the
/// run in its extent.
pub(super) fn finish_seal(st: &mut State, cut: CutSeal) -> Result<bool> {
    let Some((catalog, sink, d)) = run_at_version(st, cut.ino, cut.run_version) else {
        return Ok(false);
    };
    d.chunker = cut.chunker;
    add_chunks(catalog, sink, d, cut.chunks)?;
    Ok(true)
}

/// Bytes `range` of a file laid out as `extents` say (holes and the part past the
/// end read as zeros).
fn read_range(
    store: &dyn Redundancy,
    attr: &InodeAttr,
    extents: &[Placed],
    range: &Range<u64>,
) -> Result<Vec<u8>> {
    let len = (range.end - range.start) as usize;
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut bytes = read_extents(store, &ChunkCache::new(0), attr, extents, range.start, len)?;
    bytes.resize(len, 0);
    Ok(bytes)
}

/// Pushes `pieces` through `chunker` (and, with `finish`, ends its stream), and
/// returns the chunks cut, hashed.
fn cut_into(chunker: &mut Chunker, pieces: &[&[u8]], finish: bool) -> Vec<CutChunk> {
    let mut chunks = Vec::new();
    let mut keep = |chunk: &[u8]| {
        chunks.push(CutChunk::new(chunk));
        Ok(())
    };
    for piece in pieces {
        let pushed = chunker.push(piece, &mut keep);
        debug_assert!(pushed.is_ok(), "keeping chunks cannot fail");
    }
    if finish {
        let finished = chunker.finish(&mut keep);
        debug_assert!(finished.is_ok(), "keeping chunks cannot fail");
    }
    chunks
}

/// The open run of `ino`, to change, with what handing chunks to it needs, when its
/// version is still `version` (nothing changed it since a plan copied it).
fn run_at_version(
    st: &mut State,
    ino: InodeId,
    version: u64,
) -> Option<(&Catalog, &mut ChunkSink, &mut DirtyFile)> {
    if st.dirty.get(&ino).is_none_or(|d| d.run_version != version) {
        return None;
    }
    let State {
        catalog, sink, dirty, ..
    } = st;
    Some((&*catalog, sink, dirty.open_run_mut(&ino)?))
}

/// Hands `chunks` to the sink and makes them the next extents of `d`'s open run.
fn add_chunks(
    catalog: &Catalog,
    sink: &mut ChunkSink,
    d: &mut DirtyFile,
    chunks: Vec<CutChunk>,
) -> Result<()> {
    for chunk in chunks {
        let length = chunk.len() as u64;
        let id = sink.put_cut(catalog, chunk)?;
        d.extents.push(Extent {
            offset: d.emitted_to,
            length,
            chunk: id,
            chunk_offset: 0,
        });
        d.emitted_to += length;
    }
    Ok(())
}
