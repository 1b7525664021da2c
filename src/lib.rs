//! snapfs: a content-addressed, deduplicating snapshot filesystem for Linux.
//!
//! Layers, arrows pointing down only:
//! `ops` → `ingest` → (`catalog`, `store`) → (`chunker`, `codec`) → `types`, `error`;
//! `repo` opens the catalog, the mirrors and the lock. The binary's `cli` sits on top.
//! Nothing in this library prints to the terminal.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod chunker;
pub mod codec;
pub mod control;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod ingest;
pub mod ops;
pub mod repo;
pub mod store;
pub mod types;

pub use error::{Error, Result};
