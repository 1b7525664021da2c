//! A small pool of threads that compress chunks and write them to the mirrors, so the
//! thread that cuts and hashes a stream never waits on zstd or on file creation.
//!
//! The queue is bounded (backpressure keeps memory bounded); `wait` returns once every
//! submitted chunk is written, with the frame sizes and the first error.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::codec;
use crate::error::{Error, Result};
use crate::store::{MirrorSet, MirrorStore};
use crate::types::ChunkId;

struct Job {
    id: ChunkId,
    plain: Vec<u8>,
    targets: MirrorSet,
}

/// A chunk the pool finished writing: its frame size and the mirrors that took it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Written {
    pub id: ChunkId,
    pub stored_size: u64,
    pub written: MirrorSet,
}

#[derive(Default)]
struct Progress {
    in_flight: usize,
    done: Vec<Written>,
    error: Option<Error>,
}

struct Shared {
    progress: Mutex<Progress>,
    idle: Condvar,
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
        store: Arc<MirrorStore>,
        zstd_level: Option<i32>,
        threads: usize,
        depth: usize,
    ) -> WriterPool {
        let (sender, receiver) = sync_channel::<Job>(depth);
        let receiver = Arc::new(Mutex::new(receiver));
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress::default()),
            idle: Condvar::new(),
        });
        let threads = (0..threads.max(1))
            .map(|i| {
                let (store, receiver, shared) = (store.clone(), receiver.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("snapfs-writer-{i}"))
                    .spawn(move || work(&store, zstd_level, &receiver, &shared))
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

    /// Queues a chunk for `targets`; blocks while the queue is full.
    pub(super) fn submit(&self, id: ChunkId, plain: Vec<u8>, targets: MirrorSet) -> Result<()> {
        self.shared.lock().in_flight += 1;
        let sent = match &self.sender {
            Some(s) if !self.threads.is_empty() => s.send(Job { id, plain, targets }).is_ok(),
            _ => false,
        };
        if !sent {
            self.shared.lock().in_flight -= 1;
            return Err(Error::NoMirror {
                reason: "the chunk writer threads are gone".into(),
            });
        }
        Ok(())
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
}

impl Drop for WriterPool {
    fn drop(&mut self) {
        self.sender = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn work(store: &MirrorStore, zstd_level: Option<i32>, receiver: &Mutex<Receiver<Job>>, shared: &Shared) {
    loop {
        let job = {
            let rx = receiver.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        let Ok(job) = job else { return };
        let encoded = codec::encode_with_id(job.id, &job.plain, zstd_level);
        let result = store.put_to(&job.id, &encoded.frame, job.targets);
        let mut progress = shared.lock();
        match result {
            Ok(written) => progress.done.push(Written {
                id: job.id,
                stored_size: encoded.frame.len() as u64,
                written,
            }),
            Err(e) => {
                if progress.error.is_none() {
                    progress.error = Some(e);
                }
            }
        }
        progress.in_flight -= 1;
        if progress.in_flight == 0 {
            shared.idle.notify_all();
        }
    }
}
