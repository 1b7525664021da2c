//! What a reader without the core's lock may rely on.
//!
//! Owns: one word, written by the core's lock guard just before the lock is
//! released, that says that readers may go without the lock and which generation is
//! live; the buffered attributes (the size, mtime and ctime that each file's
//! unflushed writes give it, updated for the files a hold changed); and what the open
//! group-commit batch changed (`BatchChanges`: the inodes and folders whose rows no
//! other connection sees yet, and the attributes and names its committed changes
//! left). A read that finds the word set runs on a read connection of its own (WAL
//! gives it the last commit), lays over what it read the attributes and names the
//! batch left and the buffered attributes, and never waits for the writer, unless it
//! needs more of what the batch changed: a listing of a folder whose names it
//! changed, the bytes of an inode it changed, the xattrs of one whose xattrs it
//! changed. Then it reads under the
//! lock, as it does the bytes of a file with buffered writes. (What the batch left is
//! whole: every change of an inode's row or a name notes what it leaves when its
//! savepoint commits, and one rolled back leaves the row as it was; see
//! `catalog::Left`.) A request that started after a
//! change was answered finds the word, the attributes and the batch's changes as the
//! change left them (its guard published them before the lock was released), so it
//! cannot read from before the change; a read running beside a change may see either
//! side of it, as POSIX allows for requests that overlap. The batch's changes are
//! dropped only once it is committed (at the release after the commit), when every
//! read transaction that starts sees them.
//!
//! Why a reader counts removals: a commit moves a file's buffered writes into the
//! catalog and drops its entry here in one hold of the lock. A reader learns which
//! inodes it needs only as it reads the catalog, so it may read a file's row from
//! before the commit and look for its entry after the drop, and see neither. Every
//! publish that drops an entry first bumps a count (`removals`); a reader notes the
//! count before its read transaction starts and reads under the lock instead when
//! the count moved by the time it is done. A reader that missed an entry because
//! it was dropped sees the bump; one that noted the bumped count started its read
//! transaction after the commit. Entries that are added or grow need no such care:
//! a newer entry over an older row gives the larger size and the newer times.

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

    /// True when the committed catalog's xattrs of inode `id` may be out of date.
    fn xattrs_changed(&self, _id: InodeId) -> bool {
        false
    }

    /// True when the committed catalog's names in folder `dir` may be out of date.
    fn dir_changed(&self, _dir: InodeId) -> bool {
        false
    }

    /// The attributes the open batch left to inode `id` when it changed them
    /// (`Some(None)`: it removed the inode); `None` when the committed catalog's are
    /// right.
    fn attrs_left(&self, _id: InodeId) -> Option<Option<InodeAttr>> {
        None
    }

    /// What the open batch left name `name` in folder `dir` pointing at when it
    /// changed it (`Some(None)`: removed); `None` when the committed catalog is right.
    fn name_left(&self, _dir: InodeId, _name: &[u8]) -> Option<Option<InodeId>> {
        None
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

/// What the open batch changed, as published: ids only ever added, and what its
/// committed changes left only ever updated, until the batch is committed, when it
/// is dropped whole.
#[derive(Debug, Default)]
struct BatchChanges {
    /// The batch's number (`Catalog::open_batch`).
    batch: u64,
    /// Lock scope: the insert of one hold's changes (ids and what they left), or
    /// one lookup (with a clone of the attributes found); never any I/O.
    ids: Mutex<ChangedIds>,
}

#[derive(Debug, Default)]
struct ChangedIds {
    inodes: HashSet<InodeId>,
    xattrs: HashSet<InodeId>,
    dirs: HashSet<InodeId>,
    /// The last attributes each changed inode was left with (`Left::attrs`).
    attrs: HashMap<InodeId, Option<InodeAttr>>,
    /// Per folder, what each changed name was left pointing at (`Left::names`).
    names: HashMap<InodeId, HashMap<Vec<u8>, Option<InodeId>>>,
}

impl BatchChanges {
    fn ids(&self) -> MutexGuard<'_, ChangedIds> {
        // A poisoned lock still holds whole sets.
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, changed: Changed) {
        let mut ids = self.ids();
        ids.inodes.extend(changed.inodes);
        ids.xattrs.extend(changed.xattrs);
        ids.dirs.extend(changed.dirs);
        // In order: the last change of a row wins.
        ids.attrs.extend(changed.left.attrs);
        for (dir, name, inode) in changed.left.names {
            ids.names.entry(dir).or_default().insert(name, inode);
        }
    }
}

/// What a reader without the lock goes by: the live generation, the buffered
/// attributes to lay over what it reads, and what it must not trust.
pub(super) struct Quiet<'a> {
    pub(super) live: GenId,
    published: &'a Published,
    /// `Published::removals` before the reader's transaction started.
    removals: u64,
    batch: Option<Arc<BatchChanges>>,
}

