//! A small pool of threads that compress chunks and hand them to the redundancy layer,
//! so the thread that cuts and hashes a stream never waits on zstd or on a write.
//!
//! The queue is bounded (backpressure keeps memory bounded); `wait` returns once every
//! submitted chunk is written, with the frame sizes and the first error.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::codec;
use crate::error::{Error, Result};
use crate::store::Redundancy;
use crate::types::{ChunkId, Location};

struct Job {
    id: ChunkId,
    plain: Vec<u8>,
    /// Its place in the order of submission (0, 1, …).
    seq: u64,
}

/// A chunk the pool finished writing: its frame size and where it was put.
#[derive(Clone, Copy, Debug)]
pub(super) struct Written {
    pub id: ChunkId,
    pub stored_size: u64,
    pub at: Location,
}

#[derive(Default)]
struct Progress {
    in_flight: usize,
    /// Chunks ever queued.
    submitted: u64,
    /// Every chunk queued before this one has finished: the writers may finish out of
    /// order, so `finished` alone does not say which.
    all_finished_below: u64,
    /// Finished chunks at or above `all_finished_below` (at most the queue's depth
    /// plus the writers).
    finished_above: std::collections::BTreeSet<u64>,
    done: Vec<Written>,
    error: Option<Error>,
}

struct Shared {
    progress: Mutex<Progress>,
    /// Notified when nothing is in flight any more.
    idle: Condvar,
    /// Notified whenever a chunk is done.
    room: Condvar,
}

