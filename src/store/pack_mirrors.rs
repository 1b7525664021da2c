//! Mirrors over packs (storage format 2): every disk folder holds the same packs, byte
//! for byte, so a chunk has one location (pack, offset, length) that is good on every
//! disk. The first implementation of `Redundancy`.
//!
//! Owns: which pack is being filled and when to start the next, the append of each
//! batch to every writable disk at the same offset, the one verify-and-repair loop
//! (reads and scrub), the disks' health, and filling a new or returning disk pack by
//! pack. A disk that fails an append or a sync is set aside (lost), as it can no
//! longer be trusted to hold what the catalog will say is there; a full disk is
//! reported to the caller instead and the disk stays in.
//!
//! Disks: healthy (read and written), filling (written from its attach on, read last,
//! trusted once `set_complete` says every older pack was copied in), lost (neither).
//! A disk joins only at a pack boundary: `attach` closes the pack being filled, so the
//! newcomer has every pack from then on whole, and `fill` copies the older ones.
//!
//! Lock scopes: `disks` is held only to clone or replace the list (no I/O); `filling`
//! is held for one batch's appends to every disk (writes into the page cache, no
//! fsync) so that every disk sees the batches in the same order; the syncs run
//! without it. A disk's `state` lock covers one read or change of its state.
//!
//! Knows nothing of the catalog: the caller records each location the puts return
//! (with its commit, after `sync`), and hands it back to read.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::mirror::{MirrorState, MirrorStatus};
use super::pack::{self, EntryCheck, EntryLoc, PACK_HEADER_LEN};
use super::packs::PackDir;
use super::redundancy::{DiskUsage, EntryScrub, Redundancy};
use crate::codec;
use crate::error::{Error, Result};
use crate::types::{ChunkId, Location, MirrorId, PackId, RepoId};

/// The size at which a pack is finished and the next one started. Measured with
/// `cargo bench --bench packs` (README): 16 MiB packs wrote 411-504 MB/s and read back
/// cold at 1,019-1,111 MB/s, against 269-322 / 795-827 for 4 MiB and 473-548 / 459-521
/// for 64 MiB, in three runs; small enough that compacting one pack is a short step,
/// and a sensible unit to stripe over disks and upload.
pub const TARGET_PACK_BYTES: u64 = 16 << 20;

/// The most bytes `read_many` asks of a disk in one read: neighbouring entries up to
/// this are one pread (a sequential reader's read-ahead window is cut into runs of
/// this size, so several load in parallel).
pub const READ_RUN_BYTES: u64 = 512 << 10;

/// The folder of a mirror that holds its packs.
pub const PACKS_DIR: &str = "packs";

fn entry(at: Location) -> EntryLoc {
    EntryLoc {
        offset: at.offset,
        len: at.len,
    }
}

struct Disk {
    id: MirrorId,
    folder: PathBuf,
    /// `None` when the folder could not even be opened.
    packs: Option<PackDir>,
    state: Mutex<MirrorState>,
    heals: AtomicU64,
}

impl Disk {
    fn state(&self) -> MutexGuard<'_, MirrorState> {
        // Replaced in one assignment: a poisoned lock still holds a whole state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn healthy(&self) -> bool {
        *self.state() == MirrorState::Healthy
    }

    /// Healthy or filling: every put reaches it.
    fn writable(&self) -> Option<&PackDir> {
        match *self.state() {
            MirrorState::Healthy | MirrorState::Filling => self.packs.as_ref(),
            MirrorState::Lost { .. } => None,
        }
    }

    fn describe(&self) -> String {
        format!("mirror {} ({})", self.id, self.folder.display())
    }

    /// Sets the disk aside; the first reason is kept.
    fn set_aside(&self, reason: String) {
        let mut state = self.state();
        if !matches!(*state, MirrorState::Lost { .. }) {
            log::warn!("{} is lost, set aside: {reason}", self.describe());
            *state = MirrorState::Lost { reason };
        }
    }

    /// Read order: healthy disks first, then filling ones, then lost ones.
    fn rank(&self) -> u8 {
        match *self.state() {
            MirrorState::Healthy => 0,
            MirrorState::Filling => 1,
            MirrorState::Lost { .. } => 2,
        }
    }
}

/// The pack being filled and where its next entry goes.
struct Filling {
    pack: Option<(PackId, u64)>,
    next_id: PackId,
    /// Packs that reached the target size: each disk finishes them at the next sync.
    full: Vec<PackId>,
}

