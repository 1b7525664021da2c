//! Mirrors over packs (storage format 2): every disk folder holds the same packs, byte
//! for byte, so a chunk has one location (pack, offset, length) that is good on every
//! disk. The first implementation of the redundancy interface that parity and remotes
//! will share: it takes chunks, says where they are, makes them durable, reads them
//! back verified, repairs a bad copy from a good one, and reports each disk's health.
//!
//! Owns: which pack is being filled and when to start the next, the append of each
//! batch to every healthy disk at the same offset, the one verify-and-repair loop of
//! reads, and the disks' health. A disk that fails an append or a sync is set aside
//! (lost), as it can no longer be trusted to hold what the catalog will say is there;
//! a full disk is reported to the caller instead and the disk stays in.
//!
//! Lock scopes: `filling` is held for one batch's appends to every disk (writes into
//! the page cache, no fsync) so that every disk sees the batches in the same order;
//! the syncs run without it. A disk's `state` lock covers one read or change of its
//! state.
//!
//! Knows nothing of the catalog: the caller records each location the puts return
//! (with its commit, after `sync`), and hands it back to read.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::mirror::{MirrorState, MirrorStatus};
use super::pack::{self, EntryLoc, PACK_HEADER_LEN};
use super::packs::PackDir;
use crate::codec;
use crate::error::{Error, Result};
use crate::types::{ChunkId, MirrorId, PackId, RepoId};

/// The size at which a pack is finished and the next one started. Measured with
/// `cargo bench --bench packs` (README): 16 MiB packs wrote 411-504 MB/s and read back
/// cold at 1,019-1,111 MB/s, against 269-322 / 795-827 for 4 MiB and 473-548 / 459-521
/// for 64 MiB, in three runs; small enough that compacting one pack is a short step,
/// and a sensible unit to stripe over disks and upload.
pub const TARGET_PACK_BYTES: u64 = 16 << 20;

/// Where a chunk's entry lies, the same on every disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// The pack.
    pub pack: PackId,
    /// The entry inside it.
    pub entry: EntryLoc,
}

struct Disk {
    id: MirrorId,
    packs: PackDir,
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

    fn describe(&self) -> String {
        format!("mirror {} ({})", self.id, self.packs.root().display())
    }

