//! One disk folder's packs (storage format 2): the `packs/` folder of a mirror, the
//! pack files being appended to, and reads of entries from any pack.
//!
//! Owns the files; the layout inside each is `pack.rs`'s. Which pack a chunk goes to
//! and at which offset is decided above (every mirror holds the same packs, byte for
//! byte, so one location serves them all): `append` writes entries at the offset the
//! caller expects and refuses a pack whose length is not that offset, so a mirror that
//! missed a write is found out at once instead of holding entries where the catalog
//! does not look.
//!
//! Durability: `sync` fdatasyncs every pack appended to since the last sync and fsyncs
//! the folder of every pack created since, and nothing else (never `syncfs`). A pack
//! whose writer is closed is never appended to again; a daemon that restarts starts
//! new packs, so the torn tail a crash may leave stays dead bytes until compaction.
//!
//! Lock scopes: `writers` is held for one append (a write into the page cache), or to
//! note which packs to sync (the fdatasyncs run after it is dropped); `readers` for one
//! lookup or insert of a file handle, never for a read.
//!
//! Knows nothing of the catalog or of other mirrors; depends on `pack`, `types`, `error`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::pack::{self, EntryCheck, EntryLoc, PackScan, PackWriter};
use crate::error::{Error, Result};
use crate::types::{ChunkId, PackId, RepoId};

/// Pack files kept open for reading at most.
const OPEN_FOR_READING: usize = 64;

/// The packs of one disk folder.
pub struct PackDir {
    root: PathBuf,
    repo: RepoId,
    /// Packs being appended to, and whether each was appended to since the last sync.
    writers: Mutex<BTreeMap<PackId, (PackWriter, bool)>>,
    /// Held for the whole of one `sync`, fdatasyncs included (appends go on beside
    /// it): a sync that began while another ran must not find the other's packs
    /// marked clean and return before their data is on disk. Only syncs wait on it.
    syncing: Mutex<()>,
    /// Read handles, with the tick of their last use.
    readers: Mutex<ReadHandles>,
}

