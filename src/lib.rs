//! snapfs: a content-addressed, deduplicating snapshot filesystem for Linux.
//!
//! Layers, arrows pointing down only:
//! `daemon` → `ops` → `fs` → `ingest` → (`catalog`, `store`) → (`chunker`, `codec`) →
//! `types`, `error`; `fuse` translates kernel requests into `fs` calls; `repo` opens
//! the catalog, the mirrors and the lock. The binary's `cli` sits on top and starts
//! the `daemon`.
//! Nothing in this library prints to the terminal.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod chunker;
pub mod codec;
pub mod control;
pub mod daemon;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod ingest;
pub mod ops;
pub mod repo;
pub mod store;
pub mod types;

#[cfg(test)]
mod testing;

pub use error::{Error, Result};
