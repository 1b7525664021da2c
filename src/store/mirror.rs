//! `MirrorStore`: several object stores holding the same chunks, verified on read.
//!
//! Owns the mirror policy: writes go to every healthy mirror; reads verify each copy
//! and rewrite a missing or bad copy from a good one (self-heal); a mirror whose put or
//! sync fails is set aside as `Lost` (degraded mode) and the others carry on, until none
//! is left (`NoMirror`). A full disk (`ENOSPC`) is not a mirror failure: the writer gets
//! the `ENOSPC` and the mirror stays healthy, so nothing degrades silently.
//!
//! The set can change while it is used (`attach`, `detach`: `mirror add` and
//! `mirror remove` on a mounted repository, a lost mirror brought back): each
//! operation works on the set as it was when it started.
//!
//! Knows nothing of files or the catalog; which chunks each mirror should hold is the
//! caller's business (`put_to`, `holders`). Depends on `codec` and the trait.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::codec;
use crate::error::{Error, Result};
use crate::store::removals::{RemovalGuard, Removals};
use crate::store::{MirrorSet, ObjectStore};
use crate::types::{ChunkId, MirrorId};

/// The health of one mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorState {
    /// Read and written.
    Healthy,
    /// Written, but still being filled with what it lacks (packs): read last.
    Filling,
    /// Set aside: not written any more, read only as a last resort.
    Lost {
        /// The error that set it aside.
        reason: String,
    },
}

impl fmt::Display for MirrorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MirrorState::Healthy => f.write_str("healthy"),
            MirrorState::Filling => f.write_str("filling"),
            MirrorState::Lost { reason } => write!(f, "lost: {reason}"),
        }
    }
}

/// One mirror as seen by `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorStatus {
    /// The mirror's number.
    pub id: MirrorId,
    /// Its description, e.g. `mirror 0 (/path)`.
    pub describe: String,
    /// Healthy or lost (with the reason).
    pub state: MirrorState,
    /// Copies rewritten on this mirror by self-heal since the store was built.
    pub heals: u64,
}

struct Slot {
    id: MirrorId,
    /// `None` when the mirror could not even be opened.
    store: Option<Arc<dyn ObjectStore>>,
    describe: String,
    state: Mutex<MirrorState>,
    heals: AtomicU64,
}

impl Slot {
    fn healthy(id: MirrorId, store: Box<dyn ObjectStore>) -> Slot {
        Slot {
            id,
            describe: store.describe(),
            store: Some(Arc::from(store)),
            state: Mutex::new(MirrorState::Healthy),
            heals: AtomicU64::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, MirrorState> {
        // The state is replaced in one assignment; a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store, if the mirror is healthy.
    fn healthy_store(&self) -> Option<&dyn ObjectStore> {
        match *self.state() {
            MirrorState::Healthy => self.store.as_deref(),
            MirrorState::Lost { .. } | MirrorState::Filling => None,
        }
    }

    /// Sets the mirror aside; the first reason is kept.
    fn mark_lost(&self, reason: String) {
        let mut state = self.state();
        if *state == MirrorState::Healthy {
            log::debug!("{} set aside: {reason}", self.describe);
            *state = MirrorState::Lost { reason };
        }
    }
}

/// The mirrors in read order. Replaced whole when one is attached or detached.
type Slots = Arc<Vec<Arc<Slot>>>;

/// Several mirrors of one repository, used as one `ObjectStore`. Thread-safe.
pub struct MirrorStore {
    /// Scope: held only to clone or replace the `Arc` (no I/O under it).
    slots: Mutex<Slots>,
    /// Chunks gc is deleting: a put of one waits until that is over.
    removals: std::sync::Arc<Removals>,
}

impl fmt::Debug for MirrorStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.status()).finish()
    }
}

/// A failure that leaves the mirror healthy and goes straight to the caller.
fn is_caller_error(e: &Error) -> bool {
    e.is_no_space()
}

