//! The filesystem core: POSIX semantics over a view (the live tree or a snapshot).
//!
//! Owns: reading file content through extents and chunks. It does not name `fuser`:
//! the FUSE adapter translates kernel requests into calls here. Depends on `catalog`
//! and `store`.

mod read;

pub use read::read_at;
