//! Pack files (storage format 2): append-only files in a disk folder's `packs/`, each a
//! header and then chunk entries back to back, so that the chunks of one commit lie
//! together on the disk and cost one file, not one file each.
//!
//! Owns the pack format, the writer that appends to one pack, the reader of a run of
//! entries, and the scanner that finds every good entry of a pack from its bytes
//! alone (to rebuild the index after the catalog is lost, to check a pack, and to find
//! where a torn tail starts after a crash).
//!
//! ```text
//! pack := header, entry, entry, …
//!
//! header (48 bytes)
//!   offset size field
//!        0    8 magic b"SNFSPACK"
//!        8    1 pack format version (1)
//!        9    7 reserved, zero
//!       16   16 repository id
//!       32    8 pack id, u64 little-endian (also the file's name)
//!       40    8 checksum: the first 8 bytes of BLAKE3 of bytes [0, 40)
//!
//! entry (48 + F bytes)
//!   offset size field
//!        0    4 magic b"SNPE"
//!        4    4 F: frame length, u32 little-endian
//!        8   32 chunk id (BLAKE3 of the plaintext)
//!       40    F the chunk's frame (codec.rs: magic, codec, plaintext and payload
//!               lengths, payload)
//!     40+F    8 checksum: the first 8 bytes of BLAKE3 of bytes [0, 40+F) of the entry
//! ```
//!
//! An entry checks itself: its checksum covers its id, lengths and frame, so a torn
//! write (a crash during an append) or a flipped byte is found without decoding, and a
//! scan skips a damaged entry by looking for the next magic whose entry checks out.
//! The frame inside is still verified against the chunk id when it is decoded.
//!
//! Durability: an append is durable once `PackWriter::sync` has returned (fdatasync of
//! the pack, and, the first time, an fsync of the folder that holds its name). Never
//! `syncfs`: see DESIGN.md §2.1.
//!
//! Knows nothing of the catalog or of mirrors; depends on `codec`, `types`, `error`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::codec::{FRAME_HEADER_LEN, MAX_PLAIN_LEN};
use crate::error::{Error, Result};
use crate::types::{ChunkId, PackId, RepoId};

/// The pack header's magic.
pub const PACK_MAGIC: [u8; 8] = *b"SNFSPACK";
/// The pack format version this code writes and reads.
pub const PACK_VERSION: u8 = 1;
/// Length of the pack header; the first entry starts here.
pub const PACK_HEADER_LEN: u64 = 48;
/// An entry's magic.
pub const ENTRY_MAGIC: [u8; 4] = *b"SNPE";
/// Bytes an entry adds to its frame: magic, length, chunk id, checksum.
pub const ENTRY_OVERHEAD: u64 = 48;
/// The largest frame an entry may declare: a raw frame of the largest plaintext. An
/// entry declaring more is damage, refused before anything is allocated for it.
pub const MAX_FRAME_LEN: u32 = MAX_PLAIN_LEN + FRAME_HEADER_LEN as u32;

const CHECKSUM_LEN: usize = 8;
const ENTRY_HEAD_LEN: usize = 40;
/// What the scanner reads at a time.
const SCAN_BLOCK: usize = 1 << 20;

/// Where an entry lies in its pack: `len` bytes from `offset`, overhead included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryLoc {
    /// Byte offset of the entry's magic in the pack file.
    pub offset: u64,
    /// The whole entry's length (`ENTRY_OVERHEAD` + frame length).
    pub len: u32,
}

impl EntryLoc {
    /// One past the entry's last byte.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// Why bytes are not a good entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Fewer bytes than the entry needs (at the end of a pack: a torn tail).
    #[error("entry truncated: {needed} bytes needed, {available} there")]
    Truncated { needed: u64, available: u64 },
    /// The bytes do not start with the entry magic.
    #[error("no entry magic")]
    BadMagic,
    /// The declared frame length is beyond any frame's.
    #[error("declared frame length {0} is too large")]
    FrameTooLarge(u32),
    /// The checksum does not match the entry's bytes.
    #[error("entry checksum mismatch")]
    ChecksumMismatch,
}

/// A good entry, borrowed from the bytes it was parsed from.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The chunk it holds.
    pub id: ChunkId,
    /// The chunk's frame (codec.rs), not yet decoded or verified against `id`.
    pub frame: &'a [u8],
    /// The whole entry's length.
    pub len: u32,
}

fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut out = [0; CHECKSUM_LEN];
    out.copy_from_slice(&blake3::hash(bytes).as_bytes()[..CHECKSUM_LEN]);
    out
}

/// The header of pack `id` of repository `repo`.
pub fn encode_header(repo: RepoId, id: PackId) -> [u8; PACK_HEADER_LEN as usize] {
    let mut h = [0u8; PACK_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&PACK_MAGIC);
    h[8] = PACK_VERSION;
    h[16..32].copy_from_slice(&repo.0);
    h[32..40].copy_from_slice(&id.0.to_le_bytes());
    let sum = checksum(&h[..40]);
    h[40..48].copy_from_slice(&sum);
    h
}

/// Checks that `header` is the header of pack `id` of repository `repo`; the error
/// says what is wrong, for a message naming the file.
pub fn check_header(header: &[u8], repo: RepoId, id: PackId) -> std::result::Result<(), String> {
    let Some(h) = header.get(..PACK_HEADER_LEN as usize) else {
        return Err(format!("{} bytes, shorter than a pack header", header.len()));
    };
    if h[0..8] != PACK_MAGIC {
        return Err("not a snapfs pack (bad magic)".into());
    }
    if h[40..48] != checksum(&h[..40]) {
        return Err("pack header checksum mismatch".into());
    }
    if h[8] != PACK_VERSION {
        return Err(format!("pack format version {} is not supported", h[8]));
    }
    if h[16..32] != repo.0 {
        return Err("the pack belongs to another repository".into());
    }
    let named = u64::from_le_bytes(h[32..40].try_into().expect("8 bytes"));
    if named != id.0 {
        return Err(format!("the header names pack {}", PackId(named)));
    }
    Ok(())
}

/// The length of the entry of a frame of `frame_len` bytes.
pub fn entry_len(frame_len: usize) -> u64 {
    ENTRY_OVERHEAD + frame_len as u64
}

/// Appends the entry of chunk `id` with `frame` to `out`.
pub fn encode_entry(id: &ChunkId, frame: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&ENTRY_MAGIC);
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    out.extend_from_slice(&id.0);
    out.extend_from_slice(frame);
    let sum = checksum(&out[start..]);
    out.extend_from_slice(&sum);
}

/// How much of an entry `parse_entry_with` checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryCheck {
    /// Every byte, against the entry's checksum: for scans, which do not know what
    /// they will find, and for scrub, which must find a flipped checksum byte too.
    Checksum,
    /// Magic and lengths only: for a read that knows the chunk it wants, compares the
    /// entry's id with it, and decodes the frame, whose BLAKE3 against that id then
    /// verifies every byte the read uses. Hashing the entry first as well would hash
    /// each byte read twice (about a fifth of the daemon's time in a cold read).
    FrameVerifiedByDecode,
}

/// The entry at the start of `bytes` (which may go on past it), checked against its
/// checksum.
pub fn parse_entry(bytes: &[u8]) -> std::result::Result<Entry<'_>, EntryError> {
    parse_entry_with(bytes, EntryCheck::Checksum)
}

/// The entry at the start of `bytes` (which may go on past it), checked as `check`
/// says.
pub fn parse_entry_with(bytes: &[u8], check: EntryCheck) -> std::result::Result<Entry<'_>, EntryError> {
    let truncated = |needed: u64| EntryError::Truncated {
        needed,
        available: bytes.len() as u64,
    };
    if bytes.len() < ENTRY_HEAD_LEN {
        // A short tail that is not even the start of a magic is not an entry at all.
        if !ENTRY_MAGIC.starts_with(&bytes[..bytes.len().min(4)]) {
            return Err(EntryError::BadMagic);
        }
        return Err(truncated(ENTRY_OVERHEAD));
    }
    if bytes[0..4] != ENTRY_MAGIC {
        return Err(EntryError::BadMagic);
    }
    let frame_len = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if frame_len > MAX_FRAME_LEN {
        return Err(EntryError::FrameTooLarge(frame_len));
    }
    let len = entry_len(frame_len as usize);
    let Some(entry) = bytes.get(..len as usize) else {
        return Err(truncated(len));
    };
    let (body, sum) = entry.split_at(entry.len() - CHECKSUM_LEN);
    if check == EntryCheck::Checksum && sum != checksum(body) {
        return Err(EntryError::ChecksumMismatch);
    }
    Ok(Entry {
        id: ChunkId(bytes[8..40].try_into().expect("32 bytes")),
        frame: &body[ENTRY_HEAD_LEN..],
        len: len as u32,
    })
}

