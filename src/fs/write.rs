//! Buffered writes: each file being written streams through its own chunker, so only
//! the unfinished tail chunk sits in memory; finished chunks go to the mirrors at once
//! and their extents wait for the next group commit.
//!
//! A write that does not continue the buffered run commits it first and starts a new
//! run at the start of the extent it lands in, so a 4 KiB write into a big file costs
//! the one or two chunks around it, not the file.

use std::time::{Duration, Instant};

use super::{read::read_extents, ChunkCache, State};
use crate::catalog::{Extent, FileKind, InodeAttr};
use crate::chunker::Chunker;
use crate::error::{Error, Result};
use crate::types::InodeId;

/// One file's buffered run of writes: bytes `[start, end)` are being re-chunked.
pub(super) struct DirtyFile {
    start: u64,
    end: u64,
    chunker: Chunker,
    /// Chunks cut so far, from `start` onwards.
    extents: Vec<Extent>,
    emitted_to: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    since: Instant,
}

impl DirtyFile {
    /// One past the last byte written into the run.
    pub(super) fn end(&self) -> u64 {
        self.end
    }

    /// Time of the last write, or the one set since.
    pub(super) fn mtime_ns(&self) -> i64 {
        self.mtime_ns
    }

    /// Time of the last write or attribute change.
    pub(super) fn ctime_ns(&self) -> i64 {
        self.ctime_ns
    }

    /// Notes an attribute change at `now` made while the run is buffered, which sets
    /// the modification time to `mtime` if given, so the commit keeps both.
    pub(super) fn attributes_changed(&mut self, mtime: Option<i64>, now: i64) {
        if let Some(t) = mtime {
            self.mtime_ns = t;
        }
        self.ctime_ns = now;
    }

    /// How long the run has been buffered.
    pub(super) fn age(&self) -> Duration {
        self.since.elapsed()
    }
}

fn push(st: &mut State, ino: InodeId, data: &[u8]) -> Result<()> {
    let State {
        catalog, sink, dirty, ..
    } = st;
    let d = dirty
        .get_mut(&ino)
        .ok_or_else(|| Error::CorruptCatalog("dirty run vanished".into()))?;
    let DirtyFile {
        chunker,
        extents,
        emitted_to,
        ..
    } = d;
    chunker.push(data, &mut |chunk| {
        let id = sink.put(&*catalog, chunk)?;
        extents.push(Extent {
            offset: *emitted_to,
            length: chunk.len() as u64,
            chunk: id,
            chunk_offset: 0,
        });
        *emitted_to += chunk.len() as u64;
        Ok(())
    })?;
    d.end += data.len() as u64;
    Ok(())
}

/// Reads committed bytes `[from, to)` of `attr`.
fn old_bytes(st: &State, attr: &InodeAttr, from: u64, to: u64) -> Result<Vec<u8>> {
    let live = st.catalog.live();
    let extents = st.catalog.extents(live, attr.id, from, to)?;
    let mut bytes = read_extents(
        &st.sink_store(),
        &ChunkCache::new(0),
        attr,
        &extents,
        from,
        (to - from) as usize,
    )?;
    bytes.resize((to - from) as usize, 0);
    Ok(bytes)
}

/// What a read of `[from, to)` of a file with a buffered run lays over the committed
/// bytes: the run's chunks in that range, and the part of the run's tail (pushed, not
/// yet cut into a chunk) in it, starting at `tail_offset`.
pub(super) struct RunOverlay {
    pub(super) extents: Vec<Extent>,
    pub(super) tail_offset: u64,
    pub(super) tail: Vec<u8>,
}

/// The overlay of `ino`'s buffered run on `[from, to)`, or `None` when it has none.
/// Reading a file just written then needs no commit (and no sync of the mirrors): the
/// run's chunks are read back from the mirrors once written, durable or not.
pub(super) fn overlay(st: &mut State, ino: InodeId, from: u64, to: u64) -> Result<Option<RunOverlay>> {
    if !st.dirty.contains_key(&ino) {
        return Ok(None);
    }
    st.sink.wait_written()?;
    let Some(d) = st.dirty.get(&ino) else {
        return Ok(None);
    };
    let extents = d
        .extents
        .iter()
        .filter(|e| e.offset < to && e.end() > from)
        .cloned()
        .collect();
    let (lo, hi) = (from.max(d.emitted_to), to.min(d.end));
    let tail = if lo < hi {
        let buffered = d.chunker.buffered_bytes();
        let base = d.emitted_to;
        buffered
            .get((lo - base) as usize..(hi - base) as usize)
            .ok_or_else(|| Error::CorruptCatalog("buffered run shorter than its length".into()))?
            .to_vec()
    } else {
        Vec::new()
    };
    Ok(Some(RunOverlay {
        extents,
        tail_offset: lo,
        tail,
    }))
}

