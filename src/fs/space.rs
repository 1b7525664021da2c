//! Operations on a file's extent map rather than its bytes: fallocate (punch holes),
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
}

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
