//! Buffered writes: each file being written streams through its own chunker, so only
//! the unfinished tail chunk sits in memory; finished chunks go to the mirrors at once
//! and their extents wait for the next group commit.
//!
//! A run starts at the start of the extent its first write lands in, so a 4 KiB write
//! into a big file costs the one or two chunks around it, not the file. A write that
//! does not continue the open run seals it (its last chunk finished with the bytes
//! after it up to the end of the extent it stops in) and opens a new one; sealed runs
//! wait in memory, as extents only, for the commit, which applies them in order. Until
//! then every read sees the file as the runs left it (`view_extents`), so random
//! writes cost no commit and no sync each.
//!
//! This module's functions run under the core's lock; `unlocked` plans writes and
//! seals under it and does their reading, cutting and hashing without it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::published::Buffered;
use super::{read::read_extents, ChunkCache, State};
use crate::catalog::{Extent, FileKind, InodeAttr, Txn};
use crate::chunker::{Chunker, ChunkerParams};
use crate::error::{Error, Result};
use crate::ingest::{Backlog, CommitTicket};
use crate::store::Redundancy;
use crate::types::InodeId;

mod unlocked;
pub(super) use unlocked::{
    begin_append, begin_rewrite, begin_seals, finish_append, finish_rewrite, CutSeal, Rewriting,
};

/// Sealed runs a file may gather before a write commits them: each costs reads a pass.
const MAX_SEALED_RUNS: usize = 256;

/// A finished run: bytes `[start, end)` are exactly `extents`, in order.
#[derive(Debug)]
struct SealedRun {
    start: u64,
    end: u64,
    extents: Vec<Extent>,
}

/// One file's buffered writes: the sealed runs, oldest first, and the open run, whose
/// bytes `[start, end)` are being re-chunked.
pub(super) struct DirtyFile {
    sealed: Vec<SealedRun>,
    start: u64,
    end: u64,
    chunker: Chunker,
    /// Chunks cut so far, from `start` onwards.
    extents: Vec<Extent>,
    emitted_to: u64,
    /// One past the last byte written by the user in any run (the size it implies).
    user_end: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    since: Instant,
    /// The part of these writes that a commit under way covers (see `begin_commit`).
    in_commit: Option<InCommit>,
    /// Changes with every change of the open run (see `DirtyFiles::open_run_mut`), so
    /// that an append cut without the lock is applied only to the run it continues.
    run_version: u64,
}

/// The files with buffered writes, and which of them changed since
/// `take_changed` (any mutable access counts): what `published` copies for readers
/// without the lock, one changed file at a time.
#[derive(Default)]
pub(super) struct DirtyFiles {
    files: HashMap<InodeId, DirtyFile>,
    changed: Vec<InodeId>,
    /// The last `DirtyFile::run_version` given out: versions are never reused, even
    /// by a file that went and came back.
    last_run_version: u64,
}

impl DirtyFiles {
    pub(super) fn get(&self, id: &InodeId) -> Option<&DirtyFile> {
        self.files.get(id)
    }

    pub(super) fn get_mut(&mut self, id: &InodeId) -> Option<&mut DirtyFile> {
        let file = self.files.get_mut(id)?;
        self.changed.push(*id);
        Some(file)
    }

    /// The file's buffered writes, to change its open run (its start, its end, its
    /// chunker or its extents): the only way to do that, so an append cut meanwhile
    /// (`Append`) always sees that the run moved.
    fn open_run_mut(&mut self, id: &InodeId) -> Option<&mut DirtyFile> {
        self.last_run_version += 1;
        let version = self.last_run_version;
        let file = self.get_mut(id)?;
        file.run_version = version;
        Some(file)
    }

    /// The file's buffered writes, to change its open run, begun with `new` when it
    /// has none.
    fn open_run_or_insert_with(&mut self, id: InodeId, new: impl FnOnce() -> DirtyFile) -> &mut DirtyFile {
        self.changed.push(id);
        self.last_run_version += 1;
        let version = self.last_run_version;
        let file = self.files.entry(id).or_insert_with(new);
        file.run_version = version;
        file
    }

