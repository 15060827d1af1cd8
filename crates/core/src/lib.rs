//! attrpatch-core: attribution patching on an ONNX graph, without figures.
//!
//! It finds the hooks (each layer's attention out-projection input), builds
//! the augmented graph (clean and corrupted runs, the metric and its symbolic
//! gradient), sizes batches to the machine's memory, runs the graph on ONNX
//! Runtime or tract, and turns the outputs into grids; beside the estimate, it
//! runs exact activation patching and integrated gradients, edges (EAP,
//! EAP-IG, circuits and their faithfulness), AtP* and the comparisons. It
//! writes data files (batches, JSON, CSV) only: figures and report.html are
//! `attrpatch-render`'s.
//!
//! Layers: this crate uses `attrpatch-onnx` (models, normalisation, the error
//! type) and `attrpatch-autodiff` (the backward graph); `attrpatch-render` and
//! the `attrpatch` facade use it. Cargo forbids the other direction.
#![deny(missing_docs)]

pub mod atp_star;
pub mod augment;
pub mod batches;
pub mod compare;
pub mod edges;
pub mod graph_cache;
pub mod grids;
pub mod hooks;
pub mod job;
pub mod memory;
pub mod merge;
pub mod patch;
pub mod progress;
pub mod prompts;
pub mod recall;
pub mod runtime;
pub mod sanity;
// The tests' temp folders (one file for every crate's tests: see it).
#[cfg(test)]
#[path = "../../onnx/src/test_dir.rs"]
mod test_dir;