/// Opens mirror folder `folder` as disk `id` of repository `repo`: its identity must
/// be exactly that (see `check_folder`), its `packs/` is created if missing.
fn open_disk(repo: RepoId, id: MirrorId, folder: &Path) -> Result<PackDir> {
    super::check_folder(folder, repo, id)?;
    PackDir::open(&folder.join(PACKS_DIR), repo).map_err(|e| Error::MirrorUnusable {
        id,
        path: folder.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A copy of a chunk that verified: the disk it came from, its codec frame and the
/// plaintext.
struct GoodCopy {
    disk: Arc<Disk>,
    frame: Vec<u8>,
    plain: Vec<u8>,
}

/// Several disks holding the same packs. Thread-safe.
pub struct PackMirrors {
    repo: RepoId,
    /// Scope: held only to clone or replace the `Arc` (no I/O under it).
    disks: Mutex<Arc<Vec<Arc<Disk>>>>,
    filling: Mutex<Filling>,
    target_pack_bytes: u64,
}

/// A failure that is the caller's to handle (a full disk), not the disk's fault.
fn is_caller_error(e: &Error) -> bool {
    e.is_no_space()
}

impl PackMirrors {
    /// The mirror folders `folders` (id, folder, and whether the catalog counts it
    /// complete) of repository `repo`. A folder that cannot be opened starts lost with
    /// the reason; an incomplete one starts filling. New packs are numbered from
    /// `first_free` on (the catalog's next unused number), skipping any number a disk
    /// already has a file for (a pack a crash left before its commit named it). A
    /// pack is started anew once the one being filled holds `target_pack_bytes`.
    /// Errors: `NoMirror` when no folder is usable.
    pub fn open(
        repo: RepoId,
        folders: &[(MirrorId, PathBuf, bool)],
        first_free: PackId,
        target_pack_bytes: u64,
    ) -> Result<PackMirrors> {
        let disks: Vec<Arc<Disk>> = folders
            .iter()
            .map(|(id, folder, complete)| {
                let (packs, state) = match open_disk(repo, *id, folder) {
                    Ok(p) if *complete => (Some(p), MirrorState::Healthy),
                    Ok(p) => (Some(p), MirrorState::Filling),
                    Err(e) => (
                        None,
                        MirrorState::Lost {
                            reason: e.to_string(),
                        },
                    ),
                };
                Arc::new(Disk {
                    id: *id,
                    folder: folder.clone(),
                    packs,
                    state: Mutex::new(state),
                    heals: AtomicU64::new(0),
                })
            })
            .collect();
        let store = PackMirrors {
            repo,
            disks: Mutex::new(Arc::new(disks)),
            filling: Mutex::new(Filling {
                pack: None,
                next_id: first_free,
                full: Vec::new(),
            }),
            target_pack_bytes,
        };
        if !store.disks().iter().any(|d| d.healthy()) {
            return Err(store.no_healthy_disk());
        }
        Ok(store)
    }

    fn disks(&self) -> Arc<Vec<Arc<Disk>>> {
        self.disks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn disk(&self, id: MirrorId) -> Result<Arc<Disk>> {
        self.disks()
            .iter()
            .find(|d| d.id == id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("mirror {id}")))
    }

    /// The disks in read order.
    fn read_order(&self) -> Vec<Arc<Disk>> {
        let mut disks: Vec<Arc<Disk>> = self.disks().iter().cloned().collect();
        disks.sort_by_key(|d| d.rank());
        disks
    }

    fn filling(&self) -> MutexGuard<'_, Filling> {
        // Every change is made whole before the next line can fail.
        self.filling.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn no_healthy_disk(&self) -> Error {
        let reasons: Vec<String> = self
            .disks()
            .iter()
            .map(|d| format!("{}: {}", d.describe(), *d.state()))
            .collect();
        Error::NoMirror {
            reason: if reasons.is_empty() {
                "no mirror is configured".into()
            } else {
                reasons.join("; ")
            },
        }
    }

    /// Closes the pack being filled: the next put starts a new one.
    fn close_open_pack(filling: &mut Filling) {
        if let Some((full, _)) = filling.pack.take() {
            filling.full.push(full);
        }
    }

    fn repair(&self, source: &Disk, bad: &Disk, id: &ChunkId, at: Location, whole_pack: bool) -> Result<()> {
        let (Some(from), Some(to)) = (source.packs.as_ref(), bad.packs.as_ref()) else {
            return Err(Error::MissingChunk { id: *id });
        };
        if whole_pack {
            // The good copy of the pack, up to where this process has written it (a
            // pack being filled is restored as far as the entries that exist).
            let len = from.file_len(at.pack).ok_or(Error::MissingChunk { id: *id })?;
            let bytes = from
                .read_run(at.pack, 0, len as usize)?
                .ok_or(Error::MissingChunk { id: *id })?;
            return to.install(at.pack, &bytes);
        }
        let good = from
            .read_run(at.pack, at.offset, at.len as usize)?
            .ok_or(Error::MissingChunk { id: *id })?;
        to.repair_entry(at.pack, at.offset, &good)
    }

    /// Reads the disks in read order until a copy decodes and hashes to `id`; every
    /// writable disk read before it whose copy was bad gets the good entry written over
    /// the bad one, or the whole pack restored from the good disk when its copy is
    /// missing or cut short (counted as heals; a repair that fails never fails the
    /// read). Errors: `CorruptChunk` naming each disk and why, or `MissingChunk` when
    /// no disk has the pack.
    fn read_repairing(&self, id: &ChunkId, at: Location) -> Result<GoodCopy> {
        let (good, bad, _, some_disk_has_the_pack) = self.read_copies(id, at, false);
        let Some(good) = good else {
            if !some_disk_has_the_pack {
                return Err(Error::MissingChunk { id: *id });
            }
            let reasons: Vec<String> = bad
                .iter()
                .map(|(d, _, why)| format!("{}: {why}", d.describe()))
                .collect();
            return Err(Error::CorruptChunk {
                id: *id,
                mirror: "every mirror".into(),
                reason: reasons.join("; "),
            });
        };
        for (disk, whole_pack, _) in bad.iter().filter(|(d, _, _)| d.writable().is_some()) {
            match self.repair(&good.disk, disk, id, at, *whole_pack) {
                Ok(()) => {
                    disk.heals.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "{}: chunk {id} in pack {} was missing or bad; rewrote it from {}",
                        disk.describe(),
                        at.pack,
                        good.disk.describe()
                    );
                }
                Err(e) if is_caller_error(&e) => {
                    log::warn!("{}: could not repair chunk {id}: {e}", disk.describe())
                }
                Err(e) => disk.set_aside(format!("repairing pack {}: {e}", at.pack)),
            }
        }
        Ok(good)
    }

    /// Reads `id` at `at` from each disk in read order: every copy with `all`, else
    /// up to the first good one. Returns the good plaintext and its disk, the disks
    /// whose copy was bad (with whether the whole pack is missing or cut short, and
    /// why), and whether any disk had the pack at all.
    #[allow(clippy::type_complexity)]
    fn read_copies(
        &self,
        id: &ChunkId,
        at: Location,
        all: bool,
    ) -> (
        Option<GoodCopy>,
        Vec<(Arc<Disk>, bool, String)>,
        Vec<MirrorId>,
        bool,
    ) {
        let mut good: Option<GoodCopy> = None;
        let mut bad = Vec::new();
        let mut good_disks = Vec::new();
        let mut some_disk_has_the_pack = false;
        // Scrub (`all`) checks every byte of each copy, its checksum among them; a
        // read lets the decode's hash verify the frame it uses.
        let check = if all {
            EntryCheck::Checksum
        } else {
            EntryCheck::FrameVerifiedByDecode
        };
        for disk in self.read_order() {
            let Some(packs) = disk.packs.as_ref() else {
                continue;
            };
            let read = packs.read_frame(at.pack, entry(at), id, check);
            some_disk_has_the_pack |= !matches!(read, Ok(None));
            let (whole_pack, reason) = match read {
                Ok(Some(frame)) => match codec::decode(id, &frame) {
                    Ok(plain) => {
                        good_disks.push(disk.id);
                        if good.is_none() {
                            good = Some(GoodCopy {
                                disk: disk.clone(),
                                frame,
                                plain,
                            });
                        }
                        if !all {
                            break;
                        }
                        continue;
                    }
                    Err(e) => (false, e.to_string()),
                },
                Ok(None) => (true, format!("pack {} is missing", at.pack)),
                Err(e) => {
                    // A copy cut short before the entry's end is restored whole.
                    let short = packs.file_len(at.pack).is_none_or(|len| len < at.end());
                    (short, e.to_string())
                }
            };
            bad.push((disk, whole_pack, reason));
        }
        (good, bad, good_disks, some_disk_has_the_pack)
    }
}

/// Cuts `wanted` into runs to read in one go each: back-to-back entries of one pack,
/// at most `max_bytes` a run (an entry bigger than that is a run of its own). Each run
/// is the range of indexes of `wanted` it covers.
fn runs(wanted: &[(ChunkId, Location)], max_bytes: u64) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, (_, at)) in wanted.iter().enumerate() {
        if let Some(run) = out.last_mut() {
            let (first, last) = (wanted[run.start].1, wanted[run.end - 1].1);
            if at.pack == last.pack && at.offset == last.end() && at.end() - first.offset <= max_bytes {
                run.end = i + 1;
                continue;
            }
        }
        out.push(i..i + 1);
    }
    out
}

