//! I/O that bypasses the page cache (`O_DIRECT`): whole-file reads of chunk files,
//! and big files written without flooding the disk's queue (`DirectWriter`).
//!
//! A chunk is read once into snapfs's own cache of verified plaintexts and then served
//! from there or from the kernel's cache of the mounted file; a second copy in the page
//! cache of the mirror's filesystem only costs CPU (page allocation, accounting, a copy)
//! and memory. Reading around it took a fifth off the mount daemon's CPU time for a
//! cold read on the machine we measured, at the same throughput (README, Benchmarks).
//!
//! Falls back to an ordinary read where the filesystem refuses `O_DIRECT` or a read
//! comes back short before the end of the file (and to ordinary writes where it
//! refuses them). Safe code only: an aligned buffer is an aligned window into an
//! ordinary `Vec`.

use std::cell::RefCell;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Buffer address, length and file offset alignment for `O_DIRECT`: the page size,
/// which covers every logical block size in use.
const ALIGN: usize = 4096;

/// The largest scratch buffer a thread keeps between reads; a bigger chunk file (only
/// with a configured maximum chunk size above it) gets a buffer of its own.
const KEEP_LIMIT: usize = 1 << 20;

thread_local! {
    /// Per-thread scratch buffer, kept between reads so a loader allocates it once.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The whole content of the file at `path`, read without filling the page cache where
/// the filesystem allows it.
pub fn read_uncached(path: &Path) -> io::Result<Vec<u8>> {
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return fs::read(path),
        Err(e) => return Err(e),
    };
    let len = usize::try_from(file.metadata()?.len()).map_err(io::Error::other)?;
    match read_aligned(&file, len)? {
        Some(bytes) => Ok(bytes),
        None => fs::read(path),
    }
}

/// Reads `len` bytes from the start of `file` (opened with `O_DIRECT`) through the
/// thread's aligned scratch buffer. `None` when the filesystem refused an aligned read
/// or the file turned out shorter or longer than `len`.
fn read_aligned(file: &File, len: usize) -> io::Result<Option<Vec<u8>>> {
    // Whole blocks, plus one more so that a file grown since the size was taken shows.
    let want = len.next_multiple_of(ALIGN) + ALIGN;
    if want + ALIGN > KEEP_LIMIT {
        return read_into(file, len, want, &mut Vec::new());
    }
    SCRATCH.with(|scratch| read_into(file, len, want, &mut scratch.borrow_mut()))
}

/// `read_aligned` through `buffer`, grown as needed.
fn read_into(file: &File, len: usize, want: usize, buffer: &mut Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    if buffer.len() < want + ALIGN {
        buffer.resize(want + ALIGN, 0);
    }
    let start = buffer.as_ptr().align_offset(ALIGN);
    let window = &mut buffer[start..start + want];
    let mut got = 0;
    while got < want {
        match file.read_at(&mut window[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(e) => return Err(e),
        }
        if got % ALIGN != 0 {
            break; // the end of the file, or a short read we cannot continue aligned
        }
    }
    Ok((got == len).then(|| window[..len].to_vec()))
}

/// Bytes a `DirectWriter` hands the disk in one write.
const WRITE_PIECE: usize = 1 << 20;

/// A new file written piece by piece straight to the disk (`O_DIRECT`), one piece
/// of `WRITE_PIECE` bytes in flight at a time, for a file of hundreds of MiB (a
/// catalog copy) written while the disk also serves small syncs that someone waits
/// for. Written through the page cache, the whole file would be dirty at once and
/// its one `fsync` would queue all of it at the disk ahead of them (a snapshot's
/// WAL sync waited 150 ms behind a copy). Where the filesystem refuses `O_DIRECT`,
/// an ordinary file. `finish` makes it durable; dropped unfinished, its content is
/// unspecified.
pub struct DirectWriter {
    file: File,
    direct: bool,
    buffer: Vec<u8>,
    /// Where the aligned window of `buffer` starts.
    start: usize,
    filled: usize,
    written: u64,
}

impl DirectWriter {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> io::Result<DirectWriter> {
        let open = |flags| {
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(flags)
                .open(path)
        };
        let (file, direct) = match open(libc::O_DIRECT) {
            Ok(file) => (file, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(0)?, false),
            Err(e) => return Err(e),
        };
        let buffer = vec![0u8; WRITE_PIECE + ALIGN];
        let start = buffer.as_ptr().align_offset(ALIGN);
        Ok(DirectWriter {
            file,
            direct,
            buffer,
            start,
            filled: 0,
            written: 0,
        })
    }

    /// Writes the buffered piece, padded with zeros to whole blocks (cut off again
    /// by `finish`).
    fn write_piece(&mut self) -> io::Result<()> {
        let len = if self.direct {
            self.filled.next_multiple_of(ALIGN)
        } else {
            self.filled
        };
        let window = &mut self.buffer[self.start..self.start + len];
        window[self.filled..].fill(0);
        self.file.write_all_at(window, self.written)?;
        self.written += self.filled as u64;
        self.filled = 0;
        Ok(())
    }

    /// Writes what is buffered, cuts the file to the bytes written and makes it
    /// durable (data and size).
    pub fn finish(mut self) -> io::Result<()> {
        if self.filled > 0 {
            self.write_piece()?;
        }
        self.file.set_len(self.written)?;
        self.file.sync_all()
    }
}

impl Write for DirectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Only the last piece may be short: a short one written mid-file would leave
        // the next at an unaligned offset.
        let n = buf.len().min(WRITE_PIECE - self.filled);
        let at = self.start + self.filled;
        self.buffer[at..at + n].copy_from_slice(&buf[..n]);
        self.filled += n;
        if self.filled == WRITE_PIECE {
            self.write_piece()?;
        }
        Ok(n)
    }

    /// Nothing: the pieces go out whole (`finish` writes the last).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_of_every_size_around_the_alignment_and_the_kept_buffer() {
        let dir = tempfile::tempdir().unwrap();
        // Shrinking after growing checks that a kept, larger buffer is cut to the file.
        let lens = [
            0,
            1,
            511,
            4095,
            4096,
            4097,
            65_536 + 17,
            300_000,
            100,
            KEEP_LIMIT + 5,
            8192,
        ];
        for len in lens {
            let path = dir.path().join(format!("f{len}"));
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            fs::write(&path, &bytes).unwrap();
            assert_eq!(read_uncached(&path).unwrap(), bytes, "length {len}");
        }
    }

    #[test]
    fn missing_file_keeps_its_error_kind() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_uncached(&dir.path().join("absent")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_direct_writer_writes_exactly_the_bytes_given_in_any_pieces() {
        let dir = tempfile::tempdir().unwrap();
        for len in [
            0,
            1,
            4095,
            4096,
            WRITE_PIECE - 1,
            WRITE_PIECE,
            WRITE_PIECE + 4097,
            3 * WRITE_PIECE + 5,
        ] {
            let path = dir.path().join(format!("w{len}"));
            // An old, longer file at the path is replaced, not overwritten in part.
            fs::write(&path, vec![9u8; 4 * WRITE_PIECE]).unwrap();
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            let mut w = DirectWriter::create(&path).unwrap();
            for piece in bytes.chunks(7_777) {
                w.write_all(piece).unwrap();
            }
            w.finish().unwrap();
            assert_eq!(fs::read(&path).unwrap(), bytes, "length {len}");
        }
    }
}
