//! The integration tests, one binary (as ripgrep does): each module links tract and
//! ONNX Runtime once instead of once per file. `cargo test -- MODULE::` runs one module.

mod common;

mod architectures;
mod bad_inputs;
mod batches;
mod bundled_model;
mod cli;
mod end_to_end;
mod fuzz;
mod gradients;
mod hooks;
mod metrics;
mod onnx_io;
mod padding;
mod patching;
mod rewrite_external;