/// The file name of pack `id` inside a disk folder's `packs/`: a folder per low byte
/// of the id (so no folder grows past a few hundred names), then the id in hex.
pub fn pack_path(packs: &Path, id: PackId) -> PathBuf {
    packs
        .join(format!("{:02x}", id.0 & 0xff))
        .join(format!("{id}.pack"))
}

/// The id named by a pack's file name (`…/0000000000000a1c.pack`); `None` for any
/// other name (temporary files, strays).
pub fn parse_pack_name(name: &str) -> Option<PackId> {
    let hex = name.strip_suffix(".pack")?;
    if hex.len() != 16
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(PackId)
}

/// Appends entries to one new pack file. One writer per pack; a pack is never
/// written again once its writer is dropped (a restarted daemon starts new packs).
#[derive(Debug)]
pub struct PackWriter {
    file: std::sync::Arc<File>,
    path: PathBuf,
    id: PackId,
    len: u64,
    /// The folder entry of the file is not yet known durable.
    name_unsynced: bool,
}

/// Makes `folder` (a `packs/XX` folder) if it is missing, durably (the `packs` folder
/// holding it is fsynced). Never makes `packs` or anything above it: a disk folder
/// that vanished (unmounted, deleted) must fail the write, not get a new empty tree
/// that no identity file vouches for.
pub fn make_pack_folder(folder: &Path) -> Result<()> {
    if folder.is_dir() {
        return Ok(());
    }
    let parent = folder.parent().expect("a pack folder is inside packs/");
    let ctx = || format!("creating folder {}", folder.display());
    match std::fs::create_dir(folder) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(Error::io(ctx(), e)),
    }
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(Error::io_with(ctx()))
}

impl PackWriter {
    /// Creates pack `id` in `packs` (its `XX` folder made if missing, never `packs`
    /// itself) and writes its header.
    /// Fails if the file exists: a pack is never reopened for appending.
    pub fn create(packs: &Path, repo: RepoId, id: PackId) -> Result<PackWriter> {
        let path = pack_path(packs, id);
        let folder = path.parent().expect("a pack path has a folder");
        make_pack_folder(folder)?;
        let mut file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(Error::io_with(format!("creating pack {}", path.display())))?;
        file.write_all(&encode_header(repo, id))
            .map_err(Error::io_with(format!("writing pack {}", path.display())))?;
        Ok(PackWriter {
            file: std::sync::Arc::new(file),
            path,
            id,
            len: PACK_HEADER_LEN,
            name_unsynced: true,
        })
    }

    /// The pack's id.
    pub fn id(&self) -> PackId {
        self.id
    }

    /// The pack's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far, header included (the offset of the next entry).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True while the pack holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == PACK_HEADER_LEN
    }

    /// Appends `entries` (encoded by `encode_entry`, back to back) in one write at the
    /// end of the pack and returns the offset they start at. On failure the pack is
    /// cut back to where it was, so a later append lands where the index expects it.
    /// Durable only after a later `sync`.
    pub fn append(&mut self, entries: &[u8]) -> Result<u64> {
        let at = self.len;
        if let Err(e) = self.file.write_all_at(entries, at) {
            let _ = self.file.set_len(at);
            return Err(Error::io(format!("appending to pack {}", self.path.display()), e));
        }
        self.len += entries.len() as u64;
        Ok(at)
    }

    /// A handle on the pack for an fdatasync outside whatever lock guards the writer
    /// (`File::sync_data` needs no exclusive access), and the folder to fsync with it
    /// while the pack's name is not yet known durable (then `name_synced`).
    pub fn sync_job(&self) -> (std::sync::Arc<File>, Option<PathBuf>) {
        let folder = self.name_unsynced.then(|| {
            self.path
                .parent()
                .expect("a pack path has a folder")
                .to_path_buf()
        });
        (self.file.clone(), folder)
    }

    /// Notes that the folder holding the pack's name was fsynced after its creation.
    pub fn name_synced(&mut self) {
        self.name_unsynced = false;
    }

    /// Makes every append so far durable: fdatasync of the pack, then (once, after the
    /// file was created) fsync of its folder, so that its name survives a power cut.
    pub fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(Error::io_with(format!("syncing pack {}", self.path.display())))?;
        if self.name_unsynced {
            let folder = self.path.parent().expect("a pack path has a folder");
            File::open(folder)
                .and_then(|f| f.sync_all())
                .map_err(Error::io_with(format!("syncing folder {}", folder.display())))?;
            self.name_unsynced = false;
        }
        Ok(())
    }
}

