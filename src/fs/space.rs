//! Operations on a file's extent map rather than its bytes: fallocate (punch holes,
//! zero, collapse and insert ranges: holes and offset shifts, never data copies),
//! lseek with SEEK_DATA / SEEK_HOLE, and copy_file_range, which shares extents
//! between files instead of copying bytes.

use super::{Fs, State, Writer};
use crate::catalog::{Extent, FileKind};
use crate::error::{Error, Result};
use crate::types::{GenId, Ino, InodeId, View};

/// What `fallocate` is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocate {
    /// Make sure `[offset, offset + len)` exists; grow the file unless `keep_size`.
    /// Space is not reserved: holes cost nothing and chunks are written on demand.
    Reserve { keep_size: bool },
    /// Deallocate `[offset, offset + len)`: it reads as zeros afterwards; size kept.
    PunchHole,
    /// Make `[offset, offset + len)` read as zeros (a hole, as holes cost nothing);
    /// grow the file to cover it unless `keep_size`.
    ZeroRange { keep_size: bool },
    /// Remove `[offset, offset + len)` and move what follows down by `len`: the file
    /// shrinks by `len`. As ext4: both block-aligned, and the range must end before
    /// the end of the file (EINVAL otherwise). The extents after it shift: no byte of
    /// data is read or written.
    CollapseRange,
    /// Open a hole of `len` bytes at `offset`, moving what follows up by `len`: the
    /// file grows by `len`. As ext4: both block-aligned, `offset` inside the file
    /// (EINVAL otherwise), the new size within the largest file (EFBIG).
    InsertRange,
}

/// The block size ext4 uses here and that `statfs` reports: collapse and insert
/// ranges must be multiples of it.
pub const BLOCK_SIZE: u64 = 4096;

/// The largest file snapfs keeps (that of ext4 with 4 KiB blocks, 16 TiB - 4 KiB).
pub const MAX_FILE_SIZE: u64 = (1 << 44) - BLOCK_SIZE;

/// Where `lseek` should look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seek {
    Data,
    Hole,
}

fn file_attr(st: &State, gen: GenId, ino: InodeId) -> Result<crate::catalog::InodeAttr> {
    let attr = st
        .catalog
        .inode(gen, ino)?
        .ok_or_else(|| Error::NotFound(format!("inode {ino}")))?;
    match attr.kind {
        FileKind::File => Ok(attr),
        FileKind::Dir => Err(Error::IsDir(format!("inode {ino}"))),
        _ => Err(Error::InvalidArgument("not a regular file".into())),
    }
}

/// Moves the extents of `ino` from byte `from` on so that they start at `to`: down
/// (collapse: the bytes in `[to, from)` go) or up (insert: `[from, to)` becomes a
/// hole). Rows are rewritten with new offsets; chunks are neither read nor written.
fn shift_tail(txn: &crate::catalog::Txn<'_>, ino: InodeId, from: u64, to: u64) -> Result<()> {
    let tail: Vec<Extent> = txn
        .extents(ino, from, u64::MAX)?
        .into_iter()
        .map(|e| {
            // The extent across `from` keeps only its part from `from` on.
            let cut = from.saturating_sub(e.offset);
            Extent {
                offset: e.offset + cut - from + to,
                length: e.length - cut,
                chunk_offset: e.chunk_offset + cut,
                ..e
            }
        })
        .collect();
    let start = from.min(to);
    txn.set_extents(ino, start, u64::MAX, &[])?;
    txn.set_extents(ino, to, u64::MAX, &tail)
}

impl Fs {
    /// fallocate(2) for the modes a filesystem without preallocation can honour.
    pub fn fallocate(&self, ino: InodeId, offset: u64, len: u64, how: Allocate) -> Result<()> {
        self.fallocate_as(ino, offset, len, how, &Writer::Privileged)
    }

