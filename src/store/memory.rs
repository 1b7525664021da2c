//! `MemoryStore`: an object store in a `HashMap`, for tests and benchmarks.
//!
//! Owns nothing on disk; `sync` is a no-op (everything is "durable" for the life of the
//! value). Depends only on the `ObjectStore` trait.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::error::Result;
use crate::store::ObjectStore;
use crate::types::ChunkId;

/// Chunk frames in memory, behind a mutex.
#[derive(Debug, Default)]
pub struct MemoryStore {
    frames: Mutex<HashMap<ChunkId, Vec<u8>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn frames(&self) -> MutexGuard<'_, HashMap<ChunkId, Vec<u8>>> {
        // A panic while holding the lock cannot leave the map half-updated (every
        // update is one insert/remove), so a poisoned lock is still consistent.
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Test helper: flips every bit of one byte of the stored copy of `id` (the last
    /// byte, or the middle one for long frames). Returns false if there is no copy.
    pub fn corrupt(&self, id: &ChunkId) -> bool {
        match self.frames().get_mut(id) {
            Some(frame) if !frame.is_empty() => {
                let i = if frame.len() > 32 {
                    frame.len() / 2
                } else {
                    frame.len() - 1
                };
                frame[i] ^= 0xff;
                true
            }
            _ => false,
        }
    }

    /// Number of stored chunks.
    pub fn len(&self) -> usize {
        self.frames().len()
    }

    /// True if no chunk is stored.
    pub fn is_empty(&self) -> bool {
        self.frames().is_empty()
    }
}

impl ObjectStore for MemoryStore {
    fn describe(&self) -> String {
        "memory".to_string()
    }

    fn put(&self, id: &ChunkId, frame: &[u8]) -> Result<()> {
        self.frames().insert(*id, frame.to_vec());
        Ok(())
    }

    fn get_frame(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        Ok(self.frames().get(id).cloned())
    }

    fn contains(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.frames().contains_key(id))
    }

    fn remove(&self, id: &ChunkId) -> Result<()> {
        self.frames().remove(id);
        Ok(())
    }

    fn list(&self) -> Result<Vec<ChunkId>> {
        Ok(self.frames().keys().copied().collect())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

/// A hook a `HookedStore` runs before a call: to count, slow or hold it.
#[cfg(test)]
pub type Hook = Box<dyn Fn() + Send + Sync>;

/// A `MemoryStore` that runs a hook before every `put` and every frame read, for
/// tests that need to count, slow down or hold those calls.
#[cfg(test)]
pub struct HookedStore {
    inner: MemoryStore,
    before_put: Hook,
    before_get: Hook,
    before_remove: Option<Hook>,
    before_sync: Option<Hook>,
}

#[cfg(test)]
impl HookedStore {
    /// An empty store running `before_put` and `before_get`.
    pub fn new(before_put: Hook, before_get: Hook) -> HookedStore {
        HookedStore {
            inner: MemoryStore::new(),
            before_put,
            before_get,
            before_remove: None,
            before_sync: None,
        }
    }

    /// Also runs `hook` before every `remove`.
    pub fn with_before_remove(mut self, hook: Hook) -> HookedStore {
        self.before_remove = Some(hook);
        self
    }

    /// Also runs `hook` before every `sync`.
    pub fn with_before_sync(mut self, hook: Hook) -> HookedStore {
        self.before_sync = Some(hook);
        self
    }
}

#[cfg(test)]
impl ObjectStore for HookedStore {
    fn describe(&self) -> String {
        "hooked memory store".into()
    }
    fn put(&self, id: &ChunkId, frame: &[u8]) -> Result<()> {
        (self.before_put)();
        self.inner.put(id, frame)
    }
    fn get_frame(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        (self.before_get)();
        self.inner.get_frame(id)
    }
    fn contains(&self, id: &ChunkId) -> Result<bool> {
        self.inner.contains(id)
    }
    fn remove(&self, id: &ChunkId) -> Result<()> {
        if let Some(hook) = &self.before_remove {
            hook();
        }
        self.inner.remove(id)
    }
    fn list(&self) -> Result<Vec<ChunkId>> {
        self.inner.list()
    }
    fn sync(&self) -> Result<()> {
        if let Some(hook) = &self.before_sync {
            hook();
        }
        self.inner.sync()
    }
}