impl PackMirrors {
    /// The chunks of one run (back-to-back entries of one pack) read with one pread
    /// from the first disk in read order, each entry checked and decoded; any entry
    /// that fails there (all, when the pack is missing or unreadable there) is read
    /// again alone through `read`, which tries the other disks and repairs this one.
    fn read_run(&self, run: &[(ChunkId, Location)]) -> Vec<Result<Vec<u8>>> {
        let (first, last) = (run[0].1, run[run.len() - 1].1);
        let bytes = self
            .read_order()
            .into_iter()
            .next()
            .filter(|d| d.healthy())
            .and_then(|disk| {
                let packs = disk.packs.as_ref()?;
                match packs.read_run_direct(first.pack, first.offset, (last.end() - first.offset) as usize) {
                    Ok(Some(bytes)) => Some((disk.clone(), bytes)),
                    _ => None,
                }
            });
        run.iter()
            .map(|(id, at)| {
                let decoded = bytes.as_ref().and_then(|(disk, bytes)| {
                    let from = (at.offset - first.offset) as usize;
                    let raw = bytes.bytes().get(from..from + at.len as usize)?;
                    let frame = disk.packs.as_ref()?.frame_in(
                        at.pack,
                        entry(*at),
                        id,
                        raw,
                        EntryCheck::FrameVerifiedByDecode,
                    );
                    let frame = frame.ok()?;
                    codec::decode(id, frame).ok()
                });
                match decoded {
                    Some(plain) => Ok(plain),
                    None => self.read(id, *at),
                }
            })
            .collect()
    }
}

