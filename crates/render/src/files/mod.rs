//! The files of a result that need the figures or the report page: AtP*'s
//! grids, `compare`'s and `compare --edges`'s folders. A job's own files are
//! `crate::report`'s.

pub mod atp_star;
pub mod comparison;
pub mod edge_comparison;