/// Buffers `data` at `offset` of file `ino`.
pub(super) fn write(st: &mut State, ino: InodeId, offset: u64, data: &[u8]) -> Result<()> {
    let now = super::now_ns();
    if let Some(d) = st.dirty.get_mut(&ino) {
        if d.end == offset {
            d.mtime_ns = now;
            d.ctime_ns = now;
            return push(st, ino, data);
        }
        flush(st, Some(ino))?;
    }
    let live = st.catalog.live();
    let attr = st
        .catalog
        .inode(live, ino)?
        .ok_or_else(|| Error::NotFound(format!("inode {ino}")))?;
    if attr.kind != FileKind::File {
        return Err(Error::InvalidArgument("not a regular file".into()));
    }
    // Start the run at the start of the extent the write lands in (or ends next to),
    // so the chunker sees whole chunks again.
    let mut start = offset;
    if offset <= attr.size {
        let probe_from = offset.saturating_sub(1);
        if let Some(e) = st
            .catalog
            .extents(live, ino, probe_from, offset + 1)?
            .into_iter()
            .find(|e| e.offset < offset && e.end() >= offset)
        {
            start = e.offset;
        }
    }
    let prefix = if start < offset {
        old_bytes(st, &attr, start, offset)?
    } else {
        Vec::new()
    };
    st.dirty.insert(
        ino,
        DirtyFile {
            start,
            end: start,
            chunker: Chunker::new(&st.params()),
            extents: Vec::new(),
            emitted_to: start,
            mtime_ns: now,
            ctime_ns: now,
            since: Instant::now(),
        },
    );
    push(st, ino, &prefix)?;
    push(st, ino, data)
}

/// Commits the buffered runs of `ino` (or of every file) in one transaction, after
/// syncing the mirrors.
pub(super) fn flush(st: &mut State, ino: Option<InodeId>) -> Result<()> {
    let ids: Vec<InodeId> = match ino {
        Some(i) => st.dirty.contains_key(&i).then_some(i).into_iter().collect(),
        None => st.dirty.keys().copied().collect(),
    };
    // Chunks of runs that were dropped (their file unlinked or truncated away) are
    // still pending: commit them too, unreferenced, so gc finds them as garbage.
    if ids.is_empty() && !st.sink.has_pending() {
        return Ok(());
    }
    let live = st.catalog.live();
    let mut finished = Vec::new();
    for id in ids {
        let Some(attr) = st.catalog.inode(live, id)? else {
            st.dirty.remove(&id);
            continue;
        };
        // Re-feed the committed bytes after the run up to the end of the extent the
        // run stops in, so the old chunk there is replaced whole.
        let end = st.dirty.get(&id).map_or(0, |d| d.end);
        let user_end = end;
        if let Some(e) = st
            .catalog
            .extents(live, id, end, end + 1)?
            .into_iter()
            .find(|e| e.offset < end && e.end() > end)
        {
            let suffix = old_bytes(st, &attr, end, e.end())?;
            push(st, id, &suffix)?;
        }
        let Some(mut d) = st.dirty.remove(&id) else {
            continue;
        };
        let State { catalog, sink, .. } = &mut *st;
        d.chunker.finish(&mut |chunk| {
            let cid = sink.put(&*catalog, chunk)?;
            d.extents.push(Extent {
                offset: d.emitted_to,
                length: chunk.len() as u64,
                chunk: cid,
                chunk_offset: 0,
            });
            d.emitted_to += chunk.len() as u64;
            Ok(())
        })?;
        finished.push((id, d, user_end));
    }
    let State { catalog, sink, .. } = &mut *st;
    let committed = (|| -> Result<()> {
        let txn = catalog.write()?;
        sink.record(&txn)?;
        for (id, d, user_end) in &finished {
            let Some(mut attr) = txn.inode(*id)? else { continue };
            txn.set_extents(*id, d.start, d.end, &d.extents)?;
            attr.size = attr.size.max(*user_end);
            attr.mtime_ns = d.mtime_ns;
            attr.ctime_ns = d.ctime_ns;
            txn.set_inode(&attr)?;
        }
        sink.sync(&txn)?;
        txn.commit()
    })();
    if committed.is_err() {
        // The runs are lost (the caller gets the error, e.g. ENOSPC at fsync); chunks
        // recorded in the failed transaction must not be trusted later.
        sink.abandon();
    }
    committed
}