    /// Sets the disk aside; the first reason is kept.
    fn set_aside(&self, reason: String) {
        let mut state = self.state();
        if *state == MirrorState::Healthy {
            log::warn!("{} set aside: {reason}", self.describe());
            *state = MirrorState::Lost { reason };
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

/// Several disks holding the same packs. Thread-safe.
pub struct PackMirrors {
    disks: Vec<Disk>,
    filling: Mutex<Filling>,
    target_pack_bytes: u64,
}

/// A failure that is the caller's to handle (a full disk), not the disk's fault.
fn is_caller_error(e: &Error) -> bool {
    e.is_no_space()
}

impl PackMirrors {
    /// The disks `folders` (each a mirror's `packs/`, with its id) of repository
    /// `repo`. New packs are numbered from `first_free` on (the catalog's next unused
    /// number), skipping any number a disk already has a file for (a pack a crash
    /// left before its commit named it). A pack is started anew once the one being
    /// filled holds `target_pack_bytes`.
    pub fn open(
        repo: RepoId,
        folders: &[(MirrorId, &Path)],
        first_free: PackId,
        target_pack_bytes: u64,
    ) -> Result<PackMirrors> {
        if folders.is_empty() {
            return Err(Error::NoMirror {
                reason: "no mirror is configured".into(),
            });
        }
        let disks = folders
            .iter()
            .map(|(id, folder)| {
                Ok(Disk {
                    id: *id,
                    packs: PackDir::open(folder, repo)?,
                    state: Mutex::new(MirrorState::Healthy),
                    heals: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PackMirrors {
            disks,
            filling: Mutex::new(Filling {
                pack: None,
                next_id: first_free,
                full: Vec::new(),
            }),
            target_pack_bytes,
        })
    }

    fn filling(&self) -> MutexGuard<'_, Filling> {
        // Every change is made whole before the next line can fail.
        self.filling.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn no_healthy_disk(&self) -> Error {
        let reasons: Vec<String> = self
            .disks
            .iter()
            .map(|d| format!("{}: {}", d.describe(), *d.state()))
            .collect();
        Error::NoMirror {
            reason: reasons.join("; "),
        }
    }

    /// Stores `chunks` (id and frame each), together and in order, on every healthy
    /// disk, and returns their locations. Durable only after a later `sync`.
    pub fn put(&self, chunks: &[(ChunkId, &[u8])]) -> Result<Vec<Location>> {
        let mut bytes = Vec::new();
        let mut lens = Vec::with_capacity(chunks.len());
        for (id, frame) in chunks {
            let before = bytes.len();
            pack::encode_entry(id, frame, &mut bytes);
            lens.push((bytes.len() - before) as u32);
        }
        let mut filling = self.filling();
        let (pack, offset) = match filling.pack {
            Some((pack, len))
                if len == PACK_HEADER_LEN || len + bytes.len() as u64 <= self.target_pack_bytes =>
            {
                (pack, len)
            }
            _ => {
                if let Some((full, _)) = filling.pack.take() {
                    filling.full.push(full);
                }
                let mut id = filling.next_id;
                while self.disks.iter().any(|d| d.packs.path(id).exists()) {
                    id = PackId(id.0 + 1);
                }
                filling.next_id = PackId(id.0 + 1);
                (id, PACK_HEADER_LEN)
            }
        };
        let mut written = 0;
        for disk in self.disks.iter().filter(|d| d.healthy()) {
            match disk.packs.append(pack, offset, &bytes) {
                Ok(()) => written += 1,
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
        if written == 0 {
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
                    entry: EntryLoc { offset: at, len },
                };
                at += u64::from(len);
                loc
            })
            .collect())
    }

    /// Makes every put that returned before the call durable on every healthy disk
    /// (fdatasync of the packs written, never `syncfs`). A disk whose sync fails is
    /// set aside; the call fails only when no healthy disk is left.
    pub fn sync(&self) -> Result<()> {
        let full = std::mem::take(&mut self.filling().full);
        for disk in self.disks.iter().filter(|d| d.healthy()) {
            let result = disk
                .packs
                .sync()
                .and_then(|()| full.iter().try_for_each(|p| disk.packs.finish(*p)));
            match result {
                Ok(()) => {}
                Err(e) if is_caller_error(&e) => return Err(e),
                Err(e) => disk.set_aside(format!("syncing packs: {e}")),
            }
        }
        if !self.disks.iter().any(Disk::healthy) {
            return Err(self.no_healthy_disk());
        }
        Ok(())
    }

    /// The verified plaintext of chunk `id` at `at`. Reads the healthy disks in order
    /// (the set-aside ones last) until a copy decodes and hashes to `id`; every healthy
    /// disk read before it whose copy was bad gets the good entry written over the bad
    /// one, or the whole pack restored from the good disk when its copy is missing or
    /// cut short (counted as heals; a repair that fails never fails the read). Errors:
    /// `CorruptChunk` naming each disk and why, or `MissingChunk` when no disk has the
    /// pack. Never returns wrong bytes.
    pub fn read(&self, id: &ChunkId, at: Location) -> Result<Vec<u8>> {
        let order = self
            .disks
            .iter()
            .filter(|d| d.healthy())
            .chain(self.disks.iter().filter(|d| !d.healthy()));
        let mut to_heal: Vec<(&Disk, bool)> = Vec::new(); // (disk, whole pack)
        let mut reasons = Vec::new();
        let mut some_disk_has_the_pack = false;
        let mut good = None;
        for disk in order {
            let healthy = disk.healthy();
            let read = disk.packs.read_frame(at.pack, at.entry, id);
            some_disk_has_the_pack |= !matches!(read, Ok(None));
            let (whole_pack, reason) = match read {
                Ok(Some(frame)) => match codec::decode(id, &frame) {
                    Ok(plain) => {
                        good = Some((disk, plain));
                        break;
                    }
                    Err(e) => (false, e.to_string()),
                },
                Ok(None) => (true, format!("pack {} is missing", at.pack)),
                Err(e) => {
                    // A copy cut short before the entry's end is restored whole.
                    let short = disk
                        .packs
                        .file_len(at.pack)
                        .is_none_or(|len| len < at.entry.end());
                    (short, e.to_string())
                }
            };
            if healthy {
                to_heal.push((disk, whole_pack));
            }
            reasons.push(format!("{}: {reason}", disk.describe()));
        }
        let Some((source, plain)) = good else {
            if !some_disk_has_the_pack {
                return Err(Error::MissingChunk { id: *id });
            }
            return Err(Error::CorruptChunk {
                id: *id,
                mirror: "every mirror".into(),
                reason: reasons.join("; "),
            });
        };
        for (disk, whole_pack) in to_heal {
            match self.repair(source, disk, id, at, whole_pack) {
                Ok(()) => {
                    disk.heals.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "{}: chunk {id} in pack {} was missing or bad; rewrote it from {}",
                        disk.describe(),
                        at.pack,
                        source.describe()
                    );
                }
                Err(e) if is_caller_error(&e) => {
                    log::warn!("{}: could not repair chunk {id}: {e}", disk.describe())
                }
                Err(e) => disk.set_aside(format!("repairing pack {}: {e}", at.pack)),
            }
        }
        Ok(plain)
    }

    fn repair(&self, source: &Disk, bad: &Disk, id: &ChunkId, at: Location, whole_pack: bool) -> Result<()> {
        if whole_pack {
            // The good copy of the pack, up to where this process has written it (a
            // pack being filled is restored as far as the entries that exist).
            let len = source
                .packs
                .file_len(at.pack)
                .ok_or(Error::MissingChunk { id: *id })?;
            let bytes = source
                .packs
                .read_run(at.pack, 0, len as usize)?
                .ok_or(Error::MissingChunk { id: *id })?;
            return bad.packs.install(at.pack, &bytes);
        }
        let entry = source
            .packs
            .read_run(at.pack, at.entry.offset, at.entry.len as usize)?
            .ok_or(Error::MissingChunk { id: *id })?;
        bad.packs.repair_entry(at.pack, at.entry.offset, &entry)
    }

    /// Every disk with its state and heal count, in read order.
    pub fn status(&self) -> Vec<MirrorStatus> {
        self.disks
            .iter()
            .map(|d| MirrorStatus {
                id: d.id,
                describe: d.describe(),
                state: d.state().clone(),
                heals: d.heals.load(Ordering::Relaxed),
            })
            .collect()
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
        let folders: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("m{i}/packs"))).collect();
        let named: Vec<(MirrorId, &Path)> = folders
            .iter()
            .enumerate()
            .map(|(i, f)| (MirrorId(i as u32), f.as_path()))
            .collect();
        let store = PackMirrors::open(REPO, &named, PackId(1), target).unwrap();
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
    fn a_flipped_byte_on_one_disk_is_read_past_and_rewritten_in_place() {
        let f = fixture(1 << 20);
        let batch = chunks(0, 4);
        let locs = put(&f, &batch);
        f.store.sync().unwrap();
        let path = pack_file(&f, 0, locs[2].pack);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[locs[2].entry.offset as usize + 70] ^= 0x10;
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
        file.set_len(locs[3].entry.offset + 5).unwrap();
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
            bytes[locs[0].entry.offset as usize + 45 + disk] ^= 1;
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
        let folder = dir.path().join("packs");
        let leftover = PackDir::open(&folder, REPO).unwrap();
        leftover.append(PackId(1), PACK_HEADER_LEN, b"").unwrap();
        leftover.sync().unwrap();
        let store = PackMirrors::open(REPO, &[(MirrorId(0), folder.as_path())], PackId(1), 1 << 20).unwrap();
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
