//! Reads in flight, so that gc never deletes a chunk a read is about to fetch.
//!
//! A read takes a file's extents from the catalog, then fetches their chunks with no
//! lock held. Meanwhile the file may be overwritten and the old chunks condemned by
//! gc. gc therefore, after condemning a batch and before deleting its objects, waits
//! until every read that started before the condemnation has finished
//! (`wait_for_older`): an epoch scheme, so a read costs two short lock holds and gc
//! waits for nothing but reads that were already running.
//!
//! Lock scope: the mutex guards two counters; it is never held across I/O.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard};

/// The current epoch and how many reads started in each earlier one still run.
#[derive(Debug, Default)]
struct Epochs {
    current: u64,
    running: BTreeMap<u64, usize>,
}

/// Reads in flight, by the epoch they started in.
#[derive(Debug, Default)]
pub struct ReadsInFlight {
    epochs: Mutex<Epochs>,
    finished: Condvar,
}

/// One read in flight; dropping it ends the read.
pub struct ReadTicket<'a> {
    reads: &'a ReadsInFlight,
    epoch: u64,
}

impl ReadsInFlight {
    fn lock(&self) -> MutexGuard<'_, Epochs> {
        // Every change is a single step on the counters: a poisoned lock is consistent.
        self.epochs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a read starting now.
    pub fn enter(&self) -> ReadTicket<'_> {
        let mut e = self.lock();
        let epoch = e.current;
        *e.running.entry(epoch).or_default() += 1;
        ReadTicket { reads: self, epoch }
    }

    /// Returns once every read that started before this call has finished. Reads
    /// that start meanwhile are not waited for.
    pub fn wait_for_older(&self) {
        let mut e = self.lock();
        let before = e.current;
        e.current += 1;
        while e.running.range(..=before).next().is_some() {
            e = self.finished.wait(e).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for ReadTicket<'_> {
    fn drop(&mut self) {
        let mut e = self.reads.lock();
        if let Some(n) = e.running.get_mut(&self.epoch) {
            *n -= 1;
            if *n == 0 {
                e.running.remove(&self.epoch);
            }
        }
        drop(e);
        self.reads.finished.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_waits_for_reads_that_started_before_it_and_only_those() {
        let reads = ReadsInFlight::default();
        let old = reads.enter();
        std::thread::scope(|s| {
            let gc = s.spawn(|| reads.wait_for_older());
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!gc.is_finished(), "a read from before is still running");
            // A read that starts now does not hold gc up.
            let new = reads.enter();
            drop(old);
            gc.join().unwrap();
            drop(new);
        });
        reads.wait_for_older(); // nothing running: at once
    }
}
