//! Chunks on their way out: gc condemns a batch (drops its catalog rows, so no new
//! write can count on them), then deletes its objects with no lock of the mount held.
//! Meanwhile a writer may store the same bytes again; its put must not land before
//! the old copy is deleted, or the deletion would take the new one with it. So a put
//! of a condemned chunk waits here until its deletion is over.
//!
//! Lock scope: the set's mutex is held only to test or change membership; waiting is
//! on the condition variable, which releases it.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::types::ChunkId;

/// The set of chunks being deleted.
#[derive(Debug, Default)]
pub struct Removals {
    doomed: Mutex<HashSet<ChunkId>>,
    done: Condvar,
}

impl Removals {
    fn lock(&self) -> MutexGuard<'_, HashSet<ChunkId>> {
        // Inserts and removes are single steps: a poisoned lock is consistent.
        self.doomed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `ids` as being deleted until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>, ids: &[ChunkId]) -> RemovalGuard {
        self.lock().extend(ids.iter().copied());
        RemovalGuard {
            removals: self.clone(),
            ids: ids.to_vec(),
        }
    }

    /// Returns once `id` is not being deleted (at once, nearly always).
    pub fn wait_until_kept(&self, id: &ChunkId) {
        let mut doomed = self.lock();
        while doomed.contains(id) {
            doomed = self.done.wait(doomed).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// True when no chunk is being deleted.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Chunks being deleted; dropping it (after the deletion, or on an error or a
/// panic) lets puts of them go ahead.
pub struct RemovalGuard {
    removals: Arc<Removals>,
    ids: Vec<ChunkId>,
}

impl Drop for RemovalGuard {
    fn drop(&mut self) {
        let mut doomed = self.removals.lock();
        for id in &self.ids {
            doomed.remove(id);
        }
        drop(doomed);
        self.removals.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_put_of_a_chunk_being_deleted_waits_for_the_deletion() {
        let removals = Arc::new(Removals::default());
        let id = ChunkId::of(b"doomed");
        let deleted = AtomicBool::new(false);
        let guard = removals.begin(&[id]);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                removals.wait_until_kept(&id);
                deleted.load(Ordering::SeqCst)
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waiter.is_finished(), "the put waits");
            deleted.store(true, Ordering::SeqCst);
            drop(guard);
            assert!(waiter.join().unwrap(), "and goes on only after the deletion");
        });
        assert!(removals.is_empty());
        removals.wait_until_kept(&ChunkId::of(b"other")); // never waits
    }
}
