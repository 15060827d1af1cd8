//! The integration tests, one binary (as ripgrep does): each module links tract and
//! ONNX Runtime once instead of once per file. `cargo test -- MODULE::` runs one module.

// The tests reach into the library's internals (onnx, runtime, augment, job, ...),
// public only with the `internals` feature: fail here, never skip.
#[cfg(not(feature = "internals"))]
compile_error!("the integration tests need the library's internals: cargo test --features internals");

mod common;

mod architectures;
mod atp_star;
mod bad_inputs;
mod batches;
mod bundled_model;
mod cli;
mod cli_usage;
mod contrib;
mod dedup;
mod docs;
mod edge_reference;
mod edges;
mod edges_toy;
mod end_to_end;
mod facade;
mod faithfulness;
mod file_precision;
mod fuzz;
mod gradients;
mod graph_cache;
mod hooks;
mod memory;
mod metrics;
mod module_circles;
mod normalize;
mod onnx_io;
mod opset23;
mod padding;
mod patch_cut;
mod patching;
mod prompt_files;
mod render;
mod rewrite_external;
