//! Progress bars on stderr (indicatif) for long commands: shown only when stderr is a
//! terminal and `-q` was not given; otherwise nothing is drawn.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);
static VERBOSE: AtomicU8 = AtomicU8::new(0);

/// Records the global `-q` / `-v` choices.
pub fn configure(quiet: bool, verbose: u8) {
    QUIET.store(quiet, Ordering::Relaxed);
    VERBOSE.store(verbose, Ordering::Relaxed);
}

/// True with `-q`.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// How many `-v` were given.
pub fn verbose() -> u8 {
    VERBOSE.load(Ordering::Relaxed)
}

/// True when bars are drawn: stderr is a terminal and `-q` was not given.
fn drawn() -> bool {
    !quiet() && std::io::stderr().is_terminal()
}

/// A progress bar for `what`, or nothing when it must not be drawn.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar that never draws (for --json output).
    pub fn hidden() -> Progress {
        Progress(None)
    }

    /// A bar counting `unit` (e.g. "chunks"); the total comes with the first update.
    pub fn new(what: &str, unit: &str) -> Progress {
        if !drawn() {
            return Progress(None);
        }
        let bar = ProgressBar::new(0);
        let template = format!("{what} [{{bar:30}}] {{pos}}/{{len}} {unit}, {{per_sec}}, ETA {{eta}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress(Some(bar))
    }

    /// A bar counting bytes, with throughput; the total comes with the first update.
    pub fn bytes(what: &str) -> Progress {
        if !drawn() {
            return Progress(None);
        }
        let bar = ProgressBar::new(0);
        let template =
            format!("{what} [{{bar:30}}] {{bytes}}/{{total_bytes}}, {{binary_bytes_per_sec}}, ETA {{eta}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress(Some(bar))
    }

    /// True when the bar is drawn (so work that only serves the bar can be skipped).
    pub fn is_visible(&self) -> bool {
        self.0.is_some()
    }

    /// A spinner for work of unknown size, counting `unit`.
    pub fn spinner(what: &str, unit: &str) -> Progress {
        if !drawn() {
            return Progress(None);
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) =
            ProgressStyle::with_template(&format!("{{spinner}} {what}: {{pos}} {unit}, {{elapsed}}"))
        {
            bar.set_style(style);
        }
        Progress(Some(bar))
    }

    /// `done` of `total` (0: unknown).
    pub fn set(&self, done: u64, total: u64) {
        if let Some(bar) = &self.0 {
            if total > 0 {
                bar.set_length(total);
            }
            bar.set_position(done);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