impl Quiet<'_> {
    /// True when no buffered entry was dropped since the reader started: what it
    /// read, with the entries it found, is whole (see the module's text).
    pub(super) fn still_whole(&self) -> bool {
        self.published.removals.load(Ordering::Acquire) == self.removals
    }
}

impl AttrOverlay for Quiet<'_> {
    fn buffered(&self, ino: InodeId) -> Option<Buffered> {
        self.published.lock_buffered().get(&ino).copied()
    }

    fn inode_changed(&self, id: InodeId) -> bool {
        self.batch.as_ref().is_some_and(|b| b.ids().inodes.contains(&id))
    }

    fn xattrs_changed(&self, id: InodeId) -> bool {
        self.batch.as_ref().is_some_and(|b| b.ids().xattrs.contains(&id))
    }

    fn dir_changed(&self, dir: InodeId) -> bool {
        self.batch.as_ref().is_some_and(|b| b.ids().dirs.contains(&dir))
    }

    fn attrs_left(&self, id: InodeId) -> Option<Option<InodeAttr>> {
        self.batch.as_ref()?.ids().attrs.get(&id).cloned()
    }

    fn name_left(&self, dir: InodeId, name: &[u8]) -> Option<Option<InodeId>> {
        self.batch.as_ref()?.ids().names.get(&dir)?.get(name).copied()
    }
}

#[derive(Debug, Default)]
pub(super) struct Published {
    /// The live generation shifted left by one, with bit 0 set, once something is
    /// published; 0 before, when a reader must take the lock.
    word: AtomicU64,
    /// What each file's buffered writes change in its attributes. Written before
    /// `word`, read after it. Lock scope: one lookup, or the update of the files
    /// one hold of the core's lock changed.
    buffered: Mutex<HashMap<InodeId, Buffered>>,
    /// Bumped before any entry leaves `buffered`.
    removals: AtomicU64,
    /// What the open batch changed; `None` when none is open. Written before `word`,
    /// read after it. Lock scope: one clone or swap of the `Arc`.
    batch: Mutex<Option<Arc<BatchChanges>>>,
}

impl Published {
    /// What a reader may go by without the lock; `None` when it must take it.
    pub(super) fn quiet(&self) -> Option<Quiet<'_>> {
        let word = self.word.load(Ordering::Acquire);
        if word & 1 == 0 {
            return None;
        }
        let removals = self.removals.load(Ordering::Acquire);
        // A batch published after `word` was read only makes the reader more careful;
        // one committed since has its rows in every read transaction that starts now.
        let batch = self.lock_batch().clone();
        Some(Quiet {
            live: GenId((word >> 1) as i64),
            published: self,
            removals,
            batch,
        })
    }

    /// The live generation when a reader may go without the lock.
    #[cfg(test)]
    pub(super) fn quiet_live(&self) -> Option<GenId> {
        self.quiet().map(|q| q.live)
    }

    fn lock_buffered(&self) -> MutexGuard<'_, HashMap<InodeId, Buffered>> {
        // A poisoned lock still holds a whole map (each update is one insert or
        // remove).
        self.buffered.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_batch(&self) -> MutexGuard<'_, Option<Arc<BatchChanges>>> {
        // A poisoned lock still holds a whole `Option<Arc>`.
        self.batch.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, st: &mut State) {
        // The batch's changes first: taken from the catalog at every release, they
        // are published whatever the word says next.
        let changed = st.catalog.take_changed();
        {
            let mut slot = self.lock_batch();
            match st.catalog.open_batch() {
                // Ids noted before a batch was committed and another begun in the
                // same hold land in the new one: more than it changed, never less.
                // (What the old batch's changes left was dropped at its commit.)
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
        // The buffered attributes of the files this hold changed.
        let changed = st.dirty.take_changed();
        if !changed.is_empty() {
            if changed.iter().any(|id| !st.dirty.contains_key(id)) {
                // Before the entry leaves (see the module's text).
                self.removals.fetch_add(1, Ordering::AcqRel);
            }
            let mut buffered = self.lock_buffered();
            for id in changed {
                match st.dirty.get(&id) {
                    Some(d) => buffered.insert(id, d.buffered()),
                    None => buffered.remove(&id),
                };
            }
        }
        let word = ((st.catalog.live().0 as u64) << 1) | 1;
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
    pub(super) fn publish(&mut self) {
        self.published.publish(&mut self.guard);
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
        self.published.publish(&mut self.guard);
        let held = self.taken.elapsed();
        self.holds.note(self.by, self.waited, held);
        if held >= LONG_HOLD {
            log::debug!("the core's lock was held {held:?}, taken at {}", self.by);
        }
    }
}
