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

pub use error::{Error, Result};
pub mod augment;
pub mod batches;
pub mod autodiff;
pub mod grids;
pub mod hooks;
pub mod job;
pub mod onnx;
pub mod runtime;
pub mod report;
pub mod inspect;
pub mod merge;
pub mod patch;
pub mod compare;
