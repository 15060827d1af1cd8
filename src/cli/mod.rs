//! The command line: one file per subcommand (its flags, the call into the
//! library, the printing), and what they share (`common`). `main.rs` only dispatches.

pub(crate) mod common;
pub(crate) mod compare;
pub(crate) mod edges;
pub(crate) mod inspect;
pub(crate) mod merge;
pub(crate) mod patch;
pub(crate) mod rewrite;
pub(crate) mod run;