    pub(super) fn remove(&mut self, id: &InodeId) -> Option<DirtyFile> {
        let file = self.files.remove(id)?;
        self.changed.push(*id);
        Some(file)
    }

    pub(super) fn contains_key(&self, id: &InodeId) -> bool {
        self.files.contains_key(id)
    }

    pub(super) fn ids(&self) -> impl Iterator<Item = InodeId> + '_ {
        self.files.keys().copied()
    }

    pub(super) fn files(&self) -> impl Iterator<Item = &DirtyFile> {
        self.files.values()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The files that may have changed (or gone) since the last call, each once or
    /// more.
    pub(super) fn take_changed(&mut self) -> Vec<InodeId> {
        std::mem::take(&mut self.changed)
    }
}

/// What a commit under way takes of one file: its first `runs` sealed runs, and the
/// size and times they give it.
#[derive(Clone, Copy, Debug)]
struct InCommit {
    commit: u64,
    runs: usize,
    user_end: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

/// A commit of buffered writes under way: the files and chunks it covers, sealed
/// under the core's lock (`begin_commit`), made durable without it, and written into
/// the catalog under it again (`finish_commit`).
pub(super) struct StartedCommit {
    commit: u64,
    /// The files whose marked runs are not in the catalog yet.
    files: Vec<InodeId>,
    /// Its chunks not recorded yet (by the first steps of `finish_commit`).
    chunks: CommitTicket,
}

impl StartedCommit {
    /// Waits for the chunk writers and syncs the store: no lock needed.
    pub(super) fn make_durable(&self, backlog: Option<&Backlog>, store: &dyn Redundancy) -> Result<()> {
        self.chunks.make_durable(backlog, store)
    }
}

impl DirtyFile {
    /// A file's first buffered write at `now`: an empty open run at `start`.
    fn new(start: u64, params: &ChunkerParams, now: i64) -> DirtyFile {
        DirtyFile {
            sealed: Vec::new(),
            start,
            end: start,
            chunker: Chunker::new(params),
            extents: Vec::new(),
            emitted_to: start,
            user_end: 0,
            mtime_ns: now,
            ctime_ns: now,
            since: Instant::now(),
            in_commit: None,
            run_version: 0,
        }
    }

    /// What the buffered writes change in the file's attributes: the size they imply
    /// at least, the time of the last write (or the one set since), and of the last
    /// write or attribute change.
    pub(super) fn buffered(&self) -> Buffered {
        Buffered {
            size_at_least: self.user_end,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
        }
    }

    /// Notes an attribute change at `now` made while the run is buffered, which sets
    /// the modification time to `mtime` if given, so the commit keeps both.
    pub(super) fn attributes_changed(&mut self, mtime: Option<i64>, now: i64) {
        if let Some(t) = mtime {
            self.mtime_ns = t;
        }
        self.ctime_ns = now;
        // A commit under way writes its own times: they must be these too.
        if let Some(c) = &mut self.in_commit {
            c.mtime_ns = self.mtime_ns;
            c.ctime_ns = self.ctime_ns;
        }
    }

    /// Moves the open run, all of it cut, to the sealed runs (unless it is empty),
    /// and opens an empty one at its end.
    fn close_open_run(&mut self) {
        if self.end > self.start {
            let extents = std::mem::take(&mut self.extents);
            self.sealed.push(SealedRun {
                start: self.start,
                end: self.end,
                extents,
            });
        }
        self.start = self.end;
        self.emitted_to = self.end;
    }

    /// How long the writes have been buffered.
    pub(super) fn age(&self) -> Duration {
        self.since.elapsed()
    }