/// Reads the `len` bytes at `offset` of a pack: a run of whole entries, e.g. the
/// neighbouring chunks of one file, read in one go and split with `split_entries`.
/// A read that ends early (the pack is shorter) is `Truncated`, for the caller to
/// report as a damaged copy.
pub fn read_run(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf.truncate(done);
                return Ok(buf);
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf)
}

/// The alignment of the offset, length and buffer of a read past the page cache
/// (`O_DIRECT`): a page, a multiple of every disk's logical block.
pub const DIRECT_ALIGN: usize = 4096;

/// A run of bytes read past the page cache: `bytes()` are the ones asked for (fewer
/// when the pack ended first), inside the block-aligned buffer they were read into.
pub struct DirectRun {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl DirectRun {
    /// A run read some other way, as it is.
    pub fn from_vec(buf: Vec<u8>) -> DirectRun {
        let len = buf.len();
        DirectRun { buf, start: 0, len }
    }

    /// The bytes of the run.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl Drop for DirectRun {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.len() <= MAX_SPARE_DIRECT_BUFFER {
            SPARE_DIRECT_BUFFER.with(|spare| *spare.borrow_mut() = Some(buf));
        }
    }
}

/// The largest buffer `SPARE_DIRECT_BUFFER` keeps (one read-ahead job is 512 KiB).
const MAX_SPARE_DIRECT_BUFFER: usize = 4 << 20;

thread_local! {
    /// The buffer of this thread's last direct read, for its next one: its bytes
    /// need no zeroing before a read overwrites them (zeroing a fresh buffer for
    /// every read was part of the 7-9% of a cold read's samples in memset). Only
    /// this thread touches it.
    static SPARE_DIRECT_BUFFER: std::cell::RefCell<Option<Vec<u8>>> =
        const { std::cell::RefCell::new(None) };
}

/// A buffer of at least `len` bytes for a direct read: this thread's spare one, or a
/// new one; only bytes it never had are zeroed.
fn direct_buffer(len: usize) -> Vec<u8> {
    let mut buf = SPARE_DIRECT_BUFFER
        .with(|spare| spare.borrow_mut().take())
        .unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0);
    }
    buf
}

/// `read_run` from `file`, opened with `O_DIRECT`: the blocks around the run go from
/// the disk straight into a buffer of ours, with no copy through the page cache (a
/// cold sequential read is bound by the CPU, and that copy was a quarter of it). The
/// kernel writes back dirty pages of the range first, so the bytes are those last
/// written. Errors as `read_run`; `InvalidInput` where the filesystem refuses the
/// alignment.
pub fn read_run_direct(file: &File, offset: u64, len: usize) -> std::io::Result<DirectRun> {
    let align = DIRECT_ALIGN as u64;
    let first = offset / align * align;
    let span = ((offset + len as u64).div_ceil(align) * align - first) as usize;
    let mut buf = direct_buffer(span + DIRECT_ALIGN);
    let shift = buf.as_ptr().align_offset(DIRECT_ALIGN);
    let mut done = 0;
    while done < span {
        match file.read_at(&mut buf[shift + done..shift + span], first + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let start = shift + (offset - first) as usize;
    let len = len.min(done.saturating_sub((offset - first) as usize));
    Ok(DirectRun { buf, start, len })
}

/// One entry a scan found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScannedEntry {
    /// The chunk.
    pub id: ChunkId,
    /// Where its entry lies.
    pub loc: EntryLoc,
}

/// What a scan of one pack found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PackScan {
    /// Every good entry, in file order.
    pub entries: Vec<ScannedEntry>,
    /// Byte ranges between good entries that hold no good entry (flipped bytes, a
    /// torn write followed by later appends), in file order.
    pub damaged: Vec<Range<u64>>,
    /// Where a torn tail starts: the bytes from here to the end are no good entry and
    /// no good entry follows them (a crash during an append). `None` when the pack
    /// ends with a good entry.
    pub torn_from: Option<u64>,
    /// The file's length.
    pub file_len: u64,
}

