//! ONNX model files: reading (with external data), node scopes, tensor facts
//! from tract's analysis, and a small builder for appending nodes.

pub mod builder;
pub mod consts;
pub mod dtypes;
pub mod external;
pub mod facts;
pub mod file_precision;
pub mod graph;
pub mod guard;
pub mod io;
pub mod model;
pub mod prune;
pub mod scopes;

pub use model::OnnxModel;
pub use tract_onnx::pb;
