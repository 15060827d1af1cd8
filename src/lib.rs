//! attrpatch: attribution patching on transformer models exported to ONNX.
//!
//! The pipeline: load the model (`onnx`), find the hook tensors (`hooks`), add
//! metric nodes and a symbolic backward graph (`augment`, `autodiff`), run the
//! augmented graph (`runtime`), reduce activations and gradients to grids
//! (`grids`) and write them (`render`).

pub mod error;
pub mod fsutil;
pub mod prompts;
pub mod render;

pub use error::{Error, Result, UnsupportedOp};

mod api;
pub use api::*;
pub use augment::Metric;
pub use batches::PairResult;
pub use compare::{Agreement, CompareOptions, Comparison, Estimate};
pub use grids::{Grids, PairGrid};
pub use hooks::{Hook, HookKind};
pub use job::{JobResult, Manifest, Method, Timings};
pub use onnx::pb::ModelProto;
pub use patch::Estimator;
pub use prompts::PromptPair;
pub use runtime::{Device, RuntimeKind, RuntimeOptions, Value};
pub use sanity::BaselineCheck;
pub mod augment;
pub mod autodiff;
pub mod batches;
pub mod compare;
pub mod edges;
pub mod grids;
pub mod hooks;
pub mod inspect;
pub mod job;
pub mod memory;
pub mod merge;
pub mod normalize;
pub mod onnx;
pub mod patch;
pub mod report;
pub mod runtime;
pub mod sanity;