impl Redundancy for PackMirrors {
    fn put(&self, chunks: &[(ChunkId, &[u8])]) -> Result<Vec<Location>> {
        let mut bytes = Vec::new();
        let mut lens = Vec::with_capacity(chunks.len());
        for (id, frame) in chunks {
            let before = bytes.len();
            pack::encode_entry(id, frame, &mut bytes);
            lens.push((bytes.len() - before) as u32);
        }
        // The disks are read under the filling lock, which `attach` holds while it
        // closes the open pack and adds a disk: a list read before could start a pack
        // without the newcomer, which the next batch, seeing it, would then append to
        // there (a mirror added beside a writer was set aside that way).
        let mut filling = self.filling();
        let disks = self.disks();
        let (pack, offset) = match filling.pack {
            Some((pack, len))
                if len == PACK_HEADER_LEN || len + bytes.len() as u64 <= self.target_pack_bytes =>
            {
                (pack, len)
            }
            _ => {
                Self::close_open_pack(&mut filling);
                let mut id = filling.next_id;
                while disks
                    .iter()
                    .filter_map(|d| d.packs.as_ref())
                    .any(|p| p.path(id).exists())
                {
                    id = PackId(id.0 + 1);
                }
                filling.next_id = PackId(id.0 + 1);
                (id, PACK_HEADER_LEN)
            }
        };
        let mut written_healthy = 0;
        for disk in disks.iter() {
            let Some(packs) = disk.writable() else { continue };
            match packs.append(pack, offset, &bytes) {
                Ok(()) => written_healthy += usize::from(disk.healthy()),
                Err(e) if is_caller_error(&e) => {
                    // Nothing of the batch counts: the disks that took it hold dead
                    // bytes, and the next batch starts a new pack so offsets agree.
                    filling.pack = None;
                    filling.full.push(pack);
                    return Err(e);
                }
                Err(e) => disk.set_aside(format!("writing pack {pack}: {e}")),
            }
        }
        if written_healthy == 0 {
            // A pack the healthy disks lack must not take further batches.
            filling.pack = None;
            return Err(self.no_healthy_disk());
        }
        filling.pack = Some((pack, offset + bytes.len() as u64));
        drop(filling);
        let mut at = offset;
        Ok(lens
            .into_iter()
            .map(|len| {
                let loc = Location {
                    pack,
                    offset: at,
                    len,
                };
                at += u64::from(len);
                loc
            })
            .collect())
    }

    /// fdatasync of the packs written on every writable disk, never `syncfs`. A disk
    /// whose sync fails is set aside; the call fails only when no healthy disk is left.
    fn sync(&self) -> Result<()> {
        let full = std::mem::take(&mut self.filling().full);
        for disk in self.disks().iter() {
            let Some(packs) = disk.writable() else { continue };
            let result = packs
                .sync()
                .and_then(|()| full.iter().try_for_each(|p| packs.finish(*p)));
            match result {
                // Files that are open keep taking writes after their folder is
                // deleted or unmounted: the identity file tells that the disk is
                // still there (one stat per disk and sync).
                Ok(()) if !disk.folder.join(super::IDENTITY_FILE).exists() => disk.set_aside(format!(
                    "its folder {} is gone (no {} in it)",
                    disk.folder.display(),
                    super::IDENTITY_FILE
                )),
                Ok(()) => {}
                Err(e) if is_caller_error(&e) => return Err(e),
                Err(e) => disk.set_aside(format!("syncing packs: {e}")),
            }
        }
        if !self.disks().iter().any(|d| d.healthy()) {
            return Err(self.no_healthy_disk());
        }
        Ok(())
    }

    fn read(&self, id: &ChunkId, at: Location) -> Result<Vec<u8>> {
        self.read_repairing(id, at).map(|good| good.plain)
    }

    fn read_many(&self, wanted: &[(ChunkId, Location)]) -> Vec<Result<Vec<u8>>> {
        let mut out = Vec::with_capacity(wanted.len());
        for run in runs(wanted, READ_RUN_BYTES) {
            if run.len() == 1 {
                let (id, at) = &wanted[run.start];
                out.push(self.read(id, *at));
            } else {
                out.extend(self.read_run(&wanted[run]));
            }
        }
        out
    }

    fn read_frame(&self, id: &ChunkId, at: Location) -> Result<Vec<u8>> {
        self.read_repairing(id, at).map(|good| good.frame)
    }