    /// Extents the next commit of this file writes into the catalog (each costs the
    /// commit about 10 µs under the core's lock).
    pub(super) fn extent_count(&self) -> usize {
        self.sealed.iter().map(|r| r.extents.len()).sum::<usize>() + self.extents.len()
    }
}

/// Lays `new` (covering `[start, end)`) over `view`, both clipped to `[from, to)`:
/// extents of `view` inside are dropped, those across the edges are cut.
fn lay_over(view: &mut Vec<Extent>, start: u64, end: u64, new: &[Extent], from: u64, to: u64) {
    let (lo, hi) = (start.max(from), end.min(to));
    if lo >= hi {
        return;
    }
    let mut out = Vec::with_capacity(view.len() + new.len());
    for e in view.drain(..) {
        if e.end() <= lo || e.offset >= hi {
            out.push(e);
            continue;
        }
        if e.offset < lo {
            out.push(Extent {
                length: lo - e.offset,
                ..e
            });
        }
        if e.end() > hi {
            out.push(Extent {
                offset: hi,
                length: e.end() - hi,
                chunk_offset: e.chunk_offset + (hi - e.offset),
                ..e
            });
        }
    }
    for n in new {
        let (s, t) = (n.offset.max(lo), n.end().min(hi));
        if s < t {
            out.push(Extent {
                offset: s,
                length: t - s,
                chunk_offset: n.chunk_offset + (s - n.offset),
                ..*n
            });
        }
    }
    out.sort_by_key(|e| e.offset);
    *view = out;
}

/// The extents of `ino` over `[from, to)` as its buffered writes leave it: the
/// committed ones, the sealed runs laid over them in order, and (with `with_open`)
/// the chunks the open run has cut so far. The open run's uncut tail is not included.
fn view_extents(st: &State, ino: InodeId, from: u64, to: u64, with_open: bool) -> Result<Vec<Extent>> {
    let mut view = st.catalog.extents(st.catalog.live(), ino, from, to)?;
    if let Some(d) = st.dirty.get(&ino) {
        for run in &d.sealed {
            lay_over(&mut view, run.start, run.end, &run.extents, from, to);
        }
        if with_open {
            lay_over(&mut view, d.start, d.emitted_to, &d.extents, from, to);
        }
    }
    Ok(view)
}

/// `extents` with their chunks' places: a chunk put since the last commit is placed
/// where the sink put it, any other where the catalog says. Call after the sink's
/// `wait_written`, so that every chunk put is placed.
pub(super) fn locate(st: &State, extents: Vec<Extent>) -> Result<Vec<super::read::Placed>> {
    extents
        .into_iter()
        .map(|e| {
            let at = match st.sink.location(&e.chunk) {
                Some(at) => Some(at),
                None => st.catalog.chunk(&e.chunk)?.and_then(|c| c.location),
            };
            let at =
                at.ok_or_else(|| Error::CorruptCatalog(format!("chunk {} has no place in a pack", e.chunk)))?;
            Ok((e, at))
        })
        .collect()
}

/// What a read of `[from, to)` of a file with buffered writes reads: its extents as
/// the runs leave them, and the open run's uncut tail in that range (from
/// `tail_offset`). Nothing is committed: the runs' chunks are read back from the
/// mirrors once the writer threads have written them, durable or not.
pub(super) struct BufferedView {
    pub(super) extents: Vec<Extent>,
    pub(super) tail_offset: u64,
    pub(super) tail: Vec<u8>,
}

/// What `buffered_view` found.
pub(super) enum BufferedRead {
    /// The file has no buffered writes: the catalog alone has its bytes.
    NotBuffered,
    View(BufferedView),
    /// A chunk of the range is still with the writer threads (not placed yet): wait
    /// for them, without the core's lock, and ask again.
    AfterWriters,
}

/// The view of `ino` over `[from, to)`. With `wait`, first waits for the writer
/// threads (under the core's lock: the last resort); without, takes in what they
/// finished and returns `AfterWriters` when a chunk of the range is not placed yet.
pub(super) fn buffered_view(
    st: &mut State,
    ino: InodeId,
    from: u64,
    to: u64,
    wait: bool,
) -> Result<BufferedRead> {
    if !st.dirty.contains_key(&ino) {
        return Ok(BufferedRead::NotBuffered);
    }
    if wait {
        st.sink.wait_written()?;
    } else {
        st.sink.take_written()?;
    }
    let extents = view_extents(st, ino, from, to, true)?;
    if extents.iter().any(|e| st.sink.awaits_writer(&e.chunk)) {
        return Ok(BufferedRead::AfterWriters);
    }
    let Some(d) = st.dirty.get(&ino) else {
        return Ok(BufferedRead::NotBuffered);
    };
    let (lo, hi) = (from.max(d.emitted_to), to.min(d.end));
    let tail = if lo < hi {
        let base = d.emitted_to;
        d.chunker
            .buffered_bytes()
            .get((lo - base) as usize..(hi - base) as usize)
            .ok_or_else(|| Error::CorruptCatalog("buffered run shorter than its length".into()))?
            .to_vec()
    } else {
        Vec::new()
    };
    Ok(BufferedRead::View(BufferedView {
        extents,
        tail_offset: lo,
        tail,
    }))
}

fn push(st: &mut State, ino: InodeId, data: &[u8]) -> Result<()> {
    feed(st, ino, data, false)
}

/// Feeds `data` to the open run of `ino` and, with `finish`, cuts its last chunks
/// too: every chunk cut goes to the sink and becomes the run's next extent.
fn feed(st: &mut State, ino: InodeId, data: &[u8], finish: bool) -> Result<()> {
    let State {
        catalog, sink, dirty, ..
    } = st;
    let d = dirty
        .open_run_mut(&ino)
        .ok_or_else(|| Error::CorruptCatalog("dirty run vanished".into()))?;
    let DirtyFile {
        chunker,
        extents,
        emitted_to,
        ..
    } = d;
    let mut emit = |chunk: &[u8]| {
        let id = sink.put(&*catalog, chunk)?;
        extents.push(Extent {
            offset: *emitted_to,
            length: chunk.len() as u64,
            chunk: id,
            chunk_offset: 0,
        });
        *emitted_to += chunk.len() as u64;
        Ok(())
    };
    chunker.push(data, &mut emit)?;
    if finish {
        chunker.finish(&mut emit)?;
    }
    d.end += data.len() as u64;
    Ok(())
}

/// Bytes `[from, to)` of file `attr` as its sealed runs leave them; the open run is
/// left out, so callers ask only for bytes outside it. `attr.size` must be the size
/// the buffered writes give the file.
fn view_bytes(st: &mut State, attr: &InodeAttr, from: u64, to: u64) -> Result<Vec<u8>> {
    if st.dirty.get(&attr.id).is_some_and(|d| !d.sealed.is_empty()) {
        st.sink.wait_written()?;
    }
    let extents = locate(st, view_extents(st, attr.id, from, to, false)?)?;
    let mut bytes = read_extents(
        &*st.sink_store(),
        &ChunkCache::new(0),
        attr,
        &extents,
        from,
        (to - from) as usize,
    )?;
    bytes.resize((to - from) as usize, 0);
    Ok(bytes)
}

/// Finishes the open run of `ino`: re-feeds the bytes after it up to the end of the
/// extent it stops in (so the old chunk there is replaced whole), cuts its last chunks
/// and moves it to the sealed runs. `attr` as for `view_bytes`.
/// `ahead`, the run's last chunks cut without the lock (`begin_seals`), are used when
/// they are still its last chunks and no bytes follow the run in its extent.
fn seal(st: &mut State, attr: &InodeAttr, ahead: Option<CutSeal>) -> Result<()> {
    let ino = attr.id;
    let Some(end) = st.dirty.get(&ino).map(|d| d.end) else {
        return Ok(());
    };
    let across = view_extents(st, ino, end, end + 1, false)?
        .into_iter()
        .find(|e| e.offset < end && e.end() > end);
    let cut_ahead = match (&across, ahead) {
        (None, Some(cut)) => unlocked::finish_seal(st, cut)?,
        _ => false,
    };
    if !cut_ahead {
        let suffix = match across {
            Some(e) => view_bytes(st, attr, end, e.end())?,
            None => Vec::new(),
        };
        feed(st, ino, &suffix, true)?;
    }
    if let Some(d) = st.dirty.open_run_mut(&ino) {
        d.close_open_run();
    }
    Ok(())
}

/// Buffers `data` at `offset` of file `ino`.
pub(super) fn write(st: &mut State, ino: InodeId, offset: u64, data: &[u8]) -> Result<()> {
    let now = super::now_ns();
    if let Some(d) = st.dirty.get_mut(&ino) {
        d.mtime_ns = now;
        d.ctime_ns = now;
        if d.end == offset {
            d.user_end = d.user_end.max(offset + data.len() as u64);
            return push(st, ino, data);
        }
    }
    let live = st.catalog.live();
    let attr = st
        .catalog
        .inode(live, ino)?
        .ok_or_else(|| Error::NotFound(format!("inode {ino}")))?;
    if attr.kind != FileKind::File {
        return Err(Error::InvalidArgument("not a regular file".into()));
    }
    let size = attr.size.max(st.dirty.get(&ino).map_or(0, |d| d.user_end));
    let attr = InodeAttr { size, ..attr };
    if let Some(d) = st.dirty.get(&ino) {
        if d.sealed.len() >= MAX_SEALED_RUNS {
            flush(st, Some(ino))?;
        } else {
            seal(st, &attr, None)?;
        }
    }
    // Start the run at the start of the extent the write lands in (or ends next to),
    // so the chunker sees whole chunks again.
    let mut start = offset;
    if offset <= size {
        if let Some(e) = view_extents(st, ino, offset.saturating_sub(1), offset + 1, false)?
            .into_iter()
            .find(|e| e.offset < offset && e.end() >= offset)
        {
            start = e.offset;
        }
    }
    let prefix = if start < offset {
        view_bytes(st, &attr, start, offset)?
    } else {
        Vec::new()
    };
    let params = st.params();
    let d = st
        .dirty
        .open_run_or_insert_with(ino, || DirtyFile::new(start, &params, now));
    d.start = start;
    d.end = start;
    d.emitted_to = start;
    d.user_end = d.user_end.max(offset + data.len() as u64);
    push(st, ino, &prefix)?;
    push(st, ino, data)
}

/// Commits the buffered writes of `ino` (or of every file) in one transaction, after
/// syncing the mirrors: each file's runs in the order they were written.
pub(super) fn flush(st: &mut State, ino: Option<InodeId>) -> Result<()> {
    let ids: Vec<InodeId> = match ino {
        Some(i) => st.dirty.contains_key(&i).then_some(i).into_iter().collect(),
        None => st.dirty.ids().collect(),
    };
    // Chunks of runs that were dropped (their file unlinked or truncated away) are
    // still pending: commit them too, unreferenced, so gc finds them as garbage.
    if ids.is_empty() && !st.sink.has_pending() {
        return Ok(());
    }
    let live = st.catalog.live();
    let started = std::time::Instant::now();
    let mut finished = Vec::new();
    for id in ids {
        let Some(attr) = st.catalog.inode(live, id)? else {
            st.dirty.remove(&id);
            continue;
        };
        let size = attr.size.max(st.dirty.get(&id).map_or(0, |d| d.user_end));
        seal(st, &InodeAttr { size, ..attr }, None)?;
        if let Some(d) = st.dirty.remove(&id) {
            finished.push((id, d));
        }
    }
    let sealed = started.elapsed();
    let State { catalog, sink, .. } = &mut *st;
    let committed = (|| -> Result<()> {
        let txn = catalog.write()?;
        sink.record(&txn)?;
        let recorded = started.elapsed();
        for (id, d) in &finished {
            let Some(mut attr) = txn.inode(*id)? else { continue };
            for run in &d.sealed {
                txn.set_extents(*id, run.start, run.end, &run.extents)?;
            }
            attr.size = attr.size.max(d.user_end);
            attr.mtime_ns = d.mtime_ns;
            attr.ctime_ns = d.ctime_ns;
            txn.set_inode(&attr)?;
        }
        let rows = started.elapsed();
        sink.sync(&txn)?;
        let synced = started.elapsed();
        txn.commit()?;
        log::trace!(
            "committed the buffered writes of {} files in {:?} (from the start: runs sealed {sealed:?}, \
             chunks recorded {recorded:?}, rows written {rows:?}, packs synced {synced:?})",
            finished.len(),
            started.elapsed()
        );
        Ok(())
    })();
    if committed.is_err() {
        // The runs are lost (the caller gets the error, e.g. ENOSPC at fsync); chunks
        // recorded in the failed transaction must not be trusted later.
        sink.abandon();
    }
    committed
}

/// Seals the open run of `id`, if it has buffered writes: its last chunks are cut,
/// hashed and handed to the writers. A file that is gone loses its buffered writes.
pub(super) fn seal_file(st: &mut State, id: InodeId, ahead: Option<CutSeal>) -> Result<()> {
    let Some(d) = st.dirty.get(&id) else {
        return Ok(());
    };
    if d.start == d.end {
        return Ok(());
    }
    let user_end = d.user_end;
    let Some(attr) = st.catalog.inode(st.catalog.live(), id)? else {
        st.dirty.remove(&id);
        return Ok(());
    };
    let size = attr.size.max(user_end);
    seal(st, &InodeAttr { size, ..attr }, ahead)
}

/// Files one step of sealing a commit seals, at most (each costs its last chunks'
/// cut and hash, and two catalog reads: a few ms under the core's lock in all).
const SEAL_STEP_FILES: usize = 64;

/// A commit being begun: the files still to seal, and those sealed and marked.
pub(super) struct Sealing {
    commit: u64,
    to_seal: Vec<InodeId>,
    files: Vec<InodeId>,
}

/// Begins commit number `commit` of the buffered writes of `ino` (or of every file):
/// `seal_step` then seals their open runs and marks what they hold as this commit's,
/// leaving it all in place, so that reads and later writes see the files as before.
/// `None` when nothing is buffered. Run under the core's lock, as each `seal_step`;
/// then `make_durable` without it, then `finish_commit` under it. Meanwhile a commit
/// under the lock (`flush`) may take a file's marked runs with the rest, and the
/// finish then leaves that file alone.
pub(super) fn begin_commit(st: &State, ino: Option<InodeId>, commit: u64) -> Option<Sealing> {
    let to_seal: Vec<InodeId> = match ino {
        Some(i) => st.dirty.contains_key(&i).then_some(i).into_iter().collect(),
        None => st.dirty.ids().collect(),
    };
    if to_seal.is_empty() && !st.sink.has_pending() {
        return None;
    }
    Some(Sealing {
        commit,
        files: Vec::with_capacity(to_seal.len()),
        to_seal,
    })
}

/// Seals and marks up to `SEAL_STEP_FILES` files of `sealing`; returns the started
/// commit, with the chunks it covers (every chunk put and not committed by then),
/// once every file is sealed, and `None` while files are left for another step, which
/// the caller runs after letting the lock go (an untar leaves a thousand small files
/// to seal in one commit).
pub(super) fn seal_step(
    st: &mut State,
    sealing: &mut Sealing,
    ahead: Vec<CutSeal>,
) -> Result<Option<StartedCommit>> {
    let commit = sealing.commit;
    let mut ahead: HashMap<InodeId, CutSeal> = ahead.into_iter().map(|c| (c.ino(), c)).collect();
    let from = sealing.to_seal.len().saturating_sub(SEAL_STEP_FILES);
    for id in sealing.to_seal.drain(from..).collect::<Vec<_>>() {
        seal_file(st, id, ahead.remove(&id))?;
        if let Some(d) = st.dirty.get_mut(&id) {
            d.in_commit = Some(InCommit {
                commit,
                runs: d.sealed.len(),
                user_end: d.user_end,
                mtime_ns: d.mtime_ns,
                ctime_ns: d.ctime_ns,
            });
            sealing.files.push(id);
        }
    }
    if !sealing.to_seal.is_empty() {
        return Ok(None);
    }
    Ok(Some(StartedCommit {
        commit,
        files: std::mem::take(&mut sealing.files),
        chunks: st.sink.ticket(),
    }))
}

/// Rows one step of `finish_commit` writes, at most (an extent or an inode each, about
/// 50 µs of catalog work apiece here: some 15 ms under the core's lock).
const FINISH_STEP_ROWS: usize = 256;

/// One step of finishing `started` (see `begin_commit`): the first ones record its
/// chunks (the first gets `durable`, how `make_durable` went), the next ones write the
/// marked runs of its files; each writes up to `FINISH_STEP_ROWS` rows into the
/// catalog, in one transaction, and drops them from memory (and the files left with
/// nothing buffered). Returns whether runs are left for another step, which the caller runs
/// after letting the lock go, so that a commit of a thousand files, or of a big
/// copy's thousands of extents, does not hold it for all of them. Reads lay what is
/// left over what is written, as before. A crash between steps (with the metadata
/// batch committed meanwhile) keeps a prefix of the commit, as a crash keeps some of
/// the unsynced writes. On failure the runs of its remaining files are lost, as in a
/// failed `flush`.
pub(super) fn finish_commit(
    st: &mut State,
    started: &mut StartedCommit,
    durable: Option<Result<()>>,
) -> Result<bool> {
    let begun = Instant::now();
    let commit = started.commit;
    let State {
        catalog, sink, dirty, ..
    } = st;
    let mut rows = 0;
    let mut finished = 0;
    let committed = (|| -> Result<()> {
        let txn = catalog.write()?;
        rows += sink.commit_ticket(&txn, &mut started.chunks, durable, FINISH_STEP_ROWS)?;
        // Runs name the chunks: only once every chunk is recorded.
        let files = if started.chunks.is_recorded() {
            &started.files[..]
        } else {
            &[]
        };
        for id in files {
            let left = FINISH_STEP_ROWS.saturating_sub(rows);
            if left < 2 {
                break;
            }
            let done = match dirty.get_mut(id) {
                Some(d) if d.in_commit.is_some_and(|c| c.commit == commit) => {
                    let (used, done) = commit_marked(&txn, *id, d, left)?;
                    rows += used;
                    done
                }
                // Committed by a `flush` meanwhile, or gone.
                _ => true,
            };
            if !done {
                break;
            }
            finished += 1;
        }
        txn.commit()?;
        // And the metadata batch the transaction joined: readers on connections of
        // their own read what an open batch changed under the lock.
        catalog.commit_batch()
    })();
    if committed.is_err() {
        sink.abandon();
        for id in started.files.drain(..) {
            if dirty
                .get(&id)
                .is_some_and(|d| d.in_commit.is_some_and(|c| c.commit == commit))
            {
                dirty.remove(&id);
            }
        }
        return committed.map(|()| false);
    }
    for id in started.files.drain(..finished) {
        // Written to since the commit began: the rest stays buffered.
        if dirty
            .get(&id)
            .is_some_and(|d| d.in_commit.is_none() && d.sealed.is_empty() && d.start == d.end)
        {
            dirty.remove(&id);
        }
    }
    log::trace!(
        "commit {commit}: {finished} files done ({rows} rows) in {:?} under the lock, {} files left",
        begun.elapsed(),
        started.files.len()
    );
    Ok(!started.files.is_empty() || !started.chunks.is_recorded())
}

/// Writes into `txn` the marked runs of file `id` (`d`), as many as `budget` rows
/// allow (an extent or the inode each; a run too big for it is split at an extent
/// boundary: its bytes are exactly its extents, in order), and drops them from `d`.
/// Returns the rows used and whether every marked run is written (its mark is then
/// cleared). The file's size and times follow what is written.
fn commit_marked(txn: &Txn<'_>, id: InodeId, d: &mut DirtyFile, budget: usize) -> Result<(usize, bool)> {
    let Some(mut c) = d.in_commit else {
        return Ok((0, true));
    };
    let Some(mut attr) = txn.inode(id)? else {
        // Gone meanwhile: its marked runs go too, as a `flush` drops a gone file's.
        d.sealed.drain(..c.runs);
        d.in_commit = None;
        return Ok((0, true));
    };
    let mut used = 1; // the inode
    let mut reached = 0;
    while c.runs > 0 && used < budget {
        let run = &mut d.sealed[0];
        let room = budget - used;
        if run.extents.len() <= room {
            txn.set_extents(id, run.start, run.end, &run.extents)?;
            used += run.extents.len();
            reached = reached.max(run.end);
            d.sealed.remove(0);
            c.runs -= 1;
        } else {
            let rest = run.extents.split_off(room);
            let end = rest[0].offset;
            txn.set_extents(id, run.start, end, &run.extents)?;
            used += room;
            reached = reached.max(end);
            run.start = end;
            run.extents = rest;
        }
    }
    let done = c.runs == 0;
    attr.size = attr.size.max(if done { c.user_end } else { reached });
    attr.mtime_ns = c.mtime_ns;
    attr.ctime_ns = c.ctime_ns;
    txn.set_inode(&attr)?;
    d.in_commit = if done { None } else { Some(c) };
    Ok((used, done))
}
