//! What a reader without the core's lock may rely on.
//!
//! Owns: one word, written by the core's lock guard just before the lock is
//! released, that says whether the committed catalog, with what is published beside
//! it, is the truth about the live tree (few enough files with buffered writes to
//! publish) and, if so, which generation is live; the buffered attributes
//! (`BufferedAttrs`: the size, mtime and ctime that each file's unflushed writes give
//! it); and what the open group-commit batch changed (`BatchChanges`: the inodes and
//! folders whose rows no other connection sees yet). A read that finds the word set
//! runs on a read connection of its own (WAL gives it the last commit), lays the
//! buffered attributes over what it read, and never waits for the writer, unless it
//! meets an inode or folder the batch changed: then it reads under the lock, as it
//! does the bytes of a file with buffered writes. A request that started after a
//! change was answered finds the word, the attributes and the batch's changes as the
//! change left them (its guard published them before the lock was released), so it
//! cannot read from before the change; a read running beside a change may see either
//! side of it, as POSIX allows for requests that overlap. The batch's changes are
//! dropped only once it is committed (at the release after the commit), when every
//! read transaction that starts sees them.
//!
//! Why the attributes are read before the catalog: a commit moves a file's buffered
//! writes into the catalog and drops its entry here in one hold of the lock. A reader
//! that took the attributes first and the catalog after sees the file's entry, its
//! commit, or both (and takes the larger size), never neither.

use std::collections::{HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::holds::Holds;
use super::State;
use crate::catalog::{Changed, InodeAttr};
use crate::types::{GenId, InodeId};

/// Files with buffered writes beyond which nothing is published (readers take the
/// lock): publishing rebuilds the list at every release of the lock.
const PUBLISHED_FILES: usize = 64;

/// What one file's buffered writes change in its attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Buffered {
    /// The size the writes imply, at least (the committed size may be larger).
    pub(super) size_at_least: u64,
    pub(super) mtime_ns: i64,
    pub(super) ctime_ns: i64,
}

/// Where buffered attributes come from: the core's own state under its lock, or the
/// copy published for readers without it.
pub(super) trait AttrOverlay {
    /// What buffered writes change of live inode `ino`; `None` when it has none.
    fn buffered(&self, ino: InodeId) -> Option<Buffered>;

    /// True when what the committed catalog says of inode `id` (attributes, extents,
    /// xattrs) may be out of date: the open batch changed it.
    fn inode_changed(&self, _id: InodeId) -> bool {
        false
    }

    /// True when the committed catalog's names in folder `dir` may be out of date.
    fn dir_changed(&self, _dir: InodeId) -> bool {
        false
    }

    /// Lays the buffered writes of `attr`'s inode over its committed attributes.
    fn apply(&self, attr: &mut InodeAttr) {
        if let Some(b) = self.buffered(attr.id) {
            attr.size = attr.size.max(b.size_at_least);
            attr.mtime_ns = b.mtime_ns;
            attr.ctime_ns = b.ctime_ns;
        }
    }
}

impl AttrOverlay for State {
    fn buffered(&self, ino: InodeId) -> Option<Buffered> {
        self.dirty.get(&ino).map(|d| d.buffered())
    }
}

/// The buffered attributes of every file with buffered writes, as published.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct BufferedAttrs(HashMap<InodeId, Buffered>);

impl BufferedAttrs {
    /// True when `state`'s buffered files are exactly these.
    fn matches(&self, state: &State) -> bool {
        self.0.len() == state.dirty.len()
            && state
                .dirty
                .iter()
                .all(|(id, d)| self.0.get(id) == Some(&d.buffered()))
    }
}

impl AttrOverlay for BufferedAttrs {
    fn buffered(&self, ino: InodeId) -> Option<Buffered> {
        self.0.get(&ino).copied()
    }
}

/// What the open batch changed, as published: ids only ever added until the batch
/// is committed, when it is dropped whole.
#[derive(Debug, Default)]
struct BatchChanges {
    /// The batch's number (`Catalog::open_batch`).
    batch: u64,
    /// Lock scope: one insert or lookup of ids.
    ids: Mutex<ChangedIds>,
}

#[derive(Debug, Default)]
struct ChangedIds {
    inodes: HashSet<InodeId>,
    dirs: HashSet<InodeId>,
}

impl BatchChanges {
    fn ids(&self) -> MutexGuard<'_, ChangedIds> {
        // A poisoned lock still holds whole sets.
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, changed: Changed) {
        let mut ids = self.ids();
        ids.inodes.extend(changed.inodes);
        ids.dirs.extend(changed.dirs);
    }
}

/// What a reader without the lock goes by: the live generation, the buffered
/// attributes to lay over what it reads, and what it must not trust.
pub(super) struct Quiet {
    pub(super) live: GenId,
    pub(super) buffered: Arc<BufferedAttrs>,
    batch: Option<Arc<BatchChanges>>,
}