/// Reads pack `id` of `repo` from `file` and finds its good entries, its damaged
/// ranges and where a torn tail starts. Reads the pack once, a block at a time, so
/// memory stays at a block plus the largest entry. A header that is not this pack's
/// is `CorruptPack`, naming `path` and what is wrong.
pub fn scan(file: &File, repo: RepoId, id: PackId, path: &Path) -> Result<PackScan> {
    let io_err = |e| Error::io(format!("reading pack {}", path.display()), e);
    let file_len = file.metadata().map_err(io_err)?.len();
    let header = read_run(file, 0, PACK_HEADER_LEN as usize).map_err(io_err)?;
    check_header(&header, repo, id).map_err(|reason| Error::CorruptPack {
        path: path.to_path_buf(),
        reason,
    })?;
    let mut scan = PackScan {
        file_len,
        ..PackScan::default()
    };
    // `window` holds the pack's bytes from `base` on.
    let mut base = PACK_HEADER_LEN;
    let mut window: Vec<u8> = Vec::new();
    let mut read_to = PACK_HEADER_LEN;
    // Start of the bytes since the last good entry that are no good entry.
    let mut bad_from: Option<u64> = None;
    let mut pos = 0usize; // in window
    loop {
        // Keep at least a block (or the rest of the file) ahead of `pos`.
        if window.len() - pos < SCAN_BLOCK && read_to < file_len {
            window.drain(..pos);
            base += pos as u64;
            pos = 0;
            let want = SCAN_BLOCK.min((file_len - read_to) as usize);
            let more = read_run(file, read_to, want).map_err(io_err)?;
            if more.is_empty() {
                break;
            }
            read_to += more.len() as u64;
            window.extend_from_slice(&more);
        }
        if pos >= window.len() {
            break;
        }
        let at = base + pos as u64;
        match parse_entry(&window[pos..]) {
            Ok(entry) => {
                if let Some(from) = bad_from.take() {
                    scan.damaged.push(from..at);
                }
                scan.entries.push(ScannedEntry {
                    id: entry.id,
                    loc: EntryLoc {
                        offset: at,
                        len: entry.len,
                    },
                });
                pos += entry.len as usize;
            }
            Err(EntryError::Truncated { needed, .. }) if read_to < file_len => {
                // The entry goes on past the window: read up to its end (bounded by
                // MAX_FRAME_LEN) and try again.
                let want =
                    ((needed as usize).saturating_sub(window.len() - pos)).min((file_len - read_to) as usize);
                let more = read_run(file, read_to, want).map_err(io_err)?;
                if more.is_empty() {
                    break;
                }
                read_to += more.len() as u64;
                window.extend_from_slice(&more);
            }
            Err(_) => {
                // Damage: from here, look for the next magic whose entry checks out.
                bad_from.get_or_insert(at);
                pos += 1;
                match find_magic(&window[pos..]) {
                    Some(skip) => pos += skip,
                    // Keep the last few bytes: a magic may straddle the next block.
                    None => pos = window.len().saturating_sub(ENTRY_MAGIC.len() - 1).max(pos),
                }
            }
        }
    }
    if let Some(from) = bad_from {
        scan.torn_from = Some(from);
    }
    Ok(scan)
}

fn find_magic(bytes: &[u8]) -> Option<usize> {
    bytes.windows(ENTRY_MAGIC.len()).position(|w| w == ENTRY_MAGIC)
}