impl MirrorStore {
    /// Builds the set from opened (or failed) mirrors, in read order. An `Err` entry
    /// starts `Lost` with the error's text as reason. Errors: `InvalidArgument` for a
    /// duplicate id or an id >= 64; `NoMirror` if no entry is usable.
    pub fn new(mirrors: Vec<(MirrorId, Result<Box<dyn ObjectStore>>)>) -> Result<MirrorStore> {
        let mut seen = MirrorSet::EMPTY;
        let mut slots = Vec::with_capacity(mirrors.len());
        for (id, opened) in mirrors {
            if id.0 >= MirrorSet::CAPACITY {
                return Err(Error::InvalidArgument(format!(
                    "mirror number {id} is too large (at most {} mirrors)",
                    MirrorSet::CAPACITY
                )));
            }
            if !seen.insert(id) {
                return Err(Error::InvalidArgument(format!("mirror {id} is given twice")));
            }
            let slot = match opened {
                Ok(store) => Slot::healthy(id, store),
                Err(e) => Slot {
                    id,
                    describe: format!("mirror {id} (unavailable)"),
                    store: None,
                    state: Mutex::new(MirrorState::Lost {
                        reason: e.to_string(),
                    }),
                    heals: AtomicU64::new(0),
                },
            };
            slots.push(Arc::new(slot));
        }
        let store = MirrorStore {
            slots: Mutex::new(Arc::new(slots)),
            removals: Default::default(),
        };
        if store.healthy().is_empty() {
            return Err(Error::NoMirror {
                reason: store.lost_reasons(),
            });
        }
        Ok(store)
    }