impl AttrOverlay for Quiet {
    fn buffered(&self, ino: InodeId) -> Option<Buffered> {
        self.buffered.buffered(ino)
    }

    fn inode_changed(&self, id: InodeId) -> bool {
        self.batch.as_ref().is_some_and(|b| b.ids().inodes.contains(&id))
    }

    fn dir_changed(&self, dir: InodeId) -> bool {
        self.batch.as_ref().is_some_and(|b| b.ids().dirs.contains(&dir))
    }
}

#[derive(Debug, Default)]
pub(super) struct Published {
    /// The live generation shifted left by one, with bit 0 set, when the committed
    /// catalog, `buffered` and `batch` are all there is; 0 when a reader must take
    /// the lock.
    word: AtomicU64,
    /// Written before `word`, read after it. Lock scope: one clone or swap of the
    /// `Arc`, nothing else.
    buffered: Mutex<Arc<BufferedAttrs>>,
    /// What the open batch changed; `None` when none is open. Written before `word`,
    /// read after it. Lock scope: one clone or swap of the `Arc`.
    batch: Mutex<Option<Arc<BatchChanges>>>,
}

impl Published {
    /// What a reader may go by without the lock; `None` when it must take it.
    pub(super) fn quiet(&self) -> Option<Quiet> {
        let word = self.word.load(Ordering::Acquire);
        if word & 1 == 0 {
            return None;
        }
        let buffered = self.lock_buffered().clone();
        // A batch published after `word` was read only makes the reader more careful;
        // one committed since has its rows in every read transaction that starts now.
        let batch = self.lock_batch().clone();
        Some(Quiet {
            live: GenId((word >> 1) as i64),
            buffered,
            batch,
        })
    }

    /// The live generation when a reader may go without the lock.
    #[cfg(test)]
    pub(super) fn quiet_live(&self) -> Option<GenId> {
        self.quiet().map(|q| q.live)
    }

    fn lock_buffered(&self) -> MutexGuard<'_, Arc<BufferedAttrs>> {
        // A poisoned lock still holds a whole `Arc`.
        self.buffered.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_batch(&self) -> MutexGuard<'_, Option<Arc<BatchChanges>>> {
        // A poisoned lock still holds a whole `Option<Arc>`.
        self.batch.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, st: &State) {
        // The batch's changes first: taken from the catalog at every release, they
        // are published whatever the word says next.
        let changed = st.catalog.take_changed();
        {
            let mut slot = self.lock_batch();
            match st.catalog.open_batch() {
                // Changes noted before a batch was committed and another begun in
                // the same hold land in the new one: more than it changed, never less.
                Some(batch) => {
                    if slot.as_ref().is_none_or(|b| b.batch != batch) {
                        *slot = Some(Arc::new(BatchChanges {
                            batch,
                            ids: Mutex::default(),
                        }));
                    }
                    if let Some(b) = slot.as_ref() {
                        b.add(changed);
                    }
                }
                None => *slot = None,
            }
        }
        let quiet = st.dirty.len() <= PUBLISHED_FILES;
        let word = if quiet {
            let mut slot = self.lock_buffered();
            if !slot.matches(st) {
                let fresh = st.dirty.iter().map(|(id, d)| (*id, d.buffered())).collect();
                *slot = Arc::new(BufferedAttrs(fresh));
            }
            ((st.catalog.live().0 as u64) << 1) | 1
        } else {
            0
        };
        self.word.store(word, Ordering::Release);
    }
}

/// The core's lock, which publishes what readers may rely on as it is released.
pub(super) struct Locked<'a> {
    guard: MutexGuard<'a, State>,
    published: &'a Published,
    /// When the lock was taken and by which call, for the long-hold log.
    taken: Instant,
    by: &'static Location<'static>,
    /// How long the lock was waited for, and where holds are counted.
    waited: Duration,
    holds: &'a Holds,
}

/// A hold of the core's lock longer than this is logged (at debug level) with the
/// call that took it: every request that needs the lock waits that long.
const LONG_HOLD: Duration = Duration::from_millis(10);

impl<'a> Locked<'a> {
    pub(super) fn new(
        guard: MutexGuard<'a, State>,
        published: &'a Published,
        by: &'static Location<'static>,
        waited: Duration,
        holds: &'a Holds,
    ) -> Locked<'a> {
        Locked {
            guard,
            published,
            taken: Instant::now(),
            by,
            waited,
            holds,
        }
    }

    /// Publishes now, before the lock is released: for a long operation that has
    /// committed everything before it starts (gc, forget, rollback), so that readers
    /// go on without the lock while it runs.
    pub(super) fn publish(&self) {
        self.published.publish(&self.guard);
    }
}

impl Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // Runs before the field `guard` drops, so before the lock is released.
        self.published.publish(&self.guard);
        let held = self.taken.elapsed();
        self.holds.note(self.by, self.waited, held);
        if held >= LONG_HOLD {
            log::debug!("the core's lock was held {held:?}, taken at {}", self.by);
        }
    }
}
