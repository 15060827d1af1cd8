//! Running the augmented graph: ONNX Runtime (CPU or CUDA) or tract, behind
//! one small trait so the job does not care which.

pub mod ort_lib;
pub mod ort_rt;
pub mod ort_saved;
pub mod tract_rt;
pub mod weights;

pub use weights::ModelForRuntime;

use attrpatch_onnx::error::{Error, Result};
use ndarray::ArrayD;
use std::collections::HashMap;

/// A tensor fed to a graph.
pub enum Value {
    /// Floats (activations, selectors, weights).
    F32(ArrayD<f32>),
    /// Integers (token ids, masks, positions).
    I64(ArrayD<i64>),
}

/// A session that runs one graph: ONNX Runtime (`ort_rt`) or tract (`tract_rt`).
pub trait Runtime {
    /// What actually runs the graph, e.g. "onnxruntime 1.31.1 (CPU)".
    fn describe(&self) -> String;
    /// Runs the whole graph once; returns every float output by name.
    fn run(&mut self, inputs: Vec<(String, Value)>) -> Result<HashMap<String, ArrayD<f32>>>;
}

/// Removes a named output from what `Runtime::run` returned, or says it is missing.
pub fn take_output(out: &mut HashMap<String, ArrayD<f32>>, name: &str) -> Result<ArrayD<f32>> {
    out.remove(name).ok_or_else(|| Error::Runtime(format!("the runtime returned no '{name}'")))
}

/// Where the graph runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The CPU.
    Cpu,
    /// The CUDA device with this index.
    Cuda(i32),
    /// CUDA when the runtime has it, else the CPU.
    Auto,
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(Device::Auto),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").and_then(|n| n.parse::<i32>().ok()) {
                Some(id) if id >= 0 => Ok(Device::Cuda(id)),
                _ => Err(Error::Input(format!("unknown device '{s}': expected cpu, cuda, cuda:N or auto"))),
            },
        }
    }
}

/// Which runtime executes the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum RuntimeKind {
    /// ONNX Runtime (the shared library, loaded at run time).
    Ort,
    /// tract (pure Rust, in the binary).
    Tract,
}

/// How and where the graph runs.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// The runtime.
    pub kind: RuntimeKind,
    /// The device.
    pub device: Device,
    /// The ONNX Runtime shared library (or its folder); None: ORT_DYLIB_PATH, .ort/, Python's onnxruntime.
    pub ort_lib: Option<std::path::PathBuf>,
    /// Intra-op threads; 0 lets the runtime decide.
    pub threads: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Auto, ort_lib: None, threads: 0 }
    }
}

/// A runtime for a model whose protobuf is all in `model_bytes`.
pub fn create(model_bytes: &[u8], opts: &RuntimeOptions) -> Result<Box<dyn Runtime>> {
    let model = ModelForRuntime {
        bytes: model_bytes.to_vec(),
        weights: vec![],
        external_dir: None,
        saved_dir: None,
        keeps_file_precision: false,
    };
    create_from(model, opts)
}

/// Prepares `proto` for the runtime `opts` names: ONNX Runtime gets the
/// large weights as tensors beside the protobuf, tract gets one protobuf.
pub fn prepare(proto: &mut attrpatch_onnx::pb::ModelProto, opts: &RuntimeOptions) -> ModelForRuntime {
    match opts.kind {
        RuntimeKind::Ort => ModelForRuntime::split(proto),
        RuntimeKind::Tract => ModelForRuntime::inline(proto),
    }
}

/// Creates the session of the runtime `opts` names for a model made by `prepare`; tract refuses weights outside the
/// protobuf.
pub fn create_from(model: ModelForRuntime, opts: &RuntimeOptions) -> Result<Box<dyn Runtime>> {
    match opts.kind {
        RuntimeKind::Ort => Ok(Box::new(ort_rt::OrtRuntime::new(model, opts)?)),
        RuntimeKind::Tract => {
            if !model.weights.is_empty() || model.external_dir.is_some() {
                return Err(Error::Runtime("tract needs the weights inside the model".into()));
            }
            // tract's CUDA runtime picks its own device; auto stays on the CPU, as tract's
            // CUDA path is unverified against the CPU grids on a given machine until gpu-check ran.
            let cuda = match opts.device {
                Device::Cuda(0) => true,
                Device::Cuda(n) => {
                    return Err(Error::Input(format!(
                        "the tract runtime with the device cuda:{n}: tract's CUDA runtime uses device 0 only"
                    )))
                }
                Device::Cpu | Device::Auto => false,
            };
            Ok(Box::new(tract_rt::TractRuntime::new(&model.bytes, cuda)?))
        }
    }
}