    fn scrub(&self, id: &ChunkId, at: Location, repair: bool) -> EntryScrub {
        let (good, bad, good_disks, _) = self.read_copies(id, at, true);
        let mut report = EntryScrub {
            good: good_disks,
            ..EntryScrub::default()
        };
        for (disk, whole_pack, _) in &bad {
            // Missing: no pack file, or one that ends before the entry does (a torn
            // tail, a copy cut short); anything else there is a corrupt copy.
            let ends_before = |p: &PackDir| p.file_len(at.pack).is_none_or(|len| len < at.end());
            if *whole_pack && disk.packs.as_ref().is_some_and(ends_before) {
                report.missing.push(disk.id);
            } else {
                report.corrupt.push(disk.id);
            }
            let Some(good) = &good else { continue };
            if disk.packs.is_none() || !repair {
                continue;
            }
            match self.repair(&good.disk, disk, id, at, *whole_pack) {
                Ok(()) => {
                    disk.heals.fetch_add(1, Ordering::Relaxed);
                    report.repaired.push(disk.id);
                }
                Err(e) => report.failed.push((disk.id, e.to_string())),
            }
        }
        report
    }

    fn status(&self) -> Vec<MirrorStatus> {
        self.disks()
            .iter()
            .map(|d| MirrorStatus {
                id: d.id,
                describe: d.describe(),
                state: d.state().clone(),
                heals: d.heals.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn pack_lengths(&self, pack: PackId) -> Vec<(MirrorId, bool, Option<u64>)> {
        self.disks()
            .iter()
            .filter_map(|d| Some((d.id, d.healthy(), d.packs.as_ref()?.file_len(pack))))
            .collect()
    }

    fn open_pack(&self) -> Option<PackId> {
        self.filling().pack.map(|(p, _)| p)
    }

    fn close_pack(&self) {
        Self::close_open_pack(&mut self.filling());
    }

    fn pack_ids(&self) -> Result<Vec<PackId>> {
        let mut all = std::collections::BTreeSet::new();
        for disk in self.disks().iter() {
            let Some(packs) = disk.writable() else { continue };
            all.extend(packs.list()?);
        }
        Ok(all.into_iter().collect())
    }

    fn scan_entries(&self, visit: &mut dyn FnMut(ChunkId, Location)) -> Result<u64> {
        let mut scanned = 0;
        let disks = self.read_order();
        for pack in self.pack_ids()? {
            let scan = disks
                .iter()
                .filter_map(|d| d.writable())
                .filter(|p| p.file_len(pack).is_some())
                .find_map(|p| match p.scan(pack) {
                    Ok(scan) => Some(scan),
                    Err(e) => {
                        log::warn!("pack {pack} in {}: {e}", p.root().display());
                        None
                    }
                });
            let Some(scan) = scan else { continue };
            for e in &scan.entries {
                visit(
                    e.id,
                    Location {
                        pack,
                        offset: e.loc.offset,
                        len: e.loc.len,
                    },
                );
            }
            scanned += 1;
        }
        Ok(scanned)
    }

    fn delete_packs(&self, ids: &[PackId]) -> Result<()> {
        for disk in self.disks().iter() {
            let Some(packs) = disk.packs.as_ref() else {
                continue;
            };
            for id in ids {
                if let Err(e) = packs.remove(*id) {
                    if disk.writable().is_some() {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    fn disk_usage(&self, id: MirrorId) -> Result<DiskUsage> {
        let disk = self.disk(id)?;
        let Some(packs) = disk.packs.as_ref() else {
            return Ok(DiskUsage::default());
        };
        let mut usage = DiskUsage::default();
        for p in packs.list()? {
            usage.packs += 1;
            usage.bytes += packs.file_len(p).unwrap_or(0);
        }
        usage.free = rustix::fs::statvfs(&disk.folder)
            .ok()
            .map(|s| s.f_bavail * s.f_frsize);
        Ok(usage)
    }

    fn attach(&self, id: MirrorId, folder: &Path) -> Result<()> {
        let packs = open_disk(self.repo, id, folder)?;
        let disk = Arc::new(Disk {
            id,
            folder: folder.to_path_buf(),
            packs: Some(packs),
            state: Mutex::new(MirrorState::Filling),
            heals: AtomicU64::new(0),
        });
        // Under the filling lock: no batch is half-appended, and the next one starts a
        // pack the newcomer gets whole.
        let mut filling = self.filling();
        Self::close_open_pack(&mut filling);
        let mut guard = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        let mut disks: Vec<Arc<Disk>> = guard.as_ref().clone();
        match disks.iter().position(|d| d.id == id) {
            Some(i) => {
                disk.heals
                    .store(disks[i].heals.load(Ordering::Relaxed), Ordering::Relaxed);
                disks[i] = disk;
            }
            None => disks.push(disk),
        }
        *guard = Arc::new(disks);
        Ok(())
    }

    fn fill(&self, id: MirrorId, pack: PackId) -> Result<u64> {
        let target = self.disk(id)?;
        let Some(to) = target.writable() else {
            return Err(Error::MirrorUnusable {
                id,
                path: target.folder.clone(),
                reason: format!("{}", *target.state()),
            });
        };
        let source = self
            .read_order()
            .into_iter()
            .filter(|d| d.id != id && d.healthy())
            .find(|d| d.packs.as_ref().is_some_and(|p| p.file_len(pack).is_some()));
        let Some(source) = source else {
            return Err(Error::CorruptPack {
                path: to.path(pack),
                reason: "no healthy mirror holds this pack to copy it from".into(),
            });
        };
        let from = source.packs.as_ref().expect("a source has packs");
        let len = from.file_len(pack).unwrap_or(0);
        if to.file_len(pack) == Some(len) {
            to.make_durable(pack)?;
            return Ok(0);
        }
        let bytes = from
            .read_run(pack, 0, len as usize)?
            .ok_or_else(|| Error::CorruptPack {
                path: from.path(pack),
                reason: "it went away while being copied".into(),
            })?;
        to.install(pack, &bytes)?;
        Ok(bytes.len() as u64)
    }

    fn set_complete(&self, id: MirrorId) -> Result<()> {
        let disk = self.disk(id)?;
        let mut state = disk.state();
        if *state == MirrorState::Filling {
            *state = MirrorState::Healthy;
        }
        Ok(())
    }

    fn detach(&self, id: MirrorId) -> Result<()> {
        let mut guard = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        if !guard.iter().any(|d| d.id == id) {
            return Err(Error::NotFound(format!("mirror {id}")));
        }
        let disks: Vec<Arc<Disk>> = guard.iter().filter(|d| d.id != id).cloned().collect();
        if !disks.iter().any(|d| d.healthy()) {
            return Err(Error::NoMirror {
                reason: format!("mirror {id} is the last healthy one"),
            });
        }
        *guard = Arc::new(disks);
        Ok(())
    }

    fn mark_lost(&self, id: MirrorId, reason: &str) {
        if let Ok(disk) = self.disk(id) {
            disk.set_aside(reason.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const REPO: RepoId = RepoId([9; 16]);

    struct Fixture {
        _dir: tempfile::TempDir,
        folders: Vec<PathBuf>,
        store: PackMirrors,
    }

    fn fixture(target: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mirrors: Vec<(MirrorId, PathBuf, bool)> = (0..2)
            .map(|i| (MirrorId(i), dir.path().join(format!("m{i}")), true))
            .collect();
        for (id, folder, _) in &mirrors {
            crate::store::claim_folder(folder, REPO, *id).unwrap();
        }
        let folders = mirrors.iter().map(|(_, f, _)| f.join(PACKS_DIR)).collect();
        let store = PackMirrors::open(REPO, &mirrors, PackId(1), target).unwrap();
        Fixture {
            _dir: dir,
            folders,
            store,
        }
    }

    fn chunks(first: u32, n: u32) -> Vec<(ChunkId, Vec<u8>, Vec<u8>)> {
        (first..first + n)
            .map(|i| {
                let plain = format!("chunk number {i} ").repeat(50 + i as usize).into_bytes();
                let encoded = codec::encode(&plain, Some(1));
                (encoded.id, encoded.frame, plain)
            })
            .collect()
    }

    fn put(f: &Fixture, batch: &[(ChunkId, Vec<u8>, Vec<u8>)]) -> Vec<Location> {
        let refs: Vec<(ChunkId, &[u8])> = batch
            .iter()
            .map(|(id, frame, _)| (*id, frame.as_slice()))
            .collect();
        f.store.put(&refs).unwrap()
    }

    fn pack_file(f: &Fixture, disk: usize, pack: PackId) -> PathBuf {
        pack::pack_path(&f.folders[disk], pack)
    }

    #[test]
    fn a_disk_attached_beside_writers_takes_every_pack_begun_after_it() {
        // Two writers put batches while disks are attached one after another: no
        // batch may reach an attached disk in a pack it did not see begin (it would
        // refuse the append and be set aside).
        let f = fixture(64 << 10);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for w in 0..2u32 {
                let (f, stop) = (&f, &stop);
                s.spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        put(f, &chunks(1000 * w + i % 900, 3));
                        i += 3;
                    }
                });
            }
            for n in 2..40u32 {
                let folder = f._dir.path().join(format!("m{n}"));
                crate::store::claim_folder(&folder, REPO, MirrorId(n)).unwrap();
                f.store.attach(MirrorId(n), &folder).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            stop.store(true, Ordering::Relaxed);
        });
        for status in f.store.status() {
            assert!(
                matches!(status.state, MirrorState::Healthy | MirrorState::Filling),
                "{}: {:?}",
                status.describe,
                status.state
            );
        }
    }

    #[test]
    fn every_disk_holds_the_same_packs_and_reads_come_back_verified() {
        let f = fixture(1 << 20);
        let batch = chunks(0, 30);
        let locs = put(&f, &batch);
        f.store.sync().unwrap();
        for ((id, _, plain), at) in batch.iter().zip(&locs) {
            assert_eq!(&f.store.read(id, *at).unwrap(), plain);
        }
        let pack = locs[0].pack;
        assert!(locs.iter().all(|l| l.pack == pack), "one batch, one pack");
        assert_eq!(
            std::fs::read(pack_file(&f, 0, pack)).unwrap(),
            std::fs::read(pack_file(&f, 1, pack)).unwrap()
        );
    }

    /// `n` incompressible chunks of `len` bytes, from `seed`.
    fn noise_chunks(seed: u64, n: usize, len: usize) -> Vec<(ChunkId, Vec<u8>, Vec<u8>)> {
        (0..n as u64)
            .map(|i| {
                let plain = crate::testing::noise(seed * 1000 + i, len);
                let encoded = codec::encode(&plain, Some(1));
                (encoded.id, encoded.frame, plain)
            })
            .collect()
    }

    #[test]
    fn a_full_pack_is_finished_and_the_next_batch_starts_a_new_one() {
        // Batches of 5 entries of 1,000 B plaintext (1,064 B each with the frame and
        // entry headers): two fit in a 12,000 B pack, a third does not.
        let f = fixture(12_000);
        let mut packs = Vec::new();
        for round in 0..6 {
            let batch = noise_chunks(round + 1, 5, 1000);
            let locs = put(&f, &batch);
            assert!(
                locs.iter().all(|l| l.pack == locs[0].pack),
                "a batch stays together"
            );
            packs.push(locs[0].pack);
        }
        f.store.sync().unwrap();
        assert_eq!(packs, [1, 1, 2, 2, 3, 3].map(PackId));
        for disk in 0..2 {
            for p in 1..=3 {
                let len = std::fs::metadata(pack_file(&f, disk, PackId(p))).unwrap().len();
                assert_eq!(len, PACK_HEADER_LEN + 10 * 1064, "pack {p} on disk {disk}");
            }
        }
        // One batch bigger than the target gets a pack of its own.
        let big = put(&f, &noise_chunks(9, 20, 1000));
        assert_eq!(big[0].pack, PackId(4));
        assert_eq!(put(&f, &noise_chunks(10, 1, 1000))[0].pack, PackId(5));
    }

    #[test]
    fn runs_are_back_to_back_entries_of_one_pack_up_to_the_size() {
        let at = |pack, offset, len| {
            (
                ChunkId::of(b"x"),
                Location {
                    pack: PackId(pack),
                    offset,
                    len,
                },
            )
        };
        let wanted = [
            at(1, 48, 100),
            at(1, 148, 100),
            at(1, 248, 100),  // a run of three
            at(1, 400, 100),  // a gap
            at(2, 500, 100),  // another pack
            at(2, 600, 300),  // past 350 bytes from 500
            at(2, 900, 1000), // bigger than a run: alone
            at(2, 1900, 50),
        ];
        assert_eq!(runs(&wanted, 350), [0..3, 3..4, 4..5, 5..6, 6..7, 7..8]);
        assert_eq!(runs(&wanted, 10_000), [0..3, 3..4, 4..8]);
        assert!(runs(&[], 400).is_empty());
    }

    #[test]
    fn neighbours_read_together_come_back_verified_and_a_bad_one_is_repaired() {
        // Two packs of several entries each, read as one list.
        let f = fixture(5_000);
        let mut batch = noise_chunks(1, 4, 1000);
        let mut locs = put(&f, &batch);
        let second = noise_chunks(2, 4, 1000);
        locs.extend(put(&f, &second));
        batch.extend(second);
        f.store.sync().unwrap();
        assert_ne!(locs[0].pack, locs[7].pack, "two packs");
        // On the disk read first, a flipped byte in the middle of the first run, and
        // the second pack gone (before any read: open handles would still read it).
        let path = pack_file(&f, 0, locs[2].pack);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[locs[2].offset as usize + 100] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        std::fs::remove_file(pack_file(&f, 0, locs[7].pack)).unwrap();
        let wanted: Vec<(ChunkId, Location)> = batch
            .iter()
            .zip(&locs)
            .map(|((id, _, _), at)| (*id, *at))
            .collect();
        let read = f.store.read_many(&wanted);
        assert_eq!(read.len(), batch.len());
        for (got, (_, _, plain)) in read.into_iter().zip(&batch) {
            assert_eq!(&got.unwrap(), plain);
        }
        // Both repaired from the other disk: the entry in place, the pack whole.
        for pack in [locs[2].pack, locs[7].pack] {
            assert_eq!(
                std::fs::read(pack_file(&f, 0, pack)).unwrap(),
                std::fs::read(pack_file(&f, 1, pack)).unwrap(),
                "pack {pack}"
            );
        }
        assert!(f.store.status()[0].heals >= 2, "{:?}", f.store.status()[0]);
    }

    #[test]
    fn a_flipped_byte_on_one_disk_is_read_past_and_rewritten_in_place() {
        let f = fixture(1 << 20);
        let batch = chunks(0, 4);
        let locs = put(&f, &batch);
        f.store.sync().unwrap();
        let path = pack_file(&f, 0, locs[2].pack);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[locs[2].offset as usize + 70] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(f.store.read(&batch[2].0, locs[2]).unwrap(), batch[2].2);
        assert_eq!(f.store.status()[0].heals, 1);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(pack_file(&f, 1, locs[2].pack)).unwrap()
        );
        assert_eq!(f.store.status()[0].state, MirrorState::Healthy);
    }

    #[test]
    fn a_missing_pack_on_one_disk_is_restored_whole_from_the_other() {
        let f = fixture(1 << 20);
        let batch = chunks(0, 4);
        let locs = put(&f, &batch);
        f.store.sync().unwrap();
        std::fs::remove_file(pack_file(&f, 0, locs[0].pack)).unwrap();
        assert_eq!(f.store.read(&batch[1].0, locs[1]).unwrap(), batch[1].2);
        assert_eq!(
            std::fs::read(pack_file(&f, 0, locs[0].pack)).unwrap(),
            std::fs::read(pack_file(&f, 1, locs[0].pack)).unwrap()
        );
        // Every other chunk of it reads from the first disk again.
        for ((id, _, plain), at) in batch.iter().zip(&locs) {
            assert_eq!(&f.store.read(id, *at).unwrap(), plain);
        }
        assert_eq!(f.store.status()[0].heals, 1);
    }

    #[test]
    fn a_copy_cut_short_before_the_entry_is_restored_whole() {
        let f = fixture(1 << 20);
        let batch = chunks(0, 6);
        let locs = put(&f, &batch);
        f.store.sync().unwrap();
        let path = pack_file(&f, 0, locs[0].pack);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(locs[3].offset + 5).unwrap();
        assert_eq!(f.store.read(&batch[4].0, locs[4]).unwrap(), batch[4].2);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(pack_file(&f, 1, locs[0].pack)).unwrap()
        );
    }

    #[test]
    fn bad_everywhere_is_an_error_naming_each_disk_and_never_wrong_bytes() {
        let f = fixture(1 << 20);
        let batch = chunks(0, 2);
        let locs = put(&f, &batch);
        f.store.sync().unwrap();
        for disk in 0..2 {
            let path = pack_file(&f, disk, locs[0].pack);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[locs[0].offset as usize + 45 + disk] ^= 1;
            std::fs::write(&path, &bytes).unwrap();
        }
        let err = f.store.read(&batch[0].0, locs[0]).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::CorruptChunk { .. }), "{text}");
        assert!(text.contains("mirror 0") && text.contains("mirror 1"), "{text}");
        // The other chunk of the pack is fine.
        assert_eq!(f.store.read(&batch[1].0, locs[1]).unwrap(), batch[1].2);
        // A pack no disk has: missing, not corrupt.
        let nowhere = Location {
            pack: PackId(999),
            ..locs[1]
        };
        assert!(matches!(
            f.store.read(&batch[1].0, nowhere),
            Err(Error::MissingChunk { .. })
        ));
    }

    #[test]
    fn a_disk_that_fails_a_write_is_set_aside_and_the_other_goes_on() {
        let f = fixture(4096);
        let first = chunks(0, 3);
        let first_locs = put(&f, &first);
        f.store.sync().unwrap();
        // The second disk's folder goes away (the disk is pulled): the next pack
        // cannot be created there.
        std::fs::remove_dir_all(&f.folders[1]).unwrap();
        std::fs::write(&f.folders[1], b"not a folder").unwrap();
        let second = chunks(3, 40);
        let second_locs = put(&f, &second);
        assert_ne!(second_locs[0].pack, first_locs[0].pack, "a new pack was started");
        f.store.sync().unwrap();
        let status = f.store.status();
        assert_eq!(status[0].state, MirrorState::Healthy);
        assert!(
            matches!(&status[1].state, MirrorState::Lost { reason } if reason.contains("writing pack")),
            "{status:?}"
        );
        for ((id, _, plain), at) in first
            .iter()
            .zip(&first_locs)
            .chain(second.iter().zip(&second_locs))
        {
            assert_eq!(&f.store.read(id, *at).unwrap(), plain);
        }
        // With the last disk gone too, a put fails and says why for each.
        std::fs::remove_dir_all(&f.folders[0]).unwrap();
        std::fs::write(&f.folders[0], b"not a folder").unwrap();
        let refs: Vec<(ChunkId, &[u8])> = chunks(50, 40)
            .iter()
            .map(|(id, frame, _)| (*id, frame.clone().leak() as &[u8]))
            .collect();
        let err = f.store.put(&refs).unwrap_err();
        assert!(matches!(err, Error::NoMirror { .. }), "{err}");
        assert!(err.to_string().contains("mirror 1"), "{err}");
    }

    #[test]
    fn a_pack_number_a_crash_left_on_disk_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("m0");
        crate::store::claim_folder(&folder, REPO, MirrorId(0)).unwrap();
        let leftover = PackDir::open(&folder.join(PACKS_DIR), REPO).unwrap();
        leftover.append(PackId(1), PACK_HEADER_LEN, b"").unwrap();
        leftover.sync().unwrap();
        let store = PackMirrors::open(REPO, &[(MirrorId(0), folder, true)], PackId(1), 1 << 20).unwrap();
        let batch = chunks(0, 1);
        let refs: Vec<(ChunkId, &[u8])> = batch
            .iter()
            .map(|(id, frame, _)| (*id, frame.as_slice()))
            .collect();
        let locs = store.put(&refs).unwrap();
        assert_eq!(locs[0].pack, PackId(2));
        store.sync().unwrap();
        assert_eq!(store.read(&batch[0].0, locs[0]).unwrap(), batch[0].2);
    }
}
