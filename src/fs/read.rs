//! Reading file bytes: extents from the catalog, verified chunks from the mirrors.

use crate::catalog::{Catalog, InodeAttr};
use crate::error::Result;
use crate::store::MirrorStore;
use crate::types::GenId;

/// Reads up to `len` bytes of file `attr` at `offset` as generation `gen` sees it.
/// Holes read as zeros; reading at or past the end returns fewer bytes (or none).
/// Every chunk is verified; a chunk with no good copy fails the read (never wrong bytes).
pub fn read_at(
    catalog: &Catalog,
    store: &MirrorStore,
    gen: GenId,
    attr: &InodeAttr,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let end = attr.size.min(offset.saturating_add(len as u64));
    if offset >= end {
        return Ok(Vec::new());
    }
    let mut out = vec![0u8; (end - offset) as usize];
    for e in catalog.extents(gen, attr.id, offset, end)? {
        let plain = store.get_verified(&e.chunk)?;
        let from = e.offset.max(offset);
        let to = e.end().min(end);
        let src_start = (e.chunk_offset + (from - e.offset)) as usize;
        let src_end = src_start + (to - from) as usize;
        let chunk_bytes = plain.get(src_start..src_end).ok_or_else(|| {
            crate::Error::CorruptCatalog(format!(
                "extent of inode {} at {} reaches past the end of chunk {}",
                attr.id, e.offset, e.chunk
            ))
        })?;
        out[(from - offset) as usize..(to - offset) as usize].copy_from_slice(chunk_bytes);
    }
    Ok(out)
}
