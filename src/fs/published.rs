//! What a reader without the core's lock may rely on.
//!
//! Owns: one word, written by the core's lock guard just before the lock is
//! released, that says whether the committed catalog is the whole truth about the
//! live tree (no open group-commit batch, no buffered writes) and, if so, which
//! generation is live. A read that finds it so runs on a read connection of its own
//! (WAL gives it the last commit) and never waits for the writer; otherwise it takes
//! the lock as before. A request that started after a change was answered finds the
//! word cleared (the change's guard cleared it before the lock was released), so it
//! cannot read from before the change; a read running beside a change may see either
//! side of it, as POSIX allows for requests that overlap.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::MutexGuard;

use super::State;
use crate::types::GenId;

/// The live generation shifted left by one, with bit 0 set, when the committed
/// catalog is all there is; 0 when a reader must take the lock.
#[derive(Debug, Default)]
pub(super) struct Published(AtomicU64);

impl Published {
    /// The live generation when a reader may go without the lock.
    pub(super) fn quiet_live(&self) -> Option<GenId> {
        let word = self.0.load(Ordering::Acquire);
        (word & 1 == 1).then_some(GenId((word >> 1) as i64))
    }

    fn publish(&self, st: &State) {
        let quiet = !st.catalog.batch_open() && st.dirty.is_empty();
        let word = if quiet {
            ((st.catalog.live().0 as u64) << 1) | 1
        } else {
            0
        };
        self.0.store(word, Ordering::Release);
    }
}

/// The core's lock, which publishes what readers may rely on as it is released.
pub(super) struct Locked<'a> {
    guard: MutexGuard<'a, State>,
    published: &'a Published,
}

impl<'a> Locked<'a> {
    pub(super) fn new(guard: MutexGuard<'a, State>, published: &'a Published) -> Locked<'a> {
        Locked { guard, published }
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
    }
}
