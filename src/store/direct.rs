//! Whole-file reads that bypass the page cache (`O_DIRECT`), for chunk files.
//!
//! A chunk is read once into snapfs's own cache of verified plaintexts and then served
//! from there or from the kernel's cache of the mounted file; a second copy in the page
//! cache of the mirror's filesystem only costs CPU (page allocation, accounting, a copy)
//! and memory. Reading around it took a fifth off the mount daemon's CPU time for a
//! cold read on the machine we measured, at the same throughput (README, Benchmarks).
//!
//! Falls back to an ordinary read where the filesystem refuses `O_DIRECT` or a read
//! comes back short before the end of the file. Safe code only: the aligned buffer is
//! an aligned window into an ordinary `Vec`.

use std::cell::RefCell;
use std::fs::{self, File};
use std::io;
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
}
