//! Progress of a long job, reported to whoever runs it: the CLI draws bars
//! (indicatif, in the binary), an embedder passes its own `Progress` or none.

use crate::memory::Sizing;
use std::sync::Arc;

/// Receives a job's progress. Every method has a silent default.
pub trait Progress: Send + Sync {
    /// A phase of `total` steps begins (`unit`: "batches" or "calls").
    fn start(&self, _total: u64, _unit: &str) {}
    /// One step of the current phase finished.
    fn advance(&self) {}
    /// The current phase ended.
    fn finish(&self) {}
    /// A line worth showing, e.g. how many pairs each call holds and why.
    fn note(&self, _line: &str) {}
    /// Something the user should know (the result is still computed).
    fn warn(&self, _warning: &str) {}
    /// A long stage begins (reading the model, rewriting it, creating the
    /// session), so a user waiting a minute sees where the job is.
    fn stage(&self, _what: &str) {}
}

/// Where a job reports: a shared `Progress`, or None for a silent job.
pub type Reporter = Option<Arc<dyn Progress>>;

/// One phase's steps, reported when a `Progress` is given and the phase has more than one step.
pub(crate) struct Bar<'a>(Option<&'a dyn Progress>);

impl Bar<'_> {
    /// One step done.
    pub fn inc(&self, _n: u64) {
        if let Some(p) = self.0 {
            p.advance()
        }
    }

    /// The phase is over.
    pub fn finish_and_clear(&self) {
        if let Some(p) = self.0 {
            p.finish()
        }
    }
}

/// A phase of `len` steps; shown only with more than one step.
pub(crate) fn bar<'a>(reporter: &'a Reporter, len: u64, unit: &str) -> Bar<'a> {
    let p = reporter.as_deref().filter(|_| len > 1);
    if let Some(p) = p {
        p.start(len, unit);
    }
    Bar(p)
}

/// Passes a warning on (a silent job drops it; what it concerns is in the result).
pub(crate) fn warn(reporter: &Reporter, warning: &str) {
    if let Some(p) = reporter {
        p.warn(warning)
    }
}

/// Reports how the calls were sized, and the sizing's warning.
pub(crate) fn sizing(reporter: &Reporter, s: &Sizing) {
    if let Some(p) = reporter {
        p.note(&s.line());
        if let Some(w) = &s.warning {
            p.warn(w);
        }
    }
}

/// A long stage begins, for the reporter, if any.
pub(crate) fn stage(reporter: &Reporter, what: &str) {
    if let Some(p) = reporter {
        p.stage(what);
    }
}

/// One line of information for the reporter, if any.
pub(crate) fn note(reporter: &Reporter, line: &str) {
    if let Some(p) = reporter {
        p.note(line);
    }
}