impl Progress {
    /// Notes that chunk `seq` finished.
    fn finish(&mut self, seq: u64) {
        self.finished_above.insert(seq);
        while self.finished_above.remove(&self.all_finished_below) {
            self.all_finished_below += 1;
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writer threads over one store.
pub(super) struct WriterPool {
    sender: Option<SyncSender<Job>>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl WriterPool {
    /// `threads` workers with a queue of `depth` chunks.
    pub(super) fn new(
        store: Arc<dyn Redundancy>,
        zstd_level: Option<i32>,
        threads: usize,
        depth: usize,
    ) -> WriterPool {
        let (sender, receiver) = sync_channel::<Job>(depth);
        let receiver = Arc::new(Mutex::new(receiver));
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress::default()),
            idle: Condvar::new(),
            room: Condvar::new(),
        });
        let threads = (0..threads.max(1))
            .map(|i| {
                let (store, receiver, shared) = (store.clone(), receiver.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("snapfs-writer-{i}"))
                    .spawn(move || work(&*store, zstd_level, &receiver, &shared))
                    .map_err(Error::io_with("starting a writer thread"))
            })
            .filter_map(|t| t.ok())
            .collect();
        WriterPool {
            sender: Some(sender),
            shared,
            threads,
        }
    }

    /// Queues a chunk; blocks while the queue is full.
    pub(super) fn submit(&self, id: ChunkId, plain: Vec<u8>) -> Result<()> {
        let seq = {
            let mut progress = self.shared.lock();
            progress.in_flight += 1;
            progress.submitted += 1;
            progress.submitted - 1
        };
        let sent = match &self.sender {
            Some(s) if !self.threads.is_empty() => s.send(Job { id, plain, seq }).is_ok(),
            _ => false,
        };
        if !sent {
            // The writers are gone, so nothing else is ever queued: count this one
            // as finished, so that no `wait_for` waits for it.
            let mut progress = self.shared.lock();
            progress.in_flight -= 1;
            progress.finish(seq);
            drop(progress);
            return Err(Error::NoMirror {
                reason: "the chunk writer threads are gone".into(),
            });
        }
        Ok(())
    }

    /// A handle that waits for the queue to shorten, usable without the pool.
    pub(super) fn backlog(&self) -> Backlog {
        Backlog(self.shared.clone())
    }

    /// Waits until every submitted chunk is written; returns what was written since
    /// the last wait, or the first error.
    pub(super) fn wait(&self) -> Result<Vec<Written>> {
        let mut progress = self.shared.lock();
        while progress.in_flight > 0 {
            progress = self.shared.idle.wait(progress).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(e) = progress.error.take() {
            progress.done.clear();
            return Err(e);
        }
        Ok(std::mem::take(&mut progress.done))
    }

    /// What was written since the last wait or take, without waiting for what is
    /// still in flight; the first error instead, if a chunk failed.
    pub(super) fn take_written(&self) -> Result<Vec<Written>> {
        let mut progress = self.shared.lock();
        if let Some(e) = progress.error.take() {
            progress.done.clear();
            return Err(e);
        }
        Ok(std::mem::take(&mut progress.done))
    }
}

impl Drop for WriterPool {
    fn drop(&mut self) {
        self.sender = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn work(store: &dyn Redundancy, zstd_level: Option<i32>, receiver: &Mutex<Receiver<Job>>, shared: &Shared) {
    loop {
        let job = {
            let rx = receiver.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        let Ok(job) = job else { return };
        let encoded = codec::encode_with_id(job.id, &job.plain, zstd_level);
        let result = store.put(&[(job.id, &encoded.frame)]);
        let mut progress = shared.lock();
        match result.map(|at| at.first().copied()) {
            Ok(Some(at)) => progress.done.push(Written {
                id: job.id,
                stored_size: encoded.frame.len() as u64,
                at,
            }),
            Ok(None) => {}
            Err(e) => {
                if progress.error.is_none() {
                    progress.error = Some(e);
                }
            }
        }
        progress.in_flight -= 1;
        progress.finish(job.seq);
        if progress.in_flight == 0 {
            shared.idle.notify_all();
        }
        shared.room.notify_all();
    }
}

/// Waits for a writer pool's queue to shorten, so a caller can wait for room before
/// taking a lock that a blocked `submit` would otherwise hold while it waits.
#[derive(Clone)]
pub struct Backlog(Arc<Shared>);

impl Backlog {
    /// Returns once fewer than `chunks` chunks are queued or being written.
    pub fn wait_below(&self, chunks: usize) {
        let mut progress = self.0.lock();
        while progress.in_flight >= chunks.max(1) {
            progress = self.0.room.wait(progress).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Returns once every chunk queued before the call has finished, without taking
    /// in what was written. The sink's next `wait_written`, which must see every
    /// chunk, then finds little left to wait for. Writers that go on queuing cannot
    /// keep this waiting.
    pub fn wait_for_queued(&self) {
        self.wait_for(self.queued());
    }

    /// How many chunks have been queued so far (a ticket for `wait_for`).
    pub fn queued(&self) -> u64 {
        self.0.lock().submitted
    }

    /// Returns once each of the first `ticket` chunks queued has finished (written,
    /// or failed: the sink's next wait reports the failure).
    pub fn wait_for(&self, ticket: u64) {
        let mut progress = self.0.lock();
        while progress.all_finished_below < ticket {
            progress = self.0.room.wait(progress).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{HookedStore, ObjectStore, OverObjects};
    use crate::types::MirrorId;

    #[test]
    fn backlog_waits_until_the_queue_is_shorter_than_asked() {
        // Every put waits until the gate opens.
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let gate = open.clone();
        let gated = HookedStore::new(
            Box::new(move || {
                let (lock, opened) = &*gate;
                let mut open = lock.lock().unwrap();
                while !*open {
                    open = opened.wait(open).unwrap();
                }
            }),
            Box::new(|| {}),
        );
        let mirrors: Vec<(MirrorId, Result<Box<dyn ObjectStore>>)> = vec![(MirrorId(0), Ok(Box::new(gated)))];
        let objects: Arc<dyn ObjectStore> = Arc::from(mirrors.into_iter().next().unwrap().1.unwrap());
        let store = Arc::new(OverObjects::new(objects.clone()));
        let pool = WriterPool::new(store.clone() as Arc<dyn Redundancy>, None, 1, 8);
        for i in 0..4u8 {
            let plain = vec![i; 100];
            pool.submit(ChunkId::of(&plain), plain).unwrap();
        }
        let backlog = pool.backlog();
        backlog.wait_below(5); // four in flight: returns at once
        let waiter = std::thread::spawn(move || backlog.wait_below(2));
        std::thread::sleep(std::time::Duration::from_millis(50));
        let returned_early = waiter.is_finished();

        // Open the gate before asserting: a failed assertion must not leave the
        // writer (and the pool's drop, which joins it) waiting forever.
        *open.0.lock().unwrap() = true;
        open.1.notify_all();
        waiter.join().unwrap();
        assert!(!returned_early, "it returned while four chunks were in flight");
        assert!(
            objects.list().unwrap().len() >= 3,
            "fewer than two in flight means at least three written"
        );
        assert_eq!(pool.wait().unwrap().len(), 4);
    }

    #[test]
    fn a_wait_for_what_was_queued_ends_while_later_chunks_still_wait() {
        // Puts pass the gate while `allowed` is above zero, one each.
        let allowed = Arc::new((Mutex::new(0usize), Condvar::new()));
        let gate = allowed.clone();
        let gated = HookedStore::new(
            Box::new(move || {
                let (lock, changed) = &*gate;
                let mut left = lock.lock().unwrap();
                while *left == 0 {
                    left = changed.wait(left).unwrap();
                }
                *left -= 1;
            }),
            Box::new(|| {}),
        );
        let mirrors: Vec<(MirrorId, Result<Box<dyn ObjectStore>>)> = vec![(MirrorId(0), Ok(Box::new(gated)))];
        let objects: Arc<dyn ObjectStore> = Arc::from(mirrors.into_iter().next().unwrap().1.unwrap());
        let store = Arc::new(OverObjects::new(objects.clone()));
        let pool = WriterPool::new(store.clone() as Arc<dyn Redundancy>, None, 1, 8);
        let submit = |i: u8| {
            let plain = vec![i; 100];
            pool.submit(ChunkId::of(&plain), plain).unwrap();
        };
        (0..3).for_each(submit);
        let backlog = pool.backlog();
        let ticket = backlog.queued();
        assert_eq!(ticket, 3);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            backlog.wait_for(ticket);
            let _ = tx.send(());
        });
        // More writes come after the ticket; only the first three may pass.
        (3..6).for_each(submit);
        let set = |n: usize| {
            *allowed.0.lock().unwrap() = n;
            allowed.1.notify_all();
        };
        set(3);
        let ended = rx.recv_timeout(std::time::Duration::from_secs(30)).is_ok();
        set(usize::MAX);
        waiter.join().unwrap();
        assert!(
            ended,
            "the wait did not end once the three queued before it were written"
        );
        assert_eq!(pool.wait().unwrap().len(), 6);
    }
}
