//! The integration tests, one binary (as ripgrep does): each module links tract and
//! ONNX Runtime once instead of once per file. `cargo test -- MODULE::` runs one module.

mod common;

mod architectures;
mod bad_inputs;
mod batches;
mod bundled_model;
mod cli;
mod cli_usage;
mod contrib;
mod end_to_end;
mod facade;
mod fuzz;
mod gradients;
mod hooks;
mod memory;
mod metrics;
mod normalize;
mod onnx_io;
mod opset23;
mod padding;
mod patching;
mod prompt_files;
mod render;
mod rewrite_external;