    /// The set as it is now (an operation keeps using it if it changes meanwhile).
    fn slots(&self) -> Slots {
        // Replaced in one assignment; a poisoned lock holds a consistent set.
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds `store` as mirror `id`, healthy, after the others in read order (or in the
    /// place of an earlier mirror `id`, e.g. a lost one brought back, with its heal
    /// count kept). Puts and syncs that start from now on include it; reads reach it
    /// after the mirrors before it. The caller fills it with what it lacks.
    pub fn attach(&self, id: MirrorId, store: Box<dyn ObjectStore>) -> Result<()> {
        if id.0 >= MirrorSet::CAPACITY {
            return Err(Error::InvalidArgument(format!(
                "mirror number {id} is too large (at most {} mirrors)",
                MirrorSet::CAPACITY
            )));
        }
        let mut guard = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut slots: Vec<Arc<Slot>> = guard.as_ref().clone();
        let slot = Slot::healthy(id, store);
        match slots.iter().position(|s| s.id == id) {
            Some(i) => {
                slot.heals
                    .store(slots[i].heals.load(Ordering::Relaxed), Ordering::Relaxed);
                slots[i] = Arc::new(slot);
            }
            None => slots.push(Arc::new(slot)),
        }
        *guard = Arc::new(slots);
        Ok(())
    }

    /// Stops using mirror `id` (operations already running finish with it). Errors:
    /// `NotFound` for an unknown id; `NoMirror` when no healthy mirror would be left
    /// (nothing changes then).
    pub fn detach(&self, id: MirrorId) -> Result<()> {
        let mut guard = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if !guard.iter().any(|s| s.id == id) {
            return Err(Error::NotFound(format!("mirror {id}")));
        }
        let slots: Vec<Arc<Slot>> = guard.iter().filter(|s| s.id != id).cloned().collect();
        if !slots.iter().any(|s| s.healthy_store().is_some()) {
            return Err(Error::NoMirror {
                reason: format!("mirror {id} is the last healthy one"),
            });
        }
        *guard = Arc::new(slots);
        Ok(())
    }

    /// The mirrors that are read and written.
    pub fn healthy(&self) -> MirrorSet {
        self.slots()
            .iter()
            .filter(|s| s.healthy_store().is_some())
            .map(|s| s.id)
            .collect()
    }

    /// Every mirror with its state and heal count, in read order.
    pub fn status(&self) -> Vec<MirrorStatus> {
        self.slots()
            .iter()
            .map(|s| MirrorStatus {
                id: s.id,
                describe: s.describe.clone(),
                state: s.state().clone(),
                heals: s.heals.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Total copies rewritten by self-heal, over all mirrors.
    pub fn heals(&self) -> u64 {
        self.slots().iter().map(|s| s.heals.load(Ordering::Relaxed)).sum()
    }

    /// The store of mirror `id`, healthy or not (`None` if unknown or never opened),
    /// for per-mirror work such as scrub.
    pub fn store(&self, id: MirrorId) -> Option<Arc<dyn ObjectStore>> {
        self.slot(id)?.store.clone()
    }

    /// Sets mirror `id` aside (e.g. scrub found it unreadable); the first reason is kept.
    pub fn mark_lost(&self, id: MirrorId, reason: impl Into<String>) {
        if let Some(slot) = self.slot(id) {
            slot.mark_lost(reason.into());
        }
    }

    fn slot(&self, id: MirrorId) -> Option<Arc<Slot>> {
        self.slots().iter().find(|s| s.id == id).cloned()
    }

    /// The healthy mirrors that hold a copy of `id` (unverified). A mirror whose lookup
    /// fails counts as not holding it, which is the safe answer for dedup.
    pub fn holders(&self, id: &ChunkId) -> MirrorSet {
        self.slots()
            .iter()
            .filter(|s| {
                s.healthy_store()
                    .is_some_and(|store| store.contains(id).unwrap_or(false))
            })
            .map(|s| s.id)
            .collect()
    }

    /// Puts `frame` on every healthy mirror; returns the mirrors that got it. A mirror
    /// whose put fails is set aside. Errors: the `ENOSPC` error of a full mirror (the
    /// mirror stays healthy); `NoMirror` when no mirror is left. Durable after `sync`.
    pub fn put_all(&self, id: &ChunkId, frame: &[u8]) -> Result<MirrorSet> {
        self.put_to(id, frame, MirrorSet(u64::MAX))
    }

    /// Like `put_all`, but only on the healthy mirrors in `targets` (e.g. a dedup hit
    /// where some mirror lacks the chunk). May return an empty set when every target
    /// failed while other mirrors remain healthy.
    pub fn put_to(&self, id: &ChunkId, frame: &[u8], targets: MirrorSet) -> Result<MirrorSet> {
        self.removals.wait_until_kept(id);
        let mut got = MirrorSet::EMPTY;
        for slot in self.slots().iter().filter(|s| targets.contains(s.id)) {
            let Some(store) = slot.healthy_store() else {
                continue;
            };
            match store.put(id, frame) {
                Ok(()) => {
                    got.insert(slot.id);
                }
                Err(e) if is_caller_error(&e) => return Err(e),
                Err(e) => slot.mark_lost(e.to_string()),
            }
        }
        self.check_any_left()?;
        Ok(got)
    }

    /// Marks `ids` as being deleted by gc until the guard drops: puts of them wait
    /// (see `removals`). The caller has dropped their catalog rows first.
    pub fn begin_removal(&self, ids: &[ChunkId]) -> RemovalGuard {
        self.removals.begin(ids)
    }

    fn check_any_left(&self) -> Result<()> {
        if self.healthy().is_empty() {
            return Err(Error::NoMirror {
                reason: self.lost_reasons(),
            });
        }
        Ok(())
    }

    /// "mirror 0 (/a): reason; mirror 1 (/b): reason" over the lost mirrors.
    fn lost_reasons(&self) -> String {
        let reasons: Vec<String> = self
            .slots()
            .iter()
            .filter_map(|s| match &*s.state() {
                MirrorState::Lost { reason } => Some(format!("{}: {reason}", s.describe)),
                MirrorState::Healthy | MirrorState::Filling => None,
            })
            .collect();
        if reasons.is_empty() {
            "no mirror is configured".to_string()
        } else {
            reasons.join("; ")
        }
    }

    /// The verified plaintext of `id`. Reads the healthy mirrors in order (then, as a
    /// last resort, the lost ones) until a copy decodes and hashes to `id`. Every
    /// healthy mirror read before it whose copy was missing, unreadable or bad gets the
    /// good frame rewritten and synced (self-heal, counted per mirror); a heal that
    /// fails never fails the read. Errors: `CorruptChunk` naming the mirrors and
    /// reasons if some copy existed, else `MissingChunk`. Never returns wrong bytes.
    pub fn get_verified(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let slots = self.slots();
        let healthy: MirrorSet = slots
            .iter()
            .filter(|s| s.healthy_store().is_some())
            .map(|s| s.id)
            .collect();
        let order = slots
            .iter()
            .filter(|s| healthy.contains(s.id))
            .chain(slots.iter().filter(|s| !healthy.contains(s.id)));
        let mut to_heal: Vec<&Slot> = Vec::new();
        let mut bad_mirrors: Vec<&str> = Vec::new();
        let mut reasons: Vec<String> = Vec::new();
        let mut good = None;
        for slot in order {
            let Some(store) = slot.store.as_deref() else {
                continue;
            };
            let is_healthy = healthy.contains(slot.id);
            let reason = match store.get_frame(id) {
                Ok(None) => {
                    if is_healthy {
                        to_heal.push(slot);
                    }
                    continue;
                }
                Ok(Some(frame)) => match codec::decode(id, &frame) {
                    Ok(plain) => {
                        good = Some((frame, plain));
                        break;
                    }
                    Err(e) => e.to_string(),
                },
                // An unreadable copy (e.g. EIO on a bad sector) is a bad copy: rewriting
                // it is the repair.
                Err(e) => e.to_string(),
            };
            if is_healthy {
                to_heal.push(slot);
            }
            bad_mirrors.push(&slot.describe);
            reasons.push(reason);
        }
        let Some((frame, plain)) = good else {
            if bad_mirrors.is_empty() {
                return Err(Error::MissingChunk { id: *id });
            }
            return Err(Error::CorruptChunk {
                id: *id,
                mirror: bad_mirrors.join(", "),
                reason: reasons.join("; "),
            });
        };
        for slot in to_heal {
            let Some(store) = slot.healthy_store() else {
                continue;
            };
            match store.put(id, &frame).and_then(|()| store.sync()) {
                Ok(()) => {
                    slot.heals.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "{}: chunk {id} was missing or bad; rewrote it from a good copy",
                        slot.describe
                    );
                }
                // A full disk is not the mirror's fault; the copy stays bad for scrub.
                Err(e) if is_caller_error(&e) => {
                    log::warn!("{}: could not repair chunk {id}: {e}", slot.describe);
                }
                Err(e) => slot.mark_lost(format!("repairing chunk {id}: {e}")),
            }
        }
        Ok(plain)
    }
}

impl ObjectStore for MirrorStore {
    /// `mirrors 0,1,2` (every mirror, healthy or not).
    fn describe(&self) -> String {
        let all: MirrorSet = self.slots().iter().map(|s| s.id).collect();
        format!("mirrors {all}")
    }

    /// `put_all`, forgetting which mirrors got it.
    fn put(&self, id: &ChunkId, frame: &[u8]) -> Result<()> {
        self.put_all(id, frame).map(|_| ())
    }

    /// The first copy found on a healthy mirror, unverified. A mirror whose read fails is
    /// skipped; its error is returned only if no other mirror has a copy.
    fn get_frame(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        let mut last_err = None;
        for store in self.slots().iter().filter_map(|s| s.healthy_store()) {
            match store.get_frame(id) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// `get_verified`.
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.get_verified(id)
    }

    /// True if every healthy mirror holds a copy (the condition for a dedup hit).
    fn contains(&self, id: &ChunkId) -> Result<bool> {
        let mut any = false;
        for store in self.slots().iter().filter_map(|s| s.healthy_store()) {
            if !store.contains(id)? {
                return Ok(false);
            }
            any = true;
        }
        Ok(any)
    }

    /// Removes the copy from every healthy mirror; tries them all and returns the first
    /// error (a failed remove does not set a mirror aside).
    fn remove(&self, id: &ChunkId) -> Result<()> {
        let mut first_err = None;
        for store in self.slots().iter().filter_map(|s| s.healthy_store()) {
            if let Err(e) = store.remove(id) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The union of the healthy mirrors' lists, sorted, without duplicates.
    fn list(&self) -> Result<Vec<ChunkId>> {
        let mut ids = Vec::new();
        for store in self.slots().iter().filter_map(|s| s.healthy_store()) {
            ids.extend(store.list()?);
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Syncs every healthy mirror. A mirror whose sync fails is set aside (its recent
    /// puts may be lost), except for `ENOSPC`, which is returned with the mirror kept.
    /// Errors: `ENOSPC`; `NoMirror` when no mirror is left.
    fn sync(&self) -> Result<()> {
        let mut no_space = None;
        for slot in self.slots().iter() {
            let Some(store) = slot.healthy_store() else {
                continue;
            };
            match store.sync() {
                Ok(()) => {}
                Err(e) if is_caller_error(&e) => {
                    no_space.get_or_insert(e);
                }
                Err(e) => slot.mark_lost(e.to_string()),
            }
        }
        self.check_any_left()?;
        no_space.map_or(Ok(()), Err)
    }
}
