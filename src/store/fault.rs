//! `FaultStore`: an in-memory object store that fails on demand and can "lose power",
//! for crash and fault tests of the layers above (the idea of redb's CrashBackend).
//!
//! Owns the model of durability: puts and removes are pending until `sync`; `crash`
//! discards everything pending, as a power loss would. Depends only on `MemoryStore`
//! and the `ObjectStore` trait.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::store::{MemoryStore, ObjectStore};
use crate::types::ChunkId;

/// A `MemoryStore` (the durable image) plus unsynced changes and scheduled failures.
#[derive(Debug, Default)]
pub struct FaultStore {
    durable: MemoryStore,
    state: Mutex<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    /// Changes since the last sync: `Some(frame)` = put, `None` = remove.
    pending: HashMap<ChunkId, Option<Vec<u8>>>,
    /// (put number, errno): that put call fails.
    put_faults: Vec<(u64, i32)>,
    /// (sync number, errno): that sync call fails.
    sync_faults: Vec<(u64, i32)>,
    puts: u64,
    syncs: u64,
}

impl FaultStore {
    /// An empty store with no failure scheduled.
    pub fn new() -> FaultStore {
        FaultStore::default()
    }

    /// Wraps `durable`: its content counts as already synced.
    pub fn wrap(durable: MemoryStore) -> FaultStore {
        FaultStore {
            durable,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, FaultState> {
        // Every update under the lock is a single step; a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `n`-th `put` call from now (1 = the next one; 0 counts as 1) fails with
    /// `errno` (e.g. `libc::EIO`, `libc::ENOSPC`) and stores nothing.
    pub fn fail_put_at(&self, n: u64, errno: i32) {
        let mut st = self.state();
        let at = st.puts + n.max(1);
        st.put_faults.push((at, errno));
    }

    /// The `n`-th `sync` call from now (1 = the next one) fails with `errno`; the
    /// pending changes stay pending.
    pub fn fail_sync_at(&self, n: u64, errno: i32) {
        let mut st = self.state();
        let at = st.syncs + n.max(1);
        st.sync_faults.push((at, errno));
    }

    /// Power loss: every put and remove not followed by a successful `sync` is
    /// forgotten. Synced data is untouched.
    pub fn crash(&self) {
        self.state().pending.clear();
    }

    /// Number of `put` calls so far (failed ones included).
    pub fn puts(&self) -> u64 {
        self.state().puts
    }

    /// Number of `sync` calls so far (failed ones included).
    pub fn syncs(&self) -> u64 {
        self.state().syncs
    }

    /// Number of changes not yet synced.
    pub fn pending(&self) -> usize {
        self.state().pending.len()
    }

    /// Test helper: flips one byte of the visible copy of `id`; false if absent.
    pub fn corrupt(&self, id: &ChunkId) -> bool {
        let mut st = self.state();
        match st.pending.get_mut(id) {
            Some(Some(frame)) if !frame.is_empty() => {
                let i = frame.len() / 2;
                frame[i] ^= 0xff;
                true
            }
            Some(_) => false,
            None => self.durable.corrupt(id),
        }
    }
}

fn take_fault(faults: &mut Vec<(u64, i32)>, count: u64) -> Option<i32> {
    let i = faults.iter().position(|&(at, _)| at == count)?;
    Some(faults.swap_remove(i).1)
}

impl ObjectStore for FaultStore {
    fn describe(&self) -> String {
        "fault store".to_string()
    }

    fn put(&self, id: &ChunkId, frame: &[u8]) -> Result<()> {
        let mut st = self.state();
        st.puts += 1;
        let count = st.puts;
        if let Some(errno) = take_fault(&mut st.put_faults, count) {
            return Err(Error::io(
                format!("writing chunk {id} in fault store (injected fault)"),
                std::io::Error::from_raw_os_error(errno),
            ));
        }
        st.pending.insert(*id, Some(frame.to_vec()));
        Ok(())
    }

    fn get_frame(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        let st = self.state();
        match st.pending.get(id) {
            Some(change) => Ok(change.clone()),
            None => self.durable.get_frame(id),
        }
    }

    fn contains(&self, id: &ChunkId) -> Result<bool> {
        let st = self.state();
        match st.pending.get(id) {
            Some(change) => Ok(change.is_some()),
            None => self.durable.contains(id),
        }
    }

    fn remove(&self, id: &ChunkId) -> Result<()> {
        self.state().pending.insert(*id, None);
        Ok(())
    }

    fn list(&self) -> Result<Vec<ChunkId>> {
        let st = self.state();
        let mut ids: Vec<ChunkId> = self
            .durable
            .list()?
            .into_iter()
            .filter(|id| !st.pending.contains_key(id))
            .collect();
        ids.extend(
            st.pending
                .iter()
                .filter(|(_, change)| change.is_some())
                .map(|(id, _)| *id),
        );
        Ok(ids)
    }

    fn sync(&self) -> Result<()> {
        let mut st = self.state();
        st.syncs += 1;
        let count = st.syncs;
        if let Some(errno) = take_fault(&mut st.sync_faults, count) {
            return Err(Error::io(
                "syncing fault store (injected fault)",
                std::io::Error::from_raw_os_error(errno),
            ));
        }
        for (id, change) in st.pending.drain() {
            match change {
                Some(frame) => self.durable.put(&id, &frame)?,
                None => self.durable.remove(&id)?,
            }
        }
        Ok(())
    }
}