#[derive(Default)]
struct ReadHandles {
    tick: u64,
    files: HashMap<PackId, (Arc<File>, u64)>,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is one map update: a poisoned lock still holds a whole map.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PackDir {
    /// The packs under `root` (a mirror's `packs/`, created durably if missing) of
    /// repository `repo`.
    pub fn open(root: &Path, repo: RepoId) -> Result<PackDir> {
        super::create_dir_all_durably(root)
            .map_err(Error::io_with(format!("creating {}", root.display())))?;
        Ok(PackDir {
            root: root.to_path_buf(),
            repo,
            writers: Mutex::default(),
            syncing: Mutex::default(),
            readers: Mutex::default(),
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of pack `id`.
    pub fn path(&self, id: PackId) -> PathBuf {
        pack::pack_path(&self.root, id)
    }

    /// Writes `entries` (encoded back to back by `pack::encode_entry`) into pack `id`
    /// at `offset`, which must be the pack's current length: `PACK_HEADER_LEN` starts
    /// the pack (creating its file), anything else continues one this folder is
    /// writing. Durable after the next `sync`.
    pub fn append(&self, id: PackId, offset: u64, entries: &[u8]) -> Result<()> {
        let mut writers = relock(&self.writers);
        if offset == pack::PACK_HEADER_LEN && !writers.contains_key(&id) {
            writers.insert(id, (PackWriter::create(&self.root, self.repo, id)?, false));
        }
        let Some((writer, dirty)) = writers.get_mut(&id) else {
            return Err(Error::CorruptPack {
                path: self.path(id),
                reason: format!("an append at offset {offset} to a pack this mirror is not writing"),
            });
        };
        if writer.len() != offset {
            return Err(Error::CorruptPack {
                path: self.path(id),
                reason: format!(
                    "{} bytes long where the next entry was to start at {offset}",
                    writer.len()
                ),
            });
        }
        writer.append(entries)?;
        *dirty = true;
        Ok(())
    }

    /// Makes every append that returned before the call durable: fdatasync of each
    /// pack appended to since the last sync (and its folder's fsync the first time).
    /// The syncs run outside the writers' lock, so appends go on meanwhile (they are
    /// marked for the next sync), and one sync at a time: a second waits for the first
    /// and then syncs what came since. On failure the packs stay marked, so the next
    /// sync tries again.
    pub fn sync(&self) -> Result<()> {
        // A compaction's sync and a group commit's may run at once.
        let _one_at_a_time = relock(&self.syncing);
        let jobs: Vec<(PackId, Arc<File>, Option<PathBuf>)> = relock(&self.writers)
            .iter_mut()
            .filter(|(_, (_, dirty))| *dirty)
            .map(|(id, (writer, dirty))| {
                *dirty = false;
                let (file, folder) = writer.sync_job();
                (*id, file, folder)
            })
            .collect();
        let mut first_error = None;
        for (id, file, folder) in jobs {
            let path = self.path(id);
            let result = file
                .sync_data()
                .map_err(Error::io_with(format!("syncing pack {}", path.display())))
                .and_then(|()| match &folder {
                    Some(folder) => File::open(folder)
                        .and_then(|f| f.sync_all())
                        .map_err(Error::io_with(format!("syncing folder {}", folder.display()))),
                    None => Ok(()),
                });
            let mut writers = relock(&self.writers);
            match result {
                Ok(()) if folder.is_some() => {
                    if let Some((writer, _)) = writers.get_mut(&id) {
                        writer.name_synced();
                    }
                }
                Ok(()) => {}
                Err(e) => {
                    if let Some((_, dirty)) = writers.get_mut(&id) {
                        *dirty = true;
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stops writing pack `id` after a last sync: it is complete from now on.
    pub fn finish(&self, id: PackId) -> Result<()> {
        let taken = relock(&self.writers).remove(&id);
        if let Some((mut writer, _)) = taken {
            writer.sync()?;
        }
        Ok(())
    }

    /// Packs this folder is appending to, with their lengths.
    pub fn writing(&self) -> Vec<(PackId, u64)> {
        relock(&self.writers)
            .iter()
            .map(|(id, (w, _))| (*id, w.len()))
            .collect()
    }

    fn reader(&self, id: PackId) -> Result<Arc<File>> {
        {
            let mut handles = relock(&self.readers);
            handles.tick += 1;
            let tick = handles.tick;
            if let Some((file, used)) = handles.files.get_mut(&id) {
                *used = tick;
                return Ok(file.clone());
            }
        }
        let path = self.path(id);
        let file = File::open(&path).map_err(Error::io_with(format!("opening pack {}", path.display())))?;
        // These handles read single entries (a sequential reader's runs go past the
        // page cache): the kernel's read-ahead would read the neighbours into the
        // page cache, where the O_DIRECT runs that read them next never look.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Random);
        let file = Arc::new(file);
        let mut handles = relock(&self.readers);
        if handles.files.len() >= OPEN_FOR_READING {
            if let Some(oldest) = handles
                .files
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| *id)
            {
                handles.files.remove(&oldest);
            }
        }
        let tick = handles.tick;
        handles.files.insert(id, (file.clone(), tick));
        Ok(file)
    }

    /// The `len` bytes at `offset` of pack `id`: a run of whole entries, to split with
    /// `pack::split_entries` (shorter than asked when the pack is shorter). `Ok(None)`
    /// when the pack is not in this folder.
    pub fn read_run(&self, id: PackId, offset: u64, len: usize) -> Result<Option<Vec<u8>>> {
        let file = match self.reader(id) {
            Ok(file) => file,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let path = self.path(id);
        pack::read_run(&file, offset, len)
            .map(Some)
            .map_err(Error::io_with(format!("reading pack {}", path.display())))
    }

    /// `read_run` past the page cache (see `pack::read_run_direct`), for long runs of
    /// a sequential reader; read through the page cache where the filesystem refuses
    /// `O_DIRECT` (tmpfs, some FUSE and network filesystems).
    pub fn read_run_direct(&self, id: PackId, offset: u64, len: usize) -> Result<Option<pack::DirectRun>> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(id);
        let ctx = || format!("reading pack {}", path.display());
        let refused = |e: &std::io::Error| e.raw_os_error() == Some(libc::EINVAL);
        let buffered = || Ok(self.read_run(id, offset, len)?.map(pack::DirectRun::from_vec));
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if refused(&e) => return buffered(),
            Err(e) => return Err(Error::io_with(ctx())(e)),
        };
        match pack::read_run_direct(&file, offset, len) {
            Ok(run) => Ok(Some(run)),
            Err(e) if refused(&e) => buffered(),
            Err(e) => Err(Error::io_with(ctx())(e)),
        }
    }

    /// The frame of chunk `chunk` from its entry at `loc` of pack `id`, raw: the entry
    /// checked as `check` says (and the id it names), the frame not yet decoded.
    /// `Ok(None)` when this folder has no such pack; `CorruptChunk` when the bytes
    /// there are not that chunk's good entry.
    pub fn read_frame(
        &self,
        id: PackId,
        loc: EntryLoc,
        chunk: &ChunkId,
        check: EntryCheck,
    ) -> Result<Option<Vec<u8>>> {
        let Some(run) = self.read_run(id, loc.offset, loc.len as usize)? else {
            return Ok(None);
        };
        self.frame_in(id, loc, chunk, &run, check)
            .map(|frame| Some(frame.to_vec()))
    }

    /// The frame of chunk `chunk` from `bytes`, the entry at `loc` of pack `id` (read
    /// with others in one run): the entry checked as `check` says, the frame not yet
    /// decoded.
    pub fn frame_in<'a>(
        &self,
        id: PackId,
        loc: EntryLoc,
        chunk: &ChunkId,
        bytes: &'a [u8],
        check: EntryCheck,
    ) -> Result<&'a [u8]> {
        let bad = |reason: String| Error::CorruptChunk {
            id: *chunk,
            mirror: format!("pack {} at {}", self.path(id).display(), loc.offset),
            reason,
        };
        let entry = pack::parse_entry_with(bytes, check).map_err(|e| bad(e.to_string()))?;
        if entry.id != *chunk {
            return Err(bad(format!("the entry there holds chunk {}", entry.id)));
        }
        if entry.len != loc.len {
            return Err(bad(format!(
                "the entry there is {} bytes, not {}",
                entry.len, loc.len
            )));
        }
        Ok(entry.frame)
    }

    /// Writes `entry` (a good copy's bytes) over the damaged entry at `offset` of
    /// pack `id` and makes it durable: the repair of one bad copy, which keeps every
    /// location as it was (every mirror holds the same bytes at the same place).
    pub fn repair_entry(&self, id: PackId, offset: u64, entry: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let path = self.path(id);
        let ctx = || format!("repairing pack {}", path.display());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(Error::io_with(ctx()))?;
        file.write_all_at(entry, offset).map_err(Error::io_with(ctx()))?;
        file.sync_data().map_err(Error::io_with(ctx()))
    }

    /// Makes pack `id` hold at least `bytes` (a good copy of the whole pack), durably:
    /// the repair of a missing or cut-short copy. A missing pack is written to a
    /// temporary file, fdatasynced and renamed into place (then the folder is
    /// fsynced); a short one gets the bytes it lacks appended in place, so a writer
    /// that has it open (a mount filling it, beside a scrub) keeps writing to the
    /// same file. Entries before its end that are bad are each repaired on their own.
    pub fn install(&self, id: PackId, bytes: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let path = self.path(id);
        let folder = path.parent().expect("a pack path has a folder");
        let ctx = || format!("restoring pack {}", path.display());
        if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) {
            let len = file.metadata().map_err(Error::io_with(ctx()))?.len();
            if let Some(missing) = bytes.get(len as usize..) {
                file.write_all_at(missing, len)
                    .and_then(|()| file.sync_data())
                    .map_err(Error::io_with(ctx()))?;
            }
            return Ok(());
        }
        pack::make_pack_folder(folder)?;
        let tmp = folder.join(format!(".{id}.pack.tmp"));
        std::fs::write(&tmp, bytes)
            .and_then(|()| File::open(&tmp)?.sync_data())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| File::open(folder)?.sync_all())
            .map_err(Error::io_with(ctx()))?;
        relock(&self.readers).files.remove(&id);
        Ok(())
    }

    /// Makes pack `id`'s file as it is durable, name included (fdatasync of the file,
    /// fsync of its folder): a copy found whole when filling this disk may have been
    /// written while it was not trusted, and never synced since.
    pub fn make_durable(&self, id: PackId) -> Result<()> {
        let path = self.path(id);
        let folder = path.parent().expect("a pack path has a folder");
        File::open(&path)
            .and_then(|f| f.sync_data())
            .and_then(|()| File::open(folder)?.sync_all())
            .map_err(Error::io_with(format!("syncing pack {}", path.display())))
    }

    /// The length of pack `id`'s file; `None` when the folder has no such pack (or it
    /// cannot be looked at).
    pub fn file_len(&self, id: PackId) -> Option<u64> {
        std::fs::metadata(self.path(id)).ok().map(|m| m.len())
    }

    /// Every pack in the folder, by id (names that are not packs are left alone).
    pub fn list(&self) -> Result<Vec<PackId>> {
        let mut ids = Vec::new();
        let err = |p: &Path| Error::io_with(format!("listing {}", p.display()));
        for folder in std::fs::read_dir(&self.root).map_err(err(&self.root))? {
            let folder = folder.map_err(err(&self.root))?.path();
            if !folder.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&folder).map_err(err(&folder))? {
                let file = file.map_err(err(&folder))?;
                if let Some(id) = file.file_name().to_str().and_then(pack::parse_pack_name) {
                    if pack::pack_path(&self.root, id) == file.path() {
                        ids.push(id);
                    }
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Every good entry of pack `id`, its damage and its torn tail (see `pack::scan`).
    pub fn scan(&self, id: PackId) -> Result<PackScan> {
        let path = self.path(id);
        let file = File::open(&path).map_err(Error::io_with(format!("opening pack {}", path.display())))?;
        pack::scan(&file, self.repo, id, &path)
    }

    /// Deletes pack `id` (absent is fine). Not durable by itself: a crash may bring
    /// the file back, which is harmless once no catalog row names it (the caller
    /// deletes the rows first; a returning pack is then an unknown one for gc).
    pub fn remove(&self, id: PackId) -> Result<()> {
        relock(&self.writers).remove(&id);
        relock(&self.readers).files.remove(&id);
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("deleting pack {}", path.display()), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::store::pack::{encode_entry, split_entries, PACK_HEADER_LEN};

    fn folder() -> (tempfile::TempDir, PackDir) {
        let dir = tempfile::tempdir().unwrap();
        let packs = PackDir::open(&dir.path().join("packs"), RepoId([5; 16])).unwrap();
        (dir, packs)
    }

    fn entries(first: u32, n: u32) -> (Vec<u8>, Vec<(ChunkId, u32)>) {
        let mut bytes = Vec::new();
        let mut ids = Vec::new();
        for i in first..first + n {
            let plain = format!("chunk {i} ").repeat(20 + i as usize);
            let encoded = codec::encode(plain.as_bytes(), Some(1));
            let before = bytes.len();
            encode_entry(&encoded.id, &encoded.frame, &mut bytes);
            ids.push((encoded.id, (bytes.len() - before) as u32));
        }
        (bytes, ids)
    }

    #[test]
    fn appends_land_where_the_caller_expects_and_read_back_verified() {
        let (_dir, packs) = folder();
        let id = PackId(1);
        let (a, a_ids) = entries(0, 5);
        let (b, b_ids) = entries(5, 5);
        packs.append(id, PACK_HEADER_LEN, &a).unwrap();
        packs.append(id, PACK_HEADER_LEN + a.len() as u64, &b).unwrap();
        packs.sync().unwrap();
        let mut at = PACK_HEADER_LEN;
        for (chunk, len) in a_ids.iter().chain(&b_ids) {
            let loc = EntryLoc {
                offset: at,
                len: *len,
            };
            let frame = packs
                .read_frame(id, loc, chunk, EntryCheck::Checksum)
                .unwrap()
                .unwrap();
            assert_eq!(ChunkId::of(&codec::decode(chunk, &frame).unwrap()), *chunk);
            at += u64::from(*len);
        }
        // One read for all ten neighbours.
        let run = packs
            .read_run(id, PACK_HEADER_LEN, (at - PACK_HEADER_LEN) as usize)
            .unwrap()
            .unwrap();
        assert_eq!(split_entries(&run, PACK_HEADER_LEN).len(), 10);
        let scanned: Vec<ChunkId> = packs.scan(id).unwrap().entries.iter().map(|e| e.id).collect();
        let written: Vec<ChunkId> = a_ids.iter().chain(&b_ids).map(|(c, _)| *c).collect();
        assert_eq!(scanned, written);
    }

    #[test]
    fn an_append_at_the_wrong_offset_is_refused_and_writes_nothing() {
        let (_dir, packs) = folder();
        let (a, _) = entries(0, 3);
        packs.append(PackId(2), PACK_HEADER_LEN, &a).unwrap();
        let end = PACK_HEADER_LEN + a.len() as u64;
        let gap = packs.append(PackId(2), end + 1, &a).unwrap_err();
        assert!(
            gap.to_string().contains("where the next entry was to start"),
            "{gap}"
        );
        let unknown = packs.append(PackId(3), end, &a).unwrap_err();
        assert!(unknown.to_string().contains("not writing"), "{unknown}");
        assert_eq!(packs.writing(), vec![(PackId(2), end)]);
        assert_eq!(std::fs::metadata(packs.path(PackId(2))).unwrap().len(), end);
        assert!(!packs.path(PackId(3)).exists());
    }

    #[test]
    fn a_wrong_location_or_a_flipped_byte_is_a_corrupt_copy_and_a_missing_pack_is_none() {
        let (_dir, packs) = folder();
        let (a, ids) = entries(0, 2);
        packs.append(PackId(4), PACK_HEADER_LEN, &a).unwrap();
        packs.finish(PackId(4)).unwrap();
        let first = EntryLoc {
            offset: PACK_HEADER_LEN,
            len: ids[0].1,
        };
        let other = packs
            .read_frame(PackId(4), first, &ids[1].0, EntryCheck::Checksum)
            .unwrap_err();
        assert!(matches!(other, Error::CorruptChunk { .. }), "{other}");
        let path = packs.path(PackId(4));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[PACK_HEADER_LEN as usize + 60] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        packs.remove(PackId(4)).unwrap(); // drops the cached handle, and the file
        std::fs::write(&path, &bytes).unwrap();
        let flipped = packs
            .read_frame(PackId(4), first, &ids[0].0, EntryCheck::Checksum)
            .unwrap_err();
        assert!(flipped.to_string().contains("checksum"), "{flipped}");
        assert_eq!(
            packs
                .read_frame(PackId(9), first, &ids[0].0, EntryCheck::Checksum)
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_read_that_decodes_skips_the_checksum_and_the_decode_still_finds_a_flipped_frame() {
        let (_dir, packs) = folder();
        let (a, ids) = entries(0, 1);
        let (chunk, len) = ids[0];
        let loc = EntryLoc {
            offset: PACK_HEADER_LEN,
            len,
        };
        let flip_and_read = |at: usize, check| {
            let mut bytes = a.clone();
            bytes[at] ^= 1;
            packs.remove(PackId(5)).unwrap();
            packs.append(PackId(5), PACK_HEADER_LEN, &bytes).unwrap();
            packs.finish(PackId(5)).unwrap();
            packs.read_frame(PackId(5), loc, &chunk, check)
        };
        packs.append(PackId(5), PACK_HEADER_LEN, &a).unwrap();
        packs.finish(PackId(5)).unwrap();
        let last = len as usize - 1;
        // A flipped checksum byte: scrub's check finds it, a read does not need to.
        let sum = flip_and_read(last, EntryCheck::Checksum).unwrap_err();
        assert!(sum.to_string().contains("checksum"), "{sum}");
        let frame = flip_and_read(last, EntryCheck::FrameVerifiedByDecode)
            .unwrap()
            .unwrap();
        assert_eq!(ChunkId::of(&codec::decode(&chunk, &frame).unwrap()), chunk);
        // A flipped byte of the frame: the read gets the frame, and its decode fails.
        let frame = flip_and_read(last - 20, EntryCheck::FrameVerifiedByDecode)
            .unwrap()
            .unwrap();
        assert!(codec::decode(&chunk, &frame).is_err());
        // A flipped byte of the id: the entry names another chunk.
        let id = flip_and_read(10, EntryCheck::FrameVerifiedByDecode).unwrap_err();
        assert!(id.to_string().contains("holds chunk"), "{id}");
    }

    #[test]
    fn list_finds_every_pack_and_ignores_strays() {
        let (_dir, packs) = folder();
        let (a, _) = entries(0, 1);
        for id in [1, 2, 300, 0x1_0000] {
            packs.append(PackId(id), PACK_HEADER_LEN, &a).unwrap();
        }
        packs.sync().unwrap();
        std::fs::write(packs.root().join("01").join("0000000000000001.pack.tmp"), b"x").unwrap();
        // A pack's name in the wrong folder is not that pack.
        std::fs::write(packs.root().join("01").join("0000000000000002.pack"), b"x").unwrap();
        std::fs::write(packs.root().join("stray"), b"x").unwrap();
        assert_eq!(
            packs.list().unwrap(),
            vec![PackId(1), PackId(2), PackId(300), PackId(0x1_0000)]
        );
        packs.remove(PackId(300)).unwrap();
        packs.remove(PackId(300)).unwrap();
        assert_eq!(
            packs.list().unwrap(),
            vec![PackId(1), PackId(2), PackId(0x1_0000)]
        );
    }

    #[test]
    fn reads_from_many_threads_and_many_packs_share_a_bounded_set_of_handles() {
        let (_dir, packs) = folder();
        let (a, ids) = entries(0, 1);
        let n = OPEN_FOR_READING as u64 * 2;
        for id in 0..n {
            packs.append(PackId(id), PACK_HEADER_LEN, &a).unwrap();
        }
        packs.sync().unwrap();
        let loc = EntryLoc {
            offset: PACK_HEADER_LEN,
            len: ids[0].1,
        };
        std::thread::scope(|s| {
            for t in 0..4 {
                let packs = &packs;
                let chunk = ids[0].0;
                s.spawn(move || {
                    for i in 0..n {
                        let id = PackId((i + t * 17) % n);
                        assert!(packs
                            .read_frame(id, loc, &chunk, EntryCheck::Checksum)
                            .unwrap()
                            .is_some());
                    }
                });
            }
        });
        assert!(relock(&packs.readers).files.len() <= OPEN_FOR_READING);
    }
}
