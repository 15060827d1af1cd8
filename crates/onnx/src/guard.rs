//! tract can panic on malformed graphs (an `unwrap` deep in an op's shape
//! rules). Every call into tract goes through `guard`, which catches the
//! panic on this thread (`catch_unwind`) and turns it into an error naming
//! what was being done and carrying the panic's message.
//!
//! The library does not touch the process's panic hook: it belongs to the
//! program embedding it, and the hook runs before any `catch_unwind` (so the
//! default hook still prints the panic to stderr). A program that wants those
//! panics quiet installs its own hook and asks `in_guarded_call` there, as the
//! CLI does, whose users see the error instead.

use crate::error::{Error, Result};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is inside a guarded tract call, whose panic comes back
/// as an `Error::Model`: a panic hook may stay quiet then.
pub fn in_guarded_call() -> bool {
    GUARDED.with(|g| g.get())
}

/// Runs `f` (a call into tract); a panic in it becomes an error saying it happened while `what`.
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let was = GUARDED.with(|g| g.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    match r {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(|s| s.as_str())
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            // An anyhow error unwrapped in tract may carry a backtrace: first line only.
            Err(Error::Model(format!("tract failed while {what}: {}", msg.lines().next().unwrap_or(msg))))
        }
    }
}