    /// `fallocate` by `writer`, which may cost the file its set-user-ID and
    /// set-group-ID bits (see `privileges`).
    pub fn fallocate_as(
        &self,
        ino: InodeId,
        offset: u64,
        len: u64,
        how: Allocate,
        writer: &Writer<'_>,
    ) -> Result<()> {
        let mut st = self.lock();
        self.flush_locked(&mut st, Some(ino))?;
        super::drop_privileges(&mut st, ino, writer)?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| Error::InvalidArgument("range overflows".into()))?;
        let txn = st.catalog.write()?;
        let mut attr = txn.expect_inode(ino)?;
        if attr.kind != FileKind::File {
            return Err(Error::InvalidArgument("not a regular file".into()));
        }
        let shifting = matches!(how, Allocate::CollapseRange | Allocate::InsertRange);
        if shifting && (!offset.is_multiple_of(BLOCK_SIZE) || !len.is_multiple_of(BLOCK_SIZE)) {
            return Err(Error::InvalidArgument(format!(
                "collapse and insert ranges must be multiples of {BLOCK_SIZE} bytes"
            )));
        }
        let now = super::now_ns();
        match how {
            Allocate::Reserve { keep_size } => {
                if keep_size || end <= attr.size {
                    return Ok(());
                }
                attr.size = end;
            }
            Allocate::PunchHole => {
                txn.set_extents(ino, offset, end.min(attr.size), &[])?;
                attr.mtime_ns = now;
            }
            Allocate::ZeroRange { keep_size } => {
                txn.set_extents(ino, offset, end.min(attr.size), &[])?;
                if !keep_size {
                    attr.size = attr.size.max(end);
                }
                attr.mtime_ns = now;
            }
            Allocate::CollapseRange => {
                if end >= attr.size {
                    return Err(Error::InvalidArgument(
                        "a collapsed range must end before the end of the file".into(),
                    ));
                }
                shift_tail(&txn, ino, end, offset)?;
                attr.size -= len;
                attr.mtime_ns = now;
            }
            Allocate::InsertRange => {
                if offset >= attr.size {
                    return Err(Error::InvalidArgument(
                        "a range can only be inserted inside the file".into(),
                    ));
                }
                if attr.size.saturating_add(len) > MAX_FILE_SIZE {
                    return Err(Error::io(
                        "inserting a range",
                        std::io::Error::from_raw_os_error(libc::EFBIG),
                    ));
                }
                shift_tail(&txn, ino, offset, end)?;
                attr.size += len;
                attr.mtime_ns = now;
            }
        }
        attr.ctime_ns = now;
        txn.set_inode(&attr)?;
        txn.commit()
    }

    /// The next offset at or after `offset` that starts data (`Seek::Data`) or a hole
    /// (`Seek::Hole`; the end of the file counts as one). ENXIO past the end.
    pub fn seek_node(&self, node: Ino, offset: u64, what: Seek) -> Result<u64> {
        let mut st = self.lock();
        let (gen, ino) = match node.split() {
            (View::Live, id) => {
                self.flush_locked(&mut st, Some(id))?;
                (st.catalog.live(), id)
            }
            (View::Snapshot(gen), id) => (gen, id),
        };
        let attr = file_attr(&st, gen, ino)?;
        if offset >= attr.size {
            return Err(Error::Io {
                context: "seeking past the end".into(),
                source: std::io::Error::from_raw_os_error(libc::ENXIO),
            });
        }
        let extents = st.catalog.extents(gen, ino, offset, attr.size)?;
        match what {
            Seek::Data => match extents.first() {
                Some(e) => Ok(e.offset.max(offset)),
                None => Err(Error::Io {
                    context: "no data after the offset".into(),
                    source: std::io::Error::from_raw_os_error(libc::ENXIO),
                }),
            },
            Seek::Hole => {
                let mut pos = offset;
                for e in &extents {
                    if e.offset > pos {
                        break;
                    }
                    pos = pos.max(e.end());
                }
                Ok(pos.min(attr.size))
            }
        }
    }

    /// copy_file_range(2): makes `[off_out, off_out + n)` of `out` share the chunks of
    /// `[off_in, off_in + n)` of `input` (no bytes copied, holes stay holes), where n
    /// is `len` cut at the end of `input`. Returns n.
    /// `input` may be in a snapshot (copying out of one costs no data either).
    pub fn copy_range(&self, input: Ino, off_in: u64, out: InodeId, off_out: u64, len: u64) -> Result<u64> {
        let mut st = self.lock();
        let live = st.catalog.live();
        let (in_gen, input) = match input.split() {
            (View::Live, id) => (live, id),
            (View::Snapshot(gen), id) => (gen, id),
        };
        self.flush_locked(&mut st, Some(input))?;
        self.flush_locked(&mut st, Some(out))?;
        let in_attr = file_attr(&st, in_gen, input)?;
        file_attr(&st, live, out)?;
        let n = len.min(in_attr.size.saturating_sub(off_in));
        if n == 0 {
            return Ok(0);
        }
        if in_gen == live && input == out && off_in < off_out + n && off_out < off_in + n {
            return Err(Error::InvalidArgument("overlapping ranges in one file".into()));
        }
        let pieces: Vec<Extent> = st
            .catalog
            .extents(in_gen, input, off_in, off_in + n)?
            .into_iter()
            .map(|e| {
                let from = e.offset.max(off_in);
                let to = e.end().min(off_in + n);
                Extent {
                    offset: off_out + (from - off_in),
                    length: to - from,
                    chunk: e.chunk,
                    chunk_offset: e.chunk_offset + (from - e.offset),
                }
            })
            .collect();
        let txn = st.catalog.write()?;
        txn.set_extents(out, off_out, off_out + n, &pieces)?;
        let mut attr = txn.expect_inode(out)?;
        attr.size = attr.size.max(off_out + n);
        attr.mtime_ns = super::now_ns();
        attr.ctime_ns = attr.mtime_ns;
        txn.set_inode(&attr)?;
        txn.commit()?;
        Ok(n)
    }
}
