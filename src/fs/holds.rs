//! Who holds the core's lock, and for how long.
//!
//! Owns: per call site that takes the lock, the holds, the time held and the time
//! waited for it, kept only when debug logging is on (`Fs::new` decides) and logged
//! when the mount ends. A profile of CPU samples cannot show whether requests
//! serialize on the lock; this can (two creators of small files: the lock was held
//! about half of the time, see README).

use std::collections::HashMap;
use std::panic::Location;
use std::sync::Mutex;
use std::time::Duration;

/// The holds of the core's lock, by call site.
#[derive(Debug, Default)]
pub(super) struct Holds {
    on: bool,
    /// Lock scope: one update or one copy of the map.
    sites: Mutex<HashMap<&'static Location<'static>, Site>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Site {
    holds: u64,
    held: Duration,
    waited: Duration,
}

impl Holds {
    /// Keeps count when `on`; otherwise `note` does nothing.
    pub(super) fn new(on: bool) -> Holds {
        Holds {
            on,
            sites: Mutex::default(),
        }
    }

    pub(super) fn is_on(&self) -> bool {
        self.on
    }

    /// Counts one hold taken at `by` after waiting `waited`, held for `held`.
    pub(super) fn note(&self, by: &'static Location<'static>, waited: Duration, held: Duration) {
        if !self.on {
            return;
        }
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let site = sites.entry(by).or_default();
        site.holds += 1;
        site.held += held;
        site.waited += waited;
    }

    /// One line per call site, the longest held first: where, holds, held in all
    /// (and per hold), waited in all.
    pub(super) fn report(&self) -> Vec<String> {
        let mut sites: Vec<_> = self
            .sites
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(by, site)| (*by, *site))
            .collect();
        sites.sort_by_key(|(by, site)| (std::cmp::Reverse(site.held), by.file(), by.line()));
        sites
            .into_iter()
            .map(|(by, s)| {
                format!(
                    "{}:{}: {} holds, held {:.3} s ({:.1} µs each), waited {:.3} s",
                    by.file(),
                    by.line(),
                    s.holds,
                    s.held.as_secs_f64(),
                    s.held.as_secs_f64() * 1e6 / s.holds.max(1) as f64,
                    s.waited.as_secs_f64()
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn here() -> &'static Location<'static> {
        Location::caller()
    }

    #[test]
    fn holds_are_counted_per_call_site_only_when_on() {
        let (a, b) = (here(), here());
        let off = Holds::new(false);
        off.note(a, Duration::from_millis(1), Duration::from_millis(2));
        assert!(off.report().is_empty());

        let on = Holds::new(true);
        on.note(a, Duration::from_millis(1), Duration::from_millis(2));
        on.note(a, Duration::from_millis(3), Duration::from_millis(4));
        on.note(b, Duration::ZERO, Duration::from_millis(10));
        let report = on.report();
        assert_eq!(report.len(), 2);
        // The longest held first: b (10 ms) before a (6 ms in two holds).
        assert!(report[0].starts_with(&format!("{}:{}: 1 holds, held 0.010 s", b.file(), b.line())));
        assert_eq!(
            report[1],
            format!(
                "{}:{}: 2 holds, held 0.006 s (3000.0 µs each), waited 0.004 s",
                a.file(),
                a.line()
            )
        );
    }
}
