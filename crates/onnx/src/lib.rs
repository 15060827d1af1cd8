//! attrpatch-onnx: the ONNX model layer of attrpatch, the lowest of its crates.
//!
//! It reads model files (with external data, every precision the exporters
//! write), gives tract's facts on the graph's tensors, finds node scopes,
//! appends nodes with a small builder, and normalises what exporters and
//! ONNX Runtime's tools write (fused contrib ops, quantised weights, older and
//! newer opset forms, KV caches, `If` subgraphs) into the plain ops the
//! differentiator knows. It also owns the one error type every crate above uses.
//!
//! The crates, bottom to top (each may use only those below it):
//! `attrpatch-onnx` -> `attrpatch-autodiff` -> `attrpatch-core` ->
//! `attrpatch-render` -> `attrpatch` (the facade and the binary) -> `attrpatch-python`.
#![deny(missing_docs)]

pub mod error;
pub mod fsutil;
pub mod normalize;

pub mod builder;
pub mod consts;
pub mod dtypes;
pub mod external;
pub mod facts;
pub mod file_precision;
pub mod graph;
pub mod guard;
pub mod hash;
pub mod io;
pub mod model;
pub mod prune;
pub mod scopes;
#[cfg(test)]
mod test_dir;

pub use model::OnnxModel;
/// tract's ONNX protobuf bindings (`ModelProto`, `GraphProto`, ...), the types this crate reads and rewrites.
pub use tract_onnx::pb;

/// How messages name a model given in memory, and where external data it
/// refers to would be looked up (the current folder).
pub const IN_MEMORY_MODEL: &str = "<in-memory model>.onnx";