/// Splits a run read by `read_run` (starting at pack offset `offset`) into its
/// entries: `(offset, entry or why the bytes there are not one)`. Stops at the first
/// bad entry (what follows cannot be located without the index).
pub fn split_entries(run: &[u8], offset: u64) -> Vec<(u64, std::result::Result<Entry<'_>, EntryError>)> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < run.len() {
        let parsed = parse_entry(&run[pos..]);
        let step = parsed.as_ref().map(|e| e.len as usize).ok();
        out.push((offset + pos as u64, parsed));
        match step {
            Some(n) => pos += n,
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn repo() -> RepoId {
        RepoId([7; 16])
    }

    fn chunk(i: u32, len: usize) -> (ChunkId, Vec<u8>) {
        let plain: Vec<u8> = (0..len).map(|b| (b as u32 * 31 + i * 7) as u8).collect();
        let encoded = codec::encode(&plain, Some(3));
        (encoded.id, encoded.frame)
    }

    /// A pack of `n` entries in `dir`, and the entries' ids and locations.
    fn write_pack(dir: &Path, id: PackId, n: u32) -> (PathBuf, Vec<ScannedEntry>) {
        let mut w = PackWriter::create(dir, repo(), id).unwrap();
        let mut expected = Vec::new();
        for i in 0..n {
            let (cid, frame) = chunk(i, 100 + i as usize * 37);
            let mut buf = Vec::new();
            encode_entry(&cid, &frame, &mut buf);
            let at = w.append(&buf).unwrap();
            expected.push(ScannedEntry {
                id: cid,
                loc: EntryLoc {
                    offset: at,
                    len: buf.len() as u32,
                },
            });
        }
        w.sync().unwrap();
        (w.path().to_path_buf(), expected)
    }

    fn scan_path(path: &Path, id: PackId) -> PackScan {
        scan(&File::open(path).unwrap(), repo(), id, path).unwrap()
    }

    #[test]
    fn entries_round_trip_and_decode_to_their_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (path, expected) = write_pack(dir.path(), PackId(1), 20);
        let file = File::open(&path).unwrap();
        for e in &expected {
            let run = read_run(&file, e.loc.offset, e.loc.len as usize).unwrap();
            let entry = parse_entry(&run).unwrap();
            assert_eq!(entry.id, e.id);
            assert_eq!(ChunkId::of(&codec::decode(&e.id, entry.frame).unwrap()), e.id);
        }
        assert_eq!(scan_path(&path, PackId(1)).entries, expected);
        assert_eq!(scan_path(&path, PackId(1)).torn_from, None);
    }

    #[test]
    fn a_run_of_neighbours_splits_into_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (path, expected) = write_pack(dir.path(), PackId(2), 10);
        let (first, last) = (expected[3].loc, expected[7].loc);
        let run = read_run(
            &File::open(&path).unwrap(),
            first.offset,
            (last.end() - first.offset) as usize,
        )
        .unwrap();
        let split = split_entries(&run, first.offset);
        let got: Vec<(u64, ChunkId)> = split
            .iter()
            .map(|(at, e)| (*at, e.as_ref().unwrap().id))
            .collect();
        let want: Vec<(u64, ChunkId)> = expected[3..=7].iter().map(|e| (e.loc.offset, e.id)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_run_read_past_the_page_cache_is_the_same_bytes_and_short_at_the_end() {
        use std::os::unix::fs::OpenOptionsExt;
        // On the disk the tests run on (ext4 here; tmpfs refuses O_DIRECT, and the
        // pack folder then reads through the page cache instead).
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let (path, expected) = write_pack(dir.path(), PackId(3), 40);
        let whole = std::fs::read(&path).unwrap();
        let direct = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
            Err(e) => panic!("{e}"),
        };
        for (from, to) in [(0, 5), (3, 9), (10, 40), (39, 40)] {
            let (first, last) = (expected[from].loc, expected[to - 1].loc);
            let len = (last.end() - first.offset) as usize;
            let run = read_run_direct(&direct, first.offset, len).unwrap();
            assert_eq!(run.bytes(), &whole[first.offset as usize..last.end() as usize]);
        }
        let tail = expected[39].loc;
        let run = read_run_direct(&direct, tail.offset, 1 << 20).unwrap();
        assert_eq!(
            run.bytes(),
            &whole[tail.offset as usize..],
            "short where the pack ends"
        );
        // This thread's buffer is used again, its bytes from a longer read before
        // still in it: a short read shows none of them.
        let run = read_run_direct(&direct, 0, 1 << 20).unwrap();
        assert_eq!(run.bytes(), &whole[..]);
        drop(run);
        let run = read_run_direct(&direct, tail.offset, 1 << 20).unwrap();
        assert_eq!(
            run.bytes(),
            &whole[tail.offset as usize..],
            "short after a long one"
        );
    }

    #[test]
    fn a_torn_tail_at_every_length_is_found_and_everything_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (path, expected) = write_pack(dir.path(), PackId(3), 5);
        let full = std::fs::read(&path).unwrap();
        let last = expected[4].loc;
        for cut in last.offset + 1..last.end() {
            std::fs::write(&path, &full[..cut as usize]).unwrap();
            let found = scan_path(&path, PackId(3));
            assert_eq!(found.entries, expected[..4], "cut at {cut}");
            assert_eq!(found.torn_from, Some(last.offset), "cut at {cut}");
            assert!(found.damaged.is_empty());
        }
    }

    #[test]
    fn a_flipped_byte_spoils_one_entry_and_the_scan_finds_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (path, expected) = write_pack(dir.path(), PackId(4), 6);
        let full = std::fs::read(&path).unwrap();
        let hit = expected[2].loc;
        // Every byte of the entry: magic, length, id, frame, checksum.
        for at in hit.offset..hit.end() {
            let mut bytes = full.clone();
            bytes[at as usize] ^= 0x40;
            std::fs::write(&path, &bytes).unwrap();
            let found = scan_path(&path, PackId(4));
            let mut want = expected.clone();
            want.remove(2);
            assert_eq!(found.entries, want, "flip at {at}");
            assert_eq!(
                found.damaged,
                vec![hit.offset..expected[3].loc.offset],
                "flip at {at}"
            );
            assert_eq!(found.torn_from, None);
            let run = read_run(&File::open(&path).unwrap(), hit.offset, hit.len as usize).unwrap();
            assert!(parse_entry(&run).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn a_garbage_tail_after_good_entries_is_torn_not_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (path, expected) = write_pack(dir.path(), PackId(5), 3);
        let end = std::fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        // A magic and a plausible length, then zeros: what a torn append can leave.
        f.write_all(&ENTRY_MAGIC).unwrap();
        f.write_all(&100u32.to_le_bytes()).unwrap();
        f.write_all(&[0; 300]).unwrap();
        let found = scan_path(&path, PackId(5));
        assert_eq!(found.entries, expected);
        assert_eq!(found.torn_from, Some(end));
    }

    #[test]
    fn a_scan_crosses_block_boundaries_and_entries_bigger_than_a_block() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(dir.path(), repo(), PackId(6)).unwrap();
        let mut expected = Vec::new();
        // Incompressible chunks from 100 KiB to 3 MiB, so entries straddle the scan's
        // 1 MiB blocks and some are longer than one.
        for i in 0..8 {
            let plain = crate::testing::noise(0x1234_5678 + i, 100_000 + i as usize * 400_000);
            let encoded = codec::encode(&plain, Some(1));
            let mut buf = Vec::new();
            encode_entry(&encoded.id, &encoded.frame, &mut buf);
            let at = w.append(&buf).unwrap();
            expected.push(ScannedEntry {
                id: encoded.id,
                loc: EntryLoc {
                    offset: at,
                    len: buf.len() as u32,
                },
            });
        }
        w.sync().unwrap();
        assert!(w.len() > 8 * SCAN_BLOCK as u64);
        assert_eq!(scan_path(w.path(), PackId(6)).entries, expected);
    }

    #[test]
    fn a_pack_of_another_repository_or_number_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_pack(dir.path(), PackId(7), 1);
        let file = File::open(&path).unwrap();
        let other = scan(&file, RepoId([8; 16]), PackId(7), &path).unwrap_err();
        assert!(other.to_string().contains("another repository"), "{other}");
        let renamed = scan(&file, repo(), PackId(9), &path).unwrap_err();
        assert!(
            renamed.to_string().contains("names pack 0000000000000007"),
            "{renamed}"
        );
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let flipped = scan(&File::open(&path).unwrap(), repo(), PackId(7), &path).unwrap_err();
        assert!(flipped.to_string().contains("header checksum"), "{flipped}");
    }

    #[test]
    fn a_pack_is_never_created_twice_and_names_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_pack(dir.path(), PackId(0x1a2b), 1);
        assert!(path.ends_with("2b/0000000000001a2b.pack"));
        assert!(PackWriter::create(dir.path(), repo(), PackId(0x1a2b)).is_err());
        assert_eq!(parse_pack_name("0000000000001a2b.pack"), Some(PackId(0x1a2b)));
        for stray in [
            "0000000000001a2b.pack.tmp",
            "1a2b.pack",
            "0000000000001A2B.pack",
            "x.pack",
        ] {
            assert_eq!(parse_pack_name(stray), None, "{stray}");
        }
    }

    #[test]
    fn an_entry_declaring_a_huge_frame_is_refused_before_allocating() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&ENTRY_MAGIC);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 40]);
        assert_eq!(parse_entry(&bytes), Err(EntryError::FrameTooLarge(u32::MAX)));
    }
}
