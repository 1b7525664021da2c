//! Repository operations that the commands call: import, status, and (later) snapshot,
//! diff, restore, rollback, forget, gc, scrub, recover.
//!
//! Each operation takes an open `Repo` (or a read-only catalog) and returns a result
//! value (`ImportStats`, `StatusReport`, …); nothing here prints.

pub mod check;
pub mod compact;
pub mod gc;
pub mod history;
pub mod import;
pub mod mirrors;
pub mod recover;
pub mod restore;
pub mod retention;
pub mod scrub;
pub mod snapshots;
pub mod status;
pub mod upgrade;

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}
